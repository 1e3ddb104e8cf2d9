"""Data-parallel training over torch.distributed: one model trained by N processes started by torchrun.

    torchrun --standalone --nproc_per_node 4 main.py <the usual flags>

main.py and finetune.py call the few functions below (their call sites are marked `# [distributed]`).
Without torchrun's environment (RANK and a WORLD_SIZE above 1) `setup` returns a context whose
methods all give back what they are handed and draw nothing: the scripts then run today's
single-process code path, unchanged to the bit.

With N ranks:
- the --batch_size columns of the batchified training stream are split evenly: rank r takes columns
  [r*B/N, (r+1)*B/N) (a clear error when N does not divide B); every rank draws the same sequence
  lengths (the numpy generator is seeded with --seed everywhere), so all ranks step in lockstep;
- the model and the split-softmax loss are wrapped together in DistributedDataParallel, which averages
  the gradients during backward. The loss, AR and TAR are means over equally many tokens per rank,
  so the average is the gradient of the global batch; clipping, weight decay and the (AS)GD step
  then act on identical gradients, so all ranks hold identical weights and identical ASGD averages;
- each rank draws its own dropout masks (embedding, locked and weight drop): its torch (and CUDA)
  generator is re-seeded at the start of every epoch from (--seed, rank, epoch);
- every rank evaluates the whole validation set with its own (identical) model, then rank 0's result
  is broadcast, so the NT-ASGD switch, the best-model choice and fine-tuning's stop are one decision;
- only rank 0 prints (the others' stdout goes to /dev/null; stderr is kept), logs, and writes
  checkpoints and resume states; the others wait at a barrier while it writes;
- at start-up the ranks compare their flags, a digest of the corpus they read and whether they see rank
  0's files (`check_same_start`): any difference stops every rank with one line, before the first step;
- after every epoch the ranks compare a digest of their weights and stop with an error if they differ.
"""
import atexit
import collections
import datetime
import functools
import hashlib
import math
import os
import signal
import sys

import numpy as np
import torch
import torch.nn as nn

import errors

# Seconds a collective may wait for the other ranks before failing (a rank lost without its sockets
# closing, e.g. a machine that went away). Legitimate waits are short: rank 0 writing a checkpoint.
TIMEOUT_ENV = 'AWD_DIST_TIMEOUT'
DEFAULT_TIMEOUT_S = 900


def world_from_env(environ=None):
    """(rank, world_size, local_rank) from torchrun's environment, or None outside torchrun / for 1 rank."""
    environ = os.environ if environ is None else environ
    if 'RANK' not in environ or 'WORLD_SIZE' not in environ:
        return None
    world_size = int(environ['WORLD_SIZE'])
    if world_size <= 1:
        return None
    return int(environ['RANK']), world_size, int(environ.get('LOCAL_RANK', 0))


def setup(args):
    """Join torchrun's process group (gloo on the CPU, NCCL on GPUs: one GPU per local rank).

    Returns a `Distributed`; for a single process one that changes nothing. Call it right after the
    flags are parsed, before anything is printed.
    """
    world = world_from_env()
    if world is None:
        return Distributed()
    rank, world_size, local_rank = world
    timeout = collective_timeout()  # a bad value stops every rank with one line, before any rank waits
    import torch.distributed as dist
    use_cuda = not getattr(args, 'cpu', False) and torch.cuda.is_available()  # as cli.choose_device
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise errors.UserError(f'local rank {local_rank} has no GPU of its own: this machine has '
                                   f'{torch.cuda.device_count()}; give torchrun --nproc_per_node at most that')
        torch.cuda.set_device(local_rank)  # so that torch.device('cuda') is this rank's GPU
    dist.init_process_group('nccl' if use_cuda else 'gloo', timeout=timeout)
    context = Distributed(rank, world_size, local_rank, torch.device('cuda', local_rank) if use_cuda else None)
    if rank != 0:
        sys.stdout = open(os.devnull, 'w')  # only rank 0 prints
    sys.excepthook = functools.partial(_report_lost_ranks, context, sys.excepthook)
    # torchrun ends the surviving ranks with SIGTERM when one fails; during the epoch loop the scripts'
    # own handler takes over (it reports the resume state), elsewhere this one says what happened.
    signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, context))
    atexit.register(context.close)
    return context


def collective_timeout(environ=None):
    """The timeout of a collective: AWD_DIST_TIMEOUT seconds (900 when unset), a positive finite number.
    Anything else (abc, nan, 0, -5, inf) is a UserError: 0 or less would fail every collective at once."""
    environ = os.environ if environ is None else environ
    text = environ.get(TIMEOUT_ENV)
    if text is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
        if not 0 < seconds < math.inf:
            raise ValueError
        return datetime.timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        raise errors.UserError(f'{TIMEOUT_ENV} must be a positive number of seconds (unset: {DEFAULT_TIMEOUT_S}), '
                               f'got {text!r}') from None


