"""Split cross-entropy: a two-level softmax for large vocabularies.

The idea is the adaptive softmax of Grave et al. 2016, "Efficient softmax
approximation for GPUs" (arXiv:1609.04309): word ids are sorted by frequency,
so a small *head* (the frequent words) takes most of the probability mass and
the long *tails* are rarely needed. The head softmax runs over the head words
plus one "tombstone" entry per tail; a tail word gets

    log p(word) = log p_head(tombstone of its tail) + log p(word | its tail)

so each tail softmax is only computed for the rows whose target lies in it.
Unlike Grave et al., the tails keep full-size vectors: they reuse rows of the
(tied) decoder weight, and only the tombstones add parameters.

With no splits the loss is the ordinary full-softmax cross-entropy, reduced as the release it follows
reduced it: the 2018 code's SplitCrossEntropyLoss summed -gather(log_softmax) and divided by N, its first
release called nn.CrossEntropyLoss (a mean in another summation order). The two differ in the last bits,
enough to move a printed figure across a rounding boundary now and then.
AWD-LSTM (Merity et al. 2017) turns the split on for WikiText-103-sized
vocabularies only; see `splits_for_vocab`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def splits_for_vocab(ntokens):
    """Cut points the training script uses for a vocabulary of `ntokens` words."""
    if ntokens > 500000:
        return [4200, 35000, 180000]
    if ntokens > 75000:  # WikiText-103 (267,735 words)
        return [2800, 20000, 76000]
    return []


class SplitCrossEntropyLoss(nn.Module):
    """Mean negative log-likelihood under a head + tails softmax.

    `splits` are the inner cut points, increasing word ids: [2800, 20000, 76000]
    gives the head [0, 2800) and the tails [2800, 20000), [20000, 76000),
    [76000, ntokens). The last tail always ends at the vocabulary size
    (weight.size(0)), whatever is passed; a cut at or beyond it (e.g. the
    original's 100,000,000 sentinel) only makes empty tails, whose tombstones
    are masked out so that probabilities still sum to one.

    `release` is the model's (model.py): 2018 sums the negative log-likelihoods and divides by N as the
    2018 code did, 2017 takes nn.CrossEntropyLoss's mean as the first release did (it had no splits).
    It is not stored in the checkpoint's criterion config: the model config holds the release.
    """

    def __init__(self, hidden_size, splits, verbose=False, release=2018):
        super().__init__()
        if release not in (2017, 2018):
            raise ValueError(f'release must be 2017 or 2018, got {release!r}')
        if release == 2017 and splits:
            raise ValueError('the 2017 release has no split softmax')
        self.release = release
        splits = [] if splits is None else [int(s) for s in splits]
        if any(s <= 0 for s in splits) or any(a >= b for a, b in zip(splits, splits[1:])):
            raise ValueError(f"splits must be positive and strictly increasing, got {splits}")
        self.hidden_size = hidden_size
        self.splits = splits
        self.nsplits = len(splits) + 1  # head + tails
        self.verbose = verbose
        if self.nsplits > 1:
            # One tombstone (vector, bias) per tail, appended to the head softmax.
            # Zero init: every tombstone starts at logit 0, close to the head words'
            # small initial logits (decoder init is U(-0.1, 0.1)), so no tail starts favoured.
            self.tail_vectors = nn.Parameter(torch.zeros(self.nsplits - 1, hidden_size))
            self.tail_bias = nn.Parameter(torch.zeros(self.nsplits - 1))
        # Cut points on the module's device, for bucketing targets without a copy
        # from the host each step. Not persistent: state_dict holds only the tombstones.
        self.register_buffer("cut_points", torch.tensor(splits, dtype=torch.long), persistent=False)
        if verbose:
            print(f"SplitCrossEntropyLoss: cut points {splits}; the last tail ends at the vocabulary size")

    def _tails(self, ntokens):
        """(start, end) word ids of each tail, clipped to the vocabulary."""
        bounds = [min(s, ntokens) for s in self.splits] + [ntokens]
        return list(zip(bounds[:-1], bounds[1:]))

    def _head_logprob(self, weight, bias, hiddens):
        """log-softmax over the head words followed by the tombstones, tail k's at column -k (the
        original's order: tail_vectors[-k] and tail_bias[-k] belong to tail k)."""
        ntokens = weight.size(0)
        head_end = min(self.splits[0], ntokens)
        tombstone_bias = self.tail_bias
        empty = [start >= end for start, end in reversed(self._tails(ntokens))]
        if any(empty):
            # An empty tail has no words to hand its mass to: give its tombstone none.
            empty = torch.tensor(empty, device=tombstone_bias.device)
            tombstone_bias = tombstone_bias.masked_fill(empty, float("-inf"))
        head_weight = torch.cat([weight[:head_end], self.tail_vectors])
        head_bias = torch.cat([bias[:head_end], tombstone_bias])
        return F.log_softmax(F.linear(hiddens, head_weight, head_bias), dim=-1), head_end

    def _flatten(self, weight, bias, hiddens):
        if hiddens.size(-1) != self.hidden_size:
            raise ValueError(f"hiddens last dim {hiddens.size(-1)} != hidden_size {self.hidden_size}")
        if bias is None:
            bias = weight.new_zeros(weight.size(0))
        return bias, hiddens.reshape(-1, self.hidden_size)

    def logprob(self, weight, bias, hiddens, splits=None, softmaxed_head_res=None, verbose=False):
        """Full log-probabilities (N, ntokens). `splits`, `softmaxed_head_res` and
        `verbose` are accepted for compatibility with the original signature and ignored."""
        bias, hiddens = self._flatten(weight, bias, hiddens)
        if self.nsplits == 1:
            return F.log_softmax(F.linear(hiddens, weight, bias), dim=-1)

        head_logprob, head_end = self._head_logprob(weight, bias, hiddens)
        columns = [head_logprob[:, :head_end]]
        for k, (start, end) in enumerate(self._tails(weight.size(0)), start=1):
            tombstone = head_logprob[:, -k].unsqueeze(1)
            tail_logits = F.linear(hiddens, weight[start:end], bias[start:end])
            columns.append(tombstone + F.log_softmax(tail_logits, dim=-1))
        return torch.cat(columns, dim=1)

    def forward(self, weight, bias, hiddens, targets, verbose=False):
        """Mean NLL of `targets` (N,) given `hiddens` (N, H) or (seq, batch, H)
        and the decoder's `weight` (ntokens, H) and `bias` (ntokens,)."""
        bias, hiddens = self._flatten(weight, bias, hiddens)
        targets = targets.reshape(-1)
        if self.nsplits == 1:
            logits = F.linear(hiddens, weight, bias)
            if self.release == 2017:
                return F.cross_entropy(logits, targets)
            # The 2018 code's order of operations (its head softmax over the whole vocabulary), so that the
            # loss figures are its own bit for bit, not only the gradients.
            nll = -F.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1))
            return nll.sum() / targets.numel()

        # Rows are grouped by segment (0 for the head, k for tail k), each group in its original order;
        # one head softmax runs over all of them and the losses are summed group by group. This is the
        # original's order of rows and of sums, so that loss and gradients are its own bit for bit.
        segment = torch.bucketize(targets, self.cut_points.to(targets.device), right=True)
        rows = [torch.nonzero(segment == k).squeeze(1) for k in range(self.nsplits)]
        group_hiddens = [hiddens.index_select(0, r) for r in rows]
        head_logprob, head_end = self._head_logprob(
            weight, bias, torch.cat([h for h in group_hiddens if len(h)]))
        bounds = [(0, head_end)] + self._tails(weight.size(0))

        total, offset = None, 0
        for k, (r, h) in enumerate(zip(rows, group_hiddens)):
            if len(r) == 0:
                continue
            group_head = head_logprob[offset:offset + len(r)]
            group_targets = targets.index_select(0, r)
            if k == 0:  # a head word is scored directly
                nll = -group_head.gather(1, group_targets.unsqueeze(1))
            else:  # a tail word: log p(tombstone of tail k) + log p(word | tail k)
                start, end = bounds[k]
                tail_logprob = F.log_softmax(F.linear(h, weight[start:end], bias[start:end]), dim=-1)
                # The original normalised (tombstone + tail log-softmax) once more: mathematically the
                # same tail log-softmax, kept for bitwise parity of the gradients.
                tail_logprob = F.log_softmax(group_head[:, -k].unsqueeze(1) + tail_logprob, dim=-1)
                word = (group_targets - start).unsqueeze(1)
                nll = -(group_head[:, -k] + tail_logprob.gather(1, word).squeeze(1))
            total = nll.sum() if total is None else total + nll.sum()
            offset += len(r)
        return total / targets.numel()
