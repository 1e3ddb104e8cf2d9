import torch

from locked_dropout import LockedDropout


def test_one_mask_over_time_and_scaled():
    torch.manual_seed(0)
    drop = LockedDropout().train()
    x = torch.ones(6, 3, 50)
    y = drop(x, 0.4)
    # Same units dropped at every timestep.
    assert torch.equal(y, y[:1].expand_as(y))
    # Kept units are scaled by 1/(1-p); dropped are exactly zero.
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.6))
    zeros = (y[0] == 0).float().mean().item()
    assert 0.25 < zeros < 0.55


def test_identity_in_eval_and_when_zero():
    x = torch.randn(4, 2, 5)
    drop = LockedDropout()
    assert torch.equal(drop.eval()(x, 0.5), x)
    assert torch.equal(drop.train()(x, 0.0), x)


def test_first_release_mask_is_one_per_timestep_shared_by_the_batch():
    torch.manual_seed(0)
    drop = LockedDropout(shared_over='batch').train()
    y = drop(torch.ones(40, 3, 50), 0.4)
    # Every sequence of the batch sees the same mask at a timestep; the mask changes along time.
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert not torch.equal(y[0], y[1])
    # Drawn as the first release drew it: one Bernoulli tensor of shape (seq_len, 1, features).
    torch.manual_seed(0)
    expected = torch.empty(40, 1, 50).bernoulli_(0.6) / 0.6
    assert torch.equal(y, expected.expand(40, 3, 50))


def test_the_paper_mask_is_drawn_with_shape_one_batch_features():
    torch.manual_seed(3)
    y = LockedDropout().train()(torch.ones(7, 4, 9), 0.3)
    torch.manual_seed(3)
    assert torch.equal(y, (torch.empty(1, 4, 9).bernoulli_(0.7) / 0.7).expand(7, 4, 9))
