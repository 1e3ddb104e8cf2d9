"""Learning curves from the JSON-lines logs of main.py and finetune.py, drawn to a PNG.

    python plot.py PTB.jsonl WT2.jsonl -o curves.png [--labels PTB WT2] [--title "2018 recipes"]

One figure for all the logs given, one colour per run: train perplexity (dashed) and valid perplexity
(solid) by epoch on a log scale, a dotted vertical line where NT-ASGD switched from SGD to ASGD and a
dash-dot one where the learning rate dropped (--when). A fine-tuning log (`.finetune.jsonl`) plots
the same way; its epoch 0 is the valid perplexity before fine-tuning. A log that several runs share (a
new run on an old --save, a restart from a checkpoint) holds records of each, told apart by their `run`
id: each run is a curve of its own, labelled `<label> run K/N (<id>)`; a run continued exactly from its
resume state keeps its id, and stays one curve.

matplotlib is needed by this script alone and is not in requirements.txt: `pip install matplotlib`.
"""
import argparse
import json
import math
import os
import sys

import errors
import harness
import training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Learning curves from JSON-lines training logs, to a PNG')
    parser.add_argument('logs', nargs='+', help='logs written by main.py (<save>.jsonl) or finetune.py')
    parser.add_argument('-o', '--output', default='curves.png', help='the PNG to write (default: curves.png)')
    parser.add_argument('--labels', nargs='+', help='one legend label per log (default: the file names)')
    parser.add_argument('--title', default='', help='title of the figure')
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.logs):
        raise errors.UserError(f'--labels: {len(args.labels)} labels for {len(args.logs)} logs')
    if not args.output.lower().endswith('.png'):
        raise errors.UserError(f'--output {args.output}: the figure is written as PNG; give a .png name')
    return args


def number(value):
    """A finite float, or None: logs may hold null (or NaN, Infinity) where a figure was not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_log(path):
    """The records of a JSON-lines log, in file order.

    A line cut off by an interrupted write (a full disk, kill -9) is skipped with a note; where a later
    record was appended to it (by code that did not repair such lines), that record is kept. A file
    with no JSON record at all is not a log: an error.
    """
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except OSError as e:
        raise errors.UserError(f'{path}: cannot read: {e.strerror}')
    except UnicodeDecodeError:
        raise errors.UserError(f'{path}: not a text file')
    records, cut_off = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_line(line)
        if record is None:
            cut_off.append(n)
        elif isinstance(record, dict):
            records.append(record)
    if cut_off and not records:
        raise errors.UserError(f'{path}, line {cut_off[0]}: not JSON')
    if cut_off:
        shown = ', '.join(map(str, cut_off[:5])) + (', ...' if len(cut_off) > 5 else '')
        print(f'note: {path}: skipped {len(cut_off)} line(s) cut off by an interrupted write (line {shown})',
              file=sys.stderr)
    return records


def parse_line(line):
    """The JSON value of a log line; for a cut-off record with a whole one appended to it, that whole
    one; None when the line holds no record."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    start = line.find('{', 1)
    while start > 0:
        try:
            record = json.loads(line[start:])
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        start = line.find('{', start + 1)
    return None


def split_runs(records):
    """The records of each run in a log, as (run id, records) in order of first appearance; records
    written before runs had ids (no `run` field) count as one run, with id None."""
    runs = {}
    for record in records:
        run = record.get('run')
        runs.setdefault(run if isinstance(run, str) else None, []).append(record)
    return list(runs.items())


def log_curves(path, label):
    """(label, curves) for each run of the log at `path` that has epoch figures: one pair for a log of
    one run, labelled `label`; with several runs each label names its run."""
    runs = [(run, curves(records)) for run, records in split_runs(read_log(path))]
    runs = [(run, points) for run, points in runs if points[0]]
    if not runs:
        raise errors.UserError(f'{path}: no epoch records with a train or valid figure')
    if len(runs) == 1:
        return [(label, runs[0][1])]
    return [(f'{label} run {k}/{len(runs)} ({run[:8] if run else "no id"})', points)
            for k, (run, points) in enumerate(runs, 1)]


def perplexity(record, kind):
    """exp of the record's `<kind>_loss` (main.py writes the loss of both; the ppl only of valid),
    or None when it is missing, not finite or too large to exponentiate."""
    loss = number(record.get(f'{kind}_loss'))
    return None if loss is None else number(training.perplexity(loss))


