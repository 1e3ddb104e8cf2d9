"""Train an AWD-LSTM language model with NT-ASGD (Merity, Keskar & Socher 2017).

    python main.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 --save PTB.pt

Saves the best model (by validation loss) to --save, a resume state beside it (<save>.state, every
epoch) and a JSON-lines log (<save>.jsonl, appended to); reports the best model on test. While it
runs it holds <save>.lock: a second run on the same --save stops at once. That bookkeeping is the
harness package's (`harness.TrainingRun`); what is here is the paper.
"""
import argparse

import data
import harness
import training
from errors import UserError
from harness import declare
from model import CELLS, RNNModel
from mos import MixtureOfSoftmaxesLoss
from splitcross import SplitCrossEntropyLoss, splits_for_vocab


# ---------------------------------------------------------------------------------------------
# The flags: each declared once, with the rule its value obeys (`must`), whether an exact resume may
# change it, and which attribute of a loaded model it is (finetune.py takes those from the checkpoint).

def add_model_args(parser):
    g = parser.add_argument_group('model (AWD-LSTM paper section 5: 3-layer LSTM, 1150 hidden, 400 embedding)')
    declare(g, '--model', type=str, default='LSTM', must=harness.CELL, from_checkpoint='rnn_type',
            help=f'recurrent cell: {", ".join(CELLS)} (model.CELLS)')
    declare(g, '--emsize', type=int, default=400, must=harness.POSITIVE_INT, from_checkpoint='ninp',
            help='size of word embeddings')
    declare(g, '--nhid', type=int, default=1150, must=harness.POSITIVE_INT, from_checkpoint='nhid',
            help='number of hidden units per layer')
    declare(g, '--nlayers', type=int, default=3, must=harness.POSITIVE_INT, from_checkpoint='nlayers',
            help='number of layers')
    declare(g, '--release', type=int, choices=(2017, 2018), default=2018, from_checkpoint='release',
            help="which release of the original code to compute as: 2018 (1d466ec, default) or 2017 "
                 "(acb04a5, the 2017 README's figures: its locked-dropout mask, numpy seeded with 331, "
                 "the full softmax for any vocabulary; LSTM only). docs/PARITY.md: 'The two releases'")
    return g


def add_dropout_args(parser):
    g = parser.add_argument_group('regularisation (paper section 4)')
    for flag, default, help_text in (
            ('--dropout', 0.4, 'locked dropout on the last layer output'),
            ('--dropouth', 0.3, 'locked dropout between recurrent layers'),
            ('--dropouti', 0.65, 'locked dropout on the embedded input'),
            ('--dropoute', 0.1, 'embedding dropout: whole words removed'),
            ('--wdrop', 0.5, 'DropConnect on the hidden-to-hidden weights')):
        declare(g, flag, type=float, default=default, must=harness.RATE, from_checkpoint=flag[2:], help=help_text)
    declare(g, '--alpha', type=float, default=2, must=harness.NON_NEGATIVE_FLOAT32,
            help='activation regularisation (AR) weight, eq. 4.6')
    declare(g, '--beta', type=float, default=1, must=harness.NON_NEGATIVE_FLOAT32,
            help='temporal activation regularisation (TAR) weight')
    declare(g, '--wdecay', type=float, default=1.2e-6, must=harness.NON_NEGATIVE_FLOAT32,
            help='weight decay (L2) on all parameters')
    return g


def add_training_args(parser):
    g = parser.add_argument_group('training (paper section 3: NT-ASGD)')
    declare(g, '--lr', type=float, default=30, must=harness.POSITIVE_FLOAT32, help='initial learning rate')
    declare(g, '--clip', type=float, default=0.25, must=(lambda v: v >= 0, '>= 0 (0: no clipping)'),
            help='gradient norm clipping (0: off)')  # a negative clip flips every gradient: uphill
    declare(g, '--epochs', type=int, default=8000, must=harness.POSITIVE_INT, may_change_on_resume=True,
            help='upper epoch limit')
    declare(g, '--batch_size', type=int, default=80, metavar='N', must=harness.POSITIVE_INT, help='batch size')
    declare(g, '--bptt', type=int, default=70, must=harness.POSITIVE_INT,
            help='mean sequence length of variable-length BPTT')
    declare(g, '--nonmono', type=int, default=5, must=harness.NON_NEGATIVE_INT, help='non-monotone interval n of NT-ASGD')
    declare(g, '--seed', type=int, default=1111, must=harness.SEED, help='random seed (torch and numpy)')
    declare(g, '--log-interval', type=int, default=200, metavar='N', must=harness.POSITIVE_INT,
            may_change_on_resume=True, help='report interval in batches')
    return g


