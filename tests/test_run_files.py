"""The files a run writes: outputs checked before any work (inputs and resume states never overwritten,
unusable locations, names too long, symlinks, devices, FIFOs and sockets), the lock that keeps a second
run off the same files, and atomic writes (a full disk, temporaries, file modes). Each test injects one
fault on a tiny model and checks what should happen instead."""
import fcntl
import os
import shutil
import stat

import pytest
import torch

import harness

import finetune
import generate
from harness import atomic_io
from harness import checkpoint
from harness import cli
from harness import run_files
import errors
import pointer
import training
from conftest import TINY, read_jsonl, patch_everywhere
from reliability_helpers import copy_checkpoint, disk_full, must_not_run, temporaries, train


# ---------------------------------------------------------------------------------------------
# Outputs that would overwrite an input or a resume state

@pytest.mark.parametrize('target', ['checkpoint', 'train.txt'])
def test_generate_never_overwrites_its_inputs(trained, tmp_path, target):
    corpus, save, _ = trained
    data_copy = str(tmp_path / 'data')
    shutil.copytree(corpus, data_copy)
    ckpt = str(tmp_path / 'model.pt')
    shutil.copy(save, ckpt)
    outf = ckpt if target == 'checkpoint' else os.path.join(data_copy, 'train.txt')
    before = open(outf, 'rb').read()
    with pytest.raises(errors.UserError, match='would overwrite'):
        generate.main(['--data', data_copy, '--checkpoint', ckpt, '--outf', outf, '--words', '5', '--cpu'])
    assert open(outf, 'rb').read() == before



def a_run_beside(folder):
    """The files of a run saving to folder/PTB.pt, as main.py and finetune.py leave them; their contents."""
    save = os.path.join(folder, 'PTB.pt')
    names = [save, save + '.state', save + '.finetune.state', save + '.jsonl', save + '.finetune.jsonl', save + '.lock']
    for name in names:
        with open(name, 'w') as f:
            f.write('run file ' + name)
    return save, names


def test_no_script_writes_over_the_files_a_run_needs(trained, tmp_path, monkeypatch):
    # score.py --out PTB.pt.state (and generate.py --outf, pointer.py --log) replaced the resume state
    # beside the checkpoint they read, its log or its lock, without a word.
    import score
    corpus, save, _ = trained
    other, run_names = a_run_beside(str(tmp_path))
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    for name in run_names:
        for script, argv in ((score, ['--checkpoint', save, '--text', os.path.join(corpus, 'test.txt'), '--out', name]),
                             (generate, ['--data', corpus, '--checkpoint', save, '--outf', name]),
                             (pointer, ['--data', corpus, '--save', save, '--log', name])):
            with pytest.raises(errors.UserError, match=f'{name}: .* the run saving to {other}'):
                script.main([*argv, '--cpu'])
    for name in run_names:
        assert open(name).read() == 'run file ' + name
    # The run's own files stay its own (main.py, finetune.py); another run's are not.
    for name in run_names[:-1]:
        run_files.check_output(name, '--save', replaced=True, run=other)
    with pytest.raises(errors.UserError, match='the run saving to'):
        run_files.check_output(other + '.jsonl', '--save', replaced=True, run=str(tmp_path / 'mine.pt'))
    # Names that only look like a run's: a pointer log beside its checkpoint, a file of no run.
    run_files.check_output(other + '.pointer.jsonl', '--log')
    run_files.check_output(str(tmp_path / 'notes.jsonl'), '--log')
    run_files.check_output(str(tmp_path / 'lone.pt'), '--outf')
    os.mkdir(tmp_path / 'results')  # a folder is no run's checkpoint
    run_files.check_output(str(tmp_path / 'results.jsonl'), '--out')


def test_the_run_files_refused_are_those_the_scripts_write(tmp_path):
    # run_files.RUN_FILE_SUFFIXES restates the names that each script gives its files: checked against them.
    from harness import run_log
    save = str(tmp_path / 'PTB.pt')
    (tmp_path / 'PTB.pt').write_bytes(b'a checkpoint')
    for name in (checkpoint.state_path(save), harness.finetune_state_path(save), run_log.json_log_path(save),
                 harness.finetune_log_path(save), run_files.lock_path(save)):
        assert run_files.run_needing(name) == save, name
    assert run_files.run_needing(pointer.default_log_path(save)) is None

def test_main_never_saves_over_its_data(tmp_path, small_corpus, monkeypatch):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match='would overwrite'):
        train(small_corpus, os.path.join(small_corpus, 'valid.txt'))


