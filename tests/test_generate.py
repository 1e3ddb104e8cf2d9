import pytest

from harness import corpus_cache
import errors
import generate
import scoring
from pipeline_helpers import other_corpus, train_tiny


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('generate')))


def sampled_tokens(path):
    """Reads generated text back into tokens (the original's layout: <eos> written as a word)."""
    with open(path) as f:
        return f.read().split()


def test_words_vocabulary_and_seed(trained, tmp_path):
    corpus, save = trained
    outs = [str(tmp_path / f'{name}.txt') for name in ('a', 'b', 'c')]
    for out, seed in zip(outs, (7, 7, 8)):
        assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '150',
                              '--seed', str(seed), '--cpu', '--temperature', '0.8']) == 0
    texts = [open(out).read() for out in outs]
    tokens = sampled_tokens(outs[0])
    assert len(tokens) == 150
    vocabulary = set(corpus_cache.load_corpus(corpus).dictionary.idx2word)
    assert set(tokens) <= vocabulary
    assert texts[0] == texts[1] and texts[0] != texts[2]
    # The original's layout: 20 words a line, each followed by a space.
    assert all(len(line.split()) == 20 for line in texts[0].split('\n')[:-1]) and texts[0].endswith(' ')


def test_corpus_layout_breaks_the_line_at_each_eos(trained, tmp_path):
    corpus, save = trained
    original, corpus_style = str(tmp_path / 'original.txt'), str(tmp_path / 'corpus.txt')
    for out, layout in ((original, []), (corpus_style, ['--corpus-layout'])):
        generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '120', '--seed', '3',
                       '--cpu', *layout])
    words = sampled_tokens(original)
    with open(corpus_style) as f:
        lines = f.read().split('\n')
    # The same words, <eos> as a line break: the corpus files' layout.
    assert '<eos>' in words and lines[:-1] and '<eos>' not in ' '.join(lines)
    assert [w for line in lines[:-1] for w in line.split() + ['<eos>']] + lines[-1].split() == words


def test_bad_inputs(trained, tmp_path):
    corpus, save = trained
    with pytest.raises(errors.UserError, match='temperature'):
        generate.main(['--data', corpus, '--checkpoint', save, '--temperature', '1e-4'])
    with pytest.raises(errors.UserError, match='checkpoint not found'):
        generate.main(['--data', corpus, '--checkpoint', str(tmp_path / 'none.pt')])
    with pytest.raises(errors.UserError, match='does not match'):
        generate.main(['--data', other_corpus(str(tmp_path / 'other')), '--checkpoint', save,
                       '--outf', str(tmp_path / 'g.txt')])


def test_prompt_greedy_is_the_same_for_every_seed(trained, tmp_path):
    corpus, save = trained
    outs = [str(tmp_path / f'{seed}.txt') for seed in (1, 2)]
    for out, seed in zip(outs, (1, 2)):
        assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '20', '--cpu',
                              '--seed', str(seed), '--prompt', 'the cat sees', '--top-k', '1']) == 0
    tokens = sampled_tokens(outs[0])
    assert tokens[:3] == ['the', 'cat', 'sees'] and len(tokens) == 23
    assert open(outs[0]).read() == open(outs[1]).read()


def test_top_k_and_top_p_keep_the_likeliest_words():
    import torch
    logprob = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert scoring.filtered_probs(logprob, 1.0, top_k=2).tolist() == pytest.approx([0.625, 0.375, 0, 0])
    # The nucleus of 0.8 is the two likeliest words (0.5 + 0.3 reaches it); of 0.81, three.
    assert scoring.filtered_probs(logprob, 1.0, top_p=0.8).tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert (scoring.filtered_probs(logprob, 1.0, top_p=0.81) > 0).tolist() == [True, True, True, False]
    assert scoring.filtered_probs(logprob, 1.0, top_p=1.0).tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05])
    tempered = scoring.filtered_probs(logprob, 0.5, top_k=3)
    assert tempered[0] > 0.5 / 0.95 and tempered[3] == 0


def test_bad_sampling_flags(trained):
    corpus, save = trained
    for flags_, message in ((['--top-p', '0'], 'top-p'), (['--top-p', '1.5'], 'top-p'), (['--top-k', '0'], 'top-k'),
                            (['--prompt', '  '], 'prompt'), (['--prompt', 'zebra'], "'zebra' is not in the vocabulary")):
        with pytest.raises(errors.UserError, match=message):
            generate.main(['--data', corpus, '--checkpoint', save, '--cpu', *flags_])


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
