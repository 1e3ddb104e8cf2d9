"""Export a trained model for inference: TorchScript and/or ONNX, or a model directory to share.

    python export.py --checkpoint PTB.pt --torchscript PTB.ts [--onnx PTB.onnx] [--onnx-stream PTB.stream.onnx]
    python export.py --checkpoint PTB.pt --pretrained PTB-model    # config.json, model.safetensors, ...

The exported model is not written anew here: it is a trace of the checkpoint's own RNNModel.forward in
evaluation mode (no dropout of any kind) followed by its criterion's own `logprob` (the full, split or
mixture softmax), so whatever model.py, splitcross.py, mos.py and qrnn.py compute is what gets exported.
Its forward takes word ids int64 (seq_len, batch) and returns log-probabilities float32 (seq_len, batch,
vocabulary) from a zero state; the streaming entry also takes and returns the state.

Before a file is kept it is loaded back (torch.jit.load; onnxruntime) and run on sample batches of other
shapes than the tracing example's; its log-probabilities and state must equal the model's own (to
CHECK_TOLERANCE), else nothing is written. TorchScript loads with torch.jit.load alone (no code of this
repository); ONNX (dynamic sequence and batch axes) with onnxruntime. Formats and entries: docs/SCORING.md.
The model directory of --pretrained (harness/model_dir.py): docs/PYTHON.md.
"""
import argparse
import os
import shutil
import tempfile
import warnings
from typing import List, Tuple

import torch
import torch.nn as nn

import harness

from errors import UserError, first_line
from model import CELLS

ONNX_REQUIREMENTS = 'requirements-export.txt'

# The largest absolute difference (in nats, and in units of the state) an exported file may show from
# the model's own computation on the sample batches: float32 rounding of a reordered computation is
# ~1e-6; a dropped or altered operation is orders of magnitude above this.
CHECK_TOLERANCE = 1e-4

# The tracing example (seq_len, batch), and the sample batches the written files are checked on: other
# lengths and another batch size, so that a shape the trace fixed shows up; the second continues the
# first's state, one step long, as generation does.
EXAMPLE_SHAPE = (5, 2)
SAMPLE_SHAPES = ((7, 3), (1, 3))


# ---------------------------------------------------------------------------------------------
# The inference model: the checkpoint's modules, called as the scripts call them


def remembers_input(rnn):
    """Whether a layer carries its previous input between calls (qrnn.QRNNLayer with window 2 and
    save_prev_x: its first step looks at the last input of the previous call). That input is then part
    of the model's state as much as the hidden state is."""
    return getattr(rnn, 'window', 1) == 2 and getattr(rnn, 'save_prev_x', False)


