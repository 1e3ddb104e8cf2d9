"""The JSON-lines log of a run: names that never collide, records kept across runs, strict JSON, a full
disk, lines cut off by an interrupted write, and one record per epoch after kill -9 and --resume."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from harness import checkpoint
from harness import run_log
import errors
from conftest import REPO, read_jsonl, tiny_run
from reliability_helpers import epoch_record, epochs_of, temporaries, train


# ---------------------------------------------------------------------------------------------
# Log names, and logs kept across runs

def test_log_names_of_different_saves_never_collide(tmp_path, small_corpus):
    runs = tmp_path / 'runs'
    runs.mkdir()
    saves = {lr: str(runs / f'lr{lr}') for lr in ('0.5', '0.1')}
    for lr, save in saves.items():
        assert train(small_corpus, save, extra=['--lr', lr]) == 0
    assert run_log.json_log_path(saves['0.5']) != run_log.json_log_path(saves['0.1'])
    for lr, save in saves.items():
        records = [r for r in read_jsonl(run_log.json_log_path(save)) if 'epoch' in r]
        assert [r['lr'] for r in records] == [float(lr)]


def test_resume_from_a_checkpoint_alone_keeps_its_log(tmp_path, small_corpus):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    os.remove(checkpoint.state_path(save))
    log = run_log.json_log_path(save)
    before = read_jsonl(log)
    with pytest.raises(errors.UserError, match='does not fit'):  # a resume that fails ...
        train(small_corpus, save, extra=['--resume', save, '--nhid', '20'])
    assert read_jsonl(log) == before  # ... leaves the log as it was
    assert train(small_corpus, save, extra=['--resume', save]) == 0
    after = read_jsonl(log)
    assert after[:len(before)] == before and len(after) == 2 * len(before)
    assert len({r['run'] for r in after}) == 2  # two runs, told apart


# ---------------------------------------------------------------------------------------------
# Strict JSON; a full disk

def test_log_records_are_strict_json(tmp_path):
    path = str(tmp_path / 'l.jsonl')
    run_log.JsonLog(path).write(epoch=1, valid_loss=float('nan'), valid_ppl=float('inf'), lr=[float('-inf')])

    def reject(constant):
        raise ValueError(f'{constant} is not JSON')
    with open(path) as f:
        record = json.loads(f.readline(), parse_constant=reject)
    assert record['valid_loss'] is None and record['valid_ppl'] is None and record['lr'] == [None]


def test_a_full_disk_while_logging_is_a_one_line_error(tmp_path, monkeypatch):
    log = run_log.JsonLog(str(tmp_path / 'l.jsonl'))

    class Full:
        def write(self, text):
            raise OSError(28, 'No space left on device')

        def flush(self):
            pass
    log.file = Full()
    with pytest.raises(errors.UserError, match='l.jsonl: could not write the log [(]the disk is full: No space left'):
        log.write(epoch=1)


# ---------------------------------------------------------------------------------------------
# Lines cut off, and records after kill -9

@pytest.mark.parametrize('cut', ['partial record', 'whole record without its newline'])
def test_appending_to_a_log_whose_last_line_was_cut_off(tmp_path, capsys, cut):
    path = str(tmp_path / 'm.pt.jsonl')
    records = [epoch_record('r', e, 30, 6 - 0.1 * e) for e in (1, 2)]
    text = ''.join(json.dumps(r) + '\n' for r in records)
    last = json.dumps(epoch_record('r', 3, 30, 5.5))
    with open(path, 'w') as f:  # the disk filled up (or kill -9 struck) in the middle of epoch 3's record
        f.write(text + (last[:25] if cut == 'partial record' else last))
    run_log.JsonLog(path, 'r').write(epoch=4, valid_loss=5.4)
    lines = open(path).read().splitlines()
    kept = records + ([] if cut == 'partial record' else [json.loads(last)])
    written = [json.loads(line) for line in lines]
    assert written[-1].pop('provenance')['command']  # this process's first record: provenance()
    assert written == kept + [{'run': 'r', 'epoch': 4, 'valid_loss': 5.4}]
    assert ('dropped its last line' in capsys.readouterr().out) == (cut == 'partial record')


# Run main.py in a subprocess that dies as under kill -9 while writing the resume state of epoch 2:
# after the epoch's log record, leaving a half-written hidden temporary file.
DIES_WRITING_STATE_2 = '''
import os, sys
sys.path.insert(0, os.getcwd())
import main
from harness import checkpoint
real = checkpoint.atomic_torch_save

def dies(obj, path):
    if path.endswith('.state') and obj['epoch'] == 2:
        folder, name = os.path.split(path)
        with open(os.path.join(folder, '.' + name + '.k9k9k9k9.tmp'), 'wb') as f:
            f.write(b'half a state file')
        os._exit(137)
    return real(obj, path)

checkpoint.atomic_torch_save = dies
main.main(sys.argv[1:])
'''


@pytest.mark.slow
def test_resume_after_kill_9_leaves_one_record_per_epoch_and_no_temporaries(tmp_path, small_corpus):
    save, straight = str(tmp_path / 'm.pt'), str(tmp_path / 'straight.pt')
    killed = subprocess.run([sys.executable, '-c', DIES_WRITING_STATE_2, *tiny_run(small_corpus, save, epochs=3)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, killed.stderr
    assert epochs_of(save) == [1, 2] and temporaries(tmp_path)  # the state is still that of epoch 1
    assert train(small_corpus, save, epochs=3, extra=['--resume', save]) == 0
    assert epochs_of(save) == [1, 2, 3]
    assert not temporaries(tmp_path)
    assert train(small_corpus, straight, epochs=3) == 0
    strip = lambda path: [{k: v for k, v in r.items() if k not in ('seconds', 'run', 'provenance')}
                          for r in read_jsonl(run_log.json_log_path(path))]
    assert strip(save) == strip(straight)
    # Each process's first record carries its provenance: the killed one's epoch 1, the resumed one's
    # redone epoch 2; the resume dropped the killed process's epoch 2 record and nothing else.
    assert [r['epoch'] for r in read_jsonl(run_log.json_log_path(save)) if 'provenance' in r] == [1, 2]


def lines_and_record(content):
    """(the lines before the last, the last as a record less its provenance) of a file that ends in a
    newline: a JsonLog's first record carries the provenance of the process that wrote it."""
    assert content.endswith(b'\n')
    *lines, last = content[:-1].split(b'\n')
    record = json.loads(last)
    assert set(record.pop('provenance')) == PROVENANCE_FIELDS
    return lines, record


