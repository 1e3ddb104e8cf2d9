"""Training and evaluation speed of the published recipes.

    python benchmark.py --recipe ptb-2018                     # real sizes, current device, eager
    python benchmark.py --recipe ptb-2018 wt2 --options eager tf32 amp-bf16 fused-opt compile
    python benchmark.py --recipe ptb-2018 --small --cpu --batches 3 --warmup 1     # seconds, on a CPU
    python benchmark.py --recipe ptb-2018 --profile           # torch.profiler top-20 ops of a few steps
    python benchmark.py --recipe ptb-2018 --nproc 1 2 4       # data-parallel scaling on 1, 2, 4 GPUs

For each (recipe, option) it builds the recipe's model, runs --warmup training steps, times --batches
training steps (the very step main.py takes: training.train_step, with variable-length BPTT and the lr
scaled by seq_len / bptt) and one validation pass (training.evaluate, batch size 10), and prints one line:

    recipe=ptb-2018 option=eager device=cuda torch=... train_s_per_epoch=... (extrapolated from 50 batches)
    valid_s=... tokens_per_s=... peak_mem=... MB (cuda max allocated) ...

s/epoch is extrapolated: (time of the timed batches / tokens they covered) x tokens of one epoch, so it
needs only the length of the training stream. When the recipe's default data folder is absent (or with
--synthetic) a random token stream with the real vocabulary size and split lengths stands in: speed
does not depend on which words they are. An explicit --data applies to every recipe named, and must
exist (a folder named but absent is an error, never a silent stand-in).

peak_mem is torch.cuda.max_memory_allocated on a GPU (reset per configuration); on a CPU it is the
process's maximum resident set size so far (ru_maxrss), which never decreases from one configuration to
the next in the same process. On a CPU shared with other jobs, timings with the default thread count
can swing several-fold; --threads 1 gives steadier (if slower) figures.

Data parallel (distributed.py): `--nproc 1 2 4` runs the benchmark once per count, each in fresh processes
(N > 1 under `python -m torch.distributed.run --standalone --nproc_per_node N`: one GPU per process, or gloo
on the CPU), with the recipe's global --batch_size split among the ranks as main.py splits it; each line
then gives nproc, tokens_per_s (all ranks together) and tokens_per_s_per_rank, and a last `scaling` line
per recipe and option compares each count with the first. `torchrun --nproc_per_node N benchmark.py ...`
gives the same line for one N. train_s_per_epoch is the time of one epoch with that many ranks.

Options (--options, compared side by side in one process; each starts from the same seed):
  eager      main.py's path, PyTorch defaults (note: on a GPU these let cuDNN's LSTM use TF32, while
             plain matmuls stay full fp32)
  fp32       GPU only: no TF32 anywhere (cuDNN and matmul), the strictest fp32 reference
  tf32       GPU only: TF32 for matmuls too (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32)
  amp-bf16   torch.autocast(bfloat16) around forward and loss (training and validation); changes the
             numerics (bf16 activations), so perplexities are not comparable to fp32 runs bit for bit
  fused-opt  fused SGD/Adam kernel (falls back to foreach) and foreach gradient clipping; same maths,
             possibly different rounding
  compile    torch.compile of the model (dynamic shapes, since the BPTT length varies); compile time
             falls in the warm-up, so give it a few warm-up steps; skipped with a note if it fails
  graphs     main.py --cuda-graphs: the step replayed as CUDA graphs (cuda_graphs.py), one per sequence
             length, captured the first time a length comes (so warm-up and the first timed batches
             include captures: give it --warmup 100 or more for the steady state). On a CPU the same
             static-buffer step runs without capture (a dry-run of the code path, not a speed figure)
  graphs-bf16  graphs with main.py --bf16's autocast

--profile also prints the sum of GPU kernel time per step (the profiler's self CUDA time, over
--profile-steps steps) beside the wall time per step of the timed batches (no profiler): their gap is
the time the GPU waits for the CPU to launch work, which CUDA graphs remove.
"""
import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types

import torch

import harness

import utils
import errors
import main as training_script
import training

# Sizes of the real corpora (tokens with <eos>; vocabulary), used for the synthetic stand-in.
CORPORA = {
    'penn': dict(vocab=10000, train=929589, valid=73760),
    'wikitext-2': dict(vocab=33278, train=2088628, valid=217646),
    'pennchar': dict(vocab=50, train=5017483, valid=393043),
}

