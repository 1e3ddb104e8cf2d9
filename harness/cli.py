"""What every script's main() shares: run() (bad input ends in one line on stderr), the device and
the seeds, the corpus batchified for a run, and the training step the speed flags ask for.

The flags live in flags.py, the run's files in run_files.py and ownership.py, its log in run_log.py,
signals in interrupts.py; a training run's steps in run.py. Nothing here computes what training.py
computes (the parity with the original rests on training.py alone).
"""
import functools
import os
import re
import sys
import traceback

import numpy as np
import torch

import data
import training
from errors import UserError
from utils import batchify
from . import corpus_cache, cuda_graphs


def run(main):
    """Runs a script's main(): bad input ends in one line on stderr, a fault of the code keeps its traceback.

    Bad input is a UserError, an OSError about a file (a full disk, a missing folder: it names the
    file) or the CPU running out of memory: `error: ...`, exit status 2; AWD_TRACEBACK=1 in the
    environment adds its traceback. Anything else, an OSError that names no file included (raised inside
    torch, it is not the user's to fix), is a fault: it propagates, so Python prints its traceback ending
    in its one-line summary and exits 1 (through sys.excepthook, with which a torchrun rank reports a
    peer that is gone in one line, distributed.py). Ctrl-C outside the training loop is
    `error: interrupted`, 130; a closed output pipe (`| head`) ends quietly with 141, as a program killed
    by SIGPIPE would.
    """
    try:
        status = main()
        sys.stdout.flush()  # so that a closed pipe shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        # Nothing more can be shown; point stdout at /dev/null so that the final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        fail('interrupted (Ctrl-C)', 130)
    except Exception as e:  # noqa: BLE001 - sorted into bad input and faults below
        message = bad_input(e)
        if message is None:
            raise
        fail(message, 2, traceback.format_exc() if os.environ.get('AWD_TRACEBACK') == '1' else '')
    sys.exit(status)


def bad_input(error):
    """The one-line report of an error that is the user's to fix, or None for a fault of the code."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename:
        return f'{error.filename}: {error.strerror}' if error.strerror else str(error)
    if isinstance(error, RuntimeError):
        return cpu_out_of_memory(error)
    return None


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


def fail(message, status, details=''):
    # One write of the whole line: the ranks of a torchrun job share stderr, and print's separate write
    # of the newline let two ranks' lines run into one.
    sys.stderr.write(f'error: {message}\n{details}')
    sys.stderr.flush()
    sys.exit(status)


def choose_device(args):
    """The GPU when one is present (or asked for with --cuda), the CPU with --cpu or when none is."""
    if getattr(args, 'cpu', False):
        return torch.device('cpu')
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(args, 'cuda', False):
        print('note: --cuda given but no GPU is available; running on the CPU', file=sys.stderr)
    return torch.device('cpu')


def set_seed(seed, numpy_seed=None):
    """Seeds torch (CPU and CUDA) with `seed`; returns the numpy generator that draws the BPTT lengths,
    seeded with `numpy_seed` (default: `seed`, as the original main.py did with np.random.seed)."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    return np.random.RandomState(seed if numpy_seed is None else numpy_seed)


def load_data(args, batch_sizes, device, log=print, vocabulary=None):
    """Corpus of args.data with each split batchified: returns (corpus, train, valid, test).

    `batch_sizes` = (train, valid, test); raises a UserError when a split is too small for them.
    `vocabulary`: the vocabulary options (a checkpoint's, checkpoint.vocabulary_options); by default
    those of args (main.py's --vocab-from, --min-count, --max-vocab), or the original's rule.
    """
    if vocabulary is None:
        vocabulary = {name: getattr(args, name, default) for name, default in data.DEFAULT_VOCABULARY.items()}
    try:
        corpus = corpus_cache.load_corpus(args.data, log=log, **vocabulary)
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


def train_step_for(args, dist=None, group=None):
    """The training step the speed flags ask for: training.train_step (the default), with bf16
    autocast, or its CUDA-graph replay (cuda_graphs.GraphedTrainStep). `group`: the step's column
    groups (training.train_step), which neither works with yet."""
    autocast = None
    if getattr(args, 'bf16', False):
        # cache_enabled=False: autocast's cache of cast weights must not outlive a captured step.
        autocast = functools.partial(torch.autocast, 'cuda', dtype=torch.bfloat16, cache_enabled=False)
    if group is not None and (autocast is not None or getattr(args, 'cuda_graphs', False)):
        raise UserError('--bf16 and --cuda-graphs do not work with --small_batch_size or --n_experts > 1 yet')
    if getattr(args, 'cuda_graphs', False):
        if dist is not None and dist.world_size > 1:
            raise UserError('--cuda-graphs does not work with several processes (torchrun) yet')
        return cuda_graphs.GraphedTrainStep(autocast=autocast)
    if autocast is not None:
        return functools.partial(training.train_step, autocast=autocast)
    return training.train_step