def add_mixture_args(parser):
    """AWD-LSTM-MoS (Yang et al. 2018, mos.py) and its training options, with zihangdai/mos's defaults."""
    g = parser.add_argument_group('Mixture of Softmaxes (AWD-LSTM-MoS, Yang et al. 2018; docs/MOS.md)')
    declare(g, '--n_experts', type=int, default=1, from_checkpoint='n_experts',
            must=(lambda v: isinstance(v, int) and v >= 1,
                  'a positive integer (1: the tied softmax; K > 1: a mixture of K softmaxes)'),
            help='number of softmaxes mixed (1: the tied softmax of AWD-LSTM; MoS used 15)')
    declare(g, '--nhidlast', type=int, default=-1, must=harness.POSITIVE_INT_OR_DEFAULT, from_checkpoint='nhidlast',
            help='units of the last recurrent layer with --n_experts > 1 (default -1: --emsize)')
    declare(g, '--dropoutl', type=float, default=-0.2, must=(lambda v: v < 1, 'below 1 (negative: the same as --dropouth)'),
            from_checkpoint='dropoutl',
            help='locked dropout on the mixture\'s latent vectors (negative, the default: --dropouth)')
    declare(g, '--small_batch_size', type=int, default=-1, must=harness.POSITIVE_INT_OR_DEFAULT,
            help='process each batch in column groups of this size, each with its own hidden state '
                 'and dropout masks, gradients summed into one step (changes the regularisation, not '
                 'only the memory; default: the whole batch at once)')
    declare(g, '--max_seq_len_delta', type=int, default=40, must=harness.NON_NEGATIVE_INT,
            help='with --n_experts > 1, the sampled BPTT length is capped at bptt + this, as in MoS')
    declare(g, '--single_gpu', action='store_true', may_change_on_resume=True,
            help="accepted for MoS's command lines; one process uses one GPU (several: torchrun)")
    return g


def add_schedule_args(parser):
    """main.py's optimisation schedule: the optimizer, --when, the sequence-length cap and --resume."""
    g = parser.add_argument_group('optimisation schedule')
    declare(g, '--optimizer', type=str, default='sgd', help='sgd (then ASGD, NT-ASGD) or adam')
    declare(g, '--when', nargs='+', type=int, default=[-1],
            help='epochs at which to save a copy (<save>.e<epoch>) and divide the lr by 10')
    declare(g, '--max-seq-len', type=int, default=None, metavar='N',
            must=(lambda v: isinstance(v, int) and v >= 5, 'at least 5 (the shortest sampled length)'),
            help='cap on the sampled BPTT length (default: none, as in the original main.py; '
                 'finetune.py caps at bptt + 10); lowers peak memory')
    declare(g, '--resume', type=str, default='', may_change_on_resume=True,
            help='continue a run: from its resume state (<path>.state, or the state file itself) '
                 'exactly where it stopped; from a checkpoint alone, restart from its weights '
                 "with the flags' lr and dropouts, as the original did. Without --save the run "
                 'goes on writing to the files it names')
    return g


def penalties(args):
    """The weights of the training loss's penalties (training.regularized_loss): AR and TAR, section 4.6."""
    return dict(alpha=args.alpha, beta=args.beta)


def build_parser():
    parser = argparse.ArgumentParser(description='AWD-LSTM language model training (NT-ASGD)')
    harness.add_data_args(parser)
    for add_args in (add_model_args, add_dropout_args, add_training_args, add_mixture_args):
        add_args(parser)
    harness.add_speed_args(parser)
    add_schedule_args(parser)
    data.add_vocabulary_args(parser)  # --vocab-from, --min-count, --max-vocab (docs/CORPUS.md)
    return parser


# ---------------------------------------------------------------------------------------------
# The model

def build_model(args, ntokens):
    """The AWD-LSTM (paper section 5) and its loss: the tied decoder's softmax, split for a large
    vocabulary (2018 release). The first release had a plain decoder and cross-entropy over the whole
    vocabulary, whatever its size: SplitCrossEntropyLoss without splits, release 2017, computes exactly that.
    With --n_experts > 1: AWD-LSTM-MoS (mos.py), whose loss is the mixture's NLL."""
    if args.n_experts > 1:
        return build_mos_model(args, ntokens)
    model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout, args.dropouth,
                     args.dropouti, args.dropoute, args.wdrop, tie_weights=True, release=args.release)
    splits = splits_for_vocab(ntokens) if args.release == 2018 else []
    print('Using', splits)
    return model, SplitCrossEntropyLoss(args.emsize, splits=splits, verbose=False, release=args.release)


def build_mos_model(args, ntokens):
    """AWD-LSTM-MoS (Yang et al. 2018): the AWD-LSTM with a Mixture of Softmaxes over the tied decoder."""
    if splits_for_vocab(ntokens):
        raise UserError(f'--n_experts > 1 (MoS) mixes full softmaxes; a vocabulary of {ntokens} words (over '
                        '75,000) needs the split softmax, which MoS does not have')
    model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout, args.dropouth,
                     args.dropouti, args.dropoute, args.wdrop, tie_weights=True, release=args.release,
                     n_experts=args.n_experts, nhidlast=args.nhidlast if args.nhidlast > 0 else None,
                     dropoutl=args.dropoutl)
    return model, MixtureOfSoftmaxesLoss(args.emsize, args.n_experts)


def column_group(args):
    """How many columns of the batch one forward pass takes (training.train_step's `group`): MoS mode
    always steps in groups (the whole batch by default), as MoS's main.py did; AWD-LSTM only when
    --small_batch_size asks for fewer than --batch_size. None: the whole batch, the original's step."""
    small = args.small_batch_size if args.small_batch_size > 0 else None
    if args.n_experts > 1:
        return small or args.batch_size
    return small if small not in (None, args.batch_size) else None


def seq_len_cap(args, cap):
    """The cap on sampled BPTT lengths: the script's `cap` (None: none) for AWD-LSTM; in MoS mode MoS's
    own, bptt + --max_seq_len_delta, lowered by main.py's --max-seq-len if given (finetune.py has none)."""
    if args.n_experts == 1:
        return cap
    mos_cap = args.bptt + args.max_seq_len_delta
    given = getattr(args, 'max_seq_len', None)
    return mos_cap if given is None else min(given, mos_cap)


# ---------------------------------------------------------------------------------------------
# Training (paper section 3: NT-ASGD)

def main(argv=None):
    run = harness.TrainingRun('main', build_parser(), argv)
    with run:  # its files claimed (checkpoint, resume state, log, lock); --resume's flags adopted
        return train(run, run.args)


def train(run, args):
    corpus, train_data, val_data, test_data = run.load_data()
    model, criterion = build_model(args, len(corpus.dictionary))
    params = run.place(model, criterion, column_group(args))  # --resume's weights; on the device
    optimizer = run.restore(training.make_optimizer(run.saved_optimizer or args.optimizer, params, args.lr,
                                                    args.wdecay))  # an exact resume's state
    history, best_val_loss = run.history, run.best_val_loss

    with run.interruptible():  # Ctrl-C ends training early and the best model is still tested
        for epoch in range(run.next_epoch, args.epochs + 1):
            with run.epoch(epoch, train_data) as progress:
                train_loss = training.train_epoch(
                    model, criterion, optimizer, params, train_data, run.rng, epoch, args.bptt, args.clip, penalties(args),
                    args.log_interval, seq_len_cap(args, args.max_seq_len), column_group(args), log=progress.write,
                    progress=progress, forward=run.forward, step=run.step)
            # The epoch's record names what it trained with, not the switch or lr cut that follows it.
            trained_with = dict(lr=optimizer.param_groups[0]['lr'], optimizer=training.optimizer_name(optimizer))
            with training.averaged_weights(optimizer, params):  # under ASGD: the average of the iterates
                val_loss = run.evaluate(model, criterion, val_data)
                if val_loss < best_val_loss:
                    best_val_loss = run.save_best(model, criterion, optimizer, val_loss)
            if not training.is_asgd(optimizer):  # under ASGD the schedule is fixed (section 3)
                if args.optimizer == 'sgd' and training.nonmono_triggered(history, val_loss, args.nonmono):
                    print('Switching to ASGD')
                    optimizer = training.make_optimizer('asgd', params, args.lr, args.wdecay)
                if epoch in args.when:
                    print('Saving model before learning rate decreased')
                    run.save(model, criterion, optimizer, f'{args.save}.e{epoch}')
                    print('Dividing learning rate by 10')
                    optimizer.param_groups[0]['lr'] /= 10.
                history.append(val_loss)
            run.end_epoch(epoch, model, criterion, optimizer, history, best_val_loss, train_loss, val_loss, trained_with)

    # Load the best model this run saved and run it on test data.
    return run.finish(model, criterion, test_data, best_val_loss)


if __name__ == '__main__':
    harness.run_script(main)
