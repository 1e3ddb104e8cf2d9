import os
import types

import numpy as np
import pytest
import torch

import utils


def test_batchify_and_get_batch():
    data = torch.arange(23)
    batched = utils.batchify(data, 4)
    assert batched.shape == (5, 4)
    assert batched[:, 1].tolist() == [5, 6, 7, 8, 9]  # each column is a contiguous stretch
    x, y = utils.get_batch(batched, 0, types.SimpleNamespace(bptt=3))
    assert torch.equal(x, batched[0:3]) and torch.equal(y, batched[1:4].reshape(-1))
    x, y = utils.get_batch(batched, 3, seq_len=10)  # clipped at the end
    assert x.shape == (1, 4) and torch.equal(y, batched[4])
    assert utils.get_batch(batched, 0, 2)[0].shape == (2, 4)


def test_repackage_hidden_detaches_nested():
    h = (torch.ones(2, requires_grad=True) * 2, [torch.ones(1, requires_grad=True) * 3])
    out = utils.repackage_hidden(h)
    assert not out[0].requires_grad and not out[1][0].requires_grad


def test_nonmono_rule():
    # Switch when the loss is worse than the best one seen more than `nonmono` evaluations ago.
    assert not utils.nonmono_triggered([5, 4, 3], 3.5, nonmono=5)  # too little history
    history = [5.0, 4.0, 3.0, 3.1, 3.2, 3.3, 3.4]
    assert utils.nonmono_triggered(history, 4.5, nonmono=5)  # worse than min(history[:2]) = 4.0
    assert not utils.nonmono_triggered(history, 3.5, nonmono=5)  # worse than recent ones only
    assert utils.nonmono_triggered([5.0, 4.0, 3.0], 3.01, nonmono=2) is False  # min([5]) = 5
    assert utils.nonmono_triggered([5.0, 2.0, 3.0], 3.01, nonmono=1)  # min([5, 2]) = 2
    assert utils.nonmono_triggered([2.0], 2.5, nonmono=0)  # 0: compare with the whole history


def test_sample_seq_len_distribution():
    rng = np.random.RandomState(0)
    lens = np.array([utils.sample_seq_len(rng, 70) for _ in range(4000)])
    assert lens.min() >= 5
    # About 5% of sequences use bptt / 2 (binomial sd 0.0034 over 4000 draws: bounds at ~4 sd).
    halved = lens < 52
    assert 0.036 < halved.mean() < 0.064
    # The others are int(N(70, 5)): mean 69.5 (int() truncates), sd 5 (N(70, 10) would give 10).
    full = lens[~halved]
    assert 69.2 < full.mean() < 69.8 and 4.7 < full.std() < 5.3
    capped = [utils.sample_seq_len(rng, 70, cap=80) for _ in range(2000)]
    assert max(capped) <= 80


def test_averaged_weights_swap_and_restore():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = utils.make_optimizer('asgd', [p], lr=1.0, wdecay=0)
    for step in range(6):  # gradient -1: the iterates are 1, 2, ..., 6
        p.grad = -torch.ones(3)
        opt.step()
    # torch.optim.ASGD (like the 2017 one) averages the iterates from the second step on: mean(2..6) = 4.
    with utils.averaged_weights(opt, [p]):
        assert torch.allclose(p, torch.full((3,), 4.0))
    assert torch.allclose(p, torch.full((3,), 6.0))


def test_atomic_save_survives_a_crash_midway(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    utils.atomic_torch_save({'x': torch.ones(2)}, path)

    def half_write(obj, f):
        f.write(b'PK\x03\x04 half a file')
        raise OSError('disk full (injected)')
    monkeypatch.setattr(torch, 'save', half_write)
    with pytest.raises(utils.UserError, match='ckpt.pt: could not be written .*injected'):
        utils.atomic_torch_save({'x': torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['x'], torch.ones(2))
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left behind


class Payload:
    """Unpickling this would create a file: a checkpoint must never be able to run code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pt')
    torch.save({'format': utils.CHECKPOINT_FORMAT, 'model': Payload(str(marker))}, path)
    with pytest.raises(utils.UserError, match='refused'):
        utils.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('content,match', [(None, 'not found'), (b'', 'not a readable'),
                                           (b'hello world', 'not a readable')])
def test_bad_checkpoint_files(tmp_path, content, match):
    path = tmp_path / 'x.pt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(utils.UserError, match=match):
        utils.load_checkpoint(str(path))


def test_truncated_and_foreign_checkpoints(tmp_path):
    path = tmp_path / 'a.pt'
    torch.save({'some': torch.ones(100)}, str(path))
    with pytest.raises(utils.UserError, match='not a checkpoint written by this code'):
        utils.load_checkpoint(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(utils.UserError, match='not a readable'):
        utils.load_checkpoint(str(path))


@pytest.mark.parametrize('flags,match', [
    (['--dropout', '1.0'], '--dropout'), (['--dropouti', '-0.1'], '--dropouti'), (['--wdrop', '1'], '--wdrop'),
    (['--nhid', '0'], '--nhid'), (['--emsize', '-3'], '--emsize'), (['--bptt', '0'], '--bptt'),
    (['--batch_size', '0'], '--batch_size'), (['--nlayers', '0'], '--nlayers'), (['--lr', '0'], '--lr'),
    (['--model', 'TRANSFORMER'], '--model'), (['--optimizer', 'rmsprop'], '--optimizer'),
    (['--when', '0'], '--when'), (['--when', '5', '-2'], '--when'), (['--epochs', '0'], '--epochs'),
])
def test_impossible_flags(flags, match):
    import main
    with pytest.raises(utils.UserError, match=match):
        main.parse_args(flags)


def test_when_beyond_epochs_is_legal():
    import main
    assert main.parse_args(['--when', '300', '400', '--epochs', '1']).when == [300, 400]
