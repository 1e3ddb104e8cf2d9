"""Training and evaluation, the paper's sections 3 and 4 in code: the training step (variable-length
BPTT with the lr scaled by seq_len / bptt, cross-entropy plus AR and TAR, gradient clipping), the
epoch loop, the evaluation pass, NT-ASGD (the non-monotone switch rule, the optimizers, evaluating
with ASGD's averaged weights) and perplexity.

Pure computation on models, tensors and optimizers: no argument parsing, no files, no printing
beyond the `log` a caller hands in. Checkpoints, flags and the run's files are the harness package's.
"""
import contextlib
import math
import time

import torch

from utils import get_batch, repackage_hidden
from errors import UserError


def sample_seq_len(rng, bptt, cap=None):
    """Variable-length BPTT (paper section 4.1): N(bptt, 5), bptt halved with probability 0.05."""
    base = bptt if rng.random() < 0.95 else bptt / 2.
    seq_len = max(5, int(rng.normal(base, 5)))
    return seq_len if cap is None else min(seq_len, cap)


class NonFiniteLoss(UserError):
    """The training loss became inf or NaN; the message names the epoch and batch."""


def train_step(model, criterion, optimizer, params, data, targets, hidden, seq_len, bptt, clip, penalties,
               group=None, forward=None, autocast=None, clip_foreach=None):
    """One optimisation step on one batch; returns (the detached raw loss, the new hidden state).

    The learning rate is scaled by seq_len / bptt for this step and restored after it (section 4.1);
    the loss is cross-entropy plus the penalties of `regularized_loss` (section 4.6: `penalties`, e.g.
    dict(alpha=2, beta=1)); gradients are clipped to `clip` (0: no clipping).

    `group` (--small_batch_size; always in MoS mode, as AWD-LSTM-MoS's main.py did) runs the same step
    over column groups of the batch: each group has its own forward pass, hidden state (its columns of
    `hidden`) and dropout masks, its loss is weighted by its share of the batch's columns and
    backpropagated, the gradients add up, and one clipped step follows. The raw loss is then one
    weighted figure per group, which train_epoch adds up one by one as MoS did. Without `group` the
    batch is one pass, unweighted (the original's step, exactly).

    `forward` (the DDP wrapper under torchrun) runs the model's forward when given; `autocast` (a
    context manager factory, e.g. bf16) wraps the forward pass and loss; `clip_foreach` goes to
    clip_grad_norm_. benchmark.py times this same step.
    """
    base_lr = optimizer.param_groups[0]['lr']
    optimizer.param_groups[0]['lr'] = base_lr * seq_len / bptt
    optimizer.zero_grad()
    columns = data.size(1)
    parts = [slice(None)] if group is None else [slice(start, start + group) for start in range(0, columns, group)]
    raw_losses, new_hidden = [], []
    for part in parts:
        part_hidden = repackage_hidden(hidden if group is None else select_columns(hidden, part))
        part_targets = targets if group is None else targets.view(data.size(0), columns)[:, part].reshape(-1)
        with (autocast() if autocast is not None else contextlib.nullcontext()):
            output, part_hidden, raw_outputs, dropped_outputs = (forward or model)(
                data if group is None else data[:, part], part_hidden, return_h=True)
            raw_loss = criterion(model.decoder.weight, model.decoder.bias, output, part_targets)
            loss = regularized_loss(raw_loss, raw_outputs, dropped_outputs, **penalties)
        if group is not None:  # the group's share of the batch: its real width (the last may be narrower)
            width = len(range(columns)[part])
            loss = loss * (width / columns)
            raw_loss = raw_loss.detach() * width / columns
        loss.backward()
        raw_losses.append(raw_loss.detach())
        new_hidden.append(part_hidden)
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=clip_foreach)
    optimizer.step()
    optimizer.param_groups[0]['lr'] = base_lr
    if group is None:
        return raw_losses[0], new_hidden[0]
    return torch.stack(raw_losses), join_columns(new_hidden)


def regularized_loss(raw_loss, raw_outputs, dropped_outputs, alpha=0, beta=0):
    """The training loss (section 4.6): cross-entropy plus activation regularisation (AR: alpha times the
    mean square of the last layer's dropped output) and temporal activation regularisation (TAR: beta
    times the mean square of the change of its raw output between timesteps). A new penalty is one more
    keyword here and one more entry in the scripts' `penalties`."""
    loss = raw_loss
    if alpha:  # AR: penalise large activations of the (dropped) last layer output
        loss = loss + alpha * dropped_outputs[-1].pow(2).mean()
    if beta:  # TAR: penalise change between timesteps of the raw last layer output
        loss = loss + beta * (raw_outputs[-1][1:] - raw_outputs[-1][:-1]).pow(2).mean()
    return loss


