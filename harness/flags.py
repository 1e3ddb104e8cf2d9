"""The mechanics of the command-line flags: declaring a flag once with everything known about it, and
the steps that read those declarations (checking values, telling given flags from defaults, adopting a
saved run's flags, noting a checkpoint's model flags).

A script declares each flag once, in its parser, with `declare`: argparse's add_argument plus
- `must`: the rule its value obeys, a (test, what it must be) pair such as POSITIVE_INT, checked for
  the command line and for the flags a resume state brings back;
- `may_change_on_resume`: an exact resume (--resume) continues the saved run with its own settings,
  except for the flags declared so (--epochs, --save, the device, ...);
- `from_checkpoint`: the attribute of a loaded model the flag describes; finetune.py takes such flags
  from the checkpoint (a value given that disagrees is noted and ignored), as the original did.
The flags the scripts share for their plumbing (--data, --save, the device, the GPU speed options) are
declared here; the paper's flags (model, regularisation, NT-ASGD) are declared in main.py.
"""
import argparse

import torch

from errors import UserError
from model import CELLS

# The largest float32: the optimizers turn --lr and --wdecay into float32 scalars, and a larger value
# (1e39) passes a plain finiteness check, then fails inside the optimizer's first step.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Adam's first step is lr / (1 - beta1) = 10 x lr (its bias correction), so its lr must be 10 times smaller.
ADAM_FIRST_STEP = 1 / (1 - 0.9)

