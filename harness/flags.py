"""The command-line flags the training scripts share: their argument groups (with each flag's
default and help), the values each may take (FLAG_RULES), which may change when a run is continued
(RESUME_MAY_CHANGE), and the steps that compare flags: given on the command line or left at their
default, a saved run's flags adopted, a checkpoint's model flags noted.

Each fact about a flag is written here once; its name as typed (`--log-interval`) is read from the
parser, not written again.
"""
import argparse
import functools

import torch

import data
from errors import UserError


def add_data_args(parser, default_save=None):
    g = parser.add_argument_group('data, checkpoint and device')
    g.add_argument('--data', type=str, default='data/penn/',
                   help='folder with train.txt, valid.txt, test.txt (see getdata.sh)')
    g.add_argument('--save', type=str, default=default_save, help='path of the checkpoint')
    add_device_args(g)
    return g


def add_device_args(parser):
    parser.add_argument('--cuda', action='store_true',
                        help='use the GPU; this is already the default when one is present (unlike the '
                             "original, where passing --cuda turned CUDA off)")
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even when a GPU is present')


def add_model_args(parser):
    g = parser.add_argument_group('model (AWD-LSTM paper section 5: 3-layer LSTM, 1150 hidden, 400 embedding)')
    g.add_argument('--model', type=str, default='LSTM', help='recurrent core: LSTM, QRNN or GRU')
    g.add_argument('--emsize', type=int, default=400, help='size of word embeddings')
    g.add_argument('--nhid', type=int, default=1150, help='number of hidden units per layer')
    g.add_argument('--nlayers', type=int, default=3, help='number of layers')
    g.add_argument('--release', type=int, choices=(2017, 2018), default=2018,
                   help="which release of the original code to compute as: 2018 (1d466ec, default) or 2017 "
                        "(acb04a5, the 2017 README's figures: its locked-dropout mask, numpy seeded with 331, "
                        "the full softmax for any vocabulary; LSTM only). docs/PARITY.md: 'The two releases'")
    return g


def add_dropout_args(parser):
    g = parser.add_argument_group('regularisation (paper section 4)')
    g.add_argument('--dropout', type=float, default=0.4, help='locked dropout on the last layer output')
    g.add_argument('--dropouth', type=float, default=0.3, help='locked dropout between recurrent layers')
    g.add_argument('--dropouti', type=float, default=0.65, help='locked dropout on the embedded input')
    g.add_argument('--dropoute', type=float, default=0.1, help='embedding dropout: whole words removed')
    g.add_argument('--wdrop', type=float, default=0.5, help='DropConnect on the hidden-to-hidden weights')
    g.add_argument('--alpha', type=float, default=2, help='activation regularisation (AR) weight, eq. 4.6')
    g.add_argument('--beta', type=float, default=1, help='temporal activation regularisation (TAR) weight')
    g.add_argument('--wdecay', type=float, default=1.2e-6, help='weight decay (L2) on all parameters')
    return g


def add_training_args(parser, lr=30, epochs=8000):
    g = parser.add_argument_group('training (paper section 3: NT-ASGD)')
    g.add_argument('--lr', type=float, default=lr, help='initial learning rate')
    g.add_argument('--clip', type=float, default=0.25, help='gradient norm clipping (0: off)')
    g.add_argument('--epochs', type=int, default=epochs, help='upper epoch limit')
    g.add_argument('--batch_size', type=int, default=80, metavar='N', help='batch size')
    g.add_argument('--bptt', type=int, default=70, help='mean sequence length of variable-length BPTT')
    g.add_argument('--nonmono', type=int, default=5, help='non-monotone interval n of NT-ASGD')
    g.add_argument('--seed', type=int, default=1111, help='random seed (torch and numpy)')
    g.add_argument('--log-interval', type=int, default=200, metavar='N', help='report interval in batches')
    return g


def add_mixture_args(parser):
    """AWD-LSTM-MoS (Yang et al. 2018, mos.py) and its training options, with zihangdai/mos's defaults."""
    g = parser.add_argument_group('Mixture of Softmaxes (AWD-LSTM-MoS, Yang et al. 2018; docs/MOS.md)')
    g.add_argument('--n_experts', type=int, default=1,
                   help='number of softmaxes mixed (1: the tied softmax of AWD-LSTM; MoS used 15)')
    g.add_argument('--nhidlast', type=int, default=-1,
                   help='units of the last recurrent layer with --n_experts > 1 (default -1: --emsize)')
    g.add_argument('--dropoutl', type=float, default=-0.2,
                   help='locked dropout on the mixture\'s latent vectors (negative, the default: --dropouth)')
    g.add_argument('--small_batch_size', type=int, default=-1,
                   help='process each batch in column groups of this size, each with its own hidden state '
                        'and dropout masks, gradients summed into one step (changes the regularisation, not '
                        'only the memory; default: the whole batch at once)')
    g.add_argument('--max_seq_len_delta', type=int, default=40,
                   help='with --n_experts > 1, the sampled BPTT length is capped at bptt + this, as in MoS')
    g.add_argument('--single_gpu', action='store_true',
                   help="accepted for MoS's command lines; one process uses one GPU (several: torchrun)")
    return g


