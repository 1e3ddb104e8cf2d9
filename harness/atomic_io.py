"""Writing files so that nothing already saved is lost, and telling a damaged file from an intact one.

atomic_write: a file is either the old one or the new one, never half of one (a temporary file in the
same folder, fsync, rename); temporary_name and remove_stale_temporaries deal with the temporaries a
killed run leaves; content_digest: the sha256 a checkpoint or corpus cache carries, so a flipped bit
never loads as other weights.

A leaf: it imports no project module but errors.py. checkpoint.py (checkpoints, resume states),
data.py (the corpus cache), run_files.py and run_log.py write through it.
"""
import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import tempfile

import torch

from errors import UserError, first_line


# ---------------------------------------------------------------------------------------------
# Atomic writes: a file is either the old one or the new one, never half of one

def atomic_write(path, write):
    """Write a file through a temporary file in the same folder: write(f), flush, fsync, rename.

    A crash at any point leaves either the old file or the new one, never a half-written one. A
    symlinked `path` is written through to its target (not replaced by a file). The new file keeps
    the mode of the one it replaces, or else gets the umask's default, as open() would give it. A
    failure (a full disk: torch raises RuntimeError, Python OSError) is a UserError naming the file,
    and the temporary file is removed.
    """
    target = os.path.realpath(path)
    check_replaceable(target, path)
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(target) + '.', suffix='.tmp', dir=folder)
    except OSError as e:
        raise UserError(f'{path}: could not be written ({write_failure(e)})') from None
    try:
        os.fchmod(fd, file_mode(target))
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            raise UserError(f'{path}: could not be written ({write_failure(e)})') from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def temporary_name(name):
    """The longest name atomic_write gives the temporary file of `name` (mkstemp adds 8 random characters
    between its prefix and suffix): checked against the file system's limit before any work."""
    return '.' + name + '.' + 'x' * 8 + '.tmp'


def check_replaceable(target, name):
    """A UserError unless `target` (a resolved path, `name` in the message) is absent or a regular file:
    atomic_write replaces the file at `target`, and a device node, FIFO or socket there (`/dev/null`,
    as root) must never be replaced by a regular file."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f'{name}: cannot be examined ({e.strerror})') from None
    if not stat.S_ISREG(mode):
        kind = ('a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'a FIFO' if stat.S_ISFIFO(mode)
                else 'a socket' if stat.S_ISSOCK(mode) else 'a folder' if stat.S_ISDIR(mode) else 'a special file')
        raise UserError(f'{name}: is {kind}, not a regular file; it would be replaced by this file, so write '
                        'elsewhere')


def file_mode(path):
    """The permission bits for a new version of `path`: those of the file it replaces, or the
    umask's default (mkstemp alone would give 0600 whatever the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_torch_save(obj, path):
    """torch.save through atomic_write. Serialized in memory first and written by Python: torch's own
    writer reports a full disk as `[enforce fail at inline_container.cc] unexpected pos`, Python's
    write as ENOSPC (or EFBIG, the file size limit), which write_failure puts in words."""
    def write(f):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        f.write(buffer.getbuffer())
    atomic_write(path, write)


# Why a write fails, for the errors a user can do something about.
WRITE_FAILURES = {errno.ENOSPC: 'the disk is full', errno.EFBIG: 'the file size limit was reached',
                  errno.EDQUOT: 'the disk quota is used up'}


def write_failure(error):
    """The reason an OSError or RuntimeError of a write gives, in words: `the disk is full (No space
    left on device)` for ENOSPC."""
    if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
        return f'{WRITE_FAILURES[error.errno]}: {error.strerror}'
    return (error.strerror if isinstance(error, OSError) else None) or first_line(error)


def atomic_write_text(text, path):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def remove_stale_temporaries(paths):
    """Remove the temporary files of atomic_write (`.<name>.<random>.tmp`) left beside these files by
    a run that was killed while writing them. Only the holder of the run's lock may call this."""
    for path in paths:
        folder, name = os.path.split(os.path.realpath(path))
        pattern = re.compile(re.escape('.' + name + '.') + r'[^.]+\.tmp')
        for entry in os.listdir(folder):
            if pattern.fullmatch(entry):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))


# ---------------------------------------------------------------------------------------------
# The content digest: a flipped bit never loads as other weights

def content_digest(obj):
    """sha256 over the contents of a checkpoint (or corpus cache) dict, as 'sha256:<hex>'.

    Walked in a fixed order (dict keys sorted), each value tagged with its type and length; a tensor
    contributes its dtype, shape and bytes. A flipped bit in a stored tensor loads without any error
    from torch, so read_checkpoint compares this with the digest stored at save time.
    """
    digest = hashlib.sha256()
    _digest_into(digest, obj)
    return 'sha256:' + digest.hexdigest()


def _digest_into(digest, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f'tensor {t.dtype} {tuple(t.shape)}\0'.encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f'dict {len(obj)}\0'.encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _digest_into(digest, key)
            _digest_into(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f'{"tuple" if isinstance(obj, tuple) else "list"} {len(obj)}\0'.encode())
        for item in obj:
            _digest_into(digest, item)
    elif isinstance(obj, str):
        data = obj.encode('utf-8', 'surrogatepass')
        digest.update(f'str {len(data)}\0'.encode() + data)
    elif obj is None or isinstance(obj, (bool, int, float)):
        digest.update(f'{type(obj).__name__} {obj!r}\0'.encode())
    else:
        raise TypeError(f'a {type(obj).__name__} has no place in a checkpoint')


def with_digest(obj):
    """The dict `obj` with its content digest added under 'digest'."""
    return {**obj, 'digest': content_digest(obj)}


def digest_matches(obj):
    """Whether the dict `obj` holds a digest of the rest of its contents (with_digest's)."""
    if not isinstance(obj, dict) or not isinstance(obj.get('digest'), str):
        return False
    try:
        return obj['digest'] == content_digest({k: v for k, v in obj.items() if k != 'digest'})
    except TypeError:  # something no checkpoint holds
        return False
