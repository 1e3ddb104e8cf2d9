"""Scoring text with a trained model: the loss of one stream (as main.py evaluates test) and the
log-probability of every token of lines scored each on its own (for n-best or lattice rescoring and
per-token surprisal).

Pure computation on a model, its criterion and word ids, as training.py is: no files, no printing.
"""
import torch

from utils import batchify
from training import evaluate

# Rows of log-probabilities computed at once: bounds the (rows, vocabulary) matrix to 2**25 floats
# (128 MiB), whatever the vocabulary (WikiText-103's 267,735 words included) and however many
# distributions a row makes (logprob_rows).
LOGPROB_FLOATS = 2 ** 25


def stream_loss(model, criterion, ids, bptt, device):
    """Mean loss per token of `ids` read as one stream (batch 1, hidden state carried over bptt-long
    chunks): training.evaluate itself, so that a corpus's test.txt gives main.py's test loss."""
    return evaluate(model, criterion, batchify(torch.tensor(ids, dtype=torch.long), 1, device=device), 1, bptt)


def line_logprobs(model, criterion, lines, eos, batch_size=64):
    """The natural-log probability of each token of each line (a list of id lists, each ending in
    `eos`), every line from a zero state and conditioned on `eos` as its start; a list of float64
    tensors in the order of `lines`.

    Lines are batched by length (sorted, padded at the end, padded positions left out): the recurrence
    is causal, so the padding after a line never reaches its own tokens.
    """
    device = model.encoder.weight.device
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    result = [None] * len(lines)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            inputs, targets = padded_batch([lines[i] for i in group], eos)
            model.reset()
            output, _ = model(inputs.to(device), model.init_hidden(len(group)))
            chosen = target_logprobs(model, criterion, output, targets.to(device).view(-1)).view(targets.shape)
            for column, i in enumerate(group):
                result[i] = chosen[:len(lines[i]), column].double().cpu()
    return result


def padded_batch(lines, eos):
    """(inputs, targets), each (longest line, lines) of ids: line b's inputs are `eos` then its tokens
    but the last, its targets its tokens; positions past a line's end hold `eos` and are ignored."""
    length = max(len(line) for line in lines)
    inputs = torch.full((length, len(lines)), eos, dtype=torch.long)
    targets = torch.full((length, len(lines)), eos, dtype=torch.long)
    for b, line in enumerate(lines):
        line = torch.tensor(line, dtype=torch.long)
        inputs[1:len(line), b] = line[:-1]
        targets[:len(line), b] = line
    return inputs, targets


def target_logprobs(model, criterion, output, targets):
    """log p(target) for each row of `output` (rows, features): the criterion's full distribution
    (head and tails of a split softmax), computed a bounded number of rows at a time."""
    weight, bias = model.decoder.weight, model.decoder.bias
    rows = logprob_rows(criterion, weight.size(0))
    parts = []
    for start in range(0, output.size(0), rows):
        logprob = criterion.logprob(weight, bias, output[start:start + rows])
        parts.append(logprob.gather(1, targets[start:start + rows].unsqueeze(1)).squeeze(1))
    return torch.cat(parts)


def logprob_rows(criterion, vocabulary):
    """How many rows' log-probabilities fit in LOGPROB_FLOATS: a row takes `vocabulary` floats, times
    n_experts for a Mixture of Softmaxes (Yang et al. 2018), whose experts' distributions over the
    vocabulary are all computed before they are mixed."""
    return max(1, LOGPROB_FLOATS // (vocabulary * getattr(criterion, 'n_experts', 1)))
