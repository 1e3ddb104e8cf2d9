"""cli.run: bad input is one line on stderr (exit 2), a fault of the code keeps its traceback (exit 1)."""
import pytest

from harness import cli
import errors


def run_script(main, capsys):
    """cli.run(main) as a script runs it: returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as stop:
        cli.run(main)
    return stop.value.code, capsys.readouterr().err


def raising(error):
    def main():
        raise error
    return main


def test_bad_input_is_one_line(capsys):
    assert run_script(raising(errors.UserError('--lr must be positive')), capsys) == (2, 'error: --lr must be positive\n')
    assert run_script(raising(FileNotFoundError(2, 'No such file or directory', 'x.pt')), capsys) == \
        (2, 'error: x.pt: No such file or directory\n')


def test_an_os_error_that_names_no_file_keeps_its_traceback():
    # Raised inside torch (no file named), it is not the user's to fix: Python prints its traceback.
    with pytest.raises(OSError, match='Input/output error'):
        cli.run(raising(OSError(5, 'Input/output error')))


def test_a_fault_of_the_code_keeps_its_traceback():
    with pytest.raises(KeyError):
        cli.run(raising(KeyError('model')))


@pytest.mark.slow
def test_a_fault_of_the_code_exits_1_with_a_traceback_ending_in_its_summary(tmp_path):
    import subprocess
    import sys
    from conftest import REPO
    script = tmp_path / 'fault.py'
    script.write_text('from harness import cli\n\ndef main():\n    raise OSError(5, "Input/output error")\n\ncli.run(main)\n')
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env={'PYTHONPATH': REPO}, capture_output=True,
                          text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and lines[0] == 'Traceback (most recent call last):', done.stderr
    assert lines[-1] == 'OSError: [Errno 5] Input/output error'


def test_awd_traceback_shows_the_traceback_of_bad_input_too(capsys, monkeypatch):
    monkeypatch.setenv('AWD_TRACEBACK', '1')
    status, err = run_script(raising(errors.UserError('--lr must be positive')), capsys)
    assert status == 2 and err.startswith('error: --lr must be positive\nTraceback (most recent call last):')
