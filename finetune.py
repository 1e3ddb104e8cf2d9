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
import os
import time

from harness import checkpoint
from harness import cli
from harness import distributed
from harness import flags
from harness import interrupts
from harness import ownership
from harness import resume
from harness import run_files
from harness import run_log
import training
from harness.cli import EVAL_BATCH_SIZE, TEST_BATCH_SIZE
from errors import UserError
from model import RNNModel

MODEL_FLAGS = ('model', 'emsize', 'nhid', 'nlayers', 'release')
# The original finetune.py's model flags, where none was given (see construction_draws).
ORIGINAL_MODEL_DEFAULTS = dict(model='LSTM', emsize=400, nhid=1150, nlayers=3)
DROPOUT_FLAGS = ('dropout', 'dropouth', 'dropouti', 'dropoute', 'wdrop')
# Every version of the original finetune.py seeded numpy (the sequence lengths) with 331, not --seed.
NUMPY_SEED = 331


def finetune_state_path(out):
    return out + '.finetune.state'


def finetune_log_path(out):
    return out + '.finetune.jsonl'


def build_parser():
    parser = argparse.ArgumentParser(
        description='Fine-tune a saved AWD-LSTM with ASGD from the first step. Fine-tuning modifies the '
                    'saved model (--save is overwritten unless --out is given); copy it to keep the original.')
    flags.add_data_args(parser)
    g = flags.add_model_args(parser)
    g.description = 'taken from the checkpoint; a value that disagrees with it is noted and ignored'
    parser.set_defaults(**dict.fromkeys(MODEL_FLAGS))
    g = flags.add_dropout_args(parser)
    g.description = ('the dropouts are taken from the checkpoint, as the original did; a value that disagrees '
                     'is noted and ignored')
    parser.set_defaults(**dict.fromkeys(DROPOUT_FLAGS))
    flags.add_training_args(parser)
    g = flags.add_mixture_args(parser)
    g.description = ('the mixture (--n_experts, --nhidlast, --dropoutl) is taken from the checkpoint; '
                     '--small_batch_size and --max_seq_len_delta act as in main.py')
    flags.add_speed_args(parser)
    g = parser.add_argument_group('fine-tuning')
    g.add_argument('--tied', action='store_true',
                   help='accepted for compatibility and ignored: weights are always tied (in the original, '
                        'passing --tied turned tying off)')
    g.add_argument('--out', type=str, default=None, metavar='PATH',
                   help='where to save the fine-tuned model (default: overwrite --save, as the original did; '
                        'fine-tuning modifies the saved model, copy it to keep the original)')
    g.add_argument('--resume', nargs='?', const='', default=None, metavar='STATE',
                   help='continue an interrupted fine-tuning exactly where it stopped, from its resume state: '
                        '<out>.finetune.state by default, or the STATE file (or output path) named')
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    # The model and dropout flags are None unless given; check_args only looks at the flags present.
    flags.check_args(argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None}))
    flags.check_speed_args(args)
    if args.out is not None and args.out.strip() == '':
        raise UserError('--out must not be empty')
    args.out = args.out or args.save
    if args.out is None:
        # Which run to continue: --resume STATE names it; a bare --resume needs the output path.
        if not (args.resume or '').endswith('.finetune.state'):
            raise UserError('--resume: give --save (or --out) of the fine-tuning to continue, '
                            'or its state file: --resume PATH.finetune.state')
        args.out = args.resume[:-len('.finetune.state')]
    return args


def construction_draws(given, ntokens, release):
    """Make the random draws the original finetune.py made before training.

    It built a fresh model from the flags (its defaults where none was given) and then loaded the
    checkpoint over it; building it advanced torch's generator, which then draws every dropout mask.
    Building (and dropping) a model of the same sizes makes the same draws, so the masks are its own.
    """
    sizes = {flag: given.get(flag) or default for flag, default in ORIGINAL_MODEL_DEFAULTS.items()}
    rnn_type = 'LSTM' if release == 2017 else sizes['model']  # the first release built LSTMs whatever --model said
    RNNModel(rnn_type, ntokens, sizes['emsize'], sizes['nhid'], sizes['nlayers'], tie_weights=True)


