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

Reported loss: as training.evaluate (and main.py / the original), the sum over segments of
(segment length x mean segment loss) divided by the number of rows of the batchified split (the
first token of the stream is never predicted, so this is the mean over N-1 predictions times
(N-1)/N at batch size 1). With --lr 0 the result is therefore exactly the static evaluation at the same batch size
and --bptt.
"""
import argparse
import math
import time

import torch
import torch.nn as nn

import batching
import checkpoint
import cli
import flags
import run_log
import errors
import training

RNN_TYPES = ('LSTM', 'QRNN', 'GRU')


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
    flags.add_device_args(g)
    g.add_argument('--seed', type=int, default=1111, help='random seed (the evaluation itself is deterministic)')
    g.add_argument('--split', choices=('both', 'valid', 'test'), default='both',
                   help='which splits to evaluate (tune hyper-parameters on valid only)')

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
    h.add_argument('--max-batches', type=int, default=-1, metavar='N',
                   help='at most N training segments for the gradient statistics (-1: the whole training set)')
    h.add_argument('--sgd', action='store_true',
                   help='plain SGD rule theta <- theta - lr * grad + lamb * (theta_g - theta) instead of the '
                        'RMS rule; no gradient statistics; needs a much larger --lr')
    h.add_argument('--paper-scale', action='store_true',
                   help='--lr, --lamb, --epsilon are on the scale of the paper / first code release (e.g. '
                        '0.002, 0.02, 0.001): divide lamb by the number of parameter tensors, lr and epsilon '
                        'by sqrt(number of gradient-statistics segments)')
    args = parser.parse_args(argv)
    if args.model is not None and args.model not in RNN_TYPES and args.save is None:
        args.save = args.model
    check_args(args)
    return args


def check_args(args):
    def require(ok, message):
        if not ok:
            raise errors.UserError(message)
    require(args.save is not None and args.save.strip() != '', 'no checkpoint given: use --save PATH.pt')
    # A larger lr (1e39) is finite as a Python float but fails as the float32 step size of the update.
    require(0 <= args.lr <= flags.FLOAT32_MAX, f'--lr must be >= 0 and finite in float32 (at most '
                                             f'{flags.FLOAT32_MAX:.4g}), got {args.lr}')
    require(math.isfinite(args.lamb) and args.lamb >= 0, f'--lamb must be >= 0, got {args.lamb}')
    require(math.isfinite(args.epsilon) and args.epsilon > 0, f'--epsilon must be > 0, got {args.epsilon}')
    require(args.bptt >= 1, f'--bptt must be >= 1, got {args.bptt}')
    require(args.batch_size >= 1, f'--batch_size must be >= 1, got {args.batch_size}')
    require(args.eval_batch_size >= 1, f'--eval_batch_size must be >= 1, got {args.eval_batch_size}')
    require(args.max_batches == -1 or args.max_batches >= 1,
            f'--max-batches must be -1 (all) or >= 1, got {args.max_batches}')
    require(not (args.sgd and args.paper_scale), '--paper-scale applies to the RMS rule, not to --sgd')
    flags.check_args(argparse.Namespace(seed=args.seed))


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
    for i in range(0, train_data.size(0) - 1, bptt):
        if 0 < max_batches <= batches:
            break
        data, targets = batching.get_batch(train_data, i, seq_len=bptt)
        hidden = batching.repackage_hidden(hidden)
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

    def __init__(self, model, criterion, lr, lamb, epsilon=None, ms=None, rule='rms'):
        self.model, self.criterion = model, criterion
        self.params = adapted_parameters(model, criterion)
        self.lr, self.lamb, self.rule = lr, lamb, rule
        self.theta_g = [p.detach().clone() for p in self.params]
        if rule == 'rms':
            rms, decrate = decay_rates(ms)
            # The gradient is divided by (sqrt(MS) + epsilon); the decay multiplier lamb * RMS is
            # clipped at 1 so that one step never moves a weight past theta_g.
            self.denom = [r + epsilon for r in rms]
            self.decay = [(lamb * d).clamp_(max=1.0) for d in decrate]
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
        """Yields (segment length, mean loss of the segment) for each segment, scored before the update."""
        model, criterion = self.model, self.criterion
        self.reset()
        eval_mode_with_gradients(model)
        model.reset()
        hidden = model.init_hidden(data_source.size(1))
        try:
            for i in range(0, data_source.size(0) - 1, bptt):
                data, targets = batching.get_batch(data_source, i, seq_len=bptt)
                hidden = batching.repackage_hidden(hidden)
                loss, hidden = _segment_loss(model, criterion, data, targets, hidden)
                score = loss.detach()  # the segment is scored with the weights before its update
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                self._step(grads)
                yield len(data), score
        finally:
            self.reset()

    def evaluate(self, data_source, bptt, progress=None):
        """Loss normalised as training.evaluate: sum(len(segment) * mean segment loss) / len(data_source)."""
        total = torch.zeros((), device=data_source.device)
        for seq_len, score in self.segments(data_source, bptt):
            total += seq_len * score
            if progress is not None:
                progress.update(1)
        return float(total) / len(data_source)


# ---------------------------------------------------------------------------------------------
# Script

def check_result(split, loss, lr):
    """A loss that is not a finite number, or whose perplexity overflows, is an error, never a result:
    the updates diverged (too large an --lr)."""
    if not math.isfinite(loss) or math.isinf(training.perplexity(loss)):
        raise errors.UserError(f'the {split} loss of dynamic evaluation is {loss:.4g}, not a usable result: '
                               f'the updates diverged with --lr {lr:g}; try a smaller one')


def evaluate_checkpoint(args, log=print):
    """The whole run for parsed arguments: returns {'valid': loss, 'test': loss} (those evaluated) and
    the hyper-parameters actually used ('lr', 'lamb', 'epsilon': after --paper-scale)."""
    cli.set_seed(args.seed)
    device = cli.choose_device(args)
    ckpt = checkpoint.load_checkpoint(args.save, map_location=device, resume_state_ok=False)
    corpus, train_data, val_data, test_data = cli.load_data(
        args, (args.batch_size, args.eval_batch_size, args.eval_batch_size), device, log=log)
    checkpoint.check_vocabulary(ckpt['idx2word'], corpus, args.save, args.data)
    model, criterion = ckpt['model'], ckpt['criterion']
    model.to(device)
    criterion.to(device)
    params = adapted_parameters(model, criterion)
    log(f'Model: {model.rnn_type}, {sum(p.numel() for p in params)} parameters in {len(params)} tensors')

    lr, lamb, epsilon, ms = args.lr, args.lamb, args.epsilon, None
    try:
        if not args.sgd:
            log('Collecting gradient statistics on the training data ...')
            start = time.time()
            total = (train_data.size(0) - 1 + args.bptt - 1) // args.bptt
            if args.max_batches > 0:
                total = min(total, args.max_batches)
            with run_log.progress_bar(total, 'gradient statistics') as bar:
                ms, nbatches = gradient_statistics(model, criterion, params, train_data, args.bptt,
                                                   args.max_batches, progress=bar)
            log(f'| gradient statistics | {nbatches} segments of {args.bptt} x {args.batch_size} tokens '
                f'| {time.time() - start:.1f}s')
            if args.paper_scale:
                lamb, lr, epsilon = lamb / len(params), lr / math.sqrt(nbatches), epsilon / math.sqrt(nbatches)
                log(f'--paper-scale: lr {lr:.6g}, lamb {lamb:.6g}, epsilon {epsilon:.6g} '
                    f'(pass these without --paper-scale for the same run)')
        evaluator = DynamicEvaluator(model, criterion, lr, lamb, epsilon, ms, rule='sgd' if args.sgd else 'rms')

        results = {}
        for name, data_source in (('valid', val_data), ('test', test_data)):
            if args.split not in ('both', name):
                continue
            start = time.time()
            nseg = (data_source.size(0) - 1 + args.bptt - 1) // args.bptt
            with run_log.progress_bar(nseg, f'dynamic evaluation ({name})') as bar:
                # Each split starts from the trained weights (the evaluator restores them).
                results[name] = evaluator.evaluate(data_source, args.bptt, progress=bar)
            check_result(name, results[name], lr)
            log(f'| {name} | {time.time() - start:.1f}s | {run_log.report_line(name, results[name], model.release)}')
    except torch.cuda.OutOfMemoryError:
        raise errors.UserError('GPU out of memory: try a smaller --batch_size or --max-batches') from None
    return results, {'lr': lr, 'lamb': lamb, 'epsilon': epsilon, 'release': model.release}


def main(argv=None):
    args = parse_args(argv)
    print('Args:', args)
    results, settings = evaluate_checkpoint(args)
    print('=' * 89)
    print('| End of dynamic evaluation | '
          + ' | '.join(run_log.report_line(k, v, settings['release']) for k, v in results.items()))
    print('=' * 89)
    return 0


if __name__ == '__main__':
    cli.run(main)
