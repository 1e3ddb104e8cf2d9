import os
import shutil

import pytest
import torch

import harness

from harness import checkpoint
from harness import interrupts
import errors
import finetune
import training
from conftest import TINY
from conftest import read_jsonl
from pipeline_helpers import other_corpus, train_tiny


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('finetune')))


def run(corpus, save, *flags):
    return finetune.main(['--data', corpus, '--save', save, *TINY, *flags])


def epoch_losses(out):
    log = harness.finetune_log_path(out)
    return [(r['epoch'], r['valid_loss']) for r in read_jsonl(log) if 'epoch' in r]


@pytest.mark.slow
def test_resume_continues_exactly(trained, tmp_path):
    corpus, save = trained
    straight, resumed = str(tmp_path / 'straight.pt'), str(tmp_path / 'resumed.pt')
    assert run(corpus, save, '--epochs', '4', '--out', straight) == 0
    assert run(corpus, save, '--epochs', '2', '--out', resumed) == 0
    assert run(corpus, save, '--epochs', '4', '--out', resumed, '--resume') == 0

    assert [e for e, _ in epoch_losses(straight)] == [0, 1, 2, 3, 4]
    assert epoch_losses(resumed) == epoch_losses(straight)  # exactly equal floats
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    final = [r for r in read_jsonl(harness.finetune_log_path(straight)) if r.get('final')]
    assert len(final) == 1 and final[0]['test_loss'] > 0
    assert os.path.isfile(harness.finetune_state_path(straight))
    assert not os.path.exists(save + '.finetune.state')  # main's checkpoint and state are untouched


def test_overwrites_save_by_default_with_the_better_averaged_model(trained, tmp_path, capsys):
    corpus, save = trained
    copy = str(tmp_path / 'copy.pt')
    shutil.copy(save, copy)
    before = torch.load(copy, weights_only=True)
    # A modest lr: one averaged epoch beats the 2-epoch model on valid (2.80 -> 2.58 here).
    assert run(corpus, copy, '--epochs', '1', '--lr', '5', '--tied') == 0
    out = capsys.readouterr().out
    assert 'Saving Averaged!' in out and '| End of training | test loss' in out
    records = read_jsonl(harness.finetune_log_path(copy))
    assert records[1]['valid_loss'] < records[0]['valid_loss']
    after = torch.load(copy, weights_only=True)
    assert after['optimizer_name'] == 'asgd' and after['args']['out'] == copy
    assert not all(torch.equal(before['model'][k], after['model'][k]) for k in before['model'])
    # What was saved is the average of the iterates (the optimizer's `ax`), not the last iterate.
    model = checkpoint.load_checkpoint(copy)['model']
    for index, (name, _) in enumerate(model.named_parameters()):
        assert torch.equal(after['model'][name], after['optimizer']['state'][index]['ax']), name


def test_keeps_save_untouched_when_fine_tuning_does_not_improve(trained, tmp_path, capsys):
    corpus, save = trained
    copy = str(tmp_path / 'copy.pt')
    shutil.copy(save, copy)
    with open(copy, 'rb') as f:
        before = f.read()
    # An lr far too high: the averaged model is worse on valid (2.80 -> 114 here), so nothing is saved.
    assert run(corpus, copy, '--epochs', '1', '--lr', '2000') == 0
    out = capsys.readouterr().out
    records = read_jsonl(harness.finetune_log_path(copy))
    assert records[1]['valid_loss'] > records[0]['valid_loss']
    assert 'Saving Averaged!' not in out
    with open(copy, 'rb') as f:
        assert f.read() == before
    # The test figure is the untouched model's.
    assert records[-1]['final'] and records[-1]['valid_loss'] == records[0]['valid_loss']


@pytest.mark.slow
def test_nonmono_stop_still_evaluates_test(trained, tmp_path, capsys):
    corpus, save = trained
    out = str(tmp_path / 'ft.pt')
    # --nonmono 1: stop once an epoch is worse than the best before the previous one (a high lr helps).
    assert run(corpus, save, '--epochs', '30', '--nonmono', '1', '--lr', '60', '--out', out) == 0
    text = capsys.readouterr().out
    assert 'Done!' in text and '| End of training | test loss' in text
    records = read_jsonl(harness.finetune_log_path(out))
    assert records[-1]['final'] and len(records) < 32
    # Resuming a finished run goes straight to test.
    assert run(corpus, save, '--epochs', '40', '--out', out, '--resume') == 0
    assert 'already stopped' in capsys.readouterr().out


