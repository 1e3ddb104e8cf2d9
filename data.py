"""Word-level corpora: a vocabulary and the three splits as streams of word ids.

Every line of a split is `line.split() + ['<eos>']`; one vocabulary is built over train, valid and
test in that order (so word ids are in order of first appearance). A UTF-8 byte-order mark at the start
of a file is not text and is dropped (it would otherwise be a word of its own).
"""
import codecs
import hashlib
import io
import os
from collections import Counter

import torch


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
    """`Corpus(path)` reads path/{train,valid,test}.txt into `.train`, `.valid`, `.test` (1-D long);
    `.content_key` is the digest (_content_key's) of the bytes it read."""

    def __init__(self, path=None):
        self.dictionary = Dictionary()
        self.content_key = None
        if path is not None:
            digest = hashlib.sha1()
            for split in SPLITS:
                setattr(self, split, self.tokenize(os.path.join(path, split + '.txt'), digest))
            self.content_key = digest.hexdigest()[:16]

    def tokenize(self, path, digest=None):
        """The word ids of one split file; its bytes, as read, go into `digest` (see _content_key)."""
        check_split_file(path)
        ids = []
        try:
            with open(path, 'rb') as f:
                reader = HashingReader(f, digest)
                # utf-8-sig: a leading byte-order mark is dropped; lines are split as open() in text mode does.
                for line in io.TextIOWrapper(io.BufferedReader(reader), encoding='utf-8-sig'):
                    ids.extend(self.dictionary.add_word(w) for w in line_words(line))
                reader.finish()
        except UnicodeDecodeError:
            offset, reason = _first_bad_byte(path)
            raise DataError(f'{path}: not UTF-8 text ({reason} at byte {offset})') from None
        if not ids or os.path.getsize(path) == 0:
            raise DataError(f'{path}: file is empty')
        return torch.tensor(ids, dtype=torch.long)


def line_words(line):
    """The tokens of one line of text, as every corpus file is read: its whitespace-separated words, then <eos>."""
    return line.split() + ['<eos>']


def read_text(raw, name):
    """The lines of a text given as bytes (a file's, or standard input's), each as line_words gives it.
    Read as Corpus reads a split: a leading byte-order mark dropped, lines split as open() in text mode
    splits them. A DataError naming `name` when the bytes are not UTF-8 (with the offset of the first
    bad byte) or hold no word at all."""
    try:
        raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise DataError(f'{name}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    lines = [line_words(line) for line in io.TextIOWrapper(io.BytesIO(raw), encoding='utf-8-sig')]
    if not any(len(words) > 1 for words in lines):
        raise DataError(f'{name}: the text is empty (no words)')
    return lines


def encode(words, word2idx, unknown='<unk>'):
    """(ids, unknown flags) of `words` in a vocabulary: a word it lacks becomes `unknown` (and is flagged);
    a DataError naming the first such word when the vocabulary lacks `unknown` too."""
    ids, flags = [], []
    for word in words:
        known = word in word2idx
        if not known and unknown not in word2idx:
            raise DataError(f'{word!r} is not in the vocabulary, which has no {unknown!r} to stand for it')
        ids.append(word2idx[word] if known else word2idx[unknown])
        flags.append(not known)
    return ids, flags


class HashingReader(io.RawIOBase):
    """A binary file read through: every byte read also goes into `digest` (when one is given), so that
    the corpus cache is named after the very bytes that were tokenized, not after an earlier read."""

    def __init__(self, f, digest):
        self.f, self.digest, self.head = f, digest, b''

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.f.readinto(buffer)
        if n:
            chunk = bytes(memoryview(buffer)[:n])
            if self.digest is not None:
                self.digest.update(chunk)
            if len(self.head) < len(codecs.BOM_UTF8):
                self.head += chunk[:len(codecs.BOM_UTF8) - len(self.head)]
        return n

    def finish(self):
        """Ends one file's part of the digest. A file that starts with a byte-order mark is marked as
        such: caches written before the mark was dropped (holding it as a word) never match again."""
        if self.digest is not None:
            if self.head == codecs.BOM_UTF8:
                self.digest.update(b'\0utf-8 byte-order mark dropped')
            self.digest.update(b'\0')


def _first_bad_byte(path):
    """(offset from the start of the file, reason) of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder('utf-8')()
    offset = 0
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                return offset - pending + e.start, e.reason
            offset += len(block)
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(b'', final=True)
        except UnicodeDecodeError as e:
            return offset - pending + e.start, e.reason
    return offset, 'unexpected end of data'


def check_split_file(path):
    if os.path.isdir(path):
        raise DataError(f'{path}: is a folder, not a split file (the corpus folder holds train.txt, valid.txt, test.txt)')
    if not os.path.isfile(path):
        raise DataError(f'{path}: file not found')
