"""Evaluate a saved AWD-LSTM with the continuous cache pointer (Grave, Joulin & Usunier 2016,
"Improving Neural Language Models with a Continuous Cache", arXiv:1612.04426; Merity et al. 2017 section 5).

    python pointer.py --data data/penn --save PTB.pt --lambdasm 0.1 --theta 1.0 --window 500 --bptt 5000
    python pointer.py --save WT2.pt --lambdasm 0.1279 --theta 0.662 --window 3785 --bptt 2000 --data data/wikitext-2

Reports valid and test loss / ppl / bpc with the cache (and, for reference, without it), and appends one
JSON record with the settings and results to <save>.pointer.jsonl (or --log). A result that is not a
finite number (a --theta so large that the attention scores overflow) is an error, not a report.

The model
---------
Each split is read as one stream x_0 .. x_{N-1} (batch size 1) in chunks of --bptt tokens, the hidden
state carried across chunks. Position t (0 <= t < N-1) predicts x_{t+1}. With h_t the last layer's output
(eval mode, so no dropout) and p_vocab(. | t) the model's softmax:

    a_j(t)   = softmax over j in W(t) of  theta * <h_j, h_t>
    p_ptr(w) = sum of a_j(t) over the j in W(t) with x_{j+1} = w        (the word that followed h_j)
    p(w)     = lambdasm * p_ptr(w) + (1 - lambdasm) * p_vocab(w | t)
    loss     = sum over t of -log p(x_{t+1})  divided by N                 (N = len(data), as the original)

W(t) = {t - window, ..., t - 1}, always exactly `window` positions when the cache is used.

Which positions use the cache (the original's exact semantics)
-------------------------------------------------------------
The original kept the history (h_j, x_{j+1}) of the current chunk appended to that of earlier chunks,
trimmed to the last `window` entries after each chunk. For position idx of a chunk starting at t = i,
with start = number of history entries before the chunk = min(i, window), it used the cache only when
start + idx > window, over history entries [start + idx - window, start + idx), which are exactly the
positions W(t) above. Working that out:
  * in the first chunks (i < window) the condition is t > window: the first window + 1 positions
    (t = 0 .. window) use p_vocab alone - including t = window, which already has a full window;
  * once the history holds `window` entries (i >= window) it is idx > 0: the first position of every
    later chunk uses p_vocab alone, although its full window is there (strict '>' where '>=' would do).
So: position t uses the cache iff t > window and t is not a multiple of --bptt. Hence --bptt changes the
result a little (one token per chunk goes without the cache), not only the speed. The published numbers
were obtained this way, so it is the default; --cache-from-start gives the corrected variant, where every
position t >= 1 uses the cache over W(t) = {max(0, t - window), ..., t - 1}.

Computation
-----------
Vectorised per chunk: one forward pass gives all h_t; rows are processed in blocks whose attention scores
(block x (window + block)) and vocabulary log-probabilities (block x V) stay within a fixed memory budget
whatever the window and vocabulary (WikiText-2: window 3785, V 33,278). Only p(x_{t+1}) is needed, so
p_ptr(x_{t+1}) = sum of a_j over the j with x_{j+1} = x_{t+1}: a (block x window) comparison, never a
vocabulary-sized one-hot row. Everything is done in log space (logsumexp, logaddexp), so a target that
the model gives a vanishing probability still gets a finite loss. `pointer_loss_reference` is the
straightforward per-token form (the original's loop), used by the tests and benchmarks/pointer_bench.py.
"""
import argparse
import math

import torch
import torch.nn.functional as F

import harness

import utils
import errors

