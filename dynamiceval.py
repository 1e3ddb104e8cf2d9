"""Dynamic evaluation of a trained AWD-LSTM (Krause, Kahembwe, Murray & Renals 2017, "Dynamic
Evaluation of Neural Sequence Models", arXiv:1709.07432: the "RMS with global prior" update rule).

    python3 dynamiceval.py --data data/penn --save PTB.pt

The model adapts to the text it is scoring: the evaluation stream is cut into segments of --bptt
tokens; each segment is first scored with the current weights (that score is what is reported), then
the weights take one gradient step on that segment's loss. Scoring always precedes the update, so
every token is predicted by a model that has only seen the tokens before it. The hidden state is
carried across segments (detached). Valid and test each start again from the trained weights.

The update (the paper's dynamic-evaluation methodology: RMS-normalised steps plus a decay toward the
trained weights scaled per parameter by the gradient statistics; the normalisation and clipping
details below were checked against the authors' released PyTorch code, github.com/benkrause/
dynamic-evaluation, not copied from it; theta_g = the trained weights, l = one parameter entry):

    1. gradient statistics, once, on the training data with theta_g fixed (eval mode, no dropout),
       in segments of --bptt tokens x --batch_size columns (at most --max-batches segments):
           MS_l = (1 / N_b) * sum_k (dL_k / dtheta_l)^2          L_k: mean NLL of segment k
    2. decay rates (a per-parameter version of the global prior):
           RMS_l = sqrt(MS_l) / mean(sqrt(MS))                    normalised to mean 1
       where, as in the authors' released code (whose published hyper-parameters assume it), the mean
       is over parameter tensors of each tensor's mean; and lamb * RMS_l is clipped at 1 (the code's
       "clip decay rates at 1/lambda") so that the decay can never overshoot theta_g.
    3. per evaluation segment s_i, after scoring it:
           theta_l <- theta_l - lr * dL(s_i)/dtheta_l / (sqrt(MS_l) + epsilon)
                               + lamb * RMS_l * (theta_g,l - theta_l)
       (both terms use theta before the step).

--sgd instead uses the plain SGD rule with a uniform decay toward the trained weights (no gradient
statistics are collected):
           theta <- theta - lr * dL(s_i)/dtheta + lamb * (theta_g - theta)
(--lamb 0: plain SGD dynamic evaluation with no prior); it needs a much larger --lr than the RMS rule.

The adapted parameters are all of the model's (embedding = tied decoder weight, each layer's LSTM
weights including the raw weight-dropped matrix, decoder bias) and the split softmax's tombstones
where there are any.

Defaults (--lr 5e-5, --lamb 0.002, --epsilon 2e-5, --bptt 5, --batch_size 100, --max-batches all)
are those of the authors' released PyTorch code (github.com/benkrause/dynamic-evaluation), whose
README says they are tuned for AWD-LSTM + dynamic evaluation on PTB. The paper's AWD-LSTM results
(PTB 51.6 / 51.1, WT2 46.4 / 44.3 valid / test) were obtained with their first code release, whose
hyper-parameters were on another scale: lr 0.002, lamb 0.02, epsilon 0.001 for both PTB and WT2
(README of the same repository, which calls them the "oldhyper" settings). --paper-scale reads
--lr, --lamb and --epsilon on that scale and converts them as the authors' code does for those
settings (lamb / number of parameter tensors; lr and epsilon / sqrt(number of gradient-statistics
segments); for PTB with the defaults: 14 tensors, about 1,859 segments, so lr about 4.6e-5, lamb
about 0.0014, epsilon about 2.3e-5, close to the defaults):

    python3 dynamiceval.py --data data/penn --save PTB.pt --paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.001
    python3 dynamiceval.py --data data/wikitext-2 --save WT2.pt --paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.001

The authors' README command lines run unchanged (docs/PARITY.md): --model PATH, --val, --oldhyper
(= --paper-scale), --max_batches, --grid / --gridfast, --gpu N (negative: the CPU), --QRNN. The result
printed last is their figure (exp of the mean loss over the tokens their loop scores); this code's own
convention is printed beside it, named:

Reported loss: as training.evaluate (and main.py / the original), the sum over segments of
(segment length x mean segment loss) divided by the number of rows of the batchified split (the
first token of the stream is never predicted, so this is the mean over N-1 predictions times
(N-1)/N at batch size 1). With --lr 0 the result is therefore exactly the static evaluation at the same batch size
and --bptt.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn

import harness
import utils
import errors
import training
from model import CELLS

RNN_TYPES = tuple(CELLS)  # Krause's --model named a cell type; anything else is a checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Dynamic evaluation (Krause et al. 2017, arXiv:1709.07432) of a main.py / finetune.py '
                    'checkpoint on valid and test: RMS-normalised gradient steps with decay toward the '
                    'trained weights: theta <- theta - lr * grad / (sqrt(MS) + epsilon) + '
                    'lamb * RMS * (theta_g - theta), MS = mean squared gradient on the training data, '
                    'RMS = sqrt(MS) normalised to mean 1 (lamb * RMS clipped at 1). Each segment is scored '
                    'before the model updates on it.',
        epilog='Defaults are those of the authors\' code (github.com/benkrause/dynamic-evaluation), '
               'tuned there for AWD-LSTM on PTB. To use the paper\'s AWD-LSTM settings (PTB and WT2): '
               '--paper-scale --lr 0.002 --lamb 0.02 --epsilon 0.001. Loss: sum over segments of (segment length x '
               'mean segment loss) / rows of the split, as training.evaluate, so --lr 0 gives the static evaluation.')
    g = parser.add_argument_group('data, checkpoint and device')
    g.add_argument('--data', type=str, default='data/penn/',
                   help='folder with train.txt, valid.txt, test.txt: the corpus the checkpoint was trained on')
    g.add_argument('--save', type=str, default=None,
                   help='checkpoint to evaluate (written by main.py or finetune.py); it is not modified')
    g.add_argument('--model', type=str, default=None,
                   help='accepted for compatibility: LSTM/QRNN/GRU is ignored (the checkpoint knows its '
                        'type, as in pointer.py); any other value is taken as the checkpoint path when '
                        '--save is not given (the flag of the authors\' dynamiceval.py)')
    harness.add_device_args(g)
    g.add_argument('--gpu', type=int, default=None, metavar='N',
                   help="the authors' flag: GPU N (cuda:N), or the CPU when N is negative")
    g.add_argument('--QRNN', action='store_true',
                   help="the authors' flag, accepted: the recurrent core comes from the checkpoint")
    g.add_argument('--seed', type=int, default=1111, help='random seed (the evaluation itself is deterministic)')
    g.add_argument('--split', choices=('both', 'valid', 'test'), default=None,
                   help='which splits to evaluate (default both; tune hyper-parameters on valid only)')
    g.add_argument('--val', action='store_true',
                   help="the authors' flag: evaluate valid instead of test (--split valid)")

    h = parser.add_argument_group('dynamic evaluation (paper section 5; defaults from the authors\' code)')
    h.add_argument('--lr', type=float, default=5e-5, help='learning rate eta (0: static evaluation)')
    h.add_argument('--lamb', type=float, default=0.002,
                   help='decay rate lambda toward the trained weights (0: no decay)')
    h.add_argument('--epsilon', type=float, default=2e-5,
                   help='stabiliser added to sqrt(MS) in the RMS rule (must be > 0)')
    h.add_argument('--bptt', type=int, default=5,
                   help='segment length: the model updates after every segment (also the segment length '
                        'of the gradient statistics)')
    h.add_argument('--batch_size', type=int, default=100, metavar='N',
                   help='batch size of the gradient statistics on the training data')
    h.add_argument('--eval_batch_size', type=int, default=1, metavar='N',
                   help='batch size of the dynamic evaluation itself (1 as in the paper: one stream, one '
                        'model; with N > 1 all N columns share one model and its updates)')
    h.add_argument('--max-batches', '--max_batches', type=int, default=-1, metavar='N',
                   help='at most N training segments for the gradient statistics (-1: the whole training set)')
    h.add_argument('--sgd', action='store_true',
                   help='plain SGD rule theta <- theta - lr * grad + lamb * (theta_g - theta) instead of the '
                        'RMS rule; no gradient statistics; needs a much larger --lr')
    h.add_argument('--paper-scale', '--oldhyper', action='store_true',
                   help='--lr, --lamb, --epsilon are on the scale of the paper / first code release (e.g. '
                        '0.002, 0.02, 0.001): divide lamb by the number of parameter tensors, lr and epsilon '
                        'by sqrt(number of gradient-statistics segments); --oldhyper is the authors\' name')
    h.add_argument('--grid', action='store_true',
                   help="the authors' grid search: every lr in GRID_LR and lamb in GRID_LAMB (both times "
                        "bptt / 5) on valid, then valid and test with the best; --lr and --lamb are ignored")
    h.add_argument('--gridfast', action='store_true',
                   help='--grid, searching on the first 30,000 valid tokens only')
    args = parser.parse_args(argv)
    args.split = split_to_evaluate(args.split, args.val)
    args.save = checkpoint_to_evaluate(args.save, args.model)
    check_args(args)
    return args


def split_to_evaluate(split, val):
    """--split, or 'valid' for the authors' --val; a --split that --val contradicts is refused rather
    than silently overridden."""
    if val and split not in (None, 'valid'):
        raise errors.UserError(f'--val (evaluate valid) and --split {split} disagree: give one of them')
    return 'valid' if val else split or 'both'


def checkpoint_to_evaluate(save, model):
    """--save, or the authors' --model PATH (a value that is not an RNN type); two flags naming two
    different files are refused rather than one of them silently ignored."""
    if model is None or model in RNN_TYPES:
        return save
    if save is not None and not same_file(save, model):
        raise errors.UserError(f'--model {model} and --save {save} name two different checkpoints: give one '
                               "(--model PATH is the authors' name for --save)")
    return model if save is None else save


def same_file(a, b):
    """Whether the paths `a` and `b` name one file (the same path, or two names of an existing file)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_args(args):
    def require(ok, message):
        if not ok:
            raise errors.UserError(message)
    require(args.save is not None and args.save.strip() != '', 'no checkpoint given: use --save PATH.pt')
    # A larger lr (1e39) is finite as a Python float but fails as the float32 step size of the update.
    require(0 <= args.lr <= harness.FLOAT32_MAX, f'--lr must be >= 0 and finite in float32 (at most '
                                             f'{harness.FLOAT32_MAX:.4g}), got {args.lr}')
    require(math.isfinite(args.lamb) and args.lamb >= 0, f'--lamb must be >= 0, got {args.lamb}')
    require(math.isfinite(args.epsilon) and args.epsilon > 0, f'--epsilon must be > 0, got {args.epsilon}')
    require(args.bptt >= 1, f'--bptt must be >= 1, got {args.bptt}')
    require(args.batch_size >= 1, f'--batch_size must be >= 1, got {args.batch_size}')
    require(args.eval_batch_size >= 1, f'--eval_batch_size must be >= 1, got {args.eval_batch_size}')
    require(args.max_batches == -1 or args.max_batches >= 1,
            f'--max-batches must be -1 (all) or >= 1, got {args.max_batches}')
    require(not (args.sgd and args.paper_scale), '--paper-scale applies to the RMS rule, not to --sgd')
    require(not (args.sgd and (args.grid or args.gridfast)), '--grid searches the RMS rule, not --sgd')
    require(not ((args.grid or args.gridfast) and args.eval_batch_size != 1),
            '--grid evaluates at --eval_batch_size 1, as the authors\' code did')
    require(not (args.gpu is not None and args.gpu >= 0 and args.cpu), f'--gpu {args.gpu} and --cpu disagree')
    require(harness.SEED[0](args.seed), f'--seed must be {harness.SEED[1]}, got {args.seed!r}')


