"""CPU smoke test of benchmark.py: a tiny model, a few batches, the synthetic PTB-sized stream."""
import json
import re

import pytest

import benchmark
import errors
from reliability_helpers import must_not_run

FAST = ['--small', '--batches', '3', '--warmup', '1', '--cpu', '--val-batches', '2', '--synthetic']


def fields(line):
    return dict(re.findall(r'(\w+)=(\S+)', line))


@pytest.mark.slow
def test_benchmark_prints_one_line_per_configuration(capsys, tmp_path):
    path = tmp_path / 'bench.jsonl'
    rc = benchmark.main(FAST + ['--recipe', 'ptb-2018', '--options', 'eager', 'fused-opt', 'tf32',
                                '--json', str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith('recipe=ptb-2018')]
    assert len(lines) == 3, out

    timed = [fields(l) for l in lines if 'skipped' not in l]
    assert [f['option'] for f in timed] == ['eager', 'fused-opt']
    for line, f in zip([l for l in lines if 'skipped' not in l], timed):
        assert f['device'] == 'cpu' and f['torch']
        for key in ('train_s_per_epoch', 'valid_s', 'tokens_per_s', 'peak_mem'):
            assert float(f[key]) > 0, (key, line)
        assert '(extrapolated from 3 batches)' in line
        assert '(extrapolated from 2 of 106 chunks)' in line  # PTB valid: 73,760 tokens / 10 / bptt 70
        assert 'MB (rss)' in line
    assert 'option=tf32' in lines[2] and 'skipped' in lines[2]  # TF32 means nothing on a CPU

    records = [json.loads(l) for l in path.read_text().splitlines()]
    assert [r['option'] for r in records] == ['eager', 'fused-opt', 'tf32']
    eager = records[0]
    assert eager['recipe'] == 'ptb-2018' and eager['train_batches_timed'] == 3
    assert eager['config']['batch_size'] == 20 and eager['config']['emsize'] == 32
    assert eager['train_s_per_epoch'] > 0 and eager['tokens_per_s'] > 0 and eager['peak_mem_kind'] == 'rss'
    assert records[2]['skipped']
    # Same seed, same maths: the fused optimizer starts from and sees the same first batches.
    assert abs(records[1]['train_loss'] - eager['train_loss']) < 1e-3


def test_qrnn_recipe_is_skipped_or_runs(capsys):
    assert benchmark.main(FAST + ['--recipe', 'ptb-qrnn', '--batches', '1']) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith('recipe=ptb-qrnn')][0]
    assert 'skipped' in line or 'train_s_per_epoch=' in line


def test_bad_values_are_user_errors():
    with pytest.raises(errors.UserError):
        benchmark.main(['--batches', '0'])
    with pytest.raises(SystemExit):
        benchmark.main(['--recipe', 'no-such-recipe'])


@pytest.mark.slow
def test_profile_prints_the_top_ops(capsys):
    assert benchmark.main(FAST + ['--recipe', 'ptb-char', '--batches', '1', '--profile', '--profile-steps', '1',
                                  '--threads', '1']) == 0
    out = capsys.readouterr().out
    assert 'recipe=ptb-char option=eager' in out and 'profile of 1 training steps' in out
    assert 'Self CPU' in out


def test_without_nproc_drops_the_flag_and_its_values():
    assert benchmark.without_nproc(['--small', '--nproc', '1', '2', '--cpu']) == ['--small', '--cpu']
    assert benchmark.without_nproc(['--nproc=2', '--batches', '3']) == ['--batches', '3']
    assert benchmark.without_nproc(['--npro', '4']) == []


@pytest.mark.slow
def test_nproc_reports_tokens_per_rank_and_in_all(capsys, tmp_path):
    # Each count runs in fresh processes (2 ranks through torchrun, gloo); their lines reach our stdout.
    path = tmp_path / 'bench.jsonl'
    argv = FAST + ['--recipe', 'ptb-2018', '--batch-size', '4', '--batches', '2', '--val-batches', '1',
                   '--threads', '1', '--nproc', '1', '2', '--json', str(path)]
    assert benchmark.main(argv) == 0
    records = [json.loads(l) for l in path.read_text().splitlines()]
    assert [r['nproc'] for r in records] == [1, 2]
    one, two = records
    assert one['tokens_per_s'] == one['tokens_per_s_per_rank'] > 0
    assert abs(two['tokens_per_s'] - 2 * two['tokens_per_s_per_rank']) < 1e-6 * two['tokens_per_s']
    assert two['config']['batch_size'] == 4  # the global batch, 2 columns per rank
    out = capsys.readouterr().out
    assert 'scaling recipe=ptb-2018 option=eager: nproc=1 tokens_per_s=' in out and '| nproc=2 tokens_per_s=' in out


