"""Word-level corpora: a vocabulary and the three splits as streams of word ids.

Every line of a split is `line.split() + ['<eos>']`; one vocabulary is built over train, valid and
test in that order (so word ids are in order of first appearance). A UTF-8 byte-order mark at the start
of a file is not text and is dropped (it would otherwise be a word of its own).

That is the default vocabulary, the original's; the vocabulary options (vocab_from, min_count,
max_vocab: restrict_vocabulary) narrow it, the other words becoming <unk>. `python data.py DIR` shows
what a corpus holds (describe). docs/CORPUS.md.
"""
import array
import argparse
import codecs
import hashlib
import io
import json
import os
from collections import Counter

import torch

from errors import UserError


SPLITS = ('train', 'valid', 'test')


class DataError(UserError):
    """A corpus that cannot be used; the message names the file and the problem (or the option)."""


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

    def count_tokens(self, streams):
        """Sets .counter (tokens of each word id) and .total from the id streams of the corpus (Corpus
        does, once its three splits are read: tokenize numbers words but counts nothing)."""
        counts = torch.zeros(len(self.idx2word), dtype=torch.long)
        for stream in streams:
            counts += torch.bincount(stream, minlength=len(self.idx2word))
        self.counter = Counter(dict(enumerate(counts.tolist())))
        self.total = int(counts.sum())

    def __len__(self):
        return len(self.idx2word)


# Characters of text read at once: a MB keeps the words of one read (a list of str, ~60 bytes a word)
# small beside the id stream (8 bytes a token), and the reads few enough that their cost does not show.
READ_CHARS = 1 << 20


class Numbering(dict):
    """word -> id, where looking up a new word gives it the next id (and appends it to `words`): one
    lookup a token both numbers new words in order of first appearance and maps known ones, from C
    (map over its __getitem__). Only for reading a corpus: elsewhere an unknown word must stay one."""
    __slots__ = ('words',)

    def __init__(self, word2idx, idx2word):
        super().__init__(word2idx)
        self.words = idx2word

    def __missing__(self, word):
        token_id = self[word] = len(self.words)
        self.words.append(word)
        return token_id