# Elements per intermediate tensor of a block (32 MiB in float32); a few live at once.
BLOCK_BUDGET = 2 ** 23


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a saved AWD-LSTM with the continuous cache pointer '
                                                 '(Grave et al. 2016) on valid and test')
    g = harness.add_data_args(parser)
    g.add_argument('--model', type=str, default=None,
                   help='accepted for compatibility; the checkpoint knows its own model type')
    g = parser.add_argument_group('cache pointer (Grave et al. 2016)')
    harness.declare(g, '--bptt', type=int, default=5000, must=harness.POSITIVE_INT,
                   help='chunk length; the hidden state is carried across chunks (affects speed and memory, '
                        'and, in the original semantics, which tokens use the cache: not a chunk\'s first)')
    g.add_argument('--window', type=int, default=3785, help='number of previous positions in the cache')
    g.add_argument('--theta', type=float, default=0.6625523432485668,
                   help='inverse temperature of the attention over the cache')
    g.add_argument('--lambdasm', type=float, default=0.12785920428335693,
                   help='weight of the cache distribution in the mixture with the model softmax, in [0, 1)')
    g.add_argument('--cache-from-start', action='store_true',
                   help='corrected variant: use the cache from the second token on, with whatever history '
                        'exists (the original skips the first window + 1 tokens and the first of each chunk)')
    g.add_argument('--log', type=str, default=None, metavar='PATH',
                   help='JSON-lines file the results are appended to (default: <save>.pointer.jsonl)')
    args = harness.parse_args(parser, argv)
    if args.window < 1:
        raise errors.UserError(f'--window must be at least 1, got {args.window}')
    if not 0 <= args.lambdasm < 1:
        raise errors.UserError(f'--lambdasm must be in [0, 1), got {args.lambdasm}' + (
            ': with 1 the model\'s softmax gets no weight, so every word that did not follow a position in '
            'the cache window has probability 0 (an infinite loss)' if args.lambdasm == 1 else ''))
    if not math.isfinite(args.theta):
        raise errors.UserError(f'--theta must be a finite number, got {args.theta}')
    if args.log is None and args.save:
        args.log = default_log_path(args.save)
    return args


def default_log_path(save):
    return save + '.pointer.jsonl'


def check_finite(split, loss, vocab_loss, theta):
    """A loss that is not a finite number is an error, never a result."""
    if not math.isfinite(vocab_loss):
        raise errors.UserError(f'the model\'s own {split} loss is not finite ({vocab_loss}): '
                               'is the checkpoint damaged?')
    if not math.isfinite(loss):
        raise errors.UserError(f'the {split} loss with the cache is not finite ({loss}): the attention scores '
                               f'overflow with --theta {theta}; try a smaller one')


def chunks(model, source, bptt):
    """Yields (targets, output, h) for each --bptt chunk of a batch-size-1 stream, hidden state carried:
    targets (L,) the next words; output what the criterion turns into the model's distribution; h
    (L, features) the last layer's eval-mode output, the cache's keys and queries. For the AWD-LSTM
    output and h are one tensor; for AWD-LSTM-MoS output holds the mixture's rows (mos.py)."""
    model.eval()
    model.reset()
    hidden = model.init_hidden(1)
    for i in range(0, source.size(0) - 1, bptt):
        data, targets = utils.get_batch(source, i, seq_len=bptt)
        output, hidden, _, dropped_outputs = model(data, hidden, return_h=True)
        last = dropped_outputs[-1]  # eval mode: the last layer's output itself
        yield targets, output, last.reshape(-1, last.size(2))


def uses_cache(entry, window, cache_from_start):
    """Whether the position whose history index is `entry` (the number of history entries before it,
    counted as the original did) uses the cache: see the module docstring."""
    return entry >= 1 if cache_from_start else entry > window


def safe_log(x):
    return math.log(x) if x > 0 else float('-inf')


