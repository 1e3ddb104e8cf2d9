"""cuda_graphs.py. On the CPU: the static-buffer step (what a graph replays) run eagerly gives
training.train_step's losses and weights bit for bit, over epochs of variable-length steps with every
dropout on, clipping, AR/TAR, an lr change and the switch to ASGD; the graphs are dropped when the lr
or the optimizer changes. On a GPU (skipped without one): graphs against eager over 200 steps."""
import contextlib
import copy

import numpy as np
import pytest
import torch

from harness import cuda_graphs
import harness
import training
from utils import batchify
from model import RNNModel
from splitcross import SplitCrossEntropyLoss

NTOKENS = 40


def build(rnn_type='LSTM', device='cpu', dropouts=(0.3, 0.2, 0.3, 0.1, 0.4), size=(8, 12, 3)):
    torch.manual_seed(0)
    emsize, nhid, nlayers = size
    model = RNNModel(rnn_type, NTOKENS, emsize, nhid, nlayers, *dropouts, tie_weights=True).to(device)
    criterion = SplitCrossEntropyLoss(emsize, splits=[]).to(device)
    return model, criterion


def stream(n, batch, device='cpu'):
    tokens = torch.randint(NTOKENS, (n,), generator=torch.Generator().manual_seed(3))
    return batchify(tokens, batch, device=device)


def train(step, rnn_type='LSTM', schedule=('sgd', 'sgd', 'asgd'), device='cpu', epochs_data=(1200, 4), bptt=10,
          dropouts=(0.3, 0.2, 0.3, 0.1, 0.4), size=(8, 12, 3), seed=7):
    """Epochs of train_epoch with `step`; schedule names the optimizer of each epoch (a new one at each
    change, as main.py's switch to ASGD); the lr is divided by 10 after the first epoch (--when).
    Returns (per-step losses, final weights, the step object)."""
    model, criterion = build(rnn_type, device, dropouts, size)
    params = list(model.parameters()) + list(criterion.parameters())
    settings = dict(bptt=bptt, clip=0.25, penalties=dict(alpha=2.0, beta=1.0), log_interval=1000)
    data = stream(*epochs_data, device=device)
    rng = np.random.RandomState(seed)
    torch.manual_seed(seed)
    losses = []

    def recording(*a, **k):
        loss, hidden = step(*a, **k)
        losses.append(loss.detach().clone())
        return loss, hidden

    optimizer = None
    for epoch, name in enumerate(schedule, start=1):
        if optimizer is None or training.optimizer_name(optimizer) != name:
            optimizer = training.make_optimizer(name, params, 1.0 if name != 'adam' else 1e-2, 1.2e-6)
        training.train_epoch(model, criterion, optimizer, params, data, rng, epoch, **settings, log=lambda *a: None,
                             step=recording)
        if epoch == 1:
            optimizer.param_groups[0]['lr'] /= 10.
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    weights.update({f'ax.{i}': optimizer.state[p]['ax'].cpu().clone()
                    for i, p in enumerate(params) if 'ax' in optimizer.state.get(p, {})})
    return torch.stack(losses).cpu(), weights, step


@pytest.mark.parametrize('rnn_type,schedule', [
    ('LSTM', ('sgd', 'sgd', 'asgd')),
    ('LSTM', ('adam', 'adam')),
    ('QRNN', ('sgd', 'asgd')),
])
@pytest.mark.slow
def test_static_step_equals_train_step_on_cpu(rnn_type, schedule):
    eager_losses, eager_weights, _ = train(training.train_step, rnn_type, schedule)
    graphed = cuda_graphs.GraphedTrainStep()
    losses, weights, _ = train(graphed, rnn_type, schedule)
    assert len(losses) == len(eager_losses) > 50
    assert torch.equal(losses, eager_losses), (losses - eager_losses).abs().max()
    assert weights.keys() == eager_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], eager_weights[k]), k
    if 'asgd' in schedule:
        assert any(k.startswith('ax.') for k in weights)
    # On the CPU nothing is captured: every step ran the static-buffer step eagerly.
    assert graphed.captures == graphed.replays == 0 and graphed.eager_steps == len(losses)


