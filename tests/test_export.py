import os
import subprocess
import sys
import types
import warnings

import pytest

from conftest import patch_everywhere
import torch
import torch.nn as nn

from harness import checkpoint
import errors
import export
import model as model_module
import score
from mos import MixtureOfSoftmaxesLoss
from pipeline_helpers import random_checkpoint

WORDS = ['<eos>', '<unk>', 'the', 'cat', 'a', 'dog', 'sees', 'likes', '.', 'fish', 'tree', 'bread']
EMSIZE = 8  # random_checkpoint's and mos_checkpoint's


def mos_checkpoint(path, nhidlast):
    """A checkpoint of an untrained tiny AWD-LSTM-MoS (3 experts, weight drop on)."""
    torch.manual_seed(0)
    model = model_module.RNNModel('LSTM', len(WORDS), EMSIZE, 12, 2, wdrop=0.3, tie_weights=True,
                                  n_experts=3, nhidlast=nhidlast)
    checkpoint.save_checkpoint(path, model, MixtureOfSoftmaxesLoss(EMSIZE, 3), None, {'bptt': 6}, WORDS)
    return path


# Every kind of model the scripts train. WikiText-103's vocabulary (> 75,000 words) is what turns the
# split softmax on; here a tiny vocabulary gets explicit cut points instead: two tails, and cut points
# beyond the vocabulary (an empty tail, its tombstone masked).
KINDS = {
    'LSTM': lambda path: random_checkpoint(path, WORDS),
    'LSTM, split softmax': lambda path: random_checkpoint(path, WORDS, (4, 8)),
    'LSTM, split softmax with an empty tail': lambda path: random_checkpoint(path, WORDS, (5, 100)),
    'LSTM, release 2017': lambda path: random_checkpoint(path, WORDS, release=2017),
    'GRU': lambda path: random_checkpoint(path, WORDS, rnn_type='GRU'),
    'QRNN': lambda path: random_checkpoint(path, WORDS, rnn_type='QRNN'),
    'MoS, nhidlast == emsize': lambda path: mos_checkpoint(path, EMSIZE),
    'MoS, nhidlast != emsize': lambda path: mos_checkpoint(path, 10),
}


def own(model, criterion, chunks):
    """The model's own log-probabilities (seq_len, batch, vocabulary) for consecutive chunks of one
    batch of texts, and the state after the last (flat: per layer h[, c], then a QRNN's remembered
    input): the whole text in one call from a zero state, as the scripts compute it, cut into the
    chunks' lengths (so the exported stream entry's carried state is checked too)."""
    model.eval()
    model.reset()
    ids = torch.cat(chunks)
    with torch.no_grad():
        output, hidden = model(ids, model.init_hidden(ids.size(1)))
        logprobs = criterion.logprob(model.decoder.weight, model.decoder.bias, output).view(*ids.shape, -1)
    state = [t for layer in hidden for t in (layer if isinstance(layer, tuple) else (layer,))]
    if model.rnn_type == 'QRNN':
        state.append(model.rnns[0].prevX)
    model.reset()
    return list(logprobs.split([len(chunk) for chunk in chunks])), state


def own_of(save, chunks):
    ckpt = checkpoint.load_checkpoint(save, resume_state_ok=False)
    return own(ckpt['model'], ckpt['criterion'], chunks)


