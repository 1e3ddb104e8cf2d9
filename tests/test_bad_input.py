"""Every script meets bad data and bad checkpoints with a one-line UserError, never a traceback,
and never runs code carried by a checkpoint."""
import os
import shutil

import pytest
import torch

import dynamiceval
import finetune
import generate
import main as train_script
from harness import checkpoint
import errors
import pointer
from conftest import TINY, write_corpus


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp('trained')
    corpus = write_corpus(str(folder / 'corpus'))
    save = str(folder / 'model.pt')
    assert train_script.main(['--data', corpus, '--save', save, '--epochs', '1', *TINY]) == 0
    return corpus, save


def script_argv(script, data, saved, tmp_path):
    """How each script is pointed at a corpus and a checkpoint."""
    if script is train_script:
        return ['--data', data, '--resume', saved, '--save', str(tmp_path / 'out.pt'), '--epochs', '1', *TINY]
    if script is finetune:
        return ['--data', data, '--save', saved, '--out', str(tmp_path / 'out.pt'), '--epochs', '1', *TINY]
    if script is pointer:
        return ['--data', data, '--save', saved, '--window', '5', '--bptt', '20', '--cpu']
    if script is generate:
        return ['--data', data, '--checkpoint', saved, '--outf', str(tmp_path / 'out.txt'), '--words', '5', '--cpu']
    return ['--data', data, '--save', saved, '--max-batches', '2', '--cpu']


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling would create a file
        return (open, (self.path, 'w'))


def break_input(case, corpus, saved, tmp_path):
    """Returns (data folder, checkpoint path, expected message) for one kind of bad input."""
    data = str(tmp_path / 'data')
    shutil.copytree(corpus, data)
    ckpt = str(tmp_path / 'ckpt.pt')
    shutil.copy(saved, ckpt)
    if case == 'data folder missing':
        return str(tmp_path / 'nowhere'), ckpt, 'not found'
    if case == 'split missing':
        os.remove(os.path.join(data, 'valid.txt'))
        return data, ckpt, 'valid.txt: file not found'
    if case == 'split empty':
        open(os.path.join(data, 'test.txt'), 'w').close()
        return data, ckpt, 'test.txt: file is empty'
    if case == 'split not text':
        with open(os.path.join(data, 'train.txt'), 'wb') as f:
            f.write(b'\x80\x81\xfe binary')
        return data, ckpt, 'train.txt: not UTF-8'
    if case == 'checkpoint missing':
        return data, str(tmp_path / 'none.pt'), 'checkpoint not found'
    if case == 'checkpoint truncated':
        content = open(ckpt, 'rb').read()
        with open(ckpt, 'wb') as f:
            f.write(content[:len(content) // 3])
        return data, ckpt, 'not a readable checkpoint'
    if case == 'not a checkpoint':
        torch.save({'weights': torch.ones(3)}, ckpt)
        return data, ckpt, 'not a checkpoint written by this code'
    if case == 'pickled code':
        torch.save({'format': checkpoint.CHECKPOINT_FORMAT, 'model': Payload(str(tmp_path / 'pwned'))}, ckpt)
        return data, ckpt, 'refused'
    if case == 'vocabulary mismatch':
        with open(os.path.join(data, 'train.txt'), 'a') as f:
            f.write('entirely unseen words here\n')
        return data, ckpt, 'vocabulary'
    raise ValueError(case)


CASES = ['data folder missing', 'split missing', 'split empty', 'split not text', 'checkpoint missing',
         'checkpoint truncated', 'not a checkpoint', 'pickled code', 'vocabulary mismatch']
SCRIPTS = [train_script, finetune, pointer, generate, dynamiceval]


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('script', SCRIPTS, ids=lambda s: s.__name__)
def test_bad_input(script, case, trained, tmp_path):
    corpus, saved = trained
    data, ckpt, message = break_input(case, corpus, saved, tmp_path)
    before = open(ckpt, 'rb').read() if os.path.isfile(ckpt) else None
    with pytest.raises(errors.UserError, match=message):
        script.main(script_argv(script, data, ckpt, tmp_path))
    assert not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'out.pt').exists() and not (tmp_path / 'out.txt').exists()
    if before is not None:
        assert open(ckpt, 'rb').read() == before  # nothing already saved is touched
