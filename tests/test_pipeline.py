"""main.py -> finetune.py -> pointer.py -> generate.py on a tiny corpus, each script's main() in-process."""
import argparse
import os
import subprocess
import sys

import pytest

import harness
from harness import checkpoint
from harness import cli
from harness import run_log
import finetune
import generate
import main as train_script
import pointer
import training

from conftest import REPO, TINY, read_jsonl, write_corpus


@pytest.mark.slow
@pytest.mark.parametrize('rnn_type', ['LSTM', 'GRU', 'QRNN'])
def test_pipeline_end_to_end(tmp_path, capsys, rnn_type):
    corpus = write_corpus(str(tmp_path / 'corpus'), (150, 40, 40))
    save = str(tmp_path / 'model.pt')
    common = ['--data', corpus, '--save', save]
    assert train_script.main([*common, '--epochs', '2', '--model', rnn_type, *TINY]) == 0
    assert checkpoint.load_checkpoint(save)['model'].rnn_type == rnn_type
    main_records = read_jsonl(run_log.json_log_path(save))
    assert main_records[-1]['final']

    assert finetune.main([*common, '--epochs', '2', *TINY]) == 0
    ft_records = read_jsonl(harness.finetune_log_path(save))
    assert [r.get('epoch') for r in ft_records] == [0, 1, 2, None] and ft_records[-1]['final']
    assert os.path.isfile(save + '.finetune.state') and os.path.isfile(save + '.state')
    # The file holds the best model seen: evaluated afresh on valid it gives the lowest of the losses
    # logged (epoch 0 is the model fine-tuning started from).
    ckpt = checkpoint.load_checkpoint(save)
    _, _, val_data, _ = cli.load_data(argparse.Namespace(data=corpus), (4, 10, 1), 'cpu')
    val_loss = training.evaluate(ckpt['model'], ckpt['criterion'], val_data, 10, 10)
    assert val_loss == pytest.approx(min(r['valid_loss'] for r in ft_records[:-1]), rel=1e-6)

    assert pointer.main([*common, '--window', '30', '--bptt', '100', '--cpu']) == 0
    assert read_jsonl(pointer.default_log_path(save))[-1]['valid_loss'] > 0

    out = str(tmp_path / 'generated.txt')
    assert generate.main(['--data', corpus, '--checkpoint', save, '--outf', out, '--words', '50', '--cpu']) == 0
    assert os.path.getsize(out) > 0
    assert '| End of pointer | test loss' in capsys.readouterr().out


@pytest.mark.slow
def test_error_is_one_line_with_status_2(tmp_path):
    result = subprocess.run([sys.executable, 'finetune.py', '--save', str(tmp_path / 'missing.pt'), '--epochs', '1'],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert 'missing.pt: checkpoint not found' in result.stderr
