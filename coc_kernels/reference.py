"""Torch paths of the Context Cluster mixer.

Torch forms of the same math (see ``docs/design.md`` and the public CoC code):

* :func:`context_cluster_dense` - a faithful restatement of the original ``Cluster.forward`` (minus the
  1x1 convs): dense ``[G, M, N]`` similarity, a one-hot mask, ``[G, M, N, d]`` products for the
  aggregate and dispatch steps. It is the oracle the other paths are tested against.
* :func:`context_cluster_light` - the same result without any ``[G, M, N, d]`` temporary: one
  ``[G, N, M]`` similarity (freed after the forward), the hard assignment taken under ``no_grad``, and
  only ``sigma_n = s[a_n, n]`` kept for autograd (which saves O(G * N * d)). This is what CPU users get
  by default.
* :func:`context_cluster_export` - the light math in one piece (no per-image/head chunk loop) with the
  adaptive pooling written as two matrix products whose windows are computed from the map's size, so that
  a traced graph is small and keeps height and width symbolic: what ``torch.onnx.export`` records.

Shapes: ``x [B, heads*d, H, W]``, ``value [B, heads*dv, H, W]``, ``alpha``/``beta`` one-element tensors.
Every ``fh x fw`` grid cell ("region", ``rh x rw`` pixels) of every head of every image is one group;
``G = B * heads * fh * fw`` and ``N = rh * rw``, ``M = ph * pw`` centres per group.

``denominator`` selects the normaliser of the aggregate step ``o_m = (U_m + vc_m) / (D_m + 1)``:
``"similarity"`` (``D_m = sum of sigma_n`` over those points: the paper's Eq. 1, the public code since
2023-05-31 and its re-published ImageNet checkpoints; the default) or ``"count"`` (``D_m`` = number of
points assigned to centre m, ``mask.sum``: the code before that fix, with which the paper's COCO and
ADE20K models were trained).
"""
from __future__ import annotations

import contextlib
import os
from typing import Tuple

import torch
import torch.nn.functional as F

DENOMINATORS = ("count", "similarity")
#: the paper's Eq. 1, the public code since 2023-05-31 and its ImageNet checkpoints re-published in Feb 2024;
#: "count" is what the earlier code (and the COCO / ADE20K models of the paper's tables) used
DEFAULT_DENOMINATOR = "similarity"


#: the most elements one image (``C x H x W``) of x or value may have on the fused path: its kernels address an
#: image with 32-bit offsets (their other products are bounded by it or computed in 64 bits)
MAX_FUSED_IMAGE_ELEMENTS = 2 ** 31 - 1