# ---------------------------------------------------------------------------------------------
# The algorithm

def adapted_parameters(model, criterion):
    """Every parameter of the model and the criterion, each once (the decoder weight is the embedding)."""
    seen, params = set(), []
    for p in list(model.parameters()) + list(criterion.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def eval_mode_with_gradients(model):
    """model.eval() (no dropout of any kind), but the wrapped nn.LSTM/GRU modules in train mode.

    cuDNN refuses to backpropagate through an RNN in eval mode; for a single-layer nn.LSTM/GRU
    (dropout=0) the train flag changes nothing else, while the model's own dropouts and WeightDrop
    stay off.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.train()


def _segment_loss(model, criterion, data, targets, hidden):
    output, hidden = model(data, hidden)
    return criterion(model.decoder.weight, model.decoder.bias, output, targets), hidden


def gradient_statistics(model, criterion, params, train_data, bptt, max_batches=-1, progress=None):
    """Mean squared gradient of each parameter over training segments, weights fixed (step 1).

    Returns (list of MS tensors, number of segments).
    """
    eval_mode_with_gradients(model)
    model.reset()
    ms = [torch.zeros_like(p) for p in params]
    hidden = model.init_hidden(train_data.size(1))
    batches = 0
    # As the authors' gradstat: segments start before the last two rows (a final one-row segment is left out).
    for i in range(0, train_data.size(0) - 2, bptt):
        if 0 < max_batches <= batches:
            break
        data, targets = utils.get_batch(train_data, i, seq_len=bptt)
        hidden = utils.repackage_hidden(hidden)
        loss, hidden = _segment_loss(model, criterion, data, targets, hidden)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for m, g in zip(ms, grads):
            if g is not None:
                m.addcmul_(g, g)
        batches += 1
        if progress is not None:
            progress.update(1)
    for m in ms:
        m.div_(max(batches, 1))
    return ms, batches


def decay_rates(ms):
    """RMS_l = sqrt(MS_l) normalised so that the mean over tensors of each tensor's mean is 1 (step 2)."""
    rms = [m.sqrt() for m in ms]
    mean = sum(float(r.mean()) for r in rms) / len(rms)
    if mean <= 0:
        raise errors.UserError('the gradient statistics are all zero: is the training split empty?')
    return rms, [r / mean for r in rms]


class DynamicEvaluator:
    """Holds the trained weights theta_g and the per-parameter terms of the update rule.

    `rule` is 'rms' (needs `ms`, the gradient statistics) or 'sgd'. `evaluate(data)` and `segments(data)`
    start from theta_g, adapt while scoring, and put theta_g back when they finish (or are abandoned),
    so the model holds the trained weights outside an evaluation.
    """

    def __init__(self, model, criterion, lr, lamb, epsilon=None, ms=None, rule='rms', clip_lamb=None):
        self.model, self.criterion = model, criterion
        self.params = adapted_parameters(model, criterion)
        self.lr, self.lamb, self.rule = lr, lamb, rule
        self.theta_g = [p.detach().clone() for p in self.params]
        if rule == 'rms':
            rms, decrate = decay_rates(ms)
            # The gradient is divided by (sqrt(MS) + epsilon); the decay rates are clipped at 1 / lamb, as
            # the authors' code clipped them, so that one step never moves a weight past theta_g.
            # `clip_lamb` (default lamb) is the lamb they are clipped for: the authors' --grid clipped them
            # in place for each lamb of its grid, so its final runs used those clipped at the largest one.
            clip_lamb = lamb if clip_lamb is None else clip_lamb
            self.denom = [r + epsilon for r in rms]
            self.decay = [lamb * d.clamp(max=1 / clip_lamb) if clip_lamb > 0 else lamb * d for d in decrate]
        elif rule == 'sgd':
            self.denom = None
            self.decay = [min(lamb, 1.0)] * len(self.params)
        else:
            raise ValueError(f'unknown rule {rule!r}')

    def reset(self):
        with torch.no_grad():
            for p, p0 in zip(self.params, self.theta_g):
                p.copy_(p0)

    @torch.no_grad()
    def _step(self, grads):
        for k, (p, p0, g) in enumerate(zip(self.params, self.theta_g, grads)):
            pull = (p0 - p).mul_(self.decay[k])  # decay toward theta_g, from theta before the step
            if g is not None and self.lr:
                if self.denom is not None:
                    p.addcdiv_(g, self.denom[k], value=-self.lr)
                else:
                    p.add_(g, alpha=-self.lr)
            p.add_(pull)

    def segments(self, data_source, bptt):
        """Yields (first row, segment length, mean loss of the segment) for each segment, scored before the
        update."""
        model, criterion = self.model, self.criterion
        self.reset()
        eval_mode_with_gradients(model)
        model.reset()
        hidden = model.init_hidden(data_source.size(1))
        try:
            for i in range(0, data_source.size(0) - 1, bptt):
                data, targets = utils.get_batch(data_source, i, seq_len=bptt)
                hidden = utils.repackage_hidden(hidden)
                loss, hidden = _segment_loss(model, criterion, data, targets, hidden)
                score = loss.detach()  # the segment is scored with the weights before its update
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                self._step(grads)
                yield i, len(data), score
        finally:
            self.reset()

    def evaluate(self, data_source, bptt, progress=None):
        """Loss normalised as training.evaluate: sum(len(segment) * mean segment loss) / len(data_source)."""
        return self.evaluate_both(data_source, bptt, progress)[0]

    def evaluate_both(self, data_source, bptt, progress=None):
        """(this code's loss, sum / N as training.evaluate; the authors' perplexity).

        The authors' figure (their dynamiceval.py, which produced the paper's) is exp of the mean loss over
        the tokens scored, each segment weighted by its length / bptt, summed in float32; a segment that
        starts at the second-to-last row (one token) is not scored there, so it is left out of it here.
        """
        total = torch.zeros((), device=data_source.device)
        authors_total, authors_count = torch.zeros((), device=data_source.device), 0.
        for start, seq_len, score in self.segments(data_source, bptt):
            total += seq_len * score
            if start < data_source.size(0) - 2:
                authors_total += (seq_len / bptt) * score
                authors_count += seq_len / bptt
            if progress is not None:
                progress.update(1)
        return float(total) / len(data_source), float(torch.exp(authors_total / max(authors_count, 1.)))


# ---------------------------------------------------------------------------------------------
# Script

def check_result(split, loss, lr):
    """A loss that is not a finite number, or whose perplexity overflows, is an error, never a result:
    the updates diverged (too large an --lr)."""
    if not math.isfinite(loss) or math.isinf(training.perplexity(loss)):
        raise errors.UserError(f'the {split} loss of dynamic evaluation is {loss:.4g}, not a usable result: '
                               f'the updates diverged with --lr {lr:g}; try a smaller one')


# The authors' --grid (their dynamiceval.py): lamb in the outer loop, lr in the inner, each times bptt / 5.
GRID_LR = [0.00003, 0.00004, 0.00005, 0.00006, 0.00007, 0.0001]
GRID_LAMB = [0.001, 0.002, 0.003, 0.005]
GRIDFAST_TOKENS = 30000


def choose_device(args):
    """The authors' --gpu N (negative: the CPU), else harness.choose_device."""
    if args.gpu is None:
        return harness.choose_device(args)
    if args.gpu < 0:
        return torch.device('cpu')
    if not torch.cuda.is_available() or args.gpu >= torch.cuda.device_count():
        raise errors.UserError(f'--gpu {args.gpu}: no such GPU (use --gpu -1 for the CPU)')
    return torch.device('cuda', args.gpu)


def grid_search(make_evaluator, val_data, bptt, gridfast, log=print):
    """The authors' grid on valid (its first GRIDFAST_TOKENS rows with `gridfast`): returns (lr, lamb) of
    the lowest perplexity in their convention, the first one on ties."""
    search_data = val_data[:GRIDFAST_TOKENS] if gridfast else val_data
    best = (float('inf'), None, None)
    for lamb in [x * (bptt / 5.0) for x in GRID_LAMB]:
        for lr in [x * (bptt / 5.0) for x in GRID_LR]:
            _, ppl = make_evaluator(lr, lamb).evaluate_both(search_data, bptt)
            log(f'| grid | lr {lr:.6g} | lamb {lamb:.6g} | valid ppl {ppl:.3f}')
            if ppl < best[0]:
                best = (ppl, lr, lamb)
    return best[1], best[2]


def mos_dropconnect_note(model):
    """The note for an MoS model trained with DropConnect (None for any other model): MoS's dynamiceval.py
    ran it in train mode with `use_dropout = False`, which its model reads for every dropout but
    WeightDrop's (its rate is fixed at construction), so its figures for such a model were measured with
    DropConnect on; this code evaluates without any dropout, as Krause et al. describe."""
    if model.n_experts <= 1 or not model.wdrop:
        return None
    return (f"note: MoS's dynamiceval.py scored this model with DropConnect on (rate {model.wdrop:g} on the "
            "recurrent weights, a random mask each segment); these figures are without it (docs/MOS.md)")


def evaluate_checkpoint(args, log=print):
    """The whole run for parsed arguments: returns {'valid': loss, 'test': loss} (those evaluated, this
    code's convention), the hyper-parameters actually used ('lr', 'lamb', 'epsilon': after --paper-scale
    or --grid) and {'valid': ppl, 'test': ppl}, the authors' figures (DynamicEvaluator.evaluate_both)."""
    harness.set_seed(args.seed)
    device = choose_device(args)
    ckpt = harness.load_checkpoint(args.save, map_location=device, resume_state_ok=False)
    corpus, train_data, val_data, test_data = harness.load_data(
        args, (args.batch_size, args.eval_batch_size, args.eval_batch_size), device, log=log,
        vocabulary=harness.vocabulary_options(ckpt))
    harness.check_vocabulary(ckpt['idx2word'], corpus, args.save, args.data)
    model, criterion = ckpt['model'], ckpt['criterion']
    model.to(device)
    criterion.to(device)
    params = adapted_parameters(model, criterion)
    if args.QRNN and model.rnn_type != 'QRNN':
        log(f'note: --QRNN ignored: the checkpoint holds a {model.rnn_type} model')
    if mos_dropconnect_note(model):
        log(mos_dropconnect_note(model))
    log(f'Model: {model.rnn_type}, {sum(p.numel() for p in params)} parameters in {len(params)} tensors')

    lr, lamb, epsilon, ms = args.lr, args.lamb, args.epsilon, None
    try:
        if not args.sgd:
            log('Collecting gradient statistics on the training data ...')
            start = time.time()
            total = (train_data.size(0) - 1 + args.bptt - 1) // args.bptt
            if args.max_batches > 0:
                total = min(total, args.max_batches)
            with harness.progress_bar(total, 'gradient statistics') as bar:
                ms, nbatches = gradient_statistics(model, criterion, params, train_data, args.bptt,
                                                   args.max_batches, progress=bar)
            log(f'| gradient statistics | {nbatches} segments of {args.bptt} x {args.batch_size} tokens '
                f'| {time.time() - start:.1f}s')
            if args.paper_scale:
                lamb, lr, epsilon = lamb / len(params), lr / math.sqrt(nbatches), epsilon / math.sqrt(nbatches)
                log(f'--paper-scale: lr {lr:.6g}, lamb {lamb:.6g}, epsilon {epsilon:.6g} '
                    f'(pass these without --paper-scale for the same run)')
        rule = 'sgd' if args.sgd else 'rms'
        clip_lamb = None
        if args.grid or args.gridfast:
            start = time.time()
            def make_evaluator(grid_lr, grid_lamb):
                return DynamicEvaluator(model, criterion, grid_lr, grid_lamb, epsilon, ms, rule=rule)
            lr, lamb = grid_search(make_evaluator, val_data, args.bptt, args.gridfast, log)
            # The authors' code clipped the decay rates in place for every lamb of the grid: its final
            # runs used them clipped at 1 / the largest.
            clip_lamb = max(GRID_LAMB) * (args.bptt / 5.0)
            log(f'best hyperparams: lr = {lr} lamb = {lamb} | grid search {time.time() - start:.1f}s')
        evaluator = DynamicEvaluator(model, criterion, lr, lamb, epsilon, ms, rule=rule, clip_lamb=clip_lamb)

        results, authors = {}, {}
        for name, data_source in (('valid', val_data), ('test', test_data)):
            if args.split not in ('both', name) and not (args.grid or args.gridfast):
                continue
            start = time.time()
            nseg = (data_source.size(0) - 1 + args.bptt - 1) // args.bptt
            with harness.progress_bar(nseg, f'dynamic evaluation ({name})') as bar:
                # Each split starts from the trained weights (the evaluator restores them).
                results[name], authors[name] = evaluator.evaluate_both(data_source, args.bptt, progress=bar)
            check_result(name, results[name], lr)
            log(f'| {name} | {time.time() - start:.1f}s | {name} ppl {authors[name]:8.2f} (the authors\' '
                f'convention: mean over the tokens scored) | sum / N, as main.py: '
                f'{harness.report_line(name, results[name], model.release)}')
    except torch.cuda.OutOfMemoryError:
        raise errors.UserError('GPU out of memory: try a smaller --batch_size or --max-batches') from None
    return results, {'lr': lr, 'lamb': lamb, 'epsilon': epsilon, 'release': model.release}, authors


def authors_result_lines(authors, grid):
    """The result as the authors' dynamiceval.py printed it (numbers as numpy prints a float32): after
    --grid valid and test, otherwise the split it evaluated: test, or valid with --val."""
    if grid:
        return [f'validation perplexity loss: {str(np.float32(authors["valid"]))}',
                f'test perplexity loss: {str(np.float32(authors["test"]))}']
    name = 'test' if 'test' in authors else 'valid'
    return [f'perplexity loss: {str(np.float32(authors[name]))}']


def main(argv=None):
    args = parse_args(argv)
    print('Args:', args)
    results, settings, authors = evaluate_checkpoint(args)
    print('=' * 89)
    print('| End of dynamic evaluation | ' + ' | '.join(f'{k} ppl {v:8.2f}' for k, v in authors.items())
          + ' | sum / N, as main.py: ' + ' | '.join(harness.report_line(k, v, settings['release']) for k, v in results.items()))
    print('=' * 89)
    for line in authors_result_lines(authors, args.grid or args.gridfast):
        print(line)
    return 0


if __name__ == '__main__':
    harness.run_script(main)