class InferenceLM(nn.Module):
    """The checkpoint's RNNModel (in evaluation mode) and its criterion, with the state as one flat list
    of tensors: per layer h, c (LSTM), h (GRU) or c (QRNN), then the previous input of each layer that
    remembers one (remembers_input)."""

    def __init__(self, model, criterion):
        super().__init__()
        self.model = model.eval()
        self.criterion = criterion.eval()
        self.input_layers = [rnn for rnn in model.rnns if remembers_input(rnn)]
        self.hidden_parts = CELLS[model.rnn_type]['state_tensors']  # an LSTM's (h, c): 2

    def zero_state(self, batch: int) -> List[torch.Tensor]:
        """The state a model starts from: its init_hidden, and zeros for each remembered input (what a
        QRNN layer uses after reset())."""
        weight = self.model.encoder.weight
        return (flat_hidden(self.model.init_hidden(batch))
                + [weight.new_zeros(1, batch, rnn.input_size) for rnn in self.input_layers])

    def stream(self, ids, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """ids (seq_len, batch), the state -> log-probabilities (seq_len, batch, vocabulary), new state."""
        nhidden = len(state) - len(self.input_layers)
        hidden = nested_hidden(state[:nhidden], self.hidden_parts)
        for rnn, previous in zip(self.input_layers, state[nhidden:]):
            rnn.prevX = previous
        try:
            output, new_hidden = self.model(ids, hidden)
            new_inputs = [rnn.prevX for rnn in self.input_layers]
        finally:
            self.model.reset()  # the remembered inputs are the caller's state, not the module's
        logprobs = self.criterion.logprob(self.model.decoder.weight, self.model.decoder.bias, output)
        return logprobs.view(ids.size(0), ids.size(1), -1), flat_hidden(new_hidden) + new_inputs

    def forward(self, ids):
        """ids (seq_len, batch) -> log-probabilities (seq_len, batch, vocabulary), from a zero state."""
        return self.stream(ids, self.zero_state(ids.size(1)))[0]


def flat_hidden(hidden):
    """An RNNModel's hidden state (a list per layer of (h, c) or h) as one list of tensors."""
    return [t for layer in hidden for t in (layer if isinstance(layer, (tuple, list)) else (layer,))]


def nested_hidden(tensors, parts):
    """flat_hidden's inverse: per layer a tuple (h, c) (parts 2) or the tensor h (parts 1)."""
    if parts == 1:
        return list(tensors)
    return [tuple(tensors[i:i + parts]) for i in range(0, len(tensors), parts)]


class OnnxStream(nn.Module):
    """InferenceLM.stream with the state as separate tensors (ONNX takes and gives flat tensors)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids, *state):
        logprobs, new_state = self.lm.stream(ids, list(state))
        return (logprobs, *new_state)


def state_names(lm, prefix):
    """The ONNX names of the state tensors: h0, c0, h1, ... (c0, c1, ... for a QRNN), then x0, ...
    for the remembered inputs."""
    if lm.model.rnn_type == 'QRNN':
        parts = ('c',)
    else:
        parts = ('h', 'c') if lm.hidden_parts == 2 else ('h',)
    names = [f'{prefix}{part}{layer}' for layer in range(lm.model.nlayers) for part in parts]
    return names + [f'{prefix}x{i}' for i in range(len(lm.input_layers))]


# ---------------------------------------------------------------------------------------------
# The check: an exported file against the model's own computation


def own_computation(model, criterion, chunks):
    """What the checkpoint's model computes for consecutive chunks of one batch of texts, the state
    carried from each into the next as the scripts carry it: per chunk (log-probabilities (seq_len,
    batch, vocabulary), the state after it, flat as InferenceLM's)."""
    model.eval()
    model.reset()
    hidden = model.init_hidden(chunks[0].size(1))
    results = []
    with torch.no_grad():
        for ids in chunks:
            output, hidden = model(ids, hidden)
            logprobs = criterion.logprob(model.decoder.weight, model.decoder.bias, output)
            inputs = [rnn.prevX for rnn in model.rnns if remembers_input(rnn)]
            results.append((logprobs.view(*ids.shape, -1), flat_hidden(hidden) + inputs))
    model.reset()
    return results


def sample_chunks(ntokens):
    """The sample batches (SAMPLE_SHAPES) of random word ids, the same for every run."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(ntokens, shape, generator=generator) for shape in SAMPLE_SHAPES]


def torchscript_results(path, chunks, start):
    """What a TorchScript file computes on the sample chunks, per entry: (log-probabilities per chunk,
    the states after each chunk, flat; None where the entry returns none). `start`: the zero state."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # torch 2.13: "torch.jit.load is deprecated"
        scripted = torch.jit.load(path)
    with torch.no_grad():
        streamed, carried, state = [], [], start
        for ids in chunks:
            logprobs, state = scripted.stream(ids, state)
            streamed.append(logprobs)
            carried.extend(state)
        return {'forward': ([scripted(chunks[0])], None), 'stream': (streamed, carried)}


def onnx_results(path, chunks, start, streaming):
    """What an ONNX file computes on the sample chunks, as torchscript_results gives it."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # its errors are raised, and reported in one line by run_exported
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    if not streaming:
        return {'forward': ([torch.from_numpy(session.run(None, {'ids': chunks[0].numpy()})[0])], None)}
    names = [i.name for i in session.get_inputs()[1:]]
    streamed, carried, state = [], [], [t.numpy() for t in start]
    for ids in chunks:
        logprobs, *state = session.run(None, {'ids': ids.numpy(), **dict(zip(names, state))})
        streamed.append(torch.from_numpy(logprobs))
        carried.extend(torch.from_numpy(t) for t in state)
    return {'stream': (streamed, carried)}


def differences(results, expected):
    """Per entry of `results` (torchscript_results, onnx_results) and per quantity ('log-probabilities',
    'state'), the largest absolute difference from the model's own (`expected`, own_computation's);
    a text instead of a number where the counts or shapes of the tensors differ."""
    found = {}
    for entry, (logprobs, state) in results.items():
        wanted = expected[:len(logprobs)]
        for what, got, want in (('log-probabilities', logprobs, [lp for lp, _ in wanted]),
                                ('state', state, [t for _, chunk_state in wanted for t in chunk_state])):
            if got is not None:
                found[entry, what] = largest_difference(got, want)
    return found


def largest_difference(got, want):
    """max |got - want| over corresponding tensors, or a text saying how their counts or shapes differ."""
    if len(got) != len(want):
        return f'{len(got)} tensors where the model gives {len(want)}'
    worst = 0.0
    for a, b in zip(got, want):
        if tuple(a.shape) != tuple(b.shape):
            return f'shape {tuple(a.shape)} where the model gives {tuple(b.shape)}'
        worst = max(worst, (a.double() - b.double()).abs().max().item())
    return worst


def check_results(name, results, expected):
    """The one-line refusal unless every entry's log-probabilities and state are the model's own to
    CHECK_TOLERANCE."""
    for (entry, what), difference in differences(results, expected).items():
        if isinstance(difference, str) or not difference <= CHECK_TOLERANCE:
            where = f'the {what}' + ('' if entry == 'forward' else ' of its stream entry')
            detail = (f'{where}: {difference}' if isinstance(difference, str) else
                      f'max |diff| {difference:.3g}{" nats" if what == "log-probabilities" else ""} in {where}')
            raise UserError(f'{name}: the exported model does not compute what the checkpoint\'s model computes '
                            f'({detail}); nothing written')


def run_exported(name, results):
    """results() with an exported file's own failures (a shape the trace fixed, an operator the runtime
    lacks) as the one-line refusal."""
    try:
        return results()
    except Exception as e:  # noqa: BLE001: whatever the exported file raises, it is refused
        raise UserError(f'{name}: the exported model fails on a batch of another shape than the tracing example\'s '
                        f'({runtime_error_line(e)}; a Python loop over the sequence is fixed to the example\'s '
                        'length by tracing, docs/SCORING.md); nothing written') from None


def runtime_error_line(error):
    """The line of an exported model's error that says what failed: the TorchScript interpreter's
    message opens with 'The following operation failed' and a trace, and ends with the error itself."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith('The following operation failed') and len(lines) > 1:
        return lines[-1]
    return first_line(error)