PROVENANCE_FIELDS = {'command', 'cwd', 'python', 'torch', 'cuda', 'cudnn', 'device', 'git_commit', 'git_dirty',
                     'started'}


def test_a_file_that_is_not_this_codes_log_is_never_cut(tmp_path, capsys):
    # Only a cut-off record of this code's own log may be repaired: a text file that merely lacks its
    # last newline keeps every line, the record going after a newline.
    notes = tmp_path / 'notes.txt'
    notes.write_bytes(b'my results\nlast line without newline')
    run_log.JsonLog(str(notes)).write(valid_loss=5.0)
    assert lines_and_record(notes.read_bytes()) == ([b'my results', b'last line without newline'], {'valid_loss': 5.0})
    one_line = tmp_path / 'one.txt'
    one_line.write_bytes(b'no newline at all')
    run_log.JsonLog(str(one_line)).write(valid_loss=5.0)
    assert lines_and_record(one_line.read_bytes()) == ([b'no newline at all'], {'valid_loss': 5.0})
    assert 'dropped' not in capsys.readouterr().out


def test_a_binary_file_as_a_log_is_refused_and_left_whole(trained, tmp_path):
    _, save, _ = trained
    copy = tmp_path / 'other.pt'
    copy.write_bytes(open(save, 'rb').read())
    before = copy.read_bytes()
    with pytest.raises(errors.UserError, match=r'other\.pt: not a log but a binary file'):
        run_log.JsonLog(str(copy)).write(valid_loss=5.0)
    assert copy.read_bytes() == before
    checkpoint.read_checkpoint(str(copy))


