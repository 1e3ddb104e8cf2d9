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

import data
import harness
from lm import LanguageModel
from errors import UserError


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
    harness.add_device_args(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f'--batch-size must be a positive integer, got {args.batch_size}')
    return args


def read_input(path):
    """The raw bytes of the text: a file, or standard input for `-`."""
    if not path:
        raise UserError('--text is empty: give the text file to score, or - for standard input')
    if path == '-':
        if sys.stdin is None:  # started with standard input closed (`0<&-`)
            raise UserError('standard input is closed: give the text to score with --text FILE')
        return sys.stdin.buffer.read(), 'standard input'
    try:
        with open(path, 'rb') as f:
            return f.read(), path
    except FileNotFoundError:
        raise UserError(f'{path}: text file not found') from None
    except IsADirectoryError:
        raise UserError(f'{path}: is a folder, not a text file (--text)') from None


def stream_summary(lm, ids, oov):
    """{tokens, oov, loss, ppl, bpc} of the text read as one stream (main.py's test figure)."""
    loss = lm.stream_loss(ids)
    return {'tokens': sum(len(line) for line in ids), 'oov': oov, 'loss': loss, 'ppl': math.exp(loss),
            'bpc': loss / math.log(2)}


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


def sentence_rows(lines, unknown_flags, totals):
    """The TSV of --sentences: a header, then one row per line (`totals`: LanguageModel.line_totals)."""
    yield 'logprob\ttokens\toov\ttext'
    for words, flags_, total in zip(lines, unknown_flags, totals):
        yield f'{total:.6f}\t{len(words)}\t{sum(flags_)}\t{" ".join(words[:-1])}'


def token_rows(lines, unknown_flags, logprobs):
    """The TSV of --per-token: a header, then one row per predicted token, the closing <eos> included."""
    yield 'line\tposition\tword\tsurprisal_bits\toov'
    for number, (words, flags_, logprob) in enumerate(zip(lines, unknown_flags, logprobs)):
        bits = (-logprob / math.log(2)).tolist()
        for position, (word, unknown, surprisal) in enumerate(zip(words, flags_, bits)):
            yield f'{number}\t{position}\t{word}\t{surprisal:.6f}\t{int(unknown)}'


def main(argv=None):
    args = parse_args(argv)
    harness.check_checkpoint_path(args.checkpoint, '--checkpoint')
    if args.out != '-':
        # Before any work: the output must be writable and must not be the checkpoint or the text.
        harness.check_output(args.out, '--out', inputs=[args.checkpoint, args.text],
                               replaced=not harness.is_stream(args.out))
    raw, name = read_input(args.text)
    try:
        lines = data.read_text(raw, name)
    except data.DataError as e:
        raise UserError(str(e)) from None
    lm = LanguageModel(args.checkpoint, device=harness.choose_device(args))
    words = None  # the text's words (and <eos>), when the model reads characters or subwords of them
    if lm.tokenizer and not args.pretokenized:
        words = sum(len(line) for line in lines)
        lines = tokenized_lines(lm.tokenizer, lines)
    ids, unknown_flags, oov = lm.encode(lines, args.unk)
    if oov:
        print(f'note: {oov} word(s) not in the vocabulary scored as {args.unk}', file=sys.stderr)
    if args.sentences or args.per_token:
        logprobs = lm.token_logprobs(ids, args.batch_size)
        rows = (sentence_rows(lines, unknown_flags, lm.line_totals(logprobs)) if args.sentences
                else token_rows(lines, unknown_flags, logprobs))
        harness.write_result(''.join(row + '\n' for row in rows), args.out)
        return 0
    summary = stream_summary(lm, ids, oov)
    if words is not None:
        summary.update(per_word(summary, words))
    if args.json:
        harness.write_result(json.dumps(summary) + '\n', args.out)
    else:
        per_word_text = '' if words is None else f' | words {words} | word ppl {summary["word_ppl"]:8.2f}'
        harness.write_result(f'| {name} | tokens {summary["tokens"]} | unknown words {oov} | '
                             f'{harness.report_line("text", summary["loss"], lm.release)}{per_word_text}\n', args.out)
    return 0


if __name__ == '__main__':
    harness.run_script(main)
