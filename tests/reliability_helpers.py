"""Helpers shared by the tests that run the scripts on a tiny model and inject a fault (test_checkpoint.py,
test_run_files.py, test_run_log.py, test_data.py, test_flags.py, test_interrupts.py, test_main.py,
test_plot.py). Their fixtures, `small_corpus` and `trained`, are in conftest.py."""
import os
import shutil

import torch

import main as train_script
from harness import checkpoint
from harness import run_log
from conftest import read_jsonl, tiny_run


LEGACY_FORMAT = 'awd-lstm-checkpoint-1'  # checkpoints written before the digest


def train(corpus, save, epochs=1, extra=()):
    return train_script.main(tiny_run(corpus, save, epochs, extra))


def must_not_run(*args, **kwargs):
    raise AssertionError('the bad location should have been found before this step')


def epochs_of(save):
    return [r['epoch'] for r in read_jsonl(run_log.json_log_path(save)) if 'epoch' in r]


def temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')]


def hand_made(raw, path, digest=False):
    """Writes a checkpoint dict as someone could by hand: the legacy format without a digest, or the
    current one with a correct digest (a digest vouches for the bytes, not for the contents)."""
    raw = dict(raw)
    raw.pop('digest', None)
    if digest:
        raw = checkpoint.with_digest({**raw, 'format': checkpoint.CHECKPOINT_FORMAT})
    else:
        raw['format'] = LEGACY_FORMAT
    torch.save(raw, path)
    return path


def copy_checkpoint(trained, tmp_path):
    """The fixture's checkpoint and state, copied so that a test may damage them."""
    _, save, _ = trained
    copy = str(tmp_path / 'copy.pt')
    shutil.copy(save, copy)
    shutil.copy(checkpoint.state_path(save), checkpoint.state_path(copy))
    return copy


def epoch_record(run, epoch, lr, valid_loss):
    return dict(run=run, epoch=epoch, lr=lr, optimizer='sgd', train_loss=valid_loss + 0.5,
                **run_log.loss_record('valid', valid_loss))


DISK_FULL = RuntimeError('[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing '
                         'file data/0: file write failed')


def disk_full(obj, f, *args, **kwargs):
    f.write(b'PK\x03\x04 the start of a file')
    raise DISK_FULL
