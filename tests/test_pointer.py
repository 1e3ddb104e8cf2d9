import math

import pytest
import torch

import errors
import pointer
from model import RNNModel
from conftest import read_jsonl
from pipeline_helpers import other_corpus, train_tiny
from splitcross import SplitCrossEntropyLoss


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp('pointer')))


def random_model(ntokens=50, seed=0, splits=()):
    torch.manual_seed(seed)
    model = RNNModel('LSTM', ntokens, 16, 24, 2, tie_weights=True)
    return model, SplitCrossEntropyLoss(16, splits=list(splits))


@pytest.mark.parametrize('bptt, window, cache_from_start', [
    (1000, 30, False),  # one chunk
    (37, 30, False),    # chunk boundaries, window shorter than a chunk
    (13, 50, False),    # window longer than a chunk
    (13, 50, True),
    (37, 300, False),   # window longer than the data: never cached
    (37, 1, True),
])
def test_matches_per_token_reference(bptt, window, cache_from_start):
    model, criterion = random_model()
    source = torch.randint(50, (301, 1), generator=torch.Generator().manual_seed(1))
    settings = dict(bptt=bptt, window=window, theta=0.9, lambdasm=0.3, cache_from_start=cache_from_start)
    fast, vocab_only = pointer.pointer_loss(model, criterion, source, **settings)
    slow = pointer.pointer_loss_reference(model, criterion, source, **settings)
    assert abs(fast - slow) / slow < 1e-5
    if window >= 300 and not cache_from_start:
        assert fast == pytest.approx(vocab_only, rel=1e-6)


def test_small_blocks_and_split_softmax_give_the_same_loss():
    model, criterion = random_model(splits=[20, 35])
    source = torch.randint(50, (200, 1), generator=torch.Generator().manual_seed(2))
    settings = dict(bptt=29, window=40, theta=1.3, lambdasm=0.2)
    reference = pointer.pointer_loss_reference(model, criterion, source, **settings)
    for budget in (1, 100, 2 ** 23):
        fast, _ = pointer.pointer_loss(model, criterion, source, block_budget=budget, **settings)
        assert abs(fast - reference) / reference < 1e-5


def test_cached_positions_rule():
    """The original's bookkeeping (start = entries kept before the chunk, cache iff start + idx > window)
    amounts to: t > window and t not the first position of a chunk."""
    for bptt, window, n in ((7, 3, 60), (7, 10, 60), (5, 5, 40), (100, 20, 90)):
        history, cached = 0, []
        for i in range(0, n, bptt):
            length = min(bptt, n - i)
            cached += [history + idx > window for idx in range(length)]
            history = min(history + length, window)
        assert cached == [t > window and t % bptt != 0 for t in range(n)]


def test_cache_helps_on_repeated_text():
    model, criterion = random_model()
    source = torch.randint(50, (40,), generator=torch.Generator().manual_seed(3)).repeat(8).view(-1, 1)
    with_cache, without = pointer.pointer_loss(model, criterion, source, bptt=100, window=60, theta=1.0,
                                               lambdasm=0.5)
    no_lambda, _ = pointer.pointer_loss(model, criterion, source, bptt=100, window=60, theta=1.0, lambdasm=0.)
    assert no_lambda == pytest.approx(without, rel=1e-6)
    assert math.exp(with_cache) < 0.9 * math.exp(without)


def test_script_reports_valid_and_test(trained, capsys):
    corpus, save = trained
    flags = ['--data', corpus, '--save', save, '--window', '20', '--bptt', '50', '--cpu', '--model', 'LSTM']
    assert pointer.main(flags) == 0
    out = capsys.readouterr().out
    assert '| End of pointer | valid loss' in out and '| End of pointer | test loss' in out
    record = read_jsonl(pointer.default_log_path(save))[-1]
    assert record['window'] == 20 and record['test_ppl'] == pytest.approx(math.exp(record['test_loss']))


def test_bad_inputs(trained, tmp_path):
    corpus, save = trained
    with pytest.raises(errors.UserError, match='--window'):
        pointer.main(['--data', corpus, '--save', save, '--window', '0'])
    with pytest.raises(errors.UserError, match='no checkpoint given'):
        pointer.main(['--data', corpus])
    with pytest.raises(errors.UserError, match='does not match'):
        pointer.main(['--data', other_corpus(str(tmp_path / 'other')), '--save', save, '--cpu'])
    with pytest.raises(errors.UserError, match='--lambdasm'):
        pointer.main(['--data', corpus, '--save', save, '--lambdasm', '1.5'])


@pytest.mark.slow
def test_the_log_can_go_down_a_pipe(trained):
    # `pointer.py --log /dev/stdout | cat`: the record is written there.
    import json
    import subprocess
    import sys
    from conftest import REPO
    corpus, save = trained
    done = subprocess.run([sys.executable, 'pointer.py', '--data', corpus, '--save', save, '--log', '/dev/stdout',
                           '--cpu', '--bptt', '10', '--window', '20'], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
    assert len(records) == 1 and records[0]['checkpoint'] == save


def test_a_binary_file_as_the_log_is_refused_before_any_work(trained, tmp_path, monkeypatch):
    corpus, save = trained
    other = tmp_path / 'other.pt'
    other.write_bytes(open(save, 'rb').read())
    before = other.read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError('the log should have been refused before the evaluation')
    monkeypatch.setattr(pointer, 'pointer_loss', must_not_run)
    with pytest.raises(errors.UserError, match=r'other\.pt: not a log but a binary file'):
        pointer.main(['--data', corpus, '--save', save, '--log', str(other), '--cpu'])
    assert other.read_bytes() == before


def test_a_2017_model_is_reported_without_bpc(tmp_path, capsys):
    # The first release printed loss and perplexity only.
    import main as train_script
    from conftest import TINY, write_corpus
    corpus = write_corpus(str(tmp_path / 'c'), (150, 40, 40))
    save = str(tmp_path / 'r17.pt')
    assert train_script.main(['--data', corpus, '--save', save, '--epochs', '1', '--release', '2017', *TINY]) == 0
    capsys.readouterr()
    assert pointer.main(['--data', corpus, '--save', save, '--cpu', '--bptt', '10', '--window', '20']) == 0
    out = capsys.readouterr().out
    assert '| End of pointer | valid loss' in out and 'bpc' not in out


def test_an_mos_models_cache_is_keyed_on_its_last_layer():
    # AWD-LSTM-MoS returns the mixture's rows (latent vectors and prior logits) for its criterion; the
    # cache attends over the last layer's output (nhidlast units), as for the AWD-LSTM.
    from mos import MixtureOfSoftmaxesLoss
    torch.manual_seed(0)
    model = RNNModel('LSTM', 50, 8, 12, 2, tie_weights=True, n_experts=3, nhidlast=10)
    criterion = MixtureOfSoftmaxesLoss(8, 3)
    source = torch.randint(50, (120, 1), generator=torch.Generator().manual_seed(3))
    (targets, output, h), *_ = pointer.chunks(model, source, 40)
    assert output.shape == (40, 3 * (8 + 1)) and h.shape == (40, 10)
    settings = dict(bptt=40, window=30, theta=0.9, lambdasm=0.3)
    fast, vocab_only = pointer.pointer_loss(model, criterion, source, **settings)
    assert fast == pytest.approx(pointer.pointer_loss_reference(model, criterion, source, **settings), rel=1e-5)
    assert fast != vocab_only
