"""What a run starts from. main.py's --resume: a run's resume state, exactly where it stopped (weights,
optimizer with ASGD's averages, random states, epoch, history), or a checkpoint alone, whose weights a
new run starts from with the flags' lr and dropouts (what the original's --resume did). finetune.py:
the checkpoint it fine-tunes, or its own resume state.

An exact resume continues the saved run with its own settings: every flag but those declared
`may_change_on_resume` (flags.py) is taken from the state, and a flag given on the command line that
this overrides is noted.
"""
import os

from . import checkpoint
from . import flags
from errors import UserError


class Resume:
    """What a run starts from. A new run: nothing (epoch 0, no history). An exact resume: `state` read
    from `state_file`. A restart from weights: `weights_file`, read when the model is built."""

    def __init__(self, state_file=None, state=None, weights_file=None, weights=None, loaded=None, path=None):
        self.state_file, self.state, self.weights_file, self.weights = state_file, state, weights_file, weights
        # finetune.py: the loaded checkpoint (or its resume state), with its model and loss built, from `path`
        self.loaded, self.path = loaded, path
        self.model, self.criterion = (loaded['model'], loaded['criterion']) if loaded is not None else (None, None)
        exact = state is not None
        self.done = bool(state.get('done')) if exact else False  # a fine-tuning that had stopped
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
        kind = self.optimizer_kind or getattr(args, 'optimizer', 'asgd')
        if self.state is not None:
            checkpoint.restore_training_state(optimizer, rng, device, self.state, self.state_file)
            print(f'Resuming exactly from {self.state_file} after epoch {self.epoch} '
                  f'({kind}, lr {optimizer.param_groups[0]["lr"]})')
        elif self.weights_file:
            print(f'Restarting from the weights of {self.weights_file} (no resume state beside it): '
                  f'fresh {kind} optimizer, lr {args.lr} and dropouts from the flags')


def of_main_run(args, given, parser):
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
    adopt_saved_flags(args, state, state_file, given, parser)
    return Resume(state_file, state)


def of_finetuning(args, given, parser, device):
    """What finetune.py starts from: main.py's checkpoint (--save), or with --resume the state of its own
    run, whose flags are then adopted. Fine-tuning starts from the best model a run saved, never from a
    resume state's raw last-epoch weights."""
    state_file = find_finetune_state(args) if args.resume is not None else None
    loaded = checkpoint.load_checkpoint(state_file or args.save, map_location=device,
                                        resume_state_ok=state_file is not None)
    if state_file:
        checkpoint.check_state(loaded, state_file, 'finetune')
        adopt_saved_flags(args, loaded, state_file, given, parser)
    return Resume(state_file, loaded if state_file else None, loaded=loaded, path=state_file or args.save)


def find_finetune_state(args):
    """The fine-tuning resume state --resume designates (the file itself, or the one beside an output path)."""
    named = args.resume or args.out
    path = named if named.endswith('.state') else named + '.finetune.state'
    if not os.path.isfile(path):
        raise UserError(f'{path}: no fine-tuning resume state to continue from')
    return path


def adopt_saved_flags(args, state, state_file, given, parser):
    """Continue the run of `state` with its own settings (all but those a resume may change), checked as
    the command line's are; the flags `given` whose values this overrides are noted."""
    ignored = flags.adopt_run_args(args, state['args'], flags.may_change_on_resume(parser), given)
    flags.check_resumed_args(args, parser, state_file)
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
