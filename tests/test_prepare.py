"""prepare.py: raw text into train/valid/test, as words, characters or byte-pair subwords."""
import json
import math
import os
import subprocess
import sys

import pytest

import data
import errors
import prepare
from conftest import MIRROR, REPO, TINY, patch_everywhere, read_jsonl, tiny_run, write_corpus


def write(path, text):
    with open(path, 'wb') as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    return str(path)


def numbered_text(n, words_a_line=3):
    return ''.join(' '.join(f'w{i}x{j}' for j in range(words_a_line)) + '\n' for i in range(n))


def splits_of(folder):
    return {split: open(os.path.join(folder, split + '.txt'), 'rb').read() for split in data.SPLITS}


def test_the_splits_put_together_are_the_text(tmp_path, capsys):
    # \r\n and \r line ends, blank lines, odd whitespace: every byte comes back, in order
    text = numbered_text(97).replace('w5x0', ' \t w5x0').replace('w7x2\n', 'w7x2\r\n').replace('w9x1\n', 'w9x1\n\n\r')
    source = write(tmp_path / 'text.txt', text)
    out = str(tmp_path / 'corpus')
    assert prepare.main([source, '--out', out]) == 0
    written = splits_of(out)
    assert written['train'] + written['valid'] + written['test'] == text.encode()
    lines = text.encode().splitlines(keepends=True)
    # the last lines are test, the ones before them valid: contiguous blocks at the end
    n = len(open(source, newline='').readlines())
    n_test = n_valid = round(n * 0.05)
    assert written['test'].count(b'\n') == n_test and written['valid'].count(b'\n') == n_valid
    assert written['test'].endswith(lines[-1]) and written['train'].startswith(lines[0])
    shown = capsys.readouterr().out
    corpus = data.Corpus(out)
    for split in data.SPLITS:  # what it says it wrote is what Corpus reads
        counts = json.load(open(os.path.join(out, prepare.MARKER)))['splits'][split]
        assert counts['tokens'] == len(getattr(corpus, split))
        assert f'{counts["lines"]:>10,} lines | {counts["tokens"]:>12,} tokens' in shown


def test_several_files_are_one_text_in_order(tmp_path):
    first = write(tmp_path / 'a.txt', '\ufeffone two\nthree')  # a byte-order mark, no line end at the end
    second = write(tmp_path / 'b.txt', numbered_text(40))
    out = str(tmp_path / 'corpus')
    prepare.main([first, second, '--out', out, '--valid-fraction', '0.1', '--test-fraction', '0.2'])
    written = splits_of(out)
    # the mark is dropped (it is not text), a line end ends the first file's last line: no line joins another
    assert written['train'] + written['valid'] + written['test'] == ('one two\nthree\n' + numbered_text(40)).encode()
    assert (written['valid'].count(b'\n'), written['test'].count(b'\n')) == (4, 8)  # of 42 lines


@pytest.mark.slow
def test_characters_are_written_as_pennchar_is(tmp_path, ptb_mirror):
    for split in data.SPLITS:
        words = open(os.path.join(ptb_mirror, split + '.txt')).readlines()
        chars = open(os.path.join(MIRROR, 'pennchar', split + '.txt')).read()
        assert chars.endswith('\n ')  # pennchar's stray last space (one more line, of no character)
        assert ''.join(prepare.char_lines(words)) == chars[:-1]
    words = b''.join(open(os.path.join(ptb_mirror, 'train.txt'), 'rb').readlines()[:200])
    chars = open(os.path.join(MIRROR, 'pennchar', 'train.txt')).readlines()[:200]
    out = str(tmp_path / 'chars')
    prepare.main([write(tmp_path / 'ptb.txt', words), '--out', out, '--tokenizer', 'chars'])
    written = [line for split in data.SPLITS for line in open(os.path.join(out, split + '.txt')).readlines()]
    assert [line.split() for line in written] == [line.split() for line in chars]


def test_characters_mark_spaces_and_underscores():
    assert data.char_tokens('  a_b\tc  d \n') == ['a', '\\_', 'b', '_', 'c', '_', 'd']
    assert prepare.char_lines(['ab c\n', '\n', 'd\n']) == ['a b _ c \n', ' \n', ' d \n']