# The rules flags obey: (test, what the message says the value must be).
RATE = (lambda v: 0 <= v < 1, 'in [0, 1)')
POSITIVE_INT = (lambda v: isinstance(v, int) and v > 0, 'a positive integer')
NON_NEGATIVE_INT = (lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0')
POSITIVE_FLOAT32 = (lambda v: 0 < v <= FLOAT32_MAX, f'positive and finite in float32 (at most {FLOAT32_MAX:.4g})')
NON_NEGATIVE_FLOAT32 = (lambda v: 0 <= v <= FLOAT32_MAX, f'>= 0 and finite in float32 (at most {FLOAT32_MAX:.4g})')
CELL = (lambda v: v in CELLS, ' or '.join([', '.join(list(CELLS)[:-1]), list(CELLS)[-1]]))
SEED = (lambda v: isinstance(v, int) and 0 <= v <= 2 ** 32 - 1, 'an integer in [0, 2**32 - 1]')
POSITIVE_INT_OR_DEFAULT = (lambda v: isinstance(v, int) and (v > 0 or v == -1), 'a positive integer (or the default -1)')


def declare(group, *names, must=None, may_change_on_resume=False, from_checkpoint=None, **argparse_kwargs):
    """add_argument, with the flag's rule, whether a resume may change it, and which attribute of a loaded
    model it describes (see the module's docstring); returns the argparse action, which carries them."""
    action = group.add_argument(*names, **argparse_kwargs)
    action.must, action.may_change_on_resume, action.from_checkpoint = must, may_change_on_resume, from_checkpoint
    return action


def add_data_args(parser, default_save=None):
    g = parser.add_argument_group('data, checkpoint and device')
    declare(g, '--data', type=str, default='data/penn/', may_change_on_resume=True,
            help='folder with train.txt, valid.txt, test.txt (see getdata.sh)')
    declare(g, '--save', type=str, default=default_save, may_change_on_resume=True, help='path of the checkpoint')
    add_device_args(g)
    return g


def add_device_args(parser):
    declare(parser, '--cuda', action='store_true', may_change_on_resume=True,
            help='use the GPU; this is already the default when one is present (unlike the '
                 "original, where passing --cuda turned CUDA off)")
    declare(parser, '--cpu', action='store_true', may_change_on_resume=True,
            help='run on the CPU even when a GPU is present')


def add_speed_args(parser):
    """--cuda-graphs and --bf16: GPU-only ways to run the same training step faster."""
    g = parser.add_argument_group('GPU speed (experimental; CUDA only)')
    declare(g, '--cuda-graphs', may_change_on_resume=True, action=argparse.BooleanOptionalAction, default=False,
                   help='replay the training step as CUDA graphs (cuda_graphs.py): the same kernels with one '
                        'launch per step; off by default until a GPU run has shown it gives the eager numbers')
    declare(g, '--bf16', may_change_on_resume=True, action='store_true',
                   help='bfloat16 autocast around the forward pass and loss of each training step (evaluation '
                        'stays fp32). Changes the numerics: perplexities are not those of fp32 runs; kept '
                        'experimental until a learning curve on a GPU shows it stays within fp32\'s spread')
    return g


def declarations(parser):
    """The parser's flags by destination: {dest: argparse action}."""
    return {action.dest: action for action in parser._actions if action.option_strings}


def flag_name(parser, name):
    """The flag as typed for an argparse destination: `--log-interval` for log_interval."""
    action = declarations(parser).get(name)
    return action.option_strings[0] if action is not None else '--' + name


def may_change_on_resume(parser):
    return tuple(name for name, action in declarations(parser).items() if getattr(action, 'may_change_on_resume', False))


def from_checkpoint(parser):
    """{dest: the loaded model's attribute} of the flags a fine-tuning takes from its checkpoint."""
    return {name: action.from_checkpoint for name, action in declarations(parser).items()
            if getattr(action, 'from_checkpoint', None)}


def parse_args(parser, argv=None):
    """The parsed flags, checked (check_args; the GPU speed options need a GPU)."""
    args = parser.parse_args(argv)
    check_args(args, parser)
    check_speed_args(args)
    return args


def check_args(args, parser):
    """Impossible flag values become a UserError naming the flag: each declared rule (`must`), for the flags
    present (a None left by a default of None is not a value), then the rules between flags."""
    for name, action in declarations(parser).items():
        rule = getattr(action, 'must', None)
        if rule is None or not hasattr(args, name) or getattr(args, name) is None and action.default is None:
            continue
        test, expected = rule
        value = getattr(args, name)
        if not holds(test, value):
            raise UserError(f'{action.option_strings[0]} must be {expected}, got {value!r}')
    check_combinations(args)


def holds(test, value):
    try:
        return bool(test(value)) and not isinstance(value, bool)
    except TypeError:  # a value of the wrong type, e.g. from a hand-edited resume state
        return False


def check_combinations(args):
    """The rules between flags (read with getattr: a script has only some of them)."""
    def require(ok, message):
        if not ok:
            raise UserError(message)
    model = getattr(args, 'model', None)
    if getattr(args, 'release', None) == 2017:
        require(model in (None, 'LSTM'),
                f'--release 2017 builds LSTMs only (the first release had no {model}); use --release 2018')
    if (getattr(args, 'n_experts', None) or 1) > 1:
        require(getattr(args, 'release', None) in (None, 2018),
                '--n_experts > 1 (MoS) computes as MoS did, on the 2018 code; it cannot be used with --release 2017')
        require(model in (None, 'LSTM'), f'--n_experts > 1 (MoS) is built on LSTMs only, as MoS was, not --model {model}')
    elif getattr(args, 'nhidlast', None) not in (None, -1):
        require(args.nhidlast == getattr(args, 'emsize', args.nhidlast),
                '--nhidlast needs --n_experts > 1: the tied softmax reads the last layer, which has --emsize units')
    small, batch = getattr(args, 'small_batch_size', -1), getattr(args, 'batch_size', None)
    if small not in (-1, None) and holds(lambda v: v > 0, small) and holds(lambda v: v > 0, batch):
        require(batch % small == 0, f'--small_batch_size {small} must divide --batch_size {batch}')
    if hasattr(args, 'optimizer'):
        require(args.optimizer in ('sgd', 'adam'), f'--optimizer must be sgd or adam, got {args.optimizer!r}')
        if args.optimizer == 'adam' and holds(lambda v: v > 0, getattr(args, 'lr', None)):
            require(args.lr * ADAM_FIRST_STEP <= FLOAT32_MAX,
                    f'--lr with --optimizer adam must be at most {FLOAT32_MAX / ADAM_FIRST_STEP:.4g} (Adam\'s first '
                    f'step is 10 x lr, which must be finite in float32), got {args.lr!r}')
    if hasattr(args, 'when'):
        bad = [e for e in args.when if not holds(lambda e: e > 0 or e == -1, e)] \
            if isinstance(args.when, list) else [args.when]
        require(not bad, f'--when epochs must be positive (or the default -1), got {bad}')
    if getattr(args, 'save', None) is not None:
        require(args.save.strip() != '', '--save must not be empty')


def check_resumed_args(args, parser, path):
    """Flags taken from a resume state are checked as those of the command line are."""
    try:
        check_args(args, parser)
    except UserError as e:
        raise UserError(f'{path}: the run settings saved in it are invalid: {e}') from None


def check_speed_args(args):
    """--cuda-graphs and --bf16 need a CUDA GPU (and not --cpu)."""
    for flag, on in (('--cuda-graphs', getattr(args, 'cuda_graphs', False)), ('--bf16', getattr(args, 'bf16', False))):
        if on and (getattr(args, 'cpu', False) or not torch.cuda.is_available()):
            raise UserError(f'{flag} needs a CUDA GPU')


def run_flags(args, parser):
    """Every setting of a run, keyed by its flag as typed (`--log-interval`): what the ranks of one
    data-parallel run compare at start-up."""
    return {flag_name(parser, name): value for name, value in sorted(vars(args).items())}


def given_flags(parser, argv=None):
    """The names (dests) of the options given on the command line, abbreviations (`--epoch`) included,
    as opposed to those holding their defaults. argparse fills in a default only where the namespace
    lacks the name, so each name starts out holding a marker that only a given option replaces."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    return {k for k, v in vars(parser.parse_args(argv, namespace)).items() if v is not unset}


def adopt_run_args(args, saved_args, may_change, given):
    """Continue a saved run with its own settings: copy every saved flag not in `may_change` into
    `args`; returns the names of the flags `given` on the command line (given_flags) whose values were
    overridden (to note): a flag left at its default was never the user's to ignore."""
    ignored = sorted(k for k, v in saved_args.items()
                     if k not in may_change and k in given and getattr(args, k, None) != v)
    for k, v in saved_args.items():
        if k not in may_change:
            setattr(args, k, v)
    return ignored


def note_model_flags(args, model, flags):
    """Fine-tuning uses the checkpoint's model: a flag of `flags` ({dest: the model's attribute}) given on
    the command line (not None) that disagrees with the loaded `model` is noted, and every one of them
    takes the model's value."""
    for flag, attribute in flags.items():
        saved = getattr(model, attribute)
        given = getattr(args, flag, None)
        if given is not None and given != saved:
            print(f'note: --{flag} {given} ignored: the checkpoint holds a model with {flag} {saved}')
        setattr(args, flag, saved)