def test_resuming_with_a_log_line_that_is_not_utf8_keeps_it(tmp_path, small_corpus):
    save = str(tmp_path / 'a.pt')
    assert train(small_corpus, save, epochs=2) == 0
    log = run_log.json_log_path(save)
    with open(log, 'ab') as f:
        f.write(b'\xff\xfe not UTF-8 \x80\n')
    assert train(small_corpus, save, epochs=3, extra=['--resume', save]) == 0
    lines = open(log, 'rb').read().splitlines()
    assert b'\xff\xfe not UTF-8 \x80' in lines
    assert [json.loads(line).get('epoch') for line in lines if line.startswith(b'{')].count(3) == 1


def test_a_log_that_is_a_pipe_or_terminal_is_written_as_it_is(tmp_path):
    # /dev/stdout piped into `cat`: the record goes down the pipe (it cannot be read back or seeked).
    read_end, write_end = os.pipe()
    pipe = f'/proc/self/fd/{write_end}'
    if not os.path.exists(pipe):
        pytest.skip('no /proc/self/fd here')
    log = run_log.JsonLog(pipe)
    log.write(valid_loss=5.0)
    log.file.close()
    os.close(write_end)
    assert lines_and_record(os.read(read_end, 10000)) == ([], {'valid_loss': 5.0})
    os.close(read_end)


# ---------------------------------------------------------------------------------------------
# Provenance

def test_the_first_record_of_each_log_carries_provenance(tmp_path, monkeypatch):
    import datetime
    import shutil
    import torch
    monkeypatch.setattr(sys, 'argv', ['main.py', '--data', 'data/my corpus', '--epochs', '3'])
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    path = str(tmp_path / 'p.jsonl')
    log = run_log.JsonLog(path, 'r')
    log.write(epoch=1, valid_loss=5.0)
    log.write(epoch=2, valid_loss=4.0)
    first, second = read_jsonl(path)
    assert 'provenance' not in second and second == {'run': 'r', 'epoch': 2, 'valid_loss': 4.0}
    facts = first.pop('provenance')
    assert first == {'run': 'r', 'epoch': 1, 'valid_loss': 5.0} and set(facts) == PROVENANCE_FIELDS
    assert facts['command'] == f"{os.path.basename(sys.executable)} main.py --data 'data/my corpus' --epochs 3"
    assert facts['python'] == '.'.join(map(str, sys.version_info[:3])) and facts['torch'] == torch.__version__
    if not torch.cuda.is_available():
        assert facts['cuda'] is None and facts['cudnn'] is None and facts['device']
    assert before <= datetime.datetime.fromisoformat(facts['started']) <= datetime.datetime.now(datetime.timezone.utc)
    if shutil.which('git') and os.path.exists(os.path.join(REPO, '.git')):  # a worktree's .git is a file
        head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                                 capture_output=True, text=True).stdout.strip()
        assert facts['git_commit'] == head and facts['git_dirty'] == bool(changed)


def test_provenance_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
    assert run_log.git_state(str(tmp_path)) == (None, None)  # not a git checkout
    monkeypatch.setenv('PATH', str(tmp_path))  # git not installed
    assert run_log.git_state(REPO) == (None, None)
    facts = run_log.provenance()
    assert facts['git_commit'] is None and facts['git_dirty'] is None


def test_a_training_run_called_from_python_records_its_own_command_and_device(tmp_path, tiny_corpus):
    """main.main(argv) from Python (a notebook, a sweep, this test) logs `main.py ARGV`, not the calling
    process's command line, and the device it computes on (--cpu: the CPU, even where a GPU is present)."""
    import main
    save = str(tmp_path / 'm.pt')
    argv = tiny_run(tiny_corpus, save, epochs=1)
    assert main.main(argv) == 0
    facts = read_jsonl(run_log.json_log_path(save))[0]['provenance']
    assert facts['command'] == shlex.join([os.path.basename(sys.executable), 'main.py', *argv])
    assert facts['device'] == run_log.cpu_name() and facts['cuda'] is None
