import torch
import torch.nn as nn

from embed_regularize import embedded_dropout


def test_drops_whole_rows_and_rescales():
    torch.manual_seed(0)
    embed = nn.Embedding(40, 6)
    words = torch.arange(40).repeat(3, 1)  # every word three times
    out = embedded_dropout(embed, words, dropout=0.5)
    for w in range(40):
        rows = out[words == w]
        if torch.all(rows == 0):
            continue  # the word type was dropped: every occurrence is zero
        assert torch.allclose(rows, embed.weight[w].expand_as(rows) / 0.5)
    dropped = sum(bool(torch.all(out[words == w] == 0)) for w in range(40))
    assert 8 <= dropped <= 32


def test_no_dropout_is_plain_lookup_and_scale_applies():
    embed = nn.Embedding(10, 3)
    words = torch.tensor([[1, 2], [3, 4]])
    assert torch.equal(embedded_dropout(embed, words, dropout=0), embed(words))
    scale = torch.full((10, 1), 2.0)
    assert torch.allclose(embedded_dropout(embed, words, dropout=0, scale=scale), 2 * embed(words))


def test_gradient_reaches_kept_rows_only():
    torch.manual_seed(1)
    embed = nn.Embedding(20, 4)
    words = torch.arange(20).view(4, 5)
    embedded_dropout(embed, words, dropout=0.5).sum().backward()
    grad_rows = embed.weight.grad.abs().sum(1)
    assert (grad_rows == 0).any() and (grad_rows > 0).any()
