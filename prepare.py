"""Raw text into a corpus folder: DIR/{train,valid,test}.txt, ready for main.py --data DIR.

    python prepare.py book.txt --out data/book                                  # words as they are
    python prepare.py a.txt b.txt --out data/ab --valid-fraction 0.1 --test-fraction 0.1
    python prepare.py book.txt --out data/book-bpe --tokenizer bpe --bpe-size 8000
    python prepare.py book.txt --out data/book-char --tokenizer chars

The text (the files in the order given, each a whole number of lines) is split by lines: the last
--test-fraction of its lines are the test split, the --valid-fraction before them the valid split, the
rest the training split; no line is lost, added or changed (`--tokenizer words`, the default: the
splits put together are the text). `--tokenizer bpe` learns a byte-pair encoding of --bpe-size subword
tokens on the training split alone (Hugging Face `tokenizers`, requirements-corpus.txt) and writes
every line as its subword tokens; `--tokenizer chars` writes every character as a token, a run of
spaces as `_`, as PTB's character-level corpus (pennchar) is. Both write DIR/tokenizer.json, which
main.py records in its checkpoint (score.py then reads raw text, generate.py writes it).
DIR/prepare.json records what was done; a folder holding a corpus without it is never overwritten.
Options and formats: docs/CORPUS.md.
"""
import argparse
import io
import json
import os

import data
import harness
from errors import UserError

MARKER = 'prepare.json'  # what this script wrote, and the sign that it may rewrite the folder
TOKENIZER_FILE = data.TOKENIZER_FILE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Split raw text into a corpus folder (train, valid, test)')
    parser.add_argument('text', nargs='+', metavar='TEXT', help='UTF-8 text file(s), read in the order given')
    parser.add_argument('--out', required=True, metavar='DIR', help='the corpus folder to write')
    parser.add_argument('--valid-fraction', type=float, default=0.05,
                        help='share of the lines for the valid split, taken before the test split (default 0.05)')
    parser.add_argument('--test-fraction', type=float, default=0.05,
                        help='share of the lines for the test split, taken from the end (default 0.05)')
    parser.add_argument('--tokenizer', choices=('words', 'bpe', 'chars'), default='words',
                        help='words: the lines as they are (default); bpe: subword tokens learnt on the '
                             'training split; chars: one token a character')
    parser.add_argument('--bpe-size', type=int, default=None, metavar='N',
                        help='--tokenizer bpe: the number of subword tokens to learn (required with bpe)')
    args = parser.parse_args(argv)
    for flag in ('valid_fraction', 'test_fraction'):
        value = getattr(args, flag)
        if not 0 < value < 1:
            raise UserError(f'--{flag.replace("_", "-")} must be between 0 and 1 (exclusive), got {value}')
    if args.valid_fraction + args.test_fraction >= 1:
        raise UserError(f'--valid-fraction {args.valid_fraction} and --test-fraction {args.test_fraction} '
                        f'leave no training split')
    if args.tokenizer == 'bpe' and args.bpe_size is None:
        raise UserError('--tokenizer bpe needs --bpe-size N (the number of subword tokens to learn)')
    if args.bpe_size is not None and args.tokenizer != 'bpe':
        raise UserError(f'--bpe-size is for --tokenizer bpe, not {args.tokenizer}')
    if args.bpe_size is not None and args.bpe_size < 2:
        raise UserError(f'--bpe-size must be at least 2, got {args.bpe_size}')
    return args


# ---------------------------------------------------------------------------------------------
# Reading and splitting: lines in, lines out, none changed

