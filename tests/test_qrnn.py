"""Tests for qrnn.py (CPU; float64 wherever values are compared)."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qrnn
from qrnn import (QRNN, QRNNLayer, forget_mult, forget_mult_backward_reference,
                  forget_mult_loop, forget_mult_scan, forget_mult_sequential)

DT = torch.float64
TS = [1, 2, 7, 70, 129]


def _inputs(T, B=3, H=5, c0=True, seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(T, B, H, generator=g, dtype=dtype).requires_grad_()
    z = torch.randn(T, B, H, generator=g, dtype=dtype).requires_grad_()
    h0 = torch.randn(B, H, generator=g, dtype=dtype).requires_grad_() if c0 else None
    grad = torch.randn(T, B, H, generator=g, dtype=dtype)
    return f, z, h0, grad


def _value_and_grads(fn, f, z, c0, grad):
    out = fn(f, z, c0)
    ins = (f, z) if c0 is None else (f, z, c0)
    return out, torch.autograd.grad(out, ins, grad)


def _assert_close_all(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("use_c0", [True, False])
@pytest.mark.parametrize("fn", [forget_mult_scan, forget_mult_sequential, forget_mult],
                         ids=["scan", "sequential", "default"])
def test_forget_mult_matches_loop(fn, T, use_c0):
    f, z, c0, grad = _inputs(T, c0=use_c0, seed=T)
    ref, ref_grads = _value_and_grads(forget_mult_loop, f, z, c0, grad)
    out, grads = _value_and_grads(fn, f, z, c0, grad)
    assert out.shape == (T, 3, 5)
    _assert_close_all((out,) + grads, (ref,) + ref_grads)


def test_forget_mult_loop_definition():
    f, z, c0, _ = _inputs(4, B=2, H=3)
    c = forget_mult_loop(f, z, c0)
    prev = c0
    for t in range(4):
        prev = f[t] * prev + (1 - f[t]) * z[t]
        torch.testing.assert_close(c[t], prev)
    # c0=None means zeros
    torch.testing.assert_close(forget_mult_loop(f, z), forget_mult_loop(f, z, torch.zeros_like(c0)))


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("use_c0", [True, False])
def test_backward_reference_matches_autograd(T, use_c0):
    f, z, c0, grad = _inputs(T, c0=use_c0, seed=100 + T)
    ref, ref_grads = _value_and_grads(forget_mult_loop, f, z, c0, grad)
    with torch.no_grad():
        gf, gz, gc0 = forget_mult_backward_reference(f, z, ref, grad, c0)
    if use_c0:
        _assert_close_all((gf, gz, gc0), ref_grads)
    else:
        assert gc0 is None
        _assert_close_all((gf, gz), ref_grads)


def test_forget_mult_scan_float32_long_sequence_stable():
    # f near 0 everywhere: a cumulative-product formulation would underflow/divide by ~0
    g = torch.Generator().manual_seed(3)
    T = 200
    f = torch.rand(T, 4, 16, generator=g) * 1e-3
    z = torch.randn(T, 4, 16, generator=g)
    ref = forget_mult_loop(f.double(), z.double())
    for backend in ("scan", "sequential"):
        out = forget_mult(f, z, backend=backend)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def test_forget_mult_backends_and_dtypes():
    f, z, c0, _ = _inputs(5)
    ref = forget_mult_loop(f, z, c0)
    for backend in ("loop", "sequential", "scan", "auto", None):
        torch.testing.assert_close(forget_mult(f, z, c0, backend=backend), ref)
    with pytest.raises(ValueError):
        forget_mult(f, z, c0, backend="nope")
    with pytest.raises(ValueError):
        forget_mult(f, z, c0, backend="triton")  # CPU tensors
    with pytest.raises(ValueError):
        forget_mult(f, z[:, :2], c0)
    # mixed precision inputs are promoted
    out = forget_mult(f.float(), z.float(), c0)
    assert out.dtype == DT
    # arbitrary trailing shape
    f4, z4 = f.detach().reshape(5, 15, 1), z.detach().reshape(5, 15, 1)
    torch.testing.assert_close(forget_mult(f4, z4, c0.detach().reshape(15, 1), backend="scan"),
                               ref.detach().reshape(5, 15, 1))


@pytest.mark.slow
def test_cpu_path_does_not_import_triton():
    import subprocess
    import sys
    code = ("import sys, torch, qrnn\n"
            "f = torch.rand(4, 2, 3, requires_grad=True)\n"
            "qrnn.forget_mult(f, f * 2).sum().backward()\n"
            "l = qrnn.QRNNLayer(3, 4, window=2, save_prev_x=True)\n"
            "l(torch.randn(5, 2, 3))[0].sum().backward()\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------------------
# QRNNLayer
# ---------------------------------------------------------------------------

def manual_layer(layer, X, c0=None, prev_x=None):
    """Per-timestep computation straight from layer.linear.weight / bias."""
    W, b = layer.linear.weight, layer.linear.bias
    Hs = layer.hidden_size
    T, B, _ = X.shape
    c = torch.zeros(B, Hs, dtype=X.dtype) if c0 is None else c0.reshape(B, Hs)
    x_prev = torch.zeros(B, X.shape[2], dtype=X.dtype) if prev_x is None else prev_x
    hs, cs = [], []
    for t in range(T):
        inp = torch.cat([X[t], x_prev], 1) if layer.window == 2 else X[t]
        y = inp @ W.t() + b
        z = torch.tanh(y[:, :Hs])
        fg = torch.sigmoid(y[:, Hs:2 * Hs])
        c = fg * c + (1 - fg) * z
        h = torch.sigmoid(y[:, 2 * Hs:3 * Hs]) * c if layer.output_gate else c
        hs.append(h)
        cs.append(c)
        x_prev = X[t]
    return torch.stack(hs), torch.stack(cs)


def _layer(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    return QRNNLayer(**kw).to(DT)


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("output_gate", [True, False])
def test_layer_matches_manual(window, output_gate):
    layer = _layer(input_size=4, hidden_size=6, window=window, output_gate=output_gate)
    assert layer.linear.in_features == window * 4
    assert layer.linear.out_features == (3 if output_gate else 2) * 6
    X = torch.randn(9, 3, 4, dtype=DT)
    c0 = torch.randn(1, 3, 6, dtype=DT)
    H, C = layer(X, c0)
    H_ref, C_ref = manual_layer(layer, X, c0)
    assert H.shape == (9, 3, 6) and C.shape == (1, 3, 6)
    torch.testing.assert_close(H, H_ref)
    torch.testing.assert_close(C, C_ref[-1:])
    if not output_gate:
        torch.testing.assert_close(H[-1:], C)


def test_layer_gradients_match_manual():
    layer = _layer(input_size=4, hidden_size=5, window=2)
    X = torch.randn(11, 2, 4, dtype=DT, requires_grad=True)
    c0 = torch.randn(2, 5, dtype=DT, requires_grad=True)
    params = [X, c0, layer.linear.weight, layer.linear.bias]
    H, C = layer(X, c0)
    g1 = torch.autograd.grad((H ** 2).sum() + C.sum(), params)
    H_ref, C_ref = manual_layer(layer, X, c0)
    g2 = torch.autograd.grad((H_ref ** 2).sum() + C_ref[-1].sum(), params)
    _assert_close_all(g1, g2)


def test_layer_output_gate_false_h_equals_c():
    layer = _layer(input_size=3, hidden_size=4, window=2, output_gate=False)
    X = torch.randn(6, 2, 3, dtype=DT)
    H, C = layer(X)
    _, C_all = manual_layer(layer, X)
    torch.testing.assert_close(H, C_all)
    torch.testing.assert_close(C, H[-1:])


def test_layer_hidden_forms_and_default_size():
    layer = _layer(input_size=5)
    assert layer.hidden_size == 5
    X = torch.randn(4, 3, 5, dtype=DT)
    c0 = torch.randn(3, 5, dtype=DT)
    H1, C1 = layer(X, c0.unsqueeze(0))
    H2, C2 = layer(X, c0)
    torch.testing.assert_close(H1, H2)
    torch.testing.assert_close(C1, C2)
    H3, C3 = layer(X)
    H4, C4 = layer(X, torch.zeros(1, 3, 5, dtype=DT))
    torch.testing.assert_close(H3, H4)
    torch.testing.assert_close(C3, C4)
    assert H3.shape == (4, 3, 5) and C3.shape == (1, 3, 5)
    with pytest.raises(ValueError):
        layer(X, torch.zeros(2, 3, 5, dtype=DT))
    with pytest.raises(ValueError):
        layer(X, torch.zeros(3, 4, dtype=DT))
    with pytest.raises(ValueError):
        QRNNLayer(3, 4, window=3)


def test_layer_seq_len_one():
    layer = _layer(input_size=3, hidden_size=4, window=2, save_prev_x=True)
    X = torch.randn(5, 2, 3, dtype=DT)
    H_ref, C_ref = manual_layer(layer, X)
    c = None
    for t in range(5):
        H, c = layer(X[t:t + 1], c)
        torch.testing.assert_close(H[0], H_ref[t])
    torch.testing.assert_close(c[0], C_ref[-1])


def test_save_prev_x_two_calls_equal_one_call_and_reset():
    layer = _layer(input_size=4, hidden_size=5, window=2, save_prev_x=True)
    X = torch.randn(12, 3, 4, dtype=DT)
    c0 = torch.randn(1, 3, 5, dtype=DT)
    H_full, C_full = layer(X, c0)
    layer.reset()
    Ha, Ca = layer(X[:7], c0)
    torch.testing.assert_close(layer.prevX, X[6:7])
    assert not layer.prevX.requires_grad
    Hb, Cb = layer(X[7:], Ca)
    torch.testing.assert_close(torch.cat([Ha, Hb]), H_full)
    torch.testing.assert_close(Cb, C_full)
    # the second call really used X[6] as x_{t-1} (differs from a fresh start)
    H_ref_b, _ = manual_layer(layer, X[7:], Ca, prev_x=X[6])
    torch.testing.assert_close(Hb, H_ref_b)
    H_fresh, _ = manual_layer(layer, X[7:], Ca)
    assert not torch.allclose(Hb[0], H_fresh[0])
    # after reset the first step sees zeros again
    layer.reset()
    assert layer.prevX is None
    Hc, _ = layer(X[7:], Ca)
    torch.testing.assert_close(Hc, H_fresh)


def test_without_save_prev_x_each_call_starts_from_zeros():
    layer = _layer(input_size=4, hidden_size=5, window=2, save_prev_x=False)
    X = torch.randn(8, 2, 4, dtype=DT)
    layer(X)
    assert layer.prevX is None
    H, _ = layer(X[4:])
    torch.testing.assert_close(H, manual_layer(layer, X[4:])[0])


def test_save_prev_x_batch_change_starts_fresh_and_window1_ignores():
    layer = _layer(input_size=4, hidden_size=5, window=2, save_prev_x=True)
    layer(torch.randn(3, 2, 4, dtype=DT))
    X = torch.randn(3, 5, 4, dtype=DT)  # different batch size: zeros as x_{-1}
    torch.testing.assert_close(layer(X)[0], manual_layer(layer, X)[0])
    layer1 = _layer(input_size=4, hidden_size=5, window=1, save_prev_x=True)
    X = torch.randn(3, 2, 4, dtype=DT)
    H1, _ = layer1(X)
    H2, _ = layer1(X)
    torch.testing.assert_close(H1, H2)


class ScaledLinear(nn.Module):
    """Stands in for WeightDrop: forward uses a modified copy of the raw weight."""

    def __init__(self, linear, scale):
        super().__init__()
        self.module = linear
        self.scale = scale
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return F.linear(x, self.module.weight * self.scale, self.module.bias)


def test_layer_calls_linear_as_module():
    layer = _layer(input_size=4, hidden_size=5, window=2)
    X = torch.randn(6, 2, 4, dtype=DT)
    H0, _ = layer(X)
    layer.linear = ScaledLinear(layer.linear, 1.0)
    H1, _ = layer(X)
    torch.testing.assert_close(H1, H0)
    layer.linear.scale = 0.5
    H2, _ = layer(X)
    assert layer.linear.calls == 2
    assert not torch.allclose(H2, H0)
    # the dropped weight is what is used: compare with a layer holding the scaled weight
    ref = _layer(input_size=4, hidden_size=5, window=2)
    with torch.no_grad():
        ref.linear.weight.copy_(layer.linear.module.weight * 0.5)
        ref.linear.bias.copy_(layer.linear.module.bias)
    torch.testing.assert_close(H2, ref(X)[0])


def _zoneout_gates(layer, X):
    """Z, F (forget gate, weights c_{t-1}) and O (or None) of ``layer`` on X, window 1 or 2."""
    if layer.window == 2:
        src = torch.cat([X, torch.cat([torch.zeros_like(X[:1]), X[:-1]])], 2)
    else:
        src = X
    Y = layer.linear(src)
    if layer.output_gate:
        Z, Fg, O = Y.chunk(3, dim=2)
        O = torch.sigmoid(O)
    else:
        (Z, Fg), O = Y.chunk(2, dim=2), None
    return torch.tanh(Z), torch.sigmoid(Fg), O


def zoneout_loop(layer, X, c0, keep=None):
    """Straightforward per-timestep zoneout reference.

    Training (``keep`` given, 1 = normal update, 0 = zoned out): a zoned-out
    unit keeps its previous cell state, c_t = c_{t-1}.  Evaluation
    (``keep=None``): the candidate weight (1 - F) is scaled by (1 - p).
    Returns (H, C) for all timesteps.
    """
    p = layer.zoneout
    Z, Fg, O = _zoneout_gates(layer, X)
    c = c0
    hs, cs = [], []
    for t in range(X.shape[0]):
        if keep is None:
            w = (1 - Fg[t]) * (1 - p)  # weight of the new candidate
            c = (1 - w) * c + w * Z[t]
        else:
            c = torch.where(keep[t] == 1, Fg[t] * c + (1 - Fg[t]) * Z[t], c)
        cs.append(c)
        hs.append(O[t] * c if O is not None else c)
    return torch.stack(hs), torch.stack(cs)


class _SpyForgetMult:
    """Stands in for qrnn.forget_mult and records the cell states it returns."""

    def __init__(self, backend=None):
        self.backend = backend
        self.C = None

    def __call__(self, f, z, c0=None):
        self.C = forget_mult(f, z, c0, backend=self.backend)
        return self.C


@pytest.mark.parametrize("output_gate", [False, True])
@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("backend", ["sequential", "loop", "scan"])
def test_zoneout_training_keeps_previous_cell_state(monkeypatch, output_gate, window, backend):
    p = 0.3
    layer = _layer(input_size=4, hidden_size=7, zoneout=p, window=window,
                   output_gate=output_gate, seed=window)
    layer.train()
    spy = _SpyForgetMult(backend)
    monkeypatch.setattr(qrnn, "forget_mult", spy)
    T, B = 9, 5
    X = torch.randn(T, B, 4, dtype=DT, requires_grad=True)
    c0 = torch.randn(B, 7, dtype=DT, requires_grad=True)
    torch.manual_seed(123)
    H, C_last = layer(X, c0)
    C = spy.C
    # the layer draws one Bernoulli(1 - p) "keep" mask of the gate shape
    torch.manual_seed(123)
    keep = torch.empty(T, B, 7, dtype=DT).bernoulli_(1 - p)
    drop = keep == 0
    assert 0 < drop.sum() < drop.numel()

    # zoned-out units keep c_{t-1}; with the exact back-ends bit for bit
    C_prev = torch.cat([c0.detach().unsqueeze(0), C[:-1].detach()])
    Hd = H.detach()
    if backend == "scan":  # parallel prefix scan: regrouped products, equal up to rounding
        torch.testing.assert_close(C.detach()[drop], C_prev[drop], rtol=0, atol=1e-14)
    else:
        assert torch.equal(C.detach()[drop], C_prev[drop])
        if not output_gate:
            assert torch.equal(Hd[drop], C_prev[drop])  # h_t == c_{t-1}
    _, _, O = _zoneout_gates(layer, X.detach())
    if output_gate:  # h_t = O_t * c_{t-1}
        if backend == "scan":
            torch.testing.assert_close(Hd[drop], (O * C_prev)[drop], rtol=0, atol=1e-14)
        else:
            assert torch.equal(Hd[drop], (O * C_prev)[drop])

    # everything (kept units' normal recurrence included) matches the per-timestep loop
    H_ref, C_ref = zoneout_loop(layer, X, c0, keep)
    torch.testing.assert_close(H, H_ref)
    torch.testing.assert_close(C_last, C_ref[-1:])
    assert torch.equal(C_ref[drop], torch.cat([c0.unsqueeze(0), C_ref[:-1]])[drop])
    # kept units do not keep c_{t-1}
    assert not torch.isclose(C.detach(), C_prev)[~drop].any()

    # gradients as the loop's
    params = [X, c0, layer.linear.weight, layer.linear.bias]
    g1 = torch.autograd.grad((H ** 2).sum() + C_last.sum(), params)
    g2 = torch.autograd.grad((H_ref ** 2).sum() + C_ref[-1].sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_zoneout_drop_frequency_is_p():
    # 40 x 50 units x 5 steps = 10,000 draws; a dropped unit is detected by h_t == c_{t-1}
    # exactly (output_gate=False), independently of how the mask is drawn.
    p = 0.2
    layer = _layer(input_size=3, hidden_size=50, zoneout=p, window=1, output_gate=False, seed=7)
    layer.train()
    X = torch.randn(5, 40, 3, dtype=DT)
    c0 = torch.randn(40, 50, dtype=DT)
    torch.manual_seed(2024)
    with torch.no_grad():
        H, _ = layer(X, c0)
    prev = torch.cat([c0.unsqueeze(0), H[:-1]])
    frac = (H == prev).double().mean().item()
    # sd = sqrt(0.2 * 0.8 / 10000) = 0.004: +-0.02 is 5 sd; keeping with probability p
    # (frac ~ 0.8) or taking the candidate (frac ~ 0) fails
    assert abs(frac - p) < 0.02, frac


@pytest.mark.parametrize("output_gate", [False, True])
@pytest.mark.parametrize("window", [1, 2])
def test_zoneout_eval_scales_candidate_weight(output_gate, window):
    p = 0.4
    layer = _layer(input_size=4, hidden_size=6, zoneout=p, window=window,
                   output_gate=output_gate, seed=3)
    layer.eval()
    X = torch.randn(8, 3, 4, dtype=DT)
    c0 = torch.randn(1, 3, 6, dtype=DT)
    H1, C1 = layer(X, c0)
    torch.manual_seed(5)
    H2, C2 = layer(X, c0)  # deterministic: no mask, no RNG use
    assert torch.equal(H1, H2) and torch.equal(C1, C2)
    H_ref, C_ref = zoneout_loop(layer, X, c0[0])
    torch.testing.assert_close(H1, H_ref)
    torch.testing.assert_close(C1, C_ref[-1:])
    # and it is not the plain recurrence
    assert not torch.allclose(H1, manual_layer(layer, X, c0)[0])


def test_zoneout_zero_is_the_plain_layer():
    layer = _layer(input_size=4, hidden_size=5, zoneout=0, window=2)
    X = torch.randn(6, 2, 4, dtype=DT)
    layer.train()
    state = torch.get_rng_state()
    H_train, C_train = layer(X)
    assert torch.equal(torch.get_rng_state(), state)  # no mask drawn
    layer.eval()
    H_eval, C_eval = layer(X)
    assert torch.equal(H_train, H_eval) and torch.equal(C_train, C_eval)
    torch.testing.assert_close(H_train, manual_layer(layer, X)[0])
    with pytest.raises(ValueError):
        QRNNLayer(3, 4, zoneout=1.0)


def test_qrnn_stack_passes_zoneout():
    model = QRNN(3, 5, num_layers=2, zoneout=0.25)
    assert [l.zoneout for l in model.layers] == [0.25, 0.25]


# ---------------------------------------------------------------------------
# QRNN stack
# ---------------------------------------------------------------------------

def test_qrnn_stack_shapes_windows_and_reset():
    torch.manual_seed(0)
    model = QRNN(4, 6, num_layers=3, save_prev_x=True).to(DT)
    assert [l.window for l in model.layers] == [2, 1, 1]
    assert model.layers[0].input_size == 4 and model.layers[1].input_size == 6
    X = torch.randn(7, 2, 4, dtype=DT)
    out, h = model(X)
    assert out.shape == (7, 2, 6) and h.shape == (3, 2, 6)
    # equals running the layers by hand
    ref, hs = X, []
    model.reset()
    for i, layer in enumerate(model.layers):
        ref, c = manual_layer(layer, ref)
        hs.append(c[-1])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, torch.stack(hs))
    # a call after another one uses the saved input; reset() restores the fresh behaviour
    model(X)
    out2, h2 = model(X, h)
    assert model.layers[0].prevX is not None
    model.reset()
    assert all(l.prevX is None for l in model.layers)
    out3, _ = model(X, h)
    assert not torch.allclose(out2, out3)
    model.reset()
    out4, _ = model(X, h)
    torch.testing.assert_close(out3, out4)


def test_qrnn_options():
    model = QRNN(3, 5, num_layers=2, window=1, dropout=0.5, output_gate=False, bias=False)
    assert [l.window for l in model.layers] == [1, 1]
    assert model.layers[0].linear.bias is None
    assert model.layers[0].linear.out_features == 10
    model.eval()
    X = torch.randn(4, 2, 3)
    o1, h1 = model(X)
    o2, _ = model(X)
    torch.testing.assert_close(o1, o2)  # no dropout in eval
    o, h = model(X, torch.zeros(2, 2, 5))
    torch.testing.assert_close(o, o1)
    with pytest.raises(ValueError):
        QRNN(3, 5, bidirectional=True)
    with pytest.raises(ValueError):
        QRNN(3, 5, batch_first=True)
    with pytest.raises(ValueError):
        model(X, torch.zeros(3, 2, 5))


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    model = QRNN(3, 8, num_layers=2, save_prev_x=True)
    head = nn.Linear(8, 1)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=0.02)
    X = torch.randn(10, 4, 3)
    target = X.cumsum(0)[..., :1].tanh()
    losses = []
    for _ in range(30):
        model.reset()
        opt.zero_grad()
        out, _ = model(X)
        loss = F.mse_loss(head(out), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------
# Triton (only with CUDA + triton, or opt-in interpreter mode)
# ---------------------------------------------------------------------------

def _check_triton_against_loop(device):
    for T, use_c0 in [(1, True), (7, False), (70, True)]:
        f, z, c0, grad = _inputs(T, B=4, H=33, c0=use_c0, seed=T, dtype=torch.float32)
        f, z, grad = (t.detach().to(device).requires_grad_(t.requires_grad) for t in (f, z, grad))
        if c0 is not None:
            c0 = c0.detach().to(device).requires_grad_()
        out, grads = _value_and_grads(qrnn._ForgetMultTriton.apply, f, z, c0, grad)
        f64 = [t.detach().double().requires_grad_() for t in (f, z) + ((c0,) if use_c0 else ())]
        ref, ref_grads = _value_and_grads(forget_mult_loop, f64[0], f64[1],
                                          f64[2] if use_c0 else None, grad.double())
        for x, y in zip((out,) + grads, (ref,) + ref_grads):
            torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_cuda():
    pytest.importorskip("triton")
    if os.environ.get("QRNN_NO_TRITON"):
        pytest.skip("QRNN_NO_TRITON set")
    assert qrnn.triton_available(), qrnn._TRITON["error"]
    _check_triton_against_loop(torch.device("cuda"))
    f = torch.rand(70, 8, 64, device="cuda")
    torch.testing.assert_close(forget_mult(f, f), forget_mult(f, f, backend="scan"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="opt-in: run with TRITON_INTERPRET=1 and triton installed")
def test_triton_kernel_interpreter(monkeypatch):
    """Runs the Triton kernels in Triton's CPU interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    monkeypatch.setitem(qrnn._TRITON, "kernels", qrnn._load_triton_kernels())
    _check_triton_against_loop(torch.device("cpu"))


def test_a_traced_forget_mult_keeps_its_loop_over_time():
    # Traced (export.py), forget_mult runs the TorchScript-compiled forget_mult_loop: the trace of 5 steps
    # computes any other number of steps, and saves (the autograd-Function back-ends could not be saved).
    torch.manual_seed(0)
    traced = torch.jit.trace(lambda f, z, c0: qrnn.forget_mult(f, z, c0),
                             (torch.rand(5, 2, 3), torch.randn(5, 2, 3), torch.randn(2, 3)))
    f, z, c0 = torch.rand(9, 4, 3), torch.randn(9, 4, 3), torch.randn(4, 3)
    torch.testing.assert_close(traced(f, z, c0), qrnn.forget_mult_loop(f, z, c0), atol=0, rtol=0)
    assert 'prim::Loop' in str(traced.inlined_graph)
