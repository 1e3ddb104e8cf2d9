import contextlib
import json
import math
import os
import subprocess
import sys

import pytest

from harness import cli
from harness import run_log
import main
import plot
import training
from conftest import REPO, tiny_run, write_corpus
from reliability_helpers import epoch_record, must_not_run


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# plot.py's one optional dependency: CI installs it (requirements-test.txt); elsewhere these skip.
needs_matplotlib = pytest.mark.skipif(not have_matplotlib(),
                                      reason='matplotlib is not installed (pip install -r requirements-test.txt)')

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def record(epoch, lr, optimizer, train_loss, valid_loss):
    return dict(epoch=epoch, seconds=1.0, lr=lr, optimizer=optimizer, train_loss=train_loss,
                **run_log.loss_record('valid', valid_loss))


# Five epochs of main.py as written (each record names what its epoch trained with): SGD, ASGD from
# epoch 3 on, the lr divided by 10 from epoch 4 on, a train figure written as null and a valid one as NaN (both mean "not finite"),
# then the final record, which is no epoch.
MAIN_LOG = [
    record(1, 30, 'sgd', 6.5, 6.0),
    record(2, 30, 'sgd', 5.8, 5.5),
    {**record(3, 30, 'asgd', 5.5, 5.3), 'train_loss': None},
    {**record(4, 3.0, 'asgd', 5.1, 5.2), 'valid_loss': math.nan, 'valid_ppl': math.nan, 'valid_bpc': math.nan},
    record(5, 3.0, 'asgd', 5.0, 5.1),
    dict(final=True, **run_log.loss_record('valid', 5.1), **run_log.loss_record('test', 5.0)),
]
# finetune.py: epoch 0 holds only the valid figures before fine-tuning; ASGD throughout.
FINETUNE_LOG = [
    dict(epoch=0, **run_log.loss_record('valid', 5.1)),
    record(1, 30, 'asgd', 5.0, 5.0),
    record(2, 30, 'asgd', 4.9, 4.95),
]


def write_log(path, records):
    with open(path, 'w') as f:
        for r in records:
            f.write(json.dumps(r) + '\n')
    return str(path)


def test_curves_of_a_main_log():
    epochs, train, valid, asgd_switch, lr_drops = plot.curves(MAIN_LOG)
    assert epochs == [1, 2, 3, 4, 5]  # the final record is no point
    assert train[2] is None and valid[3] is None  # null and NaN are gaps
    assert train[0] == pytest.approx(math.exp(6.5)) and valid[4] == pytest.approx(math.exp(5.1))
    assert asgd_switch == 3
    assert lr_drops == [4]


def test_provenance_changes_no_curve(tmp_path):
    # The first record of each process of a run carries its provenance (run_log.provenance): a
    # resumed run's first record is an epoch in the middle of the log.
    with_provenance = [{**r, 'provenance': run_log.provenance()} if r.get('epoch') in (1, 3) else r for r in MAIN_LOG]
    assert plot.curves(with_provenance) == plot.curves(MAIN_LOG)
    log = write_log(tmp_path / 'p.jsonl', with_provenance)
    assert plot.log_curves(log, 'p') == [('p', plot.curves(MAIN_LOG))]


def test_curves_of_a_finetune_log():
    epochs, train, valid, asgd_switch, lr_drops = plot.curves(FINETUNE_LOG)
    assert epochs == [0, 1, 2]
    assert train[0] is None and valid[0] == pytest.approx(math.exp(5.1))
    assert asgd_switch is None  # ASGD from the start: no switch
    assert lr_drops == []


def test_records_without_figures_are_skipped_and_a_repeated_epoch_keeps_the_later():
    records = [record(1, 30, 'sgd', 6.0, 6.0), {'epoch': 2, 'train_loss': None, 'valid_loss': None},
               record(2, 30, 'sgd', 9.0, 9.0), record(2, 30, 'sgd', 5.0, 5.5),
               dict(final=True, epoch=2, **run_log.loss_record('valid', 3.0))]  # final: never a point
    epochs, train, valid, _, _ = plot.curves(records)
    assert epochs == [1, 2]
    assert train[1] == pytest.approx(math.exp(5.0)) and valid[1] == pytest.approx(math.exp(5.5))


def test_null_and_non_finite_figures_are_alike():
    for value in (None, math.nan, math.inf, -math.inf, True, '3'):
        assert plot.number(value) is None, value
    assert plot.number(3) == 3.0
    assert plot.perplexity({'valid_loss': 800.0}, 'valid') is None  # exp overflows: no point


@needs_matplotlib
def test_small_logs_give_a_png(tmp_path, capsys):
    logs = [write_log(tmp_path / 'PTB.jsonl', MAIN_LOG), write_log(tmp_path / 'PTB.finetune.jsonl', FINETUNE_LOG)]
    out = tmp_path / 'curves.png'
    assert plot.main([*logs, '-o', str(out), '--labels', 'main', 'finetune', '--title', 'PTB']) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    import matplotlib.image
    pixels = matplotlib.image.imread(str(out))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.05  # something is drawn, not a blank canvas


