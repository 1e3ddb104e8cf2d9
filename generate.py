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

import torch

from harness import checkpoint
from harness import cli
import data
from harness import flags
from harness import run_files
import errors
from harness.atomic_io import write_failure


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Sample text from a saved AWD-LSTM language model')
    parser.add_argument('--data', type=str, default='./data/penn',
                        help='the corpus the model was trained on (its vocabulary must match the checkpoint)')
    parser.add_argument('--model', type=str, default=None,
                        help='accepted for compatibility; the checkpoint knows its own model type')
    parser.add_argument('--checkpoint', type=str, default='./model.pt', help='model checkpoint to use')
    parser.add_argument('--outf', type=str, default='generated.txt', help='output file for generated text')
    parser.add_argument('--words', type=int, default=1000, help='number of words to generate')
    parser.add_argument('--seed', type=int, default=1111, help='random seed')
    parser.add_argument('--temperature', type=float, default=1.0,
                        help='temperature: higher gives more diversity (at least 1e-3)')
    parser.add_argument('--log-interval', type=int, default=100, help='reporting interval in words')
    parser.add_argument('--prompt', type=str, default=None,
                        help='text to continue: its words are fed in first and begin the output (unknown ones as <unk>)')
    parser.add_argument('--top-k', type=int, default=None, metavar='K',
                        help='sample among the K likeliest words only (1: greedy, the same text for every seed)')
    parser.add_argument('--top-p', type=float, default=None, metavar='P',
                        help='nucleus sampling: among the smallest set of likeliest words whose probability reaches P')
    parser.add_argument('--corpus-layout', action='store_true',
                        help="write a line break for each <eos>, as the corpus files are (default: the original's "
                             'layout, <eos> as a word and 20 words a line)')
    flags.add_device_args(parser)
    args = parser.parse_args(argv)
    flags.check_args(argparse.Namespace(log_interval=args.log_interval, seed=args.seed))
    if args.words < 1:
        raise errors.UserError(f'--words must be positive, got {args.words}')
    if not args.temperature >= 1e-3:
        raise errors.UserError(f'--temperature has to be greater or equal 1e-3, got {args.temperature}')
    if args.top_k is not None and args.top_k < 1:
        raise errors.UserError(f'--top-k must be at least 1, got {args.top_k}')
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise errors.UserError(f'--top-p must be in (0, 1], got {args.top_p}')
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
        print(f'note: --prompt words not in the vocabulary fed in as <unk>: {" ".join(words)}')
    return ids


def filtered_probs(logprob, temperature, top_k=None, top_p=None):
    """The distribution to sample from: the model's, tempered, then cut to its top_k likeliest words
    and to the nucleus of top_p (Holtzman et al. 2019: the smallest set of likeliest words whose
    probability reaches top_p), renormalised."""
    probs = torch.softmax(logprob / temperature, 0)
    if top_k is not None and top_k < probs.numel():
        kept = torch.zeros_like(probs)
        values, indices = probs.topk(top_k)
        probs = kept.scatter(0, indices, values)
    if top_p is not None and top_p < 1:
        values, indices = probs.sort(descending=True)
        mass_before = values.cumsum(0) / values.sum() - values / values.sum()
        probs = torch.zeros_like(probs).scatter(0, indices, values * (mass_before < top_p))
    return probs / probs.sum()


def feed_prompt(model, ids, hidden, device):
    """Run the prompt through the model; returns (its last output, the hidden state after it)."""
    output, hidden = model(torch.tensor(ids, dtype=torch.long, device=device).view(-1, 1), hidden)
    return output[-1:], hidden