# ---------------------------------------------------------------------------------------------
# Tracing and writing


def exported(name, export):
    """export() (tracing, saving) with a model that cannot be exported as the one-line refusal. The
    tracer's warnings (a Python value fixed by the trace) are not shown: the check on other shapes decides."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            # The TorchScript-based ONNX exporter (torch 2.11 and 2.13 alike) warns that it is deprecated,
            # and that an LSTM exported at batch 2 may fail at other batch sizes: the check runs it at others.
            warnings.simplefilter('ignore', (DeprecationWarning, UserWarning))
            with torch.no_grad():
                return export()
    except Exception as e:  # noqa: BLE001: whatever the tracer or exporter raises, nothing is written
        raise UserError(f'{name}: the checkpoint\'s model cannot be exported ({first_line(e)}); nothing written') from None


def export_checked(name, path, write, results_of, expected):
    """write(tmp) into a private temporary folder, check what results_of(tmp) computes against the model's
    own (`expected`), then copy the file atomically to `path`: a file that fails its check is never seen
    at `path`, nor is an earlier file there replaced."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = os.path.join(folder, os.path.basename(path) or 'model')
        write(tmp)
        check_results(name, run_exported(name, lambda: results_of(tmp)), expected)
        with open(tmp, 'rb') as checked:
            harness.atomic_write(path, lambda f: shutil.copyfileobj(checked, f))


def zero_state_like(expected):
    """Zeros in the shapes of the state own_computation gives: the state the model starts from."""
    return [torch.zeros_like(t) for t in expected[0][1]]


def export_torchscript(lm, path, expected, chunks):
    """torch.jit.trace_module of InferenceLM's forward and stream."""
    name = f'--torchscript {path}'
    ids = torch.zeros(EXAMPLE_SHAPE, dtype=torch.long)

    def write(tmp):
        module = exported(name, lambda: torch.jit.trace_module(
            lm, {'forward': (ids,), 'stream': (ids, lm.zero_state(ids.size(1)))}, strict=False, check_trace=False))
        exported(name, lambda: torch.jit.save(module, tmp))

    export_checked(name, path, write, lambda tmp: torchscript_results(tmp, chunks, zero_state_like(expected)),
                   expected)


