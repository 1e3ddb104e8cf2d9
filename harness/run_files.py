"""The files a run writes: checked before any work is done (writable, not an input of the run, not a
device or folder, a name the file system takes), then locked while the run lasts, so that a second run
on the same files stops at once.
"""
import contextlib
import errno
import os
import stat
import sys
import uuid

import data
from .atomic_io import atomic_write_text, check_replaceable, remove_stale_temporaries, temporary_name, write_failure
from errors import UserError


def data_files(folder):
    """The split files of a corpus folder: inputs that no output may overwrite."""
    return [os.path.join(folder, split + '.txt') for split in data.SPLITS]


def writable(path):
    """Whether `path` may be written. A file or folder marked read-only (no write bit) is respected
    even by root, for whom os.access always says yes (data.py treats the corpus cache the same way)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


def check_output(path, flag, inputs=(), replaced=False, run=None):
    """Fail at once, not after an epoch, if the file `path` (named by `flag`) cannot be written or
    would overwrite one of `inputs`, or a file that a run needs (see run_needing) other than those of
    `run`, the --save of the run writing it. A symlink is judged by its target, which is what gets
    written. `replaced`: the file is written by replacing it (atomic_io.atomic_write), so it must be a
    regular file if it exists: a device node or FIFO there (`--save /dev/null`) would itself be replaced."""
    if not path:
        raise UserError(f'{flag} is empty: name the file to write')
    if os.path.isdir(path):
        raise UserError(f'{path}: is a folder ({flag} names the file to write)')
    check_not_a_run_file(path, flag, run)
    if replaced and is_stream(path):
        # Named for what it is before its folder is looked at: /dev/stdout on a pipe resolves to
        # /proc/PID/fd/pipe:[N], no file at all, in a read-only folder.
        check_replaceable(path, f'{path} ({flag})')
    if not replaced and os.path.exists(path):
        # Written in place (opened for writing or appending): its folder plays no part. /dev/stdout on a
        # pipe resolves into /proc/PID/fd, a read-only folder, and to a name that is no file at all.
        if not writable(path):
            raise UserError(f'{path}: file is read-only ({flag})')
        check_not_an_input(path, flag, inputs)
        return
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UserError(f'{folder}: folder does not exist ({flag} {path})')
    if not writable(folder):
        raise UserError(f'{folder}: folder is read-only ({flag} {path})')
    check_name(path, target, flag, replaced)
    if replaced:
        check_replaceable(target, f'{path} ({flag})')
    if os.path.exists(target):
        if not writable(target):
            raise UserError(f'{path}: file is read-only ({flag})')
        check_not_an_input(target, flag, inputs, path)


def is_stream(path):
    """Whether `path` names something that is written in place, not replaced: a terminal, a pipe,
    /dev/stdout or /dev/null (an existing file that is not a regular one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


# The files of the run saving to S, by what follows S in their names: its checkpoint, main.py's and
# finetune.py's resume states and logs, and its lock (checkpoint.state_path, finetune.finetune_state_path,
# run_log.json_log_path, finetune.finetune_log_path, lock_path). Longest first, so that X.finetune.state
# is read as finetune's state of X before main's state of X.finetune.
RUN_FILE_SUFFIXES = ('.finetune.state', '.finetune.jsonl', '.state', '.jsonl', '.lock', '')
# Names no other file has: a resume state or a lock is a run's even when nothing else of the run is there.
RUN_ONLY_SUFFIXES = ('.finetune.state', '.state', '.lock')


def run_needing(path):
    """The --save S of a run that needs the file `path` (S itself, S.state, S.finetune.state, S.jsonl,
    S.finetune.jsonl or S.lock), or None. A run is one this script can see: another of its files is
    there (a pointer log S.pointer.jsonl is no run's log: no S.pointer is), or `path` is named as
    only a resume state or a lock is."""
    for suffix in RUN_FILE_SUFFIXES:
        if not path.endswith(suffix) or path == suffix:
            continue
        save = path[:len(path) - len(suffix)]
        others = [save + other for other in RUN_FILE_SUFFIXES if other != suffix]
        if suffix in RUN_ONLY_SUFFIXES or any(os.path.lexists(other) and not os.path.isdir(other) for other in others):
            return save
    return None


def check_not_a_run_file(path, flag, run):
    """A UserError if `path`, by its own name or the file it resolves to, is a file that a run other
    than `run` needs: score.py --out PTB.pt.state replaced the resume state of the run it scored."""
    own = None if run is None else os.path.realpath(run)
    for name in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        save = run_needing(name)
        if save is not None and os.path.realpath(save) != own:
            raise UserError(f'{path}: {flag} would overwrite a file of the run saving to {save} (its checkpoint, '
                            'resume states, logs and lock are that run\'s): write elsewhere')


def write_result(text, path):
    """A script's result: to standard output for `-`, in place to a stream (`/dev/stdout`, a pipe, a
    device), else to a file written atomically, so that the file there stays whole until the new one is
    complete, and two runs writing one name leave one run's output, never a mix or a truncated file."""
    if path == '-':
        sys.stdout.write(text)
    elif is_stream(path):
        try:
            with open(path, 'w') as f:
                f.write(text)
        except BrokenPipeError:  # `--outf /dev/stdout | head`: the reader has gone; cli.run ends quietly
            raise
        except OSError as e:  # /dev/full: Python's write names no file
            raise UserError(f'{path}: could not be written ({write_failure(e)})') from None
    else:
        atomic_write_text(text, path)


def check_not_an_input(target, flag, inputs, path=None):
    for source in inputs:
        if os.path.exists(source) and os.path.samefile(target, source):
            raise UserError(f'{path or target}: {flag} would overwrite {source}, an input of this run')


def check_name(path, target, flag, replaced):
    """A loop of symlinks, or a name too long for the file system, found now rather than at the first
    save. A replaced file is first written under a longer temporary name (atomic_io.temporary_name):
    that name must fit too."""
    try:
        os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as e:  # ELOOP (a symlink loop); a name too long is measured below
        if e.errno != errno.ENAMETOOLONG:
            raise UserError(f'{path}: {e.strerror} ({flag})') from None
    folder, name = os.path.split(target)
    longest = temporary_name(name) if replaced else name
    name_max, path_max = path_limit(folder, 'PC_NAME_MAX', 255), path_limit(folder, 'PC_PATH_MAX', 4096)
    excess = max(len(os.fsencode(longest)) - name_max, len(os.fsencode(os.path.join(folder, longest))) - path_max + 1)
    if excess > 0:
        raise UserError(f'{path}: name too long for this file system ({flag}): shorten it by at least {excess} bytes '
                        f'(a name may have {name_max} bytes here, a path {path_max - 1}'
                        + (f', including the {len(longest) - len(name)} that the temporary file written first adds)'
                           if replaced else ')'))


def path_limit(folder, name, default):
    """os.pathconf(folder, name), or `default` where the file system does not say."""
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


@contextlib.contextmanager
def run_files(save, outputs, inputs=()):
    """Claims the files of a run for as long as it lasts.

    `outputs` are (path, flag) pairs: each must be writable and, if it exists, a regular file
    (check_output: checkpoints and states are replaced when written). Then an exclusive lock on
    `<save>.lock`, beside the file `save` resolves to, is held, so that a second run on the same files
    stops at once instead of interleaving its log records and checkpoints with this one's; the lock
    goes with the process, however it ends. Holding it, the hidden temporary files that a killed run
    left behind for these outputs are removed. A `save` named like a resume state is refused.
    """
    if save.endswith('.state'):
        # Resume states are <save>.state and <out>.finetune.state: a checkpoint written over one (say
        # finetune.py --save X.pt.state, which fine-tunes in place) ends the resumability of its run.
        flag = next((flag for path, flag in outputs if path == save), '--save')
        raise UserError(f'{save}: {flag} names a resume state (.state): writing a checkpoint there would leave its '
                        'run unable to continue; write the model elsewhere (finetune.py: --out)')
    # Longest first: a name too long for the file system is reported with the most it must be shortened by.
    for path, flag in sorted(outputs, key=lambda output: -len(os.fsencode(output[0]))):
        check_output(path, flag, inputs, replaced=True, run=save)
    # The lock of the file `save` resolves to: a symlink to another run's --save (or a folder reached
    # through a symlink) names the same lock as that run's own path, so the two cannot both write it.
    lock = hold_lock(lock_path(save), save)
    try:
        remove_stale_temporaries(path for path, _ in outputs)
        yield
    finally:
        os.close(lock)


def lock_path(save):
    """`<save>.lock`, beside the file `save` resolves to (see run_files)."""
    return os.path.realpath(save) + '.lock'


def hold_lock(path, name):
    """An open descriptor holding an exclusive flock on `path`; a UserError naming `name` (the run's
    files) if another holds it. The holder writes a token of its own into the file: the other ranks of
    a data-parallel run read it to tell that they see rank 0's files (distributed.check_same_start)."""
    import fcntl  # POSIX only, as are the scripts' signals
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f'{path}: cannot create the lock of this run ({e.strerror})') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f'{name}: another run is using these files (it holds {path}); '
                        'wait for it to end, or write elsewhere') from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, uuid.uuid4().hex.encode())
    except OSError as e:  # a full disk: name the file and say why
        os.close(fd)
        raise UserError(f'{path}: cannot write the lock of this run ({write_failure(e)})') from None
    return fd
