"""CUDA graphs for the training step (main.py and finetune.py with --cuda-graphs).

A PTB step on an H200 spends more time launching kernels than running them (RESULTS.md): about 1,000
small kernels (70 timesteps x 3 layers, forward and backward, plus the optimizer). A CUDA graph
records one step's kernels once and replays them with one launch, the same kernels on the same
memory, so the numbers do not change.

How a step becomes a graph:
- The body is training.train_step itself (forward, cross-entropy + AR + TAR, backward, clipping over
  model and criterion, the optimizer step with the lr scaled by seq_len / bptt), run on *static*
  buffers: the batch is copied into a fixed input tensor, the hidden state lives in fixed tensors
  that the step reads and then overwrites with the new state (after the backward pass, which still
  needs the old one), and the raw loss is copied into a fixed 0-dim tensor.
- One graph per (batch shape, sampled sequence length). numpy draws the length before the step, so
  the CPU picks the graph. A length seen for the first time runs eagerly (on the side stream the
  graphs are captured on: this is the warm-up, and it is the real step, so nothing is redone or
  undone), then the graph is captured; later steps of that length replay it.
- Python floats are baked into a graph: the lr (scaled by seq_len / bptt), the dropout rates, the
  clip. So the graphs are keyed by the optimizer object and its base lr, and all are dropped and
  captured again when either changes (--when divides the lr by 10; NT-ASGD replaces SGD by ASGD),
  the first step of each length running eagerly again. This costs one eager step and one capture
  per length after each change, a few times a run, and keeps each kernel's arguments those of the
  eager step: the same rounding as eager, not merely the same maths.
- ASGD and Adam keep their step counts and averaging factors on the CPU unless `capturable`; a
  graph would freeze them at their capture-time values. They are made capturable (their state moved
  to the GPU) while this module runs or captures a step, and switched back after, so a checkpoint
  holds an ordinary optimizer. For ASGD with t0 = 0 and lambd = 0 (the paper's) the capturable
  path computes eta and mu with the same values; Adam's capturable path rounds differently.
  SGD has no state to freeze.
- Every dropout mask (embedding, locked, weight drop) is drawn inside the graph: CUDA's random
  generator gives a replay the offsets the eager step would have used (philox seed and offset read
  at replay time), so masks follow the same stream as eager.
- All graphs share one memory pool (torch.cuda.graph_pool_handle) until they are dropped; then the
  pool goes with them and the next capture takes a new one. (The caching allocator releases a pool
  when its last graph is deleted, but keeps it while tensors allocated in it live, such as the .grad
  tensors below; capturing into it again then fails its internal `use_count > 0` assert.) Nothing that
  outlives a replay lives in the pool: parameters, gradients (see below), optimizer state, the static
  inputs and outputs and the carried hidden state are all allocated outside it, so replaying graphs in
  any order is safe. Gradients: the eager warm-up step leaves .grad tensors outside the pool; inside a
  capture train_step's zero_grad sets them to None and the backward pass allocates them in the pool
  afresh, which is safe since no one reads .grad between steps.
- Stream order, as torch.cuda.graph keeps it: the device is synchronized before capture_begin (the
  warm-up ran on the side stream) and after capture_end (the capture registers its RNG seed and offset
  holders, which every replay then fills on the current stream).
- The last batch of an epoch is usually shorter than its sampled length (the stream runs out): it runs
  eagerly on the caller's tensors and is never captured. Its shape changes from epoch to epoch, so
  its graphs would pile up, one per epoch, until the next lr change.
- Nothing waits for the GPU: the step returns the loss on the device (a copy of the static one), and
  train_epoch accumulates it there, as it does for eager steps.

On the CPU (and whenever capture=False) the same static-buffer step runs eagerly without capture:
that is how the tests check this module on machines without a GPU; they also stand in for the CUDA
graph calls (GraphCalls) to check the capture's control flow.

A capture that fails (an operation that cannot be captured) stops the run with one line naming the
body's own error and suggesting --no-cuda-graphs. It does not go on eagerly: a capture that failed
after capture_begin can leave CUDA's random generator in capture mode (later eager dropout fails with
"Offset increment outside graph capture") and the allocator's capture bookkeeping behind, which no
public API undoes. capture_end is still called, and its own error (usually "operation failed due to a
previous error during capture") is reported only when the body raised none; the lr (scaled by
seq_len / bptt inside the body) and the QRNN's saved inputs are put back first.

Not supported (refused with one line): the split softmax of WikiText-103-sized vocabularies (its
row selection has data-dependent shapes) and data parallelism (torchrun).
"""
import contextlib

import torch

import training
from errors import UserError, first_line


class GraphCalls:
    """The CUDA calls that capture and replay go through, in one place: the tests hand
    GraphedTrainStep a stand-in that records them (and can be made to fail) on the CPU."""

    def captures_on(self, device):
        return device.type == 'cuda'

    def new_pool(self):
        return torch.cuda.graph_pool_handle()

    def new_graph(self):
        return torch.cuda.CUDAGraph()

    def new_stream(self, device):
        return torch.cuda.Stream(device)

    def on_stream(self, stream):
        return torch.cuda.stream(stream)

    def current_stream(self):
        return torch.cuda.current_stream()

    def synchronize(self):
        torch.cuda.synchronize()


