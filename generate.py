"""Sample text from a saved AWD-LSTM language model.

    python generate.py --data data/penn --checkpoint PTB.pt --words 1000 --temperature 1.0 --outf generated.txt

Starts from a random word and samples --words words, each from the model's distribution sharpened
(temperature < 1) or flattened (> 1) by --temperature, feeding every sampled word back in. The words are
the original generate.py's for the same --seed and checkpoint (its random draws, in its order, on the
CPU), and so is the file: every word, <eos> included, followed by a space, and a line break after every
20th. --corpus-layout writes the corpus files' layout instead: a line break for each <eos>.

--prompt "TEXT" feeds TEXT's words in first (the output begins with them); --top-k K and --top-p P
(nucleus sampling) cut the tempered distribution to its likeliest words before each draw.
"""
import argparse
import sys

import torch

import harness

import data
import scoring
import errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Sample text from a saved AWD-LSTM language model')
    parser.add_argument('--data', type=str, default='./data/penn',
                        help='the corpus the model was trained on (its vocabulary must match the checkpoint)')
    parser.add_argument('--model', type=str, default=None,
                        help='accepted for compatibility; the checkpoint knows its own model type')
    parser.add_argument('--checkpoint', type=str, default='./model.pt', help='model checkpoint to use')
    parser.add_argument('--outf', type=str, default='generated.txt', help='output file for generated text')
    parser.add_argument('--words', type=int, default=1000, help='number of words to generate')
    harness.declare(parser, '--seed', type=int, default=1111, must=harness.SEED, help='random seed')
    parser.add_argument('--temperature', type=float, default=1.0,
                        help='temperature: higher gives more diversity (at least 1e-3)')
    harness.declare(parser, '--log-interval', type=int, default=100, must=harness.POSITIVE_INT,
                    help='reporting interval in words')
    parser.add_argument('--prompt', type=str, default=None,
                        help='text to continue: its words are fed in first and begin the output (unknown ones as <unk>)')
    parser.add_argument('--top-k', type=int, default=None, metavar='K',
                        help='sample among the K likeliest words only (1: greedy, the same text for every seed)')
    parser.add_argument('--top-p', type=float, default=None, metavar='P',
                        help='nucleus sampling: among the smallest set of likeliest words whose probability reaches P')
    parser.add_argument('--corpus-layout', action='store_true',
                        help="write a line break for each <eos>, as the corpus files are (default: the original's "
                             'layout, <eos> as a word and 20 words a line)')
    harness.add_device_args(parser)
    args = harness.parse_args(parser, argv)
    scoring.check_sampling(args.words, args.temperature, args.top_k, args.top_p)
    if args.prompt is not None and not args.prompt.split():
        raise errors.UserError('--prompt has no words')
    return args


def prompt_ids(prompt, word2idx, tokenizer=None):
    """The word ids of --prompt, read as a line of the corpus without its <eos> (with `tokenizer`, a
    data.corpus_tokenizer, its tokens); unknown words become <unk> (with a note), or are an error when
    the vocabulary has none."""
    tokens = prompt.split() if tokenizer is None else tokenizer.encode([prompt])[0]
    try:
        ids, unknown = data.encode(tokens, word2idx)
    except data.DataError as e:
        raise errors.UserError(f'--prompt: {e}') from None
    if any(unknown):
        words = [w for w, u in zip(tokens, unknown) if u]
        note(f'note: --prompt words not in the vocabulary fed in as <unk>: {" ".join(words)}')
    return ids


def main(argv=None):
    args = parse_args(argv)
    # Before any work: the checkpoint must be a file, the output writable and not an input of the run
    # (the checkpoint, the corpus) nor a file another run needs.
    harness.check_checkpoint_path(args.checkpoint, '--checkpoint')
    harness.check_output(args.outf, '--outf', inputs=[args.checkpoint, *harness.data_files(args.data)],
                         replaced=not harness.is_stream(args.outf))
    device = harness.choose_device(args)
    ckpt = harness.load_checkpoint(args.checkpoint, map_location=device, resume_state_ok=False)
    model, criterion = ckpt['model'], ckpt['criterion']
    if args.model is not None and args.model != model.rnn_type:
        note(f'note: --model {args.model} ignored: the checkpoint holds a {model.rnn_type} model')
    corpus, *_ = harness.load_data(args, (1, 1, 1), torch.device('cpu'), log=note,
                                   vocabulary=harness.vocabulary_options(ckpt))
    harness.check_vocabulary(ckpt['idx2word'], corpus, args.checkpoint, args.data)
    idx2word = corpus.dictionary.idx2word

    # A corpus of characters or subwords (prepare.py --tokenizer chars or bpe): plain words are written.
    tokenizer = data.corpus_tokenizer(ckpt['tokenizer']) if ckpt.get('tokenizer') else None
    prompt = prompt_ids(args.prompt, corpus.dictionary.word2idx, tokenizer) if args.prompt is not None else None
    # Seeded after the model is built (building it draws its initial weights; the original unpickled its
    # model, which draws nothing), so that the start word is the original's first draw.
    harness.set_seed(args.seed)
    sampled = scoring.sample_ids(model, criterion, len(idx2word), prompt, args.words, args.temperature,
                                  args.top_k, args.top_p)
    # The text is gathered and written once it is complete (harness.write_result): a run that fails
    # leaves the file that was there, and two runs writing one --outf leave one run's text.
    pieces = []
    for text in (args.prompt.split() if args.prompt is not None else []):
        pieces.append(word_with_separator(text, len(pieces), args.corpus_layout) if tokenizer is None
                      else text if not pieces else ' ' + text)
    previous = None  # with a tokenizer: the last token written
    for i, word in enumerate(sampled):
        token = idx2word[word]
        if tokenizer is None:
            pieces.append(word_with_separator(token, len(pieces), args.corpus_layout))
        else:
            pieces.append(tokenizer.plain_text(token, at_line_start=not pieces or previous == '<eos>'))
            previous = token
        if i % args.log_interval == 0:
            note(f'| Generated {i}/{args.words} words')
    harness.write_result(''.join(pieces), args.outf)
    note(f'| Generated {args.words} words to {args.outf}')
    return 0


def note(message):
    """Progress and notes go to standard error: --outf /dev/stdout carries the generated text alone."""
    print(message, file=sys.stderr)


def word_with_separator(text, index, corpus_layout):
    """The text written for the `index`-th word: the original's layout (every word followed by a space,
    a line break after every 20th), or with `corpus_layout` the corpus files' (a line break for <eos>)."""
    if corpus_layout:
        return '\n' if text == '<eos>' else text + ' '
    return text + ('\n' if index % 20 == 19 else ' ')


if __name__ == '__main__':
    harness.run_script(main)
