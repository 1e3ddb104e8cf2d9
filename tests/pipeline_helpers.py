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


def random_checkpoint(path, words, splits=(), rnn_type='LSTM', release=2018, seed=0, n_experts=1):
    """A checkpoint of an untrained tiny model (random weights, weight drop on, tombstones of a split
    softmax not zero) over the vocabulary `words`: enough to test what reads a trained model. With
    n_experts > 1, an AWD-LSTM-MoS (its mixture's loss in place of the split softmax)."""
    import torch
    from harness import checkpoint
    from model import RNNModel
    from mos import MixtureOfSoftmaxesLoss
    from splitcross import SplitCrossEntropyLoss
    torch.manual_seed(seed)
    model = RNNModel(rnn_type, len(words), 8, 12, 2, wdrop=0.3 if rnn_type != 'QRNN' else 0,
                     tie_weights=True, release=release, n_experts=n_experts, nhidlast=10 if n_experts > 1 else None)
    criterion = SplitCrossEntropyLoss(8, list(splits)) if n_experts == 1 else MixtureOfSoftmaxesLoss(8, n_experts)
    with torch.no_grad():
        for parameter in criterion.parameters():
            parameter.normal_()
    checkpoint.save_checkpoint(path, model, criterion, None, {'bptt': 6}, words)
    return path
