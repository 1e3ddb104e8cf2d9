"""Ctrl-C, SIGTERM and out-of-memory around a training loop: Ctrl-C ends training (the script goes on
to test the best model, as the original did), SIGTERM ends it with status 143 once the resume state of
the last epoch is whole, a GPU out-of-memory error becomes a one-line error with advice.
"""
import argparse
import contextlib
import os
import signal

import torch

from errors import UserError


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
