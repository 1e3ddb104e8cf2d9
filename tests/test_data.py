import os
import shutil

import pytest
import torch

from harness import run_log
import data
from harness import corpus_cache
import errors
from conftest import read_jsonl
from reliability_helpers import disk_full, temporaries, train


def test_ptb_counts(ptb_mirror):
    corpus = data.Corpus(ptb_mirror)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
    assert len(corpus.dictionary) == 10000


def test_wikitext2_counts(wt2_mirror):
    # The figures published with the dataset mirror: split + one <eos> a line, one vocabulary.
    corpus = data.Corpus(wt2_mirror)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (2088628, 217646, 245569)
    assert len(corpus.dictionary) == 33278


def test_eos_and_vocabulary_order(tmp_path):
    for name, text in (('train', 'a b\nc\n'), ('valid', 'b d\n'), ('test', 'e\n')):
        (tmp_path / f'{name}.txt').write_text(text)
    corpus = data.Corpus(str(tmp_path))
    words = corpus.dictionary.idx2word
    assert words == ['a', 'b', '<eos>', 'c', 'd', 'e']  # first appearance, train then valid then test
    assert [words[i] for i in corpus.train] == ['a', 'b', '<eos>', 'c', '<eos>']
    assert [words[i] for i in corpus.valid] == ['b', 'd', '<eos>']
    assert corpus.dictionary.counter[corpus.dictionary.word2idx['b']] == 2


def test_cache_is_keyed_on_content(tiny_corpus):
    first = corpus_cache.load_corpus(tiny_corpus, log=lambda *a: None)
    caches = [f for f in os.listdir(tiny_corpus) if f.startswith('corpus.')]
    assert len(caches) == 1
    again = corpus_cache.load_corpus(tiny_corpus, log=lambda *a: None)
    assert torch.equal(first.train, again.train) and first.dictionary.idx2word == again.dictionary.idx2word
    assert first.dictionary.counter == again.dictionary.counter and first.dictionary.total == again.dictionary.total
    # Editing a file must not reuse the stale cache.
    with open(os.path.join(tiny_corpus, 'valid.txt'), 'a') as f:
        f.write('brand new words\n')
    edited = corpus_cache.load_corpus(tiny_corpus, log=lambda *a: None)
    assert 'brand' in edited.dictionary.word2idx
    assert len(edited.valid) == len(first.valid) + 4
    # The cache loads without pickled code.
    for name in os.listdir(tiny_corpus):
        if name.startswith('corpus.'):
            torch.load(os.path.join(tiny_corpus, name), weights_only=True)


@pytest.mark.parametrize('problem', ['missing', 'empty', 'binary'])
def test_bad_files_are_clear_errors(tiny_corpus, problem):
    path = os.path.join(tiny_corpus, 'valid.txt')
    if problem == 'missing':
        os.remove(path)
    elif problem == 'empty':
        open(path, 'w').close()
    else:
        with open(path, 'wb') as f:
            f.write(b'\xff\xfe\x00 broken')
    with pytest.raises(data.DataError, match='valid.txt'):
        corpus_cache.load_corpus(tiny_corpus, use_cache=False, log=lambda *a: None)


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match='not found'):
        corpus_cache.load_corpus(str(tmp_path / 'nope'))


def test_read_only_folder_gets_no_cache(tiny_corpus):
    os.chmod(tiny_corpus, 0o555)
    try:
        corpus_cache.load_corpus(tiny_corpus, log=lambda *a: None)
        assert not [f for f in os.listdir(tiny_corpus) if f.startswith('corpus.')]
    finally:
        os.chmod(tiny_corpus, 0o755)


# ---------------------------------------------------------------------------------------------
# The corpus cache