def test_bpe_is_learnt_on_the_training_split_alone(tmp_path):
    # 'q' appears only in the last lines, which are the test split: the encoding has no piece for it
    text = numbered_text(60) + 'w1x1 quux w2x2\n' * 3
    out = str(tmp_path / 'bpe')
    prepare.main([write(tmp_path / 'text.txt', text), '--out', out, '--tokenizer', 'bpe', '--bpe-size', '40',
                  '--test-fraction', '0.05'])
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(os.path.join(out, prepare.TOKENIZER_FILE))
    assert tokenizer.get_vocab_size() == 40
    written = {split: open(os.path.join(out, split + '.txt')).read().splitlines() for split in data.SPLITS}
    assert not any('q' in piece for piece in tokenizer.get_vocab())
    assert len(written['test']) == 3 and all('<unk>' in line.split() for line in written['test'])
    assert not any('<unk>' in line for line in written['train'])
    source_lines = text.splitlines()
    for line, tokens in zip(source_lines, written['train'] + written['valid']):
        # the subwords decode back to the line's words
        assert tokenizer.decode([tokenizer.token_to_id(t) for t in tokens.split()]) == ' '.join(line.split())
    again = str(tmp_path / 'again')  # the same text, the same encoding
    prepare.main([os.path.join(str(tmp_path), 'text.txt'), '--out', again, '--tokenizer', 'bpe', '--bpe-size', '40',
                  '--test-fraction', '0.05'])
    assert splits_of(again) == splits_of(out)


def test_a_folder_it_wrote_is_rewritten_and_one_it_did_not_is_left_alone(tmp_path):
    source = write(tmp_path / 'text.txt', numbered_text(50))
    out = str(tmp_path / 'corpus')
    prepare.main([source, '--out', out, '--tokenizer', 'bpe', '--bpe-size', '30'])
    prepare.main([source, '--out', out])  # its own: rewritten, and the old tokenizer (no longer true) removed
    assert b''.join(splits_of(out).values()) == numbered_text(50).encode()
    assert not os.path.exists(os.path.join(out, prepare.TOKENIZER_FILE))
    assert json.load(open(os.path.join(out, prepare.MARKER)))['tokenizer'] == 'words'
    theirs = tmp_path / 'theirs'
    theirs.mkdir()
    write(theirs / 'train.txt', 'precious\n')
    with pytest.raises(errors.UserError, match=r"theirs: holds a corpus prepare.py did not write \(train.txt\)"):
        prepare.main([source, '--out', str(theirs)])
    assert os.listdir(theirs) == ['train.txt'] and (theirs / 'train.txt').read_text() == 'precious\n'


def test_an_input_inside_the_output_is_refused(tmp_path):
    out = tmp_path / 'corpus'
    prepare.main([write(tmp_path / 'text.txt', numbered_text(50)), '--out', str(out)])
    with pytest.raises(errors.UserError, match='which --out .* would replace'):
        prepare.main([str(out / 'train.txt'), '--out', str(out)])


def test_a_failed_write_loses_nothing_and_can_be_redone(tmp_path, monkeypatch):
    from harness import atomic_io
    source = write(tmp_path / 'text.txt', numbered_text(50))
    out = str(tmp_path / 'corpus')
    prepare.main([source, '--out', out])
    before = splits_of(out)
    real = atomic_io.atomic_write_text

    def disk_full_at_valid(text, path):
        if path.endswith('valid.txt'):
            raise errors.UserError(f'{path}: could not be written (the disk is full)')
        real(text, path)
    patch_everywhere(monkeypatch, atomic_io, 'atomic_write_text', disk_full_at_valid)
    with pytest.raises(errors.UserError, match='disk is full'):
        prepare.main([write(tmp_path / 'other.txt', numbered_text(80)), '--out', out])
    assert splits_of(out)['valid'] == before['valid']  # whole files: the old one, not half of a new one
    assert not [name for name in os.listdir(out) if name.endswith('.tmp')]
    assert json.load(open(os.path.join(out, prepare.MARKER)))['finished'] is False
    patch_everywhere(monkeypatch, atomic_io, 'atomic_write_text', real)
    prepare.main([str(tmp_path / 'other.txt'), '--out', out])  # still its own folder: redone
    assert b''.join(splits_of(out).values()) == numbered_text(80).encode()