@needs_matplotlib
def test_the_log_of_a_real_main_run(tmp_path):
    # The log as main.py writes it today (file name, fields, encoding), from a run of seconds.
    corpus = write_corpus(str(tmp_path / 'tiny'), lines_per_split=(80, 20, 20))
    save = str(tmp_path / 'tiny.pt')
    # --when 1 divides the lr after epoch 1: epoch 2 is the first trained with the lower lr.
    assert main.main(tiny_run(corpus, save, epochs=2, extra=['--when', '1'])) == 0
    log = run_log.json_log_path(save)
    assert 'provenance' in plot.read_log(log)[0]  # the run's first record says where it came from
    epochs, train, valid, _, lr_drops = plot.curves(plot.read_log(log))
    assert epochs == [1, 2] and None not in train + valid
    assert lr_drops == [2]
    out = tmp_path / 'tiny.png'
    assert plot.main([log, '-o', str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def run_plot(argv):
    """plot.py's main as the command line runs it: returns (exit status, stderr lines)."""
    return subprocess.run([sys.executable, os.path.join(REPO, 'plot.py'), *argv], capture_output=True,
                          text=True, timeout=120)


def in_process(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda: plot.main(argv))
    return stop.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.slow
def test_missing_log_is_one_line_error(tmp_path):
    missing = str(tmp_path / 'nope.jsonl')
    r = run_plot([missing, '-o', str(tmp_path / 'c.png')])
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f'error: {missing}: cannot read: No such file or directory']
    assert not (tmp_path / 'c.png').exists()


@pytest.mark.parametrize('problem', ['no usable records', 'not JSON', 'wrong suffix', 'labels'])
def test_bad_input_is_one_line_error(tmp_path, capsys, problem):
    log = write_log(tmp_path / 'run.jsonl', MAIN_LOG)
    out = str(tmp_path / 'c.png')
    argv, expected = [log, '-o', out], None
    if problem == 'no usable records':
        write_log(log, [MAIN_LOG[-1], {'epoch': 1, 'train_loss': None, 'valid_loss': None}])
        expected = f'error: {log}: no epoch records with a train or valid figure'
    elif problem == 'not JSON':  # no line of it a JSON record (a cut-off line among records is skipped)
        with open(log, 'w') as f:
            f.write('epoch 1: train 6.5\n{"epoch": 6, "train_lo\n')
        expected = f'error: {log}, line 1: not JSON'
    elif problem == 'wrong suffix':
        argv = [log, '-o', str(tmp_path / 'c.pdf')]
        expected = f'error: --output {tmp_path / "c.pdf"}: the figure is written as PNG; give a .png name'
    else:
        argv = [log, '--labels', 'a', 'b', '-o', out]
        expected = 'error: --labels: 2 labels for 1 logs'
    code, err = in_process(argv, capsys)
    assert code == 2 and err == [expected]
    assert not os.path.exists(out)


def test_unwritable_output_is_one_line_error_before_any_work(tmp_path, capsys, monkeypatch):
    # Found before the logs are read or matplotlib loaded (it was found when the figure was saved).
    log = write_log(tmp_path / 'run.jsonl', MAIN_LOG)
    out = str(tmp_path / 'run.jsonl' / 'c.png')  # under a file: unwritable, even for root
    monkeypatch.setattr(plot, 'log_curves', must_not_run)
    code, err = in_process([log, '-o', out], capsys)
    assert code == 2 and err == [f'error: {tmp_path / "run.jsonl"}: folder does not exist (-o {out})']


def test_the_figure_never_replaces_a_file_a_run_needs(tmp_path, capsys, monkeypatch):
    # A run saving to runs/fig.png (its log runs/fig.png.jsonl): -o runs/fig.png would replace its checkpoint.
    (tmp_path / 'fig.png').write_bytes(b'the checkpoint of a run')
    log = write_log(tmp_path / 'fig.png.jsonl', MAIN_LOG)
    monkeypatch.setattr(plot, 'log_curves', must_not_run)
    code, err = in_process([log, '-o', str(tmp_path / 'fig.png')], capsys)
    assert code == 2 and len(err) == 1 and 'would overwrite a file of the run saving to' in err[0]
    assert (tmp_path / 'fig.png').read_bytes() == b'the checkpoint of a run'


@needs_matplotlib
def test_a_figure_that_fails_midway_leaves_the_earlier_one(tmp_path, monkeypatch):
    # The PNG was written in place by savefig: a failure midway left a truncated file.
    import matplotlib.figure
    log = write_log(tmp_path / 'run.jsonl', MAIN_LOG)
    out = tmp_path / 'c.png'
    out.write_bytes(PNG_SIGNATURE + b' an earlier figure')

    def fails_midway(self, f, **kwargs):  # savefig takes a file name or a file
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(f, 'wb')) if isinstance(f, str) else f
            f.write(PNG_SIGNATURE)
            raise ValueError('a fault while drawing')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', fails_midway)
    with pytest.raises(ValueError, match='a fault while drawing'):
        plot.main([log, '-o', str(out)])
    assert out.read_bytes() == PNG_SIGNATURE + b' an earlier figure'
    assert sorted(os.listdir(tmp_path)) == ['c.png', 'run.jsonl']  # no temporary file left