class GraphedTrainStep:
    """A drop-in for training.train_step (same arguments, same return) that replays CUDA graphs.

    Hand it to training.train_epoch as `step`. Counters for tests and logs: `captures` (graphs
    captured), `replays`, `eager_steps` (first steps of a length, short last batches, or every step
    when not capturing).
    """

    def __init__(self, capture=True, autocast=None, calls=None):
        self.capture = capture
        self.autocast = autocast
        self.calls = calls or GraphCalls()
        self.graphs = {}  # (data shape, seq_len) -> CUDAGraph (none on the CPU, where nothing is captured)
        self.inputs = {}  # data shape -> (static data, static targets)
        self.setting = None  # (optimizer, base lr): what the graphs have baked in
        self.hidden = None  # the carried hidden state, same structure as model.init_hidden
        self.prev_inputs = {}  # QRNN layer -> its static saved previous input (qrnn.QRNNLayer.prevX)
        self.loss = None
        self.pool = None  # taken at the first capture after the graphs were dropped (see _drop_graphs)
        self.stream = None
        self.captures = self.replays = self.eager_steps = 0

    # -----------------------------------------------------------------------------------------
    def __call__(self, model, criterion, optimizer, params, data, targets, hidden, seq_len, *, group=None,
                 autocast=None, forward=None, **settings):
        """training.train_step's arguments (`settings`: bptt, clip, penalties, clip_foreach)."""
        if group is not None:
            raise UserError('--cuda-graphs does not work with --small_batch_size or --n_experts > 1 yet')
        if forward is not None:
            raise UserError('--cuda-graphs does not work with several processes (torchrun) yet')
        if getattr(criterion, 'nsplits', 1) > 1:
            raise UserError('--cuda-graphs does not support the split softmax of large vocabularies '
                            '(WikiText-103): its shapes depend on the data; run without --cuda-graphs')
        autocast = autocast or self.autocast
        capturing = self.capture and self.calls.captures_on(data.device)
        if capturing and self.stream is None:
            self.stream = self.calls.new_stream(data.device)

        setting = (optimizer, optimizer.param_groups[0]['lr'])
        if self.setting is None or setting[0] is not self.setting[0] or setting[1] != self.setting[1]:
            self._drop_graphs()  # lr or optimizer changed: capture again (see the module's docstring)
            self.setting = setting
        self._carry_in(model, hidden)

        def body(step_data, step_targets):
            raw_loss, new_hidden = training.train_step(model, criterion, optimizer, params, step_data,
                                                       step_targets, self.hidden, seq_len, autocast=autocast,
                                                       **settings)
            self._carry_out(model, raw_loss, new_hidden)

        if data.size(0) != seq_len:
            # The epoch's short last batch: eager, on the caller's tensors (no static copy, no graph).
            with capturable(optimizer):
                body(data, targets)
            self.eager_steps += 1
            return self.loss.clone(), self.hidden

        static_data, static_targets = self._inputs(data, targets)
        static_data.copy_(data)
        static_targets.copy_(targets)
        key = (tuple(data.shape), seq_len)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            self.replays += 1
        else:
            with capturable(optimizer), self._on_side_stream(capturing):
                body(static_data, static_targets)
            self.eager_steps += 1
            if capturing:
                self.graphs[key] = self._capture(lambda: body(static_data, static_targets), model, optimizer)
        return self.loss.clone(), self.hidden

    # -----------------------------------------------------------------------------------------
    def _drop_graphs(self):
        """Forget every graph, and their pool: once its graphs are deleted, capturing into the same pool
        trips the caching allocator's `use_count > 0` assert (the pool lingers, use count 0, while
        tensors allocated in it live), so the next capture takes a new one."""
        self.graphs.clear()
        self.pool = None

    def _capture(self, body, model, optimizer):
        """Capture `body` (the step just run eagerly: a capture records kernels and runs none) as a
        graph; a failure is raised as one line (see the module's docstring)."""
        if self.pool is None:
            self.pool = self.calls.new_pool()
        graph = self.calls.new_graph()
        base_lr = optimizer.param_groups[0]['lr']
        failure = None
        self.calls.synchronize()  # as torch.cuda.graph: the warm-up's side-stream work done first
        with capturable(optimizer), self.calls.on_stream(self.stream):
            graph.capture_begin(pool=self.pool)
            try:
                body()
            except Exception as e:  # noqa: BLE001 - reported below, with capture_end called first
                failure = e
            finally:
                try:
                    graph.capture_end()
                except Exception as e:  # noqa: BLE001 - after a failed body this only says "previous error"
                    failure = failure or e
        if failure is not None:
            self._undo_failed_capture(model, optimizer, base_lr)
            raise UserError(f'--cuda-graphs: capturing the training step failed: {type(failure).__name__}: '
                            f'{first_line(failure)[:300]}; run without it (--no-cuda-graphs)') from failure
        self.calls.synchronize()  # the capture's RNG seed/offset registration done before any replay
        self.captures += 1
        return graph

    def _undo_failed_capture(self, model, optimizer, base_lr):
        """What a body stopped part-way leaves behind: the lr scaled by seq_len / bptt, and QRNN
        layers whose saved input points at a tensor of the failed capture."""
        optimizer.param_groups[0]['lr'] = base_lr
        for layer in _qrnn_layers_saving_input(model):
            if layer in self.prev_inputs:
                layer.prevX = self.prev_inputs[layer]
        self._drop_graphs()

    @contextlib.contextmanager
    def _on_side_stream(self, capturing):
        """The eager (warm-up) step on the capture stream: cuDNN and cuBLAS set up their per-stream
        workspaces there before the capture needs them."""
        if not (capturing and self.stream is not None):
            yield
            return
        self.stream.wait_stream(self.calls.current_stream())
        with self.calls.on_stream(self.stream):
            yield
        self.calls.current_stream().wait_stream(self.stream)

    def _inputs(self, data, targets):
        shape = tuple(data.shape)
        if shape not in self.inputs:
            self.inputs[shape] = (torch.empty_like(data), torch.empty_like(targets))
        return self.inputs[shape]

    def _carry_in(self, model, hidden):
        """Static hidden state (and QRNN saved inputs) holding what the caller hands in.

        train_epoch passes back what the last step returned (our static tensors: nothing to do) or,
        at the start of an epoch, model.init_hidden's fresh zeros (copied in). New static tensors
        (a new batch size) invalidate the graphs, which read the old ones.
        """
        if hidden is not self.hidden:
            flat_new, flat_static = _flatten(hidden), _flatten(self.hidden) if self.hidden is not None else None
            if flat_static is None or [t.shape for t in flat_new] != [t.shape for t in flat_static]:
                self.hidden = _map(lambda t: t.detach().clone(), hidden)
                self._drop_graphs()
            else:
                with torch.no_grad():
                    for static, new in zip(flat_static, flat_new):
                        static.copy_(new)
        if self.loss is None:
            self.loss = _flatten(hidden)[0].new_zeros(())
        for layer in _qrnn_layers_saving_input(model):
            static = self.prev_inputs.get(layer)
            if layer.prevX is static and static is not None:
                continue
            shape = (1,) + tuple(_flatten(self.hidden)[0].shape[1:2]) + (layer.input_size,)
            if static is None or tuple(static.shape) != shape:
                static = self.prev_inputs[layer] = _flatten(self.hidden)[0].new_zeros(shape)
                self._drop_graphs()
            with torch.no_grad():
                # None (after model.reset()) means zeros, as QRNNLayer._previous_input reads it.
                if layer.prevX is None or tuple(layer.prevX.shape) != shape:
                    static.zero_()
                else:
                    static.copy_(layer.prevX)
            layer.prevX = static

    def _carry_out(self, model, raw_loss, new_hidden):
        """After the optimizer step: the loss and the new state into the static tensors (the backward
        pass above still read the old state)."""
        with torch.no_grad():
            self.loss.copy_(raw_loss)
            for static, new in zip(_flatten(self.hidden), _flatten(new_hidden)):
                static.copy_(new)
            for layer in _qrnn_layers_saving_input(model):
                static = self.prev_inputs[layer]
                static.copy_(layer.prevX)
                layer.prevX = static


