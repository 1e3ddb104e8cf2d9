"""The corpus cache: a corpus folder tokenized once and kept as `corpus.<content sha1>.pt` beside its
files (tensors and strings, no pickled code), read back in seconds; data.Corpus does the reading.
"""
import hashlib
import os
from collections import Counter

import torch

import data
from errors import UserError, first_line
from . import atomic_io


def content_key(path):
    """sha1 over the three split files' bytes: the cache follows the content, not the path. Read as
    Corpus reads them (which computes the same key over the bytes it tokenized)."""
    digest = hashlib.sha1()
    for split in data.SPLITS:
        name = os.path.join(path, split + '.txt')
        data.check_split_file(name)
        with open(name, 'rb') as f:
            reader = data.HashingReader(f, digest)
            buffer = bytearray(1 << 20)
            while reader.readinto(buffer):
                pass
            reader.finish()
    return digest.hexdigest()[:16]


def cache_name(path, key, options):
    """The cache file of the text whose content key is `key` read with the vocabulary options `options`:
    `corpus.<key>.pt` for the original's vocabulary (the name caches always had), else
    `corpus.<key>.<options>.pt`, e.g. `corpus.<key>.train-min3-max10000.pt`."""
    if options == data.DEFAULT_VOCABULARY:
        return os.path.join(path, f'corpus.{key}.pt')
    tag = options['vocab_from'] + f'-min{options["min_count"]}'
    if options['max_vocab'] is not None:
        tag += f'-max{options["max_vocab"]}'
    return os.path.join(path, f'corpus.{key}.{tag}.pt')


def load_corpus(path, use_cache=True, log=print, **vocabulary):
    """data.Corpus(path, **vocabulary), cached as `path/corpus.<content sha1>[.<options>].pt` (tensors
    and strings, no pickled code); `vocabulary` holds data.Corpus's vocabulary options.

    Tokenizing WikiText-103 takes minutes; the cache makes later runs start in seconds. A cache whose
    contents do not match the digest stored in it (damaged, or from older code) is said so and
    rebuilt, never used. If the folder is read-only (or marked so), or the cache cannot be written
    (a full disk), the corpus is simply rebuilt each time.
    """
    if not os.path.isdir(path):
        raise data.DataError(f'{path}: data folder not found (run ./getdata.sh first?)')
    options = data.vocabulary_options(**vocabulary)
    cache = cache_name(path, content_key(path), options)  # what the files hold now
    if use_cache and os.path.isfile(cache):
        corpus = read_cache(cache, options, log)
        if corpus is not None:
            log(f'Loading cached dataset {cache}')
            corpus.tokenizer = data.read_tokenizer(path)
            return corpus
    log('Producing dataset...')
    corpus = data.Corpus(path, **options)
    # Named after the bytes Corpus read: a file that changed since _content_key read it is cached under
    # its new content's name, never under the old one.
    cache = cache_name(path, corpus.content_key, options)
    # A folder marked read-only (a shared copy of the data) is left alone, even when running as root.
    if use_cache and os.stat(path).st_mode & 0o222:
        counts = torch.tensor([corpus.dictionary.counter[i] for i in range(len(corpus.dictionary))])
        try:
            contents = {'idx2word': corpus.dictionary.idx2word, 'counts': counts, 'vocabulary_options': options,
                        **{split: getattr(corpus, split) for split in data.SPLITS}}
            atomic_io.atomic_torch_save(atomic_io.with_digest(contents), cache)
        except (UserError, OSError) as e:
            log(f'note: corpus cache not written: {e}')
    return corpus


def read_cache(cache, options, log):
    """The corpus a cache file holds, or None (with a note) when it is not one written intact with the
    vocabulary options `options` (a cache written before the options existed holds the default's)."""
    try:
        saved = torch.load(cache, weights_only=True)
        if not atomic_io.digest_matches(saved):
            raise ValueError('no digest, or one that does not match')
        if saved.get('vocabulary_options', data.DEFAULT_VOCABULARY) != options:
            raise ValueError(f'written with the vocabulary options {saved.get("vocabulary_options")}')
        corpus = data.Corpus(**options)
        dictionary = corpus.dictionary
        dictionary.idx2word = list(saved['idx2word'])
        dictionary.word2idx = {w: i for i, w in enumerate(dictionary.idx2word)}
        dictionary.counter = Counter(dict(enumerate(saved['counts'].tolist())))
        dictionary.total = int(saved['counts'].sum())
        for split in data.SPLITS:
            setattr(corpus, split, saved[split])
        return corpus
    except Exception as e:  # a damaged or outdated cache is rebuilt, never trusted
        log(f'note: {cache}: damaged or outdated corpus cache ({first_line(e)}); rebuilding it')
        return None


def corpus_digest(corpus):
    """The content digest of a loaded corpus (vocabulary and the three streams): ranks of one run
    compare it at start-up, since the same --data path may hold other text on another machine."""
    return atomic_io.content_digest({'idx2word': corpus.dictionary.idx2word,
                                      **{split: getattr(corpus, split) for split in data.SPLITS}})
