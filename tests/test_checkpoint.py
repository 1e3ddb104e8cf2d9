"""checkpoint.py: atomic writes, and files that are not checkpoints of ours (the digest, hand-made
fields, resume states and the legacy format are exercised end to end in test_reliability.py)."""
import os

import pytest
import torch

import checkpoint
import errors


def test_atomic_save_survives_a_crash_midway(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.atomic_torch_save({'x': torch.ones(2)}, path)

    def half_write(obj, f):
        f.write(b'PK\x03\x04 half a file')
        raise OSError('disk full (injected)')
    monkeypatch.setattr(torch, 'save', half_write)
    with pytest.raises(errors.UserError, match='ckpt.pt: could not be written .*injected'):
        checkpoint.atomic_torch_save({'x': torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['x'], torch.ones(2))
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left behind


class Payload:
    """Unpickling this would create a file: a checkpoint must never be able to run code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pt')
    torch.save({'format': checkpoint.CHECKPOINT_FORMAT, 'model': Payload(str(marker))}, path)
    with pytest.raises(errors.UserError, match='refused'):
        checkpoint.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('content,match', [(None, 'not found'), (b'', 'not a readable'),
                                           (b'hello world', 'not a readable')])
def test_bad_checkpoint_files(tmp_path, content, match):
    path = tmp_path / 'x.pt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(errors.UserError, match=match):
        checkpoint.load_checkpoint(str(path))


def test_truncated_and_foreign_checkpoints(tmp_path):
    path = tmp_path / 'a.pt'
    torch.save({'some': torch.ones(100)}, str(path))
    with pytest.raises(errors.UserError, match='not a checkpoint written by this code'):
        checkpoint.load_checkpoint(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(errors.UserError, match='not a readable'):
        checkpoint.load_checkpoint(str(path))
