"""Helpers of benchmarks/gpu_check.sh; run from the repository root.

    python benchmarks/gpu_check.py correctness [--cpu]   # CPU vs CUDA, eager vs graphs: a few training steps
    python benchmarks/gpu_check.py original DEST         # the original 2018 code, patched, copied to DEST
    python benchmarks/gpu_check.py summary LOGDIR        # the closing table, from gpu_check.sh's logs in LOGDIR
"""
import argparse
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Targets of the GPU check (one H200): a real PTB 2018 epoch, a WT2 batch-80 epoch, peak memory vs eager.
PTB_TARGET_S, WT2_TARGET_S, MEMORY_FACTOR = 5.0, 7.0, 2.0


def correctness(cpu):
    """Training steps from the same weights, TF32 off, dropout 0 (so that CPU and GPU draw nothing):
    CPU eager, then on CUDA eager and graphs; and, dropouts on, CUDA eager against graphs. Prints
    the largest differences; exit status 1 if a comparison is out of tolerance."""
    import numpy as np
    import torch
    import training
    from harness import cuda_graphs
    from utils import batchify
    from model import RNNModel
    from splitcross import SplitCrossEntropyLoss

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if cpu:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CPU
    size = dict(ntok=200, emsize=16, nhid=24, batch=4, tokens=1000) if cpu else \
        dict(ntok=10000, emsize=400, nhid=1150, batch=20, tokens=20 * 700)

    def run(device, step, dropouts, rnn_type='LSTM', tokens=size['tokens']):
        torch.manual_seed(0)
        model = RNNModel(rnn_type, size['ntok'], size['emsize'], size['nhid'], 3, *dropouts,
                         tie_weights=True).to(device)
        criterion = SplitCrossEntropyLoss(size['emsize'], splits=[]).to(device)
        params = list(model.parameters()) + list(criterion.parameters())
        optimizer = training.make_optimizer('sgd', params, 30., 1.2e-6)
        stream = torch.randint(size['ntok'], (tokens,), generator=torch.Generator().manual_seed(1))
        data = batchify(stream, size['batch'], device=device)
        losses = []

        def recording(*a, **k):
            loss, hidden = step(*a, **k)
            losses.append(float(loss))
            return loss, hidden
        training.train_epoch(model, criterion, optimizer, params, data, np.random.RandomState(3), 1,
                             bptt=70 if not cpu else 10, clip=0.25, penalties=dict(alpha=2., beta=1.),
                             log_interval=10 ** 6, log=lambda *a: None, step=recording)
        weights = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
        return torch.tensor(losses, dtype=torch.float64), weights

    def compare(name, a, b, tol):
        (la, wa), (lb, wb) = a, b
        loss_err = float((la - lb).abs().max() / lb.abs().max())
        weight_err, worst = max((float((wa[k] - wb[k]).norm() / max(wb[k].norm(), 1e-30)), k) for k in wb)
        bitwise = torch.equal(la, lb) and all(torch.equal(wa[k], wb[k]) for k in wb)
        good = len(la) == len(lb) and loss_err <= tol and weight_err <= tol
        print(f'{"PASS" if good else "FAIL"} {name}: {len(la)} steps; losses rel err {loss_err:.2e}, '
              f'weights rel err {weight_err:.2e} (worst {worst}); bitwise {bitwise} (tol {tol:g})', flush=True)
        return good

    ok = True
    gpu = 'cpu' if cpu else 'cuda'
    no_dropout = (0, 0, 0, 0, 0)
    cpu_eager = run('cpu', training.train_step, no_dropout)
    if cpu:
        print('note: --cpu: no CUDA here; the static-buffer step runs without capture on the CPU')
        ok &= compare('CPU eager vs CPU static-buffer step, no dropout', run('cpu', cuda_graphs.GraphedTrainStep(),
                                                                            no_dropout), cpu_eager, 0)
    else:
        gpu_eager = run(gpu, training.train_step, no_dropout)
        ok &= compare('CPU eager vs CUDA eager, no dropout', gpu_eager, cpu_eager, 1e-4)
        ok &= compare('CPU eager vs CUDA graphs, no dropout', run(gpu, cuda_graphs.GraphedTrainStep(), no_dropout),
                      cpu_eager, 1e-4)
    # Long enough (about 100 steps on a GPU) for most steps to be replays of a captured graph.
    dropouts, long = (0.4, 0.25, 0.4, 0.1, 0.5), size['tokens'] * (1 if cpu else 10)
    for rnn_type in ('LSTM', 'QRNN'):
        graphed = cuda_graphs.GraphedTrainStep()
        ok &= compare(f'{rnn_type} {gpu} eager vs {gpu} graphs, dropouts on',
                      run(gpu, graphed, dropouts, rnn_type, long),
                      run(gpu, training.train_step, dropouts, rnn_type, long), 1e-4 if not cpu else 0)
        print(f'   graphs: {graphed.captures} captured, {graphed.replays} replays, {graphed.eager_steps} eager steps')
    print('ALL PASS' if ok else 'SOME FAIL', flush=True)
    return 0 if ok else 1


