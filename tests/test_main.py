import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import checkpoint
from harness import run_log
import errors
import main
import main as train_script
import harness
import training
from conftest import PUBLISHED_MAIN, REPO, TINY, read_jsonl, tiny_run, write_corpus
from reliability_helpers import epochs_of, train


def run_main(argv):
    return main.main(argv)


@pytest.mark.slow
@pytest.mark.parametrize('command', PUBLISHED_MAIN, ids=range(len(PUBLISHED_MAIN)))
def test_published_command_lines_run_with_tiny_overrides(tmp_path, tiny_corpus, command):
    save = str(tmp_path / 'model.pt')
    argv = shlex.split(command) + tiny_run(tiny_corpus, save)
    assert run_main(argv) == 0
    records = read_jsonl(run_log.json_log_path(save))
    assert records[0]['epoch'] == 1 and records[-1]['final']
    ckpt = checkpoint.load_checkpoint(save)
    expected_model = 'QRNN' if '--model QRNN' in command else 'LSTM'
    assert ckpt['model'].rnn_type == expected_model
    assert ckpt['args']['seed'] == harness.parse_args(main.build_parser(), shlex.split(command)).seed


def test_epoch_prefix_means_epochs():
    assert harness.parse_args(main.build_parser(), ['--epoch', '300']).epochs == 300


@pytest.mark.slow
def test_short_ptb_slice_lowers_valid_perplexity(tmp_path, ptb_mirror):
    # The first 3000 / 300 / 300 lines of PTB: a real corpus, small enough for the CPU.
    sliced = tmp_path / 'ptb'
    sliced.mkdir()
    for name, n in (('train', 3000), ('valid', 300), ('test', 300)):
        with open(os.path.join(ptb_mirror, name + '.txt')) as src:
            (sliced / (name + '.txt')).write_text(''.join(line for _, line in zip(range(n), src)))
    save = str(tmp_path / 'ptb.pt')
    argv = ['--data', str(sliced), '--epochs', '3', '--save', save, '--emsize', '32', '--nhid', '64',
            '--batch_size', '20', '--bptt', '35', '--log-interval', '50', '--cpu', '--seed', '141']
    assert run_main(argv) == 0
    ppl = [r['valid_ppl'] for r in read_jsonl(run_log.json_log_path(save)) if 'epoch' in r]
    assert ppl[-1] < ppl[0] < 1500, ppl


@pytest.mark.slow
def test_nt_asgd_switches_by_the_rule_and_saves_averaged_weights(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=8, extra=['--nonmono', '1', '--lr', '40'])) == 0
    records = [r for r in read_jsonl(run_log.json_log_path(save)) if 'epoch' in r]
    losses = [r['valid_loss'] for r in records]
    # Algorithm 1, written out: switch after the first epoch whose loss is worse than the best of the
    # epochs before the last `nonmono` (1) ones.
    switched_after = next(e for e in range(2, len(losses)) if losses[e] > min(losses[:e - 1])) + 1
    # The record of epoch e names the optimizer that trained it: SGD through the triggering epoch.
    assert [r['optimizer'] for r in records] == ['sgd'] * switched_after + ['asgd'] * (8 - switched_after)
    # This run's best model comes after the switch, so the checkpoint holds averaged weights: the
    # optimizer's `ax`, not the last iterate.
    assert min(losses[switched_after:]) < min(losses[:switched_after])
    ckpt = checkpoint.read_checkpoint(save)
    assert ckpt['optimizer_name'] == 'asgd'
    model = checkpoint.load_checkpoint(save)['model']
    for index, (name, _) in enumerate(model.named_parameters()):
        assert torch.equal(ckpt['model'][name], ckpt['optimizer']['state'][index]['ax']), name
    state = checkpoint.read_checkpoint(save + '.state')
    assert state['optimizer_name'] == 'asgd'


@pytest.mark.slow
def test_exact_resume_across_the_asgd_switch(tmp_path, tiny_corpus):
    flags = ['--nonmono', '1', '--lr', '40']
    straight, split = str(tmp_path / 'straight.pt'), str(tmp_path / 'split.pt')
    assert run_main(tiny_run(tiny_corpus, straight, epochs=6, extra=flags)) == 0
    assert run_main(tiny_run(tiny_corpus, split, epochs=3, extra=flags)) == 0
    assert run_main(tiny_run(tiny_corpus, split, epochs=6, extra=flags + ['--resume', split])) == 0
    a = [r for r in read_jsonl(run_log.json_log_path(straight)) if 'epoch' in r]
    b = [r for r in read_jsonl(run_log.json_log_path(split)) if 'epoch' in r]
    assert checkpoint.read_checkpoint(straight + '.state')['optimizer_name'] == 'asgd'  # the switch happened
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ('seconds', 'run', 'provenance')} for r in rs]
    assert strip(a) == strip(b)
    ca, cb = checkpoint.read_checkpoint(straight), checkpoint.read_checkpoint(split)
    assert ca['model'].keys() == cb['model'].keys()
    assert all(torch.equal(ca['model'][k], cb['model'][k]) for k in ca['model'])


