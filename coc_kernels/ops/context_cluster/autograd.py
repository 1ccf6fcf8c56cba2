"""Autograd of the fused op and its custom ops: :class:`ClusterFunction` (eager, the host functions called
directly) and ``torch.ops.coc_kernels.cluster_fwd`` / ``cluster_bwd`` (what ``torch.compile`` traces, with fake
implementations for shapes); both save the same state and share :func:`_grads`."""
from __future__ import annotations

import torch
from torch import Tensor

from ...reference import compute_dtype, context_cluster_light, input_grads, torch_math
from .host import fused_backward
from .tuning import tuned_forward
from .launch import capture, restored


class ClusterFunction(torch.autograd.Function):
    """Eager autograd of the fused op: calls :func:`~.tuning.tuned_forward` / :func:`fused_backward` directly (the
    custom ops below wrap the same functions for ``torch.compile``, at a higher per-call cost in eager mode); both
    share :func:`_setup_context` and :func:`_grads`."""

    @staticmethod
    def forward(ctx, *inputs):
        out = tuned_forward(*inputs)
        _setup_context(ctx, inputs, out)
        ctx.launch_state = capture()  # the backward launches as this forward did, in autograd's thread too
        return out[0]

    @staticmethod
    def backward(ctx, dy):
        return _grads(ctx, dy, eager=True)


@torch.library.custom_op("coc_kernels::cluster_fwd", mutates_args=())
def cluster_fwd(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int,
                fh: int, fw: int, by_count: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward as a custom op (what ``torch.compile`` sees). See :func:`~.host.fused_forward` (tuned first:
    :func:`~.tuning.tuned_forward`)."""
    return tuned_forward(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count)


@cluster_fwd.register_fake
def _cluster_fwd_fake(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count):
    B, _, H, W = x.shape
    D, DV = x.shape[1] // heads, value.shape[1] // heads
    G, N, M = B * heads * fh * fw, (H // fh) * (W // fw), ph * pw
    acc = compute_dtype(x.dtype)
    return (value.new_empty(B, heads * DV, H, W), x.new_empty(G, N, dtype=torch.int32),
            x.new_empty(G, N, dtype=acc), x.new_empty(G, M, D, dtype=acc),
            x.new_empty(G, M, DV, dtype=acc), x.new_empty(G, M, dtype=acc))


@torch.library.custom_op("coc_kernels::cluster_bwd", mutates_args=())
def cluster_bwd(dy: Tensor, x: Tensor, value: Tensor, alpha: Tensor, a: Tensor, sigma: Tensor, c: Tensor,
                o: Tensor, den: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int,
                by_count: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward as a custom op. See :func:`fused_backward`."""
    return fused_backward(dy, x, value, alpha, a, sigma, c, o, den, heads, ph, pw, fh, fw, by_count)


@cluster_bwd.register_fake
def _cluster_bwd_fake(dy, x, value, alpha, a, sigma, c, o, den, heads, ph, pw, fh, fw, by_count):
    # the real outputs are fresh contiguous tensors (never channels_last, whatever x's layout)
    acc = compute_dtype(x.dtype)
    return (x.new_empty(x.shape), value.new_empty(value.shape), alpha.new_empty(alpha.shape, dtype=acc),
            alpha.new_empty(alpha.shape, dtype=acc))


def _setup_context(ctx, inputs, output):
    x, value, alpha, beta, heads, ph, pw, fh, fw, by_count = inputs
    _, a, sigma, c, o, den = output
    ctx.save_for_backward(x, value, alpha, beta, a, sigma, c, o, den)
    ctx.geom = (heads, ph, pw, fh, fw, by_count)
    ctx.set_materialize_grads(False)  # a, sigma, c, o, den get no gradient: no zero tensors for them


def _grads(ctx, dy, eager: bool):
    """Gradients of (x, value, alpha, beta), none at all when no gradient reaches y (grads are not materialised
    as zeros). ``eager``: from :class:`ClusterFunction`, which calls :func:`fused_backward` directly and, under
    ``backward(create_graph=True)``, differentiates the reference math instead; otherwise from the custom op,
    through ``cluster_bwd``."""
    if dy is None:
        return (None,) * 10
    x, value, alpha, beta, a, sigma, c, o, den = ctx.saved_tensors
    if eager and torch.is_grad_enabled():
        return _differentiable_grads(ctx, dy, x, value, alpha, beta) + (None,) * 6
    if eager:
        with restored(ctx.launch_state):
            dx, dv, dalpha, dbeta = fused_backward(dy, x, value, alpha, a, sigma, c, o, den, *ctx.geom)
    else:
        dx, dv, dalpha, dbeta = cluster_bwd(dy, x, value, alpha, a, sigma, c, o, den, *ctx.geom)
    return (dx, dv, dalpha.reshape(alpha.shape).to(alpha.dtype), dbeta.reshape(beta.shape).to(beta.dtype),
            None, None, None, None, None, None)


def _differentiable_grads(ctx, dy, x, value, alpha, beta):
    """``backward(create_graph=True)`` (double backward, gradient penalties): the kernels' backward is not
    itself differentiable, so these gradients come from the reference math, with a graph."""
    heads, ph, pw, fh, fw, by_count = ctx.geom
    ins = (x, value, alpha, beta)
    y = torch_math(context_cluster_light, *ins, heads=heads, proposal=(ph, pw), fold=(fh, fw),
                   denominator="count" if by_count else "similarity")
    return tuple(input_grads(y, ins, ctx.needs_input_grad[:4], dy, create_graph=True))


def _backward(ctx, dy, *_unused):
    return _grads(ctx, dy, eager=False)


cluster_fwd.register_autograd(_backward, setup_context=_setup_context)
