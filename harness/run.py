"""A training run's bookkeeping behind one object, so that main.py and finetune.py show the paper's loop
and nothing else: `TrainingRun` parses and checks the flags, joins torchrun's ranks, claims the run's
files (checkpoint, resume state, JSON log, lock), continues what --resume names (adopting the saved
run's flags), seeds, picks the device, loads the data, and through the loop saves the best model,
logs each epoch, writes the resume state, and at the end tests the best model this run saved.

    run = TrainingRun('main', parser, argv)
    with run:                              # the files claimed, the flags final
        corpus, train_data, val_data, test_data = run.load_data()
        ...                                # the model, the optimizer: the script's
        with run.interruptible():
            for epoch in range(run.next_epoch, args.epochs + 1):
                with run.epoch(epoch, train_data) as progress:
                    ...                    # training.train_epoch
                val_loss = run.evaluate(model, criterion, val_data)
                ...
                run.end_epoch(...)
        return run.finish(model, criterion, test_data, best_val_loss)

What it keeps: the run id that tells this run's files from an earlier run's (ownership.py), exact
resume (resume.py, checkpoint.py), one writer and one log under torchrun (distributed.py), SIGTERM
between two whole resume states (interrupts.py).
"""
import contextlib
import sys
import time

import training
from errors import UserError
from . import checkpoint, cli, distributed, flags, interrupts, ownership, resume, run_files, run_log

# Valid is evaluated in 10 columns and test in 1, as in the original.
EVAL_BATCH_SIZE, TEST_BATCH_SIZE = 10, 1
# The first release (and every version of the original finetune.py) seeded numpy, which draws the
# sequence lengths, with 331 whatever --seed said.
FIRST_RELEASE_NUMPY_SEED = 331


def finetune_state_path(out):
    return out + '.finetune.state'


def finetune_log_path(out):
    return out + '.finetune.jsonl'