class Corpus:
    """`Corpus(path)` reads path/{train,valid,test}.txt into `.train`, `.valid`, `.test` (1-D long);
    `.content_key` is the digest (_content_key's) of the bytes it read.

    The vocabulary options (see restrict_vocabulary) default to the original's rule: every word of the
    three splits, numbered in order of first appearance."""

    def __init__(self, path=None, vocab_from='all', min_count=1, max_vocab=None):
        self.dictionary = Dictionary()
        self.content_key = None
        self.vocabulary_options = vocabulary_options(vocab_from, min_count, max_vocab)
        self.tokenizer = None if path is None else read_tokenizer(path)  # the file's contents, or None
        if path is not None:
            digest = hashlib.sha1()
            for split in SPLITS:
                setattr(self, split, self.tokenize(os.path.join(path, split + '.txt'), digest))
            self.content_key = digest.hexdigest()[:16]
            self.dictionary.count_tokens(getattr(self, split) for split in SPLITS)
            restrict_vocabulary(self, **self.vocabulary_options)

    def tokenize(self, path, digest=None):
        """The word ids of one split file; its bytes, as read, go into `digest` (see _content_key).

        The same ids as `for line in file: ids += [add_word(w) for w in line_words(line)]`, read in
        blocks of whole lines: in a block every line end becomes a ' <eos> ' word, so one str.split gives
        the words of all its lines and their <eos>, and one map through a Numbering their ids."""
        check_split_file(path)
        ids = array.array('q')  # 8 bytes a token, which the tensor then shares (a list would need a copy)
        numbering = Numbering(self.dictionary.word2idx, self.dictionary.idx2word)
        try:
            with open(path, 'rb') as f:
                reader = HashingReader(f, digest)
                # utf-8-sig: a leading byte-order mark is dropped; newline=None: line ends are \n, \r\n
                # or \r, all read as \n, as open() in text mode splits lines.
                text = io.TextIOWrapper(io.BufferedReader(reader), encoding='utf-8-sig')
                while block := text.read(READ_CHARS):
                    if not block.endswith('\n'):
                        block += text.readline()  # the rest of the block's last line
                    if not block.endswith('\n'):
                        block += '\n'  # the file's last line, which has no line end, still gets its <eos>
                    ids.extend(map(numbering.__getitem__, block.replace('\n', ' <eos> ').split()))
                reader.finish()
        except UnicodeDecodeError:
            offset, reason = _first_bad_byte(path)
            raise DataError(f'{path}: not UTF-8 text ({reason} at byte {offset})') from None
        if not ids or os.path.getsize(path) == 0:
            raise DataError(f'{path}: file is empty')
        self.dictionary.word2idx = dict(numbering)
        # The tensor shares the array's memory (and keeps it alive): no second copy of the stream.
        return torch.frombuffer(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# A corpus's tokenizer (prepare.py --tokenizer chars or bpe): its file, and turning text into its
# tokens and back

TOKENIZER_FILE = 'tokenizer.json'
SPACE, UNDERSCORE = '_', '\\_'  # character tokens: a run of whitespace, a literal underscore (pennchar's marks)
CHARS_TOKENIZER = json.dumps({'type': 'chars', 'space': SPACE, 'underscore': UNDERSCORE})


def read_tokenizer(folder):
    """The contents of the corpus folder's tokenizer file (prepare.py writes it for --tokenizer chars
    and bpe), or None when it has none (a corpus of words)."""
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return f.read()


def char_tokens(text):
    """The character tokens of one line: a run of whitespace is one `_` (none at the line's ends), a
    literal `_` is `\\_` (so that the marks stay apart from the text)."""
    return [SPACE if c == ' ' else UNDERSCORE if c == '_' else c for c in ' '.join(text.split())]


class CharTokenizer:
    """Characters as tokens (prepare.py --tokenizer chars), with the marks of PTB's pennchar."""

    def encode(self, texts):
        return [char_tokens(text) for text in texts]

    def plain_text(self, token, at_line_start):
        return {SPACE: ' ', UNDERSCORE: '_', END_OF_LINE: '\n'}.get(token, token)


class SubwordTokenizer:
    """Byte-pair subwords (prepare.py --tokenizer bpe): a Hugging Face tokenizer, words split at
    whitespace and marked at their start with \u2581."""

    def __init__(self, contents):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError('subword tokens need the Hugging Face tokenizers package: '
                            'python3 -m pip install -r requirements-corpus.txt') from None
        self.tokenizer = Tokenizer.from_str(contents)

    def encode(self, texts):
        """The subword tokens of each text (a line's words; its whitespace only separates them)."""
        return [encoding.tokens for encoding in self.tokenizer.encode_batch([' '.join(t.split()) for t in texts])]

    def plain_text(self, token, at_line_start):
        if token == END_OF_LINE:
            return '\n'
        text = token.replace('\u2581', ' ')
        return text.lstrip(' ') if at_line_start else text


def corpus_tokenizer(contents):
    """The tokenizer a tokenizer file's contents describe: `.encode(texts)` gives each text's tokens, as
    prepare.py writes a line of the corpus (and score.py reads raw text); `.plain_text(token,
    at_line_start)` the text a token stands for (generate.py writes it)."""
    if json.loads(contents).get('type') == 'chars':
        return CharTokenizer()
    return SubwordTokenizer(contents)


# ---------------------------------------------------------------------------------------------
# Vocabulary options: which words get an id of their own, the others becoming <unk>

UNKNOWN, END_OF_LINE = '<unk>', '<eos>'
VOCAB_FROM = ('all', 'train')


def vocabulary_options(vocab_from='all', min_count=1, max_vocab=None):
    """The vocabulary options as a dict (what the corpus cache and a checkpoint record); a DataError
    naming the option when one is out of range."""
    if vocab_from not in VOCAB_FROM:
        raise DataError(f'vocab_from must be one of {", ".join(VOCAB_FROM)}, got {vocab_from!r}')
    if not isinstance(min_count, int) or min_count < 1:
        raise DataError(f'min_count must be a positive integer, got {min_count!r}')
    if max_vocab is not None and (not isinstance(max_vocab, int) or max_vocab < 2):
        raise DataError(f'max_vocab must be at least 2 (<eos> and <unk>), got {max_vocab!r}')
    return {'vocab_from': vocab_from, 'min_count': min_count, 'max_vocab': max_vocab}


DEFAULT_VOCABULARY = vocabulary_options()


def restrict_vocabulary(corpus, vocab_from='all', min_count=1, max_vocab=None):
    """Narrows the vocabulary of a corpus read with the original's rule (every word of the three
    splits, ids in order of first appearance) to the options', in place:

    - vocab_from='train': only the words of the training split (the others are unseen in training,
      and the valid/test figures then count them as <unk>, as a model meets new text);
    - min_count=N: only the words seen at least N times (in the splits vocab_from names);
    - max_vocab=N: at most N entries, <eos> and <unk> included: the most frequent words, a tie going
      to the word seen first.

    The words kept keep their order (so their ids stay in order of first appearance); every other
    token becomes <unk>, which is appended when the text has none. <eos> is always kept. With the
    defaults nothing changes (no <unk> is added); with any other option the vocabulary has a <unk>,
    so that a later text's new words can be scored. The id streams are rewritten in place: a large
    corpus has no room for a second copy of them."""
    options = vocabulary_options(vocab_from, min_count, max_vocab)
    if options == DEFAULT_VOCABULARY:
        return
    dictionary = corpus.dictionary
    words = dictionary.idx2word
    counts = torch.zeros(len(words), dtype=torch.long)
    for split in (SPLITS if vocab_from == 'all' else ('train',)):
        counts += torch.bincount(getattr(corpus, split), minlength=len(words))
    always = [dictionary.word2idx[w] for w in (END_OF_LINE, UNKNOWN) if w in dictionary.word2idx and counts[dictionary.word2idx[w]] > 0]
    keep = counts >= min_count
    keep[always] = True
    kept = keep.nonzero().flatten()
    if max_vocab is not None:
        slots = max_vocab - (0 if UNKNOWN in [words[i] for i in always] else 1)
        if len(kept) > slots:
            priority = counts[kept].clone()
            priority[torch.isin(kept, torch.tensor(always, dtype=torch.long))] = counts.sum() + 1
            # A stable sort by count, highest first: equal counts stay in order of first appearance.
            order = torch.sort(priority, descending=True, stable=True).indices
            kept = kept[order[:slots]].sort().values
    new_words = [words[i] for i in kept.tolist()]
    if UNKNOWN not in new_words:
        new_words.append(UNKNOWN)
    unknown_id = new_words.index(UNKNOWN)
    new_ids = torch.full((len(words),), unknown_id, dtype=torch.long)
    new_ids[kept] = torch.arange(len(kept))
    for split in SPLITS:
        stream = getattr(corpus, split)
        for start in range(0, len(stream), 1 << 20):  # in slices: no second copy of the stream
            part = stream[start:start + (1 << 20)]
            part.copy_(new_ids[part])
    dictionary.idx2word = new_words
    dictionary.word2idx = {w: i for i, w in enumerate(new_words)}
    dictionary.count_tokens(getattr(corpus, split) for split in SPLITS)


def unknown_counts(corpus):
    """{split: (tokens that are <unk>, tokens)} of a corpus: how much of each split its vocabulary
    does not cover (a text's own <unk> tokens, as PTB's, included)."""
    unknown_id = corpus.dictionary.word2idx.get(UNKNOWN)
    return {split: (0 if unknown_id is None else int((getattr(corpus, split) == unknown_id).sum()),
                    len(getattr(corpus, split))) for split in SPLITS}


def line_words(line):
    """The tokens of one line of text, as every corpus file is read: its whitespace-separated words, then <eos>."""
    return line.split() + ['<eos>']


def decode_text(raw, name):
    """The text of UTF-8 bytes, a leading byte-order mark dropped (it is not text); a DataError naming
    `name` when they are not UTF-8, with the offset of the first bad byte."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise DataError(f'{name}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    return text[1:] if text.startswith('\ufeff') else text


def read_text(raw, name):
    """The lines of a text given as bytes (a file's, or standard input's), each as line_words gives it.
    Read as Corpus reads a split: a leading byte-order mark dropped, lines split as open() in text mode
    splits them. A DataError naming `name` when the bytes are not UTF-8 (with the offset of the first
    bad byte) or hold no word at all."""
    decode_text(raw, name)
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


# ---------------------------------------------------------------------------------------------
# python data.py DIR: what a corpus holds, before training on it

def describe(corpus, top=20):
    """The lines `python data.py DIR` prints: tokens and <unk> share of each split, the vocabulary, and
    the `top` most frequent words of the training split with their share of its tokens."""
    options = corpus.vocabulary_options
    lines = [f'| vocabulary {len(corpus.dictionary):,} words | vocab_from {options["vocab_from"]} '
             f'| min_count {options["min_count"]} | max_vocab {options["max_vocab"] or "none"}']
    for split, (unknown, tokens) in unknown_counts(corpus).items():
        lines.append(f'| {split:5s} | {tokens:>12,} tokens (with <eos>) | <unk> {unknown:,} ({100 * unknown / tokens:.2f}%)')
    counts = torch.bincount(corpus.train, minlength=len(corpus.dictionary))
    once = int((counts == 1).sum())
    lines.append(f'| words seen once in train: {once:,} ({100 * once / len(corpus.dictionary):.1f}% of the vocabulary)')
    frequent = torch.sort(counts, descending=True, stable=True).indices[:top].tolist()
    lines.append(f'| most frequent in train: ' + ', '.join(
        f'{corpus.dictionary.idx2word[i]} {100 * counts[i].item() / len(corpus.train):.2f}%' for i in frequent))
    return lines


def add_vocabulary_args(parser):
    """--vocab-from, --min-count, --max-vocab (restrict_vocabulary's options, their defaults the
    original's rule): `python data.py DIR` and main.py (harness/flags.py) take them."""
    g = parser.add_argument_group('vocabulary (docs/CORPUS.md; default: every word of the three splits)')

    def checked(name):
        """An argparse type: the integer, refused in argparse's one line (naming the flag) when
        vocabulary_options would refuse it."""
        def parse(text):
            try:
                return vocabulary_options(**{name: int(text)})[name]
            except (ValueError, DataError) as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        parse.__name__ = name
        return parse
    g.add_argument('--vocab-from', choices=VOCAB_FROM, default=DEFAULT_VOCABULARY['vocab_from'],
                   help="the splits the vocabulary is built over: all (the original's rule) or train "
                        '(words only in valid/test become <unk>)')
    g.add_argument('--min-count', type=checked('min_count'), default=DEFAULT_VOCABULARY['min_count'], metavar='N',
                   help='only words seen at least N times get an id of their own; the others become <unk>')
    g.add_argument('--max-vocab', type=checked('max_vocab'), default=DEFAULT_VOCABULARY['max_vocab'], metavar='N',
                   help='at most N entries: the most frequent words, <eos> and <unk> included')
    return g


def main(argv=None):
    parser = argparse.ArgumentParser(description='What a corpus folder holds: tokens, vocabulary, <unk> share, '
                                                 'the most frequent words (the corpus cache is neither read nor written)')
    parser.add_argument('data', metavar='DIR', help='corpus folder (train.txt, valid.txt, test.txt)')
    add_vocabulary_args(parser)
    parser.add_argument('--top', type=int, default=20, metavar='N', help='how many frequent words to show (default 20)')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        raise DataError(f'{args.data}: data folder not found')
    corpus = Corpus(args.data, vocab_from=args.vocab_from, min_count=args.min_count, max_vocab=args.max_vocab)
    print(f'| corpus {args.data}')
    for line in describe(corpus, args.top):
        print(line)
    return 0


if __name__ == '__main__':
    # Bad input in one line, as the scripts' runner (harness/cli.run) reports it; that runner is not
    # imported here, since the package imports this module.
    import sys
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(print(f'error: {e}', file=sys.stderr) or 2)
