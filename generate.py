"""Sample text from a saved AWD-LSTM language model.

    python generate.py --data data/penn --checkpoint PTB.pt --words 1000 --temperature 1.0 --outf generated.txt

Starts from a random word and samples --words words, each from the model's distribution sharpened
(temperature < 1) or flattened (> 1) by --temperature, feeding every sampled word back in. The output
is written as the corpus files are: words separated by spaces, a line break for each <eos>. The same
--seed on the same device gives the same text.
"""
import argparse

import torch

import checkpoint
import cli
import flags
import run_files
import errors
from atomic_io import write_failure


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
    flags.add_device_args(parser)
    args = parser.parse_args(argv)
    flags.check_args(argparse.Namespace(log_interval=args.log_interval, seed=args.seed))
    if args.words < 1:
        raise errors.UserError(f'--words must be positive, got {args.words}')
    if not args.temperature >= 1e-3:
        raise errors.UserError(f'--temperature has to be greater or equal 1e-3, got {args.temperature}')
    return args


def main(argv=None):
    args = parse_args(argv)
    # Before any work: the output must be writable and must not be the checkpoint or the corpus.
    run_files.check_output(args.outf, '--outf', inputs=[args.checkpoint, *run_files.data_files(args.data)])
    device = cli.choose_device(args)
    cli.set_seed(args.seed)
    ckpt = checkpoint.load_checkpoint(args.checkpoint, map_location=device, resume_state_ok=False)
    model, criterion = ckpt['model'], ckpt['criterion']
    if args.model is not None and args.model != model.rnn_type:
        print(f'note: --model {args.model} ignored: the checkpoint holds a {model.rnn_type} model')
    corpus, *_ = cli.load_data(args, (1, 1, 1), torch.device('cpu'))
    checkpoint.check_vocabulary(ckpt['idx2word'], corpus, args.checkpoint, args.data)
    idx2word = corpus.dictionary.idx2word

    model.eval()
    model.reset()
    hidden = model.init_hidden(1)
    word = torch.randint(len(idx2word), (1, 1), device=device)
    try:
        with open(args.outf, 'w') as outf, torch.no_grad():
            for i in range(args.words):
                output, hidden = model(word, hidden)
                # The model returns its last hidden layer; the (split) softmax belongs to the criterion.
                logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)[0]
                word = torch.multinomial(torch.softmax(logprob / args.temperature, 0), 1).view(1, 1)
                text = idx2word[word.item()]
                outf.write('\n' if text == '<eos>' else text + ' ')
                if i % args.log_interval == 0:
                    print(f'| Generated {i}/{args.words} words')
    except OSError as e:  # a full disk: Python's write names no file
        raise errors.UserError(f'{args.outf}: could not be written ({write_failure(e)})') from None
    print(f'| Generated {args.words} words to {args.outf}')
    return 0


if __name__ == '__main__':
    cli.run(main)
