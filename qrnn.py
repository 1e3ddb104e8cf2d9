"""Quasi-Recurrent Neural Network (Bradbury et al. 2016) for the AWD-LSTM models.

A QRNN layer replaces the LSTM's hidden-to-hidden matrix multiply with a
convolution over time (here: a window of 1 or 2 timesteps, computed by one
``nn.Linear`` on the concatenated inputs) followed by an elementwise
recurrence, the "forget-mult" (f-pooling / fo-pooling in the paper)::

    Z = tanh(W_z [x_t, x_{t-1}]),  F = sigmoid(W_f [...]),  O = sigmoid(W_o [...])
    c_t = F_t * c_{t-1} + (1 - F_t) * Z_t
    h_t = O_t * c_t                      (h_t = c_t without the output gate)

Public API
----------
``forget_mult(f, z, c0=None, backend=None)``
    The recurrence above for inputs ``(T, *shape)`` and an initial state of
    ``shape`` (or None = zeros).  Back-ends, all differentiable:

    * ``"sequential"`` -- a ``torch.autograd.Function`` whose forward and
      backward are plain per-timestep loops run without autograd (in-place
      ``out=`` ops, hand-written backward).  Fastest on the CPU, where the
      per-op overhead is small: the *default on the CPU* (and on any device
      other than CUDA).
    * ``"scan"`` -- a ``torch.autograd.Function`` computing the recurrence with
      a Hillis-Steele parallel prefix scan over the affine maps
      ``c -> a_t c + b_t`` (``a = f``, ``b = (1 - f) z``), composed as
      ``(a2, b2) o (a1, b1) = (a1 a2, a2 b1 + b2)``: ceil(log2 T) rounds of
      whole-tensor elementwise ops, exact (no division, no cumprod
      underflow).  Its backward is the same kind of scan run in reverse (see
      ``forget_mult_backward_reference`` for the math).  Only ``f``, ``z``
      and the output are kept for backward (the scan's intermediates are
      freed), so memory is O(T*B*H) independent of log T.  This is the
      *default on CUDA when Triton is unavailable or disabled*: about
      4*log2(T) kernel launches instead of ~3*T.
    * ``"triton"`` -- a fused Triton kernel (one program per block of
      ``B*H`` columns, looping over time with the state in registers) plus a
      fused backward kernel.  *Default on CUDA* when ``triton`` imports and
      the environment variable ``QRNN_NO_TRITON`` is not set to a true
      value.  The first use runs a small self-check against the ``sequential``
      back-end; if it fails the kernel is disabled with a warning.  Triton is
      imported lazily, only for CUDA tensors: the CPU path never touches it.
    * ``"loop"`` -- ``forget_mult_loop``, the readable autograd reference
      (slow backward; for tests and documentation).

``forget_mult_loop(f, z, c0=None)``
    Reference implementation (Python loop, autograd).

``forget_mult_backward_reference(f, z, c, grad_c, c0=None)``
    The hand-written backward (a reverse recurrence), in torch.  It is the
    math the Triton backward kernel implements and it is also the backward of
    the ``sequential`` back-end.

``QRNNLayer(input_size, hidden_size=None, save_prev_x=False, zoneout=0, window=1, output_gate=True, bias=True)``
    One layer; ``forward(X, hidden=None) -> (H, C_last)``.

``QRNN(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0, bidirectional=False, save_prev_x=False, zoneout=0, window=None, output_gate=True)``
    A stack of ``QRNNLayer``s; ``forward(input, hidden=None) -> (output, h_n)``.
"""

import functools
import os
import warnings
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F_nn
from torch.autograd.function import once_differentiable

__all__ = [
    "forget_mult",
    "forget_mult_loop",
    "forget_mult_scan",
    "forget_mult_sequential",
    "forget_mult_backward_reference",
    "triton_available",
    "QRNNLayer",
    "QRNN",
]

BACKENDS = ("loop", "sequential", "scan", "triton")


# ---------------------------------------------------------------------------
# Reference implementations
# ---------------------------------------------------------------------------