@pytest.mark.slow
def test_graphs_option_runs_the_static_step_and_matches_eager_on_the_cpu(capsys):
    rc = benchmark.main(FAST + ['--recipe', 'ptb-2018', '--options', 'eager', 'graphs', '--profile',
                                '--profile-steps', '1'])
    assert rc == 0
    out = capsys.readouterr().out
    eager, graphs = [fields(l) for l in out.splitlines() if l.startswith('recipe=ptb-2018')]
    assert graphs['option'] == 'graphs' and graphs['train_loss'] == eager['train_loss']
    assert 'no CUDA: the static-buffer step ran without capture' in out
    assert 'kernel time vs wall time: needs CUDA' in out


@pytest.mark.slow
def test_a_failed_capture_skips_the_graphs_option_and_the_others_still_run(capsys, monkeypatch):
    from harness import cuda_graphs

    def failing_capture(self, *a, **k):
        raise errors.UserError('--cuda-graphs: capturing the training step failed: RuntimeError: not capturable; '
                               'run without it (--no-cuda-graphs)')
    monkeypatch.setattr(cuda_graphs.GraphedTrainStep, '__call__', failing_capture)
    rc = benchmark.main(FAST + ['--recipe', 'ptb-2018', '--options', 'graphs', 'eager'])
    assert rc == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('recipe=ptb-2018')]
    assert 'option=graphs' in lines[0] and 'skipped: --cuda-graphs: capturing the training step failed' in lines[0]
    assert 'option=eager' in lines[1] and 'skipped' not in lines[1] and 'train_loss=' in lines[1]


def test_benchmark_data_naming_a_missing_folder_is_an_error(tmp_path, monkeypatch, capsys):
    import benchmark
    missing = str(tmp_path / 'no-such-corpus')
    monkeypatch.setattr(benchmark, 'load_streams', must_not_run)
    with pytest.raises(errors.UserError, match=f'--data {missing}: folder not found .*--synthetic'):
        benchmark.main(['--data', missing, '--small', '--cpu', '--batches', '1', '--warmup', '0'])
    assert 'recipe=' not in capsys.readouterr().out


@pytest.mark.slow
def test_the_mos_recipe_is_timed_with_main_pys_mos_model(capsys):
    # The model is main.py's build_model: for ptb-mos the 15-way mixture of softmaxes (mos.py).
    assert benchmark.main(FAST + ['--recipe', 'ptb-mos', '--options', 'eager']) == 0
    out = capsys.readouterr().out
    assert 'recipe=ptb-mos option=eager' in out and 'AWD-LSTM-MoS (15 softmaxes)' in out


@pytest.mark.parametrize('option', ['graphs', 'amp-bf16', 'graphs-bf16'])
def test_options_main_py_refuses_for_mos_are_refused(monkeypatch, capsys, option):
    # main.py refuses --cuda-graphs and --bf16 with --n_experts > 1; the benchmark timed them for ptb-mos.
    monkeypatch.setattr(benchmark, 'load_streams', must_not_run)
    with pytest.raises(errors.UserError, match=f'--options {option}: .*ptb-mos.* main.py refuses'):
        benchmark.main(FAST + ['--recipe', 'ptb-2018', 'ptb-mos', '--options', 'eager', option])
    assert 'recipe=' not in capsys.readouterr().out


def test_a_single_process_count_prints_no_scaling_line(monkeypatch, capsys):
    # --nproc 2 alone compared the run with itself: "x1.00 of nproc=2, 100% of linear".
    import subprocess

    def fake_run(command, env):  # the child benchmark: one record per count, in the --json file it is given
        count = int(command[command.index('--nproc_per_node') + 1]) if '--nproc_per_node' in command else 1
        with open(command[-1], 'a') as f:
            f.write(json.dumps(dict(recipe='ptb-2018', option='eager', nproc=count, tokens_per_s=1000.0 * count)) + '\n')
        return subprocess.CompletedProcess(command, 0)
    monkeypatch.setattr(subprocess, 'run', fake_run)
    assert benchmark.main(FAST + ['--nproc', '2']) == 0
    assert 'scaling' not in capsys.readouterr().out
    assert benchmark.main(FAST + ['--nproc', '1', '2']) == 0
    assert capsys.readouterr().out == ('scaling recipe=ptb-2018 option=eager: nproc=1 tokens_per_s=1000 (x1.00 of '
                                       'nproc=1, 100% of linear) | nproc=2 tokens_per_s=2000 (x2.00 of nproc=1, 100% '
                                       'of linear)\n')