class Distributed:
    """Rank and world size, and the operations main.py / finetune.py need; no-ops for one process."""

    def __init__(self, rank=0, world_size=1, local_rank=0, cuda_device=None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.cuda_device = cuda_device
        self.enabled = world_size > 1
        self.is_main = rank == 0
        self.broken = False
        self.epochs_in_sync = 0  # epochs this rank completed with the others (check_in_sync)
        self._recent = collections.deque(maxlen=8)  # see _collective

    def _collective(self, op, tensor, *args):
        """op(tensor, *args), waited for. The work object (and the tensor) stays referenced here until 8
        later collectives have passed: else gloo's worker thread may drop the last reference, and
        releasing a tensor Python has seen takes the GIL; if the interpreter is finalizing just then
        (a collective right before exit), the process aborts ("terminate called without an active
        exception")."""
        work = op(tensor, *args, async_op=True)
        work.wait()
        self._recent.append((work, tensor))
        return tensor

    def _tensor(self, value):
        return torch.tensor([float(value)], dtype=torch.float64, device=self.cuda_device or 'cpu')

    def shard(self, data):
        """This rank's columns of a batchified stream (seq, batch): an equal, contiguous share."""
        if not self.enabled:
            return data
        columns = data.size(1)
        if columns % self.world_size:
            raise errors.UserError(f'--batch_size {columns} does not split evenly over {self.world_size} ranks: '
                                   f'use a multiple of {self.world_size}')
        share = columns // self.world_size
        return data[:, self.rank * share:(self.rank + 1) * share].contiguous()

    def wrap(self, model, criterion):
        """The forward to train with: DDP over the model and the loss's own parameters; None for one process.

        Evaluation and checkpoints use `model` itself (plain state_dict keys, no `module.` prefix).
        """
        if not self.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel
        device_ids = [self.local_rank] if self.cuda_device is not None else None
        return DistributedDataParallel(ModelAndLoss(model, criterion), device_ids=device_ids)

    def seed_ranks(self, seed, epoch):
        """Each rank its own dropout masks: re-seed torch (CPU and CUDA) from (seed, rank, epoch).

        Called at the start of every epoch, so a run resumed on as many ranks draws what the
        uninterrupted one would, and on another number of ranks each rank still has its own stream.
        The numpy generator (sequence lengths, the same on every rank) is untouched.
        """
        if self.enabled:
            torch.manual_seed(rank_seed(seed, self.rank, epoch))

    def mean(self, value):
        """The mean over ranks of a number (the training loss: each rank's is that of its columns)."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        return self._collective(dist.all_reduce, self._tensor(value)).item() / self.world_size

    def shared(self, value):
        """Rank 0's value on every rank (the validation loss every decision is taken from)."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        return self._collective(dist.broadcast, self._tensor(value), 0).item()

    def from_main(self, obj):
        """Rank 0's picklable object on every rank (the run id that the checkpoints carry)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def check_same_start(self, flags, corpus, lock):
        """At start-up, before the first step: every rank must run the same flags (`flags.run_flags`) on the
        same data and see rank 0's files (`lock`: its `<save>.lock`, see run_files.hold_lock). Ranks that differ
        would fall out of step (other sequence lengths, batches or epochs) and wait for the collective
        timeout; a rank that does not see rank 0's files fails at the end, reading the best model. Every
        rank gathers what all the others have, so all stop together with the same one-line error."""
        if not self.enabled:
            return
        import torch.distributed as dist
        from . import corpus_cache
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, {'flags': flags, 'data': corpus_cache.corpus_digest(corpus),
                                          'files': read_token(lock) if self.is_main else None})
        # Rank 0 wrote its token before it reached the gather, so every rank can read it by now.
        sees_files = [None] * self.world_size
        dist.all_gather_object(sees_files, self.is_main or read_token(lock) == everyone[0]['files'])
        problem = start_difference(everyone, sees_files, lock)
        if problem:
            raise errors.UserError(problem)

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def writer(self, fn):
        """fn run by rank 0 only (checkpoints, resume states); every rank then waits at a barrier."""
        if not self.enabled:
            return fn

        @functools.wraps(fn)
        def on_rank0(*args, **kwargs):
            result = fn(*args, **kwargs) if self.is_main else None
            self.barrier()
            return result
        return on_rank0

    def if_main(self, make, *args, **kwargs):
        """make(*args, **kwargs) on rank 0 (the JSON log); on the other ranks an object that ignores every call."""
        return make(*args, **kwargs) if self.is_main else _Ignore()

    def check_in_sync(self, params):
        """After an epoch: every rank must hold the same weights. Returns the fields for the JSON log
        ({} for one process); raises if the ranks' weights differ."""
        if not self.enabled:
            return {}
        import torch.distributed as dist
        digests = [None] * self.world_size
        dist.all_gather_object(digests, weights_digest(params))
        if len(set(digests)) > 1:
            raise errors.UserError(f'the ranks hold different weights (digests {digests}): '
                                   'data-parallel training has lost its synchrony')
        self.epochs_in_sync += 1
        return {'world_size': self.world_size, 'weight_digests': digests}

    def close(self):
        """Leave the process group (at exit; skipped when it is known to be broken)."""
        import torch.distributed as dist
        if self.enabled and not self.broken and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # exiting anyway
                pass


class ModelAndLoss(nn.Module):
    """The RNN model and the split-softmax loss as one module, so that DDP averages the gradients of
    the loss's tombstone parameters too; forward is the model's (the loss is computed outside)."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class _Ignore:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def read_token(path):
    """The token in a run's lock file (run_files.hold_lock), or None where this rank cannot read one."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def start_difference(everyone, sees_files, lock):
    """The first way the ranks' start-up (`everyone`: each rank's flags, data digest; `sees_files`: whether
    it reads rank 0's lock token) differs from rank 0's, as a one-line message; None when they agree."""
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], 1):
        for flag in sorted(set(first['flags']) | set(theirs['flags'])):
            ours, other = first['flags'].get(flag), theirs['flags'].get(flag)
            if ours != other:
                return (f'the ranks were started with different flags: {flag} is {ours!r} on rank 0 but {other!r} '
                        f'on rank {rank}; start every rank with the same command')
        if theirs['data'] != first['data']:
            return (f'the ranks read different data: rank {rank}\'s {first["flags"].get("--data")} holds other text '
                    'than rank 0\'s; every rank needs the same corpus')
    for rank, sees in enumerate(sees_files):
        if not sees:
            return (f'rank {rank} does not see the files of rank 0 (rank 0 holds {lock}; on rank {rank} it is missing '
                    'or another file): put --save (and --out) on a file system all the machines share')
    return None


