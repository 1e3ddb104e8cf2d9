"""Data-parallel training (distributed.py) on the CPU with gloo: torchrun with 2 processes, a tiny model.

The 2-rank runs are subprocesses of `python -m torch.distributed.run --standalone --nproc_per_node 2`;
the 1-process references run in this process, on today's code path.
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import checkpoint
from harness import distributed
import errors
import finetune
import main
from conftest import REPO, read_jsonl, tiny_run, write_corpus

NO_DROPOUT = ['--dropout', '0', '--dropouth', '0', '--dropouti', '0', '--dropoute', '0', '--wdrop', '0']
# On the tiny corpus these switch to ASGD after epoch 5 (the valid loss of epoch 5 is not a new best);
# lr 10 keeps training stable enough that float rounding differences do not grow beyond 1e-6.
SWITCH = ['--lr', '10', '--nonmono', '0']
TOL = 1e-5
TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT',
                'GROUP_RANK', 'ROLE_RANK', 'TORCHELASTIC_RUN_ID')


def torchrun_command(script, argv, nproc=2):
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
            script, *argv]


def torchrun_env():
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env['OMP_NUM_THREADS'] = '1'
    return env


def torchrun(script, argv, nproc=2, timeout=180):
    result = subprocess.run(torchrun_command(script, argv, nproc), cwd=REPO, env=torchrun_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def epochs(path):
    return [r for r in read_jsonl(path) if 'epoch' in r]


def assert_close_records(ours, reference):
    assert [r['epoch'] for r in ours] == [r['epoch'] for r in reference]
    for a, b in zip(ours, reference):
        assert a.get('optimizer') == b.get('optimizer'), (a, b)
        for key in ('train_loss', 'valid_loss'):
            if key in b:
                assert abs(a[key] - b[key]) < TOL, (key, a, b)


def assert_close_weights(path_a, path_b):
    a, b = checkpoint.read_checkpoint(path_a), checkpoint.read_checkpoint(path_b)
    assert a['model'].keys() == b['model'].keys()  # plain keys: no `module.` prefix
    for part in ('model', 'criterion'):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=TOL, rtol=0), (part, k)


@pytest.mark.slow
def test_two_ranks_train_the_one_process_model_across_the_asgd_switch_and_resume_in_one_process(tmp_path, tiny_corpus):
    flags = NO_DROPOUT + SWITCH
    ref, two = str(tmp_path / 'ref.pt'), str(tmp_path / 'two.pt')
    # The reference: one process, 6 epochs, then (exact resume) a 7th.
    assert main.main(tiny_run(tiny_corpus, ref, epochs=6, extra=flags)) == 0
    ref_state_6 = str(tmp_path / 'ref6.state')
    shutil.copyfile(ref + '.state', ref_state_6)

    # 2 ranks, the same global --batch_size (2 columns each), the same 6 epochs.
    result = torchrun('main.py', tiny_run(tiny_corpus, two, epochs=6, extra=flags))
    assert result.stdout.count('| end of epoch') == 6  # rank 0 alone prints
    two_records = epochs(str(tmp_path / 'two.pt.jsonl'))
    assert {r['optimizer'] for r in two_records} == {'sgd', 'asgd'}  # across the switch
    assert all(r['world_size'] == 2 for r in two_records)
    assert_close_records(two_records, epochs(str(tmp_path / 'ref.pt.jsonl')))
    assert_close_weights(two + '.state', ref_state_6)
    assert_close_weights(two, ref)  # the best model (ASGD averages) too
    assert checkpoint.load_checkpoint(two)['model'] is not None  # loads in a single process

    # The 2-rank state continues in one process, as the reference does.
    assert main.main(tiny_run(tiny_corpus, ref, epochs=7, extra=flags + ['--resume', ref])) == 0
    assert main.main(tiny_run(tiny_corpus, two, epochs=7, extra=flags + ['--resume', two])) == 0
    assert_close_records(epochs(str(tmp_path / 'two.pt.jsonl')), epochs(str(tmp_path / 'ref.pt.jsonl')))
    assert_close_weights(two + '.state', ref + '.state')


@pytest.mark.slow
def test_finetune_on_two_ranks_is_the_one_process_finetune(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    # finetune.py keeps the checkpoint's dropouts (as the original did): train without any.
    assert main.main(tiny_run(tiny_corpus, save, epochs=1, extra=NO_DROPOUT)) == 0
    argv = tiny_run(tiny_corpus, save, epochs=2, extra=NO_DROPOUT + ['--lr', '10'])
    assert finetune.main(argv + ['--out', str(tmp_path / 'one.pt')]) == 0
    torchrun('finetune.py', argv + ['--out', str(tmp_path / 'two.pt')])
    assert_close_records(epochs(str(tmp_path / 'two.pt.finetune.jsonl')), epochs(str(tmp_path / 'one.pt.finetune.jsonl')))
    assert_close_weights(str(tmp_path / 'two.pt.finetune.state'), str(tmp_path / 'one.pt.finetune.state'))


@pytest.mark.parametrize('extra', [['--batch_size', '12', '--small_batch_size', '4'],
                                   ['--batch_size', '12', '--small_batch_size', '12', '--n_experts', '2']],
                         ids=['groups-of-4', 'mos-one-group'])
@pytest.mark.slow
def test_column_groups_on_two_ranks_are_the_one_process_run(tmp_path, tiny_corpus, extra):
    """--small_batch_size under torchrun: each rank has 6 of the 12 columns (groups of 4 and 2; in MoS mode
    one group of 6), and each group's loss is weighted by its real share of the rank's columns, so that the
    ranks' averaged gradients are the one-process step's."""
    flags = NO_DROPOUT + ['--lr', '10'] + extra + (['--dropoutl', '0'] if '--n_experts' in extra else [])
    one, two = str(tmp_path / 'one.pt'), str(tmp_path / 'two.pt')
    assert main.main(tiny_run(tiny_corpus, one, epochs=2, extra=flags)) == 0
    torchrun('main.py', tiny_run(tiny_corpus, two, epochs=2, extra=flags))
    assert_close_records(epochs(two + '.jsonl'), epochs(one + '.jsonl'))
    assert_close_weights(two + '.state', one + '.state')


def worker_pid(parent, rank):
    """The pid of torchrun's worker of `rank` (a child of the torchrun process)."""
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f'/proc/{entry}/environ', 'rb') as f:
                if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                    return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='finds the worker processes through /proc')
