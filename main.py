"""Train an AWD-LSTM language model with NT-ASGD (Merity, Keskar & Socher 2017).

    python main.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500 --save PTB.pt

Saves the best model (by validation loss) to --save, a resume state beside it (<save>.state, every
epoch) and a JSON-lines log (<save>.jsonl, appended to); reports the best model on test. While it
runs it holds <save>.lock: a second run on the same --save stops at once.
"""
import argparse
import os
import time

import checkpoint
import cli
import distributed
import errors
import training
from model import RNNModel
from splitcross import SplitCrossEntropyLoss, splits_for_vocab

FIRST_RELEASE_NUMPY_SEED = 331


def build_parser():
    parser = argparse.ArgumentParser(description='AWD-LSTM language model training (NT-ASGD)')
    cli.add_data_args(parser)
    cli.add_model_args(parser)
    cli.add_dropout_args(parser)
    cli.add_training_args(parser)
    cli.add_speed_args(parser)
    g = parser.add_argument_group('optimisation schedule')
    g.add_argument('--optimizer', type=str, default='sgd', help='sgd (then ASGD, NT-ASGD) or adam')
    g.add_argument('--when', nargs='+', type=int, default=[-1],
                   help='epochs at which to save a copy (<save>.e<epoch>) and divide the lr by 10')
    g.add_argument('--max-seq-len', type=int, default=None, metavar='N',
                   help='cap on the sampled BPTT length (default: none, as in the original main.py; '
                        'finetune.py caps at bptt + 10); lowers peak memory')
    g.add_argument('--resume', type=str, default='',
                   help='continue a run: from its resume state (<path>.state, or the state file itself) '
                        'exactly where it stopped; from a checkpoint alone, restart from its weights '
                        "with the flags' lr and dropouts, as the original did. Without --save the run "
                        'goes on writing to the files it names')
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.save is None and args.resume:  # --resume X alone continues the run X, in its own files
        args.save = checkpoint.save_of_state(args.resume)
    cli.check_args(args)
    cli.check_speed_args(args)
    if args.max_seq_len is not None and args.max_seq_len < 5:
        raise errors.UserError(f'--max-seq-len must be at least 5 (the shortest sampled length), '
                               f'got {args.max_seq_len}')
    return args


def main(argv=None):
    args = parse_args(argv)
    given = cli.given_flags(build_parser(), argv)
    dist = distributed.setup(args)  # [distributed] torchrun's ranks (README); one process: changes nothing
    # A new run without --save is named by the time it starts: rank 0's time, on every rank.
    default_save = dist.from_main(f'{int(time.time() * 100)}.pt')  # [distributed]
    args.save = default_save if args.save is None else args.save
    if not dist.is_main:  # [distributed] rank 0 alone claims and writes the run's files
        return train(args, dist, given)
    outputs = [(path, '--save') for path in (args.save, checkpoint.state_path(args.save), cli.json_log_path(args.save))]
    outputs += [(f'{args.save}.e{epoch}', '--when') for epoch in args.when if epoch > 0]
    with cli.run_files(args.save, outputs, inputs=cli.data_files(args.data)):
        return train(args, dist, given)


def check_best_model_is_ours(save, run, state_file):
    """Continuing a run in its own files: `save` must still hold a model of that run (or none). Another
    run's there (finetune.py fine-tunes in place) would be overwritten by this run's next best, and
    without one this run would end saying it saved nothing: stop before any work instead."""
    if not os.path.isfile(save):
        return
    other = checkpoint.read_checkpoint(save).get('run')
    if other != run:
        raise errors.UserError(f'{save}: holds the model of another run ({other}; fine-tuned in place?), not that '
                               f'of the run {state_file} continues ({run}): continuing would overwrite it. Keep '
                               f'it and continue elsewhere with --resume {state_file} --save NEW.pt')