class TrainingRun:
    """One run of main.py (`script` 'main': NT-ASGD from scratch or from --resume) or finetune.py
    ('finetune': ASGD from a checkpoint, --out, its own resume state). `args` are the checked flags;
    `given` the names of those given on the command line."""

    def __init__(self, script, parser, argv=None):
        self.script, self.parser = script, parser
        self.command = [f'{script}.py', *(sys.argv[1:] if argv is None else argv)]  # for the log's provenance
        self.args = args = flags.parse_args(parser, argv)
        self.given = flags.given_flags(parser, argv)
        if script == 'main' and args.save is None and args.resume:  # --resume X alone continues X, in its own files
            args.save = checkpoint.save_of_state(args.resume)
        if script == 'finetune':
            self.args.out = output_of_finetuning(args)
        self.dist = distributed.setup(args)  # [distributed] torchrun's ranks (docs/DISTRIBUTED.md)
        if script == 'main' and args.save is None:  # a new run is named by the time it starts (rank 0's)
            args.save = self.dist.from_main(f'{int(time.time() * 100)}.pt')
        self.output = args.save if script == 'main' else args.out
        self.files = contextlib.ExitStack()
        self.interrupted = None

    # -----------------------------------------------------------------------------------------
    # Before the loop

    def __enter__(self):
        args = self.args
        if self.dist.is_main:  # [distributed] rank 0 alone claims and writes the run's files
            self.files.enter_context(run_files.run_files(self.output, self.outputs(),
                                                         inputs=run_files.data_files(args.data)))
        try:
            self.start()
        except BaseException:
            self.files.close()
            raise
        return self

    def __exit__(self, *exc):
        self.files.close()
        return False

    def outputs(self):
        """(path, flag) of every file this run writes, checked before any work."""
        if self.script == 'main':
            paths = (self.output, checkpoint.state_path(self.output), run_log.json_log_path(self.output))
            return [(path, '--save') for path in paths] + \
                [(f'{self.output}.e{epoch}', '--when') for epoch in self.args.when if epoch > 0]
        flag = '--out' if self.args.out != self.args.save else '--save'
        return [(path, flag) for path in (self.output, finetune_state_path(self.output), finetune_log_path(self.output))]

    def start(self):
        """What the run continues (adopting its flags), its owner, the seeds and the device."""
        args = self.args
        if self.script == 'main':
            self.resumed = resume.of_main_run(args, self.given, self.parser)
            self.owner = ownership.of_main_run(self.resumed, args.save, self.dist)
            numpy_seed = FIRST_RELEASE_NUMPY_SEED if args.release == 2017 else None
        else:
            self.device = cli.choose_device(args)
            self.resumed = resume.of_finetuning(args, self.given, self.parser, self.device)
            self.as_given = dict(vars(args))  # before the checkpoint's model flags replace them
            flags.note_model_flags(args, self.resumed.model, flags.from_checkpoint(self.parser))
            self.owner = ownership.of_finetuning(self.resumed.loaded, self.resumed.state_file, args.out, args.save,
                                                 finetune_state_path(args.out), self.dist)
            numpy_seed = FIRST_RELEASE_NUMPY_SEED
        print('Args:', args)
        self.rng = cli.set_seed(args.seed, numpy_seed=numpy_seed)
        if self.script == 'main':
            self.device = cli.choose_device(args)
        self.log = self.dist.if_main(run_log.JsonLog, self.log_path(), self.owner.run,  # [distributed] rank 0 logs
                                     resumed_after=self.resumed.epoch if self.resumed.state is not None else None,
                                     command=self.command, device=self.device)

    def log_path(self):
        return run_log.json_log_path(self.output) if self.script == 'main' else finetune_log_path(self.output)

    def load_data(self):
        """The corpus and its splits batchified: (corpus, train, valid, test); [distributed] train holds this
        rank's columns of the batch."""
        args = self.args
        if self.script == 'finetune':  # the checkpoint's vocabulary options, which its fine-tuning then records
            vars(args).update(checkpoint.vocabulary_options(self.resumed.loaded))
        corpus, train_data, val_data, test_data = cli.load_data(
            args, (args.batch_size, EVAL_BATCH_SIZE, TEST_BATCH_SIZE), self.device)
        self.dist.check_same_start(flags.run_flags(args, self.parser), corpus,  # [distributed] all ranks alike
                                   run_files.lock_path(self.output))
        self.corpus = corpus
        return corpus, self.dist.shard(train_data), val_data, test_data

    def loaded_model(self, corpus):
        """finetune.py: the checkpoint's model and loss, its vocabulary checked against the corpus."""
        checkpoint.check_vocabulary(self.resumed.loaded['idx2word'], corpus, self.resumed.path, self.args.data)
        return self.resumed.model, self.resumed.criterion

    def place(self, model, criterion, group=None):
        """The model on the run's device (main.py: with the weights --resume names); returns its and the
        loss's parameters. Sets `forward` ([distributed] the DDP wrapper, None for one process) and `step`
        (training.train_step, or the CUDA-graph / bf16 step the speed flags ask for; `group`: the column
        groups of a step, see training.train_step)."""
        if self.script == 'main':
            self.resumed.load_weights(model, criterion, self.corpus, self.args)
        model.to(self.device)
        criterion.to(self.device)
        self.params = list(model.parameters()) + list(criterion.parameters())
        print('Model total parameters:', sum(p.numel() for p in self.params))
        self.forward = self.dist.wrap(model, criterion)  # [distributed] DDP averages the gradients
        self.step = cli.train_step_for(self.args, self.dist, group)
        return self.params

    def restore(self, optimizer):
        """An exact resume puts back the optimizer's state (ASGD's averages) and the random states."""
        self.resumed.restore(optimizer, self.rng, self.device, self.args)
        return optimizer

    @property
    def saved_optimizer(self):
        """The optimizer an exact resume continues with ('sgd', 'asgd', 'adam'); None: the flags' choice."""
        return self.resumed.optimizer_kind

    @property
    def next_epoch(self):
        return self.resumed.epoch + 1

    @property
    def history(self):
        """The valid losses NT-ASGD (or fine-tuning's stop) compares, as saved; [] for a new run."""
        return list(self.resumed.history)

    @property
    def best_val_loss(self):
        return self.resumed.best_val_loss

    @property
    def resumed_exactly(self):
        """Whether the run continues from a resume state (not from the start, nor from weights alone)."""
        return self.resumed.state is not None

    @property
    def done(self):
        """finetune.py: whether the fine-tuning it continues had already stopped (non-monotone condition)."""
        return self.resumed.done

    def evaluate_loaded(self, model, criterion, val_data):
        """finetune.py: the bar to beat is the loaded model itself (the output only ever holds the best
        model seen); fine-tuning into --out starts that file with it."""
        val_loss = self.dist.shared(training.evaluate(model, criterion, val_data, EVAL_BATCH_SIZE, self.args.bptt))
        print(f'| before fine-tuning | {run_log.report_line("valid", val_loss, model.report_style)}')
        self.log.write(epoch=0, **run_log.loss_record('valid', val_loss))
        if self.args.out != self.args.save:
            self.save(model, criterion, None, self.args.out)
        return val_loss

    # -----------------------------------------------------------------------------------------
    # The loop

    @contextlib.contextmanager
    def interruptible(self):
        """Around the epoch loop: Ctrl-C ends training (the best model is still tested, as the original
        did); SIGTERM ends it once the last resume state is whole (finish() then exits 143)."""
        with interrupts.interruptible_training() as self.interrupted:
            yield

    @contextlib.contextmanager
    def epoch(self, epoch, train_data):
        """Around one training epoch: a progress bar (its `write` prints the log lines above it);
        [distributed] each rank its own dropout masks."""
        self.epoch_start_time = time.time()
        self.dist.seed_ranks(self.args.seed, epoch)  # [distributed]
        with run_log.progress_bar(len(train_data) // self.args.bptt, f'epoch {epoch}') as bar:
            yield bar
        self.epoch_number = epoch

    def evaluate(self, model, criterion, val_data):
        """training.evaluate on valid ([distributed] rank 0's figure on every rank), reported."""
        val_loss = self.dist.shared(training.evaluate(model, criterion, val_data, EVAL_BATCH_SIZE, self.args.bptt))
        run_log.report_epoch(self.epoch_number, self.epoch_start_time, val_loss, model.report_style)
        return val_loss

    def save_best(self, model, criterion, optimizer, val_loss):
        """Saves a new best model to the run's output; returns its valid loss, the new best."""
        self.save(model, criterion, optimizer, self.output)
        print('Saving Averaged!' if training.is_asgd(optimizer) else 'Saving model (new best validation)')
        return val_loss

    def save(self, model, criterion, optimizer, path, **state):
        """A checkpoint at `path` (with `state`: a resume state). [distributed] Rank 0 writes, and every rank
        waits until it has (the best model is read back by all at the end)."""
        self.dist.writer(checkpoint.save_checkpoint)(path, model, criterion, optimizer, self.args,
                                                     self.corpus.dictionary.idx2word, run=self.owner.run,
                                                     tokenizer=self.corpus.tokenizer, **state)

    def end_epoch(self, epoch, model, criterion, optimizer, history, best_val_loss, train_loss, val_loss, trained_with,
                  done=None):
        """The epoch's log record (`trained_with`: its lr and optimizer) and the resume state, written
        together (SIGTERM waits for both)."""
        train_loss = self.dist.mean(train_loss)  # [distributed] over all ranks' columns
        self.log.write(epoch=epoch, seconds=time.time() - self.epoch_start_time, **trained_with, train_loss=train_loss,
                       **run_log.loss_record('valid', val_loss), **self.dist.check_in_sync(self.params))
        extra = dict(script='main') if self.script == 'main' else \
            dict(script='finetune', done=done, start_runs=self.owner.start_runs)
        with interrupts.sigterm_held():  # the state and the note that this run wrote it go together
            self.save(model, criterion, optimizer, self.owner.state_file, epoch=epoch, history=history,
                      best_val_loss=best_val_loss, rng=checkpoint.rng_state(self.rng, self.device), **extra)
            self.owner.wrote_state()

    # -----------------------------------------------------------------------------------------
    # After the loop

    def finish(self, model, criterion, test_data, best_val_loss):
        """Tests the best model this run saved (batch size 1) and logs it; returns the exit status (143
        after SIGTERM, with the command that continues the run)."""
        if self.interrupted is not None and self.interrupted.preempted:
            resume_from = self.output if self.script == 'main' else self.owner.state_file
            return self.owner.report_interrupted(f'--resume {resume_from} --data {self.args.data}')
        path = self.owner.best_model_path(self.output) if self.script == 'main' else self.output
        best = self.owner.read_best(path)
        checkpoint.load_weights(model, criterion, best, path)
        test_loss = training.evaluate(model, criterion, test_data, TEST_BATCH_SIZE, self.args.bptt)
        print('=' * 89)
        print(f'| End of training | {run_log.report_line("test", test_loss, model.report_style)}')
        print('=' * 89)
        self.log.write(final=True, **run_log.loss_record('valid', best_val_loss),
                       **run_log.loss_record('test', test_loss))
        return 0


def output_of_finetuning(args):
    """Where fine-tuning writes: --out, else --save (in place, as the original did), else the run a
    `--resume PATH.finetune.state` names."""
    if args.out is not None and args.out.strip() == '':
        raise UserError('--out must not be empty')
    out = args.out or args.save
    if out is None:
        # Which run to continue: --resume STATE names it; a bare --resume needs the output path.
        if not (args.resume or '').endswith('.finetune.state'):
            raise UserError('--resume: give --save (or --out) of the fine-tuning to continue, '
                            'or its state file: --resume PATH.finetune.state')
        out = args.resume[:-len('.finetune.state')]
    return out
