"""benchmarks/gpu_check.sh --cpu: the GPU check script's steps with tiny sizes on the CPU, so that the
script cannot rot between GPU runs."""
import os
import subprocess

from conftest import MIRROR, REPO


def test_gpu_check_cpu_mode_runs_every_step(tmp_path):
    out = tmp_path / 'out'
    run = subprocess.run([os.path.join(REPO, 'benchmarks', 'gpu_check.sh'), '--cpu', str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    logs = {p.name: p.read_text() for p in out.iterdir()}
    for name in ('00_env.log', '01_cuda_tests.log', '02_correctness.log', '03_main_eager.log', '04_main_graphs.log',
                 '05_original.log', '06_bench.log', '07_profile.log', 'summary.txt'):
        assert name in logs, (name, sorted(logs))
    assert 'skipped' in logs['01_cuda_tests.log'] and 'needs a CUDA GPU' in logs['01_cuda_tests.log']
    assert 'ALL PASS' in logs['02_correctness.log']
    assert 'end of epoch   1' in logs['03_main_eager.log']
    assert 'error: --cuda-graphs needs a CUDA GPU' in logs['04_main_graphs.log']
    if os.path.isfile(os.path.join(os.path.dirname(REPO), 'shared', 'original', 'awd-lstm-lm', 'main.py')) \
            or os.environ.get('AWD_LSTM_ORIGINAL'):
        assert 'end of epoch   1' in logs['05_original.log']
    bench = logs['06_bench.log']
    for recipe in ('ptb-2018', 'wt2', 'ptb-qrnn'):
        for option in ('eager', 'graphs'):
            assert f'recipe={recipe} option={option} device=cpu' in bench, (recipe, option, bench[-2000:])
    assert 'kernel time vs wall time: needs CUDA' in logs['07_profile.log']
    summary = logs['summary.txt']
    assert 'gpu_check summary' in summary and 'ALL PASS' in summary
    assert run.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
    if os.path.isdir(os.path.join(MIRROR, 'penn')):
        assert 'main.py PTB 2018 epoch 1, eager' in summary and 'n/a' not in summary.split('eager')[1].splitlines()[0]
