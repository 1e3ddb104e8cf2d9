"""benchmarks/gpu_check.sh --cpu: the GPU check script's steps with tiny sizes on the CPU, so that the
script cannot rot between GPU runs. It runs in a copy of the repository with nothing beside it (as on
a lent GPU machine, which gets the working tree only), its inputs laid out by --prepare."""
import pytest
import os
import shutil
import subprocess
import sys
import tarfile

from conftest import MIRROR, REPO

SCRIPT = os.path.join('benchmarks', 'gpu_check.sh')
ORIGINAL = os.environ.get('AWD_LSTM_ORIGINAL') or os.path.join(os.path.dirname(REPO), 'shared', 'original',
                                                               'awd-lstm-lm')
NOT_COPIED = {'.git', 'data', 'runs', 'gpu-inputs', '__pycache__', '.pytest_cache'}


def working_tree_copy(dest):
    """The repository's files without its data, runs and git folder: what a GPU machine gets."""
    def ignore(folder, names):
        return [n for n in names if n in NOT_COPIED or n.endswith(('.pt', '.log', '.jsonl'))]
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def without_input_variables():
    return {k: v for k, v in os.environ.items() if k not in ('AWD_DATA_MIRROR', 'AWD_LSTM_ORIGINAL')}


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_step_in_a_bare_copy(tmp_path):
    repo = working_tree_copy(str(tmp_path / 'repo'))  # tmp_path has no shared/ beside repo/
    inputs = os.path.isdir(os.path.join(MIRROR, 'penn')) and os.path.isdir(os.path.join(MIRROR, 'wikitext-2')) \
        and os.path.isfile(os.path.join(ORIGINAL, 'main.py'))
    if inputs:
        prepare = subprocess.run(['bash', SCRIPT, '--prepare'], cwd=repo, capture_output=True, text=True,
                                 env=dict(os.environ, AWD_DATA_MIRROR=MIRROR, AWD_LSTM_ORIGINAL=ORIGINAL))
        assert prepare.returncode == 0, prepare.stdout + prepare.stderr
        assert 'MiB' in prepare.stdout and os.path.isfile(os.path.join(repo, 'gpu-inputs', 'data', 'penn', 'train.txt'))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(repo, 'gpu-inputs'))
                   for f in fs)
        assert size < 48 * 2 ** 20
    out = tmp_path / 'out'
    run = subprocess.run(['bash', SCRIPT, '--cpu', str(out)], cwd=repo, capture_output=True, text=True,
                         timeout=600, env=without_input_variables())
    assert run.returncode == 0, run.stdout + run.stderr
    # A lent GPU machine brings back at most 8 files: the archive of the logs and the summary.
    assert sorted(p.name for p in out.iterdir()) == ['gpu_check_logs.tar.gz', 'summary.txt']
    with tarfile.open(out / 'gpu_check_logs.tar.gz') as archive:
        archive.extractall(tmp_path / 'unpacked', filter='data')
    logs = {p.name: p.read_text() for p in (tmp_path / 'unpacked' / 'logs').iterdir()}
    for name in ('00_env.log', '01_kernel_tests.log', '02_graph_tests.log', '03_correctness.log', '04_main_eager.log',
                 '05_main_graphs.log', '06_original.log', '07_bench.log', '08_profile.log', 'summary.txt'):
        assert name in logs, (name, sorted(logs))
    for name in ('01_kernel_tests.log', '02_graph_tests.log'):
        assert 'skipped' in logs[name] and 'needs CUDA' in logs[name].replace('needs a CUDA', 'needs CUDA') \
            and 'passed' not in logs[name]
    assert 'ALL PASS' in logs['03_correctness.log']
    assert 'end of epoch   1' in logs['04_main_eager.log']
    assert 'error: --cuda-graphs needs a CUDA GPU' in logs['05_main_graphs.log']
    bench = logs['07_bench.log']
    for recipe in ('ptb-2018', 'wt2', 'ptb-qrnn'):
        for option in ('eager', 'graphs'):
            assert f'recipe={recipe} option={option} device=cpu' in bench, (recipe, option, bench[-2000:])
    assert 'kernel time vs wall time: needs CUDA' in logs['08_profile.log']
    summary = logs['summary.txt']
    assert (out / 'summary.txt').read_text() == summary
    assert 'gpu_check summary' in summary and 'ALL PASS' in summary
    assert run.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
    if inputs:  # every step on real PTB text from gpu-inputs/, the original's epoch included
        assert os.path.join(repo, 'gpu-inputs', 'awd-lstm-lm') in logs['06_original.log']
        assert 'end of epoch   1' in logs['06_original.log']
        assert 'synthetic' not in bench
        assert 'main.py PTB 2018 epoch 1, eager' in summary and 'n/a' not in summary.split('eager')[1].splitlines()[0]


