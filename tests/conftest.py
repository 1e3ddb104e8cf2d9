import os
import random
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MIRROR = os.path.join(os.path.dirname(REPO), 'shared', 'data')

# Flags that shrink any published command line to a model that trains in seconds on the CPU
# (argparse keeps the last value of a repeated flag).
TINY = ['--emsize', '8', '--nhid', '12', '--bptt', '10', '--batch_size', '4', '--log-interval', '5', '--cpu']


def write_corpus(folder, lines_per_split=(400, 60, 60), seed=0):
    """A small synthetic corpus with structure an LSTM can learn: short 'sentences' from a grammar."""
    rnd = random.Random(seed)
    subjects, verbs, objects = ['the cat', 'a dog', 'my friend', 'the bird'], ['sees', 'likes', 'eats'], \
        ['the fish', 'a ball', 'some bread', 'the tree']
    os.makedirs(folder, exist_ok=True)
    for name, n in zip(('train', 'valid', 'test'), lines_per_split):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            for _ in range(n):
                f.write(f' {rnd.choice(subjects)} {rnd.choice(verbs)} {rnd.choice(objects)} . \n')
    return folder


@pytest.fixture
def tiny_corpus(tmp_path):
    return write_corpus(str(tmp_path / 'tiny'))


@pytest.fixture
def ptb_mirror():
    path = os.path.join(MIRROR, 'penn')
    if not os.path.isdir(path):
        pytest.skip('../shared/data/penn (the dataset mirror) is not present')
    return path
