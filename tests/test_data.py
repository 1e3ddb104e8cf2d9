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