def test_prepare_without_the_mirror_is_one_line(tmp_path):
    run = subprocess.run(['bash', SCRIPT, '--prepare'], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, AWD_DATA_MIRROR=str(tmp_path / 'nowhere')))
    assert run.returncode == 2
    assert run.stderr.startswith('error: --prepare: ') and run.stderr.count('\n') == 1
    assert 'nowhere/penn/train.txt not found' in run.stderr


def test_summary_shows_the_first_profile_line_and_both_test_steps(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    import gpu_check
    (tmp_path / '01_kernel_tests.log').write_text('..\n2 passed in 3.0s\n')
    (tmp_path / '02_graph_tests.log').write_text('F\n1 failed, 3 passed in 50.0s\n')
    (tmp_path / '08_profile.log').write_text('kernel time vs wall time: GPU kernels 9.00 ms (eager)\n'
                                             'kernel time vs wall time: GPU kernels 8.00 ms (graphs)\n')
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gpu_check.summary(str(tmp_path))
    rows = dict(line.split('  ', 1) for line in printed.getvalue().splitlines()[1:])
    assert rows['profile ptb-2018 (first option: eager)'].strip() == 'GPU kernels 9.00 ms (eager)'
    assert rows['CUDA kernel tests (pytest)'].strip() == '2 passed in 3.0s'
    assert rows['CUDA graph tests (pytest)'].strip() == '1 failed, 3 passed in 50.0s'


FAKE_PYTHON = """#!/bin/bash
# Stands in for the interpreter: records what each step was given, runs nothing.
{ echo "ARGS=$*"; echo "ORIGINAL=$AWD_LSTM_ORIGINAL"; prev=
  for a in "$@"; do [ "$prev" = --data ] && [ -f "$a/train.txt" ] && echo "DATA=$(head -n 1 "$a/train.txt")"; prev=$a; done
} >> "$RECORD"
"""


def test_relative_input_variables_are_read_where_the_script_was_started(tmp_path):
    # AWD_DATA_MIRROR=mirror and AWD_LSTM_ORIGINAL=orig were read after the script changed into the
    # repository (unlike --prepare): the mirror was not found there, and the original was looked for there.
    (tmp_path / 'mirror' / 'penn').mkdir(parents=True)
    for split in ('train', 'valid', 'test'):
        (tmp_path / 'mirror' / 'penn' / f'{split}.txt').write_text(' the marker line of the mirror\n')
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    record = tmp_path / 'record.txt'
    run = subprocess.run(['bash', os.path.join(REPO, SCRIPT), '--cpu', 'out'], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=dict(without_input_variables(), AWD_DATA_MIRROR='mirror',
                                                          AWD_LSTM_ORIGINAL='orig', PYTHON=str(fake), RECORD=str(record)))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = record.read_text().splitlines()
    assert 'DATA= the marker line of the mirror' in lines
    assert {line for line in lines if line.startswith('ORIGINAL=')} == {f'ORIGINAL={tmp_path}/orig'}
    # The dry run's summary is told that it is one (the next test: no target is judged from it).
    assert any(line.startswith('ARGS=benchmarks/gpu_check.py summary --cpu ') for line in lines)


def test_a_dry_runs_summary_judges_no_gpu_target(tmp_path):
    # gpu_check.sh --cpu's summary printed "MET" for the GPU targets from its tiny CPU epochs.
    sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
    import contextlib
    import io
    import gpu_check
    (tmp_path / '05_main_graphs.log').write_text('| end of epoch   1 | time:  1.50s |\n')
    (tmp_path / '07_bench.jsonl').write_text('{"recipe": "wt2", "option": "graphs", "train_s_per_epoch": 2.0, "peak_mem_mb": 900}\n')
    tables = []
    for cpu in (False, True):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            gpu_check.summary(str(tmp_path), cpu=cpu)
        tables.append(dict(line.split('  ', 1) for line in printed.getvalue().splitlines()[1:]))
    gpu, dry = ({name: value.strip() for name, value in table.items() if name.startswith('target')} for table in tables)
    assert gpu['target: PTB real epoch <= 5 s'].startswith('MET (graphs epoch 1.50')
    assert set(dry) == set(gpu) and all(value.startswith('not measured (a dry run on the CPU') for value in dry.values())