def find_state(args):
    """The resume-state file --resume designates (the file itself, or the one beside an output path)."""
    named = args.resume or args.out
    path = named if named.endswith('.state') else finetune_state_path(named)
    if not os.path.isfile(path):
        raise UserError(f'{path}: no fine-tuning resume state to continue from')
    return path


def main(argv=None):
    args = parse_args(argv)
    given = flags.given_flags(build_parser(), argv)
    dist = distributed.setup(args)  # [distributed] torchrun's ranks (docs/DISTRIBUTED.md); one process: no change
    if not dist.is_main:  # [distributed] rank 0 alone claims and writes the run's files
        return finetune(args, dist, given)
    flag = '--out' if args.out != args.save else '--save'
    outputs = [(path, flag) for path in (args.out, finetune_state_path(args.out), finetune_log_path(args.out))]
    with run_files.run_files(args.out, outputs, inputs=run_files.data_files(args.data)):
        return finetune(args, dist, given)


def load_model(args, given, device):
    """The model to fine-tune: main.py's checkpoint (--save), or when resuming the state of this script's
    own run, whose flags are then adopted. Returns (the loaded checkpoint, the state file or None)."""
    state_file = find_state(args) if args.resume is not None else None
    # Fine-tuning starts from the best model a run saved, never from a resume state's raw last-epoch weights.
    ckpt = checkpoint.load_checkpoint(state_file or args.save, map_location=device,
                                      resume_state_ok=state_file is not None)
    if state_file:
        checkpoint.check_state(ckpt, state_file, 'finetune')
        # The output is where the state is (the files claimed), even if they were moved since.
        resume.adopt_saved_flags(args, ckpt, state_file, given, flags.RESUME_MAY_CHANGE + ('out',))
    return ckpt, state_file


