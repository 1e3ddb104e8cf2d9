"""What the four scripts share: batching, arguments, device and seeding, the training step and the
evaluation pass, NT-ASGD's switch rule and weight averaging, checkpoint I/O and error reporting."""
import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import stat
import sys
import tempfile
import time
import uuid

import numpy as np
import torch


class UserError(Exception):
    """Bad input (flags, data, checkpoint): reported as one line on stderr, exit status 2."""


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


def first_line(error):
    """The first line of an exception's message (torch's can run to many lines)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------
# Batching (same semantics as the original utils.py)

def batchify(data, bsz, args=None, device=None):
    """Cut a 1-D token stream into `bsz` columns: returns (len(data) // bsz, bsz).

    Tokens that do not fill a last row are dropped. `args` is accepted for the original's signature;
    if it says `cuda` and a GPU exists the result goes there, as `device` does.
    """
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()
    if device is None and getattr(args, 'cuda', False) and torch.cuda.is_available():
        device = 'cuda'
    return data if device is None else data.to(device)


def get_batch(source, i, args=None, seq_len=None, evaluation=False):
    """Inputs source[i:i+L] and flattened next-word targets source[i+1:i+1+L], L clipped at the end.

    Called as get_batch(source, i, args, seq_len=...) as in the original (args.bptt is the default
    length), or get_batch(source, i, seq_len) with an int. `evaluation` is accepted and unused.
    """
    if isinstance(args, int):
        seq_len = seq_len or args
    seq_len = min(seq_len or args.bptt, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].reshape(-1)
    return data, target


def repackage_hidden(h):
    """Detach hidden states from the graph of the previous batch (truncated BPTT)."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return type(h)(repackage_hidden(v) for v in h)


# ---------------------------------------------------------------------------------------------
# Arguments

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


def plain_args(args):
    """argparse.Namespace -> dict of plain values, storable in a weights_only checkpoint."""
    return dict(vars(args))


# ---------------------------------------------------------------------------------------------
# Training and evaluation

def sample_seq_len(rng, bptt, cap=None):
    """Variable-length BPTT (paper section 4.1): N(bptt, 5), bptt halved with probability 0.05."""
    base = bptt if rng.random() < 0.95 else bptt / 2.
    seq_len = max(5, int(rng.normal(base, 5)))
    return seq_len if cap is None else min(seq_len, cap)


class NonFiniteLoss(UserError):
    """The training loss became inf or NaN; the message names the epoch and batch."""


def train_step(model, criterion, optimizer, params, data, targets, hidden, args, seq_len,
               autocast=None, clip_foreach=None, forward=None):
    """One optimisation step of train_epoch on one batch; returns (detached raw loss, new hidden).

    The learning rate is scaled by seq_len / bptt for this step and restored after it; the loss is
    cross-entropy plus AR and TAR; gradients are clipped to args.clip. benchmark.py times this same
    step. `autocast` (a context manager factory, e.g. a bf16 torch.autocast) wraps the forward pass
    and the loss, and `clip_foreach` is passed to clip_grad_norm_; training leaves both at None.
    `forward` (distributed.py: the DDP wrapper) runs the model's forward when given.
    """
    base_lr = optimizer.param_groups[0]['lr']
    optimizer.param_groups[0]['lr'] = base_lr * seq_len / args.bptt
    hidden = repackage_hidden(hidden)
    optimizer.zero_grad()

    with (autocast() if autocast is not None else contextlib.nullcontext()):
        output, hidden, raw_outputs, dropped_outputs = (forward or model)(data, hidden, return_h=True)  # [distributed]
        raw_loss = criterion(model.decoder.weight, model.decoder.bias, output, targets)
        loss = raw_loss
        if args.alpha:  # AR: penalise large activations of the (dropped) last layer output
            loss = loss + args.alpha * dropped_outputs[-1].pow(2).mean()
        if args.beta:  # TAR: penalise change between timesteps of the raw last layer output
            loss = loss + args.beta * (raw_outputs[-1][1:] - raw_outputs[-1][:-1]).pow(2).mean()
    loss.backward()
    if args.clip:
        torch.nn.utils.clip_grad_norm_(params, args.clip, foreach=clip_foreach)
    optimizer.step()
    optimizer.param_groups[0]['lr'] = base_lr
    return raw_loss.detach(), hidden


def train_epoch(model, criterion, optimizer, params, train_data, args, epoch, rng,
                seq_len_cap=None, log=print, progress=None, forward=None):
    """One pass over the training stream with truncated BPTT; returns the mean raw training loss.

    Each step: a sampled sequence length, the learning rate scaled by seq_len / bptt (so short
    sequences do not get the weight of long ones, section 4.1), cross-entropy plus AR and TAR
    (section 4.6), gradient clipping, an optimizer step. Losses stay on the device between log
    lines, so the loop never waits for the GPU except to print.
    """
    model.train()
    model.reset()
    hidden = model.init_hidden(train_data.size(1))  # [distributed] this rank's columns (all of them: --batch_size)
    device = train_data.device
    epoch_loss = torch.zeros((), device=device)
    interval_loss = torch.zeros((), device=device)
    first_bad_batch = torch.full((), -1, dtype=torch.long, device=device)
    start_time = time.time()
    batch, i = 0, 0
    num_batches = len(train_data) // args.bptt

    def check_finite():
        bad = int(first_bad_batch)
        if bad >= 0:
            raise NonFiniteLoss(f'training loss became non-finite at epoch {epoch}, batch {bad}; '
                                'try a lower --lr or --clip')

    while i < train_data.size(0) - 1 - 1:
        seq_len = sample_seq_len(rng, args.bptt, seq_len_cap)
        base_lr = optimizer.param_groups[0]['lr']
        data, targets = get_batch(train_data, i, seq_len=seq_len)
        raw_loss, hidden = train_step(model, criterion, optimizer, params, data, targets, hidden, args, seq_len,
                                      forward=forward)  # [distributed]
        first_bad_batch = torch.where((first_bad_batch < 0) & ~torch.isfinite(raw_loss),
                                      batch + 1, first_bad_batch)
        interval_loss += raw_loss
        epoch_loss += raw_loss
        batch += 1
        i += seq_len
        if progress is not None:
            progress.update(1)
        if batch % args.log_interval == 0:
            check_finite()
            cur_loss = interval_loss.item() / args.log_interval
            elapsed = time.time() - start_time
            log(f'| epoch {epoch:3d} | {batch:5d}/{num_batches:5d} batches | lr {base_lr:05.5f} '
                f'| ms/batch {elapsed * 1000 / args.log_interval:5.2f} | loss {cur_loss:5.2f} '
                f'| ppl {perplexity(cur_loss):8.2f} | bpc {cur_loss / math.log(2):8.3f}')
            interval_loss.zero_()
            start_time = time.time()
    check_finite()
    return epoch_loss.item() / max(batch, 1)


def evaluate(model, criterion, data_source, batch_size, bptt):
    """Mean loss per token over a batchified split, hidden state carried across bptt-long chunks.

    As in the original, the sum of (chunk length x mean chunk loss) is divided by len(data_source).
    """
    model.eval()
    model.reset()
    total_loss = 0.
    hidden = model.init_hidden(batch_size)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i, seq_len=bptt)
            output, hidden = model(data, hidden)
            total_loss += len(data) * criterion(model.decoder.weight, model.decoder.bias, output, targets)
    return float(total_loss) / len(data_source)


