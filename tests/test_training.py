"""training.py. The training step and the sequence-length stream against their definitions
(the original main.py's step; docs/PARITY.md), each computed here from plain torch and numpy calls, not from
training.train_step; then NT-ASGD's switch rule and averaged weights."""
import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F

from harness import cli
import finetune
import training
from conftest import TINY, write_corpus
from model import RNNModel
from pipeline_helpers import train_tiny
from splitcross import SplitCrossEntropyLoss

NTOKENS, EMSIZE, NHID, SEQ_LEN, BATCH = 30, 6, 8, 9, 3


def make(splits=()):
    torch.manual_seed(0)
    model = RNNModel('LSTM', NTOKENS, EMSIZE, NHID, 3, dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1,
                     wdrop=0.4, tie_weights=True)
    criterion = SplitCrossEntropyLoss(EMSIZE, splits=list(splits))
    with torch.no_grad():  # tombstones away from zero, so that their gradients are not special
        for p in criterion.parameters():
            p.normal_()
    data = torch.randint(NTOKENS, (SEQ_LEN, BATCH), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(NTOKENS, (SEQ_LEN * BATCH,), generator=torch.Generator().manual_seed(2))
    return model, criterion, data, targets


def spec_loss(model, criterion, data, targets, alpha, beta):
    """cross-entropy + alpha * mean(dropped last-layer output^2) + beta * mean((raw_{t+1} - raw_t)^2)."""
    model.train()
    output, _, raw_outputs, dropped_outputs = model(data, model.init_hidden(BATCH), return_h=True)
    logits = F.linear(output, model.decoder.weight, model.decoder.bias)
    if criterion.nsplits == 1:
        cross_entropy = F.cross_entropy(logits, targets)
    else:
        logprob = criterion.logprob(model.decoder.weight, model.decoder.bias, output)
        cross_entropy = -logprob[torch.arange(len(targets)), targets].mean()
    ar = dropped_outputs[-1].pow(2).mean()
    tar = (raw_outputs[-1][1:] - raw_outputs[-1][:-1]).pow(2).mean()
    return cross_entropy, cross_entropy + alpha * ar + beta * tar


def run_train_step(model, criterion, data, targets, lr, alpha=2.0, beta=1.0, bptt=12, clip=0):
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)
    torch.manual_seed(5)  # the dropout masks
    raw_loss, _ = training.train_step(model, criterion, optimizer, params, data, targets,
                                      model.init_hidden(BATCH), SEQ_LEN, bptt, clip, dict(alpha=alpha, beta=beta))
    return raw_loss, optimizer


def spec_gradients(model, criterion, data, targets, alpha=2.0, beta=1.0):
    params = list(model.parameters()) + list(criterion.parameters())
    torch.manual_seed(5)  # the same dropout masks as run_train_step's
    cross_entropy, loss = spec_loss(model, criterion, data, targets, alpha, beta)
    return params, cross_entropy, torch.autograd.grad(loss, params)


def test_loss_is_cross_entropy_plus_ar_on_dropped_and_tar_on_raw_output_and_lr_scales_with_seq_len():
    model, criterion, data, targets = make()
    reference = copy.deepcopy(model)
    params, cross_entropy, grads = spec_gradients(reference, criterion, data, targets)
    before = [p.detach().clone() for p in params]
    lr, bptt = 0.5, 12
    raw_loss, optimizer = run_train_step(model, criterion, data, targets, lr, bptt=bptt)

    assert torch.allclose(raw_loss, cross_entropy.detach(), rtol=1e-6, atol=0)  # logged: the raw loss
    step_lr = lr * SEQ_LEN / bptt  # section 4.1: short sequences do not get the weight of long ones
    after = list(model.parameters()) + list(criterion.parameters())
    for p0, g, p1 in zip(before, grads, after):
        torch.testing.assert_close(p1.detach(), p0 - step_lr * g, rtol=1e-5, atol=1e-7)
    assert optimizer.param_groups[0]['lr'] == lr  # restored after the step


def test_alpha_and_beta_weigh_their_terms():
    model, criterion, data, targets = make()
    params, _, grads = spec_gradients(copy.deepcopy(model), criterion, data, targets, alpha=0.0, beta=3.0)
    before = [p.detach().clone() for p in params]
    run_train_step(model, criterion, data, targets, 1.0, alpha=0.0, beta=3.0, bptt=SEQ_LEN)
    for p0, g, p1 in zip(before, grads, list(model.parameters()) + list(criterion.parameters())):
        torch.testing.assert_close(p1.detach(), p0 - g, rtol=1e-5, atol=1e-7)


