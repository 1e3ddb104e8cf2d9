"""Embedding dropout: drop whole word types from the embedding matrix (AWD-LSTM section 4.3).

Dropping a row of the embedding matrix removes every occurrence of that word from the batch, which
is the "dropout on the word embedding matrix" of Gal & Ghahramani (2016).
"""
import torch.nn.functional as F


def embedded_dropout(embed, words, dropout=0.1, scale=None):
    """Look up `words` in `embed` (an nn.Embedding) after zeroing each row with probability `dropout`.

    Kept rows are scaled by 1 / (1 - dropout). `scale` (optional, a tensor broadcastable to the
    weight) multiplies the matrix before the lookup, as in the original signature.
    """
    weight = embed.weight
    if dropout:
        keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - dropout) / (1 - dropout)
        weight = weight * keep
    if scale is not None:
        weight = scale.expand_as(weight) * weight
    return F.embedding(words, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse)
