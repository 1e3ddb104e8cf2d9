"""utils.py: batchify, get_batch and repackage_hidden, with the original's semantics."""
import types

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
