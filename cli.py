"""The command-line plumbing the scripts share: run() (every error one line on stderr), argument
groups and flag checks, device and seeding, loading the data for a run, report lines and the JSON
log, progress bars, the files a run claims (checks and locks), Ctrl-C / SIGTERM / out-of-memory
handling, and the steps main.py's descendants share (continuing a run's flags, testing the best model).

Everything here serves a script's main(); what a run computes lives in training.py, what it stores
in checkpoint.py. It must not grow numerics of its own (the parity with the original rests on
training.py alone), and nothing below it (training.py, checkpoint.py, data.py) may import it.
"""
import argparse
import contextlib
import errno
import json
import math
import os
import re
import signal
import sys
import time
import uuid

import numpy as np
import torch

import data
from batching import batchify
from checkpoint import (atomic_write_text, check_replaceable, load_weights, read_checkpoint,
                        remove_stale_temporaries, temporary_name)
from errors import UserError
from training import evaluate, loss_figures, perplexity


# ---------------------------------------------------------------------------------------------
# Running a script: every error one line on stderr

def run(main):
    """Runs a script's main(); what goes wrong ends in one line on stderr, never a traceback.

    A UserError (bad input) or an OSError (the file system: a full disk, a missing folder) is
    `error: ...` with exit status 2; Ctrl-C outside the training loop is `error: interrupted`, 130;
    a closed output pipe (`| head`) ends quietly with 141, as a program killed by SIGPIPE would.
    """
    try:
        status = main()
        sys.stdout.flush()  # so that a closed pipe shows here, not in the interpreter's flush at exit
    except UserError as e:
        fail(str(e), 2)
    except BrokenPipeError:
        # Nothing more can be shown; point stdout at /dev/null so that the final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        fail('interrupted (Ctrl-C)', 130)
    except OSError as e:
        fail(f'{e.filename}: {e.strerror}' if e.filename and e.strerror else str(e), 2)
    except RuntimeError as e:
        if not cpu_out_of_memory(e):
            raise
        fail(cpu_out_of_memory(e), 2)
    sys.exit(status)


def cpu_out_of_memory(error):
    """The one-line report of torch's CPU allocator failing (a model or batch too large for the
    machine's memory, e.g. --emsize 100000000000), or None for any other error. Caught here, not only
    in the epoch loop as the GPU's is, since the model's own weights are allocated before it."""
    text = str(error)
    if "DefaultCPUAllocator: can't allocate memory" not in text:
        return None
    match = re.search(r'tried to allocate (\d+) bytes', text)
    size = f' for {int(match.group(1)) / 2 ** 30:.4g} GiB' if match else ''
    return (f'CPU out of memory: an allocation{size} failed; try a smaller model (--emsize, --nhid, '
            '--nlayers), --batch_size or --bptt')


def fail(message, status):
    # One write of the whole line: the ranks of a torchrun job share stderr, and print's separate write
    # of the newline let two ranks' lines run into one.
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()
    sys.exit(status)


# ---------------------------------------------------------------------------------------------
# Arguments, device and seeding, data

def add_model_args(parser):
    g = parser.add_argument_group('model (AWD-LSTM paper section 5: 3-layer LSTM, 1150 hidden, 400 embedding)')
    g.add_argument('--model', type=str, default='LSTM', help='recurrent core: LSTM, QRNN or GRU')
    g.add_argument('--emsize', type=int, default=400, help='size of word embeddings')
    g.add_argument('--nhid', type=int, default=1150, help='number of hidden units per layer')
    g.add_argument('--nlayers', type=int, default=3, help='number of layers')
    g.add_argument('--release', type=int, choices=(2017, 2018), default=2018,
                   help="which release of the original code to compute as: 2018 (1d466ec, default) or 2017 "
                        "(acb04a5, the 2017 README's figures: its locked-dropout mask, numpy seeded with 331, "
                        "the full softmax for any vocabulary; LSTM only). README: 'The two releases'")
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


