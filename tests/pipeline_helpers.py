"""A tiny trained checkpoint for the tests of finetune.py, pointer.py and generate.py."""
import os

from conftest import TINY, write_corpus

import main as train_script


def train_tiny(folder, epochs=2, lines_per_split=(150, 40, 40)):
    """Runs main.py in-process on a small synthetic corpus; returns (corpus folder, checkpoint path)."""
    corpus = write_corpus(os.path.join(folder, 'corpus'), lines_per_split)
    save = os.path.join(folder, 'main.pt')
    assert train_script.main(['--data', corpus, '--save', save, '--epochs', str(epochs), *TINY]) == 0
    return corpus, save


def other_corpus(folder):
    """A corpus with another vocabulary: a checkpoint of the tiny corpus does not fit it."""
    os.makedirs(folder, exist_ok=True)
    for name in ('train', 'valid', 'test'):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            f.write(' colourless green ideas sleep furiously . \n' * 30)
    return folder