def forget_mult_loop(f, z, c0: Optional[torch.Tensor] = None):
    """c_t = f_t * c_{t-1} + (1 - f_t) * z_t, t = 0..T-1, c_{-1} = c0 (zeros if None).

    f, z: (T, *shape); c0: shape or None.  Returns c: (T, *shape).
    Plain autograd loop over time: the reference the other back-ends are
    tested against.  Written in the subset of Python that TorchScript
    compiles: ``forget_mult`` runs its compiled form while a model is
    traced (export.py), where the loop over time must stay a loop.
    """
    c = torch.zeros_like(f[0]) if c0 is None else c0
    out: List[torch.Tensor] = []
    for t in range(f.shape[0]):
        c = f[t] * c + (1 - f[t]) * z[t]
        out.append(c)
    return torch.stack(out, 0)


@functools.lru_cache(maxsize=None)
def forget_mult_loop_scripted():
    """``forget_mult_loop`` compiled by TorchScript (once, on first use): inside a traced model its loop
    runs for the sequence length of each call, where tracing the Python loop would fix the length
    to the example's (and the other back-ends, autograd Functions, cannot be exported at all)."""
    return torch.jit.script(forget_mult_loop)


def forget_mult_backward_reference(f, z, c, grad_c, c0=None):
    """Hand-written backward of ``forget_mult``; returns (grad_f, grad_z, grad_c0).

    With d_t = dL/dc_t accumulated over all paths (the total derivative),
    since c_t feeds c_{t+1} through the factor f_{t+1}::

        d_{T-1} = g_{T-1}
        d_t     = g_t + f_{t+1} * d_{t+1}           (t = T-2 .. 0)
        dL/dz_t = d_t * (1 - f_t)
        dL/df_t = d_t * (c_{t-1} - z_t)             (c_{-1} = c0, or 0)
        dL/dc0  = f_0 * d_0

    where g = grad_c is the gradient arriving at the outputs.  The reverse
    recurrence for d is the forward recurrence run backwards in time, which
    is what the Triton backward kernel does in registers.  ``grad_c0`` is
    None when ``c0`` is None.  No autograd graph is built (pure data ops).
    """
    T = f.shape[0]
    d = torch.empty_like(f)
    d[T - 1].copy_(grad_c[T - 1])
    for t in range(T - 2, -1, -1):
        torch.addcmul(grad_c[t], f[t + 1], d[t + 1], out=d[t])
    c_prev = torch.empty_like(c)
    if T > 1:
        c_prev[1:].copy_(c[:-1])
    if c0 is None:
        c_prev[0].zero_()
    else:
        c_prev[0].copy_(c0)
    grad_z = d * (1 - f)
    grad_f = d * (c_prev - z)
    grad_c0 = None if c0 is None else f[0] * d[0]
    return grad_f, grad_z, grad_c0


# ---------------------------------------------------------------------------
# CPU default: per-timestep loops without autograd, hand-written backward
# ---------------------------------------------------------------------------

class _ForgetMultSequential(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, z, c0):
        with torch.no_grad():
            T = f.shape[0]
            c = torch.empty_like(f, memory_format=torch.contiguous_format)
            prev = torch.zeros_like(f[0]) if c0 is None else c0
            tmp = torch.empty_like(c[0])
            for t in range(T):
                # c_t = z_t + f_t * (c_{t-1} - z_t)
                torch.sub(prev, z[t], out=tmp)
                torch.addcmul(z[t], f[t], tmp, out=c[t])
                prev = c[t]
        ctx.save_for_backward(f, z, c0, c)
        return c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_c):
        f, z, c0, c = ctx.saved_tensors
        grad_f, grad_z, grad_c0 = forget_mult_backward_reference(f, z, c, grad_c, c0)
        return grad_f, grad_z, grad_c0


def forget_mult_sequential(f, z, c0=None):
    """``forget_mult`` with the ``sequential`` back-end (see module doc)."""
    f, z, c0 = _common_dtype(f, z, c0)
    return _ForgetMultSequential.apply(f, z, c0)


# ---------------------------------------------------------------------------
# Parallel scan (GPU fallback)
# ---------------------------------------------------------------------------

