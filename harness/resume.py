"""What --resume continues from: a run's resume state, exactly where it stopped (weights, optimizer
with ASGD's averages, random states, epoch, history), or a checkpoint alone, whose weights a new run
starts from with the flags' lr and dropouts (what the original's --resume did).

An exact resume continues the saved run with its own settings: every flag but those of
flags.RESUME_MAY_CHANGE is taken from the state, and a flag given on the command line that this
overrides is noted.
"""
import os

from . import checkpoint
from . import flags
from errors import UserError


class Resume:
    """What a run starts from. A new run: nothing (epoch 0, no history). An exact resume: `state` read
    from `state_file`. A restart from weights: `weights_file`, read when the model is built."""

    def __init__(self, state_file=None, state=None, weights_file=None, weights=None):
        self.state_file, self.state, self.weights_file, self.weights = state_file, state, weights_file, weights
        exact = state is not None
        self.epoch = state['epoch'] if exact else 0  # the last completed epoch
        self.history = list(state['history']) if exact else []  # the valid losses NT-ASGD compares
        self.best_val_loss = state['best_val_loss'] if exact else float('inf')
        self.optimizer_kind = state['optimizer_name'] if exact else None

    def load_weights(self, model, criterion, corpus, args):
        """The saved weights into a model built from the flags (after its flags were adopted)."""
        if self.state is not None:
            checkpoint.check_vocabulary(self.state['idx2word'], corpus, self.state_file, args.data)
            checkpoint.load_weights(model, criterion, self.state, self.state_file)
        elif self.weights_file:
            print('Resuming model ...')
            ckpt = self.weights
            checkpoint.check_vocabulary(ckpt['idx2word'], corpus, self.weights_file, args.data)
            checkpoint.load_weights(model, criterion, ckpt, self.weights_file)
            model.set_dropouts(args.dropout, args.dropouth, args.dropouti, args.dropoute, args.wdrop)

    def restore(self, optimizer, rng, device, args):
        """The optimizer's and the random generators' saved states, for an exact resume; says which resume it is."""
        kind = self.optimizer_kind or args.optimizer
        if self.state is not None:
            checkpoint.restore_training_state(optimizer, rng, device, self.state, self.state_file)
            print(f'Resuming exactly from {self.state_file} after epoch {self.epoch} '
                  f'({kind}, lr {optimizer.param_groups[0]["lr"]})')
        elif self.weights_file:
            print(f'Restarting from the weights of {self.weights_file} (no resume state beside it): '
                  f'fresh {kind} optimizer, lr {args.lr} and dropouts from the flags')


def of_main_run(args, given):
    """What main.py's --resume names: its resume state (the file itself, or <path>.state beside the
    checkpoint), else the checkpoint alone; for an exact resume the saved run's flags are adopted."""
    if not args.resume:
        return Resume()
    state_file = checkpoint.find_resume_state(args.resume)
    if state_file is None:
        if not os.path.isfile(args.resume):
            raise UserError(f'{args.resume}: checkpoint not found (--resume)')
        weights = checkpoint.read_checkpoint(args.resume)
        keep_release_of(weights, args, args.resume, given)
        return Resume(weights_file=args.resume, weights=weights)
    state = checkpoint.read_state(state_file, 'main')
    adopt_saved_flags(args, state, state_file, given, flags.RESUME_MAY_CHANGE)
    return Resume(state_file, state)


def adopt_saved_flags(args, state, state_file, given, may_change):
    """Continue the run of `state` with its own settings (all but `may_change`), checked as the command
    line's are; the flags `given` whose values this overrides are noted."""
    ignored = flags.adopt_run_args(args, state['args'], may_change, given)
    flags.check_resumed_args(args, state_file)
    if ignored:
        print(f'note: continuing the saved run with its own settings; ignored flags: {", ".join(ignored)}')


def keep_release_of(ckpt, args, path, given):
    """A restart from a checkpoint's weights computes as the release that trained them (its locked-dropout
    mask and numpy seeding, docs/PARITY.md), as finetune.py and the evaluation scripts do; a different
    --release is noted, whether given or the default."""
    saved = ckpt['model_config']['release']
    if args.release != saved:
        ignored = f' (--release {args.release} ignored)' if 'release' in given else ''
        print(f'note: restarting as release {saved}, the release of the model in {path}{ignored}')
        args.release = saved
