import subprocess
import sys

import pytest
import torch

from harness import checkpoint
import errors
import export
from pipeline_helpers import random_checkpoint

WORDS = ['<eos>', '<unk>', 'the', 'cat', 'a', 'dog', 'sees', 'likes', '.', 'fish', 'tree', 'bread']


def reference(save, ids):
    """The checkpoint's own log-probabilities (seq_len, batch, vocabulary) from a zero state, and its final state."""
    ckpt = checkpoint.load_checkpoint(save, resume_state_ok=False)
    model, criterion = ckpt['model'].eval(), ckpt['criterion']
    with torch.no_grad():
        output, hidden = model(ids, model.init_hidden(ids.size(1)))
        logprobs = criterion.logprob(model.decoder.weight, model.decoder.bias, output)
    return logprobs.view(*ids.shape, -1), hidden


@pytest.mark.parametrize('rnn_type,splits', [('LSTM', ()), ('LSTM', (5,)), ('GRU', ())])
def test_torchscript_equals_checkpoint(tmp_path, rnn_type, splits):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS, splits, rnn_type)
    out = str(tmp_path / 'm.ts')
    assert export.main(['--checkpoint', save, '--torchscript', out]) == 0
    ids = torch.randint(len(WORDS), (7, 3))
    expected, hidden = reference(save, ids)
    # Loaded by a fresh interpreter that never imports this repository's code.
    code = ('import sys, torch; m = torch.jit.load(sys.argv[1]); ids = torch.load(sys.argv[2]); '
            'torch.save([m(ids), m.stream(ids, [torch.zeros(1, 3, n) for n in (12, 12, 8, 8)]), '
            'm.stream(ids[:4], [torch.zeros(1, 3, n) for n in (12, 12, 8, 8)])], sys.argv[3])')
    torch.save(ids, tmp_path / 'ids.pt')
    if rnn_type == 'GRU':
        code = code.replace('(12, 12, 8, 8)', '(12, 8)')
    subprocess.run([sys.executable, '-c', code, out, str(tmp_path / 'ids.pt'), str(tmp_path / 'r.pt')],
                   cwd=tmp_path, check=True)
    logprobs, (streamed, state), (first, first_state) = torch.load(tmp_path / 'r.pt')
    assert logprobs.dtype == torch.float32 and logprobs.shape == (7, 3, len(WORDS))
    assert torch.allclose(logprobs, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(streamed, expected, atol=1e-5, rtol=1e-5)
    last = hidden[-1][0] if rnn_type == 'LSTM' else hidden[-1]
    assert torch.allclose(state[-2 if rnn_type == 'LSTM' else -1], last, atol=1e-6)
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(7, 3), atol=1e-5)
    # The stream entry carries the state: the first 4 steps' state continues into the last 3.
    lm = torch.jit.load(out)
    rest, _ = lm.stream(ids[4:], first_state)
    assert torch.allclose(torch.cat([first, rest]), expected, atol=1e-5, rtol=1e-5)


def test_onnx_equals_checkpoint(tmp_path):
    ort = pytest.importorskip('onnxruntime', reason='ONNX export tests need requirements-export.txt')
    pytest.importorskip('onnx', reason='ONNX export tests need requirements-export.txt')
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS, (5,))
    plain, stream = str(tmp_path / 'm.onnx'), str(tmp_path / 'm.stream.onnx')
    assert export.main(['--checkpoint', save, '--onnx', plain, '--onnx-stream', stream]) == 0
    for length, batch in ((9, 1), (3, 4)):  # axes other than the exporter's example (5, 2)
        ids = torch.randint(len(WORDS), (length, batch))
        expected, hidden = reference(save, ids)
        got = ort.InferenceSession(plain).run(None, {'ids': ids.numpy()})[0]
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)
        session = ort.InferenceSession(stream)
        zeros = {i.name: torch.zeros(1, batch, i.shape[2]).numpy() for i in session.get_inputs()[1:]}
        logprobs, *state = session.run(None, {'ids': ids.numpy(), **zeros})
        assert torch.allclose(torch.from_numpy(logprobs), expected, atol=1e-5, rtol=1e-5)
        assert torch.allclose(torch.from_numpy(state[-2]), hidden[-1][0], atol=1e-6)


def test_bad_input(tmp_path):
    save = random_checkpoint(str(tmp_path / 'm.pt'), WORDS)
    qrnn = random_checkpoint(str(tmp_path / 'q.pt'), WORDS, rnn_type='QRNN')
    cases = [(['--checkpoint', save], 'nothing to export'),
             (['--checkpoint', save, '--torchscript', save], 'would overwrite'),
             (['--checkpoint', save, '--torchscript', str(tmp_path / 'no' / 'm.ts')], 'folder does not exist'),
             (['--checkpoint', str(tmp_path / 'none.pt'), '--torchscript', str(tmp_path / 'm.ts')], 'not found'),
             (['--checkpoint', qrnn, '--torchscript', str(tmp_path / 'm.ts')], 'LSTM and GRU')]
    for argv, message in cases:
        with pytest.raises(errors.UserError, match=message):
            export.main(argv)
    assert not (tmp_path / 'm.ts').exists()