def test_hidden_state_is_carried_between_steps():
    """The static step must hand the new hidden state to the next step: with it reset each step,
    the losses differ from train_step's (this is what the equality above rests on)."""
    class Forgetful(cuda_graphs.GraphedTrainStep):
        def _carry_out(self, model, raw_loss, new_hidden):
            super()._carry_out(model, raw_loss, new_hidden)
            with torch.no_grad():
                for t in cuda_graphs._flatten(self.hidden):
                    t.zero_()
    eager_losses, _, _ = train(training.train_step, schedule=('sgd',))
    losses, _, _ = train(Forgetful(), schedule=('sgd',))
    assert not torch.equal(losses, eager_losses)


def test_graphs_are_dropped_when_the_lr_or_the_optimizer_changes():
    step = cuda_graphs.GraphedTrainStep()
    model, criterion = build(dropouts=(0, 0, 0, 0, 0))
    params = list(model.parameters()) + list(criterion.parameters())
    settings = dict(bptt=10, clip=0.25, penalties=dict(alpha=2.0, beta=1.0))
    data = stream(200, 4)
    optimizer = training.make_optimizer('sgd', params, 1.0, 0)
    hidden = model.init_hidden(4)
    model.train()

    def run(n):
        nonlocal hidden
        for i in range(n):
            _, hidden = step(model, criterion, optimizer, params, data[i:i + 10], data[i + 1:i + 11].reshape(-1),
                             hidden, 10, **settings)
    run(2)
    assert step.setting == (optimizer, 1.0)
    step.graphs[((10, 4), 10)] = 'a captured graph'  # what a GPU would hold after the first step
    optimizer.param_groups[0]['lr'] = 0.1  # --when
    run(1)
    assert step.setting[1] == 0.1 and 'a captured graph' not in step.graphs.values()
    step.graphs[((10, 4), 10)] = 'a captured graph'
    optimizer = training.make_optimizer('asgd', params, 0.1, 0)  # NT-ASGD's switch: a new object
    run(1)
    assert step.setting[0] is optimizer and 'a captured graph' not in step.graphs.values()


def test_refuses_the_split_softmax():
    from errors import UserError
    model, _ = build()
    criterion = SplitCrossEntropyLoss(8, splits=[10])
    params = list(model.parameters()) + list(criterion.parameters())
    data = stream(100, 2)
    with pytest.raises(UserError, match='split softmax'):
        cuda_graphs.GraphedTrainStep()(model, criterion, training.make_optimizer('sgd', params, 1., 0), params,
                                       data[:5], data[1:6].reshape(-1), model.init_hidden(2), 5,
                                       bptt=5, clip=0, penalties={})


# ---------------------------------------------------------------------------------------------
# The capture's control flow on the CPU, through a stand-in for the CUDA graph calls.
#
# What the stand-in cannot show: that the real allocator accepts the pools, that the real RNG and
# streams give a replay the eager step's masks and order, that a real capture fails the way it is
# simulated here. Its replay runs nothing, so no numbers are checked after one; during its "capture"
# the body really runs (a second step), so only counts, pools and call order are checked. The CUDA
# tests below (run by benchmarks/gpu_check.sh) check the same flow with the real calls.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

CAPTURE_ERROR = 'CUDA error: operation not permitted when stream is capturing'
AFTER_CAPTURE_ERROR = 'CUDA error: operation failed due to a previous error during capture'


class StandInCalls(cuda_graphs.GraphCalls):
    """Records every call in `log`; with `fail_in_body`, the step raises while a capture is under way
    (as an operation that cannot be captured does) and capture_end then raises what CUDA raises after
    such a failure."""

    def __init__(self, fail_in_body=False):
        self.log, self.fail_in_body, self.capturing, self.body_failed = [], fail_in_body, False, False

    def captures_on(self, device):
        return True

    def new_pool(self):
        pool = f'pool {sum(call[0] == "new_pool" for call in self.log) + 1}'
        self.log.append(('new_pool', pool))
        return pool

    def new_graph(self):
        return StandInGraph(self)

    def new_stream(self, device):
        return StandInStream(self)

    def on_stream(self, stream):
        return contextlib.nullcontext()

    def current_stream(self):
        return StandInStream(self)

    def synchronize(self):
        self.log.append(('synchronize',))


class StandInStream:
    def __init__(self, calls):
        self.calls = calls

    def wait_stream(self, other):
        self.calls.log.append(('wait_stream',))


class StandInGraph:
    def __init__(self, calls):
        self.calls = calls

    def capture_begin(self, pool=None):
        self.calls.log.append(('capture_begin', pool))
        self.calls.capturing = True

    def capture_end(self):
        self.calls.log.append(('capture_end',))
        self.calls.capturing = False
        if self.calls.body_failed:
            raise RuntimeError(AFTER_CAPTURE_ERROR)

    def replay(self):
        self.calls.log.append(('replay',))