def test_resume_from_a_checkpoint_alone_restarts_from_its_weights(tmp_path, tiny_corpus, capsys):
    save = str(tmp_path / 'm.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=1)) == 0
    os.remove(save + '.state')
    other = str(tmp_path / 'n.pt')
    assert run_main(tiny_run(tiny_corpus, other, epochs=1, extra=['--resume', save, '--dropouti', '0.2'])) == 0
    out = capsys.readouterr().out
    assert 'Restarting from the weights of' in out
    assert checkpoint.read_checkpoint(other)['model_config']['dropouti'] == 0.2


def test_ctrl_c_still_evaluates_the_best_model_on_test(tmp_path, tiny_corpus, monkeypatch, capsys):
    real = training.train_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(training, 'train_epoch', interrupted)
    assert run_main(tiny_run(tiny_corpus, str(tmp_path / 'm.pt'), epochs=5)) == 0
    out = capsys.readouterr().out
    assert 'Exiting from training early' in out and '| End of training | test loss' in out


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=1)) == 0
    before = open(save, 'rb').read()
    with pytest.raises(training.NonFiniteLoss, match=r'epoch 1, batch \d+'):
        run_main(tiny_run(tiny_corpus, save, epochs=2, extra=['--lr', '1e38', '--clip', '0']))
    assert open(save, 'rb').read() == before  # the last good checkpoint is kept


def bad_input_cases(tmp_path, tiny_corpus):
    small = write_corpus(str(tmp_path / 'small'), lines_per_split=(1, 1, 1))
    other = write_corpus(str(tmp_path / 'other'), seed=1)
    with open(os.path.join(other, 'train.txt'), 'a') as f:
        f.write('words the tiny corpus never saw\n')
    empty = write_corpus(str(tmp_path / 'empty'))
    open(os.path.join(empty, 'test.txt'), 'w').close()
    good = str(tmp_path / 'good.pt')
    run_main(tiny_run(tiny_corpus, good))
    os.remove(good + '.state')
    return {
        'data folder missing': (tiny_run(str(tmp_path / 'nope'), str(tmp_path / 'x.pt')), 'not found'),
        'split file empty': (tiny_run(empty, str(tmp_path / 'x.pt')), 'test.txt: file is empty'),
        'corpus too small': (tiny_run(small, str(tmp_path / 'x.pt')), 'too few'),
        'resume missing': (tiny_run(tiny_corpus, str(tmp_path / 'x.pt'), extra=['--resume', 'nope.pt']),
                           'not found'),
        'vocabulary mismatch': (tiny_run(other, str(tmp_path / 'x.pt'), extra=['--resume', good]),
                                'vocabulary'),
        'architecture mismatch': (tiny_run(tiny_corpus, str(tmp_path / 'x.pt'), extra=['--resume', good, '--nhid', '20']),
                                  'does not fit'),
    }


def test_bad_input_is_a_clear_error_and_overwrites_nothing(tmp_path, tiny_corpus):
    for name, (argv, match) in bad_input_cases(tmp_path, tiny_corpus).items():
        with pytest.raises(errors.UserError, match=match):
            run_main(argv)
        assert not os.path.exists(str(tmp_path / 'x.pt')), name