def original(dest):
    """The original 2018 code copied to `dest` and patched as tests/test_parity.py patches it (its
    ORIGINAL_FIXES, through its own prepare_original; $AWD_LSTM_ORIGINAL says where the code is)."""
    sys.path.insert(0, os.path.join(REPO, 'tests'))
    import test_parity
    try:
        test_parity.prepare_original(dest)
    except BaseException as e:  # pytest.skip outside pytest: the code is not there
        print(f'skipped: {e}')
        return 1
    print(f'original code from {test_parity.ORIGINAL} patched into {dest} '
          f'({len(test_parity.ORIGINAL_FIXES)} fixes of tests/test_parity.py)')
    return 0


def epoch_times(path):
    """The `| end of epoch N | time: S s` figures of a log, in order."""
    if not os.path.isfile(path):
        return []
    with open(path, errors='replace') as f:
        return [float(s) for s in re.findall(r'end of epoch\s+\d+ \| time:\s*([\d.]+)s', f.read())]


def bench_records(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {(r['recipe'], r['option']): r for r in records}


def summary(logdir, cpu=False):
    """The table of the logs in `logdir`. `cpu`: the logs are of a dry run (gpu_check.sh --cpu), whose
    tiny CPU figures say nothing about the GPU targets: those are not judged."""
    def log(name):
        return os.path.join(logdir, name)

    def grep(name, pattern, which=-1):
        """The last match of `pattern` in the log (or the one at index `which`)."""
        if not os.path.isfile(log(name)):
            return None
        with open(log(name), errors='replace') as f:
            found = re.findall(pattern, f.read())
        return found[which] if found else None

    def fmt(x, unit=' s'):
        return f'{x:.2f}{unit}' if isinstance(x, float) else 'n/a'

    eager, graphs, orig = epoch_times(log('04_main_eager.log')), epoch_times(log('05_main_graphs.log')), \
        epoch_times(log('06_original.log'))
    bench = bench_records(log('07_bench.jsonl'))
    pytest_result = r'(\d+ passed[^\n]*|\d+ failed[^\n]*|\d+ skipped[^\n]*|no tests ran[^\n]*)'
    rows = [('CUDA kernel tests (pytest)', grep('01_kernel_tests.log', pytest_result) or 'n/a'),
            ('CUDA graph tests (pytest)', grep('02_graph_tests.log', pytest_result) or 'n/a'),
            ('correctness (CPU/CUDA, eager/graphs)', grep('03_correctness.log', r'(ALL PASS|SOME FAIL)') or 'n/a'),
            ('main.py PTB 2018 epoch 1, eager', fmt(eager[0] if eager else None)),
            ('main.py PTB 2018 epoch 1 / 2, --cuda-graphs', ' / '.join(fmt(t) for t in graphs) or 'n/a'),
            ('original 2018 code, epoch 1', fmt(orig[0] if orig else None))]
    best_graphs = min(graphs) if graphs else None
    if best_graphs and orig:
        rows.append(('ratio original / graphs (best epoch)', f'{orig[0] / best_graphs:.2f}x'))
    for recipe in ('ptb-2018', 'wt2', 'ptb-qrnn'):
        parts = []
        for option in ('eager', 'graphs', 'amp-bf16'):
            r = bench.get((recipe, option))
            parts.append(f'{option} ' + (f'{r["train_s_per_epoch"]:.1f} s, {r["peak_mem_mb"]:.0f} MB' if r and
                                          'train_s_per_epoch' in r else (r or {}).get('skipped', 'n/a')[:40]))
        rows.append((f'benchmark {recipe} (s/epoch extrapolated, peak)', '; '.join(parts)))
    kernel = grep('08_profile.log', r'kernel time vs wall time: ([^\n]*)', which=0)  # eager comes first
    rows.append(('profile ptb-2018 (first option: eager)', kernel or 'n/a'))

    def target(name, value, limit, what):
        if cpu:
            return (name, 'not measured (a dry run on the CPU; the target is for a GPU)')
        if value is None:
            return (name, 'n/a (not measured)')
        return (name, f'{"MET" if value <= limit else "NOT MET"} ({what} {value:.2f} vs {limit:.2f})')
    rows.append(target('target: PTB real epoch <= 5 s', best_graphs, PTB_TARGET_S, 'graphs epoch'))
    wt2 = bench.get(('wt2', 'graphs'), {}).get('train_s_per_epoch')
    rows.append(target('target: WT2 epoch <= 7 s (benchmark extrapolation)', wt2, WT2_TARGET_S, 'graphs'))
    for recipe in ('ptb-2018', 'wt2'):
        e, g = bench.get((recipe, 'eager'), {}).get('peak_mem_mb'), bench.get((recipe, 'graphs'), {}).get('peak_mem_mb')
        rows.append(target(f'target: {recipe} peak memory <= 2x eager', g / e if e and g else None, MEMORY_FACTOR,
                           'graphs/eager'))
    width = max(len(name) for name, _ in rows)
    print('=' * 40 + ' gpu_check summary ' + '=' * 40)
    for name, value in rows:
        print(f'{name:<{width}}  {value}')
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    c = sub.add_parser('correctness')
    c.add_argument('--cpu', action='store_true')
    sub.add_parser('original').add_argument('dest')
    m = sub.add_parser('summary')
    m.add_argument('logdir')
    m.add_argument('--cpu', action='store_true', help='the logs are of gpu_check.sh --cpu: no target is judged')
    args = parser.parse_args(argv)
    if args.command == 'correctness':
        return correctness(args.cpu)
    if args.command == 'original':
        return original(args.dest)
    return summary(args.logdir, args.cpu)


if __name__ == '__main__':
    sys.exit(main())
