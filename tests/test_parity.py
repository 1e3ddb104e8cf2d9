"""main.py against the original 2018 code (salesforce/awd-lstm-lm at 1d466ec), bit for bit on the CPU.

The original is run beside this code as a test oracle: same flags, same seed, same corpus. Required:
the same printed end-of-epoch and test figures, and every tensor of the best checkpoint equal
(`torch.equal`). The original is looked for in $AWD_LSTM_ORIGINAL, then in ../shared/original/awd-lstm-lm
beside the repository; the test is skipped when neither exists. It is copied to a temporary folder and
given, in code, the smallest fixes that let it run on torch 2.x on the CPU (ORIGINAL_FIXES below).

Where this code deliberately differs from the original (README, "Where this code differs"), the cases
stay clear of it: the last vocabulary word never appears in the training input (the original's
padding_idx=-1 froze that word's input embedding), and the split-softmax case has no empty tail.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, write_corpus

ORIGINAL = os.environ.get('AWD_LSTM_ORIGINAL') or os.path.join(os.path.dirname(REPO), 'shared', 'original',
                                                                'awd-lstm-lm')

# (file, text in the original, replacement, why). Each must match exactly once.
ORIGINAL_FIXES = [
    # torch >= 2.6 loads with weights_only=True by default; the original pickles whole modules and its
    # corpus, so it needs the old behaviour for its own files.
    ('main.py', 'model, criterion, optimizer = torch.load(f)',
     'model, criterion, optimizer = torch.load(f, weights_only=False)',
     'its checkpoint is a pickled [model, criterion, optimizer]'),
    ('main.py', 'corpus = torch.load(fn)', 'corpus = torch.load(fn, weights_only=False)',
     'its corpus cache is a pickled Corpus'),
    # In eval mode F.dropout(training=False) hands back the raw Parameter itself; setattr of a Parameter
    # registers it in the LSTM, and torch >= 1.0 then refuses the plain tensor of the next training
    # step for that name. Assign a detached tensor instead: the same values, no registration.
    ('weight_drop.py',
     'w = torch.nn.functional.dropout(raw_w, p=self.dropout, training=self.training)',
     'w = torch.nn.functional.dropout(raw_w, p=self.dropout, training=self.training)\n'
     '                if not self.training: w = w.detach()',
     'eval-mode weight is the raw Parameter'),
    # PyTorch 0.4 compared into uint8 and summed the masks as integers (the split index of each target);
    # on torch >= 1.2 they are bool, and bool + bool is a logical or.
    ('splitcross.py', 'partial_mask = targets >= self.splits[idx]',
     'partial_mask = (targets >= self.splits[idx]).long()', 'split index of each target'),
]


def prepare_original(folder):
    if not os.path.isfile(os.path.join(ORIGINAL, 'main.py')):
        pytest.skip(f'the original awd-lstm-lm code is not at {ORIGINAL} (set AWD_LSTM_ORIGINAL to a checkout '
                    'of salesforce/awd-lstm-lm)')
    shutil.copytree(ORIGINAL, folder, ignore=shutil.ignore_patterns('.git', 'data'))
    for name, old, new, why in ORIGINAL_FIXES:
        path = os.path.join(folder, name)
        os.chmod(path, 0o644)
        with open(path) as f:
            text = f.read()
        assert text.count(old) == 1, f'{name}: fix for "{why}" does not apply (is it the 1d466ec code?)'
        with open(path, 'w') as f:
            f.write(text.replace(old, new))
    return folder


# The same threads for both programs: CPU kernels are deterministic for a fixed thread count.
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0')


def run(cwd, script, argv):
    proc = subprocess.run([sys.executable, script, *argv], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout


FIGURES = re.compile(r'\| (?:end of epoch +(\d+) \|.*?\| )?(?:End of training \| )?'
                     r'((?:valid|test) loss +\S+ \| (?:valid|test) ppl +\S+ \| (?:valid|test) bpc +\S+)')


def printed_figures(stdout):
    """The end-of-epoch valid figures and the final test figures, as printed (time left out)."""
    return [(m.group(1), m.group(2)) for m in FIGURES.finditer(stdout)]


# The original's checkpoint unpickles only beside its own modules: turn it into plain tensors there.
EXPORT_TENSORS = """
import sys, torch
model, criterion, _ = torch.load(sys.argv[1], weights_only=False)
torch.save({'model': model.state_dict(), 'criterion': criterion.state_dict()}, sys.argv[2])
"""


def assert_same_checkpoints(original_folder, original_file, ours_file):
    exported = original_file + '.tensors'
    subprocess.run([sys.executable, '-c', EXPORT_TENSORS, original_file, exported], cwd=original_folder,
                   env=ENV, check=True)
    original = torch.load(exported, weights_only=True)
    ours = torch.load(ours_file, weights_only=True)
    expected = {**{'model.' + k: v for k, v in original['model'].items()},
                **{'criterion.' + k: v for k, v in original['criterion'].items()}}
    got = {**{'model.' + k: v for k, v in ours['model'].items()},
           **{'criterion.' + k: v for k, v in ours['criterion'].items()}}
    assert sorted(got) == sorted(expected)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f'tensors that differ from the original: {different}'


def compare(tmp_path, corpus, flags, expect_in_log=()):
    original = prepare_original(str(tmp_path / 'original'))
    flags = ['--data', corpus, *flags]
    # The original's --cuda was store_false: passing it is how it runs on the CPU.
    original_out = run(original, 'main.py', [*flags, '--cuda', '--save', str(tmp_path / 'original.pt')])
    ours_out = run(REPO, 'main.py', [*flags, '--cpu', '--save', str(tmp_path / 'ours.pt')])
    for text in expect_in_log:  # the case exercises what it is meant to
        assert text in original_out and text in ours_out, text
    expected = printed_figures(original_out)
    assert expected and expected[-1][1].startswith('test'), original_out[-2000:]
    assert printed_figures(ours_out) == expected
    assert_same_checkpoints(original, str(tmp_path / 'original.pt'), str(tmp_path / 'ours.pt'))


def corpus_with_unseen_last_word(folder, lines_per_split=(200, 40, 40), seed=0):
    """The tiny grammar corpus, plus a word seen only in test: the last vocabulary entry never enters
    training, so the original's frozen last input embedding (padding_idx=-1) changes nothing."""
    write_corpus(folder, lines_per_split, seed)
    with open(os.path.join(folder, 'test.txt'), 'a') as f:
        f.write(' the zebra sees a ball . \n')
    return folder


