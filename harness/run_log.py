"""What a run prints and logs: the report lines (loss, perplexity, bpc as the original printed them),
the JSON-lines log (<save>.jsonl, appended to, one record per epoch), and the progress bar.
"""
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

from .atomic_io import atomic_write, write_failure
from errors import UserError
from training import loss_figures, perplexity


def report_line(kind, loss, release=2018):
    """`<kind> loss x | <kind> ppl y | <kind> bpc z`, the figures every log line ends with (the 2017
    release of the original printed no bpc)."""
    return loss_figures(loss, release, kind)


def loss_record(kind, loss):
    return {f'{kind}_loss': loss, f'{kind}_ppl': perplexity(loss), f'{kind}_bpc': loss / math.log(2)}


def report_epoch(epoch, epoch_start_time, val_loss, release=2018):
    """The end-of-epoch block main.py prints: time and valid loss / ppl / bpc between rules."""
    print('-' * 89)
    print(f'| end of epoch {epoch:3d} | time: {time.time() - epoch_start_time:5.2f}s | '
          f'{report_line("valid", val_loss, release)}')
    print('-' * 89)


class JsonLog:
    """A JSON-lines log, appended to and never truncated: one record per call, flushed at once so a
    crash loses nothing written.

    The first record each JsonLog writes (each process of a run: a resumed run's too) carries
    `provenance` (provenance()); readers of epochs and figures (plot.py, the resume above) pass over it.

    Runs that share a log (a new run on an old --save, a restart from a checkpoint) are told apart by
    `run`, the id each record carries. Numbers that are not finite are written as null, so that
    strict JSON parsers read every line. A resumed run passes `resumed_after` (the epoch of its
    resume state): its own records of later epochs, and its final record, are dropped, since it is
    about to redo those epochs (kill -9 can strike between an epoch's record and its state).
    """

    def __init__(self, path, run=None, resumed_after=None, command=None, device=None):
        self.path, self.run = path, run
        # Taken now (the start time is this process's), written with the first record: a run's log
        # says which code, on which software and machine, by which command produced its figures.
        self.provenance = provenance(command, device)
        self._end_a_cut_off_line()
        if resumed_after is not None:
            self._forget_records_after(resumed_after)
        try:
            self.file = open(path, 'a')
        except OSError as e:
            raise UserError(f'{path}: cannot write the log ({e.strerror})') from None

    def write(self, **record):
        if self.provenance is not None:
            record = {**record, 'provenance': self.provenance}
            self.provenance = None
        if self.run is not None:
            record = {'run': self.run, **record}
        try:
            self.file.write(json.dumps(finite_or_null(record), allow_nan=False) + '\n')
            self.file.flush()
        except OSError as e:
            raise UserError(f'{self.path}: could not write the log ({write_failure(e)})') from None

    def _end_a_cut_off_line(self):
        """A last line without its newline, in a log of this code, was cut off by an interrupted write (a
        full disk, kill -9): the next record appended to it would spoil both. A whole record that only
        lacks the newline gets it; a partial one, which nothing can read, is dropped, with a note. Any
        other file is left whole (check_appendable): a text file not ending in a newline gets one before
        the record. Only a regular file is examined: a pipe or terminal (/dev/stdout) is written as it is."""
        content = check_appendable(self.path)
        if not content or content.endswith(b'\n'):
            return
        keep = content.rfind(b'\n') + 1
        tail = content[keep:]
        try:
            with open(self.path, 'rb+') as f:
                if not (is_log_of_this_code(content) and tail.startswith(b'{')) or is_record(tail):
                    f.seek(0, os.SEEK_END)
                    f.write(b'\n')
                else:
                    f.truncate(keep)
                    print(f'note: {self.path}: dropped its last line, a record cut off by an interrupted write '
                          f'({len(tail)} bytes)')
        except OSError as e:
            raise UserError(f'{self.path}: cannot write the log ({e.strerror or e})') from None

    def _forget_records_after(self, epoch):
        # Read as bytes: a line that is not UTF-8 is not this code's, and is kept as it is.
        if not os.path.isfile(self.path):
            return
        with open(self.path, 'rb') as f:
            lines = f.readlines()
        kept = [line for line in lines if not self._redone(line, epoch)]
        if len(kept) < len(lines):
            atomic_write(self.path, lambda f: f.write(b''.join(kept)))

    def _redone(self, line, epoch):
        try:
            record = json.loads(line)
        except ValueError:  # UnicodeDecodeError included
            return False  # not ours to judge
        return (isinstance(record, dict) and record.get('run') == self.run
                and (record.get('final', False) or (record.get('epoch') or 0) > epoch))