def test_a_corpus_cache_with_a_swapped_vocabulary_is_rebuilt(small_corpus):
    corpus_cache.load_corpus(small_corpus, log=lambda *a: None)
    cache, = [os.path.join(small_corpus, f) for f in os.listdir(small_corpus) if f.startswith('corpus.')]
    saved = torch.load(cache, weights_only=True)
    saved['idx2word'][0], saved['idx2word'][1] = saved['idx2word'][1], saved['idx2word'][0]
    torch.save(saved, cache)
    notes = []
    corpus = corpus_cache.load_corpus(small_corpus, log=notes.append)
    assert corpus.dictionary.idx2word == data.Corpus(small_corpus).dictionary.idx2word
    assert any(cache in note for note in notes)  # says which file it did not trust
    again = corpus_cache.load_corpus(small_corpus, log=lambda *a: None)  # and the rebuilt cache is good
    assert again.dictionary.idx2word == corpus.dictionary.idx2word


def test_the_corpus_cache_is_named_after_the_text_that_was_read(small_corpus, monkeypatch):
    train_file = os.path.join(small_corpus, 'train.txt')
    old_text = open(train_file).read()
    real_key = corpus_cache.content_key

    def split_changes_once_hashed(path):  # another process rewrites train.txt in between
        key = real_key(path)
        with open(train_file, 'a') as f:
            f.write(' a brand new line . \n')
        return key
    monkeypatch.setattr(corpus_cache, 'content_key', split_changes_once_hashed)
    corpus_cache.load_corpus(small_corpus, log=lambda *a: None)
    monkeypatch.setattr(corpus_cache, 'content_key', real_key)
    cache, = [name for name in os.listdir(small_corpus) if name.startswith('corpus.')]
    assert cache == f'corpus.{real_key(small_corpus)}.pt'  # the new text's name
    with open(train_file, 'w') as f:  # back to the old text: its corpus, not the new one's
        f.write(old_text)
    loaded = corpus_cache.load_corpus(small_corpus, log=lambda *a: None)
    assert 'brand' not in loaded.dictionary.idx2word
    assert loaded.dictionary.idx2word == data.Corpus(small_corpus).dictionary.idx2word


def test_a_full_disk_while_caching_the_corpus_only_skips_the_cache(small_corpus, monkeypatch):
    monkeypatch.setattr(torch, 'save', disk_full)
    notes = []
    corpus = corpus_cache.load_corpus(small_corpus, log=notes.append)
    assert len(corpus.train) > 0
    assert not [f for f in os.listdir(small_corpus) if f.startswith('corpus.')] and not temporaries(small_corpus)


# ---------------------------------------------------------------------------------------------
# Byte order marks, UTF-8 errors, splits too small

def test_a_utf8_byte_order_mark_is_not_a_word(tmp_path, small_corpus):
    marked = str(tmp_path / 'marked')
    shutil.copytree(small_corpus, marked)
    for split in data.SPLITS:
        name = os.path.join(marked, split + '.txt')
        text = open(name, 'rb').read()
        with open(name, 'wb') as f:
            f.write(b'\xef\xbb\xbf' + text)
    plain, with_mark = data.Corpus(small_corpus), data.Corpus(marked)
    assert with_mark.dictionary.idx2word == plain.dictionary.idx2word
    assert all(torch.equal(getattr(with_mark, s), getattr(plain, s)) for s in data.SPLITS)
    # An old cache of the marked text (the mark a word) is not taken for the new reading.
    assert corpus_cache.content_key(marked) != corpus_cache.content_key(small_corpus)
    assert corpus_cache.load_corpus(marked, log=lambda *a: None).dictionary.idx2word == plain.dictionary.idx2word


def corpus_of(folder, train_lines):
    """Lines of 3 words + <eos> = 4 tokens each; valid and test big enough for their batch sizes."""
    os.makedirs(folder)
    for name, n in (('train', train_lines), ('valid', 10), ('test', 10)):
        with open(os.path.join(folder, name + '.txt'), 'w') as f:
            f.write(' a b c \n' * n)
    return folder


