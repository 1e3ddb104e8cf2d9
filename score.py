"""Score any text with a trained model: perplexity of a stream, log-probabilities of sentences, surprisal
of each token.

    python score.py --checkpoint PTB.pt --text data/penn/test.txt            # one stream: loss, ppl, bpc
    python score.py --checkpoint PTB.pt --text nbest.txt --sentences          # TSV: logprob per line
    python score.py --checkpoint PTB.pt --text stimuli.txt --per-token        # TSV: surprisal per token

The text (a file, or standard input for `-` or no --text) is read as the corpus files are: whitespace
words, <eos> at each line end, a leading byte-order mark dropped. A word the checkpoint's vocabulary
lacks becomes <unk> (or the word --unk names) and is counted. The vocabulary is the checkpoint's own:
no corpus folder is needed. A checkpoint of a corpus of characters or subwords (prepare.py --tokenizer
chars or bpe) holds its tokenizer: raw text is encoded with it, and per-word figures are reported
beside the per-token ones.
Formats: docs/SCORING.md.
"""
import argparse
import json
import math
import sys

from harness import atomic_io
from harness import checkpoint
from harness import cli
import data
from harness import flags
from harness import run_files
import scoring
from errors import UserError
from harness.run_log import report_line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Score a text with a trained AWD-LSTM language model')
    parser.add_argument('--checkpoint', type=str, required=True, help='model checkpoint (of main.py or finetune.py)')
    parser.add_argument('--text', type=str, default='-', help='text file to score (default -: standard input)')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--sentences', action='store_true',
                      help='score each line on its own (TSV: logprob, tokens, oov, text), for n-best rescoring')
    mode.add_argument('--per-token', action='store_true',
                      help='the surprisal of every token (TSV: line, position, word, surprisal_bits, oov)')
    mode.add_argument('--json', action='store_true', help='the stream summary as one JSON object')
    parser.add_argument('--pretokenized', action='store_true',
                        help='a checkpoint of a corpus of characters or subwords (prepare.py --tokenizer chars or '
                             'bpe) reads raw text and encodes it with its tokenizer; with this flag the text is '
                             'in those tokens already, as the corpus files are')
    parser.add_argument('--unk', type=str, default='<unk>', metavar='WORD',
                        help='the vocabulary word that stands for words it lacks (default <unk>)')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='lines scored at once by --sentences and --per-token (the result does not depend on it)')
    parser.add_argument('--out', type=str, default='-', help='file to write the result to (default -: standard output)')
    flags.add_device_args(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f'--batch-size must be a positive integer, got {args.batch_size}')
    return args


def read_input(path):
    """The raw bytes of the text: a file, or standard input for `-`."""
    if path == '-':
        return sys.stdin.buffer.read(), 'standard input'
    try:
        with open(path, 'rb') as f:
            return f.read(), path
    except FileNotFoundError:
        raise UserError(f'{path}: text file not found') from None


def encode_lines(lines, idx2word, unknown):
    """(ids per line, unknown flags per line, number of unknown words) in the checkpoint's vocabulary."""
    word2idx = {w: i for i, w in enumerate(idx2word)}
    if unknown != '<unk>' and unknown not in word2idx:
        raise UserError(f'--unk {unknown!r} is not a word of the checkpoint\'s vocabulary')
    encoded = []
    for number, words in enumerate(lines, start=1):
        try:
            encoded.append(data.encode(words, word2idx, unknown))
        except data.DataError as e:
            raise UserError(f'line {number}: {e}; pass --unk WORD to stand a vocabulary word in for it') from None
    ids, unknown_flags = [e[0] for e in encoded], [e[1] for e in encoded]
    return ids, unknown_flags, sum(sum(f) for f in unknown_flags)


def stream_summary(model, criterion, ids, oov, bptt, device):
    """{tokens, oov, loss, ppl, bpc} of the text read as one stream (main.py's test figure)."""
    stream = [i for line in ids for i in line]
    if len(stream) < 2:
        raise UserError(f'the text has {len(stream)} token: too short to score as a stream (at least 2)')
    loss = scoring.stream_loss(model, criterion, stream, bptt, device)
    return {'tokens': len(stream), 'oov': oov, 'loss': loss, 'ppl': math.exp(loss), 'bpc': loss / math.log(2)}


