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
