"""Word-level corpora: a vocabulary and the three splits as streams of word ids.

Every line of a split is `line.split() + ['<eos>']`; one vocabulary is built over train, valid and
test in that order (so word ids are in order of first appearance).
"""
import hashlib
import os
from collections import Counter

import torch

import checkpoint
from errors import UserError, first_line

SPLITS = ('train', 'valid', 'test')


class DataError(Exception):
    """A corpus that cannot be used; the message names the file and the problem."""


class Dictionary:
    def __init__(self):
        self.word2idx = {}
        self.idx2word = []
        self.counter = Counter()
        self.total = 0

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        token_id = self.word2idx[word]
        self.counter[token_id] += 1
        self.total += 1
        return token_id

    def __len__(self):
        return len(self.idx2word)


class Corpus:
    """`Corpus(path)` reads path/{train,valid,test}.txt into `.train`, `.valid`, `.test` (1-D long)."""

    def __init__(self, path=None):
        self.dictionary = Dictionary()
        if path is not None:
            for split in SPLITS:
                setattr(self, split, self.tokenize(os.path.join(path, split + '.txt')))

    def tokenize(self, path):
        if not os.path.isfile(path):
            raise DataError(f'{path}: file not found')
        ids = []
        try:
            with open(path, encoding='utf-8') as f:
                for line in f:
                    ids.extend(self.dictionary.add_word(w) for w in line.split() + ['<eos>'])
        except UnicodeDecodeError as e:
            raise DataError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
        if not ids or os.path.getsize(path) == 0:
            raise DataError(f'{path}: file is empty')
        return torch.tensor(ids, dtype=torch.long)


def _content_key(path):
    """sha1 over the three split files' bytes: the cache follows the content, not the path."""
    digest = hashlib.sha1()
    for split in SPLITS:
        name = os.path.join(path, split + '.txt')
        if not os.path.isfile(name):
            raise DataError(f'{name}: file not found')
        with open(name, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        digest.update(b'\0')
    return digest.hexdigest()[:16]


def load_corpus(path, use_cache=True, log=print):
    """Corpus(path), cached as `path/corpus.<content sha1>.pt` (tensors and strings, no pickled code).

    Tokenizing WikiText-103 takes minutes; the cache makes later runs start in seconds. A cache whose
    contents do not match the digest stored in it (damaged, or from older code) is said so and
    rebuilt, never used. If the folder is read-only (or marked so), or the cache cannot be written
    (a full disk), the corpus is simply rebuilt each time.
    """
    if not os.path.isdir(path):
        raise DataError(f'{path}: data folder not found (run ./getdata.sh first?)')
    cache = os.path.join(path, f'corpus.{_content_key(path)}.pt')
    if use_cache and os.path.isfile(cache):
        corpus = _read_cache(cache, log)
        if corpus is not None:
            log(f'Loading cached dataset {cache}')
            return corpus
    log('Producing dataset...')
    corpus = Corpus(path)
    # A folder marked read-only (a shared copy of the data) is left alone, even when running as root.
    if use_cache and os.stat(path).st_mode & 0o222:
        counts = torch.tensor([corpus.dictionary.counter[i] for i in range(len(corpus.dictionary))])
        try:
            contents = {'idx2word': corpus.dictionary.idx2word, 'counts': counts,
                        **{split: getattr(corpus, split) for split in SPLITS}}
            checkpoint.atomic_torch_save(checkpoint.with_digest(contents), cache)
        except (UserError, OSError) as e:
            log(f'note: corpus cache not written: {e}')
    return corpus


def _read_cache(cache, log):
    """The corpus a cache file holds, or None (with a note) when it is not one written intact."""
    try:
        saved = torch.load(cache, weights_only=True)
        if not checkpoint.digest_matches(saved):
            raise ValueError('no digest, or one that does not match')
        corpus = Corpus()
        dictionary = corpus.dictionary
        dictionary.idx2word = list(saved['idx2word'])
        dictionary.word2idx = {w: i for i, w in enumerate(dictionary.idx2word)}
        dictionary.counter = Counter(dict(enumerate(saved['counts'].tolist())))
        dictionary.total = int(saved['counts'].sum())
        for split in SPLITS:
            setattr(corpus, split, saved[split])
        return corpus
    except Exception as e:  # a damaged or outdated cache is rebuilt, never trusted
        log(f'note: {cache}: damaged or outdated corpus cache ({first_line(e)}); rebuilding it')
        return None


def corpus_digest(corpus):
    """The content digest of a loaded corpus (vocabulary and the three streams): ranks of one run
    compare it at start-up, since the same --data path may hold other text on another machine."""
    return checkpoint.content_digest({'idx2word': corpus.dictionary.idx2word,
                                      **{split: getattr(corpus, split) for split in SPLITS}})