def test_no_checkpoint_is_ever_written_over_a_resume_state(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    state = checkpoint.state_path(save)
    before = open(state, 'rb').read()
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=r'copy.pt.state: --save names a resume state'):
        finetune.main(['--data', corpus, '--save', state, '--epochs', '1', *TINY])  # fine-tunes in place
    with pytest.raises(errors.UserError, match=r'--out names a resume state'):
        finetune.main(['--data', corpus, '--save', save, '--out', str(tmp_path / 'other.pt.finetune.state'),
                       '--epochs', '1', *TINY])
    with pytest.raises(errors.UserError, match=r'--save names a resume state'):
        train(corpus, state)
    assert open(state, 'rb').read() == before
    checkpoint.read_state(state, 'main')  # its run can still continue


# ---------------------------------------------------------------------------------------------
# Unusable save locations, found before any work

def save_location(tmp_path, where):
    if where == 'missing folder':
        return str(tmp_path / 'nowhere' / 'm.pt')
    if where == 'a folder':
        (tmp_path / 'folder').mkdir()
        return str(tmp_path / 'folder')
    read_only = tmp_path / 'read_only'
    read_only.mkdir()
    read_only.chmod(0o555)  # honoured even when the tests run as root
    return str(read_only / 'm.pt')


@pytest.mark.parametrize('where,match', [('missing folder', 'does not exist'), ('a folder', 'is a folder'),
                                         ('read-only folder', 'read-only')])
def test_unusable_save_locations_are_found_before_training(tmp_path, small_corpus, monkeypatch, where, match):
    save = save_location(tmp_path, where)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    try:
        with pytest.raises(errors.UserError, match=match):
            train(small_corpus, save)
    finally:
        for folder in tmp_path.iterdir():
            folder.chmod(0o755)


def test_pointer_checks_where_its_log_goes_before_evaluating(trained, tmp_path, monkeypatch):
    corpus, save, _ = trained
    shared = tmp_path / 'shared'
    shared.mkdir()
    ckpt = str(shared / 'model.pt')
    shutil.copy(save, ckpt)
    shared.chmod(0o555)
    argv = ['--data', corpus, '--save', ckpt, '--window', '5', '--bptt', '20', '--cpu']
    try:
        monkeypatch.setattr(pointer, 'pointer_loss', must_not_run)
        with pytest.raises(errors.UserError, match='read-only.*--log'):
            pointer.main(argv)
        monkeypatch.undo()
        log = str(tmp_path / 'pointer.jsonl')
        assert pointer.main(argv + ['--log', log]) == 0
        assert read_jsonl(log)[-1]['checkpoint'] == ckpt
    finally:
        shared.chmod(0o755)


@pytest.mark.parametrize('where,match', [('missing folder', 'does not exist'), ('a folder', 'is a folder'),
                                         ('read-only folder', 'read-only')])
def test_generate_checks_its_output_before_sampling(trained, tmp_path, monkeypatch, where, match):
    corpus, save, _ = trained
    outf = save_location(tmp_path, where)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    try:
        with pytest.raises(errors.UserError, match=match):
            generate.main(['--data', corpus, '--checkpoint', save, '--outf', outf, '--words', '5', '--cpu'])
    finally:
        for folder in tmp_path.iterdir():
            folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Name lengths and symlinks

@pytest.mark.parametrize('length', [236, 240, 245, 256])
def test_a_save_name_too_long_for_the_file_system_is_found_before_any_work(trained, tmp_path, monkeypatch, length):
    corpus, save, _ = trained
    if os.pathconf(str(tmp_path), 'PC_NAME_MAX') != 255:
        pytest.skip('the lengths are chosen for a file system with 255-byte names')
    # The longest name a run writes is the temporary file of <save>.state: 6 + 14 bytes more than <save>.
    name = str(tmp_path / ('x' * length))
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=rf'name too long for this file system \(--save\): shorten it by '
                                               rf'at least {length - 235} bytes'):
        train(corpus, name)
    with pytest.raises(errors.UserError, match='name too long'):
        finetune.main(['--data', corpus, '--save', save, '--out', name, '--epochs', '1', *TINY])
    assert os.listdir(tmp_path) == []


def test_the_longest_save_name_that_fits_trains(tmp_path, small_corpus):
    if os.pathconf(str(tmp_path), 'PC_NAME_MAX') != 255:
        pytest.skip('the length is chosen for a file system with 255-byte names')
    save = str(tmp_path / ('x' * 235))
    assert train(small_corpus, save) == 0
    assert checkpoint.read_checkpoint(checkpoint.state_path(save))['epoch'] == 1