def main(argv=None):
    args = parse_args(argv)
    # Before any work: the output must be writable and must not be the checkpoint or the corpus.
    run_files.check_output(args.outf, '--outf', inputs=[args.checkpoint, *run_files.data_files(args.data)])
    device = cli.choose_device(args)
    ckpt = checkpoint.load_checkpoint(args.checkpoint, map_location=device, resume_state_ok=False)
    model, criterion = ckpt['model'], ckpt['criterion']
    if args.model is not None and args.model != model.rnn_type:
        print(f'note: --model {args.model} ignored: the checkpoint holds a {model.rnn_type} model')
    corpus, *_ = cli.load_data(args, (1, 1, 1), torch.device('cpu'), vocabulary=checkpoint.vocabulary_options(ckpt))
    checkpoint.check_vocabulary(ckpt['idx2word'], corpus, args.checkpoint, args.data)
    idx2word = corpus.dictionary.idx2word

    # A corpus of characters or subwords (prepare.py --tokenizer chars or bpe): plain words are written.
    tokenizer = data.corpus_tokenizer(ckpt['tokenizer']) if ckpt.get('tokenizer') else None
    prompt = prompt_ids(args.prompt, corpus.dictionary.word2idx, tokenizer) if args.prompt is not None else None
    model.eval()
    model.reset()
    hidden = model.init_hidden(1)
    # Seeded after the model is built (building it draws its initial weights; the original unpickled its
    # model, which draws nothing), so that the start word is the original's first draw.
    cli.set_seed(args.seed)
    word = original_start_word(len(idx2word)).to(device)
    shaped = args.top_k is not None or args.top_p is not None
    written = 0  # words written so far: the original's layout breaks the line after every 20th
    previous = None  # with a tokenizer: the last token written
    try:
        with open(args.outf, 'w') as outf, torch.no_grad():
            output = None
            if prompt is not None:
                output, hidden = feed_prompt(model, prompt, hidden, device)
                for text in args.prompt.split():
                    outf.write(word_with_separator(text, written, args.corpus_layout) if tokenizer is None
                               else text if written == 0 else ' ' + text)
                    written += 1
            for i in range(args.words):
                if output is None:
                    output, hidden = model(word, hidden)
                if shaped:
                    logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)[0]
                    word = torch.multinomial(filtered_probs(logprob, args.temperature, args.top_k, args.top_p), 1)
                else:
                    word = sample_next_word(model, criterion, output, args.temperature)
                word = word.view(1, 1).to(device)
                output = None
                token = idx2word[word.item()]
                if tokenizer is None:
                    outf.write(word_with_separator(token, written, args.corpus_layout))
                else:
                    at_line_start = written == 0 or previous == '<eos>'
                    outf.write(tokenizer.plain_text(token, at_line_start))
                    previous = token
                written += 1
                if i % args.log_interval == 0:
                    print(f'| Generated {i}/{args.words} words')
    except OSError as e:  # a full disk: Python's write names no file
        raise errors.UserError(f'{args.outf}: could not be written ({write_failure(e)})') from None
    print(f'| Generated {args.words} words to {args.outf}')
    return 0


def original_start_word(ntokens):
    """The start word as the original drew it: torch.rand(1, 1) * ntokens, truncated (on the CPU)."""
    return torch.rand(1, 1).mul(ntokens).long()


def sample_next_word(model, criterion, output, temperature):
    """One word drawn from the model's distribution at `temperature`, as the original drew it: the
    multinomial, on the CPU, of exp(logits / temperature), unnormalised. The split softmax (which the
    original's generate.py did not support) and weights that overflow or vanish there (a very low
    temperature, where the original failed) are drawn from the normalised softmax instead."""
    if criterion.nsplits == 1:
        weights = torch.nn.functional.linear(output, model.decoder.weight, model.decoder.bias)
        weights = weights.squeeze().div(temperature).exp().cpu()
        if torch.isfinite(weights).all() and weights.sum() > 0:
            return torch.multinomial(weights, 1)[0]
    # The model returns its last hidden layer; the (split) softmax belongs to the criterion.
    logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)[0]
    return torch.multinomial(torch.softmax(logprob / temperature, 0).cpu(), 1)[0]


def word_with_separator(text, index, corpus_layout):
    """The text written for the `index`-th word: the original's layout (every word followed by a space,
    a line break after every 20th), or with `corpus_layout` the corpus files' (a line break for <eos>)."""
    if corpus_layout:
        return '\n' if text == '<eos>' else text + ' '
    return text + ('\n' if index % 20 == 19 else ' ')


if __name__ == '__main__':
    cli.run(main)
