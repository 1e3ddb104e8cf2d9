"""Flag values refused before any work (values that train uphill or crash, values beyond float32, seeds,
pointer's --lambdasm, finetune.py --resume without its run), flag values whose result is not usable
(refused, never reported), and the note a resume prints of the flags it ignores."""
import os

import pytest

import dynamiceval
import finetune
import generate
import main as train_script
import harness
from harness import checkpoint
from harness import cli
import errors
import pointer
import training
from conftest import TINY, tiny_run, patch_everywhere
from reliability_helpers import must_not_run, train


# ---------------------------------------------------------------------------------------------
# Flag values refused before any work

@pytest.mark.parametrize('flags,match', [
    (['--clip', '-1'], '--clip'), (['--wdecay', '-1'], '--wdecay'), (['--wdecay', 'nan'], '--wdecay'),
    (['--seed', '-1'], '--seed'), (['--seed', str(2 ** 32)], '--seed'), (['--lr', 'inf'], '--lr'),
])
def test_flags_that_would_train_uphill_or_crash_are_refused(tmp_path, small_corpus, monkeypatch, flags, match):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=match):
        train(small_corpus, str(tmp_path / 'm.pt'), extra=flags)


@pytest.mark.parametrize('flags,match', [
    (['--lr', '1e39'], '--lr'), (['--wdecay', '1e39'], '--wdecay'),
    (['--lr', '1e300', '--optimizer', 'adam'], '--lr'),
    (['--lr', '1e38', '--optimizer', 'adam'], '--lr with --optimizer adam'),  # its first step is 10 x lr
])
def test_values_beyond_float32_are_refused_before_the_optimizer_sees_them(tmp_path, small_corpus, monkeypatch,
                                                                          flags, match):
    monkeypatch.setattr(training, 'train_epoch', must_not_run)
    with pytest.raises(errors.UserError, match=match):
        train(small_corpus, str(tmp_path / 'm.pt'), extra=flags)
    if '--optimizer' not in flags:  # fine-tuning takes the same flags, but always uses ASGD
        with pytest.raises(errors.UserError, match=match):
            finetune.main(tiny_run(small_corpus, str(tmp_path / 'm.pt'), extra=flags))


def test_dynamiceval_refuses_an_lr_beyond_float32(trained):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='--lr must be >= 0 and finite in float32'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--lr', '1e39', '--max-batches', '2'])
    with pytest.raises(errors.UserError, match='--lr'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--sgd', '--lr', '1e39', '--max-batches', '2'])


@pytest.mark.parametrize('script', [generate, dynamiceval], ids=lambda s: s.__name__)
def test_scripts_refuse_an_impossible_seed(trained, tmp_path, script):
    corpus, save, _ = trained
    argv = (['--checkpoint', save, '--outf', str(tmp_path / 'g.txt')] if script is generate else ['--save', save])
    with pytest.raises(errors.UserError, match='--seed'):
        script.main(['--data', corpus, *argv, '--seed', '-1', '--cpu'])


def test_pointer_refuses_lambdasm_1_naming_the_real_cause(trained, monkeypatch):
    corpus, save, _ = trained
    patch_everywhere(monkeypatch, cli, 'load_data', must_not_run)
    with pytest.raises(errors.UserError) as refused:
        pointer.main(['--data', corpus, '--save', save, '--window', '5', '--bptt', '20', '--cpu',
                      '--lambdasm', '1', '--log', os.devnull])
    message = str(refused.value)
    assert message.startswith('--lambdasm must be in [0, 1), got 1.0') and 'probability 0' in message
    assert '--theta' not in message


def test_finetune_resume_needs_to_know_which_run(trained):
    corpus, _, _ = trained
    with pytest.raises(errors.UserError, match='--resume'):
        finetune.main(['--data', corpus, '--resume', '--epochs', '1', *TINY])


# ---------------------------------------------------------------------------------------------
# Flag values whose result is not usable: refused, not reported

def test_pointer_refuses_to_report_a_non_finite_loss(trained):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='not finite'):
        pointer.main(['--data', corpus, '--save', save, '--window', '5', '--bptt', '20', '--cpu',
                      '--theta', '1e300', '--log', os.devnull])