def add_speed_args(parser):
    """--cuda-graphs and --bf16 (issue 20): GPU-only ways to run the same training step faster."""
    g = parser.add_argument_group('GPU speed (experimental; CUDA only)')
    g.add_argument('--cuda-graphs', action=argparse.BooleanOptionalAction, default=False,
                   help='replay the training step as CUDA graphs (cuda_graphs.py): the same kernels with one '
                        'launch per step; off by default until a GPU run has shown it gives the eager numbers')
    g.add_argument('--bf16', action='store_true',
                   help='bfloat16 autocast around the forward pass and loss of each training step (evaluation '
                        'stays fp32). Changes the numerics: perplexities are not those of fp32 runs; kept '
                        'experimental until a learning curve on a GPU shows it stays within fp32\'s spread')
    return g


def check_speed_args(args):
    """--cuda-graphs and --bf16 need a CUDA GPU (and not --cpu)."""
    for flag, on in (('--cuda-graphs', getattr(args, 'cuda_graphs', False)), ('--bf16', getattr(args, 'bf16', False))):
        if on and (getattr(args, 'cpu', False) or not torch.cuda.is_available()):
            raise UserError(f'{flag} needs a CUDA GPU')


def train_step_for(args, dist=None):
    """The training step the speed flags ask for: training.train_step (the default), with bf16
    autocast, or its CUDA-graph replay (cuda_graphs.GraphedTrainStep)."""
    import functools
    import cuda_graphs
    import training  # looked up when called: tests replace training.train_step
    autocast = None
    if getattr(args, 'bf16', False):
        # cache_enabled=False: autocast's cache of cast weights must not outlive a captured step.
        autocast = functools.partial(torch.autocast, 'cuda', dtype=torch.bfloat16, cache_enabled=False)
    if getattr(args, 'cuda_graphs', False):
        if dist is not None and dist.world_size > 1:
            raise UserError('--cuda-graphs does not work with several processes (torchrun) yet')
        return cuda_graphs.GraphedTrainStep(autocast=autocast)
    if autocast is not None:
        return functools.partial(training.train_step, autocast=autocast)
    return training.train_step


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
]


# The flags whose name is not their argparse destination.
DASHED_FLAGS = {'log_interval': 'log-interval', 'max_seq_len': 'max-seq-len'}


def flag_name(name):
    return '--' + DASHED_FLAGS.get(name, name)


def run_flags(args):
    """Every setting of a run, keyed by its flag as typed (`--log-interval`): what the ranks of one
    data-parallel run compare at start-up."""
    return {flag_name(name): value for name, value in sorted(vars(args).items())}


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
                f'--release 2017 builds LSTMs only (the first release had no {args.model}); use --release 2018')
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


def choose_device(args):
    """The GPU when one is present (or asked for with --cuda), the CPU with --cpu or when none is."""
    if getattr(args, 'cpu', False):
        return torch.device('cpu')
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(args, 'cuda', False):
        print('note: --cuda given but no GPU is available; running on the CPU')
    return torch.device('cpu')


