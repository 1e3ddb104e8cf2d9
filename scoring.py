"""Scoring text with a trained model, and sampling from it: the loss of one stream (as main.py
evaluates test), the log-probability of every token of lines scored each on its own (for n-best or
lattice rescoring and per-token surprisal), the last layer's outputs, and drawing words (the one
implementation generate.py and lm.LanguageModel.generate share, so that the same seed and settings
give the same words from either).

Pure computation on a model, its criterion and word ids, as training.py is: no files, no printing, no
seeding (the caller seeds torch first: generate.py and lm.py with harness.set_seed).
"""
import torch

from errors import UserError
from splitcross import SplitCrossEntropyLoss

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


def last_layer_outputs(model, ids, bptt, device):
    """The last recurrent layer's output after each token of `ids` read as one stream (batch 1, hidden
    state carried over bptt-long chunks, evaluation mode: no dropout), as a float tensor (tokens,
    features) on the CPU. For AWD-LSTM-MoS it is the layer's own output, before the mixture."""
    source = torch.tensor(ids, dtype=torch.long, device=device).view(-1, 1)
    model.eval()
    model.reset()
    hidden = model.init_hidden(1)
    rows = []
    with torch.no_grad():
        for start in range(0, source.size(0), bptt):
            _, hidden, raw_outputs, _ = model(source[start:start + bptt], hidden, return_h=True)
            rows.append(raw_outputs[-1].squeeze(1).float().cpu())
    return torch.cat(rows)


# ---------------------------------------------------------------------------------------------
# Sampling

def check_sampling(words, temperature, top_k, top_p):
    """The limits of the sampling settings (generate.py's flags, lm.LanguageModel.generate's arguments)."""
    if words < 1:
        raise UserError(f'words (--words) must be positive, got {words}')
    if not temperature >= 1e-3:
        raise UserError(f'temperature (--temperature) has to be greater or equal 1e-3, got {temperature}')
    if top_k is not None and top_k < 1:
        raise UserError(f'top_k (--top-k) must be at least 1, got {top_k}')
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f'top_p (--top-p) must be in (0, 1], got {top_p}')


def sample_ids(model, criterion, ntokens, prompt, count, temperature=1.0, top_k=None, top_p=None):
    """Yields `count` word ids, each drawn from the model's distribution (tempered, cut to `top_k` /
    the nucleus of `top_p` when given) and fed back in. The state starts at zero and first reads the
    word ids of `prompt` (None or empty: the start word is a random one, the original's first draw).

    The start word is drawn even after a prompt, so that the random draws after it are those of the
    same seed without one (the original drew it before anything else)."""
    device = model.encoder.weight.device
    model.eval()
    model.reset()
    hidden = model.init_hidden(1)
    word = original_start_word(ntokens).to(device)
    output = None
    if prompt:
        with torch.no_grad():
            output, hidden = feed_prompt(model, prompt, hidden, device)
    for _ in range(count):
        # Grad mode is switched off per step, not around the yield: a generator suspended inside
        # torch.no_grad() would leave gradients off in its caller's code as well.
        with torch.no_grad():
            if output is None:
                output, hidden = model(word, hidden)
            word = next_word(model, criterion, output, temperature, top_k, top_p).view(1, 1).to(device)
        output = None
        yield word.item()


def next_word(model, criterion, output, temperature, top_k=None, top_p=None):
    """One word drawn after the model's last output: as the original drew it unless the distribution
    is cut (top_k / top_p), which the original did not offer."""
    if top_k is None and top_p is None:
        return sample_next_word(model, criterion, output, temperature)
    logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)[0]
    return torch.multinomial(filtered_probs(logprob, temperature, top_k, top_p), 1)


def filtered_probs(logprob, temperature, top_k=None, top_p=None):
    """The distribution to sample from: the model's, tempered, then cut to its top_k likeliest words
    and to the nucleus of top_p (Holtzman et al. 2019: the smallest set of likeliest words whose
    probability reaches top_p), renormalised."""
    probs = torch.softmax(logprob / temperature, 0)
    if top_k is not None and top_k < probs.numel():
        kept = torch.zeros_like(probs)
        values, indices = probs.topk(top_k)
        probs = kept.scatter(0, indices, values)
    if top_p is not None and top_p < 1:
        values, indices = probs.sort(descending=True)
        mass_before = values.cumsum(0) / values.sum() - values / values.sum()
        probs = torch.zeros_like(probs).scatter(0, indices, values * (mass_before < top_p))
    return probs / probs.sum()


def feed_prompt(model, ids, hidden, device):
    """Run the prompt through the model; returns (its last output, the hidden state after it)."""
    output, hidden = model(torch.tensor(ids, dtype=torch.long, device=device).view(-1, 1), hidden)
    return output[-1:], hidden


def original_start_word(ntokens):
    """The start word as the original drew it: torch.rand(1, 1) * ntokens, truncated (on the CPU)."""
    return torch.rand(1, 1).mul(ntokens).long()


def sample_next_word(model, criterion, output, temperature):
    """One word drawn from the model's distribution at `temperature`, as the original drew it: the
    multinomial, on the CPU, of exp(logits / temperature), unnormalised. The split softmax (which the
    original's generate.py did not support) and weights that overflow or vanish there (a very low
    temperature, where the original failed) are drawn from the normalised softmax instead, and so is
    the Mixture of Softmaxes' distribution (Yang et al. 2018), which has no single vector of logits."""
    if isinstance(criterion, SplitCrossEntropyLoss) and criterion.nsplits == 1:
        weights = torch.nn.functional.linear(output, model.decoder.weight, model.decoder.bias)
        weights = weights.squeeze().div(temperature).exp().cpu()
        if torch.isfinite(weights).all() and weights.sum() > 0:
            return torch.multinomial(weights, 1)[0]
    # The model returns its last hidden layer; the (split) softmax belongs to the criterion.
    logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)[0]
    return torch.multinomial(torch.softmax(logprob / temperature, 0).cpu(), 1)[0]