@pytest.mark.parametrize('flags', [['--sgd', '--lr', '3e38'], ['--sgd', '--lr', '1e30'], ['--lr', '1e30']],
                         ids=lambda f: ' '.join(f))
def test_dynamiceval_refuses_to_report_a_diverged_result(trained, capsys, flags):
    corpus, save, _ = trained
    with pytest.raises(errors.UserError, match='not a usable result: the updates diverged with --lr'):
        dynamiceval.main(['--data', corpus, '--save', save, '--cpu', '--max-batches', '5', *flags])
    assert 'End of dynamic evaluation' not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The note of flags a resume ignores

@pytest.mark.slow
@pytest.mark.parametrize('script', ['main', 'finetune'])
def test_the_resume_note_names_only_flags_given_on_the_command_line(trained, tmp_path, capsys, script):
    corpus, save, _ = trained
    out = str(tmp_path / 'm.pt')
    # The run's own settings differ from the defaults: --lr 5 (default 30), --nonmono 3 (default 5).
    if script == 'main':
        first = lambda *extra: train(corpus, out, epochs=1, extra=['--lr', '5', '--nonmono', '3', *extra])
        resume = lambda *extra: train_script.main([*TINY, '--data', corpus, '--epochs', '2', '--resume', out, *extra])
    else:
        first = lambda: finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1',
                                       '--lr', '5', '--nonmono', '3', *TINY])
        resume = lambda *extra: finetune.main(['--data', corpus, '--out', out, '--resume', '--epochs', '2', *TINY,
                                               *extra])
    assert first() == 0
    capsys.readouterr()
    assert resume() == 0
    assert 'ignored flags' not in capsys.readouterr().out  # nothing given but what may change
    state = checkpoint.state_path(out) if script == 'main' else harness.finetune_state_path(out)
    # Given, and different from the run's: noted (an abbreviation counts); given with the run's value: not.
    assert resume('--lr', '7', '--nonmon', '4', '--clip', '0.25', '--resume', state, '--epochs', '3') == 0
    assert 'ignored flags: lr, nonmono\n' in capsys.readouterr().out


@pytest.mark.parametrize('flags,match', [
    (['--dropout', '1.0'], '--dropout'), (['--dropouti', '-0.1'], '--dropouti'), (['--wdrop', '1'], '--wdrop'),
    (['--nhid', '0'], '--nhid'), (['--emsize', '-3'], '--emsize'), (['--bptt', '0'], '--bptt'),
    (['--batch_size', '0'], '--batch_size'), (['--nlayers', '0'], '--nlayers'), (['--lr', '0'], '--lr'),
    (['--model', 'TRANSFORMER'], '--model'), (['--optimizer', 'rmsprop'], '--optimizer'),
    (['--when', '0'], '--when'), (['--when', '5', '-2'], '--when'), (['--epochs', '0'], '--epochs'),
])
def test_impossible_flags(flags, match):
    import main
    with pytest.raises(errors.UserError, match=match):
        harness.parse_args(main.build_parser(), flags)


def test_when_beyond_epochs_is_legal():
    import main
    assert harness.parse_args(main.build_parser(), ['--when', '300', '400', '--epochs', '1']).when == [300, 400]


@pytest.mark.parametrize('argv, message', [
    (['--n_experts', '0'], '--n_experts must be a positive integer'),
    (['--n_experts', '3', '--release', '2017'], 'cannot be used with --release 2017'),
    (['--n_experts', '3', '--model', 'GRU'], 'built on LSTMs only'),
    (['--batch_size', '12', '--small_batch_size', '5'], '--small_batch_size 5 must divide --batch_size 12'),
    (['--nhidlast', '20'], '--nhidlast needs --n_experts > 1'),
])
def test_mixture_of_softmaxes_bad_flags(argv, message):
    import main
    with pytest.raises(errors.UserError, match=message):
        harness.parse_args(main.build_parser(), argv)


def test_mixture_of_softmaxes_refuses_the_split_softmax():
    import main
    with pytest.raises(errors.UserError, match="needs the split softmax"):
        main.build_model(harness.parse_args(main.build_parser(), ['--n_experts', '3', '--emsize', '4', '--nhid', '4']), 80000)
