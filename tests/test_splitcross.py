import pytest
import torch
import torch.nn.functional as F

from splitcross import SplitCrossEntropyLoss, splits_for_vocab

NTOKENS, HIDDEN, SPLITS = 50, 8, [10, 30]


def make_inputs(seed=0, n=64, ntokens=NTOKENS, hidden=HIDDEN):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(ntokens, hidden, generator=g)
    bias = torch.randn(ntokens, generator=g)
    hiddens = torch.randn(n, hidden, generator=g)
    targets = torch.randint(0, ntokens, (n,), generator=g)
    # Make sure the head and every tail get targets.
    targets[:3] = torch.tensor([0, 15, 45])
    return weight, bias, hiddens, targets


def make_criterion(splits=SPLITS, seed=1):
    crit = SplitCrossEntropyLoss(HIDDEN, splits)
    if crit.nsplits > 1:
        # Non-zero tombstones, so the test does not hinge on the zero init.
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            crit.tail_vectors.copy_(torch.randn(crit.tail_vectors.shape, generator=g))
            crit.tail_bias.copy_(torch.randn(crit.tail_bias.shape, generator=g))
    return crit


def reference_loss(crit, weight, bias, hiddens, targets):
    logprob = crit.logprob(weight, bias, hiddens)
    return -logprob[torch.arange(targets.numel()), targets.reshape(-1)].mean()


@pytest.mark.parametrize("splits", [[], None])
def test_no_splits_is_full_softmax(splits):
    weight, bias, hiddens, targets = make_inputs()
    crit = SplitCrossEntropyLoss(HIDDEN, splits)
    assert crit.nsplits == 1 and not hasattr(crit, "tail_vectors")
    assert list(crit.state_dict()) == []
    logits = hiddens @ weight.T + bias
    loss = crit(weight, bias, hiddens, targets)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), atol=1e-6, rtol=0)
    torch.testing.assert_close(crit.logprob(weight, bias, hiddens), F.log_softmax(logits, -1), atol=1e-6, rtol=0)


def test_split_layout_and_parameters():
    crit = SplitCrossEntropyLoss(HIDDEN, SPLITS)
    assert crit.hidden_size == HIDDEN and crit.splits == SPLITS and crit.nsplits == 3
    assert crit.tail_vectors.shape == (2, HIDDEN) and crit.tail_bias.shape == (2,)
    assert torch.all(crit.tail_vectors == 0) and torch.all(crit.tail_bias == 0)
    assert sorted(crit.state_dict()) == ["tail_bias", "tail_vectors"]


def test_logprob_is_normalised():
    weight, bias, hiddens, _ = make_inputs()
    crit = make_criterion()
    logprob = crit.logprob(weight, bias, hiddens)
    assert logprob.shape == (hiddens.size(0), NTOKENS)
    torch.testing.assert_close(logprob.exp().sum(1), torch.ones(hiddens.size(0)), atol=1e-5, rtol=0)
    # Splitting really changes the model: it is not the plain softmax.
    assert not torch.allclose(logprob, F.log_softmax(hiddens @ weight.T + bias, -1), atol=1e-3)


def test_loss_matches_logprob():
    weight, bias, hiddens, targets = make_inputs()
    segments = torch.bucketize(targets, torch.tensor(SPLITS), right=True)
    assert set(segments.tolist()) == {0, 1, 2}
    crit = make_criterion()
    loss = crit(weight, bias, hiddens, targets)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, reference_loss(crit, weight, bias, hiddens, targets), atol=1e-6, rtol=1e-6)


def test_three_dim_hiddens():
    seq, batch = 6, 5
    weight, bias, hiddens, targets = make_inputs(n=seq * batch)
    crit = make_criterion()
    flat = crit(weight, bias, hiddens, targets)
    loss = crit(weight, bias, hiddens.view(seq, batch, HIDDEN), targets)
    torch.testing.assert_close(loss, flat, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, reference_loss(crit, weight, bias, hiddens, targets), atol=1e-6, rtol=1e-6)
    assert crit.logprob(weight, bias, hiddens.view(seq, batch, HIDDEN)).shape == (seq * batch, NTOKENS)