def test_clipping_covers_the_model_and_the_criterion():
    # A split softmax has parameters of its own (the tombstones): the clipped norm includes them.
    model, criterion, data, targets = make(splits=[10])
    params, _, grads = spec_gradients(copy.deepcopy(model), criterion, data, targets)
    before = [p.detach().clone() for p in params]
    clip = 0.05
    total_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    criterion_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads[-2:]))
    assert total_norm > clip and criterion_norm > 0.01 * total_norm  # both matter in this case
    run_train_step(model, criterion, data, targets, 1.0, clip=clip, bptt=SEQ_LEN)
    scale = clip / (total_norm + 1e-6)
    for p0, g, p1 in zip(before, grads, list(model.parameters()) + list(criterion.parameters())):
        torch.testing.assert_close(p1.detach(), p0 - scale * g, rtol=1e-4, atol=1e-7)


def original_seq_lens(seed, bptt, n, cap=None):
    """The original's own calls, on numpy's global generator as it used it."""
    np.random.seed(seed)
    lens = []
    for _ in range(n):
        base = bptt if np.random.random() < 0.95 else bptt / 2.
        seq_len = max(5, int(np.random.normal(base, 5)))
        lens.append(seq_len if cap is None else min(seq_len, cap))
    return lens


def test_sequence_length_stream_is_the_originals_for_2000_draws():
    rng = cli.set_seed(141)
    assert [training.sample_seq_len(rng, 70) for _ in range(2000)] == original_seq_lens(141, 70, 2000)
    rng = np.random.RandomState(331)
    assert [training.sample_seq_len(rng, 70, cap=80) for _ in range(2000)] == original_seq_lens(331, 70, 2000, cap=80)


def record_seq_lens(monkeypatch):
    seen = []
    real = training.train_step

    def recording(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs['seq_len'])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, 'train_step', recording)
    return seen


def expected_walk(stream_len, lens):
    """The lengths the original's epoch takes: i += seq_len while i < len(train_data) - 2."""
    walk, i = [], 0
    for seq_len in lens:
        if i >= stream_len - 2:
            break
        walk.append(seq_len)
        i += seq_len
    return walk


def test_main_epoch_walks_the_stream_with_the_originals_lengths(tmp_path, monkeypatch):
    import main
    corpus = write_corpus(str(tmp_path / 'corpus'), (150, 40, 40))
    seen = record_seq_lens(monkeypatch)
    assert main.main(['--data', corpus, '--save', str(tmp_path / 'm.pt'), '--epochs', '1', *TINY,
                      '--bptt', '12', '--seed', '77']) == 0
    train_len = len(cli.load_data(argparse.Namespace(data=corpus), (4, 10, 1), 'cpu', log=lambda *a: None)[1])
    assert seen == expected_walk(train_len, original_seq_lens(77, 12, 1000))


def test_finetune_draws_lengths_from_numpy_seeded_331_capped_at_bptt_plus_10(tmp_path, monkeypatch):
    corpus, save = train_tiny(str(tmp_path / 'trained'))
    train_len = len(cli.load_data(argparse.Namespace(data=corpus), (4, 10, 1), 'cpu', log=lambda *a: None)[1])
    expected = expected_walk(train_len, original_seq_lens(331, 10, 1000, cap=20))
    assert max(expected) == 20  # the cap is exercised
    for seed in ('1', '2'):  # --seed seeds torch only
        seen = record_seq_lens(monkeypatch)
        out = str(tmp_path / f'ft{seed}.pt')
        assert finetune.main(['--data', corpus, '--save', save, '--out', out, '--epochs', '1', *TINY,
                              '--seed', seed]) == 0
        assert seen == expected
        monkeypatch.undo()


def test_nonmono_rule():
    # Switch when the loss is worse than the best one seen more than `nonmono` evaluations ago.
    assert not training.nonmono_triggered([5, 4, 3], 3.5, nonmono=5)  # too little history
    history = [5.0, 4.0, 3.0, 3.1, 3.2, 3.3, 3.4]
    assert training.nonmono_triggered(history, 4.5, nonmono=5)  # worse than min(history[:2]) = 4.0
    assert not training.nonmono_triggered(history, 3.5, nonmono=5)  # worse than recent ones only
    assert training.nonmono_triggered([5.0, 4.0, 3.0], 3.01, nonmono=2) is False  # min([5]) = 5
    assert training.nonmono_triggered([5.0, 2.0, 3.0], 3.01, nonmono=1)  # min([5, 2]) = 2
    assert training.nonmono_triggered([2.0], 2.5, nonmono=0)  # 0: compare with the whole history


def test_sample_seq_len_distribution():
    rng = np.random.RandomState(0)
    lens = np.array([training.sample_seq_len(rng, 70) for _ in range(4000)])
    assert lens.min() >= 5
    # About 5% of sequences use bptt / 2 (binomial sd 0.0034 over 4000 draws: bounds at ~4 sd).
    halved = lens < 52
    assert 0.036 < halved.mean() < 0.064
    # The others are int(N(70, 5)): mean 69.5 (int() truncates), sd 5 (N(70, 10) would give 10).
    full = lens[~halved]
    assert 69.2 < full.mean() < 69.8 and 4.7 < full.std() < 5.3
    capped = [training.sample_seq_len(rng, 70, cap=80) for _ in range(2000)]
    assert max(capped) <= 80