def _affine_scan_(a, b, reverse=False):
    """Inclusive scan of x_t = a_t * x_{t-1} + b_t (x_{-1} = 0) along dim 0.

    With reverse=True: x_t = a_t * x_{t+1} + b_t (x_T = 0).  Hillis-Steele:
    after the round with offset d, (a_t, b_t) is the composition of the
    maps t-2d+1 .. t (clipped at 0), so after ceil(log2 T) rounds b_t = x_t.
    Consumes (overwrites) a and b, which must be contiguous and owned by the
    caller; runs without autograd.  Two ping-pong buffers, so every round is
    a handful of whole-tensor elementwise kernels.
    """
    T = b.shape[0]
    a2 = torch.empty_like(a)
    b2 = torch.empty_like(b)
    d = 1
    while d < T:
        last = 2 * d >= T  # the a's are not needed after the last round
        if not reverse:
            torch.addcmul(b[d:], a[d:], b[:-d], out=b2[d:])
            b2[:d].copy_(b[:d])
            if not last:
                torch.mul(a[d:], a[:-d], out=a2[d:])
                a2[:d].copy_(a[:d])
        else:
            torch.addcmul(b[:-d], a[:-d], b[d:], out=b2[:-d])
            b2[-d:].copy_(b[-d:])
            if not last:
                torch.mul(a[:-d], a[d:], out=a2[:-d])
                a2[-d:].copy_(a[-d:])
        b, b2 = b2, b
        if not last:
            a, a2 = a2, a
        d *= 2
    return b


class _ForgetMultScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, z, c0):
        with torch.no_grad():
            b = (1 - f) * z  # fresh contiguous tensor
            if c0 is not None:
                b[0].addcmul_(f[0], c0)
            a = f.clone(memory_format=torch.contiguous_format)
            c = _affine_scan_(a, b)
        ctx.save_for_backward(f, z, c0, c)
        return c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_c):
        f, z, c0, c = ctx.saved_tensors
        T = f.shape[0]
        # d_t = g_t + f_{t+1} d_{t+1}: a reverse scan with coefficients e_t = f_{t+1}, e_{T-1} = 0.
        e = torch.empty_like(c)
        if T > 1:
            e[:-1].copy_(f[1:])
        e[-1].zero_()
        d = _affine_scan_(e, grad_c.clone(memory_format=torch.contiguous_format), reverse=True)
        c_prev = e  # reuse the buffer (the scan no longer needs it)
        if T > 1:
            c_prev[1:].copy_(c[:-1])
        if c0 is None:
            c_prev[0].zero_()
        else:
            c_prev[0].copy_(c0)
        grad_f = grad_z = grad_c0 = None
        if ctx.needs_input_grad[0]:
            grad_f = d * c_prev.sub_(z)
        if ctx.needs_input_grad[1]:
            grad_z = d * (1 - f)
        if c0 is not None and ctx.needs_input_grad[2]:
            grad_c0 = f[0] * d[0]
        return grad_f, grad_z, grad_c0


def forget_mult_scan(f, z, c0=None):
    """``forget_mult`` with the parallel-scan back-end (see module doc)."""
    f, z, c0 = _common_dtype(f, z, c0)
    return _ForgetMultScan.apply(f, z, c0)


# ---------------------------------------------------------------------------
# Optional Triton kernels (CUDA only, imported lazily)
# ---------------------------------------------------------------------------

_TRITON = {"state": None, "kernels": None, "error": None}  # state: None (untried), "ok", "off"