def export_onnx(lm, path, expected, chunks, streaming):
    """torch.onnx.export of the zero-state forward (streaming: OnnxStream); seq_len and batch dynamic."""
    name = f'--onnx-stream {path}' if streaming else f'--onnx {path}'
    ids = torch.zeros(EXAMPLE_SHAPE, dtype=torch.long)
    if streaming:
        module, args = OnnxStream(lm), (ids, *lm.zero_state(ids.size(1)))
        input_names, output_names = ['ids', *state_names(lm, 'state_in_')], ['logprobs', *state_names(lm, 'state_out_')]
    else:
        module, args, input_names, output_names = lm, (ids,), ['ids'], ['logprobs']
    dynamic_axes = {tensor: {0: 'seq_len', 1: 'batch'} if tensor in ('ids', 'logprobs') else {1: 'batch'}
                    for tensor in input_names + output_names}

    def write(tmp):
        exported(name, lambda: torch.onnx.export(module, args, tmp, input_names=input_names, output_names=output_names,
                                                 dynamic_axes=dynamic_axes, dynamo=False))

    export_checked(name, path, write, lambda tmp: onnx_results(tmp, chunks, zero_state_like(expected), streaming),
                   expected)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a trained AWD-LSTM model to TorchScript and/or ONNX')
    parser.add_argument('--checkpoint', type=str, required=True, help='model checkpoint (of main.py or finetune.py)')
    parser.add_argument('--torchscript', type=str, default=None, metavar='OUT',
                        help='TorchScript file to write (forward: zero state; method stream: with state)')
    parser.add_argument('--onnx', type=str, default=None, metavar='OUT', help='ONNX file to write (zero state)')
    parser.add_argument('--onnx-stream', type=str, default=None, metavar='OUT',
                        help='ONNX file of the streaming entry (takes and returns the hidden state)')
    parser.add_argument('--pretrained', type=str, default=None, metavar='DIR',
                        help='model directory to write (config.json, model.safetensors, vocab.txt, README.md), '
                             'read by every script and lm.py as a checkpoint')
    args = parser.parse_args(argv)
    if not args.checkpoint:
        raise UserError('--checkpoint: no checkpoint given')
    outputs = [(flag, path) for flag, path in
               (('--torchscript', args.torchscript), ('--onnx', args.onnx), ('--onnx-stream', args.onnx_stream)) if path]
    if not outputs and not args.pretrained:
        raise UserError('nothing to export: give --torchscript OUT, --onnx OUT, --onnx-stream OUT and/or '
                        '--pretrained DIR')
    if len({os.path.realpath(p) for _, p in outputs}) < len(outputs):
        raise UserError('the outputs must be different files')
    return args, outputs


def require_onnx():
    """ONNX export needs onnx to write the file and onnxruntime to check it before it is kept."""
    missing = []
    for module in ('onnx', 'onnxruntime'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f'ONNX export needs the {" and ".join(missing)} package{"s" if len(missing) > 1 else ""}: '
                        f'pip install -r {ONNX_REQUIREMENTS}')


def main(argv=None):
    args, outputs = parse_args(argv)
    for flag, path in outputs:  # before any work
        harness.check_output(path, flag, inputs=[args.checkpoint], replaced=True)
    if args.onnx or args.onnx_stream:
        require_onnx()
    ckpt = harness.load_checkpoint(args.checkpoint, map_location='cpu', resume_state_ok=False)
    if args.pretrained:
        harness.export_model_dir(args.pretrained, ckpt, args.checkpoint)
        print(f'| model directory written to {args.pretrained}')
        if not outputs:
            return 0
    model, criterion = ckpt['model'], ckpt['criterion']
    chunks = sample_chunks(len(ckpt['idx2word']))
    expected = own_computation(model, criterion, chunks)
    lm = InferenceLM(model, criterion)
    if args.torchscript:
        export_torchscript(lm, args.torchscript, expected, chunks)
        print(f'| TorchScript written to {args.torchscript}')
    if args.onnx:
        export_onnx(lm, args.onnx, expected, chunks, streaming=False)
        print(f'| ONNX (zero state) written to {args.onnx}')
    if args.onnx_stream:
        export_onnx(lm, args.onnx_stream, expected, chunks, streaming=True)
        print(f'| ONNX (streaming) written to {args.onnx_stream}')
    return 0


if __name__ == '__main__':
    harness.run_script(main)