def add_vocabulary_args(parser):
    """main.py's vocabulary options (data.restrict_vocabulary); saved with the run's flags in the checkpoint,
    whose later scripts read the corpus with them (checkpoint.vocabulary_options). Defaults: the original's.
    Defined in data.py, whose own command line (`python data.py DIR`) takes the same flags."""
    return data.add_vocabulary_args(parser)


def add_speed_args(parser):
    """--cuda-graphs and --bf16: GPU-only ways to run the same training step faster."""
    g = parser.add_argument_group('GPU speed (experimental; CUDA only)')
    g.add_argument('--cuda-graphs', action=argparse.BooleanOptionalAction, default=False,
                   help='replay the training step as CUDA graphs (cuda_graphs.py): the same kernels with one '
                        'launch per step; off by default until a GPU run has shown it gives the eager numbers')
    g.add_argument('--bf16', action='store_true',
                   help='bfloat16 autocast around the forward pass and loss of each training step (evaluation '
                        'stays fp32). Changes the numerics: perplexities are not those of fp32 runs; kept '
                        'experimental until a learning curve on a GPU shows it stays within fp32\'s spread')
    return g


def add_schedule_args(parser):
    """main.py's optimisation schedule: the optimizer, --when, the sequence-length cap and --resume."""
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
    return g


# The largest float32: the optimizers turn --lr and --wdecay into float32 scalars, and a larger value
# (1e39) passes a plain finiteness check, then fails inside the optimizer's first step.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


# Adam's first step is lr / (1 - beta1) = 10 x lr (its bias correction), so its lr must be 10 times smaller.
ADAM_FIRST_STEP = 1 / (1 - 0.9)