def finetune(args, dist, given):
    """The whole run, once its files are claimed; `given`: the flags given on the command line."""
    device = cli.choose_device(args)
    ckpt, state_file = load_model(args, given, device)
    given_sizes = {flag: getattr(args, flag) for flag in ORIGINAL_MODEL_DEFAULTS}  # before the checkpoint's replace them
    flags.note_model_flags(args, ckpt['model_config'], MODEL_FLAGS + DROPOUT_FLAGS)
    print('Args:', args)

    rng = cli.set_seed(args.seed, numpy_seed=NUMPY_SEED)
    # The corpus read with the checkpoint's vocabulary options, which the fine-tuned checkpoint then records.
    vars(args).update(checkpoint.vocabulary_options(ckpt))
    corpus, train_data, val_data, test_data = cli.load_data(
        args, (args.batch_size, EVAL_BATCH_SIZE, TEST_BATCH_SIZE), device)
    dist.check_same_start(flags.run_flags(args), corpus, run_files.lock_path(args.out))  # [distributed] all alike
    train_data = dist.shard(train_data)  # [distributed] this rank's columns of the batch
    checkpoint.check_vocabulary(ckpt['idx2word'], corpus, state_file or args.save, args.data)
    model, criterion = ckpt['model'], ckpt['criterion']
    args.n_experts = model.n_experts  # an MoS checkpoint is fine-tuned as MoS, whatever the flags say
    if model.n_experts == 1:  # MoS's finetune.py loaded its model without building one first
        construction_draws(given_sizes, len(corpus.dictionary), model.release)
    params = list(model.parameters()) + list(criterion.parameters())
    print('Model total parameters:', sum(p.numel() for p in params))

    # ASGD with t0=0, lambd=0: every step from the first one enters the average (section 3).
    optimizer = training.make_optimizer('asgd', params, args.lr, args.wdecay)
    forward = dist.wrap(model, criterion)  # [distributed] DDP averages the gradients; None for one process
    step = cli.train_step_for(args, dist)  # --cuda-graphs / --bf16; training.train_step by default
    owner = ownership.of_finetuning(ckpt, state_file, args.out, args.save, finetune_state_path(args.out), dist)

    def save_model(path):
        checkpoint.save_checkpoint(path, model, criterion, optimizer, args, corpus.dictionary.idx2word, run=owner.run,
                                   tokenizer=corpus.tokenizer)

    def save_state(epoch, done):
        checkpoint.save_checkpoint(owner.state_file, model, criterion, optimizer, args, corpus.dictionary.idx2word,
                                   epoch=epoch, history=history, best_val_loss=best_val_loss, done=done,
                                   rng=checkpoint.rng_state(rng, device), script='finetune', run=owner.run,
                                   start_runs=owner.start_runs)
    save_model, save_state = dist.writer(save_model), dist.writer(save_state)  # [distributed] rank 0 writes
    log = dist.if_main(run_log.JsonLog, finetune_log_path(args.out), owner.run,  # [distributed] rank 0 logs
                       resumed_after=ckpt['epoch'] if state_file else None)

    if state_file:
        epoch_start, history, best_val_loss, done = restore_state(ckpt, state_file, optimizer, rng, device)
    else:
        best_val_loss = evaluate_loaded_model(model, criterion, val_data, args, dist, log)
        if args.out != args.save:
            save_model(args.out)
        epoch_start, history, done = 1, [], False

    with interrupts.interruptible_training() as interrupted:
        if done:
            print('The saved fine-tuning had already stopped (non-monotone condition); evaluating on test')
        for epoch in range(epoch_start, args.epochs + 1):
            if done:
                break
            epoch_start_time = time.time()
            # Sequence lengths capped at bptt + 10, as in the original fine-tuning (MoS: bptt + delta).
            train_loss = cli.train_one_epoch(model, criterion, optimizer, params, train_data, args, epoch, rng,
                                             flags.seq_len_cap(args, args.bptt + 10), forward, step, dist)
            val_loss, best_val_loss = cli.validate(model, criterion, optimizer, params, val_data, args.bptt, epoch,
                                                   epoch_start_time, best_val_loss, lambda: save_model(args.out),
                                                   dist)
            # The original's stop: the averaged valid loss is worse than the best one seen more than
            # --nonmono epochs ago (the history holds the averaged losses of this run only).
            done = training.nonmono_triggered(history, val_loss, args.nonmono)
            history.append(val_loss)
            log.write(epoch=epoch, seconds=time.time() - epoch_start_time, lr=optimizer.param_groups[0]['lr'],
                      optimizer='asgd', train_loss=train_loss, **run_log.loss_record('valid', val_loss),
                      **dist.check_in_sync(params))  # [distributed]
            with interrupts.sigterm_held():  # the state and the note that this run wrote it go together
                save_state(epoch, done)
                owner.wrote_state()
            if done:
                print(f'Done! (valid loss has not improved on the best from more than {args.nonmono} epochs ago)')
    if interrupted.preempted:
        return owner.report_interrupted(f'--resume {owner.state_file} --data {args.data}')

    # Load the best model (the output holds it from the start) and run it on test data.
    test_loss = cli.evaluate_best_on_test(owner, args.out, model, criterion, test_data, args.bptt)
    log.write(final=True, **run_log.loss_record('valid', best_val_loss), **run_log.loss_record('test', test_loss))
    return 0


def restore_state(state, state_file, optimizer, rng, device):
    """Continue exactly: the optimizer (ASGD's averages) and random states back as saved; returns
    (the next epoch, the history of averaged valid losses, the best of them, whether it had stopped)."""
    checkpoint.restore_training_state(optimizer, rng, device, state, state_file)
    print(f'Resuming exactly from {state_file} after epoch {state["epoch"]}')
    return state['epoch'] + 1, list(state['history']), state['best_val_loss'], state['done']


def evaluate_loaded_model(model, criterion, val_data, args, dist, log):
    """The bar to beat is the loaded model itself: the output only ever holds the best model seen."""
    best_val_loss = training.evaluate(model, criterion, val_data, EVAL_BATCH_SIZE, args.bptt)
    best_val_loss = dist.shared(best_val_loss)  # [distributed] rank 0's result, on every rank
    print(f'| before fine-tuning | {run_log.report_line("valid", best_val_loss, model.report_style)}')
    log.write(epoch=0, **run_log.loss_record('valid', best_val_loss))
    return best_val_loss


if __name__ == '__main__':
    cli.run(main)
