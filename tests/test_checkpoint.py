"""checkpoint.py: atomic writes, files that are not checkpoints of ours, the digest (a flipped bit, the
legacy format), hand-made checkpoints and resume states, and resume states or checkpoints given to a
script or a run they do not belong to."""
import os
import random
import shutil

import pytest
import torch

import dynamiceval
import finetune
import generate
import main as train_script
from harness import checkpoint
from harness import cli
import errors
import pointer
import training
from conftest import TINY, patch_everywhere
from reliability_helpers import copy_checkpoint, hand_made, must_not_run, train


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
                                           (b'hello world', 'not a readable'),
                                           # a corpus file given as the checkpoint: not "pickled objects"
                                           (b' aer banknote berlitz calloway\n', 'not a readable')])
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


# ---------------------------------------------------------------------------------------------
# Digests: a damaged checkpoint never loads as other weights

def same(a, b):
    """Equal as checkpoint contents: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a,
                                                       b.view(torch.uint8) if b.dtype == torch.bool else b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or a != a and b != b)


@pytest.mark.slow
@pytest.mark.parametrize('which', ['checkpoint', 'state'])
def test_a_flipped_bit_never_loads_as_other_weights(trained, tmp_path, which):
    _, save, _ = trained
    path = save if which == 'checkpoint' else checkpoint.state_path(save)
    reference = torch.load(path, weights_only=True)
    content = open(path, 'rb').read()
    flipped_path = str(tmp_path / 'flipped.pt')
    rnd = random.Random(11)
    silently_different = []
    for _ in range(300):
        bit = rnd.randrange(len(content) * 8)
        damaged = bytearray(content)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with open(flipped_path, 'wb') as f:
            f.write(damaged)
        try:
            loaded = checkpoint.read_checkpoint(flipped_path)
        except errors.UserError as e:
            assert 'flipped.pt' in str(e) and '\n' not in str(e)
            continue
        if not same(loaded, reference):
            silently_different.append(bit)
    assert not silently_different, f'{len(silently_different)} of 300 flips loaded with other contents'


def test_a_checkpoint_without_its_digest_is_refused_unless_it_predates_digests(trained, tmp_path):
    _, save, _ = trained
    raw = torch.load(save, weights_only=True)
    legacy = hand_made(raw, str(tmp_path / 'legacy.pt'))
    assert checkpoint.load_checkpoint(legacy)['model'] is not None  # written before this change: still loads
    stripped = {k: v for k, v in raw.items() if k != 'digest'}
    torch.save(stripped, str(tmp_path / 'stripped.pt'))
    with pytest.raises(errors.UserError, match='stripped.pt: .*digest'):
        checkpoint.load_checkpoint(str(tmp_path / 'stripped.pt'))


# ---------------------------------------------------------------------------------------------
# Hand-made checkpoints and resume states with missing or wrong fields

BROKEN = {
    'model missing': lambda c: c.pop('model'),
    'model not a dict': lambda c: c.__setitem__('model', [1, 2]),
    'a weight replaced by a number': lambda c: c['model'].__setitem__(next(iter(c['model'])), 3),
    'args not a dict': lambda c: c.__setitem__('args', 'lr=30'),
    'vocabulary not words': lambda c: c.__setitem__('idx2word', list(range(len(c['idx2word'])))),
    'model_config with an unknown key': lambda c: c['model_config'].__setitem__('colour', 'blue'),
    'model_config with a wrong type': lambda c: c['model_config'].__setitem__('nhid', 'twelve'),
    'criterion_config missing a key': lambda c: c['criterion_config'].pop('splits'),
}


@pytest.mark.parametrize('digest', [False, True], ids=['legacy', 'with digest'])
@pytest.mark.parametrize('case', BROKEN)
def test_hand_made_checkpoints_with_missing_or_wrong_fields(trained, tmp_path, case, digest):
    corpus, save, _ = trained
    raw = torch.load(save, weights_only=True)
    BROKEN[case](raw)
    path = hand_made(raw, str(tmp_path / 'hand.pt'), digest)
    with pytest.raises(errors.UserError, match='hand.pt'):
        checkpoint.load_checkpoint(path)
    if not case.startswith(('model_config', 'criterion_config')):  # main.py builds the model from its flags
        with pytest.raises(errors.UserError, match='hand.pt'):
            train(corpus, str(tmp_path / 'x.pt'), extra=['--resume', path])


STATE_BROKEN = {
    'epoch not a number': lambda s: s.__setitem__('epoch', 'one'),
    'history missing': lambda s: s.pop('history'),
    'random state damaged': lambda s: s['rng'].__setitem__('numpy', {}),
    'optimizer state of another shape': lambda s: s['optimizer']['param_groups'].append({'params': [99]}),
}


@pytest.mark.parametrize('case', STATE_BROKEN)
def test_hand_made_resume_states_with_missing_or_wrong_fields(trained, tmp_path, case):
    corpus, _, _ = trained
    copy = copy_checkpoint(trained, tmp_path)
    raw = torch.load(checkpoint.state_path(copy), weights_only=True)
    STATE_BROKEN[case](raw)
    hand_made(raw, checkpoint.state_path(copy))
    with pytest.raises(errors.UserError, match='copy.pt.state'):
        train(corpus, copy, epochs=2, extra=['--resume', copy])


@pytest.mark.parametrize('flag,value', [('bptt', 0), ('lr', -1.0), ('batch_size', 'four'), ('dropout', 1.5)])
def test_a_resume_state_with_invalid_flags_is_refused(trained, tmp_path, flag, value):
    corpus, _, _ = trained
    copy = copy_checkpoint(trained, tmp_path)
    raw = torch.load(checkpoint.state_path(copy), weights_only=True)
    raw['args'][flag] = value
    hand_made(raw, checkpoint.state_path(copy))
    with pytest.raises(errors.UserError, match=f'copy.pt.state: .*--{flag}'):
        train(corpus, copy, epochs=2, extra=['--resume', copy])


# ---------------------------------------------------------------------------------------------
# Resume states and checkpoints given where they do not belong

def test_each_script_resumes_only_its_own_states(trained, tmp_path):
    corpus, save, finetune_state = trained
    copy = copy_checkpoint(trained, tmp_path)
    with pytest.raises(errors.UserError, match=r'main\.py'):
        finetune.main(['--data', corpus, '--save', copy, '--resume', checkpoint.state_path(copy), '--epochs', '2',
                       *TINY])
    with pytest.raises(errors.UserError, match=r'finetune\.py'):
        train(corpus, str(tmp_path / 'x.pt'), epochs=2, extra=['--resume', finetune_state])


def test_resuming_a_run_whose_model_was_fine_tuned_in_place_stops_before_any_work(trained, tmp_path, monkeypatch):
    corpus, _, _ = trained
    save = copy_checkpoint(trained, tmp_path)
    main_run = checkpoint.read_checkpoint(save)['run']
    assert finetune.main(['--data', corpus, '--save', save, '--epochs', '2', *TINY]) == 0  # in place
    tuned = open(save, 'rb').read()
    assert checkpoint.read_checkpoint(save)['run'] != main_run  # the fine-tuned model replaced the run's
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=r'copy.pt: holds the model of another run .* --save NEW.pt'):
        train(corpus, save, epochs=3, extra=['--resume', save])
    assert open(save, 'rb').read() == tuned
    monkeypatch.undo()
    # As the message says: the run continues from its state, into other files.
    elsewhere = str(tmp_path / 'continued.pt')
    assert train_script.main([*TINY, '--data', corpus, '--epochs', '2', '--resume', checkpoint.state_path(save),
                              '--save', elsewhere]) == 0
    assert checkpoint.read_checkpoint(checkpoint.state_path(elsewhere))['epoch'] == 2
    assert open(save, 'rb').read() == tuned


def evaluation_argv(script, corpus, model, tmp_path):
    """argv of pointer.py, generate.py or dynamiceval.py evaluating `model`."""
    if script is generate:
        return ['--data', corpus, '--checkpoint', model, '--outf', str(tmp_path / 'g.txt'), '--words', '5', '--cpu']
    if script is pointer:
        return ['--data', corpus, '--save', model, '--window', '5', '--bptt', '20', '--cpu',
                '--log', str(tmp_path / 'p.jsonl')]
    return ['--data', corpus, '--save', model, '--cpu', '--max-batches', '2']


@pytest.mark.parametrize('which', ['main', 'finetune', 'renamed'])
@pytest.mark.parametrize('script', [pointer, generate, dynamiceval], ids=lambda s: s.__name__)
def test_evaluation_scripts_refuse_a_resume_state_and_name_the_checkpoint(trained, tmp_path, monkeypatch,
                                                                          script, which):
    corpus, save, tuned_state = trained
    state, best = {'main': (checkpoint.state_path(save), save),
                   'finetune': (tuned_state, tuned_state[:-len('.finetune.state')])}.get(which, (None, save))
    if which == 'renamed':  # a state copied under another name: its run's --save is named
        state = str(tmp_path / 'weights.pt')
        shutil.copy(checkpoint.state_path(save), state)
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    with pytest.raises(errors.UserError, match='a resume state of ') as refused:
        script.main(evaluation_argv(script, corpus, state, tmp_path))
    assert str(refused.value).startswith(f'{state}: ') and str(refused.value).endswith(f'use the checkpoint {best}')


def test_a_checkpoint_that_does_not_fit_its_model_names_the_tensors(trained, tmp_path):
    """Weights missing, unexpected or of another shape are named, not cut off in torch's message."""
    _, save, _ = trained
    raw = checkpoint.read_checkpoint(save)
    weights = dict(raw['model'])
    weights.pop('decoder.bias')
    weights['projection.weight'] = torch.zeros(2, 2)
    weights['encoder.weight'] = weights['encoder.weight'][:-1]
    bad = hand_made({**raw, 'model': weights}, str(tmp_path / 'bad.pt'), digest=True)
    with pytest.raises(errors.UserError) as caught:
        checkpoint.load_checkpoint(bad)
    assert str(caught.value) == (
        f'{bad}: weights do not fit the stored model configuration (model tensors missing: decoder.bias; '
        f'model tensors unexpected: projection.weight; model tensors of another shape: encoder.weight '
        f'{tuple(weights["encoder.weight"].shape)} for {tuple(raw["model"]["encoder.weight"].shape)})')