@torch.no_grad()
def pointer_loss(model, criterion, source, bptt, window, theta, lambdasm, cache_from_start=False,
                 progress=None, block_budget=BLOCK_BUDGET):
    """Cache-pointer loss of a batch-size-1 stream `source` (N, 1), summed and divided by N.

    Returns (loss with the cache, loss of the model alone), both divided by N.
    """
    weight, bias = model.decoder.weight, model.decoder.bias
    ntokens = weight.size(0)
    log_lam, log_one_minus_lam = safe_log(lambdasm), safe_log(1 - lambdasm)
    hist_h = hist_t = None  # the last `window` positions before the chunk: outputs and next words
    total = torch.zeros((), dtype=torch.float64, device=source.device)
    total_vocab = torch.zeros((), dtype=torch.float64, device=source.device)
    for targets, output, h in chunks(model, source, bptt):
        length = targets.size(0)
        start = 0 if hist_h is None else hist_h.size(0)
        all_h = h if hist_h is None else torch.cat([hist_h, h])
        all_t = targets if hist_t is None else torch.cat([hist_t, targets])
        rows = max(1, min(length, block_budget // max(ntokens, window + length)))
        for b0 in range(0, length, rows):
            b1 = min(b0 + rows, length)
            entry = torch.arange(start + b0, start + b1, device=h.device)  # history index of each row
            logp_vocab = criterion.logprob(weight, bias, output[b0:b1]).gather(1, targets[b0:b1, None]).squeeze(1)

            # Attention of each row over the history entries [entry - window, entry).
            c0 = max(0, start + b0 - window)
            c1 = start + b1 - 1
            scores = theta * (h[b0:b1] @ all_h[c0:c1].t())
            cols = torch.arange(c0, c1, device=h.device)
            in_window = (cols[None, :] < entry[:, None]) & (cols[None, :] >= entry[:, None] - window)
            scores = scores.masked_fill(~in_window, float('-inf'))
            same_word = all_t[c0:c1][None, :] == targets[b0:b1, None]
            # log p_ptr(target) = log sum_{j: next word = target} exp(s_j) - log sum_j exp(s_j)
            log_ptr = (torch.logsumexp(scores.masked_fill(~same_word, float('-inf')), 1)
                       - torch.logsumexp(scores, 1))
            log_mixed = torch.logaddexp(log_lam + log_ptr, log_one_minus_lam + logp_vocab)
            cached = uses_cache(entry, window, cache_from_start)
            total -= torch.where(cached, log_mixed, logp_vocab).sum(dtype=torch.float64)
            total_vocab -= logp_vocab.sum(dtype=torch.float64)
        hist_h, hist_t = all_h[-window:], all_t[-window:]
        if progress is not None:
            progress.update(length)
    return total.item() / len(source), total_vocab.item() / len(source)


@torch.no_grad()
def pointer_loss_reference(model, criterion, source, bptt, window, theta, lambdasm, cache_from_start=False):
    """The same loss computed token by token, as the original did: python lists of history, and for
    each cached position a softmax over its window and a vocabulary-sized p_ptr from one-hot rows.
    Slow (window x V work per token); for tests and the benchmark."""
    weight, bias = model.decoder.weight, model.decoder.bias
    ntokens = weight.size(0)
    history_h, history_next = [], []
    total = 0.
    for targets, output, h in chunks(model, source, bptt):
        p_vocab = criterion.logprob(weight, bias, output).exp()
        start = len(history_h)
        history_h.extend(h)
        history_next.extend(targets.tolist())
        for idx in range(len(targets)):
            p = p_vocab[idx]
            entry = start + idx
            if uses_cache(entry, window, cache_from_start):
                lo = max(0, entry - window)
                attention = torch.softmax(theta * torch.stack(history_h[lo:entry]) @ h[idx], 0)
                one_hot = F.one_hot(torch.tensor(history_next[lo:entry], device=h.device), ntokens).to(h.dtype)
                p = lambdasm * (attention @ one_hot) + (1 - lambdasm) * p
            total -= math.log(p[targets[idx]].item())
        history_h, history_next = history_h[-window:], history_next[-window:]
    return total / len(source)


def main(argv=None):
    args = parse_args(argv)
    if args.save:  # a read-only folder is found now, not after the whole evaluation
        try:
            harness.check_output(args.log, '--log', inputs=[args.save, *harness.data_files(args.data)])
            harness.check_appendable(args.log)
        except errors.UserError as e:
            raise errors.UserError(f'{e}: give --log PATH to write the results elsewhere') from None
    device = harness.choose_device(args)
    ckpt = harness.load_checkpoint(args.save, map_location=device, resume_state_ok=False)
    model, criterion = ckpt['model'], ckpt['criterion']
    if args.model is not None and args.model != model.rnn_type:
        print(f'note: --model {args.model} ignored: the checkpoint holds a {model.rnn_type} model')
    print('Args:', args)
    corpus, _, val_data, test_data = harness.load_data(args, (1, 1, 1), torch.device('cpu'),
                                                       vocabulary=harness.vocabulary_options(ckpt))
    harness.check_vocabulary(ckpt['idx2word'], corpus, args.save, args.data)

    results = {}
    for split, data in (('valid', val_data), ('test', test_data)):
        data = data.to(device)
        with harness.progress_bar(len(data) - 1, f'pointer {split}') as bar:
            try:
                loss, vocab_loss = pointer_loss(model, criterion, data, args.bptt, args.window, args.theta,
                                                args.lambdasm, args.cache_from_start, progress=bar)
            except torch.cuda.OutOfMemoryError:
                raise errors.UserError('GPU out of memory: try a smaller --bptt') from None
        check_finite(split, loss, vocab_loss, args.theta)
        print(f'| {split} without the cache | {harness.report_line(split, vocab_loss, model.release)}')
        results.update(harness.loss_record(split, loss), **{f'{split}_nocache_loss': vocab_loss})

    print('=' * 89)
    for split in ('valid', 'test'):
        print(f'| End of pointer | {harness.report_line(split, results[split + "_loss"], model.release)}')
    print('=' * 89)
    harness.JsonLog(args.log).write(
        checkpoint=args.save, data=args.data, bptt=args.bptt, window=args.window, theta=args.theta,
        lambdasm=args.lambdasm, cache_from_start=args.cache_from_start, **results)
    print(f'results appended to {args.log}')
    return 0


if __name__ == '__main__':
    harness.run_script(main)