def nonmono_triggered(history, val_loss, nonmono):
    """NT-ASGD's switch (paper section 3, algorithm 1): the validation loss is worse than the best
    one seen more than `nonmono` evaluations ago."""
    return len(history) > nonmono and val_loss > min(history[:len(history) - nonmono])


def is_asgd(optimizer):
    return isinstance(optimizer, torch.optim.ASGD)


@contextlib.contextmanager
def averaged_weights(optimizer, params):
    """Temporarily replace each parameter by its ASGD running average (the optimizer's `ax`)."""
    saved = []
    with torch.no_grad():
        for p in params:
            state = optimizer.state.get(p, {})
            if 'ax' in state:
                saved.append((p, p.detach().clone()))
                p.copy_(state['ax'])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, raw in saved:
                p.copy_(raw)


def make_optimizer(name, params, lr, wdecay):
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, weight_decay=wdecay)
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=wdecay)
    if name == 'asgd':  # t0=0, lambd=0: average from the first step on, no lr decay (section 3)
        return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0., weight_decay=wdecay)
    raise UserError(f'unknown optimizer {name!r}')


def optimizer_name(optimizer):
    return {torch.optim.SGD: 'sgd', torch.optim.Adam: 'adam', torch.optim.ASGD: 'asgd'}[type(optimizer)]