@pytest.mark.parametrize('content, flags, message', [
    (b'', [], r'text.txt: the text is empty \(no words\)'),
    (b' \n\t\n', [], r'text.txt: the text is empty \(no words\)'),
    (b'some words\n\x00\x01\x02 binary', [], r'text.txt: a binary file, not UTF-8 text \(a NUL byte at byte 11\)'),
    (b'caf\xe9 latin-1\n', [], r'text.txt: not UTF-8 text \(invalid continuation byte at byte 3\)'),
    (numbered_text(10).encode(), ['--valid-fraction', '0.01'], r'--valid-fraction 0.01 of 10 lines leaves the valid split empty'),
    (numbered_text(10).encode(), ['--valid-fraction', '0.2', '--test-fraction', '0.04'], r'--test-fraction 0.04 of 10 lines leaves the test split empty'),
    (numbered_text(10).encode(), ['--valid-fraction', '0.5', '--test-fraction', '0.5'], 'leave no training split'),
    (numbered_text(10).encode(), ['--valid-fraction', '0'], r'--valid-fraction must be between 0 and 1'),
    (numbered_text(30).encode(), ['--tokenizer', 'bpe', '--bpe-size', '5000'],
     r'--bpe-size 5000: the training split allows at most \d+ subword tokens'),
    (numbered_text(10).encode(), ['--tokenizer', 'bpe'], r'--tokenizer bpe needs --bpe-size N'),
    (numbered_text(10).encode(), ['--bpe-size', '50'], r'--bpe-size is for --tokenizer bpe, not words'),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, content, flags, message):
    source = write(tmp_path / 'text.txt', content)
    out = tmp_path / 'corpus'
    with pytest.raises(errors.UserError, match=message):
        prepare.main([source, '--out', str(out), *flags])
    assert not out.exists()


def test_a_missing_file_and_an_out_that_is_a_file(tmp_path):
    with pytest.raises(errors.UserError, match='nope.txt: text file not found'):
        prepare.main([str(tmp_path / 'nope.txt'), '--out', str(tmp_path / 'c')])
    source = write(tmp_path / 'text.txt', numbered_text(30))
    with pytest.raises(errors.UserError, match='text.txt: is a file, not a folder'):
        prepare.main([source, '--out', source])


@pytest.mark.slow
def test_the_script_reports_bad_input_in_one_line(tmp_path):
    source = write(tmp_path / 'text.txt', b'')
    done = subprocess.run([sys.executable, os.path.join(REPO, 'prepare.py'), source, '--out', str(tmp_path / 'c')],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f'error: {source}: the text is empty (no words)\n'


@pytest.mark.slow
def test_own_text_prepared_trained_and_scored(tmp_path, capsys):
    """prepare.py -> main.py with a narrowed vocabulary -> score.py gives main.py's test figure; the later
    scripts read the corpus with the checkpoint's vocabulary options (generate.py, finetune.py)."""
    import finetune
    import generate
    import main as train_script
    import score
    from harness import checkpoint
    raw = write_corpus(str(tmp_path / 'raw'), (300, 1, 1))
    text = open(os.path.join(raw, 'train.txt')).read() + 'a zebra sees the tree . \n' * 20  # new words at the end
    out = str(tmp_path / 'corpus')
    assert prepare.main([write(tmp_path / 'text.txt', text), '--out', out, '--test-fraction', '0.1']) == 0
    save = str(tmp_path / 'model.pt')
    assert train_script.main(tiny_run(out, save, extra=['--vocab-from', 'train', '--min-count', '2'])) == 0
    ckpt = checkpoint.load_checkpoint(save)
    assert checkpoint.vocabulary_options(ckpt) == {'vocab_from': 'train', 'min_count': 2, 'max_vocab': None}
    assert ckpt['idx2word'] == data.Corpus(out, vocab_from='train', min_count=2).dictionary.idx2word
    assert 'zebra' not in ckpt['idx2word'] and '<unk>' in ckpt['idx2word']
    capsys.readouterr()
    assert score.main(['--checkpoint', save, '--text', os.path.join(out, 'test.txt'), '--json', '--cpu']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['oov'] == 20  # zebra: the last 20 of the test split's 32 lines
    assert summary['loss'] == pytest.approx(read_jsonl(save + '.jsonl')[-1]['test_loss'], rel=1e-6)
    assert generate.main(['--data', out, '--checkpoint', save, '--outf', str(tmp_path / 'gen.txt'),
                          '--words', '5', '--cpu']) == 0
    tuned = str(tmp_path / 'tuned.pt')
    assert finetune.main(['--data', out, '--save', save, '--out', tuned, '--epochs', '1', *TINY]) == 0
    assert checkpoint.vocabulary_options(checkpoint.load_checkpoint(tuned)) == checkpoint.vocabulary_options(ckpt)



def test_bpe_without_the_tokenizers_package_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tokenizers', None)  # import tokenizers now fails
    with pytest.raises(errors.UserError, match=r'needs the Hugging Face tokenizers package: .*requirements-corpus.txt'):
        prepare.main([write(tmp_path / 'text.txt', numbered_text(30)), '--out', str(tmp_path / 'c'),
                      '--tokenizer', 'bpe', '--bpe-size', '20'])
    assert not (tmp_path / 'c').exists()


@pytest.mark.slow
@pytest.mark.parametrize('tokenizer', [['bpe', '--bpe-size', '40'], ['chars']], ids=['bpe', 'chars'])
def test_a_corpus_of_subwords_or_characters_scores_raw_text_and_generates_plain_words(tmp_path, capsys, tokenizer):
    """prepare.py --tokenizer bpe / chars -> main.py, whose checkpoint records the tokenizer -> score.py on
    the raw text of the test split gives main.py's test figure, per token and per word; generate.py
    writes plain words."""
    import generate
    import main as train_script
    import score
    from harness import checkpoint
    raw = write_corpus(str(tmp_path / 'raw'), (300, 1, 1))
    text = open(os.path.join(raw, 'train.txt')).read()
    out = str(tmp_path / 'bpe')
    prepare.main([write(tmp_path / 'text.txt', text), '--out', out, '--tokenizer', *tokenizer, '--test-fraction', '0.1'])
    save = str(tmp_path / 'model.pt')
    assert train_script.main(tiny_run(out, save)) == 0
    ckpt = checkpoint.load_checkpoint(save)
    assert ckpt['tokenizer'] == open(os.path.join(out, 'tokenizer.json')).read()
    raw_test = tmp_path / 'raw_test.txt'  # the test split's lines as they were before prepare.py encoded them
    raw_test.write_text(''.join(text.splitlines(keepends=True)[-30:]))
    test_loss = read_jsonl(save + '.jsonl')[-1]['test_loss']
    capsys.readouterr()
    for argv in ([str(raw_test)], [os.path.join(out, 'test.txt'), '--pretokenized']):
        assert score.main(['--checkpoint', save, '--json', '--cpu', '--text', *argv]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary['loss'] == pytest.approx(test_loss, rel=1e-6)
        assert summary['tokens'] == len(open(os.path.join(out, 'test.txt')).read().split()) + 30
    assert score.main(['--checkpoint', save, '--json', '--cpu', '--text', str(raw_test)]) == 0
    summary = json.loads(capsys.readouterr().out)
    words = len(raw_test.read_text().split()) + 30
    assert summary['words'] == words and summary['word_loss'] == pytest.approx(test_loss * summary['tokens'] / words)
    assert summary['word_ppl'] == pytest.approx(math.exp(summary['word_loss']))
    generated = tmp_path / 'gen.txt'
    assert generate.main(['--data', out, '--checkpoint', save, '--outf', str(generated), '--words', '60', '--cpu',
                          '--prompt', 'the cat']) == 0
    written = generated.read_text()
    assert written.startswith('the cat') and not {'\u2581', '<eos>', '\\_'} & set(written.split())
    assert '\u2581' not in written and (tokenizer == ['bpe', '--bpe-size', '40'] or ' _ ' not in written)


def test_tokens_become_plain_text(tmp_path):
    out = str(tmp_path / 'bpe')
    prepare.main([write(tmp_path / 'text.txt', numbered_text(30)), '--out', out, '--tokenizer', 'bpe', '--bpe-size', '30'])
    subwords = data.corpus_tokenizer(open(os.path.join(out, prepare.TOKENIZER_FILE)).read())
    assert [subwords.plain_text(t, start) for t, start in
            (('\u2581the', True), ('\u2581ca', False), ('t', False), ('<eos>', False))] == ['the', ' ca', 't', '\n']
    chars = data.corpus_tokenizer(data.CHARS_TOKENIZER)
    tokens = chars.encode([' a_b  c '])[0] + ['<eos>']
    assert ''.join(chars.plain_text(t, False) for t in tokens) == 'a_b c\n'


def test_main_refuses_a_bad_vocabulary_option_in_one_line(tmp_path, capsys):
    """Refused as argparse parses the flag, before any file is claimed, naming the flag."""
    import main as train_script
    corpus = write_corpus(str(tmp_path / 'c'), (40, 10, 10))
    with pytest.raises(SystemExit) as exit:
        train_script.main(tiny_run(corpus, str(tmp_path / 'm.pt'), extra=['--min-count', '0']))
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        'error: argument --min-count: min_count must be a positive integer, got 0')
    assert not os.path.exists(str(tmp_path / 'm.pt.lock'))