def tokenized_lines(tokenizer_contents, lines):
    """The lines (words and <eos>) as the tokens of the checkpoint's tokenizer (characters or subwords),
    each still closed by <eos>: the text as prepare.py wrote its corpus."""
    tokenizer = data.corpus_tokenizer(tokenizer_contents)
    return [tokens + ['<eos>'] for tokens in tokenizer.encode([' '.join(line[:-1]) for line in lines])]


def per_word(summary, words):
    """The stream's figures per word of the raw text (its words and one <eos> a line), beside the
    per-token ones: the same total loss, divided among the words instead of the tokens."""
    word_loss = summary['loss'] * summary['tokens'] / words
    return {'words': words, 'word_loss': word_loss, 'word_ppl': math.exp(word_loss)}


def sentence_rows(lines, unknown_flags, logprobs):
    """The TSV of --sentences: a header, then one row per line."""
    yield 'logprob\ttokens\toov\ttext'
    for words, flags_, logprob in zip(lines, unknown_flags, logprobs):
        yield f'{float(logprob.sum()):.6f}\t{len(words)}\t{sum(flags_)}\t{" ".join(words[:-1])}'


def token_rows(lines, unknown_flags, logprobs):
    """The TSV of --per-token: a header, then one row per predicted token, the closing <eos> included."""
    yield 'line\tposition\tword\tsurprisal_bits\toov'
    for number, (words, flags_, logprob) in enumerate(zip(lines, unknown_flags, logprobs)):
        bits = (-logprob / math.log(2)).tolist()
        for position, (word, unknown, surprisal) in enumerate(zip(words, flags_, bits)):
            yield f'{number}\t{position}\t{word}\t{surprisal:.6f}\t{int(unknown)}'


def write_result(text, out):
    """The result to standard output (`-`), in place to a stream (`/dev/stdout`, a pipe), else to a file
    written atomically (the file that was there stays whole until the new one is complete)."""
    if out == '-':
        sys.stdout.write(text)
    elif run_files.is_stream(out):
        try:
            with open(out, 'w') as f:
                f.write(text)
        except OSError as e:  # /dev/full: Python's write names no file
            raise UserError(f'{out}: could not be written ({atomic_io.write_failure(e)})') from None
    else:
        atomic_io.atomic_write_text(text, out)


def main(argv=None):
    args = parse_args(argv)
    if args.out != '-':
        # Before any work: the output must be writable and must not be the checkpoint or the text.
        run_files.check_output(args.out, '--out', inputs=[args.checkpoint, args.text],
                               replaced=not run_files.is_stream(args.out))
    raw, name = read_input(args.text)
    try:
        lines = data.read_text(raw, name)
    except data.DataError as e:
        raise UserError(str(e)) from None
    device = cli.choose_device(args)
    ckpt = checkpoint.load_checkpoint(args.checkpoint, map_location=device, resume_state_ok=False)
    model, criterion, idx2word = ckpt['model'], ckpt['criterion'], ckpt['idx2word']
    words = None  # the text's words (and <eos>), when the model reads characters or subwords of them
    if ckpt.get('tokenizer') and not args.pretokenized:
        words = sum(len(line) for line in lines)
        lines = tokenized_lines(ckpt['tokenizer'], lines)
    ids, unknown_flags, oov = encode_lines(lines, idx2word, args.unk)
    if oov:
        print(f'note: {oov} word(s) not in the vocabulary scored as {args.unk}', file=sys.stderr)
    if args.sentences or args.per_token:
        if '<eos>' not in idx2word:
            raise UserError(f'{args.checkpoint}: its vocabulary has no <eos> to start each line with')
        logprobs = scoring.line_logprobs(model, criterion, ids, idx2word.index('<eos>'), args.batch_size)
        rows = (sentence_rows if args.sentences else token_rows)(lines, unknown_flags, logprobs)
        write_result(''.join(row + '\n' for row in rows), args.out)
        return 0
    summary = stream_summary(model, criterion, ids, oov, ckpt['args'].get('bptt', 70), device)
    if words is not None:
        summary.update(per_word(summary, words))
    if args.json:
        write_result(json.dumps(summary) + '\n', args.out)
    else:
        per_word_text = '' if words is None else f' | words {words} | word ppl {summary["word_ppl"]:8.2f}'
        write_result(f'| {name} | tokens {summary["tokens"]} | unknown words {oov} | '
                     f'{report_line("text", summary["loss"], model.release)}{per_word_text}\n', args.out)
    return 0


if __name__ == '__main__':
    cli.run(main)