@pytest.mark.parametrize('offset', [5, 8191, 8192, 10000, (1 << 20) + 3])
def test_the_utf8_error_names_the_offset_from_the_start_of_the_file(tmp_path, offset):
    folder = corpus_of(str(tmp_path / 'c'), 3)
    name = os.path.join(folder, 'valid.txt')
    text = ('a b \u00e9t\u00e9 c \n' * (offset // 12 + 1)).encode()[:offset]
    text = text[:len(text.decode('utf-8', 'ignore').encode())]  # no character cut at the end
    text += b'x' * (offset - len(text)) + b'\xff more words \n'
    with open(name, 'wb') as f:
        f.write(text)
    with pytest.raises(data.DataError, match=rf'valid.txt: not UTF-8 text \(invalid start byte at byte {offset}\)'):
        data.Corpus(folder)


def test_a_train_split_needs_at_least_one_batch(tmp_path):
    # Batch size 4: 8 tokens make 2 rows, which train nothing; 12 make 3 rows, one batch.
    with pytest.raises(errors.UserError, match=r'train.txt: 8 tokens are too few'):
        train(corpus_of(str(tmp_path / 'two_rows'), 2), str(tmp_path / 'a.pt'))
    save = str(tmp_path / 'b.pt')
    assert train(corpus_of(str(tmp_path / 'three_rows'), 3), save) == 0
    assert read_jsonl(run_log.json_log_path(save))[0]['train_loss'] > 0


def test_a_split_that_is_a_folder_is_named_as_such(tmp_path):
    folder = tmp_path / 'c'
    folder.mkdir()
    (folder / 'train.txt').write_text('a b c\n')
    (folder / 'valid.txt').mkdir()
    (folder / 'test.txt').write_text('a b\n')
    with pytest.raises(data.DataError, match=r'valid\.txt: is a folder, not a split file'):
        corpus_cache.load_corpus(str(folder))


# ---------------------------------------------------------------------------------------------
# Fast tokenizing: the same ids as the plain loop over lines

def reference_corpus(folder):
    """The corpus as the original read it: every line of every split word by word through add_word."""
    dictionary, streams = data.Dictionary(), {}
    for split in data.SPLITS:
        with open(os.path.join(folder, split + '.txt'), encoding='utf-8-sig') as f:
            streams[split] = [dictionary.add_word(w) for line in f for w in line.split() + ['<eos>']]
    return dictionary, streams


ODD_TEXT = {
    # a byte-order mark, \r\n and \r line ends, blank lines, tabs, form feeds, non-breaking and Unicode
    # line-separator whitespace inside a line, a literal <eos>, no line end at the end of the file
    'train': '\ufeffa b\r\nc\td\n\n  e\x0cf \rg\u2028h\x85i\u00a0j <eos> k\n\u00e9t\u00e9 a',
    'valid': 'a  z\n\r\n\rq',
    'test': '\n\nb y\n',
}


@pytest.mark.parametrize('read_chars', [1, 2, 3, 7, data.READ_CHARS])
def test_fast_tokenizing_gives_the_ids_of_the_plain_loop(tmp_path, monkeypatch, read_chars):
    for split, text in ODD_TEXT.items():
        (tmp_path / f'{split}.txt').write_bytes(text.encode())
    monkeypatch.setattr(data, 'READ_CHARS', read_chars)  # blocks cut everywhere, \r\n included
    dictionary, streams = reference_corpus(str(tmp_path))
    corpus = data.Corpus(str(tmp_path))
    assert corpus.dictionary.idx2word == dictionary.idx2word
    assert corpus.dictionary.word2idx == dictionary.word2idx
    for split in data.SPLITS:
        assert getattr(corpus, split).tolist() == streams[split]
        assert getattr(corpus, split).dtype == torch.long
    assert corpus.dictionary.counter == dictionary.counter and corpus.dictionary.total == dictionary.total
    assert corpus.content_key == corpus_cache.content_key(str(tmp_path))


@pytest.mark.slow
def test_fast_tokenizing_matches_the_plain_loop_on_ptb(ptb_mirror):
    dictionary, streams = reference_corpus(ptb_mirror)
    corpus = data.Corpus(ptb_mirror)
    assert corpus.dictionary.idx2word == dictionary.idx2word
    assert all(getattr(corpus, s).tolist() == streams[s] for s in data.SPLITS)


# ---------------------------------------------------------------------------------------------
# Vocabulary options

def three_splits(folder, train, valid, test):
    os.makedirs(folder, exist_ok=True)
    for split, text in zip(data.SPLITS, (train, valid, test)):
        with open(os.path.join(folder, split + '.txt'), 'w') as f:
            f.write(text)
    return folder


def words_of(corpus, split):
    return [corpus.dictionary.idx2word[i] for i in getattr(corpus, split).tolist()]


def test_vocabulary_from_train_only(tmp_path):
    folder = three_splits(str(tmp_path), 'a b a\nc\n', 'b d\n', 'e a\n')
    corpus = data.Corpus(folder, vocab_from='train')
    assert corpus.dictionary.idx2word == ['a', 'b', '<eos>', 'c', '<unk>']  # <unk> appended: the text has none
    assert words_of(corpus, 'train') == ['a', 'b', 'a', '<eos>', 'c', '<eos>']
    assert words_of(corpus, 'valid') == ['b', '<unk>', '<eos>']
    assert words_of(corpus, 'test') == ['<unk>', 'a', '<eos>']
    assert data.unknown_counts(corpus) == {'train': (0, 6), 'valid': (1, 3), 'test': (1, 3)}
    assert corpus.dictionary.counter[corpus.dictionary.word2idx['<unk>']] == 2
    assert corpus.dictionary.total == 12


def test_the_default_vocabulary_is_the_originals(tmp_path):
    folder = three_splits(str(tmp_path), 'a b a\nc\n', 'b d\n', 'e a\n')
    corpus = data.Corpus(folder)
    assert corpus.dictionary.idx2word == ['a', 'b', '<eos>', 'c', 'd', 'e']  # no <unk> added
    assert data.unknown_counts(corpus) == {'train': (0, 6), 'valid': (0, 3), 'test': (0, 3)}
    explicit = data.Corpus(folder, vocab_from='all', min_count=1, max_vocab=None)
    assert explicit.dictionary.idx2word == corpus.dictionary.idx2word


def test_min_count_counts_the_splits_the_vocabulary_comes_from(tmp_path):
    folder = three_splits(str(tmp_path), 'a b a\nc b\n', 'c d\n', 'c a\n')
    # over all splits: a 3, b 2, c 3, d 1, <eos> 4
    corpus = data.Corpus(folder, min_count=3)
    assert corpus.dictionary.idx2word == ['a', '<eos>', 'c', '<unk>']
    assert words_of(corpus, 'train') == ['a', '<unk>', 'a', '<eos>', 'c', '<unk>', '<eos>']
    assert words_of(corpus, 'valid') == ['c', '<unk>', '<eos>']
    # over train alone: a 2, b 2, c 1
    from_train = data.Corpus(folder, vocab_from='train', min_count=2)
    assert from_train.dictionary.idx2word == ['a', 'b', '<eos>', '<unk>']
    assert words_of(from_train, 'test') == ['<unk>', 'a', '<eos>']


def test_max_vocab_keeps_the_most_frequent_words_in_order_of_first_appearance(tmp_path):
    folder = three_splits(str(tmp_path), 'x y y z z z\nw w\n', 'y\n', 'x\n')
    # counts: x 2, y 3, z 3, w 2, <eos> 4; 4 entries = <eos>, <unk> and the two most frequent (y, z)
    corpus = data.Corpus(folder, max_vocab=4)
    assert corpus.dictionary.idx2word == ['y', 'z', '<eos>', '<unk>']
    assert words_of(corpus, 'train') == ['<unk>', 'y', 'y', 'z', 'z', 'z', '<eos>', '<unk>', '<unk>', '<eos>']
    # a tie (x and w, 2 each) goes to the word seen first
    assert data.Corpus(folder, max_vocab=5).dictionary.idx2word == ['x', 'y', 'z', '<eos>', '<unk>']
    # room for every word: nothing becomes <unk>, but <unk> is there for new text
    roomy = data.Corpus(folder, max_vocab=100)
    assert roomy.dictionary.idx2word == ['x', 'y', 'z', '<eos>', 'w', '<unk>']
    assert data.unknown_counts(roomy) == {'train': (0, 10), 'valid': (0, 2), 'test': (0, 2)}


def test_a_unk_of_the_text_is_kept_in_its_place(tmp_path):
    folder = three_splits(str(tmp_path), 'a <unk> b\nb\n', 'a c\n', 'd\n')
    corpus = data.Corpus(folder, vocab_from='train', min_count=2)
    assert corpus.dictionary.idx2word == ['<unk>', 'b', '<eos>']  # the text's <unk> kept though seen once
    assert words_of(corpus, 'valid') == ['<unk>', '<unk>', '<eos>']
    assert data.unknown_counts(corpus)['train'] == (2, 6)


@pytest.mark.parametrize('options, message', [
    ({'vocab_from': 'valid'}, 'vocab_from must be one of all, train'),
    ({'min_count': 0}, 'min_count must be a positive integer'),
    ({'max_vocab': 1}, r'max_vocab must be at least 2 \(<eos> and <unk>\)'),
])
def test_bad_vocabulary_options(tmp_path, options, message):
    folder = three_splits(str(tmp_path), 'a\n', 'a\n', 'a\n')
    with pytest.raises(errors.UserError, match=message):
        data.Corpus(folder, **options)


def test_the_corpus_cache_is_keyed_on_the_vocabulary_options(small_corpus):
    quiet = dict(log=lambda *a: None)
    full = corpus_cache.load_corpus(small_corpus, **quiet)
    narrow = corpus_cache.load_corpus(small_corpus, max_vocab=5, **quiet)
    from_train = corpus_cache.load_corpus(small_corpus, vocab_from='train', min_count=2, **quiet)
    caches = sorted(f for f in os.listdir(small_corpus) if f.startswith('corpus.'))
    assert len(caches) == 3
    assert f'corpus.{full.content_key}.pt' in caches  # the default's name is unchanged
    for options, expected in (({}, full), ({'max_vocab': 5}, narrow),
                              ({'vocab_from': 'train', 'min_count': 2}, from_train)):
        notes = []
        again = corpus_cache.load_corpus(small_corpus, log=notes.append, **options)
        assert notes and notes[0].startswith('Loading cached dataset')
        assert again.dictionary.idx2word == expected.dictionary.idx2word
        assert again.dictionary.idx2word == data.Corpus(small_corpus, **options).dictionary.idx2word
        assert all(torch.equal(getattr(again, s), getattr(expected, s)) for s in data.SPLITS)
        assert again.vocabulary_options == data.vocabulary_options(**options)
    assert len(narrow.dictionary) == 5


def test_python_data_dir_shows_what_the_corpus_holds(tmp_path, capsys):
    folder = three_splits(str(tmp_path), 'a b a\nc a\n', 'b d\n', 'e a\n')
    assert data.main([folder, '--vocab-from', 'train', '--top', '3']) == 0
    assert capsys.readouterr().out.splitlines() == [
        f'| corpus {folder}',
        '| vocabulary 5 words | vocab_from train | min_count 1 | max_vocab none',
        '| train |            7 tokens (with <eos>) | <unk> 0 (0.00%)',
        '| valid |            3 tokens (with <eos>) | <unk> 1 (33.33%)',
        '| test  |            3 tokens (with <eos>) | <unk> 1 (33.33%)',
        '| words seen once in train: 2 (40.0% of the vocabulary)',  # b and c (<unk>: 0 in train)
        '| most frequent in train: a 42.86%, <eos> 28.57%, b 14.29%',
    ]
    with pytest.raises(SystemExit):  # refused as argparse parses it, naming the flag
        data.main([folder, '--max-vocab', '1'])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        'error: argument --max-vocab: max_vocab must be at least 2 (<eos> and <unk>), got 1')
    with pytest.raises(errors.UserError, match='nope: data folder not found'):
        data.main([str(tmp_path / 'nope')])


@pytest.mark.slow
def test_the_corpus_benchmark_reads_what_it_wrote(tmp_path):
    import subprocess
    import sys
    from conftest import REPO
    done = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'corpus_bench.py'), '--tokens', '20000',
                           '--dir', str(tmp_path / 'c')], capture_output=True, text=True, check=True)
    corpus = data.Corpus(str(tmp_path / 'c'))
    tokens = sum(len(getattr(corpus, s)) for s in data.SPLITS)
    assert 19000 <= tokens <= 21000  # about the size asked
    assert f'| tokens {tokens:,} | vocabulary {len(corpus.dictionary):,} |' in done.stdout
    assert 'bytes a token' in done.stdout