def set_seed(seed, numpy_seed=None):
    """Seeds torch (CPU and CUDA) with `seed`; returns the numpy generator that draws the BPTT lengths,
    seeded with `numpy_seed` (default: `seed`, as the original main.py did with np.random.seed)."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    return np.random.RandomState(seed if numpy_seed is None else numpy_seed)


def load_data(args, batch_sizes, device, log=print):
    """Corpus of args.data with each split batchified: returns (corpus, train, valid, test).

    `batch_sizes` = (train, valid, test); raises a UserError when a split is too small for them.
    """
    try:
        corpus = data.load_corpus(args.data, log=log)
    except data.DataError as e:
        raise UserError(str(e)) from None
    splits = []
    for name, bsz in zip(data.SPLITS, batch_sizes):
        stream = getattr(corpus, name)
        # Evaluation needs 2 rows (inputs and their next words); one training batch needs 3, since
        # train_epoch stops 2 rows before the end: with 2 rows it would train on nothing.
        rows = 3 if name == 'train' else 2
        if len(stream) // bsz < rows:
            raise UserError(f'{os.path.join(args.data, name + ".txt")}: {len(stream)} tokens are too few '
                            f'for batch size {bsz} (at least {rows * bsz})')
        splits.append(batchify(stream, bsz, device=device))
    return (corpus, *splits)


# ---------------------------------------------------------------------------------------------
# What a run prints and logs

def report_line(kind, loss, release=2018):
    """`<kind> loss x | <kind> ppl y | <kind> bpc z`, the figures every log line ends with (the 2017
    release of the original printed no bpc)."""
    return loss_figures(loss, release, kind)


def loss_record(kind, loss):
    return {f'{kind}_loss': loss, f'{kind}_ppl': perplexity(loss), f'{kind}_bpc': loss / math.log(2)}


def report_epoch(epoch, epoch_start_time, val_loss, release=2018):
    """The end-of-epoch block main.py prints: time and valid loss / ppl / bpc between rules."""
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | '
          f'{report_line("valid", val_loss, release)}')
    print('-' * 89)


class JsonLog:
    """A JSON-lines log, appended to and never truncated: one record per call, flushed at once so a
    crash loses nothing written.

    Runs that share a log (a new run on an old --save, a restart from a checkpoint) are told apart by
    `run`, the id each record carries. Numbers that are not finite are written as null, so that
    strict JSON parsers read every line. A resumed run passes `resumed_after` (the epoch of its
    resume state): its own records of later epochs, and its final record, are dropped, since it is
    about to redo those epochs (kill -9 can strike between an epoch's record and its state).
    """

    def __init__(self, path, run=None, resumed_after=None):
        self.path, self.run = path, run
        self._end_a_cut_off_line()
        if resumed_after is not None:
            self._forget_records_after(resumed_after)
        try:
            self.file = open(path, 'a')
        except OSError as e:
            raise UserError(f'{path}: cannot write the log ({e.strerror})') from None

    def write(self, **record):
        if self.run is not None:
            record = {'run': self.run, **record}
        try:
            self.file.write(json.dumps(finite_or_null(record), allow_nan=False) + '\n')
            self.file.flush()
        except OSError as e:
            raise UserError(f'{self.path}: could not write the log ({e.strerror or e})') from None

    def _end_a_cut_off_line(self):
        """A last line without its newline was cut off by an interrupted write (a full disk, kill -9):
        the next record appended to it would spoil both. A whole record that only lacks the newline
        gets it; a partial one, which nothing can read, is dropped, with a note."""
        try:
            with open(self.path, 'rb+') as f:
                content = f.read()
                if not content or content.endswith(b'\n'):
                    return
                keep = content.rfind(b'\n') + 1
                tail = content[keep:]
                try:
                    whole = isinstance(json.loads(tail), dict)
                except ValueError:
                    whole = False
                if whole:
                    f.write(b'\n')
                else:
                    f.truncate(keep)
                    print(f'note: {self.path}: dropped its last line, a record cut off by an interrupted write '
                          f'({len(tail)} bytes)')
        except FileNotFoundError:
            return
        except OSError as e:
            raise UserError(f'{self.path}: cannot write the log ({e.strerror})') from None

    def _forget_records_after(self, epoch):
        if not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        kept = [line for line in lines if not self._redone(line, epoch)]
        if len(kept) < len(lines):
            atomic_write_text(''.join(kept), self.path)

    def _redone(self, line, epoch):
        try:
            record = json.loads(line)
        except ValueError:
            return False  # not ours to judge
        return (isinstance(record, dict) and record.get('run') == self.run
                and (record.get('final', False) or (record.get('epoch') or 0) > epoch))


def finite_or_null(value):
    """`value` with every float that is inf or NaN replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_log_path(save):
    """The log of the run saving to `save`: the whole name plus .jsonl, so that two --save names
    never share a log (stripping an extension made runs/lr0.5 and runs/lr0.1 both runs/lr0.jsonl)."""
    return save + '.jsonl'


def progress_bar(total, desc):
    """tqdm over the batches of an epoch, silent when stdout is not a terminal (logs, CI)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stdout.isatty(), dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# The files a run writes: checked before any work is done, locked while the run lasts

def data_files(folder):
    """The split files of a corpus folder: inputs that no output may overwrite."""
    return [os.path.join(folder, split + '.txt') for split in data.SPLITS]


def writable(path):
    """Whether `path` may be written. A file or folder marked read-only (no write bit) is respected
    even by root, for whom os.access always says yes (data.py treats the corpus cache the same way)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


def check_output(path, flag, inputs=(), replaced=False):
    """Fail at once, not after an epoch, if the file `path` (named by `flag`) cannot be written or
    would overwrite one of `inputs`. A symlink is judged by its target, which is what gets written.
    `replaced`: the file is written by replacing it (checkpoint.atomic_write), so it must be a regular
    file if it exists: a device node or FIFO there (`--save /dev/null`) would itself be replaced."""
    if os.path.isdir(path):
        raise UserError(f'{path}: is a folder ({flag} names the file to write)')
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UserError(f'{folder}: folder does not exist ({flag} {path})')
    if not writable(folder):
        raise UserError(f'{folder}: folder is read-only ({flag} {path})')
    check_name(path, target, flag, replaced)
    if replaced:
        check_replaceable(target, f'{path} ({flag})')
    if os.path.exists(target):
        if not writable(target):
            raise UserError(f'{path}: file is read-only ({flag})')
        for source in inputs:
            if os.path.exists(source) and os.path.samefile(target, source):
                raise UserError(f'{path}: {flag} would overwrite {source}, an input of this run')


def check_name(path, target, flag, replaced):
    """A loop of symlinks, or a name too long for the file system, found now rather than at the first
    save. A replaced file is first written under a longer temporary name (checkpoint.temporary_name):
    that name must fit too."""
    try:
        os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as e:  # ELOOP (a symlink loop); a name too long is measured below
        if e.errno != errno.ENAMETOOLONG:
            raise UserError(f'{path}: {e.strerror} ({flag})') from None
    folder, name = os.path.split(target)
    longest = temporary_name(name) if replaced else name
    name_max, path_max = path_limit(folder, 'PC_NAME_MAX', 255), path_limit(folder, 'PC_PATH_MAX', 4096)
    excess = max(len(os.fsencode(longest)) - name_max, len(os.fsencode(os.path.join(folder, longest))) - path_max + 1)
    if excess > 0:
        raise UserError(f'{path}: name too long for this file system ({flag}): shorten it by at least {excess} bytes '
                        f'(a name may have {name_max} bytes here, a path {path_max - 1}'
                        + (f', including the {len(longest) - len(name)} that the temporary file written first adds)'
                           if replaced else ')'))


def path_limit(folder, name, default):
    """os.pathconf(folder, name), or `default` where the file system does not say."""
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


@contextlib.contextmanager
def run_files(save, outputs, inputs=()):
    """Claims the files of a run for as long as it lasts.

    `outputs` are (path, flag) pairs: each must be writable and, if it exists, a regular file
    (check_output: checkpoints and states are replaced when written). Then an exclusive lock on
    `<save>.lock`, beside the file `save` resolves to, is held, so that a second run on the same files
    stops at once instead of interleaving its log records and checkpoints with this one's; the lock
    goes with the process, however it ends. Holding it, the hidden temporary files that a killed run
    left behind for these outputs are removed. A `save` named like a resume state is refused.
    """
    if save.endswith('.state'):
        # Resume states are <save>.state and <out>.finetune.state: a checkpoint written over one (say
        # finetune.py --save X.pt.state, which fine-tunes in place) ends the resumability of its run.
        flag = next((flag for path, flag in outputs if path == save), '--save')
        raise UserError(f'{save}: {flag} names a resume state (.state): writing a checkpoint there would leave its '
                        'run unable to continue; write the model elsewhere (finetune.py: --out)')
    # Longest first: a name too long for the file system is reported with the most it must be shortened by.
    for path, flag in sorted(outputs, key=lambda output: -len(os.fsencode(output[0]))):
        check_output(path, flag, inputs, replaced=True)
    # The lock of the file `save` resolves to: a symlink to another run's --save (or a folder reached
    # through a symlink) names the same lock as that run's own path, so the two cannot both write it.
    lock = hold_lock(lock_path(save), save)
    try:
        remove_stale_temporaries(path for path, _ in outputs)
        yield
    finally:
        os.close(lock)


def lock_path(save):
    """`<save>.lock`, beside the file `save` resolves to (see run_files)."""
    return os.path.realpath(save) + '.lock'


def hold_lock(path, name):
    """An open descriptor holding an exclusive flock on `path`; a UserError naming `name` (the run's
    files) if another holds it. The holder writes a token of its own into the file: the other ranks of
    a data-parallel run read it to tell that they see rank 0's files (distributed.check_same_start)."""
    import fcntl  # POSIX only, as are the scripts' signals
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f'{path}: cannot create the lock of this run ({e.strerror})') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f'{name}: another run is using these files (it holds {path}); '
                        'wait for it to end, or write elsewhere') from None
    os.ftruncate(fd, 0)
    os.write(fd, uuid.uuid4().hex.encode())
    return fd


