"""A trained model from Python: score lines, measure perplexity, sample text, read hidden states.

    from lm import LanguageModel
    lm = LanguageModel('PTB.pt')                       # or a model directory (export.py --pretrained)
    lm.score(['the cat sat on the mat', 'cat the'])    # natural-log probability of each line
    lm.perplexity(open('data/penn/test.txt').read())  # the text read as one stream, as main.py's test
    lm.generate('the meaning of', words=20, top_p=0.9, seed=1)
    lm.hidden_states('the cat sat')                    # (tokens, features): the last layer's outputs

Each method is the computation of a script, through the same code: score() prints what
`score.py --sentences` prints, perplexity() is `score.py`'s stream figure, generate() the words of
`generate.py` with the same seed and settings. torch.hub loads it too (hubconf.py). docs/PYTHON.md.
"""
import math

import torch

import harness

import data
import scoring
from errors import UserError


class LanguageModel:
    """A checkpoint of main.py / finetune.py (or a model directory) ready to use, on `device`."""

    def __init__(self, path, device='cpu'):
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise UserError(f'device {device!r}: no GPU is available to this torch (use the default, the CPU)')
        ckpt = harness.load_checkpoint(path, map_location=self.device, resume_state_ok=False)
        self.path = path
        self.model, self.criterion = ckpt['model'].eval(), ckpt['criterion']
        self.idx2word = list(ckpt['idx2word'])
        self.tokenizer = ckpt.get('tokenizer')  # prepare.py's characters or subwords: the file's contents, or None
        self.word2idx = {word: i for i, word in enumerate(self.idx2word)}
        # Stream evaluation runs in chunks of the training bptt, as main.py's test figure does.
        self.bptt = ckpt['args'].get('bptt', 70)
        self.release = self.model.release

    # -----------------------------------------------------------------------------------------
    # Words to ids

    def encode(self, lines, unknown='<unk>'):
        """(ids per line, unknown flags per line, number of unknown words) of lines given as word lists
        (data.line_words'), in this model's vocabulary: a word it lacks becomes `unknown`."""
        if unknown != '<unk>' and unknown not in self.word2idx:
            raise UserError(f'--unk {unknown!r} (unknown=) is not a word of the checkpoint\'s vocabulary')
        encoded = []
        for number, words in enumerate(lines, start=1):
            try:
                encoded.append(data.encode(words, self.word2idx, unknown))
            except data.DataError as e:
                raise UserError(f'line {number}: {e}; pass --unk WORD (unknown=WORD from Python) to stand a '
                                'vocabulary word in for it') from None
        ids, unknown_flags = [e[0] for e in encoded], [e[1] for e in encoded]
        return ids, unknown_flags, sum(sum(f) for f in unknown_flags)

    def text_lines(self, text, name='the text'):
        """The lines of `text` (a str) as the corpus files are read: whitespace words, <eos> at each end."""
        try:
            return data.read_text(text.encode('utf-8'), name)
        except data.DataError as e:
            raise UserError(str(e)) from None

    # -----------------------------------------------------------------------------------------
    # Scoring

    def token_logprobs(self, ids, batch_size=64):
        """The natural-log probability of every token of each line (ids per line, each ending in <eos>),
        each line from a zero state and conditioned on <eos>: a list of float64 tensors."""
        if batch_size < 1:
            raise UserError(f'--batch-size (batch_size=) must be a positive integer, got {batch_size}')
        if '<eos>' not in self.word2idx:
            raise UserError(f'{self.path}: its vocabulary has no <eos> to start each line with')
        return scoring.line_logprobs(self.model, self.criterion, ids, self.word2idx['<eos>'], batch_size)

    @staticmethod
    def line_totals(logprobs):
        """The log-probability of each line: the sum of its tokens' (token_logprobs')."""
        return [float(logprob.sum()) for logprob in logprobs]

    def score(self, lines, unknown='<unk>', batch_size=64):
        """The natural-log probability of each line of `lines` (strings), its closing <eos> included, each
        scored on its own: what `score.py --sentences` prints (batched the same way, by default)."""
        if isinstance(lines, str):
            raise UserError('score() takes a list of lines; split the text first (or use perplexity())')
        ids, _, _ = self.encode([data.line_words(line) for line in lines], unknown)
        return self.line_totals(self.token_logprobs(ids, batch_size))

    def stream_loss(self, ids):
        """Mean loss per token of the lines `ids` read as one stream: score.py's stream figure, main.py's
        test loss for a corpus's test.txt."""
        stream = [i for line in ids for i in line]
        if len(stream) < 2:
            raise UserError(f'the text has {len(stream)} token: too short to score as a stream (at least 2)')
        return scoring.stream_loss(self.model, self.criterion, stream, self.bptt, self.device)

    def perplexity(self, text, unknown='<unk>'):
        """exp of the mean loss per token of `text` (a str) read as one stream, <eos> at each line end."""
        ids, _, _ = self.encode(self.text_lines(text), unknown)
        return math.exp(self.stream_loss(ids))

    # -----------------------------------------------------------------------------------------
    # Sampling and hidden states

    def generate(self, prompt='', words=100, top_k=None, top_p=None, temperature=1.0, seed=None):
        """`prompt` followed by `words` sampled words, separated by spaces (<eos> written as a word, as
        generate.py writes it): generate.py's words for the same --seed, --prompt and settings. A `seed`
        reseeds torch (CPU and CUDA) first; None draws from torch's current random state."""
        scoring.check_sampling(words, temperature, top_k, top_p)
        prompt_ids = self.prompt_ids(prompt)
        if seed is not None:
            harness.set_seed(seed)
        sampled = scoring.sample_ids(self.model, self.criterion, len(self.idx2word), prompt_ids, words,
                                      temperature, top_k, top_p)
        return ' '.join(prompt.split() + [self.idx2word[i] for i in sampled])

    def prompt_ids(self, prompt):
        """The ids of the prompt's words (unknown ones as <unk>), as generate.py feeds --prompt in."""
        try:
            return data.encode(prompt.split(), self.word2idx)[0]
        except data.DataError as e:
            raise UserError(f'prompt: {e}') from None

    def hidden_states(self, text, unknown='<unk>'):
        """The last layer's outputs (evaluation mode: no dropout), one row per token of `text` read as one
        stream (<eos> at each line end), from a zero state: a float tensor (tokens, features) on the CPU."""
        ids, _, _ = self.encode(self.text_lines(text), unknown)
        return scoring.last_layer_outputs(self.model, [i for line in ids for i in line], self.bptt, self.device)