def triton_interpreting() -> bool:
    """True where ``TRITON_INTERPRET`` asks Triton to run kernels in its CPU interpreter (set before triton is
    imported): the fused path then takes CPU tensors, and its split dots take fp32 operands."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision every path computes in: fp32, or fp64 for fp64 inputs (tests, gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def torch_math(fn, x: torch.Tensor, value: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, **kw):
    """Run a torch path ``fn`` as the fused one computes: in fp32 (fp64 for fp64 inputs) whatever the input
    precision or an enclosing autocast, alpha/beta cast to that precision, the output in value's dtype. (An
    autocast-off region is entered only under autocast: a traced graph, e.g. an ONNX export, has none.)"""
    acc = compute_dtype(x.dtype)
    # (meta tensors have no autocast: asking about it raises)
    under_autocast = x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)
    with torch.autocast(x.device.type, enabled=False) if under_autocast else contextlib.nullcontext():
        alpha, beta = alpha.to(acc), beta.to(acc)
        y = fn(x.to(acc), value.to(acc), alpha, beta, **kw)
        if x.is_cuda or torch.compiler.is_compiling():  # no host check of alpha/beta ran: NaN out if not finite
            y = y + (alpha * 0.0 + beta * 0.0).reshape(())
    return y.to(value.dtype)


def input_grads(y: torch.Tensor, inputs, needs_grad, dy: torch.Tensor, create_graph: bool) -> list:
    """Gradients of ``y`` (seeded with ``dy``) for the inputs whose ``needs_grad`` is true, None for the rest;
    an input ``y`` does not depend on gets zeros (what autograd expects of a backward that was asked for it)."""
    want = [i for i, need in enumerate(needs_grad) if need]
    got = torch.autograd.grad(y, [inputs[i] for i in want], dy, create_graph=create_graph, allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(want, got):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return grads


def to_groups(t: torch.Tensor, heads: int, fold: Tuple[int, int]) -> torch.Tensor:
    """``[B, heads*c, H, W] -> [G, c, rh, rw]`` with ``G = B*heads*fh*fw``.

    The group order, everywhere in this package (kernels included: ``_group_offset``): image, head, region
    row i, region column j, i.e. ``g = ((b*heads + h)*fh + i)*fw + j``; a group's points row-major."""
    B, C, H, W = t.shape
    fh, fw = fold
    c = C // heads
    t = t.reshape(B, heads, c, fh, H // fh, fw, W // fw)
    return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(B * heads * fh * fw, c, H // fh, W // fw)


def from_groups(t: torch.Tensor, B: int, heads: int, fold: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_groups`: ``[G, c, rh, rw] -> [B, heads*c, fh*rh, fw*rw]``."""
    G, c, rh, rw = t.shape
    fh, fw = fold
    t = t.reshape(B, heads, fh, fw, c, rh, rw).permute(0, 1, 4, 2, 5, 3, 6)
    return t.reshape(B, heads * c, fh * rh, fw * rw)


def _pool(t: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(t, size)``; under ``torch.compile`` as :func:`adaptive_avg_pool_matmul`, the same
    windows: inductor's lowering of the adaptive pooling pins the input's height and width to integers (a
    symbolic image size would compile a new graph for every size)."""
    if torch.compiler.is_compiling():
        return adaptive_avg_pool_matmul(t, size)
    return F.adaptive_avg_pool2d(t, size)


def _dense_similarity(xg: torch.Tensor, alpha, beta, proposal) -> torch.Tensor:
    """``s = sigmoid(beta + alpha * cos(centre, point))`` of groups ``xg [G, d, rh, rw]``: ``[G, M, N]``."""
    centres = _pool(xg, proposal)  # [G, d, ph, pw]
    c_hat = F.normalize(centres.flatten(2).transpose(1, 2), dim=-1)  # [G, M, d]
    x_hat = F.normalize(xg.flatten(2).transpose(1, 2), dim=-1)  # [G, N, d]
    return torch.sigmoid(beta + alpha * torch.matmul(c_hat, x_hat.transpose(-2, -1)))


def context_cluster_dense(x, value, alpha, beta, *, heads: int, proposal, fold, denominator=DEFAULT_DENOMINATOR):
    """The original mixer body, restated: dense similarity, one-hot mask, ``[G, M, N, d]`` products."""
    B = x.shape[0]
    xg = to_groups(x, heads, fold)  # [G, d, rh, rw]
    vg = to_groups(value, heads, fold)  # [G, dv, rh, rw]
    G, d, rh, rw = xg.shape
    vcentres = _pool(vg, proposal).flatten(2).transpose(1, 2)  # [G, M, dv]
    sim = _dense_similarity(xg, alpha, beta, proposal)  # [G, M, N]
    _, idx = sim.max(dim=1, keepdim=True)
    mask = torch.zeros_like(sim)
    mask.scatter_(1, idx, 1.0)
    sim = sim * mask
    v2 = vg.flatten(2).transpose(1, 2)  # [G, N, dv]
    den = mask.sum(dim=-1, keepdim=True) if denominator == "count" else sim.sum(dim=-1, keepdim=True)
    out = ((v2.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + vcentres) / (den + 1.0)  # [G, M, dv]
    out = (out.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)  # [G, N, dv]
    out = out.transpose(1, 2).reshape(G, -1, rh, rw)
    return from_groups(out, B, heads, fold)


def cluster_assignment_dense(x, alpha, beta, *, heads: int, proposal, fold) -> torch.Tensor:
    """The original's assignment (argmax over centres of the dense similarity, first index on ties), as a map
    ``[B, heads, H, W]`` int64: the oracle for the light path's and the kernels' assignment."""
    B = x.shape[0]
    xg = to_groups(x, heads, fold)
    G, _, rh, rw = xg.shape
    idx = _dense_similarity(xg, alpha, beta, proposal).max(dim=1).indices  # [G, N]
    return group_map(idx, B, heads, fold, (rh, rw))


def group_map(t: torch.Tensor, B: int, heads: int, fold: Tuple[int, int], region: Tuple[int, int]) -> torch.Tensor:
    """One value per point in group order, ``[G, N] -> [B, heads, H, W]`` (an assignment or sigma map)."""
    return from_groups(t.reshape(t.shape[0], 1, *region), B, heads, fold)


def _points(t: torch.Tensor, heads: int, fold: Tuple[int, int]) -> torch.Tensor:
    """``[B, heads*c, H, W] -> [G, N, c]`` contiguous (channels last: norms and dots over c are cheap)."""
    B, C, H, W = t.shape
    fh, fw = fold
    t = t.reshape(B, heads, C // heads, fh, H // fh, fw, W // fw).permute(0, 1, 3, 5, 4, 6, 2)
    return t.reshape(B * heads * fh * fw, (H // fh) * (W // fw), C // heads)


def _pool_matrix(n, out: int, like: torch.Tensor) -> torch.Tensor:
    """``[out, n]`` averaging matrix of ``adaptive_avg_pool`` from ``n`` to ``out`` along one axis: row i
    is ``1/len`` on ``floor(i*n/out) <= p < ceil((i+1)*n/out)``. ``n`` may be a symbolic size (export)."""
    i = torch.arange(out, device=like.device).unsqueeze(1)
    start, end = (i * n) // out, ((i + 1) * n + out - 1) // out
    p = torch.arange(n, device=like.device).unsqueeze(0)
    window = ((p >= start) & (p < end)).to(like.dtype)
    return window / (end - start).to(like.dtype)


def adaptive_avg_pool_matmul(t: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(t, size)`` as ``P_h @ t @ P_w^T`` (same windows; sums in another order):
    standard MatMul nodes in an exported graph, for any (symbolic) input size."""
    return _pool_matrix(t.shape[-2], size[0], t) @ t @ _pool_matrix(t.shape[-1], size[1], t).transpose(0, 1)


def _region_centres(t: torch.Tensor, heads: int, proposal, fold, pool=F.adaptive_avg_pool2d) -> torch.Tensor:
    """Adaptive-avg-pool centres of every region: ``[G, M, c]``.

    Pooling the whole map to ``(fh*ph, fw*pw)`` gives exactly each region's own windows: window
    ``k*ph + j`` spans ``floor((k*ph + j)*rh/ph) = k*rh + floor(j*rh/ph)`` (and likewise its end), so
    no per-region copy is needed.
    """
    B, C, H, W = t.shape
    (fh, fw), (ph, pw) = fold, proposal
    c = pool(t, (fh * ph, fw * pw)).reshape(B, heads, C // heads, fh, ph, fw, pw)
    return c.permute(0, 1, 3, 5, 4, 6, 2).reshape(B * heads * fh * fw, ph * pw, C // heads)


def assign_light(x, alpha, beta, *, heads: int, proposal, fold, pool=F.adaptive_avg_pool2d):
    """Hard assignment without ``[G, M, N, d]`` temporaries.

    Returns ``a [G, N]`` (int64, first index of the maximum of the sigmoid) and ``sigma [G, N]``
    (``s[a_n, n]``; differentiable w.r.t. x, alpha, beta when grad mode needs it).
    """
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, alpha, beta))
    x_hat = F.normalize(_points(x, heads, fold), dim=-1)  # [G, N, d]
    c_hat = F.normalize(_region_centres(x, heads, proposal, fold, pool), dim=-1)  # [G, M, d]
    cos = torch.bmm(x_hat, c_hat.transpose(1, 2))  # [G, N, M]
    with torch.no_grad():
        s = (cos.detach() * alpha if need_grad else cos.mul_(alpha)).add_(beta).sigmoid_()
        s_max, a = s.max(dim=-1)  # max(dim) returns the first index of the maximum
        del s
    if not need_grad:
        return a, s_max
    return a, torch.sigmoid(beta + alpha * cos.gather(-1, a.unsqueeze(-1)).squeeze(-1))


def _pixel_centre_index(a: torch.Tensor, B: int, heads: int, H: int, W: int, proposal, fold) -> torch.Tensor:
    """Group-order assignment ``a [G, N]`` -> ``[B, heads, H*W]`` index into the pooled grid
    ``(fh*ph) x (fw*pw)`` (row-major), i.e. the pixel's centre in the whole-map pooling."""
    (ph, pw), (fh, fw) = proposal, fold
    G, N = a.shape
    a = a.reshape(B, heads, fh, fw, N)
    i = torch.arange(fh, device=a.device).view(fh, 1, 1)
    j = torch.arange(fw, device=a.device).view(1, fw, 1)
    g = (i * ph + a // pw) * (fw * pw) + j * pw + a % pw
    return group_map(g.reshape(G, N), B, heads, fold, (H // fh, W // fw)).reshape(B, heads, H * W)


CHUNK_ELEMS = 1 << 20  # similarity entries per chunk of the light path (4 MB in fp32: stays in cache)


def context_cluster_light(x, value, alpha, beta, *, heads: int, proposal, fold, denominator=DEFAULT_DENOMINATOR):
    """Memory-light torch path: same output and gradients as :func:`context_cluster_dense`.

    Work is split into chunks of (image, head, rows of regions) holding about ``CHUNK_ELEMS``
    similarity entries, so that the passes over each chunk run from cache (the path is memory-bound);
    every chunk is an independent set of groups, written into its slice of the output. Under ``torch.compile``
    the call is one piece (the same math, no chunk loop): the loop's bounds depend on H and W, so dynamo would
    guard on them and compile a new graph for every image size; its pooling is then :func:`_pool`'s matrix form.
    On the meta device (shapes only, no memory to keep in cache) it is one piece too.
    """
    if torch.compiler.is_compiling() or x.device.type == "meta":
        return _light(x, value, alpha, beta, heads, proposal, fold, denominator, pool=_pool)
    B, C, H, W = x.shape
    (ph, pw), (fh, fw) = proposal, fold
    d, dv, rh = C // heads, value.shape[1] // heads, H // fh
    rows = max(1, CHUNK_ELEMS // (W * rh * ph * pw))  # region rows per chunk
    if B * heads == 1 and rows >= fh:
        return _light(x, value, alpha, beta, heads, proposal, fold, denominator)
    out = value.new_empty(B, heads * dv, H, W)
    for b in range(B):
        for h in range(heads):
            for r0 in range(0, fh, rows):
                r1 = min(fh, r0 + rows)
                rs = slice(r0 * rh, r1 * rh)
                out[b:b + 1, h * dv:(h + 1) * dv, rs] = _light(
                    x[b:b + 1, h * d:(h + 1) * d, rs], value[b:b + 1, h * dv:(h + 1) * dv, rs], alpha, beta, 1,
                    proposal, (r1 - r0, fw), denominator)
    return out


def context_cluster_export(x, value, alpha, beta, *, heads: int, proposal, fold, denominator=DEFAULT_DENOMINATOR):
    """:func:`context_cluster_light` as one traceable piece: no chunk loop (a loop over images and heads
    unrolls into thousands of nodes) and the pooling as matrix products (:func:`adaptive_avg_pool_matmul`),
    so an exported graph has a few dozen standard ops per mixer (MatMul, ArgMax, ScatterElements add,
    GatherElements) and symbolic height and width. Same results as the light path up to summation order."""
    return _light(x, value, alpha, beta, heads, proposal, fold, denominator, pool=adaptive_avg_pool_matmul)


def _light(x, value, alpha, beta, heads, proposal, fold, denominator, pool=F.adaptive_avg_pool2d):
    """One chunk of :func:`context_cluster_light`. The value side never leaves the ``[B, C, H, W]``
    layout: centres of all regions come from one whole-map pooling, and aggregate / dispatch are a
    scatter-add / gather along the pixels into / from that pooled grid, indexed by each pixel's centre."""
    B, C, H, W = x.shape
    (ph, pw), (fh, fw) = proposal, fold
    P = fh * ph * fw * pw
    a, sigma = assign_light(x, alpha, beta, heads=heads, proposal=proposal, fold=fold, pool=pool)  # [G, N]
    gidx = _pixel_centre_index(a, B, heads, H, W, proposal, fold)  # [B, heads, HW]
    sig = group_map(sigma, B, heads, fold, (H // fh, W // fw)).reshape(B, heads, 1, H * W)
    dv = value.shape[1] // heads
    v = value.reshape(B, heads, dv, H * W)
    idx = gidx.unsqueeze(2).expand(-1, -1, dv, -1)
    vc = pool(value, (fh * ph, fw * pw)).reshape(B, heads, dv, P)
    U = v.new_zeros(B, heads, dv, P).scatter_add_(3, idx, sig * v)
    weight = torch.ones_like(sig) if denominator == "count" else sig
    den = sig.new_zeros(B, heads, 1, P).scatter_add_(3, gidx.unsqueeze(2), weight)
    o = (U + vc) / (den + 1.0)  # [B, heads, dv, P]
    # The original's dense sums multiply every value by every centre's (mostly zero) weight, so a non-finite
    # value in channel c makes channel c of its whole group NaN (inf * 0); the scatter above reaches only one
    # centre and one window: spread it over the group's centres the same way.
    o6 = o.reshape(B, heads, dv, fh, ph, fw, pw)
    o = (o6 + (o6 * 0.0).sum(dim=(4, 6), keepdim=True)).reshape(B, heads, dv, P)
    return (torch.gather(o, 3, idx) * sig).reshape(B, heads * dv, H, W)


def cluster_assignment_light(x, alpha, beta, *, heads: int, proposal, fold) -> torch.Tensor:
    """Centre index of every pixel and head: ``[B, heads, H, W]`` int64 (index m = i*pw + j)."""
    B, _, H, W = x.shape
    with torch.no_grad():
        a, _ = assign_light(x, alpha, beta, heads=heads, proposal=proposal, fold=fold)
    return group_map(a, B, heads, fold, (H // fold[0], W // fold[1]))