# ---------------------------------------------------------------------------------------------
# Ctrl-C, SIGTERM and out-of-memory around the epoch loop

OOM_MESSAGE = ('GPU out of memory: try --max-seq-len (e.g. bptt + 10) to cap the sampled sequence length, '
               'or a smaller --batch_size or --bptt')


@contextlib.contextmanager
def interruptible_training():
    """Around an epoch loop: Ctrl-C ends training (the caller goes on to test the best model, as the
    original did); SIGTERM ends it with `.preempted` set (the caller exits 143); a GPU out-of-memory
    error becomes a UserError with advice."""
    outcome = argparse.Namespace(preempted=False)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield outcome
    except KeyboardInterrupt:
        print('-' * 89)
        print('Exiting from training early')
    except Preempted:
        outcome.preempted = True
    except torch.cuda.OutOfMemoryError:
        raise UserError(OOM_MESSAGE) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_interrupted(state_file, resume_command, state_is_ours):
    """What a script prints when SIGTERM stops it; the caller then exits with status 143.
    `state_is_ours`: this run wrote `state_file` (or resumed from it); a file of an earlier run
    under the same name is never offered."""
    if state_is_ours:
        print(f'Terminated (SIGTERM): the state of the last completed epoch is in {state_file}; '
              f'rerun with {resume_command} to continue')
    else:
        print('Terminated (SIGTERM) before the first epoch completed: nothing to resume from'
              + (f' ({state_file} is an earlier run\'s)' if os.path.exists(state_file) else ''))
    return 143