@pytest.mark.slow
def test_bad_input_exit_status_and_one_line(tmp_path):
    result = subprocess.run([sys.executable, 'main.py', '--data', str(tmp_path / 'missing'), '--cpu',
                             '--save', str(tmp_path / 'x.pt')], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and result.stderr.startswith('error: ')
    assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_sigterm_leaves_a_resume_state_and_exits_non_zero(tmp_path, tiny_corpus):
    save = str(tmp_path / 'm.pt')
    proc = subprocess.Popen([sys.executable, 'main.py', *tiny_run(tiny_corpus, save, epochs=10000)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(save + '.state') and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert 'rerun with --resume' in out
    state = checkpoint.read_checkpoint(save + '.state')
    assert state['epoch'] >= 1
    # ... and the run continues from it.
    assert run_main(tiny_run(tiny_corpus, save, epochs=state['epoch'] + 1, extra=['--resume', save])) == 0


# ---------------------------------------------------------------------------------------------
# --resume without --save

@pytest.mark.parametrize('with_state', [True, False])
def test_resume_alone_continues_the_run_it_names(tmp_path, small_corpus, monkeypatch, with_state):
    monkeypatch.chdir(tmp_path)
    save = str(tmp_path / 'part.pt')
    assert train(small_corpus, save) == 0
    if not with_state:
        os.remove(checkpoint.state_path(save))
    files = set(os.listdir(tmp_path))
    assert train_script.main([*TINY, '--data', small_corpus, '--epochs', '2', '--resume', save]) == 0
    assert set(os.listdir(tmp_path)) - files <= {'part.pt.state'}  # no timestamp-named run beside it
    assert checkpoint.read_checkpoint(checkpoint.state_path(save))['epoch'] == 2
    assert epochs_of(save) == ([1, 2] if with_state else [1, 1, 2])


def _rewritten_state(path, change):
    """The resume state at `path` rewritten by hand with `change` applied to its raw dict (digest renewed)."""
    from reliability_helpers import hand_made
    raw = torch.load(path, map_location='cpu', weights_only=True)
    change(raw)
    hand_made(raw, path, digest=True)


@pytest.mark.slow
def test_restarting_from_a_2017_checkpoint_alone_keeps_its_release(tmp_path, tiny_corpus, capsys):
    save = str(tmp_path / 'r17.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=1, extra=['--release', '2017'])) == 0
    weights = str(tmp_path / 'r17c.pt')
    os.rename(save, weights)  # no state beside it
    capsys.readouterr()
    new = str(tmp_path / 'new.pt')
    assert run_main(tiny_run(tiny_corpus, new, epochs=1, extra=['--resume', weights])) == 0
    out = capsys.readouterr().out
    assert 'note: restarting as release 2017, the release of the model in' in out
    assert 'valid bpc' not in out  # the first release printed no bpc
    saved = checkpoint.read_checkpoint(new)
    assert saved['model_config']['release'] == 2017 and saved['args']['release'] == 2017
    # A disagreeing flag given on the command line is named.
    assert run_main(tiny_run(tiny_corpus, str(tmp_path / 'n2.pt'), epochs=1,
                             extra=['--resume', weights, '--release', '2018'])) == 0
    assert '(--release 2018 ignored)' in capsys.readouterr().out
    assert checkpoint.read_checkpoint(str(tmp_path / 'n2.pt'))['args']['release'] == 2017


def test_an_exact_resume_of_a_state_from_before_release_goes_on_as_2018(tmp_path, tiny_corpus, capsys):
    save = str(tmp_path / 'old.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=1)) == 0

    def before_release(raw):
        del raw['args']['release'], raw['model_config']['release']
    _rewritten_state(checkpoint.state_path(save), before_release)
    capsys.readouterr()
    assert run_main(tiny_run(tiny_corpus, save, epochs=2, extra=['--resume', save, '--release', '2017'])) == 0
    out = capsys.readouterr().out
    assert 'Resuming exactly' in out and 'ignored flags: release' in out
    assert '| end of epoch   2 |' in out and 'valid bpc' in out  # 2018 style
    state = checkpoint.read_checkpoint(checkpoint.state_path(save))
    assert state['args']['release'] == 2018 and state['model_config']['release'] == 2018


def test_continuing_into_new_files_without_improvement_tests_the_runs_best_model(tmp_path, tiny_corpus, capsys):
    save = str(tmp_path / 'a.pt')
    assert run_main(tiny_run(tiny_corpus, save, epochs=1)) == 0
    run = checkpoint.read_checkpoint(save)['run']
    _rewritten_state(checkpoint.state_path(save), lambda raw: raw.update(best_val_loss=0.0))  # nothing beats it
    capsys.readouterr()
    new = str(tmp_path / 'y.pt')
    assert run_main(tiny_run(tiny_corpus, new, epochs=2, extra=['--resume', checkpoint.state_path(save)])) == 0
    out = capsys.readouterr().out
    assert f'testing it where the run saved it, {save}' in out and '| End of training | test loss' in out
    assert not os.path.exists(new)
    final = [r for r in read_jsonl(run_log.json_log_path(new)) if r.get('final')]
    assert len(final) == 1 and final[0]['run'] == run
