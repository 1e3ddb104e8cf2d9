import os
import random
import sys

import pytest

# One thread per process: the tests start subprocesses (and CI has 2 cores), and several processes each
# spinning 2 OpenMP threads on 2 cores run many times slower than one thread each. Set before torch is
# imported so that subprocesses inherit it.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import harness  # noqa: E402
from harness import recipes  # noqa: E402
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


@pytest.fixture
def wt2_mirror():
    path = os.path.join(MIRROR, 'wikitext-2')
    if not os.path.isdir(path):
        pytest.skip('../shared/data/wikitext-2 (the dataset mirror) is not present')
    return path


# The main.py command lines of the published recipes (recipes.py: 2017 and 2018 recipes, QRNN, character
# level, enwik8, WikiText-103). Tests append TINY and a --data/--epochs/--save of their own.
PUBLISHED_MAIN = [recipe['main'] for recipe in recipes.RECIPES.values()]


def tiny_run(data, save, epochs=1, extra=()):
    """argv for main.py / finetune.py: a tiny model on `data`, saving to `save`."""
    # --small_batch_size -1: a published group size (MoS's WT2: 5) need not divide TINY's batch.
    return [*TINY, '--small_batch_size', '-1', '--data', data, '--epochs', str(epochs), '--save', save, *extra]


def read_jsonl(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f]


# The fixtures of the fault-injection tests (their helpers are in reliability_helpers.py).

@pytest.fixture
def small_corpus(tmp_path):
    return write_corpus(str(tmp_path / 'small'), (150, 40, 40))


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """A corpus, a one-epoch checkpoint with its resume state, and a one-epoch fine-tuning state.

    Built once for the whole session: the tests that use it only read these files (a test that damages,
    resumes or fine-tunes a checkpoint in place works on a copy: reliability_helpers.copy_checkpoint).
    test_finetune.py, test_pointer.py, test_generate.py, test_dynamiceval.py and test_bad_input.py each
    define a `trained` of their own, which takes the place of this one in their tests."""
    import finetune
    from reliability_helpers import train
    folder = tmp_path_factory.mktemp('reliability')
    corpus = write_corpus(str(folder / 'corpus'), (150, 40, 40))
    save = str(folder / 'model.pt')
    assert train(corpus, save) == 0
    tuned = str(folder / 'tuned.pt')
    assert finetune.main(['--data', corpus, '--save', save, '--out', tuned, '--epochs', '1', *TINY]) == 0
    return corpus, save, harness.finetune_state_path(tuned)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: the originals side by side, several processes, whole pipelines '
                                       '(`pytest -m "not slow"` is the quick edit loop)')


def patch_everywhere(monkeypatch, module, name, value):
    """monkeypatch.setattr(module, name, value), and the same name of the harness's front door when it is
    the same function: the scripts call harness.load_checkpoint, TrainingRun calls cli.load_data."""
    if getattr(harness, name, None) is getattr(module, name):
        monkeypatch.setattr(harness, name, value)
    monkeypatch.setattr(module, name, value)