def perplexity(loss):
    return math.exp(loss) if loss < 700 else float('inf')


def report_line(kind, loss):
    """`<kind> loss x | <kind> ppl y | <kind> bpc z`, the figures every log line ends with."""
    return f'{kind} loss {loss:5.2f} | {kind} ppl {perplexity(loss):8.2f} | {kind} bpc {loss / math.log(2):8.3f}'


def loss_record(kind, loss):
    return {f'{kind}_loss': loss, f'{kind}_ppl': perplexity(loss), f'{kind}_bpc': loss / math.log(2)}


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


def new_run_id():
    """The id of a run: kept in its checkpoints, resume state and log records, and carried over by
    an exact resume, so that a run only ever reports or offers files it wrote itself."""
    return uuid.uuid4().hex[:16]


def progress_bar(total, desc):
    """tqdm over the batches of an epoch, silent when stdout is not a terminal (logs, CI)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stdout.isatty(), dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Checkpoints

# Format 2 adds the digest; format 1 files (written before it) still load, unverified.
CHECKPOINT_FORMAT = 'awd-lstm-checkpoint-2'
LEGACY_CHECKPOINT_FORMAT = 'awd-lstm-checkpoint-1'


def atomic_write(path, write):
    """Write a file through a temporary file in the same folder: write(f), flush, fsync, rename.

    A crash at any point leaves either the old file or the new one, never a half-written one. A
    symlinked `path` is written through to its target (not replaced by a file). The new file keeps
    the mode of the one it replaces, or else gets the umask's default, as open() would give it. A
    failure (a full disk: torch raises RuntimeError, Python OSError) is a UserError naming the file,
    and the temporary file is removed.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(target) + '.', suffix='.tmp', dir=folder)
    except OSError as e:
        raise UserError(f'{path}: could not be written ({e.strerror})') from None
    try:
        os.fchmod(fd, file_mode(target))
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise UserError(f'{path}: could not be written ({first_line(e)})') from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def file_mode(path):
    """The permission bits for a new version of `path`: those of the file it replaces, or the
    umask's default (mkstemp alone would give 0600 whatever the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_torch_save(obj, path):
    """torch.save through atomic_write."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def content_digest(obj):
    """sha256 over the contents of a checkpoint (or corpus cache) dict, as 'sha256:<hex>'.

    Walked in a fixed order (dict keys sorted), each value tagged with its type and length; a tensor
    contributes its dtype, shape and bytes. A flipped bit in a stored tensor loads without any error
    from torch, so read_checkpoint compares this with the digest stored at save time.
    """
    digest = hashlib.sha256()
    _digest_into(digest, obj)
    return 'sha256:' + digest.hexdigest()