def test_gradients_match_reference():
    weight, bias, hiddens, targets = make_inputs()
    crit = make_criterion()
    inputs = [weight.requires_grad_(), bias.requires_grad_(), hiddens.requires_grad_(),
              crit.tail_vectors, crit.tail_bias]
    grads = torch.autograd.grad(crit(weight, bias, hiddens, targets), inputs)
    ref_grads = torch.autograd.grad(reference_loss(crit, weight, bias, hiddens, targets), inputs)
    for name, grad, ref in zip(["weight", "bias", "hiddens", "tail_vectors", "tail_bias"], grads, ref_grads):
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, ref, atol=1e-6, rtol=1e-5, msg=name)


def test_last_tail_runs_to_end_of_vocab():
    # The original appended a huge sentinel cut; passing one must not change the model.
    weight, bias, hiddens, targets = make_inputs()
    crit = make_criterion()
    crit_sentinel = SplitCrossEntropyLoss(HIDDEN, SPLITS + [100 * 1000000])
    assert crit_sentinel.tail_vectors.shape == (3, HIDDEN)
    with torch.no_grad():
        # Tail k's tombstone is row -k (the original's order): the empty sentinel tail 3 is row 0.
        crit_sentinel.tail_vectors[1:] = crit.tail_vectors
        crit_sentinel.tail_bias[1:] = crit.tail_bias
        crit_sentinel.tail_bias[0] = 5.0  # would steal mass if it were not masked
    logprob = crit_sentinel.logprob(weight, bias, hiddens)
    # rtol 1e-6: the masked entry changes the order of the log-sum-exp, which moves log-probabilities of
    # about -30 by an ulp or two on some CPUs (3.8e-6); a tombstone that stole mass would move them by ~1.
    torch.testing.assert_close(logprob, crit.logprob(weight, bias, hiddens), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(crit_sentinel(weight, bias, hiddens, targets),
                               crit(weight, bias, hiddens, targets), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("splits", [[0, 10], [30, 10], [10, 10]])
def test_bad_splits_rejected(splits):
    with pytest.raises(ValueError):
        SplitCrossEntropyLoss(HIDDEN, splits)


@pytest.mark.parametrize("ntokens, expected", [
    (10000, []), (33278, []), (75000, []), (75001, [2800, 20000, 76000]),
    (267735, [2800, 20000, 76000]), (500000, [2800, 20000, 76000]), (600000, [4200, 35000, 180000]),
])
def test_splits_for_vocab(ntokens, expected):
    assert splits_for_vocab(ntokens) == expected


def test_state_dict_round_trip():
    weight, bias, hiddens, targets = make_inputs()
    crit = make_criterion()
    fresh = SplitCrossEntropyLoss(HIDDEN, SPLITS)
    assert not torch.equal(fresh(weight, bias, hiddens, targets), crit(weight, bias, hiddens, targets))
    fresh.load_state_dict(crit.state_dict())
    assert torch.equal(fresh(weight, bias, hiddens, targets), crit(weight, bias, hiddens, targets))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    weight, bias, hiddens, targets = make_inputs()
    crit = make_criterion()
    cpu = crit(weight, bias, hiddens, targets)
    gpu = crit.cuda()(weight.cuda(), bias.cuda(), hiddens.cuda(), targets.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_tombstones_are_stored_in_the_original_order():
    # The original scored tail k through column -k of the head softmax, so tail_vectors[-k] (and
    # tail_bias[-k]) belong to tail k. Checked against a plain two-level softmax written out here.
    weight, bias, hiddens, targets = make_inputs()
    crit = make_criterion()
    head_end = SPLITS[0]
    head_logits = torch.cat([hiddens @ weight[:head_end].t() + bias[:head_end],
                             hiddens @ crit.tail_vectors.t() + crit.tail_bias], dim=1)
    head_logprob = torch.log_softmax(head_logits, dim=1)
    bounds = SPLITS + [weight.size(0)]
    expected = [head_logprob[:, :head_end]]
    for k, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        tombstone = head_logprob[:, head_end + len(SPLITS) - k]  # column -k
        tail = torch.log_softmax(hiddens @ weight[start:end].t() + bias[start:end], dim=1)
        expected.append(tombstone.unsqueeze(1) + tail)
    expected = torch.cat(expected, dim=1)
    torch.testing.assert_close(crit.logprob(weight, bias, hiddens), expected, atol=1e-5, rtol=0)
    loss = -expected[torch.arange(targets.numel()), targets].mean()
    torch.testing.assert_close(crit(weight, bias, hiddens, targets), loss, atol=1e-5, rtol=0)
