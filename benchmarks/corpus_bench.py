"""How fast and lean data.Corpus reads a corpus, against a plain Python loop that only reads its words.

    python benchmarks/corpus_bench.py                      # a synthetic corpus of 100M tokens
    python benchmarks/corpus_bench.py --tokens 20000000    # a smaller one
    python benchmarks/corpus_bench.py --dir DIR            # keep the corpus in DIR (default: a temporary folder)
    python benchmarks/corpus_bench.py --code OLD           # time OLD/data.py instead (another commit, unpacked
                                                           # with `git archive REV | tar -x -C OLD`)

The synthetic corpus has lines of 1 to 40 words drawn from a Zipf-like law over a 50,000-word vocabulary
(a natural text's shape: a few words most of the tokens, a long tail), split 90/5/5 into train, valid
and test. Each measurement runs in a process of its own (memory measured there is that measurement's):

- load: `data.Corpus(DIR)` (no corpus cache), its seconds, and the growth of the process's peak
  resident memory (getrusage's ru_maxrss) over what importing torch and data.py took, per token;
- plain read: a plain Python loop over the words of the three files, its seconds:
  `for line in open(f): for word in line.split() + ['<eos>']: n += 1`;
- split only: `for line in open(f): n += len(line.split()) + 1`, which splits every line but never
  touches a word from Python (the least any reading in Python can take).

Seconds are CPU seconds of the process (time.process_time): on a shared machine wall-clock time
measures the neighbours as much as the code; the wall-clock seconds are printed beside them.

The target (docs/CORPUS.md): load at most 4x the plain read, at most 24 bytes of memory a token.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_SHARES = (('train', 0.9), ('valid', 0.05), ('test', 0.05))


def write_synthetic_corpus(folder, tokens, seed=0):
    """DIR/{train,valid,test}.txt holding about `tokens` tokens (words and one <eos> a line) in all."""
    import numpy as np
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f'w{i}' for i in range(50_000)])
    # Zipf-like: rank r drawn with probability ~ 1 / (r + 2.7), a natural text's word frequencies.
    weights = 1.0 / (np.arange(len(vocabulary)) + 2.7)
    weights /= weights.sum()
    os.makedirs(folder, exist_ok=True)
    for split, share in SPLIT_SHARES:
        remaining = int(tokens * share)
        with open(os.path.join(folder, split + '.txt'), 'w') as f:
            while remaining > 0:
                # 20.5 words and an <eos> a line on average: no more lines than the split's share needs
                lengths = rng.integers(1, 41, size=max(1, min(10_000, round(remaining / 21.5))))
                words = vocabulary[rng.choice(len(vocabulary), size=int(lengths.sum()), p=weights)]
                ends = np.cumsum(lengths)
                lines = [' '.join(words[end - n:end]) for n, end in zip(lengths.tolist(), ends.tolist())]
                f.write('\n'.join(lines) + '\n')
                remaining -= int(lengths.sum()) + len(lines)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_load(folder, code=REPO):
    sys.path.insert(0, code)
    import data
    import torch  # noqa: F401 - imported before the baseline: its memory is not the corpus's
    before = peak_rss_bytes()
    cpu, wall = time.process_time(), time.perf_counter()
    corpus = data.Corpus(folder)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    tokens = sum(len(getattr(corpus, split)) for split in data.SPLITS)
    return {'seconds': cpu, 'wall_seconds': wall, 'tokens': tokens, 'vocabulary': len(corpus.dictionary),
            'peak_growth_bytes': peak_rss_bytes() - before}


def loop_over_words(line):
    """The plain read of one line: a Python loop over its words (and its <eos>)."""
    tokens = 0
    for _word in line.split() + ['<eos>']:
        tokens += 1
    return tokens


def split_only(line):
    """The split only: the line's words counted, none touched from Python."""
    return len(line.split()) + 1


def measure_reading(folder, count_line):
    """Seconds of reading the three files line by line, `count_line` counting each line's tokens."""
    cpu, wall = time.process_time(), time.perf_counter()
    tokens = 0
    for split, _ in SPLIT_SHARES:
        with open(os.path.join(folder, split + '.txt'), encoding='utf-8') as f:
            for line in f:
                tokens += count_line(line)
    return {'seconds': time.process_time() - cpu, 'wall_seconds': time.perf_counter() - wall, 'tokens': tokens}


MEASUREMENTS = {'read': lambda folder: measure_reading(folder, loop_over_words),
                'split': lambda folder: measure_reading(folder, split_only)}


def in_own_process(measurement, folder, code=REPO):
    out = subprocess.run([sys.executable, __file__, '--measure', measurement, folder, '--code', code],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tokens', type=int, default=100_000_000, help='size of the synthetic corpus (default 100M)')
    parser.add_argument('--dir', help='where to write the corpus (default: a temporary folder, removed after)')
    parser.add_argument('--code', default=REPO, help='the checkout whose data.py is timed (default: this one)')
    parser.add_argument('--measure', nargs=2, metavar=('WHAT', 'DIR'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        what, folder = args.measure
        print(json.dumps(measure_load(folder, args.code) if what == 'load' else MEASUREMENTS[what](folder)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or os.path.join(scratch, 'corpus')
        start = time.perf_counter()
        write_synthetic_corpus(folder, args.tokens)
        print(f'| wrote {folder} ({args.tokens:,} tokens asked) in {time.perf_counter() - start:.1f} s')
        split = in_own_process('split', folder)
        print(f'| timing the data.py of {os.path.abspath(args.code)}')
        plain = in_own_process('read', folder)
        load = in_own_process('load', folder, os.path.abspath(args.code))
        assert load['tokens'] == plain['tokens'] == split['tokens'], (load, plain, split)
        print(f'| tokens {load["tokens"]:,} | vocabulary {load["vocabulary"]:,} '
              f'| split only {split["seconds"]:.2f} s | plain read {plain["seconds"]:.2f} s '
              f'| data.Corpus {load["seconds"]:.2f} s ({load["seconds"] / plain["seconds"]:.2f}x the plain read, '
              f'{load["seconds"] / split["seconds"]:.2f}x the split only) '
              f'| peak memory growth {load["peak_growth_bytes"] / 2 ** 20:.0f} MiB '
              f'({load["peak_growth_bytes"] / load["tokens"]:.1f} bytes a token)')
        print(f'| wall-clock seconds: split only {split["wall_seconds"]:.2f}, plain read {plain["wall_seconds"]:.2f}, '
              f'data.Corpus {load["wall_seconds"]:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
