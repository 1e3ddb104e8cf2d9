"""Fine-tune a trained AWD-LSTM with ASGD from the first step (Merity, Keskar & Socher 2017).

    python finetune.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 --save PTB.pt

The published fine-tuning command lines are main.py's with finetune.py, so the flags are main.py's.
As in the original finetune.py, the model is the checkpoint's, dropouts included (--model/--emsize/
--nhid/--nlayers and --dropout/--dropouth/--dropouti/--dropoute/--wdrop are taken from it; a flag that
disagrees is noted and ignored), and the sequence lengths are drawn from numpy seeded with 331 whatever
--seed says (--seed seeds torch: the dropout masks); lr and the rest come from the flags. Training restarts with ASGD averaging from the first step
(paper section 3; averaging a model that has already converged under NT-ASGD gains a few points of
perplexity, section 6). Each epoch the averaged weights are evaluated on valid and saved when they beat
the best so far (initially the loaded model's own valid loss). Training stops when the non-monotone
condition fires on those averaged valid losses, or at --epochs; the best model is then evaluated on
test. (The 2017 script exited with status 1 at the non-monotone stop, skipping test; here it is a
normal end.)

Fine-tuning modifies the saved model: by default it overwrites --save, as the original did; copy it
to keep the original, or write elsewhere with --out. Beside the output it keeps a resume state
(<out>.finetune.state, every epoch; distinct from main.py's <save>.state) and a JSON-lines log
(<out>.finetune.jsonl, appended to), and holds <out>.lock while it runs.
"""
import argparse

import harness
import training
from harness import declare
from main import (add_dropout_args, add_mixture_args, add_model_args, add_training_args, column_group, penalties,
                  seq_len_cap)
from model import RNNModel

# The original finetune.py's model flags, where none was given (see construction_draws).
ORIGINAL_MODEL_DEFAULTS = dict(model='LSTM', emsize=400, nhid=1150, nlayers=3)


def build_parser():
    """main.py's flags (the published fine-tuning command lines are main.py's), with the model's taken
    from the checkpoint (their defaults None: a value given that disagrees is noted and ignored)."""
    parser = argparse.ArgumentParser(
        description='Fine-tune a saved AWD-LSTM with ASGD from the first step. Fine-tuning modifies the '
                    'saved model (--save is overwritten unless --out is given); copy it to keep the original.')
    harness.add_data_args(parser)
    groups = [add(parser) for add in (add_model_args, add_dropout_args, add_training_args, add_mixture_args)]
    for g in groups:
        g.description = 'flags of the model are taken from the checkpoint; a value that disagrees is noted and ignored'
    parser.set_defaults(**{action.dest: None for action in parser._actions
                           if getattr(action, 'from_checkpoint', None)})
    harness.add_speed_args(parser)
    g = parser.add_argument_group('fine-tuning')
    declare(g, '--tied', action='store_true',
            help='accepted for compatibility and ignored: weights are always tied (in the original, '
                 'passing --tied turned tying off)')
    declare(g, '--out', type=str, default=None, metavar='PATH', may_change_on_resume=True,
            help='where to save the fine-tuned model (default: overwrite --save, as the original did; '
                 'fine-tuning modifies the saved model, copy it to keep the original)')
    declare(g, '--resume', nargs='?', const='', default=None, metavar='STATE', may_change_on_resume=True,
            help='continue an interrupted fine-tuning exactly where it stopped, from its resume state: '
                 '<out>.finetune.state by default, or the STATE file (or output path) named')
    return parser


def construction_draws(given, ntokens, release):
    """Make the random draws the original finetune.py made before training.

    It built a fresh model from the flags (its defaults where none was given) and then loaded the
    checkpoint over it; building it advanced torch's generator, which then draws every dropout mask.
    Building (and dropping) a model of the same sizes makes the same draws, so the masks are its own.
    """
    sizes = {flag: given.get(flag) or default for flag, default in ORIGINAL_MODEL_DEFAULTS.items()}
    rnn_type = 'LSTM' if release == 2017 else sizes['model']  # the first release built LSTMs whatever --model said
    RNNModel(rnn_type, ntokens, sizes['emsize'], sizes['nhid'], sizes['nlayers'], tie_weights=True)


def main(argv=None):
    run = harness.TrainingRun('finetune', build_parser(), argv)
    with run:  # its files claimed; the checkpoint (or this script's resume state) loaded
        return finetune(run, run.args)


def finetune(run, args):
    corpus, train_data, val_data, test_data = run.load_data()
    model, criterion = run.loaded_model(corpus)  # the checkpoint's, its vocabulary the corpus's
    if model.n_experts == 1:  # MoS's finetune.py loaded its model without building one first
        construction_draws(run.as_given, len(corpus.dictionary), model.release)
    params = run.place(model, criterion, column_group(args))
    # ASGD with t0=0, lambd=0: every step from the first one enters the average (section 3).
    optimizer = run.restore(training.make_optimizer('asgd', params, args.lr, args.wdecay))
    history, best_val_loss, done = run.history, run.best_val_loss, run.done
    if not run.resumed_exactly:  # the bar to beat is the loaded model itself
        best_val_loss = run.evaluate_loaded(model, criterion, val_data)

    with run.interruptible():  # Ctrl-C ends training early and the best model is still tested
        if done:
            print('The saved fine-tuning had already stopped (non-monotone condition); evaluating on test')
        for epoch in range(run.next_epoch, args.epochs + 1):
            if done:
                break
            # Sequence lengths capped at bptt + 10, as in the original fine-tuning (MoS: bptt + delta).
            with run.epoch(epoch, train_data) as progress:
                train_loss = training.train_epoch(
                    model, criterion, optimizer, params, train_data, run.rng, epoch, args.bptt, args.clip, penalties(args),
                    args.log_interval, seq_len_cap(args, args.bptt + 10), column_group(args), log=progress.write,
                    progress=progress, forward=run.forward, step=run.step)
            with training.averaged_weights(optimizer, params):  # the average of the iterates is the model
                val_loss = run.evaluate(model, criterion, val_data)
                if val_loss < best_val_loss:
                    best_val_loss = run.save_best(model, criterion, optimizer, val_loss)
            # The original's stop: the averaged valid loss is worse than the best one seen more than
            # --nonmono epochs ago (the history holds the averaged losses of this run only).
            done = training.nonmono_triggered(history, val_loss, args.nonmono)
            history.append(val_loss)
            run.end_epoch(epoch, model, criterion, optimizer, history, best_val_loss, train_loss, val_loss,
                          dict(lr=optimizer.param_groups[0]['lr'], optimizer='asgd'), done=done)
            if done:
                print(f'Done! (valid loss has not improved on the best from more than {args.nonmono} epochs ago)')

    # Load the best model (the output holds it from the start) and run it on test data.
    return run.finish(model, criterion, test_data, best_val_loss)


if __name__ == '__main__':
    harness.run_script(main)