def _digest_into(digest, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f'tensor {t.dtype} {tuple(t.shape)}\0'.encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f'dict {len(obj)}\0'.encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _digest_into(digest, key)
            _digest_into(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f'{"tuple" if isinstance(obj, tuple) else "list"} {len(obj)}\0'.encode())
        for item in obj:
            _digest_into(digest, item)
    elif isinstance(obj, str):
        data = obj.encode('utf-8', 'surrogatepass')
        digest.update(f'str {len(data)}\0'.encode() + data)
    elif obj is None or isinstance(obj, (bool, int, float)):
        digest.update(f'{type(obj).__name__} {obj!r}\0'.encode())
    else:
        raise TypeError(f'a {type(obj).__name__} has no place in a checkpoint')


def with_digest(obj):
    """The dict `obj` with its content digest added under 'digest'."""
    return {**obj, 'digest': content_digest(obj)}


def digest_matches(obj):
    """Whether the dict `obj` holds a digest of the rest of its contents (with_digest's)."""
    if not isinstance(obj, dict) or not isinstance(obj.get('digest'), str):
        return False
    try:
        return obj['digest'] == content_digest({k: v for k, v in obj.items() if k != 'digest'})
    except TypeError:  # something no checkpoint holds
        return False


def save_checkpoint(path, model, criterion, optimizer, args, idx2word, **extra):
    """A plain dict of tensors, numbers and strings: loadable with torch.load(weights_only=True).
    `extra` holds what a resume state adds, and `run`, the id of the run that wrote it."""
    atomic_torch_save(with_digest({
        'format': CHECKPOINT_FORMAT,
        'model_config': dict(model.config),
        'model': model.state_dict(),
        'criterion_config': {'hidden_size': criterion.hidden_size, 'splits': list(criterion.splits)},
        'criterion': criterion.state_dict(),
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'optimizer_name': optimizer_name(optimizer) if optimizer is not None else None,
        'args': plain_args(args) if isinstance(args, argparse.Namespace) else dict(args),
        'idx2word': list(idx2word),
        **extra,
    }), path)


# The fields every checkpoint holds, and the types they must have.
CHECKPOINT_FIELDS = {'model_config': dict, 'model': dict, 'criterion_config': dict, 'criterion': dict,
                     'args': dict, 'idx2word': list, 'optimizer': (dict, type(None)),
                     'optimizer_name': (str, type(None))}


def read_checkpoint(path):
    """The raw dict of a checkpoint, its tensors on the CPU, with a UserError for anything that is not
    one of ours: unreadable, carrying pickled code, damaged (its digest does not match), or missing
    fields a checkpoint has."""
    if not path:
        raise UserError('no checkpoint given (--save)')
    if not os.path.isfile(path):
        raise UserError(f'{path}: checkpoint not found')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        text = str(e)
        if 'Weights only load failed' in text or 'Unsupported global' in text:
            raise UserError(f'{path}: refused: the file needs pickled Python objects to load '
                            '(not a plain-data checkpoint; it was not executed)') from None
        raise UserError(f'{path}: not a readable checkpoint (truncated or not a torch file)') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') not in (CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_FORMAT):
        raise UserError(f'{path}: not a checkpoint written by this code')
    if ckpt['format'] == CHECKPOINT_FORMAT and not digest_matches(ckpt):
        raise UserError(f'{path}: damaged checkpoint: its contents do not match the digest stored in it'
                        if 'digest' in ckpt else f'{path}: damaged checkpoint: its digest is missing')
    check_fields(ckpt, path, CHECKPOINT_FIELDS, 'checkpoint')
    for key in ('model', 'criterion'):
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt[key].items()):
            raise UserError(f'{path}: damaged checkpoint: {key!r} must map names to tensors')
    if not all(isinstance(word, str) for word in ckpt['idx2word']):
        raise UserError(f"{path}: damaged checkpoint: 'idx2word' must be a list of words")
    return ckpt


def check_fields(ckpt, path, fields, what):
    """Each field of `fields` (name: type or tuple of types) is in `ckpt` with such a type; a bool
    counts as a number only where bool is named."""
    for key, kinds in fields.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if key not in ckpt:
            raise UserError(f'{path}: damaged {what}: it has no {key!r} field')
        value = ckpt[key]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise UserError(f'{path}: damaged {what}: its {key!r} field holds a {type(value).__name__}')


def load_checkpoint(path, map_location=None):
    """Load a checkpoint of main.py / finetune.py.

    Returns the checkpoint dict with `model` an RNNModel holding the saved weights, `criterion` the
    SplitCrossEntropyLoss (both moved to `map_location`, a device, when given), `args` the training
    arguments (a dict), `idx2word` the vocabulary, and `model_state` / `criterion_state` /
    `optimizer` the raw state dicts (on the CPU).
    """
    from model import RNNModel
    from splitcross import SplitCrossEntropyLoss
    ckpt = read_checkpoint(path)
    try:
        model = RNNModel(**ckpt['model_config'])
        criterion = SplitCrossEntropyLoss(**ckpt['criterion_config'])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f'{path}: the model configuration stored in it cannot be built ({first_line(e)})') from None
    try:
        model.load_state_dict(ckpt['model'])
        criterion.load_state_dict(ckpt['criterion'])
    except RuntimeError as e:
        raise UserError(f'{path}: weights do not fit the stored model configuration ({str(e).splitlines()[0]})') from None
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
        criterion.to(map_location)
    ckpt['model_state'], ckpt['criterion_state'] = ckpt['model'], ckpt['criterion']
    ckpt['model'], ckpt['criterion'] = model, criterion
    return ckpt


def check_vocabulary(ckpt_idx2word, corpus, path, data):
    """A checkpoint only makes sense with the corpus it was trained on: same words, same ids."""
    idx2word = corpus.dictionary.idx2word
    if list(ckpt_idx2word) != idx2word:
        raise UserError(f'{path}: checkpoint vocabulary ({len(ckpt_idx2word)} words) does not match '
                        f'{data} ({len(idx2word)} words); was it trained on another corpus?')