# The recipes timed (name: the recipe of recipes.py, flags changed for the authors' speed table, note).
RECIPES = {
    'ptb-2018': dict(recipe='ptb-2018', changed={}, note='PTB LSTM, 2018 code'),
    'ptb-b40': dict(recipe='ptb-2018', changed=dict(batch_size=40), note='ptb-2018 with batch 40 (the speed table)'),
    'wt2': dict(recipe='wt2-2018', changed={}, note='WT2 LSTM, 2018 code, batch 80'),
    'wt2-b20': dict(recipe='wt2-2018', changed=dict(batch_size=20), note='wt2 with batch 20 (the speed table)'),
    'ptb-qrnn': dict(recipe='ptb-qrnn', changed={}, note='PTB QRNN'),
    'wt2-qrnn': dict(recipe='wt2-qrnn', changed={}, note='WT2 QRNN (published command: batch 40)'),
    'ptb-char': dict(recipe='ptb-char', changed={}, note='character-level PTB, 2018 code'),
    'ptb-mos': dict(recipe='ptb-mos', changed={}, note='PTB AWD-LSTM-MoS (15 softmaxes)'),
}

OPTIONS = ('eager', 'fp32', 'tf32', 'amp-bf16', 'fused-opt', 'compile', 'graphs', 'graphs-bf16')
SMALL = dict(emsize=32, nhid=64)
EVAL_BATCH_SIZE = 10


class Skip(Exception):
    """A configuration that cannot run here; the message says why."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Time training batches and a validation pass of the published '
                                                 'AWD-LSTM recipes (s/epoch extrapolated from the timed batches).')
    parser.add_argument('--recipe', nargs='+', default=['ptb-2018'], choices=sorted(RECIPES), metavar='NAME',
                        help=f'recipes to time: {", ".join(RECIPES)} (default: ptb-2018)')
    parser.add_argument('--options', nargs='+', default=['eager'], choices=OPTIONS, metavar='OPT',
                        help=f'execution options compared side by side: {", ".join(OPTIONS)} (default: eager)')
    parser.add_argument('--data', type=str, default=None,
                        help="data folder (default: the recipe's data/penn, data/wikitext-2 or data/pennchar); "
                             'when that default is absent, a synthetic stream of the real size and vocabulary; '
                             'a folder given here must exist')
    parser.add_argument('--synthetic', action='store_true', help='use the synthetic stream even if the data exist')
    parser.add_argument('--batches', type=int, default=50, help='timed training batches (default 50)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed training batches first (default 5)')
    parser.add_argument('--val-batches', type=int, default=0, metavar='N',
                        help='time only the first N validation chunks and extrapolate (default: full pass)')
    parser.add_argument('--batch-size', type=int, default=None, help="override the recipe's batch size")
    parser.add_argument('--small', action='store_true',
                        help=f'shrink the model (emsize {SMALL["emsize"]}, nhid {SMALL["nhid"]}) so a CPU runs it '
                             'in seconds; vocabulary, batch and bptt stay the recipe\'s')
    parser.add_argument('--profile', action='store_true',
                        help='also run a few steps under torch.profiler and print the top-20 ops')
    parser.add_argument('--profile-steps', type=int, default=3, help='steps under the profiler (default 3)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (torch.set_num_threads); on a CPU shared with other jobs, 1 '
                             'avoids the large slowdowns of oversubscribed OpenMP threads')
    parser.add_argument('--json', type=str, default=None, metavar='PATH', help='append one JSON record per line')
    parser.add_argument('--nproc', nargs='+', type=int, default=None, metavar='N',
                        help='data-parallel scaling: run once per process count N (N > 1 through torchrun, one GPU '
                             'per process; gloo on the CPU) and report tokens/s per rank and in all')
    harness.add_device_args(parser)
    args = parser.parse_args(argv)
    if args.batches < 1:
        raise errors.UserError(f'--batches must be positive, got {args.batches}')
    for name in ('warmup', 'val_batches'):
        if getattr(args, name) < 0:
            raise errors.UserError(f'--{name.replace("_", "-")} must be >= 0, got {getattr(args, name)}')
    if args.batch_size is not None and args.batch_size < 1:
        raise errors.UserError(f'--batch-size must be positive, got {args.batch_size}')
    if args.threads is not None and args.threads < 1:
        raise errors.UserError(f'--threads must be positive, got {args.threads}')
    if args.profile_steps < 1:
        raise errors.UserError(f'--profile-steps must be positive, got {args.profile_steps}')
    if args.data is not None and not args.synthetic and not os.path.isdir(args.data):
        raise errors.UserError(f'--data {args.data}: folder not found (give an existing corpus folder, or '
                               '--synthetic to time a random stream of the recipe\'s size)')
    if args.nproc is not None and min(args.nproc) < 1:
        raise errors.UserError(f'--nproc must be positive, got {args.nproc}')
    return args


def recipe_config(name, opts):
    """The recipe's training flags as a namespace (what main.py would have in `args`)."""
    recipe = RECIPES[name]
    cfg = dict(vars(training_script.build_parser().parse_args(harness.recipes.argv(recipe['recipe']))), **recipe['changed'])
    if opts.small:
        cfg.update(SMALL)
    if opts.batch_size is not None:
        cfg['batch_size'] = opts.batch_size
    return types.SimpleNamespace(**cfg)


