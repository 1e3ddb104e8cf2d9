import os

import pytest

from conftest import patch_everywhere

from harness import checkpoint
from harness import cli
from harness import corpus_cache
import errors
import generate
import scoring
from pipeline_helpers import other_corpus, random_checkpoint, train_tiny
from reliability_helpers import must_not_run


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


@pytest.mark.slow
def test_generated_text_can_go_down_a_pipe(trained, tmp_path):
    # `generate.py --outf /dev/stdout | cat`: /dev/stdout resolves into /proc/PID/fd, a read-only folder.
    # What the pipe receives is exactly the text the same run writes to a file: the progress and the notes
    # (the corpus cache's, the prompt's) went into the text stream.
    import os
    import subprocess
    import sys
    from conftest import REPO
    corpus, save = trained
    argv = ['--data', corpus, '--checkpoint', save, '--words', '30', '--cpu', '--prompt', 'the cat', '--seed', '4']
    assert generate.main([*argv, '--outf', str(tmp_path / 'g.txt')]) == 0
    done = subprocess.run([sys.executable, 'generate.py', *argv, '--outf', '/dev/stdout'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tmp_path / 'g.txt').read_text()
    assert '| Generated 30 words to /dev/stdout' in done.stderr and '| Generated 0/30 words' in done.stderr
    assert 'Loading cached dataset' in done.stderr and 'error' not in done.stderr
    assert os.path.isfile(save)


def test_the_output_is_replaced_only_when_the_text_is_complete(trained, tmp_path, monkeypatch):
    # Two runs with one --outf (a sweep over seeds) both truncated and wrote the one file; a run that
    # failed had already truncated it. The file there stays whole until the new text replaces it.
    corpus, save = trained
    outf = tmp_path / 'generated.txt'
    outf.write_text('an earlier run\'s text')
    seen = []
    sample = scoring.sample_next_word

    def sample_and_look(*args):
        seen.append(outf.read_text())
        if len(seen) == 5:
            raise RuntimeError('a fault while sampling')
        return sample(*args)
    monkeypatch.setattr(scoring, 'sample_next_word', sample_and_look)
    argv = ['--data', corpus, '--checkpoint', save, '--outf', str(outf), '--words', '10', '--cpu']
    with pytest.raises(RuntimeError, match='a fault while sampling'):
        generate.main(argv)
    assert set(seen) == {'an earlier run\'s text'} and outf.read_text() == 'an earlier run\'s text'
    monkeypatch.setattr(scoring, 'sample_next_word', sample)
    assert generate.main(argv) == 0 and len(sampled_tokens(outf)) == 10
    assert [name for name in os.listdir(tmp_path) if name != 'generated.txt'] == []


def test_an_mos_checkpoint_samples_by_default(trained, tmp_path):
    # The default sampling read the split softmax's nsplits, which the Mixture of Softmaxes' loss lacks.
    corpus, _ = trained
    words = corpus_cache.load_corpus(corpus).dictionary.idx2word
    save = random_checkpoint(str(tmp_path / 'mos.pt'), words, n_experts=3)
    for shaping in ([], ['--top-k', '3']):
        outf = tmp_path / f'mos{len(shaping)}.txt'
        assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', str(outf), '--words', '25',
                              '--cpu', *shaping]) == 0
        assert len(sampled_tokens(outf)) == 25 and set(sampled_tokens(outf)) <= set(words)


def test_empty_and_odd_paths_are_refused_before_any_work(trained, tmp_path, monkeypatch):
    corpus, save = trained
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    cases = [(['--checkpoint', save, '--outf', ''], '--outf is empty'),
             (['--checkpoint', '', '--outf', str(tmp_path / 'g.txt')], r'no checkpoint given \(--checkpoint\)'),
             (['--checkpoint', str(tmp_path), '--outf', str(tmp_path / 'g.txt')],
              r'not a model directory .*, nor a checkpoint file \(--checkpoint\)')]
    for argv, message in cases:
        with pytest.raises(errors.UserError, match=message):
            generate.main(['--data', corpus, *argv, '--cpu'])


def test_the_unknown_prompt_word_note_goes_to_standard_error(capsys):
    assert generate.prompt_ids('the zyzzyva', {'<unk>': 0, 'the': 1}) == [1, 0]
    captured = capsys.readouterr()
    assert captured.out == '' and 'zyzzyva' in captured.err
