"""score.py --sentences batched against one line at a time, with a full-size PTB model.

    python benchmarks/score_bench.py [--data ../shared/data/penn] [--alone-lines 200] [--threads 1]

The model has the 2018 PTB recipe's sizes (3-layer LSTM, 1150 hidden, 400 embedding, tied, weight
drop 0.5) and random weights, saved as a checkpoint first: the speed of scoring does not depend on
what the weights are. Every test line is scored batched (--batch-size 64, score.py's default); one at
a time only the first --alone-lines lines (the whole file alone takes long on a shared CPU), reported as
lines per second so the two rates compare.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from harness import checkpoint  # noqa: E402
import data  # noqa: E402
from harness import corpus_cache  # noqa: E402
from lm import LanguageModel  # noqa: E402
from model import RNNModel  # noqa: E402
from splitcross import SplitCrossEntropyLoss  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--data', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'penn'))
    parser.add_argument('--alone-lines', type=int, default=200)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_cache.load_corpus(args.data, log=lambda *a: None)
    idx2word = corpus.dictionary.idx2word
    with open(os.path.join(args.data, 'test.txt'), 'rb') as f:
        lines = data.read_text(f.read(), 'test.txt')
    torch.manual_seed(0)
    model = RNNModel('LSTM', len(idx2word), 400, 1150, 3, 0.4, 0.25, 0.4, 0.1, 0.5, tie_weights=True)
    criterion = SplitCrossEntropyLoss(400, [])
    with tempfile.TemporaryDirectory() as folder:
        save = os.path.join(folder, 'ptb-random.pt')
        checkpoint.save_checkpoint(save, model, criterion, None, {'bptt': 70}, idx2word)
        lm = LanguageModel(save)  # what score.py scores with
    ids, _, _ = lm.encode(lines)
    start = time.perf_counter()
    batched = lm.token_logprobs(ids, batch_size=64)
    batched_s = time.perf_counter() - start
    subset = ids[:args.alone_lines]
    start = time.perf_counter()
    alone = lm.token_logprobs(subset, batch_size=1)
    alone_s = time.perf_counter() - start
    worst = max(float((a.sum() - b.sum()).abs() / b.sum().abs()) for a, b in zip(alone, batched))
    batched_rate, alone_rate = len(ids) / batched_s, len(subset) / alone_s
    print(f'batched (64 lines): {len(ids)} lines in {batched_s:.1f} s = {batched_rate:.1f} lines/s')
    print(f'one at a time: {len(subset)} lines in {alone_s:.1f} s = {alone_rate:.2f} lines/s')
    print(f'speed-up {batched_rate / alone_rate:.1f}x; largest relative difference of a line logprob {worst:.2e}')


if __name__ == '__main__':
    main()