TINY_MODEL = ['--emsize', '10', '--nhid', '16', '--nlayers', '3', '--batch_size', '4', '--bptt', '12',
              '--log-interval', '1000']


def test_nt_asgd_switch_inside_the_run(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--epochs', '6', '--nonmono', '1', '--lr', '40', '--seed', '141',
                               '--dropouti', '0.4', '--dropouth', '0.25'],
            expect_in_log=['Switching to ASGD', 'Saving Averaged!'])


def test_adam_with_when(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--epochs', '4', '--optimizer', 'adam', '--lr', '0.003',
                               '--when', '2', '3', '--seed', '7'],
            expect_in_log=['Dividing learning rate by 10'])


def test_gru(tmp_path):
    corpus = corpus_with_unseen_last_word(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, [*TINY_MODEL, '--model', 'GRU', '--epochs', '3', '--seed', '1882'])


def large_vocabulary_corpus(folder, train_words=21000, total_words=76500):
    """Over 75,000 words, so that main.py turns on the split softmax ([2800, 20000, 76000]): training
    text uses words of the head and of the first two tails; valid and test hold the rest, so every tail is
    non-empty and the last word is never a training input."""
    os.makedirs(folder, exist_ok=True)
    import random
    rnd = random.Random(1)
    train_vocab = [f'w{i}' for i in range(train_words)]
    frequent = train_vocab[:50]
    lines = []
    for i in range(0, train_words, 7):  # every training word at least once, in vocabulary order
        lines.append(' '.join(train_vocab[i:i + 7] + rnd.sample(frequent, 5)))
    with open(os.path.join(folder, 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    rest = [f'w{i}' for i in range(train_words, total_words)]
    half = len(rest) // 2
    for name, words in (('valid', rest[:half]), ('test', rest[half:])):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            for i in range(0, len(words), 20):
                f.write(' '.join(words[i:i + 20] + rnd.sample(frequent, 5)) + '\n')
    return folder


def test_split_softmax_with_dropouts_and_weight_decay(tmp_path):
    corpus = large_vocabulary_corpus(str(tmp_path / 'corpus'))
    compare(tmp_path, corpus, ['--emsize', '8', '--nhid', '12', '--nlayers', '2', '--batch_size', '8',
                               '--bptt', '20', '--log-interval', '1000', '--epochs', '2', '--seed', '3',
                               '--dropout', '0.3', '--dropouth', '0.2', '--dropouti', '0.3', '--dropoute', '0.1',
                               '--wdrop', '0.4', '--wdecay', '1e-4'],
            expect_in_log=['Using [2800, 20000, 76000]'])