def steps_at(step, model, criterion, optimizer, params, data, rows, seq_len=10, hidden=None):
    """One step per start row in `rows`, each on data[start:start + seq_len] (shorter at the end of data)."""
    hidden = model.init_hidden(data.size(1)) if hidden is None else hidden
    model.train()
    for i in rows:
        n = min(seq_len, data.size(0) - 1 - i)
        _, hidden = step(model, criterion, optimizer, params, data[i:i + n], data[i + 1:i + 1 + n].reshape(-1),
                         hidden, seq_len, bptt=10, clip=0.25, penalties=dict(alpha=2.0, beta=1.0))
    return hidden


@pytest.mark.parametrize('where', ['stand-in', pytest.param('cuda', marks=cuda)])
def test_capture_count_grows_after_an_lr_change_in_a_new_pool(where):
    device = 'cuda' if where == 'cuda' else 'cpu'
    calls = StandInCalls() if where == 'stand-in' else None
    step = cuda_graphs.GraphedTrainStep(calls=calls)
    model, criterion = build(device=device)
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = training.make_optimizer('sgd', params, 1.0, 0)
    data = stream(480, 4, device)  # 120 rows: every step below is full length
    hidden = steps_at(step, model, criterion, optimizer, params, data, range(0, 50, 10))
    assert (step.captures, step.replays, step.eager_steps) == (1, 4, 1)
    first_pool = step.pool
    optimizer.param_groups[0]['lr'] /= 10  # --when: the graph baked in the old lr
    steps_at(step, model, criterion, optimizer, params, data, range(50, 100, 10), hidden=hidden)
    assert (step.captures, step.replays, step.eager_steps) == (2, 8, 2)
    assert step.replays > step.eager_steps
    assert step.pool is not first_pool  # a pool whose graphs were all dropped is not captured into again
    if calls is not None:
        begins = [call for call in calls.log if call[0] == 'capture_begin']
        assert begins == [('capture_begin', 'pool 1'), ('capture_begin', 'pool 2')]
        # Synchronized right before each capture begins and right after it ends, as torch.cuda.graph does.
        for i, call in enumerate(calls.log):
            if call[0] == 'capture_begin':
                assert calls.log[i - 1] == ('synchronize',)
            if call[0] == 'capture_end':
                assert calls.log[i + 1] == ('synchronize',)


@pytest.mark.parametrize('rnn_type', ['LSTM', 'QRNN'])
def test_a_failed_capture_is_one_line_naming_the_body_error(rnn_type, monkeypatch):
    calls = StandInCalls(fail_in_body=True)
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip_that_cannot_be_captured(*a, **k):  # mid-body: after the forward pass and the lr scaling
        if calls.capturing and calls.fail_in_body:
            calls.body_failed = True
            raise RuntimeError(CAPTURE_ERROR + '\nCUDA kernel errors might be asynchronously reported ...')
        return real_clip(*a, **k)
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', clip_that_cannot_be_captured)
    step = cuda_graphs.GraphedTrainStep(calls=calls)
    model, criterion = build(rnn_type)
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = training.make_optimizer('sgd', params, 1.0, 0)
    from errors import UserError
    with pytest.raises(UserError) as failed:
        steps_at(step, model, criterion, optimizer, params, stream(400, 4), [0], seq_len=7)
    message = str(failed.value)
    assert '\n' not in message and CAPTURE_ERROR in message and '--no-cuda-graphs' in message
    assert AFTER_CAPTURE_ERROR not in message
    assert ('capture_end',) in calls.log  # still ended, though its own error is not the one reported
    assert optimizer.param_groups[0]['lr'] == 1.0  # not left at 1.0 * 7 / 10
    assert step.eager_steps == 1 and step.captures == 0 and step.graphs == {}
    for layer in cuda_graphs._qrnn_layers_saving_input(model):
        assert layer.prevX is step.prev_inputs[layer]
    if rnn_type == 'QRNN':
        assert cuda_graphs._qrnn_layers_saving_input(model)