def curves(records):
    """Per-epoch points and events of one log.

    Returns (epochs, train_ppl, valid_ppl, asgd_switch, lr_drops): the point lists hold None where a
    figure is missing; asgd_switch is an epoch or None, lr_drops a list of epochs. A record names the
    optimizer and lr its epoch trained with, so an event is the first epoch trained the new way (the
    figure draws it half an epoch earlier, between the two epochs).
    """
    by_epoch = {}
    for record in records:
        epoch = number(record.get('epoch'))
        if record.get('final') or epoch is None:
            continue  # a final record repeats the best valid figure and adds test: not a point
        if perplexity(record, 'train') is None and perplexity(record, 'valid') is None:
            continue
        # A resumed run can log an epoch twice (killed after the log line, before the state); the
        # later record is the one the run continued from.
        by_epoch[epoch] = record
    epochs = sorted(by_epoch)
    ordered = [by_epoch[e] for e in epochs]
    asgd_switch, lr_drops, seen_sgd, previous_lr = None, [], False, None
    for epoch, record in zip(epochs, ordered):
        optimizer, lr = record.get('optimizer'), number(record.get('lr'))
        if optimizer == 'sgd':
            seen_sgd = True
        elif optimizer == 'asgd' and seen_sgd and asgd_switch is None:
            asgd_switch = epoch
        if lr is not None:
            if previous_lr is not None and lr < previous_lr:
                lr_drops.append(epoch)
            previous_lr = lr
    return (epochs, [perplexity(r, 'train') for r in ordered], [perplexity(r, 'valid') for r in ordered],
            asgd_switch, lr_drops)


def load_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise errors.UserError('plot.py needs matplotlib, which is not installed: pip install matplotlib')
    matplotlib.use('Agg')  # files only: no display needed, none opened
    import matplotlib.pyplot as plt
    return plt


def gaps(values):
    """None -> NaN: matplotlib leaves a gap there instead of joining across a missing figure."""
    return [math.nan if v is None else v for v in values]


def perplexity_ticks(low, high):
    """The multiples of each power of ten labelled on a log axis from `low` to `high`: finer the narrower
    the range, so that a range within one decade gets several labels and a wide one is not crowded."""
    decades = math.log10(high / low) if low > 0 and high > low else 1
    if decades <= 1:
        return (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    return (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades <= 2 else (1.0, 2.0, 5.0)


def draw(plt, runs, title, output):
    """runs: (label, curves) pairs. Writes the figure to `output` as PNG."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, (label, (epochs, train, valid, asgd_switch, lr_drops)) in enumerate(runs):
        colour = f'C{i % 10}'
        # Markers as well as lines, so that a lone point (a one-epoch run, finetune's epoch 0) shows.
        ax.plot(epochs, gaps(train), '--', marker='.', color=colour, alpha=0.8)
        ax.plot(epochs, gaps(valid), '-', marker='.', color=colour, label=label)
        if asgd_switch is not None:
            ax.axvline(asgd_switch - 0.5, color=colour, linestyle=':', linewidth=1.2)
        for epoch in lr_drops:
            ax.axvline(epoch - 0.5, color=colour, linestyle='-.', linewidth=1.2)
    ax.set_yscale('log')
    # Perplexities as plain numbers (150, 200, 300), not powers of ten: they are read off the axis, so the
    # labels cover the whole range (from 500 to 1700 matplotlib's only label above 1000 was none).
    ax.yaxis.set_major_locator(LogLocator(subs=perplexity_ticks(*ax.get_ylim())))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f'{y:g}'))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.25 on a short log
    ax.set_xlabel('epoch')
    ax.set_ylabel('perplexity')
    ax.grid(True, which='both', alpha=0.3)
    if title:
        ax.set_title(title)
    # The styles' meaning once, in grey, after the runs' colours.
    key = [Line2D([], [], color='grey', linestyle='-', label='valid'),
           Line2D([], [], color='grey', linestyle='--', label='train'),
           Line2D([], [], color='grey', linestyle=':', label='SGD -> ASGD'),
           Line2D([], [], color='grey', linestyle='-.', label='lr drop')]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + key, fontsize='small')
    fig.tight_layout()
    try:
        # Written whole or not at all (harness.atomic_write): a failure midway leaves the earlier figure.
        harness.atomic_write(output, lambda f: fig.savefig(f, format='png', dpi=100))
    finally:
        plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    # Before any work: the figure's file must be writable, and neither a log given nor a file a run needs.
    harness.check_output(args.output, '-o', inputs=args.logs, replaced=True)
    labels = args.labels or [os.path.splitext(os.path.basename(p))[0] for p in args.logs]
    runs = []
    for path, label in zip(args.logs, labels):
        runs += log_curves(path, label)
    draw(load_pyplot(), runs, args.title, args.output)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    harness.run_script(main)
