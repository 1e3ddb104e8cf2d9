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
- All graphs share one memory pool (torch.cuda.graph_pool_handle). Nothing that outlives a replay
  lives in the pool: parameters, gradients (see below), optimizer state, the static inputs and
  outputs and the carried hidden state are all allocated outside it, so replaying graphs in any
  order is safe. Gradients: the eager warm-up step leaves .grad tensors outside the pool; inside a
  capture train_step's zero_grad sets them to None and the backward pass allocates them in the pool
  afresh, which is safe since no one reads .grad between steps.
- Nothing waits for the GPU: the step returns the loss on the device (a copy of the static one), and
  train_epoch accumulates it there, as it does for eager steps.

On the CPU (and whenever capture=False) the same static-buffer step runs eagerly without capture:
that is how the tests check this module on machines without a GPU. If a capture fails (an operation
that cannot be captured), the step notes it once and goes on eagerly with the same numbers.

Not supported (refused with one line): the split softmax of WikiText-103-sized vocabularies (its
row selection has data-dependent shapes) and data parallelism (torchrun).
"""
import contextlib

import torch

import training
from errors import UserError


class GraphedTrainStep:
    """A drop-in for training.train_step (same arguments, same return) that replays CUDA graphs.

    Hand it to training.train_epoch as `step`. Counters for tests and logs: `captures` (graphs
    captured), `replays`, `eager_steps` (first steps of a length, or every step when not capturing).
    """

    def __init__(self, capture=True, autocast=None, log=print):
        self.capture = capture
        self.autocast = autocast
        self.log = log
        self.graphs = {}  # (data shape, seq_len) -> CUDAGraph (None on the CPU: the key has been run)
        self.inputs = {}  # data shape -> (static data, static targets)
        self.setting = None  # (optimizer, base lr): what the graphs have baked in
        self.hidden = None  # the carried hidden state, same structure as model.init_hidden
        self.prev_inputs = {}  # QRNN layer -> its static saved previous input (qrnn.QRNNLayer.prevX)
        self.loss = None
        self.pool = None
        self.stream = None
        self.captures = self.replays = self.eager_steps = 0

    # -----------------------------------------------------------------------------------------
    def __call__(self, model, criterion, optimizer, params, data, targets, hidden, args, seq_len,
                 autocast=None, clip_foreach=None, forward=None):
        if forward is not None:
            raise UserError('--cuda-graphs does not work with several processes (torchrun) yet')
        if getattr(criterion, 'nsplits', 1) > 1:
            raise UserError('--cuda-graphs does not support the split softmax of large vocabularies '
                            '(WikiText-103): its shapes depend on the data; run without --cuda-graphs')
        autocast = autocast or self.autocast
        on_gpu = data.device.type == 'cuda'
        if self.capture and on_gpu and self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(data.device)

        setting = (optimizer, optimizer.param_groups[0]['lr'])
        if self.setting is None or setting[0] is not self.setting[0] or setting[1] != self.setting[1]:
            self.graphs.clear()  # lr or optimizer changed: capture again (see the module's docstring)
            self.setting = setting
        self._carry_in(model, hidden)
        static_data, static_targets = self._inputs(data, targets)
        static_data.copy_(data)
        static_targets.copy_(targets)

        def body():
            raw_loss, new_hidden = training.train_step(model, criterion, optimizer, params, static_data,
                                                       static_targets, self.hidden, args, seq_len,
                                                       autocast=autocast, clip_foreach=clip_foreach)
            self._carry_out(model, raw_loss, new_hidden)

        key = (tuple(data.shape), seq_len)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
            self.replays += 1
        else:
            with capturable(optimizer), self._on_side_stream(on_gpu):
                body()
            self.eager_steps += 1
            if self.capture and on_gpu:
                graph = self._capture(body, optimizer)
                if graph is not None:
                    self.graphs[key] = graph
        return self.loss.clone(), self.hidden

    # -----------------------------------------------------------------------------------------
    def _capture(self, body, optimizer):
        graph = torch.cuda.CUDAGraph()
        try:
            with capturable(optimizer), torch.cuda.stream(self.stream):
                graph.capture_begin(pool=self.pool)
                try:
                    body()
                finally:
                    graph.capture_end()
        except RuntimeError as e:
            # A capture records and runs nothing: the eager step has already done this step's work.
            self.log(f'note: --cuda-graphs: capture failed ({str(e).splitlines()[0][:160]}); '
                     'continuing without graphs (same numbers, eager speed)')
            self.capture = False
            self.graphs.clear()
            return None
        self.captures += 1
        return graph

    @contextlib.contextmanager
    def _on_side_stream(self, on_gpu):
        """The eager (warm-up) step on the capture stream: cuDNN and cuBLAS set up their per-stream
        workspaces there before the capture needs them."""
        if not (on_gpu and self.stream is not None):
            yield
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

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
                self.graphs.clear()
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
                self.graphs.clear()
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