def test_a_short_last_batch_runs_eagerly_and_is_never_captured():
    calls = StandInCalls()
    step = cuda_graphs.GraphedTrainStep(calls=calls)
    model, criterion = build()
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = training.make_optimizer('sgd', params, 1.0, 0)
    data = stream(100, 4)  # 25 rows: steps at rows 0 and 10 are full, the one at row 20 has 4 rows
    for epoch in range(3):
        steps_at(step, model, criterion, optimizer, params, data, [0, 10, 20])
    assert step.captures == 1 and step.replays == 5 and step.eager_steps == 4
    assert list(step.graphs) == [((10, 4), 10)] and list(step.inputs) == [(10, 4)]
    assert not any(call[0] == 'capture_begin' for call in calls.log[-3:])
    # Through train_epoch, every graph kept is of a full-length batch.
    training.train_epoch(model, criterion, optimizer, params, stream(1200, 4), np.random.RandomState(7), 1, bptt=10,
                         clip=0.25, penalties=dict(alpha=2.0, beta=1.0), log_interval=1000, log=lambda *a: None, step=step)
    assert step.captures > 1 and all(shape[0] == seq_len for shape, seq_len in step.graphs)


# ---------------------------------------------------------------------------------------------
# On a GPU: graphs against eager, 200 steps, every dropout on.


def max_rel(a, b):
    return float((a.double() - b.double()).abs().max() / max(b.double().abs().max(), 1e-30))


@cuda
@pytest.mark.parametrize('rnn_type,schedule', [
    ('LSTM', ('sgd', 'sgd', 'asgd')),
    ('LSTM', ('adam', 'adam')),
    ('QRNN', ('sgd', 'asgd')),
])
def test_graphs_match_eager_on_cuda(rnn_type, schedule):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        # About 200 steps over the epochs: 4,000 rows of 8 columns in all, mean length 20.
        kw = dict(rnn_type=rnn_type, schedule=schedule, device='cuda', epochs_data=(32000 // len(schedule), 8),
                  bptt=20, size=(64, 128, 3))
        eager_losses, eager_weights, _ = train(training.train_step, **kw)
        graphed = cuda_graphs.GraphedTrainStep()
        losses, weights, _ = train(graphed, **kw)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    bitwise = torch.equal(losses, eager_losses) and all(torch.equal(weights[k], eager_weights[k]) for k in weights)
    worst_weight = max((max_rel(weights[k], eager_weights[k]), k) for k in weights if weights[k].is_floating_point())
    print(f'\n{rnn_type} {"/".join(schedule)}: {len(losses)} steps, {graphed.captures} graphs captured, '
          f'{graphed.replays} replays, {graphed.eager_steps} eager steps; bitwise equal to eager: {bitwise}; '
          f'max loss difference {float((losses - eager_losses).abs().max()):.3e}; '
          f'max relative weight difference {worst_weight[0]:.3e} ({worst_weight[1]})')
    assert len(losses) >= 150 and graphed.captures > 0 and graphed.replays > graphed.eager_steps
    # SGD and ASGD (t0 = lambd = 0) compute the same values captured or not; capturable Adam rounds
    # its bias corrections differently from eager Adam, and 200 steps let that grow a little.
    tol = 1e-3 if 'adam' in schedule else 1e-4
    assert torch.allclose(losses, eager_losses, rtol=tol, atol=tol / 10)
    assert worst_weight[0] < 10 * tol


# ---------------------------------------------------------------------------------------------
# The flags of main.py and finetune.py

@pytest.mark.slow
@pytest.mark.parametrize('script', ['main.py', 'finetune.py'])
@pytest.mark.parametrize('flag', ['--cuda-graphs', '--bf16'])
def test_gpu_flags_are_refused_on_the_cpu_with_one_line(script, flag, tmp_path):
    import subprocess
    import sys
    from conftest import REPO, TINY, write_corpus
    corpus = write_corpus(str(tmp_path / 'corpus'))
    run = subprocess.run([sys.executable, script, *TINY, '--data', corpus, '--save', str(tmp_path / 'm.pt'), '--epochs', '1', flag],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr == f'error: {flag} needs a CUDA GPU\n'
    assert not (tmp_path / 'm.pt').exists()


def test_no_cuda_graphs_is_accepted_and_the_default_step_is_train_step(tmp_path):
    from harness import cli
    import main
    args = harness.parse_args(main.build_parser(), ['--no-cuda-graphs', '--cpu', '--save', str(tmp_path / 'm.pt')])
    assert args.cuda_graphs is False and args.bf16 is False
    assert cli.train_step_for(args) is training.train_step
    assert harness.parse_args(main.build_parser(), ['--save', str(tmp_path / 'm.pt')]).cuda_graphs is False