def test_with_dropout_ranks_stay_identical_and_killing_one_rank_stops_the_others(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    log = tmp_path / 'm.pt.jsonl'
    out, err = open(tmp_path / 'out.txt', 'w'), open(tmp_path / 'err.txt', 'w')
    proc = subprocess.Popen(torchrun_command('main.py', tiny_run(tiny_corpus, save, epochs=10000)), cwd=REPO,
                            env=torchrun_env(), stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and \
                (not log.exists() or len(log.read_text().splitlines()) < 3):
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / 'err.txt').read_text()[-3000:]
        victim = worker_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        rc = proc.wait(timeout=60)
        stopped_after = time.time() - killed_at
    finally:
        # Its own process group: a failed assertion must not leave the workers training 10000 epochs.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()
        err.close()
    stdout, stderr = (tmp_path / 'out.txt').read_text(), (tmp_path / 'err.txt').read_text()
    assert rc != 0 and stopped_after < 45, (rc, stopped_after)
    # torchrun's report names the killed rank; the survivor says why it stopped (a broken collective, or
    # torchrun's SIGTERM, whichever reaches it first).
    assert 'FAILED' in stderr and 'SIGKILL' in stderr, stderr[-3000:]
    assert ('lost contact with the other ranks' in stderr or 'stopped by SIGTERM' in stderr
            or 'Terminated (SIGTERM)' in stdout), stdout[-2000:] + stderr[-3000:]

    # With dropout on, each rank draws its own masks, yet all hold the same weights after every epoch.
    records = epochs(str(log))
    assert len(records) >= 3
    for r in records:
        assert r['world_size'] == 2 and len(set(r['weight_digests'])) == 1, r
    assert len({r['weight_digests'][0] for r in records}) == len(records)
    assert checkpoint.read_checkpoint(save + '.state')['epoch'] >= 3  # the state of the last epoch is kept


def test_one_process_is_left_alone(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    stdout, hook, handler = sys.stdout, sys.excepthook, signal.getsignal(signal.SIGTERM)
    d = distributed.setup(argparse.Namespace(cpu=True))
    assert not d.enabled and d.is_main and d.world_size == 1
    assert (sys.stdout, sys.excepthook, signal.getsignal(signal.SIGTERM)) == (stdout, hook, handler)
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')  # torchrun with one process: today's path as well
    assert not distributed.setup(argparse.Namespace(cpu=True)).enabled

    data = torch.arange(12).view(3, 4)
    rng_before = torch.get_rng_state()
    assert d.shard(data) is data and d.wrap(None, None) is None
    assert d.mean(1.25) == 1.25 and d.shared(2.5) == 2.5 and d.check_in_sync([torch.ones(2)]) == {}
    d.seed_ranks(1111, 3)
    d.barrier()
    assert torch.equal(torch.get_rng_state(), rng_before)  # no random draw
    fn = lambda: 7  # noqa: E731
    assert d.writer(fn) is fn
    assert d.if_main(dict, a=1) == {'a': 1}


def test_columns_split_evenly_or_a_clear_error():
    data = torch.arange(24).view(4, 6)  # 6 columns
    shares = [distributed.Distributed(rank, 3).shard(data) for rank in range(3)]
    assert torch.equal(torch.cat(shares, dim=1), data) and all(s.size(1) == 2 for s in shares)
    with pytest.raises(errors.UserError, match=r'--batch_size 6 does not split evenly over 4 ranks'):
        distributed.Distributed(1, 4).shard(data)


def test_each_rank_and_epoch_has_its_own_dropout_seed():
    seeds = {distributed.rank_seed(1111, rank, epoch) for rank in range(8) for epoch in range(1, 50)}
    assert len(seeds) == 8 * 49 and all(0 <= s < 2 ** 63 for s in seeds)
    assert distributed.rank_seed(1111, 1, 2) == distributed.rank_seed(1111, 1, 2)


def test_other_ranks_ignore_the_log():
    log = distributed.Distributed(1, 2).if_main(open, '/nonexistent/never-opened')
    log.write(epoch=1)  # ignored


@pytest.mark.parametrize('value', ['abc', 'nan', '0', '-5', 'inf', '1e300'])
def test_a_bad_collective_timeout_is_one_line_before_any_rank_waits(monkeypatch, value):
    import torch.distributed as dist
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    monkeypatch.setattr(dist, 'init_process_group', lambda *a, **k: pytest.fail('joined the group'))
    with pytest.raises(errors.UserError, match=f"AWD_DIST_TIMEOUT must be a positive number of seconds.*{value!r}"):
        distributed.setup(argparse.Namespace(cpu=True))


@pytest.mark.slow
def test_a_bad_collective_timeout_stops_every_rank_with_one_line(tmp_path, tiny_corpus):
    env = {**torchrun_env(), distributed.TIMEOUT_ENV: 'abc'}
    result = subprocess.run(torchrun_command('main.py', tiny_run(tiny_corpus, str(tmp_path / 'm.pt'))), cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count("error: AWD_DIST_TIMEOUT must be a positive number of seconds") == 2, result.stderr
    # torchrun prints a traceback of its own when a rank fails; none of the ranks' frames may show.
    assert not re.search(r'File "[^"]*\b(main|distributed|cli)\.py"', result.stderr), result.stderr


# Runs a script's main() as torchrun would, with extra flags (JSON in AWD_TEST_RANK1_FLAGS) on rank 1
# and, with AWD_TEST_RANK1_CWD, rank 1 in another folder: a machine whose relative --save is elsewhere.
RANK1_DIFFERS = '''
import json, os, sys
sys.path.insert(0, {repo!r})
import finetune, main
from harness import cli
script, argv = sys.argv[1], sys.argv[2:]
if os.environ['RANK'] == '1':
    argv += json.loads(os.environ.get('AWD_TEST_RANK1_FLAGS', '[]'))
    os.chdir(os.environ.get('AWD_TEST_RANK1_CWD', os.getcwd()))
cli.run(lambda: (finetune if script == 'finetune' else main).main(argv))
'''


def torchrun_rank1_differs(tmp_path, script, argv, rank1_flags=(), rank1_cwd=None, cwd=None):
    wrapper = tmp_path / 'rank1_differs.py'
    wrapper.write_text(RANK1_DIFFERS.format(repo=REPO))
    env = {**torchrun_env(), 'AWD_TEST_RANK1_FLAGS': json.dumps(list(rank1_flags)),
           distributed.TIMEOUT_ENV: '30'}  # without the start-up check, a desynchronised run waits this long
    if rank1_cwd:
        env['AWD_TEST_RANK1_CWD'] = rank1_cwd
    started = time.time()
    result = subprocess.run(torchrun_command(str(wrapper), [script, *argv]), cwd=cwd or REPO, env=env,
                            capture_output=True, text=True, timeout=150)
    return result, time.time() - started


def assert_every_rank_stops_with(result, message):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 2 and all(message in line for line in lines), result.stderr[-3000:]
    assert not re.search(r'File "[^"]*\b(main|finetune|distributed|cli|training)\.py"', result.stderr), result.stderr


@pytest.mark.parametrize('rank1_flags,message', [
    (['--seed', '5'], '--seed is 1111 on rank 0 but 5 on rank 1'),
    (['--epochs', '3'], '--epochs is 2 on rank 0 but 3 on rank 1'),
    (['--data', 'OTHER'], '--data is'),
], ids=['seed', 'epochs', 'data'])
@pytest.mark.slow
def test_ranks_started_differently_all_stop_at_start_up_naming_the_flag(tmp_path, tiny_corpus, rank1_flags, message):
    other = write_corpus(str(tmp_path / 'other'), seed=1)
    rank1_flags = [other if flag == 'OTHER' else flag for flag in rank1_flags]
    save = str(tmp_path / 'm.pt')
    result, seconds = torchrun_rank1_differs(tmp_path, 'main', tiny_run(tiny_corpus, save, epochs=2), rank1_flags)
    assert_every_rank_stops_with(result, 'the ranks were started with different flags: ' + message)
    assert seconds < 60 and not os.path.exists(save)


@pytest.mark.slow
def test_a_rank_that_does_not_see_rank_0s_files_stops_every_rank_at_start_up(tmp_path, tiny_corpus):
    # The same relative --save on two "machines" (folders) that do not share it.
    here, there = tmp_path / 'machine0', tmp_path / 'machine1'
    here.mkdir()
    there.mkdir()
    result, _ = torchrun_rank1_differs(tmp_path, 'main', tiny_run(tiny_corpus, 'm.pt', epochs=2), rank1_cwd=str(there),
                                       cwd=str(here))
    assert_every_rank_stops_with(result, 'rank 1 does not see the files of rank 0')
    assert not os.path.exists(here / 'm.pt') and not os.listdir(there)


def test_start_up_differences_are_named_in_order():
    flags = {'--seed': 1111, '--data': 'd'}
    same = {'flags': flags, 'data': 'sha256:a', 'files': 't'}
    assert distributed.start_difference([same, dict(same, files=None)], [True, True], 'x.lock') is None
    assert 'different data' in distributed.start_difference([same, dict(same, data='sha256:b')], [True, True], 'x.lock')
    assert 'rank 1 does not see' in distributed.start_difference([same, same], [True, False], 'x.lock')
    message = distributed.start_difference([same, dict(same, flags={'--seed': 2, '--data': 'd'}, data='sha256:b')],
                                           [True, False], 'x.lock')
    assert message.startswith('the ranks were started with different flags: --seed is 1111 on rank 0 but 2 on rank 1')


@pytest.mark.slow
def test_finetune_ranks_started_differently_all_stop_at_start_up(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    assert main.main(tiny_run(tiny_corpus, save, epochs=1, extra=NO_DROPOUT)) == 0
    out = str(tmp_path / 'tuned.pt')
    argv = tiny_run(tiny_corpus, save, epochs=2, extra=['--out', out])
    result, _ = torchrun_rank1_differs(tmp_path, 'finetune', argv, ['--lr', '3'])
    assert_every_rank_stops_with(result, '--lr is 30 on rank 0 but 3.0 on rank 1')
    assert not os.path.exists(out)


@pytest.mark.slow
def test_without_save_every_rank_takes_rank_0s_default_name(tmp_path, tiny_corpus):
    run_in = tmp_path / 'run'
    run_in.mkdir()
    argv = tiny_run(tiny_corpus, 'unused', epochs=1)
    argv = argv[:argv.index('--save')]  # no --save: named by the time the run starts (each rank's, before)
    result = subprocess.run(torchrun_command(os.path.join(REPO, 'main.py'), argv), cwd=str(run_in), env=torchrun_env(),
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = [name for name in os.listdir(run_in) if name.endswith('.pt')]
    assert len(checkpoints) == 1 and '| End of training' in result.stdout, (os.listdir(run_in), result.stdout[-2000:])


@pytest.mark.parametrize('error, lost', [
    (RuntimeError('[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500'), True),
    (RuntimeError('[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation'), True),
    (RuntimeError('NCCL error: remote process exited or there was a network error, NCCL version 2.21.5'), True),
    (RuntimeError('NCCL error in: ProcessGroupNCCL.cpp:1970, invalid usage, NCCL version 2.21.5 ncclInvalidUsage'),
     False),
    (RuntimeError('ProcessGroupGloo: tensors must be on the same device'), False),
    (ValueError('Connection closed'), False),
])
def test_only_a_collective_that_lost_its_peers_is_reported_as_a_lost_rank(error, lost):
    assert distributed.lost_contact(error) is lost


@pytest.mark.parametrize('epochs_done, hint', [(0, 'nothing to resume'), (2, 'rerun with --resume')])
def test_a_lost_rank_offers_resume_only_after_an_epoch_completed(capsys, epochs_done, hint):
    # A failed start-up on rank 0 (before any epoch) must not send the user to a resume state that does not exist.
    context = distributed.Distributed(rank=1, world_size=2)
    context.epochs_in_sync = epochs_done
    distributed._report_lost_ranks(context, None, RuntimeError,
                                   RuntimeError('[gloo] Connection closed by peer [127.0.0.1]:29500'), None)
    err = capsys.readouterr().err
    assert err.startswith('error: rank 1 of 2 lost contact with the other ranks') and hint in err, err
    assert context.broken