class Preempted(Exception):
    """SIGTERM: a scheduler is taking the machine back."""


# While `held`, SIGTERM is only noted (`pending`) and raised when the hold ends.
_sigterm = argparse.Namespace(held=False, pending=False)


def on_sigterm(signum, frame):
    if _sigterm.held:
        _sigterm.pending = True
    else:
        raise Preempted()


@contextlib.contextmanager
def sigterm_held():
    """SIGTERM waits for the end of the block: writing a resume state and noting that this run wrote
    it happen together (a SIGTERM between the two offered nothing, or called the state another run's).
    Done in the Python handler: a signal mask on the main thread does not stop the C-level delivery
    to torch's other threads."""
    _sigterm.held, _sigterm.pending = True, False
    try:
        yield
    finally:
        _sigterm.held = False
    if _sigterm.pending:
        _sigterm.pending = False
        raise Preempted()


# ---------------------------------------------------------------------------------------------
# Shared by main.py and its descendants (finetune.py, pointer.py, generate.py)

def evaluate_best_on_test(path, model, criterion, test_data, bptt, run=None, replaced_unless=None):
    """Load the best saved weights into `model` and report them on test (batch size 1).
    With `run` given, the checkpoint must be one that run saved: a file an earlier run left under
    the same name (Ctrl-C before this run's first save) is never reported as this run's.
    `replaced_unless` (fine-tuning, which writes its output from the start): the run ids the model
    there may have; any other was written over this run's output meanwhile, and is not reported."""
    best = read_checkpoint(path) if os.path.isfile(path) else None
    if replaced_unless is not None and best is not None and best.get('run') not in replaced_unless:
        raise UserError(f'{path}: replaced by another run\'s model while this run went on (its run id is not '
                        'this run\'s); it was not evaluated')
    if best is None or run is not None and best.get('run') != run:
        raise UserError(f'{path}: no model was saved by this run (it stopped before its first evaluation)'
                        + ('; the file there is an earlier run\'s and was not evaluated' if best else ''))
    load_weights(model, criterion, best, path)
    test_loss = evaluate(model, criterion, test_data, 1, bptt)
    print('=' * 89)
    print(f'| End of training | {report_line("test", test_loss, model.release)}')
    print('=' * 89)
    return test_loss


# Flags that may differ when continuing a run from its resume state; every other setting is the run's own.
RESUME_MAY_CHANGE = ('epochs', 'resume', 'save', 'cuda', 'cpu', 'log_interval', 'data', 'cuda_graphs', 'bf16')


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