def chunks_of(batch=4):
    """Shapes other than the tracing example's (5, 2) and the check's samples (7, 3), (1, 3)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(len(WORDS), (9, batch), generator=generator),
            torch.randint(len(WORDS), (3, batch), generator=generator)]


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('kind', KINDS)
def test_torchscript_computes_what_the_model_computes(tmp_path, kind):
    save = KINDS[kind](str(tmp_path / 'm.pt'))
    out = str(tmp_path / 'm.ts')
    assert export.main(['--checkpoint', save, '--torchscript', out]) == 0
    chunks = chunks_of()
    expected, final = own_of(save, chunks)
    # The check's reference (export.own_computation) is this one.
    ckpt = checkpoint.load_checkpoint(save, resume_state_ok=False)
    checked = export.own_computation(ckpt['model'], ckpt['criterion'], chunks)
    assert all(close(a, b) for (a, _), b in zip(checked, expected))
    assert all(close(a, b) for a, b in zip(checked[-1][1], final)) and len(checked[-1][1]) == len(final)
    lm = torch.jit.load(out)
    with torch.no_grad():
        assert close(lm(chunks[0]), expected[0])
        assert torch.allclose(lm(chunks[0]).exp().sum(-1), torch.ones(chunks[0].shape), atol=1e-5)
        # The stream entry from zeros, its state carried into the next chunk.
        state = [torch.zeros_like(t) for t in final]
        for ids, want in zip(chunks, expected):
            got, state = lm.stream(ids, state)
            assert close(got, want)
    assert len(state) == len(final) and all(close(a, b) for a, b in zip(state, final))


@pytest.mark.slow
@pytest.mark.parametrize('kind', KINDS)
def test_onnx_computes_what_the_model_computes(tmp_path, kind):
    ort = pytest.importorskip('onnxruntime', reason='ONNX export tests need requirements-export.txt')
    pytest.importorskip('onnx', reason='ONNX export tests need requirements-export.txt')
    save = KINDS[kind](str(tmp_path / 'm.pt'))
    plain, stream = str(tmp_path / 'm.onnx'), str(tmp_path / 'm.stream.onnx')
    assert export.main(['--checkpoint', save, '--onnx', plain, '--onnx-stream', stream]) == 0
    for batch in (1, 4):
        chunks = chunks_of(batch)
        expected, final = own_of(save, chunks)
        got = ort.InferenceSession(plain).run(None, {'ids': chunks[0].numpy()})[0]
        assert close(torch.from_numpy(got), expected[0])
        session = ort.InferenceSession(stream)
        names = [i.name for i in session.get_inputs()[1:]]
        assert [o.name for o in session.get_outputs()] == ['logprobs'] + [n.replace('_in_', '_out_') for n in names]
        state = [torch.zeros_like(t).numpy() for t in final]
        for ids, want in zip(chunks, expected):
            logprobs, *state = session.run(None, {'ids': ids.numpy(), **dict(zip(names, state))})
            assert close(torch.from_numpy(logprobs), want)
        assert all(close(torch.from_numpy(a), b) for a, b in zip(state, final))


@pytest.mark.slow
def test_torchscript_loads_without_this_repository(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS, (5,))
    out = str(tmp_path / 'm.ts')
    assert export.main(['--checkpoint', save, '--torchscript', out]) == 0
    ids = chunks_of()[0]
    torch.save(ids, tmp_path / 'ids.pt')
    # A fresh interpreter, in a folder without this repository's code, that imports only torch.
    code = ('import sys, torch; m = torch.jit.load(sys.argv[1]); ids = torch.load(sys.argv[2]); '
            'torch.save(m.stream(ids, [torch.zeros(1, 4, n) for n in (12, 12, 8, 8)]), sys.argv[3])')
    subprocess.run([sys.executable, '-c', code, out, str(tmp_path / 'ids.pt'), str(tmp_path / 'r.pt')],
                   cwd=tmp_path, check=True, env={**os.environ, 'PYTHONPATH': ''})
    logprobs, state = torch.load(tmp_path / 'r.pt')
    expected, final = own_of(save, [ids])
    assert close(logprobs, expected[0]) and all(close(a, b) for a, b in zip(state, final))


# ---------------------------------------------------------------------------------------------
# An edited model is exported as edited, or refused: never silently the model as it was


def capture_loaded(monkeypatch, edit=None):
    """The checkpoint export.py loads (a list filled on loading), `edit`ed first when given."""
    loaded = []
    load = checkpoint.load_checkpoint

    def load_and_keep(*args, **kwargs):
        ckpt = load(*args, **kwargs)
        if edit:
            edit(ckpt['model'])
        loaded.append(ckpt)
        return ckpt
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', load_and_keep)
    return loaded


def edit_forward(monkeypatch, change):
    """RNNModel.forward with change(model, input, output) applied to its output."""
    forward = model_module.RNNModel.forward

    def edited(self, input, hidden, return_h=False):
        result = forward(self, input, hidden, return_h)
        return (change(self, input, result[0]), *result[1:])
    monkeypatch.setattr(model_module.RNNModel, 'forward', edited)


def exported_formats():
    formats = [('--torchscript', 'm.ts')]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        formats.append(('--onnx', 'm.onnx'))
    except ImportError:
        pass
    return formats


def run_exported(path, ids):
    if path.endswith('.ts'):
        with torch.no_grad():
            return torch.jit.load(path)(ids)
    import onnxruntime
    return torch.from_numpy(onnxruntime.InferenceSession(path).run(None, {'ids': ids.numpy()})[0])


@pytest.mark.parametrize('flag,name', exported_formats())
@pytest.mark.parametrize('edit', ['output scaled by 0.5', 'an added Linear'])
def test_the_export_follows_an_edited_forward(tmp_path, monkeypatch, flag, name, edit):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    unedited = own_of(save, chunks_of())[0]
    if edit == 'output scaled by 0.5':
        loaded = capture_loaded(monkeypatch)
        edit_forward(monkeypatch, lambda self, input, output: output * 0.5)
    else:
        def add_projection(model):
            torch.manual_seed(1)
            model.projection = nn.Linear(EMSIZE, EMSIZE)
        loaded = capture_loaded(monkeypatch, add_projection)
        edit_forward(monkeypatch, lambda self, input, output: self.projection(output))
    out = str(tmp_path / name)
    assert export.main(['--checkpoint', save, flag, out]) == 0
    chunks = chunks_of()
    expected = own(loaded[0]['model'], loaded[0]['criterion'], chunks)[0]
    assert not close(expected[0], unedited[0])  # the edit changes what the model computes
    assert close(run_exported(out, chunks[0]), expected[0])


def refused(argv, out, match):
    """export.main(argv) refuses with one line matching `match`; the file `out` keeps what it held."""
    with open(out, 'w') as f:
        f.write('an earlier export')
    with pytest.raises(errors.UserError, match=match) as error:
        export.main(argv)
    assert '\n' not in str(error.value) and str(error.value).endswith('nothing written')
    with open(out) as f:
        assert f.read() == 'an earlier export'
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.endswith('.tmp')]
    return str(error.value)


@pytest.mark.parametrize('flag,name', exported_formats())
def test_a_python_number_the_trace_would_fix_is_refused(tmp_path, monkeypatch, flag, name):
    # float(...) of the sequence length: the trace keeps the example's 5, the model divides by each call's own.
    edit_forward(monkeypatch, lambda self, input, output: output / float(input.size(0)))
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    out = str(tmp_path / name)
    message = refused(['--checkpoint', save, flag, out], out, r'does not compute what the checkpoint\'s model '
                      r'computes \(max \|diff\| [0-9.e+-]+ nats in the log-probabilities\)')
    assert message.startswith(f'{flag} {out}: ')


@pytest.mark.parametrize('flag,name', exported_formats())
def test_a_python_loop_over_time_is_refused(tmp_path, monkeypatch, flag, name):
    # A new cell written as a Python loop over the steps: the trace unrolls the example's 5 steps.
    def running_average(self, input, output):
        output = output.view(input.size(0), input.size(1), -1)
        steps, running = [], torch.zeros_like(output[0])
        for t in range(input.size(0)):
            running = 0.5 * running + output[t]
            steps.append(running)
        return torch.stack(steps).view(-1, output.size(2))
    edit_forward(monkeypatch, running_average)
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    out = str(tmp_path / name)
    refused(['--checkpoint', save, flag, out], out, 'fails on a batch of another shape than the tracing example')


class Doubled(torch.autograd.Function):
    """A Python autograd Function: TorchScript cannot save a call to one."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_a_model_that_cannot_be_saved_as_torchscript_is_refused(tmp_path, monkeypatch):
    edit_forward(monkeypatch, lambda self, input, output: Doubled.apply(output))
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    out = str(tmp_path / 'm.ts')
    refused(['--checkpoint', save, '--torchscript', out], out,
            r"^--torchscript .*m\.ts: the checkpoint's model cannot be exported \(Could not export Python function")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    cases = [(['--checkpoint', save], 'nothing to export'),
             (['--checkpoint', save, '--torchscript', save], 'would overwrite'),
             (['--checkpoint', save, '--torchscript', str(tmp_path / 'no' / 'm.ts')], 'folder does not exist'),
             (['--checkpoint', str(tmp_path / 'none.pt'), '--torchscript', str(tmp_path / 'm.ts')], 'not found')]
    for argv, message in cases:
        with pytest.raises(errors.UserError, match=message):
            export.main(argv)
    assert not (tmp_path / 'm.ts').exists()


