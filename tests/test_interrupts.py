"""Interruptions: Ctrl-C and SIGTERM where --save holds an earlier run's files or while a state is being
written, and cli.run's one-line errors instead of tracebacks (Ctrl-C during start-up, an unexpected OS
error, the CPU out of memory, output piped into head)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import finetune
import main as train_script
from harness import checkpoint
from harness import cli
from harness import interrupts
import errors
import training
from conftest import REPO, TINY, tiny_run, patch_everywhere
from reliability_helpers import copy_checkpoint, train


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM where --save holds an earlier run's files, or while a state is written

@pytest.mark.parametrize('nhid', ['12', '16'], ids=['same architecture', 'other architecture'])
def test_ctrl_c_before_the_first_save_never_reports_an_older_runs_checkpoint(tmp_path, small_corpus,
                                                                            monkeypatch, nhid):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    before = open(save, 'rb').read()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, 'train_epoch', interrupted)
    with pytest.raises(errors.UserError, match='no model was saved by this run'):
        train(small_corpus, save, extra=['--nhid', nhid])
    assert open(save, 'rb').read() == before


def preempt(*args, **kwargs):
    raise interrupts.Preempted()


@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_sigterm_before_the_first_epoch_ends_never_offers_an_older_runs_state(trained, tmp_path, monkeypatch,
                                                                             capsys, script):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)  # an earlier run's checkpoint and state
    if script == 'main':
        run = lambda: train(corpus, save, epochs=3)
    else:
        argv = ['--data', corpus, '--save', save, '--epochs', '1', *TINY]
        assert finetune.main(argv) == 0  # leaves <save>.finetune.state
        run = lambda: finetune.main(argv)
    capsys.readouterr()
    monkeypatch.setattr(training, 'train_epoch', preempt)
    assert run() == 143
    out = capsys.readouterr().out
    assert 'nothing to resume from' in out and 'rerun with' not in out


@pytest.mark.slow
@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_sigterm_just_after_a_state_is_written_offers_it(trained, tmp_path, monkeypatch, capsys, script):
    corpus, save, _ = trained
    real = checkpoint.atomic_torch_save

    def signalled_once_written(obj, path):  # SIGTERM lands between the rename and the run noting it
        real(obj, path)
        if path.endswith('.state'):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, unless SIGTERM is held back until the note is made
    monkeypatch.setattr(checkpoint, 'atomic_torch_save', signalled_once_written)
    out = str(tmp_path / 'm.pt')
    if script == 'main':
        status = train(corpus, out, epochs=3)
    else:
        status = finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '3', *TINY])
    assert status == 143
    assert 'rerun with --resume' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# One-line errors of cli.run instead of tracebacks: Ctrl-C, OS errors, out of memory, a broken pipe

def run_script(main, capsys):
    """cli.run(main) as a script runs it: returns (exit status, stderr)."""
    try:
        cli.run(main)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    except KeyboardInterrupt:
        pytest.fail('KeyboardInterrupt escaped cli.run')
    pytest.fail('cli.run returned without exiting')


def test_ctrl_c_during_start_up_is_one_line(tmp_path, small_corpus, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    patch_everywhere(monkeypatch, cli, 'load_data', interrupted)
    status, err = run_script(lambda: train_script.main(tiny_run(small_corpus, str(tmp_path / 'm.pt'))), capsys)
    assert status == 130 and err.count('\n') == 1 and 'Traceback' not in err


def test_an_unexpected_os_error_is_one_line(capsys):
    def fails():
        raise OSError(28, 'No space left on device', 'somewhere.pt')
    status, err = run_script(fails, capsys)
    assert status == 2 and err == "error: somewhere.pt: No space left on device\n"


def test_the_cpu_running_out_of_memory_is_one_line(tmp_path, small_corpus, capsys):
    # 10**16 columns: beyond any machine's address space, so the allocation fails at once whatever the
    # kernel's overcommit policy (10**11, as first reported, fails the same way on a machine that does not
    # overcommit).
    status, err = run_script(lambda: train(small_corpus, str(tmp_path / 'm.pt'), extra=['--emsize', str(10 ** 16)]),
                             capsys)
    assert status == 2 and err.count('\n') == 1, err
    assert err.startswith('error: CPU out of memory: an allocation for ') and '--emsize' in err, err
    assert not os.path.exists(tmp_path / 'm.pt')


@pytest.mark.slow
def test_output_piped_into_head_ends_quietly(trained, tmp_path):
    corpus, save, _ = trained
    # The generated text itself goes down the pipe (its progress goes to stderr); before, a closed pipe
    # there was `error: /dev/stdout: could not be written (Broken pipe)`.
    proc = subprocess.Popen([sys.executable, 'generate.py', '--data', corpus, '--checkpoint', save,
                             '--outf', '/dev/stdout', '--words', '300', '--log-interval', '1', '--cpu'],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader has gone, as `| head` does once it has its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert 'Traceback' not in err and 'Exception ignored' not in err
