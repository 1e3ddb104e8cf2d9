"""cli.py: the flag checks (the rest of the plumbing, signals, locks and logs, is exercised through
the scripts in test_run_files.py, test_run_log.py, test_interrupts.py and test_main.py)."""
import pytest

import errors


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
        main.parse_args(flags)


def test_when_beyond_epochs_is_legal():
    import main
    assert main.parse_args(['--when', '300', '400', '--epochs', '1']).when == [300, 400]
