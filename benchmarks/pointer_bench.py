"""Time the vectorised cache pointer (pointer.pointer_loss) against the per-token form
(pointer.pointer_loss_reference, the original's loop) on the same random model and data.

    python benchmarks/pointer_bench.py [--tokens 3000 --vocab 10000 --window 500 --bptt 5000 --repeat 3]

Not a test: prints the times, the ratios and the two losses (which must agree). Both forms share the
model's forward pass and its vocabulary softmax (p_vocab for every position); the "cache part" line
subtracts that shared work from both times.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pointer  # noqa: E402
from model import RNNModel  # noqa: E402
from splitcross import SplitCrossEntropyLoss  # noqa: E402


def best_time(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tokens', type=int, default=3000)
    parser.add_argument('--vocab', type=int, default=10000)
    parser.add_argument('--window', type=int, default=500)
    parser.add_argument('--bptt', type=int, default=5000)
    parser.add_argument('--emsize', type=int, default=200)
    parser.add_argument('--nhid', type=int, default=400)
    parser.add_argument('--repeat', type=int, default=3, help='runs of the vectorised form (best is kept)')
    args = parser.parse_args()
    torch.manual_seed(0)
    model = RNNModel('LSTM', args.vocab, args.emsize, args.nhid, 2, tie_weights=True)
    criterion = SplitCrossEntropyLoss(args.emsize, splits=[])
    data = torch.randint(args.vocab, (args.tokens, 1))
    settings = dict(bptt=args.bptt, window=args.window, theta=0.662, lambdasm=0.1279)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tokens} tokens, '
          f'vocab {args.vocab}, window {args.window}, bptt {args.bptt}, LSTM {args.emsize}/{args.nhid} x2')

    def forward_only():
        with torch.no_grad():
            for _ in pointer.chunks(model, data, args.bptt):
                pass

    def forward_and_softmax():
        with torch.no_grad():
            for targets, output, _ in pointer.chunks(model, data, args.bptt):
                criterion.logprob(model.decoder.weight, model.decoder.bias, output).gather(1, targets[:, None])

    forward, _ = best_time(forward_only, args.repeat)
    shared, _ = best_time(forward_and_softmax, args.repeat)
    fast, (fast_loss, _) = best_time(lambda: pointer.pointer_loss(model, criterion, data, **settings), args.repeat)
    slow, slow_loss = best_time(lambda: pointer.pointer_loss_reference(model, criterion, data, **settings), 1)
    print(f'forward pass alone       {forward:8.3f} s')
    print(f'vectorised pointer_loss  {fast:8.3f} s   loss {fast_loss:.8f}')
    print(f'per-token reference      {slow:8.3f} s   loss {slow_loss:.8f}')
    print(f'forward + softmax alone  {shared:8.3f} s   (work both forms share)')
    print(f'speed-up, whole eval     {slow / fast:8.1f}x')
    print(f'cache part (time beyond the shared work): vectorised {fast - shared:.3f} s, '
          f'per-token {slow - shared:.3f} s')
    print(f'relative difference      {abs(fast_loss - slow_loss) / slow_loss:.2e}')


if __name__ == '__main__':
    main()
