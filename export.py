"""Export a trained model for inference: TorchScript and/or ONNX, or a model directory to share.

    python export.py --checkpoint PTB.pt --torchscript PTB.ts [--onnx PTB.onnx] [--onnx-stream PTB.stream.onnx]
    python export.py --checkpoint PTB.pt --pretrained PTB-model    # config.json, model.safetensors, ...

The exported model is the checkpoint's in evaluation mode: no dropout of any kind, the weight-dropped
hidden-to-hidden matrices as the plain weights they were trained as, the (split) softmax of the
criterion included. Its forward takes word ids int64 (seq_len, batch) and returns log-probabilities
float32 (seq_len, batch, vocabulary) from a zero state; the streaming entry also takes and returns the
hidden state. TorchScript loads with torch.jit.load alone (no code of this repository); ONNX (dynamic
sequence and batch axes) with onnxruntime. LSTM and GRU models (the QRNN's scan is not exported).
Formats and entries: docs/SCORING.md; the model directory (harness/model_dir.py): docs/PYTHON.md.
"""
import argparse
import os
import tempfile
import warnings
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import atomic_io
from harness import checkpoint
from harness import cli
from harness import model_dir
from harness import run_files
from errors import UserError
from weight_drop import WeightDrop

ONNX_REQUIREMENTS = 'requirements-export.txt'


class LSTMLayer(nn.Module):
    """One LSTM layer taking and giving its state as a list [h, c]: every layer of the exported model
    has the signature of GRULayer's."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        output, (h, c) = self.rnn(x, (state[0], state[1]))
        return output, [h, c]


class GRULayer(nn.Module):
    """One GRU layer taking and giving its state as a list [h]."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        output, h = self.rnn(x, state[0])
        return output, [h]


def plain_rnn(layer):
    """A fresh nn.LSTM / nn.GRU holding a layer's trained weights (a WeightDrop's raw weights as the
    plain ones: evaluation uses them undropped, weight_drop.py)."""
    rnn = layer.module if isinstance(layer, WeightDrop) else layer
    plain = type(rnn)(rnn.input_size, rnn.hidden_size, 1)
    state = {name[:-len('_raw')] if name.endswith('_raw') else name: value
             for name, value in rnn.state_dict().items()}
    plain.load_state_dict(state)
    return (LSTMLayer if isinstance(plain, nn.LSTM) else GRULayer)(plain)