def _env_true(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _load_triton_kernels():
    """Import triton and define the kernels; returns (fwd, bwd) or raises."""
    import triton
    import triton.language as tl

    @triton.jit
    def _fm_fwd_kernel(F, Z, C0, C, T, N, HAS_C0: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        if HAS_C0:
            c = tl.load(C0 + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            c = tl.zeros([BLOCK], dtype=tl.float32)
        off = cols
        for _ in range(T):
            f = tl.load(F + off, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(Z + off, mask=mask, other=0.0).to(tl.float32)
            c = z + f * (c - z)
            tl.store(C + off, c.to(C.dtype.element_ty), mask=mask)
            off += N

    @triton.jit
    def _fm_bwd_kernel(F, Z, C, C0, G, GF, GZ, GC0, T, N,
                       HAS_C0: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        carry = tl.zeros([BLOCK], dtype=tl.float32)  # f_{t+1} * d_{t+1}
        off = (T - 1) * N + cols
        for _ in range(T - 1):  # t = T-1 .. 1
            f = tl.load(F + off, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(Z + off, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(G + off, mask=mask, other=0.0).to(tl.float32)
            c_prev = tl.load(C + (off - N), mask=mask, other=0.0).to(tl.float32)
            d = g + carry
            tl.store(GZ + off, (d * (1.0 - f)).to(GZ.dtype.element_ty), mask=mask)
            tl.store(GF + off, (d * (c_prev - z)).to(GF.dtype.element_ty), mask=mask)
            carry = d * f
            off -= N
        # t = 0 (off == cols here)
        f = tl.load(F + cols, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(Z + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_C0:
            c_prev = tl.load(C0 + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            c_prev = tl.zeros([BLOCK], dtype=tl.float32)
        d = g + carry
        tl.store(GZ + cols, (d * (1.0 - f)).to(GZ.dtype.element_ty), mask=mask)
        tl.store(GF + cols, (d * (c_prev - z)).to(GF.dtype.element_ty), mask=mask)
        if HAS_C0:
            tl.store(GC0 + cols, (d * f).to(GC0.dtype.element_ty), mask=mask)

    return triton, _fm_fwd_kernel, _fm_bwd_kernel


_TRITON_BLOCK = 128
_TRITON_WARPS = 4


def _triton_grid(N):
    return ((N + _TRITON_BLOCK - 1) // _TRITON_BLOCK,)


class _ForgetMultTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, z, c0):
        _, fwd, _ = _TRITON["kernels"]
        f = f.contiguous()
        z = z.contiguous()
        c0c = None if c0 is None else c0.contiguous()
        T = f.shape[0]
        N = f[0].numel()
        c = torch.empty_like(f)
        fwd[_triton_grid(N)](f, z, c0c if c0c is not None else f, c, T, N,
                             HAS_C0=c0c is not None, BLOCK=_TRITON_BLOCK,
                             num_warps=_TRITON_WARPS)
        ctx.save_for_backward(f, z, c0c, c)
        return c

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_c):
        _, _, bwd = _TRITON["kernels"]
        f, z, c0, c = ctx.saved_tensors
        g = grad_c.contiguous()
        T = f.shape[0]
        N = f[0].numel()
        grad_f = torch.empty_like(f)
        grad_z = torch.empty_like(z)
        grad_c0 = None if c0 is None else torch.empty_like(c0)
        bwd[_triton_grid(N)](f, z, c, c0 if c0 is not None else f, g, grad_f, grad_z,
                             grad_c0 if grad_c0 is not None else f, T, N,
                             HAS_C0=c0 is not None, BLOCK=_TRITON_BLOCK,
                             num_warps=_TRITON_WARPS)
        return grad_f, grad_z, grad_c0


def _triton_self_check(device):
    """Compare the kernels with the sequential back-end on a small problem."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    for T, use_c0 in ((1, True), (9, False), (33, True)):
        f = torch.rand(T, 3, 37, generator=gen).to(device).requires_grad_()
        z = torch.randn(T, 3, 37, generator=gen).to(device).requires_grad_()
        c0 = torch.randn(3, 37, generator=gen).to(device).requires_grad_() if use_c0 else None
        g = torch.randn(T, 3, 37, generator=gen).to(device)
        inputs = (f, z) + ((c0,) if use_c0 else ())
        out_t = _ForgetMultTriton.apply(f, z, c0)
        grads_t = torch.autograd.grad(out_t, inputs, g)
        out_r = _ForgetMultSequential.apply(f, z, c0)
        grads_r = torch.autograd.grad(out_r, inputs, g)
        for x, y in zip((out_t,) + grads_t, (out_r,) + grads_r):
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5):
                raise RuntimeError("Triton forget-mult self-check mismatch "
                                   f"(T={T}, max err {(x - y).abs().max().item():.3g})")


def triton_available(device=None):
    """True if the Triton back-end can be used (CUDA, triton importable, not disabled).

    Loads the kernels and runs the one-time self-check on first call.
    """
    if _env_true("QRNN_NO_TRITON") or not torch.cuda.is_available():
        return False
    if _TRITON["state"] is None:
        try:
            _TRITON["kernels"] = _load_triton_kernels()
            _TRITON["state"] = "checking"
            # the first call may come from inside no_grad / autocast (e.g. an evaluation pass)
            with torch.enable_grad(), torch.autocast("cuda", enabled=False):
                _triton_self_check(device if device is not None else torch.device("cuda"))
            _TRITON["state"] = "ok"
        except Exception as exc:  # ImportError, compilation or self-check failure
            _TRITON["state"] = "off"
            _TRITON["error"] = exc
            if not isinstance(exc, ImportError):
                warnings.warn(f"QRNN: Triton forget-mult disabled ({exc!r}); "
                              "using the torch parallel scan instead.")
    return _TRITON["state"] in ("ok", "checking")


def forget_mult_triton(f, z, c0=None):
    """``forget_mult`` with the Triton back-end (CUDA tensors only)."""
    if not f.is_cuda:
        raise ValueError("the triton back-end needs CUDA tensors")
    if not triton_available(f.device):
        raise RuntimeError(f"the triton back-end is unavailable ({_TRITON['error']!r})")
    f, z, c0 = _common_dtype(f, z, c0)
    return _ForgetMultTriton.apply(f, z, c0)


def _triton_usable_for(f, z, c0):
    dtype = torch.promote_types(f.dtype, z.dtype)
    if c0 is not None:
        dtype = torch.promote_types(dtype, c0.dtype)
    # int32 offsets in the kernels: the whole (T, N) tensor must index below 2**31
    return (f.is_cuda and dtype in (torch.float32, torch.float16, torch.bfloat16)
            and f.numel() < 2 ** 31 and triton_available(f.device))


# ---------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------

def _common_dtype(f, z, c0):
    dtype = torch.promote_types(f.dtype, z.dtype)
    if c0 is not None:
        dtype = torch.promote_types(dtype, c0.dtype)
        c0 = c0.to(dtype)
    return f.to(dtype), z.to(dtype), c0


def forget_mult(f, z, c0=None, backend=None):
    """c_t = f_t * c_{t-1} + (1 - f_t) * z_t for t = 0..T-1 with c_{-1} = c0.

    f, z: (T, *shape) (typically (T, B, H)); c0: ``shape`` or None (zeros).
    Returns c: (T, *shape), differentiable w.r.t. f, z and c0.

    backend: None / "auto" picks "triton" for CUDA tensors when available
    (float32/16/bf16; disable with QRNN_NO_TRITON=1), else "scan" on CUDA,
    else "sequential"; while a model is traced (torch.jit.trace, export.py),
    the TorchScript-compiled "loop".  See the module docstring for the others.
    """
    if f.shape != z.shape:
        raise ValueError(f"f and z must have the same shape, got {tuple(f.shape)} and {tuple(z.shape)}")
    if f.dim() < 1 or f.shape[0] == 0:
        raise ValueError("forget_mult needs at least one timestep")
    if c0 is not None and c0.shape != f.shape[1:]:
        raise ValueError(f"c0 must have shape {tuple(f.shape[1:])}, got {tuple(c0.shape)}")
    if backend is None or backend == "auto":
        if torch.jit.is_tracing():  # export.py: the one back-end a trace can keep as a loop
            f, z, c0 = _common_dtype(f, z, c0)
            return forget_mult_loop_scripted()(f, z, c0)
        if f.is_cuda:
            backend = "triton" if _triton_usable_for(f, z, c0) else "scan"
        else:
            backend = "sequential"
    if backend == "sequential":
        return forget_mult_sequential(f, z, c0)
    if backend == "scan":
        return forget_mult_scan(f, z, c0)
    if backend == "triton":
        return forget_mult_triton(f, z, c0)
    if backend == "loop":
        f, z, c0 = _common_dtype(f, z, c0)
        return forget_mult_loop(f, z, c0)
    raise ValueError(f"unknown forget_mult backend {backend!r}; expected one of {BACKENDS}")


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------

class QRNNLayer(nn.Module):
    """One QRNN layer with fo-pooling.

    Args:
        input_size: features of the input.
        hidden_size: features of the output / cell state (default input_size).
        save_prev_x: with window 2, keep the last timestep of the input
            (detached) across calls and use it as x_{t-1} for the first step
            of the next call (zeros on the first call, after ``reset()``, or
            if the batch shape changed).  No effect with window 1.
        zoneout: zoneout probability p in [0, 1) (Krueger et al. 2016,
            "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
            Activations"), applied to the cell state as in Salesforce's
            pytorch-qrnn, which the original AWD-LSTM used.  Here the forget
            gate F_t weights c_{t-1} and the candidate weight is 1 - F_t.

            * Training: independently for every timestep, batch row and unit,
              with probability p the unit *keeps its previous cell state*:
              its candidate weight is set to 0, hence c_t = c_{t-1} and
              h_t = O_t * c_{t-1} (h_t = c_{t-1} without the output gate).
              This is done as F_t = 1 and Z_t = 0, so that the sequential,
              loop and Triton back-ends give c_{t-1} bit for bit (the
              parallel scan, which regroups the products, up to rounding).  With probability 1 - p the unit follows the
              normal recurrence with its own F_t and Z_t.  No rescaling.
            * Evaluation: deterministic, the expected update: the candidate
              weight is multiplied by 1 - p, i.e.
              c_t = (1 - (1 - p)(1 - F_t)) c_{t-1} + (1 - p)(1 - F_t) Z_t.

            pytorch-qrnn writes its recurrence the other way round
            (c_t = f_t z_t + (1 - f_t) c_{t-1}, its gate weighting the new
            candidate), multiplies that gate by a Bernoulli(1 - p) mask in
            training and by 1 - p in evaluation: the same behaviour as
            above.  Only the gates are transformed, before the forget-mult,
            so every back-end (sequential, scan, Triton) sees it alike.
            zoneout=0 (every AWD-LSTM recipe) leaves the layer untouched.
        window: 1 (x_t) or 2 ([x_t, x_{t-1}], current first).
        output_gate: if False, h_t = c_t (no O gate).
        bias: bias of the linear map (extra keyword, default True).

    ``self.linear`` is an ``nn.Linear(window * input_size, k * hidden_size)``
    with k = 3 (Z, F, O) or 2 (Z, F), rows ordered Z, F[, O].  The layer only
    ever calls it as a module, so it may be replaced by a wrapper (e.g.
    WeightDrop / DropConnect) whose forward(x) applies the map.

    forward(X, hidden=None): X (seq_len, batch, input_size); hidden is the
    previous cell state c, (1, batch, hidden), (batch, hidden) or None
    (zeros).  Returns (H, C_last): H (seq_len, batch, hidden_size) and
    C_last (1, batch, hidden_size), the last cell state (not detached).
    """

    def __init__(self, input_size, hidden_size=None, save_prev_x=False, zoneout=0, window=1,
                 output_gate=True, bias=True):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNNLayer supports window 1 or 2, got {window!r}")
        if not 0 <= zoneout < 1:
            raise ValueError(f"zoneout must be in [0, 1), got {zoneout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size if hidden_size is not None else input_size
        self.save_prev_x = save_prev_x
        self.zoneout = zoneout
        self.window = window
        self.output_gate = output_gate
        self.prevX = None
        n_gates = 3 if output_gate else 2
        self.linear = nn.Linear(window * input_size, n_gates * self.hidden_size, bias=bias)

    def reset(self):
        """Forget the saved previous input (call between training and evaluation passes)."""
        self.prevX = None

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, "
                f"save_prev_x={self.save_prev_x}, zoneout={self.zoneout}, "
                f"output_gate={self.output_gate}")

    def _previous_input(self, X):
        prev = self.prevX
        if prev is None or prev.shape[1:] != X.shape[1:]:
            return X.new_zeros((1,) + tuple(X.shape[1:]))
        return prev.to(device=X.device, dtype=X.dtype)

    def forward(self, X, hidden=None):
        if X.dim() != 3 or X.shape[2] != self.input_size:
            raise ValueError(f"QRNNLayer expects input (seq_len, batch, {self.input_size}), "
                             f"got {tuple(X.shape)}")
        seq_len, batch = X.shape[0], X.shape[1]
        if self.window == 1:
            source = X
        else:
            if self.save_prev_x:
                prev = self._previous_input(X)
                self.prevX = X[-1:].detach()
            else:
                prev = X.new_zeros((1,) + tuple(X.shape[1:]))
            X_prev = torch.cat([prev, X[:-1]], 0) if seq_len > 1 else prev
            source = torch.cat([X, X_prev], 2)

        Y = self.linear(source)
        if self.output_gate:
            Z, Fg, O = Y.chunk(3, dim=2)
        else:
            Z, Fg = Y.chunk(2, dim=2)
            O = None
        Z = torch.tanh(Z)
        if not self.zoneout:
            Fg = torch.sigmoid(Fg)
        elif self.training:
            # keep ~ Bernoulli(1 - p); where it is 0 the unit keeps c_{t-1}.
            # F = 1 alone is not enough for an exact copy (z + 1 * (c - z) rounds);
            # with Z = 0 too, z + f * (c - z) and f * c + (1 - f) * z are c itself.
            keep = torch.empty_like(Fg).bernoulli_(1 - self.zoneout).bool()
            Fg = torch.where(keep, torch.sigmoid(Fg), 1.0)
            Z = torch.where(keep, Z, 0.0)
        else:
            # candidate weight (1 - F) * (1 - p); 1 - F = sigmoid(-x) is computed
            # directly (no cancellation) and the result stays in [0, 1].
            Fg = 1 - (1 - self.zoneout) * torch.sigmoid(-Fg)

        c0 = None
        if hidden is not None:
            if hidden.dim() == 3:
                if hidden.shape[0] != 1:
                    raise ValueError(f"hidden must be (1, batch, hidden) or (batch, hidden), "
                                     f"got {tuple(hidden.shape)}")
                hidden = hidden[0]
            if hidden.shape != (batch, self.hidden_size):
                raise ValueError(f"hidden must be (1, {batch}, {self.hidden_size}) or "
                                 f"({batch}, {self.hidden_size}), got {tuple(hidden.shape)}")
            c0 = hidden

        C = forget_mult(Fg, Z, c0)
        H = torch.sigmoid(O) * C if O is not None else C
        return H, C[-1:]


class QRNN(nn.Module):
    """A unidirectional stack of QRNNLayers with an nn.LSTM-like signature.

    window: None means 2 for the first layer and 1 for the others (the
    AWD-LSTM recipe); an int applies to every layer.  dropout: applied to the
    outputs of every layer but the last, in training (as nn.LSTM).
    batch_first and bidirectional are not supported (ValueError).

    forward(input, hidden=None): input (seq_len, batch, input_size); hidden
    (num_layers, batch, hidden_size) cell states or None.  Returns
    (output (seq_len, batch, hidden_size), h_n (num_layers, batch, hidden_size)),
    h_n holding each layer's last cell state c (the QRNN's recurrent state).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0, bidirectional=False, save_prev_x=False, zoneout=0, window=None,
                 output_gate=True):
        super().__init__()
        if bidirectional:
            raise ValueError("QRNN: bidirectional is not supported")
        if batch_first:
            raise ValueError("QRNN: batch_first is not supported; pass (seq_len, batch, features)")
        if num_layers < 1:
            raise ValueError("QRNN: num_layers must be >= 1")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.layers = nn.ModuleList(
            QRNNLayer(input_size if i == 0 else hidden_size, hidden_size,
                      save_prev_x=save_prev_x, zoneout=zoneout,
                      window=(2 if i == 0 else 1) if window is None else window,
                      output_gate=output_gate, bias=bias)
            for i in range(num_layers))

    def reset(self):
        for layer in self.layers:
            layer.reset()

    def forward(self, input, hidden=None):
        if hidden is not None and hidden.shape[0] != self.num_layers:
            raise ValueError(f"hidden must be ({self.num_layers}, batch, {self.hidden_size}), "
                             f"got {tuple(hidden.shape)}")
        next_hidden = []
        out = input
        for i, layer in enumerate(self.layers):
            out, h = layer(out, None if hidden is None else hidden[i])
            next_hidden.append(h)
            if self.dropout and i < self.num_layers - 1:
                out = F_nn.dropout(out, p=self.dropout, training=self.training)
        return out, torch.cat(next_hidden, 0)
