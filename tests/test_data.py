import os

import pytest
import torch

import data


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
    first = data.load_corpus(tiny_corpus, log=lambda *a: None)
    caches = [f for f in os.listdir(tiny_corpus) if f.startswith('corpus.')]
    assert len(caches) == 1
    again = data.load_corpus(tiny_corpus, log=lambda *a: None)
    assert torch.equal(first.train, again.train) and first.dictionary.idx2word == again.dictionary.idx2word
    assert first.dictionary.counter == again.dictionary.counter and first.dictionary.total == again.dictionary.total
    # Editing a file must not reuse the stale cache.
    with open(os.path.join(tiny_corpus, 'valid.txt'), 'a') as f:
        f.write('brand new words\n')
    edited = data.load_corpus(tiny_corpus, log=lambda *a: None)
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
        data.load_corpus(tiny_corpus, use_cache=False, log=lambda *a: None)


def test_missing_folder(tmp_path):
    with pytest.raises(data.DataError, match='not found'):
        data.load_corpus(str(tmp_path / 'nope'))


def test_read_only_folder_gets_no_cache(tiny_corpus):
    os.chmod(tiny_corpus, 0o555)
    try:
        data.load_corpus(tiny_corpus, log=lambda *a: None)
        assert not [f for f in os.listdir(tiny_corpus) if f.startswith('corpus.')]
    finally:
        os.chmod(tiny_corpus, 0o755)