def test_a_symlink_loop_as_save_is_found_before_any_work(trained, tmp_path, monkeypatch):
    corpus, save, _ = trained
    loop = str(tmp_path / 'loop.pt')
    os.symlink('loop.pt', loop)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=r'loop.pt: Too many levels of symbolic links \(--save\)'):
        train(corpus, loop)
    with pytest.raises(errors.UserError, match=r'loop.pt: Too many levels of symbolic links \(--out\)'):
        finetune.main(['--data', corpus, '--save', save, '--out', loop, '--epochs', '1', *TINY])
    assert os.path.islink(loop) and sorted(os.listdir(tmp_path)) == ['loop.pt']


def test_a_symlinked_save_is_written_through(tmp_path, small_corpus):
    store = tmp_path / 'store'
    store.mkdir()
    link = str(tmp_path / 'm.pt')
    os.symlink(str(store / 'm.pt'), link)
    assert train(small_corpus, link, epochs=2, extra=['--lr', '1']) == 0
    assert os.path.islink(link)
    assert checkpoint.read_checkpoint(str(store / 'm.pt'))['model'].keys()


# ---------------------------------------------------------------------------------------------
# Special files: devices, FIFOs and sockets

def special_file(tmp_path, kind):
    """A FIFO or a socket (a device node needs root: /dev/null itself must never be tried)."""
    path = str(tmp_path / f'{kind}.pt')
    if kind == 'fifo':
        os.mkfifo(path)
    else:
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()
    return path


@pytest.mark.parametrize('kind', ['fifo', 'socket'])
@pytest.mark.parametrize('through', ['path', 'symlink'])
def test_a_non_regular_file_is_never_replaced_by_a_checkpoint(trained, tmp_path, monkeypatch, kind, through):
    corpus, save, _ = trained
    special = special_file(tmp_path, kind)
    target = special
    if through == 'symlink':
        target = str(tmp_path / 'link.pt')
        os.symlink(special, target)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    with pytest.raises(errors.UserError, match=f'is a {kind.upper() if kind == "fifo" else kind}, not a regular file'):
        train(corpus, target)
    with pytest.raises(errors.UserError, match='not a regular file'):
        finetune.main(['--data', corpus, '--save', save, '--out', target, '--epochs', '1', *TINY])
    with pytest.raises(errors.UserError, match='not a regular file'):  # the last line of defence
        checkpoint.atomic_torch_save({'x': torch.ones(1)}, target)
    assert not stat.S_ISREG(os.stat(special).st_mode)
    # Only files that are replaced must be regular: a log or generated text may go to a device.
    run_files.check_output(os.devnull, '--log')


def test_dev_null_as_save_is_refused_without_writing_anything():
    # Checked without running a script: as root, a failure here would replace the system's /dev/null.
    with pytest.raises(errors.UserError, match='/dev/null: is a device, not a regular file'):
        atomic_io.check_replaceable(os.devnull, os.devnull)
    with pytest.raises(errors.UserError, match='is a device|read-only'):  # as root / as anyone else
        run_files.check_output(os.devnull, '--save', replaced=True)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


# ---------------------------------------------------------------------------------------------
# Locks: one run at a time on a set of files, and outputs replaced by another run

def test_a_second_run_on_the_same_files_stops_at_once(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    with open(save + '.lock', 'a') as held:  # as another run holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(errors.UserError, match='another run'):
            train(corpus, save)
        with pytest.raises(errors.UserError, match='another run'):  # fine-tuning writes the same file
            finetune.main(['--data', corpus, '--save', save, '--epochs', '1', *TINY])
    monkeypatch.undo()
    assert train(corpus, save) == 0  # released with its holder


@pytest.mark.parametrize('through', ['a symlinked file', 'a symlinked folder'])
def test_a_symlink_to_another_runs_save_is_locked_out_too(trained, tmp_path, monkeypatch, through):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)  # the other run's --save
    if through == 'a symlinked file':
        other_name = str(tmp_path / 'alias.pt')
        os.symlink(save, other_name)
    else:
        os.symlink(str(tmp_path), str(tmp_path / 'alias'))
        other_name = str(tmp_path / 'alias' / os.path.basename(save))
    before = open(save, 'rb').read()
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    patch_everywhere(monkeypatch, checkpoint, 'load_checkpoint', must_not_run)
    with open(save + '.lock', 'a') as held:  # the other run, on its own path
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(errors.UserError, match='alias.* another run is using these files'):
            train(corpus, other_name)
        with pytest.raises(errors.UserError, match='another run'):
            finetune.main(['--data', corpus, '--save', save, '--out', other_name, '--epochs', '1', *TINY])
    assert open(save, 'rb').read() == before