def select_columns(hidden, columns):
    """The hidden state (a list per layer of tensors or (h, c) tuples, batch on dim 1) of some columns."""
    if isinstance(hidden, torch.Tensor):
        return hidden[:, columns].contiguous()
    return type(hidden)(select_columns(h, columns) for h in hidden)


def join_columns(groups):
    """The inverse of select_columns: the groups' hidden states side by side."""
    first = groups[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(groups, dim=1)
    return type(first)(join_columns([g[i] for g in groups]) for i in range(len(first)))


def train_epoch(model, criterion, optimizer, params, train_data, rng, epoch, bptt, clip, penalties, log_interval,
                seq_len_cap=None, group=None, log=print, progress=None, forward=None, step=train_step):
    """One pass over the training stream with truncated BPTT; returns the mean raw training loss.

    Each step: a sequence length sampled around `bptt` (section 4.1, capped at `seq_len_cap`), then
    `step` (train_step: lr scaled by seq_len / bptt, cross-entropy plus `penalties`, clipping at `clip`,
    the optimizer's step). Losses stay on the device between log lines, so the loop never waits for
    the GPU except to print. `step` takes train_step's arguments and returns what it returns: the CUDA
    graph replay (harness), or train_step with bf16 autocast.
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
    num_batches = len(train_data) // bptt

    def check_finite():
        bad = int(first_bad_batch)
        if bad >= 0:
            raise NonFiniteLoss(f'training loss became non-finite at epoch {epoch}, batch {bad}; '
                                'try a lower --lr or --clip')

    while i < train_data.size(0) - 1 - 1:
        seq_len = sample_seq_len(rng, bptt, seq_len_cap)
        base_lr = optimizer.param_groups[0]['lr']
        data, targets = get_batch(train_data, i, seq_len=seq_len)
        raw_loss, hidden = step(model, criterion, optimizer, params, data, targets, hidden, seq_len, bptt=bptt,
                                clip=clip, penalties=penalties, group=group, forward=forward)  # [distributed]
        first_bad_batch = torch.where((first_bad_batch < 0) & ~torch.isfinite(raw_loss).all(),
                                      batch + 1, first_bad_batch)
        for part in raw_loss.reshape(-1):  # a grouped step's groups one by one, in MoS's order of sums
            interval_loss += part
            epoch_loss += part
        if progress is not None:
            progress.update(1)
        # The original's log lines, so that logs diff clean against its own: batches counted from 0, a
        # line after each positive multiple of log_interval; the first line thus sums log_interval + 1
        # losses, and every line divides by log_interval.
        if batch % log_interval == 0 and batch > 0:
            check_finite()
            cur_loss = interval_loss.item() / log_interval
            elapsed = time.time() - start_time
            log(interval_line(model.report_style, epoch, batch, num_batches, base_lr,
                              elapsed * 1000 / log_interval, cur_loss))
            interval_loss.zero_()
            start_time = time.time()
        batch += 1
        i += seq_len
    check_finite()
    return epoch_loss.item() / max(batch, 1)


def interval_line(release, epoch, batch, num_batches, lr, ms_per_batch, loss):
    """A training log line as each release of the original printed it (2017: lr to 2 places, no bpc)."""
    lr_text = f'{lr:02.2f}' if release == 2017 else f'{lr:05.5f}'
    return (f'| epoch {epoch:3d} | {batch:5d}/{num_batches:5d} batches | lr {lr_text} '
            f'| ms/batch {ms_per_batch:5.2f} | {loss_figures(loss, release)}')


def loss_figures(loss, release=2018, kind=None):
    """`loss x | ppl y | bpc z` (each word after `kind` when given, e.g. `valid loss`), as the original
    printed them; its first release printed no bpc."""
    prefix = f'{kind} ' if kind else ''
    line = f'{prefix}loss {loss:5.2f} | {prefix}ppl {perplexity(loss):8.2f}'
    return line if release == 2017 else f'{line} | {prefix}bpc {loss / math.log(2):8.3f}'


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


# ---------------------------------------------------------------------------------------------
# NT-ASGD (paper section 3)

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