def test_an_empty_checkpoint_flag_or_a_folder_is_named_as_such(tmp_path, monkeypatch):
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', lambda *a, **k: pytest.fail('no work before the refusal'))
    with pytest.raises(errors.UserError, match=r'^--checkpoint: no checkpoint given$'):
        export.main(['--checkpoint', '', '--torchscript', str(tmp_path / 'm.ts')])
    monkeypatch.undo()
    with pytest.raises(errors.UserError, match=f'^{tmp_path}: a folder without config.json: not a model directory'):
        export.main(['--checkpoint', str(tmp_path), '--torchscript', str(tmp_path / 'm.ts')])
    assert not (tmp_path / 'm.ts').exists()


@pytest.mark.slow
def test_a_stream_as_the_output_is_named_as_such(tmp_path):
    # /dev/stdout on a pipe resolves to /proc/PID/fd/pipe:[N]: not a file in a read-only folder.
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    result = subprocess.run([sys.executable, export.__file__, '--checkpoint', save, '--torchscript', '/dev/stdout'],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr == 'error: /dev/stdout (--torchscript): is a FIFO, not a regular file; ' \
                            'it would be replaced by this file, so write elsewhere\n'


def test_a_pipe_as_the_output_is_named_as_such(tmp_path):
    # In-process, what /dev/stdout is when the output is piped: a link to the descriptor of a pipe.
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    read, write = os.pipe()
    try:
        pipe = f'/proc/self/fd/{write}'
        with pytest.raises(errors.UserError, match=f'^{pipe} \\(--torchscript\\): is a FIFO, not a regular file'):
            export.main(['--checkpoint', save, '--torchscript', pipe])
    finally:
        os.close(read)
        os.close(write)


def test_an_exported_model_given_as_a_checkpoint_is_named_as_such(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    ts = str(tmp_path / 'm.ts')
    assert export.main(['--checkpoint', save, '--torchscript', ts]) == 0
    message = f'^{ts}: an exported TorchScript model \\(export.py\\), not a checkpoint'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # torch.load's "looks like a TorchScript archive" is not shown
        with pytest.raises(errors.UserError, match=message):
            checkpoint.load_checkpoint(ts)
        text = tmp_path / 'text.txt'
        text.write_text('the cat sees a dog .\n')
        with pytest.raises(errors.UserError, match=message):
            score.main(['--checkpoint', ts, '--text', str(text)])


def test_the_check_names_the_difference_it_found():
    logprobs = torch.log_softmax(torch.randn(2, 3, 5), -1)
    state = [torch.zeros(1, 3, 4), torch.ones(1, 3, 4)]
    expected = [(logprobs, state)]
    export.check_results('--onnx m.onnx', {'stream': ([logprobs + 5e-5], [state[0], state[1] - 5e-5])}, expected)
    cases = [({'forward': ([logprobs + 0.25], None)}, r'max \|diff\| 0.25 nats in the log-probabilities\)'),
             ({'stream': ([logprobs], [state[0], state[1] * 3])}, r'max \|diff\| 2 in the state of its stream entry\)'),
             ({'stream': ([logprobs], state[:1])}, r'the state of its stream entry: 1 tensors where the model gives 2\)'),
             ({'forward': ([logprobs[:1]], None)}, r'the log-probabilities: shape \(1, 3, 5\) where the model '
                                                   r'gives \(2, 3, 5\)\)')]
    for results, message in cases:
        with pytest.raises(errors.UserError, match=r"^--onnx m.onnx: the exported model does not compute what the "
                                                   r"checkpoint's model computes \(" + r'.*' + message + '; nothing written$'):
            export.check_results('--onnx m.onnx', results, expected)


def test_onnx_export_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    # onnxruntime checks the file before it is kept: without it nothing is exported, and it says so first.
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` raises ImportError
    monkeypatch.setitem(sys.modules, 'onnx', types.ModuleType('onnx'))  # onnx there, installed or not
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', lambda *a, **k: pytest.fail('no work before the refusal'))
    with pytest.raises(errors.UserError, match=r'^ONNX export needs the onnxruntime package: '
                                               r'pip install -r requirements-export.txt$'):
        export.main(['--checkpoint', save, '--onnx-stream', str(tmp_path / 'm.onnx')])
    assert not (tmp_path / 'm.onnx').exists()