def load_data(args, batch_sizes, device, log=print):
    """Corpus of args.data with each split batchified: returns (corpus, train, valid, test).

    `batch_sizes` = (train, valid, test); raises a UserError when a split is too small for them.
    """
    import data
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
# The files a run writes: checked before any work is done, locked while the run lasts

def data_files(folder):
    """The split files of a corpus folder: inputs that no output may overwrite."""
    import data
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


def remove_stale_temporaries(paths):
    """Remove the temporary files of atomic_write (`.<name>.<random>.tmp`) left beside these files by
    a run that was killed while writing them. Only the holder of the run's lock may call this."""
    for path in paths:
        folder, name = os.path.split(os.path.realpath(path))
        pattern = re.compile(re.escape('.' + name + '.') + r'[^.]+\.tmp')
        for entry in os.listdir(folder):
            if pattern.fullmatch(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))


# ---------------------------------------------------------------------------------------------
# Resume state: everything needed to continue a run exactly (issue: exact resume)

def state_path(save):
    return save + '.state'


def save_of_state(path):
    """The checkpoint a resume state belongs to: `--resume X.state` continues the run saving to X."""
    return path[:-len('.state')] if path.endswith('.state') else path


def same_file(a, b):
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def find_resume_state(resume):
    """The resume-state file that --resume names (directly, or beside the checkpoint), else None."""
    if resume.endswith('.state') and os.path.isfile(resume):
        return resume
    return state_path(resume) if os.path.isfile(state_path(resume)) else None


def rng_state(rng, device):
    """Every random state a run depends on, as tensors and numbers (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    state = {'torch': torch.get_rng_state(),
             'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


# The fields of a resume state beyond a checkpoint's, and the types they must have.
STATE_FIELDS = {'epoch': int, 'history': list, 'best_val_loss': (int, float), 'optimizer': dict,
                'optimizer_name': str, 'rng': dict}


def check_state(state, path, script):
    """A resume state of `script` ('main' or 'finetune') with the fields it needs. States written
    before they named their script are told apart by finetune.py's `done`."""
    kind = state.get('script', 'finetune' if 'done' in state else 'main')
    if kind != script:
        raise UserError(f'{path}: a resume state of {kind}.py, not of {script}.py: continue it with '
                        f'{kind}.py --resume')
    check_fields(state, path, {**STATE_FIELDS, **({'done': bool} if script == 'finetune' else {})}, 'resume state')
    if not all(isinstance(v, (int, float)) for v in state['history']):
        raise UserError(f"{path}: damaged resume state: its 'history' must hold validation losses")


def read_state(path, script):
    """The raw dict of a resume state of `script`, checked as read_checkpoint and check_state do."""
    state = read_checkpoint(path)
    check_state(state, path, script)
    return state


def restore_training_state(optimizer, rng, device, state, path):
    """Put the optimizer (with ASGD's averages) and every random state back as `state` saved them."""
    try:
        optimizer.load_state_dict(state['optimizer'])
        restore_rng_state(state['rng'], rng, device)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise UserError(f'{path}: damaged resume state: its optimizer or random state cannot be restored '
                        f'({first_line(e)})') from None


def restore_rng_state(state, rng, device):
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    rng.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


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


def load_weights(model, criterion, ckpt, path):
    """Load saved weights into a model built from the flags; a mismatch is the user's to fix."""
    try:
        model.load_state_dict(ckpt['model'])
        criterion.load_state_dict(ckpt['criterion'])
    except RuntimeError as e:
        saved = ckpt.get('model_config', {})
        raise UserError(f'{path}: checkpoint does not fit the model the flags describe '
                        f'(it was saved with {saved}): {str(e).splitlines()[0]}') from None


# ---------------------------------------------------------------------------------------------
# Shared by main.py's descendants (finetune.py, pointer.py, generate.py)

def report_epoch(epoch, epoch_start_time, val_loss):
    """The end-of-epoch block main.py prints: time and valid loss / ppl / bpc between rules."""
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | '
          f'{report_line("valid", val_loss)}')
    print('-' * 89)


# Flags that may differ when continuing a run from its resume state; every other setting is the run's own.
RESUME_MAY_CHANGE = ('epochs', 'resume', 'save', 'cuda', 'cpu', 'log_interval', 'data')


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