def test_averaged_weights_swap_and_restore():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = training.make_optimizer('asgd', [p], lr=1.0, wdecay=0)
    for step in range(6):  # gradient -1: the iterates are 1, 2, ..., 6
        p.grad = -torch.ones(3)
        opt.step()
    # torch.optim.ASGD (like the 2017 one) averages the iterates from the second step on: mean(2..6) = 4.
    with training.averaged_weights(opt, [p]):
        assert torch.allclose(p, torch.full((3,), 4.0))
    assert torch.allclose(p, torch.full((3,), 6.0))


def logged_interval_lines(monkeypatch, losses, log_interval, release=2018):
    """train_epoch's log lines when the steps return `losses` in turn (the step itself stubbed)."""
    steps = iter(losses)

    def fake_step(model, criterion, optimizer, params, data, targets, hidden, seq_len, **settings):
        return torch.tensor(next(steps)), hidden
    monkeypatch.setattr(training, 'sample_seq_len', lambda rng, bptt, cap=None: 5)
    torch.manual_seed(0)
    model = RNNModel('LSTM', NTOKENS, EMSIZE, NHID, 2, tie_weights=True, release=release)
    criterion = SplitCrossEntropyLoss(EMSIZE, splits=[])
    params = list(model.parameters())
    train_data = torch.zeros(5 * len(losses) + 1, BATCH, dtype=torch.long)  # exactly len(losses) steps of 5
    lines = []
    training.train_epoch(model, criterion, torch.optim.SGD(params, lr=2.5), params, train_data, np.random.RandomState(0),
                         1, bptt=5, clip=0, penalties={}, log_interval=log_interval, log=lines.append, step=fake_step)
    return lines


def test_interval_lines_are_the_originals(monkeypatch):
    # The original counts batches from 0 and prints after batch k * log_interval, k >= 1, having added that
    # batch's loss: the first line sums batches 0..3 (four losses), the next 4..6, each divided by 3.
    losses = [1., 2., 4., 8., 16., 32., 64., 128.]
    lines = logged_interval_lines(monkeypatch, losses, log_interval=3)
    assert len(lines) == 2
    assert lines[0].startswith('| epoch   1 |     3/    8 batches | lr 2.50000 | ms/batch ')
    assert lines[0].endswith(f'| loss {15 / 3:5.2f} | ppl {np.exp(5.0):8.2f} | bpc {5.0 / np.log(2):8.3f}')
    assert lines[1].startswith('| epoch   1 |     6/    8 batches |')
    assert f'| loss {112 / 3:5.2f} |' in lines[1]


def test_first_release_interval_lines_have_its_format(monkeypatch):
    lines = logged_interval_lines(monkeypatch, [0.5] * 5, log_interval=2, release=2017)
    assert len(lines) == 2
    assert lines[0].startswith('| epoch   1 |     2/    5 batches | lr 2.50 | ms/batch ')
    assert lines[0].endswith(f'| loss {1.5 / 2:5.2f} | ppl {np.exp(0.75):8.2f}')


def test_a_grouped_step_weights_each_group_by_its_real_width_so_it_is_the_whole_batch_step():
    """Without dropout, the step over column groups is the whole-batch step: each group's loss weighted by
    its share of the columns. With 6 columns (a torchrun rank's half of 12) and groups of 4, the last group
    is 2 columns wide: weighting it 4/6 (as by --small_batch_size) would scale the step by 8/6."""
    torch.manual_seed(0)
    model = RNNModel('LSTM', NTOKENS, EMSIZE, NHID, 2, dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0,
                     tie_weights=True)
    criterion = SplitCrossEntropyLoss(EMSIZE, splits=[])
    data = torch.randint(NTOKENS, (SEQ_LEN, 6), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(NTOKENS, (SEQ_LEN * 6,), generator=torch.Generator().manual_seed(2))
    results = []
    for group in (None, 4, 6, 3):
        m, c = copy.deepcopy(model), copy.deepcopy(criterion)
        params = list(m.parameters()) + list(c.parameters())
        optimizer = torch.optim.SGD(params, lr=1.0)
        raw_loss, hidden = training.train_step(m, c, optimizer, params, data, targets, m.init_hidden(6), SEQ_LEN,
                                               SEQ_LEN, 0, dict(alpha=2.0, beta=1.0), group=group)
        results.append((float(raw_loss.sum()), [p.detach().clone() for p in params], hidden))
    whole_loss, whole_params, whole_hidden = results[0]
    for loss, params, hidden in results[1:]:
        assert abs(loss - whole_loss) < 1e-5
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, whole_params))
        assert all(torch.allclose(a, b, atol=1e-6) for h, w in zip(hidden, whole_hidden) for a, b in zip(h, w))
