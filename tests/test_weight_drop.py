import copy
import io

import torch
import torch.nn as nn

from weight_drop import WeightDrop


def make_lstm(p=0.9, variational=False):
    torch.manual_seed(0)
    return WeightDrop(nn.LSTM(10, 10), ['weight_hh_l0'], dropout=p, variational=variational)


def test_first_step_equal_later_steps_differ():
    # The original's self-test: the hidden-to-hidden weight only acts from timestep 1 on.
    wd = make_lstm()
    x = torch.randn(2, 1, 10)
    h0 = None
    out1, _ = wd(x, h0)
    out2, _ = wd(x, h0)
    assert torch.allclose(out1[0], out2[0])
    assert not torch.allclose(out1[1], out2[1])


def test_eval_is_deterministic_and_uses_raw_weight():
    wd = make_lstm().eval()
    x = torch.randn(5, 3, 10)
    a, _ = wd(x)
    b, _ = wd(x)
    assert torch.equal(a, b)
    plain = nn.LSTM(10, 10)
    state = {k.replace('_raw', ''): v for k, v in wd.module.state_dict().items()}
    plain.load_state_dict(state)
    assert torch.allclose(plain(x)[0], a, atol=1e-6)


def test_gradient_reaches_raw_weight_in_train_and_eval():
    wd = make_lstm(p=0.5)
    for mode in (wd.train, wd.eval):
        mode()
        wd.zero_grad()
        out, _ = wd(torch.randn(4, 2, 10))
        out.sum().backward()
        assert wd.module.weight_hh_l0_raw.grad.abs().sum() > 0
    assert 'weight_hh_l0' not in dict(wd.named_parameters())


def test_state_dict_round_trip_to_and_deepcopy():
    wd = make_lstm(p=0.5)
    wd(torch.randn(3, 2, 10))  # a forward before copying must not break deepcopy
    assert 'module.weight_hh_l0_raw' in wd.state_dict()
    buf = io.BytesIO()
    torch.save(wd.state_dict(), buf)
    buf.seek(0)
    other = make_lstm(p=0.5)
    with torch.no_grad():
        other.module.weight_hh_l0_raw.add_(1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    other = copy.deepcopy(other).to(torch.float64).to(torch.float32)
    x = torch.randn(4, 2, 10)
    wd.eval(), other.eval()
    assert torch.allclose(wd(x)[0], other(x)[0], atol=1e-6)


def test_fresh_mask_each_call_scaled_by_keep_probability():
    torch.manual_seed(0)
    wd = WeightDrop(nn.Linear(200, 100, bias=False), ['weight'], dropout=0.3)
    x = torch.eye(200)
    w1 = wd(x).t()  # the dropped weight itself
    w2 = wd(x).t()
    raw = wd.module.weight_raw
    assert not torch.equal(w1, w2)
    kept = w1 != 0
    assert torch.allclose(w1[kept], raw[kept] / 0.7)
    assert 0.25 < 1 - kept.float().mean().item() < 0.35


def test_variational_drops_whole_rows():
    torch.manual_seed(0)
    wd = WeightDrop(nn.Linear(30, 50, bias=False), ['weight'], dropout=0.5, variational=True)
    w = wd(torch.eye(30)).t()
    row_zero = (w == 0).all(dim=1)
    assert row_zero.any() and (~row_zero).any()
    assert ((w == 0).any(dim=1) == row_zero).all()  # a row is dropped whole or not at all


def test_gru_works():
    torch.manual_seed(0)
    wd = WeightDrop(nn.GRU(6, 6), ['weight_hh_l0'], dropout=0.5)
    out, h = wd(torch.randn(3, 2, 6))
    assert out.shape == (3, 2, 6) and h.shape == (1, 2, 6)
    out.sum().backward()
    assert wd.module.weight_hh_l0_raw.grad is not None