def check_appendable(path):
    """The bytes of the file at `path` that a log record is about to be appended to (b'' when there is
    none, or it is not a regular file: a pipe, a terminal, /dev/null), refused if it is a binary file (a
    checkpoint given as --log), which a line of text appended to would damage. Called before any work
    by the scripts that log only at the end (pointer.py)."""
    try:
        if not os.path.isfile(path):
            return b''
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as e:
        raise UserError(f'{path}: cannot read the log to append to it ({e.strerror or e})') from None
    if b'\0' in content:
        raise UserError(f'{path}: not a log but a binary file (a checkpoint?): appending a record would damage '
                        'it; name a log or a new file')
    return content


def is_record(line):
    """Whether `line` (bytes) is one whole JSON record (an object)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def is_log_of_this_code(content):
    """Whether a file's bytes are a JSON-lines log as this code writes them: its first line a whole record
    (or, cut off before its first newline, the start of one)."""
    if b'\n' not in content:
        return content.startswith(b'{"')
    return is_record(content.split(b'\n', 1)[0])


def finite_or_null(value):
    """`value` with every float that is inf or NaN replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_log_path(save):
    """The log of the run saving to `save`: the whole name plus .jsonl, so that two --save names
    never share a log (stripping an extension made runs/lr0.5 and runs/lr0.1 both runs/lr0.jsonl)."""
    return save + '.jsonl'


def progress_bar(total, desc):
    """tqdm over the batches of an epoch, silent when stdout is not a terminal (logs, CI)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stdout.isatty(), dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Provenance: where a run's figures came from

# The checkout this code runs from: the git commit recorded is this folder's.
CODE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance(command=None, device=None):
    """The facts that tell where a run came from, as plain JSON values: the command line (`command`, the
    script and its arguments: a run started from Python gives its own; default sys.argv), Python and
    torch versions, CUDA and cuDNN versions and the name of the device the run computes on (`device`,
    a torch.device; default the GPU when one is present; None for CUDA and cuDNN without one, the CPU's
    name then), the git commit of this code's checkout and whether tracked files had uncommitted changes
    (None for both outside a git checkout or without git), the start time (UTC)."""
    cuda = torch.cuda.is_available() if device is None else device.type == 'cuda'
    commit, dirty = git_state(CODE_FOLDER)
    return {
        'command': shlex.join([os.path.basename(sys.executable or 'python'), *(command or sys.argv)]),
        'cwd': os.getcwd(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda if cuda else None,
        'cudnn': torch.backends.cudnn.version() if cuda else None,
        'device': torch.cuda.get_device_name() if cuda else cpu_name(),
        'git_commit': commit,
        'git_dirty': dirty,
        'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }


def cpu_name():
    """The processor's model name (Linux's /proc/cpuinfo), else what platform says of the machine."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'cpu'


def git_state(folder):
    """(commit, whether tracked files differ from it) of the git checkout at `folder`; (None, None)
    when it is not one, git is not installed or does not answer in time."""
    def git(*args):
        return subprocess.run(['git', '-C', folder, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        commit = git('rev-parse', 'HEAD')
        dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty
