"""Train an AWD-LSTM language model with NT-ASGD (Merity, Keskar & Socher 2017).

    python main.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 --save PTB.pt

Saves the best model (by validation loss) to --save, a resume state beside it (<save>.state, every
epoch) and a JSON-lines log (<save>.jsonl, appended to); reports the best model on test. While it
runs it holds <save>.lock: a second run on the same --save stops at once.
"""
import argparse
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
from mos import MixtureOfSoftmaxesLoss
from splitcross import SplitCrossEntropyLoss, splits_for_vocab

# The first release seeded numpy (the sequence lengths) with 331 whatever --seed said.
FIRST_RELEASE_NUMPY_SEED = 331


def build_parser():
    parser = argparse.ArgumentParser(description='AWD-LSTM language model training (NT-ASGD)')
    for add_args in (flags.add_data_args, flags.add_model_args, flags.add_dropout_args, flags.add_training_args,
                     flags.add_mixture_args, flags.add_speed_args, flags.add_schedule_args,
                     flags.add_vocabulary_args):
        add_args(parser)
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.save is None and args.resume:  # --resume X alone continues the run X, in its own files
        args.save = checkpoint.save_of_state(args.resume)
    flags.check_args(args)
    flags.check_speed_args(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    given = flags.given_flags(build_parser(), argv)
    dist = distributed.setup(args)  # [distributed] torchrun's ranks (docs/DISTRIBUTED.md); one process: no change
    # A new run without --save is named by the time it starts: rank 0's time, on every rank.
    default_save = dist.from_main(f'{int(time.time() * 100)}.pt')  # [distributed]
    args.save = default_save if args.save is None else args.save
    if not dist.is_main:  # [distributed] rank 0 alone claims and writes the run's files
        return train(args, dist, given)
    outputs = [(path, '--save') for path in (args.save, checkpoint.state_path(args.save),
                                             run_log.json_log_path(args.save))]
    outputs += [(f'{args.save}.e{epoch}', '--when') for epoch in args.when if epoch > 0]
    with run_files.run_files(args.save, outputs, inputs=run_files.data_files(args.data)):
        return train(args, dist, given)


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


def train(args, dist, given):
    """The whole run, once its files are claimed; `given`: the flags given on the command line."""
    resumed = resume.of_main_run(args, given)  # an exact resume takes the saved run's flags
    owner = ownership.of_main_run(resumed, args.save, dist)
    print('Args:', args)

    rng = cli.set_seed(args.seed, numpy_seed=FIRST_RELEASE_NUMPY_SEED if args.release == 2017 else None)
    device = cli.choose_device(args)
    corpus, train_data, val_data, test_data = cli.load_data(
        args, (args.batch_size, EVAL_BATCH_SIZE, TEST_BATCH_SIZE), device)
    dist.check_same_start(flags.run_flags(args), corpus, run_files.lock_path(args.save))  # [distributed]
    train_data = dist.shard(train_data)  # [distributed] this rank's columns of the batch

    model, criterion = build_model(args, len(corpus.dictionary))
    resumed.load_weights(model, criterion, corpus, args)
    model.to(device)
    criterion.to(device)
    params = list(model.parameters()) + list(criterion.parameters())
    print('Model total parameters:', sum(p.numel() for p in params))
    optimizer = training.make_optimizer(resumed.optimizer_kind or args.optimizer, params, args.lr, args.wdecay)
    resumed.restore(optimizer, rng, device, args)
    forward = dist.wrap(model, criterion)  # [distributed] DDP averages the gradients; None for one process
    step = cli.train_step_for(args, dist)  # --cuda-graphs / --bf16; training.train_step by default

    def save_model(path):
        checkpoint.save_checkpoint(path, model, criterion, optimizer, args, corpus.dictionary.idx2word, run=owner.run,
                                   tokenizer=corpus.tokenizer)

    def save_state(epoch):
        checkpoint.save_checkpoint(owner.state_file, model, criterion, optimizer, args, corpus.dictionary.idx2word,
                                   epoch=epoch, history=history, best_val_loss=best_val_loss,
                                   rng=checkpoint.rng_state(rng, device), script='main', run=owner.run)
    save_model, save_state = dist.writer(save_model), dist.writer(save_state)  # [distributed] rank 0 writes
    log = dist.if_main(run_log.JsonLog, run_log.json_log_path(args.save), owner.run,  # [distributed] rank 0 logs
                       resumed_after=resumed.epoch if resumed.state is not None else None)

    # Loop over epochs; Ctrl-C stops early and still evaluates the best model on test.
    history, best_val_loss = resumed.history, resumed.best_val_loss
    with interrupts.interruptible_training() as interrupted:
        for epoch in range(resumed.epoch + 1, args.epochs + 1):
            epoch_start_time = time.time()
            train_loss = cli.train_one_epoch(model, criterion, optimizer, params, train_data, args, epoch, rng,
                                             flags.seq_len_cap(args, args.max_seq_len), forward, step, dist)
            # The epoch's record names what it trained with, not the switch or lr cut that follows it.
            trained_with = dict(lr=optimizer.param_groups[0]['lr'], optimizer=training.optimizer_name(optimizer))
            val_loss, best_val_loss = cli.validate(model, criterion, optimizer, params, val_data, args.bptt, epoch,
                                                   epoch_start_time, best_val_loss, lambda: save_model(args.save),
                                                   dist)
            if not training.is_asgd(optimizer):  # under ASGD the schedule is fixed (section 3)
                if args.optimizer == 'sgd' and training.nonmono_triggered(history, val_loss, args.nonmono):
                    print('Switching to ASGD')
                    optimizer = training.make_optimizer('asgd', params, args.lr, args.wdecay)
                if epoch in args.when:
                    print('Saving model before learning rate decreased')
                    save_model(f'{args.save}.e{epoch}')
                    print('Dividing learning rate by 10')
                    optimizer.param_groups[0]['lr'] /= 10.
                history.append(val_loss)
            log.write(epoch=epoch, seconds=time.time() - epoch_start_time, **trained_with, train_loss=train_loss,
                      **run_log.loss_record('valid', val_loss), **dist.check_in_sync(params))  # [distributed]
            with interrupts.sigterm_held():  # the state and the note that this run wrote it go together
                save_state(epoch)
                owner.wrote_state()
    if interrupted.preempted:
        return owner.report_interrupted(f'--resume {args.save} --data {args.data}')

    # Load the best model this run saved and run it on test data.
    best_path = owner.best_model_path(args.save)
    test_loss = cli.evaluate_best_on_test(owner, best_path, model, criterion, test_data, args.bptt)
    log.write(final=True, **run_log.loss_record('valid', best_val_loss), **run_log.loss_record('test', test_loss))
    return 0


if __name__ == '__main__':
    cli.run(main)