def test_sigterm_keeps_last_completed_epoch(trained, tmp_path, monkeypatch):
    corpus, save = trained
    out = str(tmp_path / 'ft.pt')
    real_train_epoch = training.train_epoch

    def preempted_at_epoch_2(*args, **kwargs):
        if args[6] == 2:  # the epoch argument
            raise interrupts.Preempted()
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, 'train_epoch', preempted_at_epoch_2)
    assert run(corpus, save, '--epochs', '3', '--out', out) == 143
    state = torch.load(harness.finetune_state_path(out), weights_only=True)
    assert state['epoch'] == 1


def test_bad_inputs(trained, tmp_path):
    corpus, save = trained
    with pytest.raises(errors.UserError, match='checkpoint not found'):
        run(corpus, str(tmp_path / 'missing.pt'), '--epochs', '1')
    with pytest.raises(errors.UserError, match='does not match'):
        run(other_corpus(str(tmp_path / 'other')), save, '--epochs', '1', '--out', str(tmp_path / 'x.pt'))
    with pytest.raises(errors.UserError, match='no fine-tuning resume state'):
        run(corpus, save, '--epochs', '1', '--out', str(tmp_path / 'y.pt'), '--resume')


def test_finetune_keeps_the_checkpoints_dropouts_and_says_so(tmp_path, capsys):
    corpus, save = train_tiny(str(tmp_path / 'trained'))
    saved = checkpoint.read_checkpoint(save)['model_config']
    out = str(tmp_path / 'ft.pt')
    assert finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1', *TINY,
                          '--dropouth', '0.05', '--wdrop', str(saved['wdrop'])]) == 0
    text = capsys.readouterr().out
    assert f"--dropouth 0.05 ignored" in text and '--wdrop' not in text.split('Args:')[0]
    config = checkpoint.read_checkpoint(out)['model_config'] if os.path.exists(out) else None
    state = checkpoint.read_checkpoint(harness.finetune_state_path(out))
    for key in ('dropout', 'dropouth', 'dropouti', 'dropoute', 'wdrop'):
        assert state['model_config'][key] == saved[key], key
        assert state['args'][key] == saved[key], key
        if config is not None:
            assert config[key] == saved[key], key


def test_a_resume_state_given_as_the_model_to_fine_tune_is_refused_naming_the_checkpoint(trained, tmp_path):
    # main.py's <save>.state holds the raw weights of the last epoch, not the run's best model.
    corpus, save = trained
    state = shutil.copy(checkpoint.state_path(save), str(tmp_path / 'y.pt.state'))
    out = str(tmp_path / 'ft.pt')
    with pytest.raises(errors.UserError, match=r'y\.pt\.state: a resume state of main\.py .*use the checkpoint '
                                               r'.*y\.pt$'):
        run(corpus, state, '--out', out, '--epochs', '1')
    assert not os.path.exists(out)


def test_release_2017_is_accepted_and_the_checkpoints_release_kept(tmp_path, capsys):
    # The 2017 rows' commands carry --release 2017 (README); finetune.py takes the release from the checkpoint.
    corpus, save = train_tiny(str(tmp_path), epochs=1)
    capsys.readouterr()
    assert run(corpus, save, '--out', str(tmp_path / 'ft.pt'), '--epochs', '1', '--release', '2017') == 0
    assert 'note: --release 2017 ignored: the checkpoint holds a model with release 2018' in capsys.readouterr().out
    assert checkpoint.read_checkpoint(str(tmp_path / 'ft.pt'))['model_config']['release'] == 2018


def test_the_mixtures_flags_are_the_checkpoints_and_a_disagreeing_one_is_noted(tmp_path, capsys):
    """--n_experts, --nhidlast and --dropoutl describe the model (declared from_checkpoint, as --emsize is):
    fine-tuning an AWD-LSTM with --n_experts 3 fine-tunes the AWD-LSTM, and says that it ignored the flag."""
    corpus, save = train_tiny(str(tmp_path), epochs=1)
    capsys.readouterr()
    out = str(tmp_path / 'ft.pt')
    assert run(corpus, save, '--out', out, '--epochs', '1', '--n_experts', '3', '--dropoutl', '0.1') == 0
    text = capsys.readouterr().out
    assert 'note: --n_experts 3 ignored: the checkpoint holds a model with n_experts 1' in text
    assert 'note: --dropoutl 0.1 ignored' in text
    assert checkpoint.read_checkpoint(out)['model_config'].get('n_experts', 1) == 1
