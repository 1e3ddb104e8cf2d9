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
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch

import data
from batching import batchify
from checkpoint import atomic_write_text, read_checkpoint, remove_stale_temporaries
from errors import UserError
from training import evaluate, perplexity


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
    sys.exit(status)


def fail(message, status):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(status)


# ---------------------------------------------------------------------------------------------
# Arguments, device and seeding, data

def add_model_args(parser):
    g = parser.add_argument_group('model (AWD-LSTM paper section 5: 3-layer LSTM, 1150 hidden, 400 embedding)')
    g.add_argument('--model', type=str, default='LSTM', help='recurrent core: LSTM, QRNN or GRU')
    g.add_argument('--emsize', type=int, default=400, help='size of word embeddings')
    g.add_argument('--nhid', type=int, default=1150, help='number of hidden units per layer')
    g.add_argument('--nlayers', type=int, default=3, help='number of layers')
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
    import training
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


# Which values each numeric flag may take: (flags, test, what the message says).
FLAG_RULES = [
    (('dropout', 'dropouth', 'dropouti', 'dropoute', 'wdrop'), lambda v: 0 <= v < 1, 'in [0, 1)'),
    (('emsize', 'nhid', 'nlayers', 'batch_size', 'bptt', 'epochs', 'log_interval'),
     lambda v: isinstance(v, int) and v > 0, 'a positive integer'),
    (('lr',), lambda v: 0 < v < math.inf, 'positive and finite'),
    # A negative clip makes clip_grad_norm_ flip every gradient: training goes uphill.
    (('clip',), lambda v: v >= 0, '>= 0 (0: no clipping)'),
    (('wdecay', 'alpha', 'beta'), lambda v: 0 <= v < math.inf, '>= 0 and finite'),
    (('nonmono',), lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
    (('seed',), lambda v: isinstance(v, int) and 0 <= v <= 2 ** 32 - 1, 'an integer in [0, 2**32 - 1]'),
]


def flag_name(name):
    return '--' + ('log-interval' if name == 'log_interval' else name)


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
    if hasattr(args, 'optimizer'):
        require(args.optimizer in ('sgd', 'adam'), f'--optimizer must be sgd or adam, got {args.optimizer!r}')
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

def report_line(kind, loss):
    """`<kind> loss x | <kind> ppl y | <kind> bpc z`, the figures every log line ends with."""
    return f'{kind} loss {loss:5.2f} | {kind} ppl {perplexity(loss):8.2f} | {kind} bpc {loss / math.log(2):8.3f}'


def loss_record(kind, loss):
    return {f'{kind}_loss': loss, f'{kind}_ppl': perplexity(loss), f'{kind}_bpc': loss / math.log(2)}


def report_epoch(epoch, epoch_start_time, val_loss):
    """The end-of-epoch block main.py prints: time and valid loss / ppl / bpc between rules."""
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | '
          f'{report_line("valid", val_loss)}')
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


def check_output(path, flag, inputs=()):
    """Fail at once, not after an epoch, if the file `path` (named by `flag`) cannot be written or
    would overwrite one of `inputs`. A symlink is judged by its target, which is what gets written."""
    if os.path.isdir(path):
        raise UserError(f'{path}: is a folder ({flag} names the file to write)')
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UserError(f'{folder}: folder does not exist ({flag} {path})')
    if not writable(folder):
        raise UserError(f'{folder}: folder is read-only ({flag} {path})')
    if os.path.exists(target):
        if not writable(target):
            raise UserError(f'{path}: file is read-only ({flag})')
        for source in inputs:
            if os.path.exists(source) and os.path.samefile(target, source):
                raise UserError(f'{path}: {flag} would overwrite {source}, an input of this run')


@contextlib.contextmanager
def run_files(save, outputs, inputs=()):
    """Claims the files of a run for as long as it lasts.

    `outputs` are (path, flag) pairs: each must be writable (check_output). Then an exclusive lock
    on `<save>.lock` is held, so that a second run on the same files stops at once instead of
    interleaving its log records and checkpoints with this one's; the lock goes with the process,
    however it ends. Holding it, the hidden temporary files that a killed run left behind for these
    outputs are removed.
    """
    for path, flag in outputs:
        check_output(path, flag, inputs)
    lock = hold_lock(save + '.lock')
    try:
        remove_stale_temporaries(path for path, _ in outputs)
        yield
    finally:
        os.close(lock)


def hold_lock(path):
    """An open descriptor holding an exclusive flock on `path`; a UserError if another holds it."""
    import fcntl  # POSIX only, as are the scripts' signals
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f'{path}: cannot create the lock of this run ({e.strerror})') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f'{path[:-len(".lock")]}: another run is using these files (it holds {path}); '
                        'wait for it to end, or write elsewhere') from None
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

def evaluate_best_on_test(path, model, criterion, test_data, bptt, run=None):
    """Load the best saved weights into `model` and report them on test (batch size 1).
    With `run` given, the checkpoint must be one that run saved: a file an earlier run left under
    the same name (Ctrl-C before this run's first save) is never reported as this run's."""
    best = read_checkpoint(path) if os.path.isfile(path) else None
    if best is None or run is not None and best.get('run') != run:
        raise UserError(f'{path}: no model was saved by this run (it stopped before its first evaluation)'
                        + ('; the file there is an earlier run\'s and was not evaluated' if best else ''))
    model.load_state_dict(best['model'])
    criterion.load_state_dict(best['criterion'])
    test_loss = evaluate(model, criterion, test_data, 1, bptt)
    print('=' * 89)
    print(f'| End of training | {report_line("test", test_loss)}')
    print('=' * 89)
    return test_loss


# Flags that may differ when continuing a run from its resume state; every other setting is the run's own.
RESUME_MAY_CHANGE = ('epochs', 'resume', 'save', 'cuda', 'cpu', 'log_interval', 'data', 'cuda_graphs', 'bf16')


def adopt_run_args(args, saved_args, may_change):
    """Continue a saved run with its own settings: copy every saved flag not in `may_change` into
    `args`; returns the names of flags set (not None) in `args` that were overridden (to note)."""
    ignored = sorted(k for k, v in saved_args.items()
                     if k not in may_change and getattr(args, k, None) not in (None, v))
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
