import pytest

import data
import errors
import generate
from pipeline_helpers import other_corpus, train_tiny


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('generate')))


def sampled_tokens(path):
    """Reads generated text back into tokens: a line break is an <eos>, as in the corpus files."""
    with open(path) as f:
        lines = f.read().split('\n')
    tokens = [w for line in lines[:-1] for w in line.split() + ['<eos>']]
    return tokens + lines[-1].split()


def test_words_vocabulary_and_seed(trained, tmp_path):
    corpus, save = trained
    outs = [str(tmp_path / f'{name}.txt') for name in ('a', 'b', 'c')]
    for out, seed in zip(outs, (7, 7, 8)):
        assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '150',
                              '--seed', str(seed), '--cpu', '--temperature', '0.8']) == 0
    texts = [open(out).read() for out in outs]
    tokens = sampled_tokens(outs[0])
    assert len(tokens) == 150
    vocabulary = set(data.load_corpus(corpus).dictionary.idx2word)
    assert set(tokens) <= vocabulary
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_bad_inputs(trained, tmp_path):
    corpus, save = trained
    with pytest.raises(errors.UserError, match='temperature'):
        generate.main(['--data', corpus, '--checkpoint', save, '--temperature', '1e-4'])
    with pytest.raises(errors.UserError, match='checkpoint not found'):
        generate.main(['--data', corpus, '--checkpoint', str(tmp_path / 'none.pt')])
    with pytest.raises(errors.UserError, match='does not match'):
        generate.main(['--data', other_corpus(str(tmp_path / 'other')), '--checkpoint', save,
                       '--outf', str(tmp_path / 'g.txt')])


def test_generated_text_can_go_down_a_pipe(trained):
    # `generate.py --outf /dev/stdout | cat`: /dev/stdout resolves into /proc/PID/fd, a read-only folder.
    import os
    import subprocess
    import sys
    from conftest import REPO
    corpus, save = trained
    done = subprocess.run([sys.executable, 'generate.py', '--data', corpus, '--checkpoint', save, '--words', '30',
                           '--outf', '/dev/stdout', '--cpu'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'| Generated 30 words to /dev/stdout' in done.stdout and 'error' not in done.stderr
    assert any(word in done.stdout for word in ('cat', 'dog', 'bird', 'fish'))  # the corpus's words
    assert os.path.isfile(save)