def train(args, dist, given):
    """The whole run, once its files are claimed; `given`: the flags given on the command line."""
    resume_state_file = checkpoint.find_resume_state(args.resume) if args.resume else None
    if args.resume and resume_state_file is None and not os.path.isfile(args.resume):
        raise errors.UserError(f'{args.resume}: checkpoint not found (--resume)')
    saved_state = None
    if resume_state_file:
        saved_state = checkpoint.read_state(resume_state_file, 'main')
        ignored = cli.adopt_run_args(args, saved_state['args'], cli.RESUME_MAY_CHANGE, given)
        cli.check_resumed_args(args, resume_state_file)
        if ignored:
            print(f'note: continuing the saved run with its own settings; ignored flags: {", ".join(ignored)}')
    # An exact resume continues its run (a state from before run ids has None); anything else is a new run.
    run = saved_state.get('run') if saved_state is not None else checkpoint.new_run_id()
    run = dist.from_main(run)  # [distributed] one run id for all ranks
    state_is_ours = (saved_state is not None
                     and checkpoint.same_file(resume_state_file, checkpoint.state_path(args.save)))
    if state_is_ours and run is not None:
        check_best_model_is_ours(args.save, run, resume_state_file)
    print('Args:', args)

    # The first release seeded numpy (the sequence lengths) with 331 whatever --seed said.
    rng = cli.set_seed(args.seed, numpy_seed=FIRST_RELEASE_NUMPY_SEED if args.release == 2017 else None)
    device = cli.choose_device(args)
    eval_batch_size = 10  # valid in 10 columns, test in 1, as the original
    corpus, train_data, val_data, test_data = cli.load_data(args, (args.batch_size, eval_batch_size, 1), device)
    dist.check_same_start(cli.run_flags(args), corpus, cli.lock_path(args.save))  # [distributed] all alike
    train_data = dist.shard(train_data)  # [distributed] this rank's columns of the batch
    ntokens = len(corpus.dictionary)

    model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout, args.dropouth,
                     args.dropouti, args.dropoute, args.wdrop, tie_weights=True, release=args.release)
    # The first release had a plain decoder and cross-entropy over the whole vocabulary, whatever its size:
    # SplitCrossEntropyLoss without splits computes exactly that (the same operations, bit for bit).
    splits = splits_for_vocab(ntokens) if args.release == 2018 else []
    print('Using', splits)
    criterion = SplitCrossEntropyLoss(args.emsize, splits=splits, verbose=False)

    epoch_start, history, best_val_loss, optimizer_kind = 1, [], float('inf'), args.optimizer
    if saved_state is not None:
        checkpoint.check_vocabulary(saved_state['idx2word'], corpus, resume_state_file, args.data)
        checkpoint.load_weights(model, criterion, saved_state, resume_state_file)
        epoch_start = saved_state['epoch'] + 1
        history, best_val_loss = list(saved_state['history']), saved_state['best_val_loss']
        optimizer_kind = saved_state['optimizer_name']
    elif args.resume:
        print('Resuming model ...')
        ckpt = checkpoint.read_checkpoint(args.resume)
        checkpoint.check_vocabulary(ckpt['idx2word'], corpus, args.resume, args.data)
        checkpoint.load_weights(model, criterion, ckpt, args.resume)
        model.set_dropouts(args.dropout, args.dropouth, args.dropouti, args.dropoute, args.wdrop)
    model.to(device)
    criterion.to(device)

    params = list(model.parameters()) + list(criterion.parameters())
    total_params = sum(p.numel() for p in params)
    print('Model total parameters:', total_params)

    optimizer = training.make_optimizer(optimizer_kind, params, args.lr, args.wdecay)
    if saved_state is not None:
        checkpoint.restore_training_state(optimizer, rng, device, saved_state, resume_state_file)
        print(f'Resuming exactly from {resume_state_file} after epoch {saved_state["epoch"]} '
              f'({optimizer_kind}, lr {optimizer.param_groups[0]["lr"]})')
    elif args.resume:
        print(f'Restarting from the weights of {args.resume} (no resume state beside it): '
              f'fresh {optimizer_kind} optimizer, lr {args.lr} and dropouts from the flags')
    forward = dist.wrap(model, criterion)  # [distributed] DDP averages the gradients; None for one process
    step = cli.train_step_for(args, dist)  # --cuda-graphs / --bf16; training.train_step by default

    def save_model(path):
        checkpoint.save_checkpoint(path, model, criterion, optimizer, args, corpus.dictionary.idx2word, run=run)

    def save_state(epoch):
        checkpoint.save_checkpoint(checkpoint.state_path(args.save), model, criterion, optimizer, args,
                                   corpus.dictionary.idx2word, epoch=epoch, history=history,
                                   best_val_loss=best_val_loss, rng=checkpoint.rng_state(rng, device),
                                   script='main', run=run)
    save_model, save_state = dist.writer(save_model), dist.writer(save_state)  # [distributed] rank 0 writes

    log = dist.if_main(cli.JsonLog, cli.json_log_path(args.save), run,  # [distributed] rank 0 logs
                       resumed_after=saved_state['epoch'] if saved_state is not None else None)
    # Loop over epochs; Ctrl-C stops early and still evaluates the best model on test.
    with cli.interruptible_training() as interrupted:
        for epoch in range(epoch_start, args.epochs + 1):
            epoch_start_time = time.time()
            dist.seed_ranks(args.seed, epoch)  # [distributed] each rank its own dropout masks
            with cli.progress_bar(len(train_data) // args.bptt, f'epoch {epoch}') as bar:
                train_loss = training.train_epoch(model, criterion, optimizer, params, train_data, args, epoch, rng,
                                                  seq_len_cap=args.max_seq_len, log=bar.write, progress=bar,
                                                  forward=forward, step=step)  # [distributed]
            train_loss = dist.mean(train_loss)  # [distributed] over all columns
            # The epoch's record names what it trained with, not the switch or lr cut that follows it.
            trained_with = dict(lr=optimizer.param_groups[0]['lr'], optimizer=training.optimizer_name(optimizer))
            if training.is_asgd(optimizer):
                # Section 3: under ASGD the model is the running average of the iterates.
                with training.averaged_weights(optimizer, params):
                    val_loss = training.evaluate(model, criterion, val_data, eval_batch_size, args.bptt)
                    val_loss = dist.shared(val_loss)  # [distributed] rank 0's result, on every rank
                    cli.report_epoch(epoch, epoch_start_time, val_loss, args.release)
                    if val_loss < best_val_loss:
                        save_model(args.save)
                        print('Saving Averaged!')
                        best_val_loss = val_loss
            else:
                val_loss = training.evaluate(model, criterion, val_data, eval_batch_size, args.bptt)
                val_loss = dist.shared(val_loss)  # [distributed] rank 0's result, on every rank
                cli.report_epoch(epoch, epoch_start_time, val_loss, args.release)
                if val_loss < best_val_loss:
                    save_model(args.save)
                    print('Saving model (new best validation)')
                    best_val_loss = val_loss
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
                      **cli.loss_record('valid', val_loss), **dist.check_in_sync(params))  # [distributed]
            with cli.sigterm_held():
                save_state(epoch)
                state_is_ours = True
    if interrupted.preempted:
        return cli.report_interrupted(checkpoint.state_path(args.save), f'--resume {args.save} --data {args.data}',
                                      state_is_ours)

    # Load the best model this run saved and run it on test data.
    test_loss = cli.evaluate_best_on_test(args.save, model, criterion, test_data, args.bptt, run=run)
    log.write(final=True, **cli.loss_record('valid', best_val_loss), **cli.loss_record('test', test_loss))
    return 0


if __name__ == '__main__':
    cli.run(main)