@pytest.mark.slow
def test_missing_matplotlib_is_a_clear_error(tmp_path):
    # A stand-in package that fails to import as an absent one does, ahead of any installed matplotlib.
    fake = tmp_path / 'no-matplotlib' / 'matplotlib'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise ImportError("No module named \'matplotlib\'")\n')
    log = write_log(tmp_path / 'run.jsonl', MAIN_LOG)
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    r = subprocess.run([sys.executable, os.path.join(REPO, 'plot.py'), log, '-o', str(tmp_path / 'c.png')],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ['error: plot.py needs matplotlib, which is not installed: pip install matplotlib']


# ---------------------------------------------------------------------------------------------
# Logs shared by several runs, and lines cut off by an interrupted write

def write_records(path, records):
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    return str(path)


def test_plot_draws_each_run_of_a_shared_log_as_its_own_curve(tmp_path):
    import plot
    # A run of 4 epochs, then a restart from its checkpoint with --lr 5 (a new run id) for 2 more.
    first = [epoch_record('aaaa1111bbbb2222', e, 30, 6 - 0.2 * e) for e in (1, 2, 3, 4)]
    second = [epoch_record('cccc3333dddd4444', e, 5, 5 - 0.1 * e) for e in (1, 2)]
    log = write_records(tmp_path / 'm.pt.jsonl', first + [dict(run=first[0]['run'], final=True)] + second)
    runs = plot.log_curves(log, 'm')
    assert [label for label, _ in runs] == ['m run 1/2 (aaaa1111)', 'm run 2/2 (cccc3333)']
    assert [points[0] for _, points in runs] == [[1, 2, 3, 4], [1, 2]]
    assert runs[1][1][2] == pytest.approx([training.perplexity(4.9), training.perplexity(4.8)])
    # One run (continued exactly from its state: the same id) stays one curve with the log's label.
    assert [label for label, _ in plot.log_curves(write_records(tmp_path / 'one.jsonl', first), 'one')] == ['one']


def test_plot_skips_lines_cut_off_by_an_interrupted_write(tmp_path, capsys):
    import plot
    records = [epoch_record('r', e, 30, 6 - 0.1 * e) for e in (1, 2, 3, 4)]
    lines = [json.dumps(r) for r in records]
    # Written before logs were repaired: epoch 2's record cut off, epoch 3's appended to it; the last cut off.
    damaged = [lines[0], lines[1][:30] + lines[2], lines[3][:20]]
    log = str(tmp_path / 'm.pt.jsonl')
    with open(log, 'w') as f:
        f.write('\n'.join(damaged))
    (label, points), = plot.log_curves(log, 'm')
    assert points[0] == [1, 3]
    assert 'skipped 1 line(s) cut off by an interrupted write (line 3)' in capsys.readouterr().err


@needs_matplotlib
@pytest.mark.parametrize('low, high', [(500, 1700), (60, 90), (100, 5000)])
def test_the_perplexity_axis_is_labelled_across_the_range(tmp_path, monkeypatch, low, high):
    import matplotlib.pyplot as plt
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, 'close', lambda fig: figures.append(fig))
    epochs = [1, 2, 3]
    curve = [high, (low * high) ** 0.5, low]
    plot.draw(plt, [('run', (epochs, curve, curve, None, []))], None, str(tmp_path / 'c.png'))
    ax = figures[0].axes[0]
    bottom, top = ax.get_ylim()
    shown = [float(label.get_text()) for label in ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
             if label.get_text() and bottom <= label.get_position()[1] <= top]
    real_close(figures[0])
    # Labels near both ends of the curve (500 to 1700 had none above 1000), and not a crowd of them.
    assert max(shown) >= high / 1.3 and min(shown) <= low * 1.3 and len(shown) <= 12


@needs_matplotlib
@pytest.mark.parametrize('epochs', [[1, 2], [0, 1, 2], [1, 2, 3, 4], list(range(1, 41))])
def test_epoch_ticks_are_whole_numbers(tmp_path, monkeypatch, epochs):
    # A short log (two epochs) was labelled 1.00, 1.25, 1.50, ...: there is no epoch 1.25.
    import matplotlib.pyplot as plt
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, 'close', lambda fig: figures.append(fig))
    curve = [300.0 - e for e in epochs]
    plot.draw(plt, [('run', (epochs, curve, curve, None, []))], None, str(tmp_path / 'c.png'))
    ax = figures[0].axes[0]
    left, right = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if left <= t <= right]
    real_close(figures[0])
    assert ticks and all(t == int(t) for t in ticks)
    assert min(ticks) <= epochs[0] and max(ticks) >= epochs[-1] and len(ticks) <= 12