@contextlib.contextmanager
def capturable(optimizer):
    """The optimizer in its capturable form (step counts and factors on the GPU, updated by kernels)
    while a step runs or is captured; back to its ordinary form after, so that checkpoints and any
    later eager step see the usual optimizer. SGD has no such flag and is left alone."""
    groups = [g for g in optimizer.param_groups if 'capturable' in g]
    on_gpu = any(p.is_cuda for g in groups for p in g['params'])
    if not on_gpu:
        yield
        return
    saved = [g['capturable'] for g in groups]
    for g in groups:
        g['capturable'] = True
        for p in g['params']:
            state = optimizer.state.get(p, {})
            if 'step' in state and state['step'].device != p.device:
                state['step'] = state['step'].to(p.device)
    optimizer._warned_capturable_if_run_uncaptured = True  # the warning is about eager use, which is ours to choose
    try:
        yield
    finally:
        for g, flag in zip(groups, saved):
            g['capturable'] = flag


def _qrnn_layers_saving_input(model):
    """QRNN layers that carry their last input to the next call (window 2, save_prev_x)."""
    return [m for m in model.modules()
            if hasattr(m, 'prevX') and getattr(m, 'save_prev_x', False) and getattr(m, 'window', 1) == 2]


def _flatten(hidden):
    if isinstance(hidden, torch.Tensor):
        return [hidden]
    return [t for h in hidden for t in _flatten(h)]


def _map(fn, hidden):
    if isinstance(hidden, torch.Tensor):
        return fn(hidden)
    return type(hidden)(_map(fn, h) for h in hidden)