# Which values each numeric flag may take: (flags, test, what the message says).
FLAG_RULES = [
    (('dropout', 'dropouth', 'dropouti', 'dropoute', 'wdrop'), lambda v: 0 <= v < 1, 'in [0, 1)'),
    (('emsize', 'nhid', 'nlayers', 'batch_size', 'bptt', 'epochs', 'log_interval'),
     lambda v: isinstance(v, int) and v > 0, 'a positive integer'),
    (('lr',), lambda v: 0 < v <= FLOAT32_MAX, f'positive and finite in float32 (at most {FLOAT32_MAX:.4g})'),
    # A negative clip makes clip_grad_norm_ flip every gradient: training goes uphill.
    (('clip',), lambda v: v >= 0, '>= 0 (0: no clipping)'),
    (('wdecay', 'alpha', 'beta'), lambda v: 0 <= v <= FLOAT32_MAX,
     f'>= 0 and finite in float32 (at most {FLOAT32_MAX:.4g})'),
    (('nonmono',), lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
    (('seed',), lambda v: isinstance(v, int) and 0 <= v <= 2 ** 32 - 1, 'an integer in [0, 2**32 - 1]'),
    (('n_experts',), lambda v: isinstance(v, int) and v >= 1,
     'a positive integer (1: the tied softmax; K > 1: a mixture of K softmaxes)'),
    (('nhidlast', 'small_batch_size'), lambda v: isinstance(v, int) and (v > 0 or v == -1),
     'a positive integer (or the default -1)'),
    (('dropoutl',), lambda v: v < 1, 'below 1 (negative: the same as --dropouth)'),
    (('max_seq_len_delta',), lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
    (('max_seq_len',), lambda v: v is None or isinstance(v, int) and v >= 5, 'at least 5 (the shortest sampled length)'),
]


# Flags that may differ when continuing a run from its resume state; every other setting is the run's own.
RESUME_MAY_CHANGE = ('epochs', 'resume', 'save', 'cuda', 'cpu', 'log_interval', 'data', 'cuda_graphs', 'bf16',
                     'single_gpu')


def steps_in_groups(args):
    """Whether training steps in column groups (--small_batch_size): MoS mode always does (one group of
    the whole batch by default), as MoS's main.py did; AWD-LSTM only when a smaller group is asked for."""
    small = getattr(args, 'small_batch_size', -1)
    return getattr(args, 'n_experts', 1) > 1 or small not in (-1, getattr(args, 'batch_size', None))


def seq_len_cap(args, cap):
    """The cap on sampled BPTT lengths: the script's `cap` (None: none) for AWD-LSTM; in MoS mode MoS's
    own, bptt + --max_seq_len_delta (main.py's and finetune.py's alike), lowered by --max-seq-len if given."""
    if getattr(args, 'n_experts', 1) == 1:
        return cap
    mos_cap = args.bptt + args.max_seq_len_delta
    given = getattr(args, 'max_seq_len', None)
    return mos_cap if given is None else min(given, mos_cap)


@functools.cache
def option_names():
    """{destination: the flag as typed} for every flag of this module's groups (`log_interval`:
    `--log-interval`), read from a parser built of them."""
    parser = argparse.ArgumentParser(add_help=False)
    for add in (add_data_args, add_model_args, add_dropout_args, add_training_args, add_mixture_args, add_speed_args,
                add_schedule_args):
        add(parser)
    return {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}


def flag_name(name):
    """The flag as typed for an argparse destination: `--log-interval` for log_interval."""
    return option_names().get(name, '--' + name)


def check_args(args):
    """Impossible flag values become a UserError naming the flag."""
    def require(ok, message):
        if not ok:
            raise UserError(message)

    def holds(test, value):
        try:
            return bool(test(value)) and not isinstance(value, bool)
        except TypeError:  # a value of the wrong type, e.g. from a hand-edited resume state
            return False
    for names, test, expected in FLAG_RULES:
        for name in names:
            if hasattr(args, name):
                value = getattr(args, name)
                require(holds(test, value), f'{flag_name(name)} must be {expected}, got {value!r}')
    if hasattr(args, 'model'):
        require(args.model in ('LSTM', 'QRNN', 'GRU'), f'--model must be LSTM, QRNN or GRU, got {args.model!r}')
    if getattr(args, 'release', None) == 2017:
        require(getattr(args, 'model', None) in (None, 'LSTM'),
                f'--release 2017 builds LSTMs only (the first release had no {getattr(args, "model", None)}); '
                'use --release 2018')
    if getattr(args, 'n_experts', 1) > 1:
        require(getattr(args, 'release', 2018) == 2018,
                '--n_experts > 1 (MoS) computes as MoS did, on the 2018 code; it cannot be used with --release 2017')
        require(getattr(args, 'model', None) in (None, 'LSTM'),
                f'--n_experts > 1 (MoS) is built on LSTMs only, as MoS was, not --model {getattr(args, "model", None)}')
    elif getattr(args, 'nhidlast', -1) != -1:
        require(args.nhidlast == getattr(args, 'emsize', args.nhidlast),
                '--nhidlast needs --n_experts > 1: the tied softmax reads the last layer, which has --emsize units')
    small = getattr(args, 'small_batch_size', -1)
    if small != -1 and holds(lambda v: v > 0, small) and holds(lambda v: v > 0, getattr(args, 'batch_size', None)):
        require(args.batch_size % small == 0,
                f'--small_batch_size {small} must divide --batch_size {args.batch_size}')
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


def check_resumed_args(args, path):
    """Flags taken from a resume state are checked as those of the command line are."""
    try:
        check_args(args)
    except UserError as e:
        raise UserError(f'{path}: the run settings saved in it are invalid: {e}') from None


def check_speed_args(args):
    """--cuda-graphs and --bf16 need a CUDA GPU (and not --cpu)."""
    for flag, on in (('--cuda-graphs', getattr(args, 'cuda_graphs', False)), ('--bf16', getattr(args, 'bf16', False))):
        if on and (getattr(args, 'cpu', False) or not torch.cuda.is_available()):
            raise UserError(f'{flag} needs a CUDA GPU')


def run_flags(args):
    """Every setting of a run, keyed by its flag as typed (`--log-interval`): what the ranks of one
    data-parallel run compare at start-up."""
    return {flag_name(name): value for name, value in sorted(vars(args).items())}


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


def note_model_flags(args, model_config, flags=('model', 'emsize', 'nhid', 'nlayers')):
    """Scripts that load a checkpoint build the model it describes; a model flag given on the command
    line (not None) that disagrees is noted and replaced by the checkpoint's value. Dropout flags
    (named as in the model's config) may be listed too."""
    config_name = {'model': 'rnn_type', 'emsize': 'ninp'}
    for flag in flags:
        saved = model_config[config_name.get(flag, flag)]
        given = getattr(args, flag, None)
        if given is not None and given != saved:
            print(f'note: --{flag} {given} ignored: the checkpoint holds a model with {flag} {saved}')
        setattr(args, flag, saved)