def load_streams(name, cfg, opts, device):
    """(train, valid, vocabulary size, description): batchified as main.py does."""
    corpus = harness.recipes.RECIPES[RECIPES[name]['recipe']]['corpus']
    folder = opts.data or os.path.join('data', corpus)
    if not opts.synthetic and os.path.isdir(folder):
        ns = types.SimpleNamespace(data=folder)
        dictionary_corpus, train, valid, _ = harness.load_data(ns, (cfg.batch_size, EVAL_BATCH_SIZE, 1), device,
                                                           log=lambda *a: None)
        return train, valid, len(dictionary_corpus.dictionary), folder
    sizes = CORPORA[corpus]
    g = torch.Generator().manual_seed(0)
    streams = [torch.randint(0, sizes['vocab'], (sizes[split],), generator=g) for split in ('train', 'valid')]
    why = 'forced' if opts.synthetic else f'{folder} absent'
    return (utils.batchify(streams[0], cfg.batch_size, device=device),
            utils.batchify(streams[1], EVAL_BATCH_SIZE, device=device), sizes['vocab'],
            f'synthetic ({why}; {corpus} sizes: {sizes["train"]}/{sizes["valid"]} tokens, vocab {sizes["vocab"]})')


@contextlib.contextmanager
def precision_flags(option, device):
    """TF32 switches for the fp32 / tf32 options, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if option == 'tf32':
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        elif option == 'fp32':
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make_optimizer(cfg, params, option, device):
    """As training.make_optimizer; fused-opt asks for the fused kernel (foreach where fused is unsupported)."""
    if option != 'fused-opt':
        return training.make_optimizer(cfg.optimizer, params, cfg.lr, cfg.wdecay), None
    cls = torch.optim.SGD if cfg.optimizer == 'sgd' else torch.optim.Adam
    try:
        opt = cls(params, lr=cfg.lr, weight_decay=cfg.wdecay, fused=True)
        return opt, None
    except (RuntimeError, ValueError, TypeError) as e:
        return cls(params, lr=cfg.lr, weight_decay=cfg.wdecay, foreach=True), f'fused unsupported ({e}); foreach'


class Stepper:
    """Walks the training stream like training.train_epoch, one training.train_step per call."""

    def __init__(self, model, criterion, optimizer, params, train, cfg, rng, autocast, clip_foreach, device,
                 forward=None, train_step=training.train_step):
        self.__dict__.update(model=model, criterion=criterion, optimizer=optimizer, params=params, train=train,
                             cfg=cfg, rng=rng, autocast=autocast, clip_foreach=clip_foreach, device=device,
                             forward=forward, train_step=train_step)
        self.restart()

    def restart(self):
        self.model.train()
        self.model.reset()
        self.hidden = self.model.init_hidden(self.train.size(1))  # this rank's columns (all of them: batch_size)
        self.i = 0

    def step(self):
        """One training step; returns (raw loss on the device, rows of the stream it covered)."""
        if self.i >= self.train.size(0) - 2:  # end of the epoch: start the stream again
            self.restart()
        seq_len = training.sample_seq_len(self.rng, self.cfg.bptt)
        data, targets = utils.get_batch(self.train, self.i, seq_len=seq_len)
        cfg = self.cfg
        loss, self.hidden = self.train_step(self.model, self.criterion, self.optimizer, self.params, data, targets,
                                            self.hidden, seq_len, bptt=cfg.bptt, clip=cfg.clip,
                                            penalties=training_script.penalties(cfg),
                                            group=training_script.column_group(cfg), autocast=self.autocast,
                                            clip_foreach=self.clip_foreach, forward=self.forward)
        self.i += seq_len
        return loss, len(data)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_memory(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, 'cuda max allocated'
    # ru_maxrss is in KiB on Linux, bytes on macOS; it is the whole process's maximum so far.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10), 'rss'


def run_config(name, option, opts, device, streams, dist=harness.Distributed()):
    cfg = recipe_config(name, opts)
    if option in ('tf32', 'fp32') and device.type != 'cuda':
        raise Skip(f'{option} only changes CUDA math (TF32); nothing to compare on {device.type}')
    if option == 'amp-bf16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise Skip('this GPU has no bfloat16 support')
    train, valid, ntokens, _ = streams
    train = dist.shard(train)  # this rank's columns of the global batch (all of them for one process)

    notes = []
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rng = harness.set_seed(cfg.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # main.py's model, without its 'Using [splits]' line
        model, criterion = training_script.build_model(cfg, ntokens)
    model, criterion = model.to(device), criterion.to(device)
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer, note = make_optimizer(cfg, params, option, device)
    if note:
        notes.append(note)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if option == 'amp-bf16' else None
    if option == 'graphs-bf16':  # as main.py --bf16: no autocast cache across a captured step
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)  # noqa: E731
    eval_context = autocast or contextlib.nullcontext
    if option == 'compile':
        model.compile(dynamic=True)
    step = training.train_step
    if option.startswith('graphs'):
        if dist.world_size > 1:
            raise Skip('--cuda-graphs does not work with several processes')
        step = harness.GraphedTrainStep()
        if device.type != 'cuda':
            notes.append('no CUDA: the static-buffer step ran without capture (code path only)')
    stepper = Stepper(model, criterion, optimizer, params, train, cfg, rng, autocast,
                      True if option == 'fused-opt' else None, device, forward=dist.wrap(model, criterion),
                      train_step=step)

    with precision_flags(option, device):
        try:
            (train_time, rows, train_loss, valid_time, valid_loss, chunks, total_chunks,
             profile) = measure(stepper, valid, cfg, opts, device, eval_context)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            if option.startswith('graphs') and isinstance(e, errors.UserError):
                raise Skip(str(e)) from None  # a failed capture: this option is out, the others still run
            if option == 'compile':
                raise Skip(f'torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}') from None
            raise

    epoch_rows = train.size(0) - 1
    mem, mem_kind = peak_memory(device)
    record = dict(
        recipe=name, option=option, device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
        threads=torch.get_num_threads(), load_avg_1min=load_average(), torch=torch.__version__,
        train_s_per_epoch=train_time / rows * epoch_rows, train_batches_timed=opts.batches, warmup=opts.warmup,
        ms_per_batch=1000 * train_time / opts.batches, batches_per_epoch=round(epoch_rows * opts.batches / rows),
        nproc=dist.world_size, tokens_per_s=dist.world_size * dist.mean(rows * train.size(1) / train_time),
        tokens_per_s_per_rank=dist.mean(rows * train.size(1) / train_time),
        valid_s=valid_time * total_chunks / chunks, valid_chunks_timed=chunks, valid_chunks_total=total_chunks,
        valid_extrapolated=chunks < total_chunks,
        peak_mem_mb=mem, peak_mem_kind=mem_kind, train_loss=train_loss, valid_loss=valid_loss,
        small=opts.small, config=vars(cfg), data=streams[3], notes=notes)
    if isinstance(step, harness.GraphedTrainStep):
        record.update(graphs_captured=step.captures, graph_replays=step.replays, eager_steps=step.eager_steps)
    profile_table = None
    if profile is not None:
        profile_table, kernel_ms = profile
        record.update(profile_kernel_ms_per_step=kernel_ms, profile_steps=opts.profile_steps)
        if kernel_ms is not None:
            wall_ms = record['ms_per_batch']
            profile_table += (f'\nkernel time vs wall time: GPU kernels {kernel_ms:.2f} ms per step (profiler, '
                              f'{opts.profile_steps} steps); wall {wall_ms:.2f} ms per step (the {opts.batches} timed '
                              f'batches, no profiler); launch gap {wall_ms - kernel_ms:.2f} ms '
                              f'({100 * (wall_ms - kernel_ms) / wall_ms:.0f}% of the step)')
        else:
            profile_table += '\nkernel time vs wall time: needs CUDA (no GPU kernels on the CPU)'
    return record, profile_table


def measure(stepper, valid, cfg, opts, device, eval_context):
    """Warm-up, the timed training steps, the (partial) validation pass and the optional profile."""
    model, criterion = stepper.model, stepper.criterion
    if opts.warmup:  # the evaluation path (no dropout, other kernels) warms up too
        with eval_context():
            training.evaluate(model, criterion, valid[:min(len(valid), cfg.bptt + 1)], EVAL_BATCH_SIZE, cfg.bptt)
        stepper.restart()
    for _ in range(opts.warmup):
        stepper.step()

    losses, rows = [], 0
    sync(device)
    start = time.perf_counter()
    for _ in range(opts.batches):
        loss, n = stepper.step()
        losses.append(loss)
        rows += n
    sync(device)
    train_time = time.perf_counter() - start
    train_loss = float(torch.stack(losses).float().mean())

    total_chunks = math.ceil((len(valid) - 1) / cfg.bptt)
    chunks = min(opts.val_batches, total_chunks) if opts.val_batches else total_chunks
    val_part = valid[:min(len(valid), chunks * cfg.bptt + 1)]
    sync(device)
    start = time.perf_counter()
    with eval_context():
        valid_loss = training.evaluate(model, criterion, val_part, EVAL_BATCH_SIZE, cfg.bptt)
    sync(device)
    valid_time = time.perf_counter() - start

    profile = profile_steps(stepper, opts.profile_steps, device) if opts.profile else None
    return train_time, rows, train_loss, valid_time, valid_loss, chunks, total_chunks, profile


def profile_steps(stepper, n, device):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    stepper.model.train()  # after the validation pass
    with profile(activities=activities) as prof:
        for _ in range(n):
            stepper.step()
        sync(device)
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    averages = prof.key_averages()
    table = f'profile of {n} training steps (sorted by {sort_by}):\n' + averages.table(sort_by=sort_by, row_limit=20)
    kernel_ms = None
    if device.type == 'cuda':  # the table's "Self CUDA time total": every kernel once (microseconds)
        kernel_us = sum(getattr(e, 'self_device_time_total', None) or getattr(e, 'self_cuda_time_total', 0)
                        for e in averages)
        kernel_ms = kernel_us / 1000 / n
    return table, kernel_ms


def format_line(r):
    valid_how = (f'(extrapolated from {r["valid_chunks_timed"]} of {r["valid_chunks_total"]} chunks)'
                 if r['valid_extrapolated'] else f'(full pass, {r["valid_chunks_total"]} chunks)')
    line = (f'recipe={r["recipe"]} option={r["option"]} device={r["device"]} torch={r["torch"]} '
            f'train_s_per_epoch={r["train_s_per_epoch"]:.1f} (extrapolated from {r["train_batches_timed"]} batches) '
            f'valid_s={r["valid_s"]:.2f} {valid_how} nproc={r["nproc"]} tokens_per_s={r["tokens_per_s"]:.0f} '
            f'tokens_per_s_per_rank={r["tokens_per_s_per_rank"]:.0f} '
            f'peak_mem={r["peak_mem_mb"]:.0f} MB ({r["peak_mem_kind"]}) ms_per_batch={r["ms_per_batch"]:.1f} '
            f'train_loss={r["train_loss"]:.4f} valid_loss={r["valid_loss"]:.4f}')
    if r['small']:
        line += ' model=small'
    if r['notes']:
        line += ' note=' + '; '.join(r['notes'])
    return line


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def describe(name, cfg, device, data):
    load = load_average()
    return (f'# {name}: {RECIPES[name]["note"]}: {cfg.model} emsize {cfg.emsize} nhid {cfg.nhid} nlayers '
            f'{cfg.nlayers}, batch {cfg.batch_size}, bptt {cfg.bptt}, {cfg.optimizer} lr {cfg.lr}; '
            f'data: {data}; device: {device}, {torch.get_num_threads()} threads, '
            f'{os.cpu_count()} CPUs' + (f', load average {load} (other jobs slow CPU timings)' if load is not None else ''))


def without_nproc(argv):
    """argv minus --nproc and its values (and any abbreviation argparse would accept for it)."""
    kept, skipping = [], False
    for token in argv:
        name = token.split('=', 1)[0]
        if token.startswith('--') and len(name) > 3 and '--nproc'.startswith(name):
            skipping = '=' not in token
            continue
        if skipping and token.isdigit():
            continue
        skipping = False
        kept.append(token)
    return kept


def scaling(opts, argv):
    """--nproc: each process count in fresh processes (torchrun for N > 1), then a scaling summary."""
    fd, path = tempfile.mkstemp(prefix='bench-nproc-', suffix='.jsonl')
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    try:
        for n in opts.nproc:
            child = without_nproc(argv) + ['--json', path]
            launcher = [] if n == 1 else ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n)]
            rc = subprocess.run([sys.executable, *launcher, os.path.abspath(__file__), *child], env=env).returncode
            if rc != 0:
                raise errors.UserError(f'the benchmark on {n} process{"es" if n > 1 else ""} failed (exit status {rc}; '
                                       'its output is above)')
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    finally:
        os.unlink(path)
    if opts.json:
        with open(opts.json, 'a') as out:
            out.writelines(json.dumps(r) + '\n' for r in records)
    for key in dict.fromkeys((r['recipe'], r['option']) for r in records if 'nproc' in r):
        runs = [r for r in records if (r['recipe'], r['option']) == key and 'nproc' in r]
        if len({r['nproc'] for r in runs}) < 2:  # one count (--nproc 2 alone): nothing to compare it with
            continue
        base = runs[0]
        parts = [f'nproc={r["nproc"]} tokens_per_s={r["tokens_per_s"]:.0f} '
                 f'(x{r["tokens_per_s"] / base["tokens_per_s"]:.2f} of nproc={base["nproc"]}, '
                 f'{100 * r["tokens_per_s"] * base["nproc"] / (base["tokens_per_s"] * r["nproc"]):.0f}% of linear)'
                 for r in runs]
        print(f'scaling recipe={key[0]} option={key[1]}: ' + ' | '.join(parts), flush=True)
    return 0


def check_options_main_py_runs(opts):
    """A UserError for an option that main.py refuses with a recipe's flags: --cuda-graphs and --bf16
    (graphs, amp-bf16, graphs-bf16) with a grouped step (--n_experts > 1, --small_batch_size; cli.
    train_step_for; main.column_group), so that the benchmark never times what training cannot run."""
    refused = [option for option in opts.options if option in ('graphs', 'amp-bf16', 'graphs-bf16')]
    for name in opts.recipe:
        if refused and training_script.column_group(recipe_config(name, opts)) is not None:
            raise errors.UserError(f'--options {" ".join(refused)}: the recipe {name} steps in column groups '
                                   '(--n_experts > 1 or --small_batch_size), with which main.py refuses --cuda-graphs '
                                   'and --bf16; time it with the other options')


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(argv)
    check_options_main_py_runs(opts)
    if opts.nproc is not None and harness.world_from_env() is None:
        return scaling(opts, argv)
    dist = harness.setup_distributed(opts)  # under torchrun: this process is one rank; only rank 0 prints and writes
    device = harness.choose_device(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = dist.if_main(open, opts.json, 'a') if opts.json else None
    try:
        for name in opts.recipe:
            cfg = recipe_config(name, opts)
            streams = None
            for option in opts.options:
                try:
                    if streams is None:
                        streams = load_streams(name, cfg, opts, device)
                        print(describe(name, cfg, device, streams[3]), flush=True)
                    record, table = run_config(name, option, opts, device, streams, dist)
                except Skip as e:
                    print(f'recipe={name} option={option} device={device.type} torch={torch.__version__} '
                          f'skipped: {e}', flush=True)
                    record, table = dict(recipe=name, option=option, device=device.type, torch=torch.__version__,
                                         skipped=str(e)), None
                else:
                    print(format_line(record), flush=True)
                if table:
                    print(table, flush=True)
                if out:
                    out.write(json.dumps(record) + '\n')
                    out.flush()
    except torch.cuda.OutOfMemoryError:
        raise errors.UserError('GPU out of memory: try --batch-size smaller or --small') from None
    finally:
        if out:
            out.close()
    return 0


if __name__ == '__main__':
    harness.run_script(main)