def rank_seed(seed, rank, epoch):
    """A 63-bit torch seed, a different stream for every (seed, rank, epoch)."""
    words = [seed % 2 ** 32, (seed // 2 ** 32) % 2 ** 32, rank, epoch]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def weights_digest(params):
    """sha256 (16 hex digits) of the parameters' bytes, in order."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# What a collective's failure says when the other side is gone: the connection closed or reset, a
# timeout, NCCL's remote error. Anything else (an NCCL usage error, a wrong shape) is a fault of this
# rank, reported with its traceback.
LOST_CONTACT = ('Connection closed', 'Connection reset', 'closed by peer', 'Broken pipe', 'timed out', 'Timed out',
                'timeout', 'remote process exited', 'ncclRemoteError', 'recvBytes', 'sendBytes')


def lost_contact(error):
    """Whether `error`, raised by a collective, says that another rank is gone."""
    import torch.distributed as dist
    network_errors = tuple(getattr(dist, name) for name in ('DistNetworkError', 'DistStoreError') if hasattr(dist, name))
    return isinstance(error, network_errors) or (isinstance(error, RuntimeError)
                                                 and any(s in str(error) for s in LOST_CONTACT))


def _report_lost_ranks(context, previous_hook, kind, value, tb):
    """A collective that fails because another rank died: one clear line instead of a traceback."""
    if lost_contact(value):
        context.broken = True
        first = (str(value).strip().splitlines() or [kind.__name__])[0].split('. This is typically')[0]
        print(f'error: rank {context.rank} of {context.world_size} lost contact with the other ranks ({first[:300]}); '
              'another rank has stopped (killed, crashed, or out of memory: see its own message above), so '
              'this one stops too. ' + ('The resume state of the last completed epoch is kept: rerun with --resume.'
                                        if context.epochs_in_sync else
                                        'No epoch had completed: there is nothing to resume; start the run again.'),
              file=sys.stderr, flush=True)
        return
    previous_hook(kind, value, tb)


def _on_sigterm(context, signum, frame):
    context.broken = True
    print(f'error: rank {context.rank} of {context.world_size} stopped by SIGTERM (torchrun stops every rank when '
          'one of them fails, or the job was pre-empted)', file=sys.stderr, flush=True)
    sys.exit(143)