def read_lines(path):
    """The lines of a text file, each with its line end as in the file (\\n, \\r\\n or \\r: the line
    ends Corpus reads), the last one given a \\n if it has none (so that the next file's first line
    does not join it). A UserError when the file is missing, binary, not UTF-8 or holds no word."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f'{path}: text file not found') from None
    except IsADirectoryError:
        raise UserError(f'{path}: is a folder, not a text file') from None
    if b'\0' in raw:
        raise UserError(f'{path}: a binary file, not UTF-8 text (a NUL byte at byte {raw.index(bytes(1))})')
    text = data.decode_text(raw, path)
    if not text.strip():  # whitespace alone: no word
        raise UserError(f'{path}: the text is empty (no words)')
    lines = list(io.StringIO(text, newline=''))  # split where open() would, line ends kept as they are
    if not lines[-1].endswith(('\n', '\r')):
        lines[-1] += '\n'
    return lines


def split_lines(lines, valid_fraction, test_fraction):
    """{split: its lines}: the last test_fraction of the lines are test, the valid_fraction before
    them valid, the rest train (contiguous blocks: a text's end is what a model trained on its start
    has not seen). A UserError when a split would get no line."""
    n_test, n_valid = round(len(lines) * test_fraction), round(len(lines) * valid_fraction)
    n_train = len(lines) - n_valid - n_test
    for split, n, fraction in (('valid', n_valid, valid_fraction), ('test', n_test, test_fraction)):
        if n == 0:
            raise UserError(f'--{split}-fraction {fraction} of {len(lines)} lines leaves the {split} split empty')
    if n_train <= 0:
        raise UserError(f'the fractions leave no line of {len(lines)} for the training split')
    return {'train': lines[:n_train], 'valid': lines[n_train:n_train + n_valid], 'test': lines[n_train + n_valid:]}


# ---------------------------------------------------------------------------------------------
# Tokenizers: each turns the lines of a split into the lines written

def char_lines(lines):
    """The lines of a split as character tokens in pennchar's layout: every token of the split, its line
    ends included, followed by a space (so every line after the first starts with one). pennchar's
    files end with that last space after the last line end, which reads as one more (empty) line: it
    is left out here."""
    text = ''.join(token + ' ' for line in lines for token in (*data.char_tokens(line), '\n'))[:-1]
    return text.splitlines(keepends=True)  # the tokens hold no line break: str.split took them all


def learn_bpe(train_lines, size):
    """A byte-pair encoding of `size` subword tokens (<unk> included) learnt on the training lines:
    Hugging Face `tokenizers`, words split at whitespace and marked at their start with ▁ (as
    sentencepiece does), so that the subwords decode back to the words. A UserError when the text has
    too few distinct pieces for `size` tokens."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError('--tokenizer bpe needs the Hugging Face tokenizers package: '
                        'python3 -m pip install -r requirements-corpus.txt') from None
    tokenizer = Tokenizer(models.BPE(unk_token=data.UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Metaspace()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[data.UNKNOWN], show_progress=False)
    tokenizer.train_from_iterator(train_lines, trainer)
    if tokenizer.get_vocab_size() < size:
        raise UserError(f'--bpe-size {size}: the training split allows at most '
                        f'{tokenizer.get_vocab_size()} subword tokens (<unk> included)')
    return tokenizer


def bpe_lines(tokenizer, lines):
    """The lines as space-separated subword tokens (an empty line stays empty)."""
    return [' '.join(tokens) + '\n' for tokens in data.SubwordTokenizer(tokenizer.to_str()).encode(lines)]


def tokenized_splits(splits, args):
    """({split: the lines to write}, the tokenizer's file contents or None)."""
    if args.tokenizer == 'words':
        return splits, None
    if args.tokenizer == 'chars':
        return {split: char_lines(lines) for split, lines in splits.items()}, data.CHARS_TOKENIZER
    tokenizer = learn_bpe(splits['train'], args.bpe_size)
    return {split: bpe_lines(tokenizer, lines) for split, lines in splits.items()}, tokenizer.to_str()


# ---------------------------------------------------------------------------------------------
# Writing: only into a folder that is empty of corpora or was written here

def check_out_folder(out, inputs):
    """A UserError unless `out` may be written: absent, or holding no corpus file, or written by this
    script (its marker); and none of the inputs is a file it would replace."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f'{out}: is a file, not a folder (--out names the corpus folder to write)')
    ours = os.path.isfile(os.path.join(out, MARKER))
    written = [name for name in (*data_file_names(), TOKENIZER_FILE) if os.path.exists(os.path.join(out, name))]
    if written and not ours:
        raise UserError(f'{out}: holds a corpus prepare.py did not write ({", ".join(written)}); '
                        f'give another --out (nothing was written)')
    for name in (*data_file_names(), TOKENIZER_FILE, MARKER):
        target = os.path.join(out, name)
        for source in inputs:
            if os.path.exists(target) and os.path.exists(source) and os.path.samefile(target, source):
                raise UserError(f'{source}: is {target}, which --out {out} would replace')


def data_file_names():
    return [split + '.txt' for split in data.SPLITS]


def write_corpus(out, written, tokenizer_file, record):
    """The split files (and the tokenizer's), each written atomically. The marker goes first, marked
    unfinished, so that a run killed half-way leaves a folder this script may rewrite, and again last."""
    os.makedirs(out, exist_ok=True)
    harness.atomic_write_text(json.dumps({**record, 'finished': False}, indent=1) + '\n', os.path.join(out, MARKER))
    for split, lines in written.items():
        harness.atomic_write_text(''.join(lines), os.path.join(out, split + '.txt'))
    tokenizer_path = os.path.join(out, TOKENIZER_FILE)
    if tokenizer_file is not None:
        harness.atomic_write_text(tokenizer_file, tokenizer_path)
    elif os.path.exists(tokenizer_path):  # an earlier run's (the marker says it was ours): no longer true
        os.remove(tokenizer_path)
    harness.atomic_write_text(json.dumps({**record, 'finished': True}, indent=1) + '\n', os.path.join(out, MARKER))


def main(argv=None):
    args = parse_args(argv)
    check_out_folder(args.out, args.text)
    lines = [line for path in args.text for line in read_lines(path)]
    splits = split_lines(lines, args.valid_fraction, args.test_fraction)
    written, tokenizer_file = tokenized_splits(splits, args)
    counts = {split: {'lines': len(written[split]),
                      'tokens': sum(len(data.line_words(line)) for line in written[split])}
              for split in data.SPLITS}
    record = {'written_by': 'prepare.py', 'sources': [os.path.abspath(p) for p in args.text],
              'valid_fraction': args.valid_fraction, 'test_fraction': args.test_fraction,
              'tokenizer': args.tokenizer, 'bpe_size': args.bpe_size, 'splits': counts}
    write_corpus(args.out, written, tokenizer_file, record)
    for split in data.SPLITS:
        print(f'| {split:5s} | {counts[split]["lines"]:>10,} lines | {counts[split]["tokens"]:>12,} tokens (with <eos>)')
    extra = f' and {TOKENIZER_FILE}' if tokenizer_file else ''
    print(f'| wrote {args.out}: train.txt, valid.txt, test.txt{extra} ({args.tokenizer})')
    return 0


if __name__ == '__main__':
    harness.run_script(main)