@pytest.mark.parametrize('nhid', ['12', '16'], ids=['same architecture', 'other architecture'])
def test_finetune_never_reports_a_model_that_replaced_its_output(trained, tmp_path, monkeypatch, nhid):
    corpus, save, _ = trained
    other = str(tmp_path / 'other.pt')
    assert train(corpus, other, extra=['--nhid', nhid]) == 0
    out = str(tmp_path / 'tuned.pt')
    real = checkpoint.atomic_torch_save

    def replaced_after_the_last_epoch(obj, path):  # another run writes over the output at the end
        real(obj, path)
        if path.endswith('.finetune.state'):
            shutil.copy(other, out)
    monkeypatch.setattr(checkpoint, 'atomic_torch_save', replaced_after_the_last_epoch)
    with pytest.raises(errors.UserError, match='tuned.pt: replaced by another run'):
        finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1', *TINY])
    assert open(out, 'rb').read() == open(other, 'rb').read()  # left as it is


def test_finetune_in_place_without_improvement_reports_the_loaded_model(trained, tmp_path, monkeypatch, capsys):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    before = open(save, 'rb').read()
    monkeypatch.setattr(training, 'evaluate', lambda *args: 5.0)  # valid never improves: nothing saved
    assert finetune.main(['--data', corpus, '--save', save, '--epochs', '2', *TINY]) == 0
    assert open(save, 'rb').read() == before
    assert 'End of training' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Atomic writes: a full disk, temporaries, file modes

def test_a_full_disk_while_saving_a_checkpoint_is_a_one_line_error(tmp_path, small_corpus, monkeypatch):
    save = str(tmp_path / 'm.pt')
    assert train(small_corpus, save) == 0
    before = open(save, 'rb').read()
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(errors.UserError, match=r'm.pt: could not be written .*PytorchStreamWriter') as e:
        train(small_corpus, save, extra=['--lr', '1'])
    assert '\n' not in str(e.value)
    assert open(save, 'rb').read() == before and not temporaries(tmp_path)


@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask_and_keep_an_existing_mode(tmp_path, umask):
    path = str(tmp_path / 'x.pt')
    old = os.umask(umask)
    try:
        checkpoint.atomic_torch_save({'x': torch.ones(1)}, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    os.chmod(path, 0o640)
    checkpoint.atomic_torch_save({'x': torch.zeros(1)}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# ---------------------------------------------------------------------------------------------
# Full disks and file size limits, named as such; outputs that are pipes

FILE_SIZE_LIMITED_SAVE = '''
import resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: the write fails with EFBIG
import torch, errors
from harness import atomic_io
try:
    atomic_io.atomic_torch_save({'x': torch.zeros(100000)}, sys.argv[2])
except errors.UserError as e:
    print(e)
'''


@pytest.mark.slow
def test_a_checkpoint_over_the_file_size_limit_says_so(tmp_path):
    import subprocess
    import sys
    path = str(tmp_path / 'big.pt')
    done = subprocess.run([sys.executable, '-c', FILE_SIZE_LIMITED_SAVE, os.getcwd(), path], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == f'{path}: could not be written (the file size limit was reached: File too large)'
    assert os.listdir(tmp_path) == []


def test_write_failures_are_put_in_words():
    assert atomic_io.write_failure(OSError(28, 'No space left on device')) == \
        'the disk is full: No space left on device'
    assert atomic_io.write_failure(OSError(13, 'Permission denied')) == 'Permission denied'


def test_a_full_disk_when_the_lock_is_written_names_the_lock(tmp_path, monkeypatch):
    def no_space(fd, data):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'write', no_space)
    lock = str(tmp_path / 'm.pt.lock')
    with pytest.raises(errors.UserError, match=r'm\.pt\.lock: cannot write the lock of this run \(the disk is full'):
        run_files.hold_lock(lock, str(tmp_path / 'm.pt'))


def test_generate_on_a_full_disk_names_its_output(trained):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match=r'^/dev/full: could not be written \(the disk is full: No space'):
        generate.main(['--data', corpus, '--checkpoint', save, '--outf', '/dev/full', '--words', '5', '--cpu'])


def test_an_output_that_is_a_pipe_passes_its_check():
    # /dev/stdout piped into `cat` resolves into /proc/PID/fd (a read-only folder) and to no file at all.
    read_end, write_end = os.pipe()
    try:
        pipe = f'/proc/self/fd/{write_end}'
        if not os.path.exists(pipe):
            pytest.skip('no /proc/self/fd here')
        run_files.check_output(pipe, '--outf')
    finally:
        os.close(read_end)
        os.close(write_end)