class InferenceLM(nn.Module):
    """An RNNModel and its criterion for inference only: embedding, recurrent layers, decoder and the
    full log-softmax (head and tails of a split softmax), with no dropout."""

    # Declared here for TorchScript, which cannot infer the type of an empty list.
    state_sizes: List[int]
    state_parts: int
    head_end: int
    tail_starts: List[int]
    tail_ends: List[int]

    def __init__(self, model, criterion):
        super().__init__()
        if model.rnn_type == 'QRNN':
            raise UserError('export supports LSTM and GRU models; a QRNN model cannot be exported yet')
        self.embedding = nn.Parameter(model.encoder.weight.detach().clone())
        self.layers = nn.ModuleList(plain_rnn(layer) for layer in model.rnns)
        self.state_sizes = [layer.rnn.hidden_size for layer in self.layers]
        self.state_parts = 2 if model.rnn_type == 'LSTM' else 1
        weight, bias = model.decoder.weight.detach(), model.decoder.bias.detach()
        self.decoder_weight = nn.Parameter(weight.clone())
        self.decoder_bias = nn.Parameter(bias.clone())
        ntokens = weight.size(0)
        # The split softmax (splitcross.py): log p(tail word) = log p_head(tail's tombstone) + log p(word | tail).
        self.head_end = min(criterion.splits[0], ntokens) if criterion.splits else ntokens
        tails = criterion._tails(ntokens) if criterion.splits else []
        self.tail_starts = [start for start, _ in tails]
        self.tail_ends = [end for _, end in tails]
        if tails:
            head_weight, head_bias = self._head(criterion, weight, bias)
        else:
            head_weight, head_bias = weight, bias
        self.head_weight = nn.Parameter(head_weight.detach().clone())
        self.head_bias = nn.Parameter(head_bias.detach().clone())
        self.eval()

    @staticmethod
    def _head(criterion, weight, bias):
        """The head softmax's weight and bias: head words, then tail k's tombstone at column -k, an
        empty tail's tombstone at -inf (splitcross.SplitCrossEntropyLoss._head_logprob)."""
        head_end = min(criterion.splits[0], weight.size(0))
        empty = [start >= end for start, end in reversed(criterion._tails(weight.size(0)))]
        tombstone_bias = criterion.tail_bias.detach().masked_fill(torch.tensor(empty), float('-inf'))
        return (torch.cat([weight[:head_end], criterion.tail_vectors.detach()]),
                torch.cat([bias[:head_end], tombstone_bias]))

    def zero_state(self, batch: int) -> List[torch.Tensor]:
        state: List[torch.Tensor] = []
        for size in self.state_sizes:
            for _ in range(self.state_parts):
                state.append(torch.zeros(1, batch, size, dtype=self.embedding.dtype, device=self.embedding.device))
        return state

    def log_softmax(self, hidden):
        head = F.log_softmax(F.linear(hidden, self.head_weight, self.head_bias), dim=-1)
        if len(self.tail_starts) == 0:
            return head
        columns = [head[..., :self.head_end]]
        ntails = len(self.tail_starts)
        for k in range(ntails):
            start, end = self.tail_starts[k], self.tail_ends[k]
            tombstone = head[..., head.size(-1) - 1 - k:head.size(-1) - k]
            tail = F.linear(hidden, self.decoder_weight[start:end], self.decoder_bias[start:end])
            columns.append(tombstone + F.log_softmax(tail, dim=-1))
        return torch.cat(columns, dim=-1)

    @torch.jit.export
    def stream(self, ids, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """ids (seq_len, batch) and the state (per layer h[, c], each (1, batch, size)) -> log-probs
        (seq_len, batch, vocabulary) and the state after the last step."""
        x = F.embedding(ids, self.embedding)
        new_state: List[torch.Tensor] = []
        i = 0
        for layer in self.layers:
            x, layer_state = layer(x, state[i:i + self.state_parts])
            new_state.extend(layer_state)
            i += self.state_parts
        return self.log_softmax(x), new_state

    def forward(self, ids):
        """ids (seq_len, batch) -> log-probs (seq_len, batch, vocabulary), from a zero state."""
        return self.stream(ids, self.zero_state(ids.size(1)))[0]


class OnnxStream(nn.Module):
    """InferenceLM.stream with the state as separate tensors (ONNX takes and gives flat tensors)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids, *state):
        logprobs, new_state = self.lm.stream(ids, list(state))
        return (logprobs, *new_state)


def state_names(lm, prefix):
    parts = ('h', 'c') if lm.state_parts == 2 else ('h',)
    return [f'{prefix}{part}{layer}' for layer in range(len(lm.state_sizes)) for part in parts]


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
    outputs = [(flag, path) for flag, path in
               (('--torchscript', args.torchscript), ('--onnx', args.onnx), ('--onnx-stream', args.onnx_stream)) if path]
    if not outputs and not args.pretrained:
        raise UserError('nothing to export: give --torchscript OUT, --onnx OUT, --onnx-stream OUT and/or '
                        '--pretrained DIR')
    if len({os.path.realpath(p) for _, p in outputs}) < len(outputs):
        raise UserError('the outputs must be different files')
    return args, outputs


def require_onnx():
    missing = []
    for module in ('onnx',):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f'ONNX export needs the {" and ".join(missing)} package: pip install -r {ONNX_REQUIREMENTS}')


def save_torchscript(lm, path):
    scripted = torch.jit.script(lm)
    atomic_io.atomic_write(path, lambda f: torch.jit.save(scripted, f))


def save_onnx(module, args, path, input_names, output_names):
    """torch.onnx.export to a temporary file, then written atomically; seq_len and batch dynamic."""
    dynamic_axes = {name: {0: 'seq_len', 1: 'batch'} if name in ('ids', 'logprobs') else {1: 'batch'}
                    for name in input_names + output_names}
    with tempfile.TemporaryDirectory() as folder:
        tmp = os.path.join(folder, 'model.onnx')
        with warnings.catch_warnings():
            # The TorchScript-based exporter (in torch 2.11 and 2.13 alike) warns that it is deprecated,
            # and that an LSTM exported at batch 2 may fail at other batch sizes: the tests run it at others.
            warnings.simplefilter('ignore', (DeprecationWarning, UserWarning))
            torch.onnx.export(module, args, tmp, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, dynamo=False)
        with open(tmp, 'rb') as f:
            content = f.read()
    atomic_io.atomic_write(path, lambda f: f.write(content))


def main(argv=None):
    args, outputs = parse_args(argv)
    for flag, path in outputs:  # before any work
        run_files.check_output(path, flag, inputs=[args.checkpoint], replaced=True)
    if args.onnx or args.onnx_stream:
        require_onnx()
    ckpt = checkpoint.load_checkpoint(args.checkpoint, map_location='cpu', resume_state_ok=False)
    if args.pretrained:
        model_dir.export(args.pretrained, ckpt, args.checkpoint)
        print(f'| model directory written to {args.pretrained}')
        if not outputs:
            return 0
    lm = InferenceLM(ckpt['model'], ckpt['criterion'])
    ids = torch.zeros(5, 2, dtype=torch.long)  # an example input for the exporter; the axes stay dynamic
    if args.torchscript:
        save_torchscript(lm, args.torchscript)
        print(f'| TorchScript written to {args.torchscript}')
    if args.onnx:
        save_onnx(lm, (ids,), args.onnx, ['ids'], ['logprobs'])
        print(f'| ONNX (zero state) written to {args.onnx}')
    if args.onnx_stream:
        save_onnx(OnnxStream(lm), (ids, *lm.zero_state(ids.size(1))), args.onnx_stream,
                  ['ids', *state_names(lm, 'state_in_')], ['logprobs', *state_names(lm, 'state_out_')])
        print(f'| ONNX (streaming) written to {args.onnx_stream}')
    return 0


if __name__ == '__main__':
    cli.run(main)
