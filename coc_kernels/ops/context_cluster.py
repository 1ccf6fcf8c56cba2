"""Triton kernels of the Context Cluster mixer, the custom ops that launch them, and their autograd.

A *group* g is one (image, head, region); its N = rh*rw points are the region's pixels, addressed in the
``[B, C, H, W]`` tensors, which the op makes contiguous (a no-op for the 1x1 convs' outputs): the W stride is the
compile-time 1. A group's rows are split into ``NC`` *chunks* of ``RPC`` rows; every kernel runs on a
``(G, NC)`` grid, so a stage with few groups (stage 4: 16) still fills the GPU. Per-group quantities (centres,
cluster aggregates, their gradients) are sums over chunks: each program writes its chunk's partial sum, and
the next kernel adds the ``NC`` partials in a fixed order. No float atomics anywhere: results are bitwise
reproducible for a given shape.

Tiles are ``[channels, BR x BW points]``: BR rows of BW consecutive columns of the region (BW a power of two
with few masked columns: 16 for the detection models' 42-wide regions), points along the fast axis, so a
warp's lanes run along W; the image and region widths are passed as multiples of a vector width VEC
(constexpr), which lets the compiler emit 8- or 16-byte accesses. Each tile loop is software-pipelined
(``tl.range(..., num_stages=STAGES)``: the next tile's loads go out as ``cp.async``). Window membership is
tested with multiplications (no integer division per point) and the tile's rows and columns advance as carried
counters. Scatters over the assignment (cluster sums, their gradients) and into the pooling windows are dot
products with one-hot / window-membership tiles, and the similarities a dot of centres and points; all run on
tensor cores at fp32 accuracy (the "split" precision): the fp32 operand is cut into three bf16 pieces that sum
to it exactly, the 0/1 operand is exact in bf16, so three bf16 products with fp32 accumulation lose nothing but
the order of the sums (``_dot_exact``); the dense-by-dense similarity takes the six products above 2**-24
(``_dot_dense``). TF32 (10 bits) would flip assignments against the fp32 reference; FMA dots ("ieee", still
selectable, and what fp64 inputs take) cost ~1,000-2,400 FMAs per point. Window weights ``1/|window|`` are
applied once per window after the sums. Gathers (``o[a_n]``, ``dU[a_n]``, ``c_hat[a_n]``, and the pooling
adjoints, a point lying in at most 2x2 windows) are loads from a tiny per-program copy of the group state
that stays in L1/L2.

Forward, 3 launches:
  1. ``_pool_kernel``: partial window sums of x for the centres ``c`` (adaptive-avg-pool windows);
  2. ``_assign_kernel``: ``c = sum of partials``; ``s = sigmoid(beta + alpha <c_hat, x_hat>)``,
     ``a = argmax_m s`` (first index on ties), ``sigma = max_m s``; partial sums of
     ``U + vc = sum_n (onehot*sigma + pool weight) v_n`` and of the denominator;
  3. ``_dispatch_kernel``: ``o = (U + vc) / (den + 1)``, ``y_n = sigma_n * o[a_n]``.
Backward, 3 launches:
  1. ``_bwd_do_kernel``: partial ``do_m = sum_{a_n=m} sigma_n dy_n``;
  2. ``_bwd_main_kernel``: dv (complete), partial dalpha/dbeta, the direct part of dx, partial ``d c_hat``;
  3. ``_bwd_pool_kernel``: ``dc`` through the normalisation, its pooling adjoint added to dx; the
     dalpha/dbeta partials summed in a fixed order.
Saved for backward: ``a [G, N]`` int32, ``sigma [G, N]``, ``c [G, M, d]``, ``o [G, M, dv]``,
``den [G, M]``: O(G (N + M d)), never a ``[G, M, N]`` tensor.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import compute_dtype, context_cluster_light, torch_math, triton_interpreting


def _kernel(fn):
    """``triton.jit`` without value specialisation of any integer argument: sizes change with every image
    (detection inputs vary in size), and the rest (folds, centres) gains nothing from it, so each (block
    sizes, tile width, vector width, dtypes) configuration compiles once. What the compiler must know to
    coalesce and vectorise is constexpr instead: the W stride (1: inputs are contiguous) and the vector width
    that the image and region widths are multiples of (they arrive divided by it)."""
    import inspect
    ints = [name for name, p in inspect.signature(fn).parameters.items()
            if not name.endswith("_ptr") and "constexpr" not in str(p.annotation)]
    return triton.jit(do_not_specialize=ints)(fn)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
# Tiles. The op makes x, value and dy contiguous ``[B, C, H, W]`` (a no-op for the 1x1 convs' outputs), so a
# pixel's W stride is the compile-time 1 and the H stride is W. A tile is ``[channels, BR x BW]``: BR rows of
# BW consecutive columns of one region, the points axis (fastest in registers) running along W, so a warp's
# lanes read whole row segments. Sizes that must be multiples of the vector width for 2- or 4-element
# accesses (the image width W and the region width rw) arrive as ``W_v = W / VEC`` and ``rw_v = rw / VEC``
# with VEC a constexpr: ``W = W_v * VEC`` tells the compiler what it needs to emit vector loads, without a
# value specialisation per image size.
@triton.jit
def _group_base(g, fh, fw, rh, rw, C, H, W):
    """Element offset of channel 0, pixel (0, 0) of group g in a contiguous ``[B, heads*C, H, W]`` tensor
    (group order: image, head, region row, region column; ``g // (fh*fw) = image*heads + head``)."""
    j = g % fw
    i = (g // fw) % fh
    bh = g // (fw * fh)
    return (bh.to(tl.int64) * C * H + i * rh) * W + j * rw


@triton.jit
def _chunk(k, RPC, rh, rw, BR: tl.constexpr, BW: tl.constexpr):
    """Rows ``row0 .. row_end - 1`` of chunk k and its number of tiles (row blocks x column blocks)."""
    row0 = k * RPC
    row_end = tl.minimum(rh, row0 + RPC)
    return row0, row_end, tl.cdiv(row_end - row0, BR) * tl.cdiv(rw, BW)


@triton.jit
def _next_tile(r0, c0, rw, BR: tl.constexpr, BW: tl.constexpr):
    """Top-left (row, column) of the next tile: column blocks first, then the next row block (carried, so the
    loop has no integer division)."""
    c0 += BW
    wrap = c0 >= rw
    return tl.where(wrap, r0 + BR, r0), tl.where(wrap, 0, c0)


@triton.jit
def _tile(r0, row_end, c0, rw, W, BLOCK_N: tl.constexpr, BW: tl.constexpr):
    """The tile at (r0, c0), ``BLOCK_N // BW`` rows of BW columns: per point its region row and column, validity, index in the group (``r*rw + col``,
    the ``[G, N]`` state) and offset in the image plane (``r*W + col``)."""
    idx = tl.arange(0, BLOCK_N)
    r = r0 + idx // BW
    col = c0 + idx % BW
    valid = (r < row_end) & (col < rw)
    return r, col, valid, r * rw + col, r * W + col


@triton.jit
def _load_tile(base, offs_c, sp, valid, C, HW, DT: tl.constexpr):
    """``[BLOCK_C, points]`` tile of a contiguous ``[B, C, H, W]`` tensor: channel c at ``base + c*HW + sp``."""
    ptrs = base + offs_c[:, None] * HW + sp[None, :]
    return tl.load(ptrs, mask=(offs_c < C)[:, None] & valid[None, :], other=0.0).to(DT)


@triton.jit
def _store_tile(base, val, offs_c, sp, valid, C, HW):
    ptrs = base + offs_c[:, None] * HW + sp[None, :]
    tl.store(ptrs, val.to(base.dtype.element_ty), mask=(offs_c < C)[:, None] & valid[None, :])


#: the tile-access helpers: the compile gate checks the layout and width of every load / store made in them
TILE_ACCESS_HELPERS = (_load_tile, _store_tile)


@triton.jit
def _windows(offs_m, M, rh, rw, ph, pw, DT: tl.constexpr):
    """Adaptive-pool window m = (i, j) = (m // pw, m % pw) as bounds that need no division per point: point
    (r, s) lies in it iff ``i*rh < (r+1)*ph``, ``r*ph < (i+1)*rh`` and likewise for s; and ``1/|window|``
    (0 for m >= M). Computed once per program on the centre vector."""
    mi = offs_m // pw
    mj = offs_m - mi * pw
    lo_r = mi * rh
    lo_c = mj * rw
    rows = (lo_r + rh + ph - 1) // ph - lo_r // ph
    cols = (lo_c + rw + pw - 1) // pw - lo_c // pw
    inv = tl.where(offs_m < M, 1.0 / tl.maximum(rows * cols, 1).to(DT), 0.0)
    return lo_r, lo_r + rh, lo_c, lo_c + rw, inv


@triton.jit
def _pool_in(lo_r, hi_r, lo_c, hi_c, r, col, valid, ph, pw):
    """``[points, BLOCK_M]`` window membership of the tile (bool): the point lies in window m."""
    rp = tl.where(valid, r * ph, -ph)  # points outside the region lie in no window
    cp = col * pw
    return (((rp + ph)[:, None] > lo_r[None, :]) & (rp[:, None] < hi_r[None, :])
            & ((cp + pw)[:, None] > lo_c[None, :]) & (cp[:, None] < hi_c[None, :]))


@triton.jit
def _bf16_head(t):
    """The leading 8 significant bits of fp32 ``t`` (truncated: a bf16 number, never rounded up to inf). A NaN
    whose payload lies in the low bits reads inf here, but the remainder ``t - head`` is NaN, so the pieces
    still sum to NaN."""
    return (t.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _split3(t):
    """fp32 ``t = hi + mid + lo`` exactly, each piece a bf16 number (8 + 8 + 8 of the 24 significand bits;
    the differences are exact in fp32), for ``|t| >= 2**-110``; below that the last piece is subnormal and bf16
    keeps it to within ``2**-133``."""
    hi = _bf16_head(t)
    rest = t - hi
    mid = _bf16_head(rest)
    return hi, mid, rest - mid


@triton.jit
def _dot_exact(dense, exact, acc, PREC: tl.constexpr, OP: tl.constexpr):
    """``acc + dense @ exact`` for an ``exact`` whose entries are bf16 numbers (0/1 masks, one-hot): with
    ``PREC == "split"`` three tensor-core products of the bf16 pieces of ``dense`` (exact products, fp32 sums:
    fp32 accuracy); OP is the operand type (bf16; fp32 under the interpreter, whose bf16 dots are wrong, on
    the same bf16-exact values). Otherwise one ``tl.dot`` at input precision PREC."""
    if PREC == "split":
        e = exact.to(OP)
        hi, mid, lo = _split3(dense)
        acc = tl.dot(hi.to(OP), e, acc, input_precision="ieee")
        acc = tl.dot(mid.to(OP), e, acc, input_precision="ieee")
        acc = tl.dot(lo.to(OP), e, acc, input_precision="ieee")
    else:
        acc = tl.dot(dense, exact, acc, input_precision=PREC)
    return acc


@triton.jit
def _dot_dense(a_hi, a_mid, a_lo, b, PREC: tl.constexpr, OP: tl.constexpr):
    """``a @ b`` for dense fp32 ``a`` given as its :func:`_split3` pieces (split once by the caller, e.g.
    outside a loop) and dense ``b``: with ``PREC == "split"`` the six bf16 tensor-core products whose terms
    are above 2**-24 of the result (hi.hi, hi.mid, mid.hi, hi.lo, lo.hi, mid.mid), summed smallest first;
    otherwise one ``tl.dot`` of ``a_hi`` (then the whole of a) at input precision PREC."""
    if PREC == "split":
        b_hi, b_mid, b_lo = _split3(b)
        ah, am, al = a_hi.to(OP), a_mid.to(OP), a_lo.to(OP)
        bh, bm = b_hi.to(OP), b_mid.to(OP)
        acc = tl.dot(am, bm, input_precision="ieee")
        acc = tl.dot(al, bh, acc, input_precision="ieee")
        acc = tl.dot(ah, b_lo.to(OP), acc, input_precision="ieee")
        acc = tl.dot(am, bh, acc, input_precision="ieee")
        acc = tl.dot(ah, bm, acc, input_precision="ieee")
        acc = tl.dot(ah, bh, acc, input_precision="ieee")
    else:
        acc = tl.dot(a_hi, b, input_precision=PREC)
    return acc


@triton.jit
def _floor_div(a, b, b_inv):
    """``a // b`` for ``a >= 0``, ``0 < b``, ``a < 2**24`` without an integer division: a float estimate
    (``b_inv = 1/b``), corrected by one either way."""
    q = (a.to(tl.float32) * b_inv).to(tl.int32)
    q = tl.where((q + 1) * b <= a, q + 1, q)
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _pool_adjoint(src, offs_c, C, r, col, valid, rh, rw, ph, pw, KH: tl.constexpr, KW: tl.constexpr,
                  DT: tl.constexpr):
    """``sum_m w_mn src[m, c]`` for every point of the tile, ``[BLOCK_C, points]``, with ``src`` a row-major
    ``[M, C]`` copy in memory (L1-resident) already scaled by ``1/|window m|``. A gather, not a dot: point
    (r, s) lies only in the windows ``i = r*ph//rh .. +KH-1`` (and ``j`` likewise),
    ``KH = 1 + ceil(ph / rh)`` (2 unless regions are tiny)."""
    rp = r * ph
    cp = col * pw
    i0 = _floor_div(rp, rh, 1.0 / rh.to(tl.float32))
    j0 = _floor_div(cp, rw, 1.0 / rw.to(tl.float32))
    acc = tl.zeros((offs_c.shape[0], r.shape[0]), dtype=DT)
    for di in tl.static_range(KH):
        i = i0 + di
        in_i = valid & (i < ph) & (rp + ph > i * rh) & (rp < (i + 1) * rh)
        for dj in tl.static_range(KW):
            j = j0 + dj
            ok = in_i & (j < pw) & (cp + pw > j * rw) & (cp < (j + 1) * rw)
            m = tl.where(ok, i * pw + j, 0)
            acc += tl.load(src + m[None, :] * C + offs_c[:, None], mask=ok[None, :] & (offs_c < C)[:, None],
                           other=0.0)
    return acc


@triton.jit
def _cm_block(base, offs_c, offs_m, C, M):
    """Pointers and mask of a row-major ``[M, C]`` block (one group's centres, a partial, a scratch copy)
    seen as a ``[BLOCK_C, BLOCK_M]`` tile: element (c, m) at ``base + m * C + c``."""
    return base + offs_c[:, None] + offs_m[None, :] * C, (offs_c < C)[:, None] & (offs_m < M)[None, :]


@triton.jit
def _sum_partials(ptr, offs_r, offs_c, R, C, NC, ROW_STRIDE, COL_STRIDE):
    """Fixed-order sum over the NC chunk partials of a ``[NC, ...]`` buffer; tile ``[len(offs_r), len(offs_c)]``
    with element (r, c) at ``r * ROW_STRIDE + c * COL_STRIDE`` inside each partial of size R*C."""
    mask = (offs_r < R)[:, None] & (offs_c < C)[None, :]
    offs = offs_r[:, None] * ROW_STRIDE + offs_c[None, :] * COL_STRIDE
    acc = tl.load(ptr + offs, mask=mask, other=0.0)
    for j in range(1, NC):
        acc += tl.load(ptr + j * R * C + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def _sum_vec_partials(ptr, offs, R, NC):
    acc = tl.load(ptr + offs, mask=offs < R, other=0.0)
    for j in range(1, NC):
        acc += tl.load(ptr + j * R + offs, mask=offs < R, other=0.0)
    return acc


@triton.jit
def _norm_cols(t, eps):
    """F.normalize over dim 0 of a ``[C, K]`` tile: the normalised tile and the column norms."""
    nrm = tl.sqrt(tl.sum(t * t, axis=0))
    return t / tl.maximum(nrm, eps)[None, :], nrm


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------
@_kernel
def _pool_kernel(x_ptr, pc_ptr, H, W_v, fh, fw, rh, rw_v, ph, pw, M, D, NC, RPC,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, BLOCK_D: tl.constexpr,
                 VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                 OP: tl.constexpr):
    """Partial window means of chunk k for the centres: ``pc [G, NC, M, D]`` (window sums over the chunk's
    points, divided by the whole window's size).

    A window holding a non-finite x is NaN in every channel (its normalised centre is NaN either way, as
    adaptive_avg_pool2d's would be); other windows stay finite: non-finite values enter the dot as 0, since
    ``inf * 0`` would otherwise reach every window of the group."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    xb = x_ptr + _group_base(g, fh, fw, rh, rw, D, H, W)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    lo_r, hi_r, lo_c, hi_c, inv = _windows(offs_m, M, rh, rw, ph, pw, DT)
    acc = tl.zeros((BLOCK_D, BLOCK_M), dtype=DT)
    bad = tl.zeros((BLOCK_M,), dtype=tl.int32)  # non-finite points per window
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, _n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        xt = _load_tile(xb, offs_d, sp, valid, D, HW, DT)
        inside = _pool_in(lo_r, hi_r, lo_c, hi_c, r, col, valid, ph, pw)
        finite = tl.abs(xt) < float("inf")  # false for NaN too
        bad_n = tl.max(tl.where(finite, 0, 1), axis=0)  # [BN]
        bad += tl.sum(tl.where((bad_n[:, None] > 0) & inside, 1, 0), axis=0)
        acc = _dot_exact(tl.where(finite, xt, 0.0), inside.to(DT), acc, PREC, OP)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)
    acc = tl.where(bad[None, :] > 0, float("nan"), acc * inv[None, :])
    ptrs, mask = _cm_block(pc_ptr + (g.to(tl.int64) * NC + k) * M * D, offs_d, offs_m, D, M)
    tl.store(ptrs, acc, mask=mask)


@_kernel
def _assign_kernel(x_ptr, v_ptr, pc_ptr, c_ptr, a_ptr, sig_ptr, puv_ptr, pden_ptr, alpha_ptr, beta_ptr,
                   H, W_v, fh, fw, rh, rw_v, ph, pw, M, D, DV, NC, RPC,
                   AGG: tl.constexpr, BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BW: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, VEC: tl.constexpr,
                   STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, OP: tl.constexpr):
    """Centres from the partials (chunk 0 stores ``c [G, M, D]``); assignment ``a, sigma [G, N]`` of chunk k;
    with AGG, partial ``U + vc`` (``puv [G, NC, M, DV]``) and denominators (``pden [G, NC, M]``)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    eps = 1e-12
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    xb = x_ptr + _group_base(g, fh, fw, rh, rw, D, H, W)
    alpha = tl.load(alpha_ptr).to(DT)
    beta = tl.load(beta_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M

    c = _sum_partials(pc_ptr + g64 * NC * M * D, offs_m, offs_d, M, D, NC, D, 1)  # [BM, BD]
    c_mask = m_ok[:, None] & (offs_d < D)[None, :]
    tl.store(c_ptr + g64 * M * D + offs_m[:, None] * D + offs_d[None, :], c, mask=c_mask & (k == 0))
    nrm = tl.sqrt(tl.sum(c * c, axis=1))
    c_hat = c / tl.maximum(nrm, eps)[:, None]
    # NaN similarities (torch's max picks them: first NaN index, value NaN) come from a non-finite centre
    # (a whole row: the first such centre wins for every point) or a non-finite point (a whole column: 0 wins)
    nan_c = tl.min(tl.where(m_ok & ~(nrm < float("inf")), offs_m, BLOCK_M), axis=0)
    if PREC == "split":
        c_hi, c_mid, c_lo = _split3(c_hat)
    else:
        c_hi, c_mid, c_lo = c_hat, c_hat, c_hat

    if AGG:
        vb = v_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
        offs_dv = tl.arange(0, BLOCK_DV)
        lo_r, hi_r, lo_c, hi_c, inv = _windows(offs_m, M, rh, rw, ph, pw, DT)
        uv = tl.zeros((BLOCK_DV, BLOCK_M), dtype=DT)  # U: sum of sigma v over the cluster
        vc = tl.zeros((BLOCK_DV, BLOCK_M), dtype=DT)  # window sums of v
        den = tl.zeros((BLOCK_M,), dtype=DT)
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        x_hat, _xn = _norm_cols(_load_tile(xb, offs_d, sp, valid, D, HW, DT), eps)
        cos = _dot_dense(c_hi, c_mid, c_lo, x_hat, PREC, OP)  # [BM, BN]
        s = 1.0 / (1.0 + tl.exp(-(beta + alpha * cos)))
        s = tl.where(m_ok[:, None] & (s == s), s, -1.0)
        a = tl.argmax(s, axis=0, tie_break_left=True).to(tl.int32)
        sigma = tl.max(s, axis=0)
        bad_x = sigma < 0.0  # every similarity NaN: a non-finite point
        a = tl.where(bad_x, 0, tl.where(nan_c < BLOCK_M, nan_c, a))
        sigma = tl.where(bad_x | (nan_c < BLOCK_M), float("nan"), sigma)
        tl.store(a_ptr + g64 * N + n, a, mask=valid)
        tl.store(sig_ptr + g64 * N + n, sigma, mask=valid)
        if AGG:
            onehot = (a[:, None] == offs_m[None, :]) & valid[:, None]  # [BN, BM]
            if BY_COUNT:
                den += tl.sum(onehot.to(DT), axis=0)
            else:
                den += tl.sum(tl.where(onehot, sigma[:, None], 0.0), axis=0)
            vt = _load_tile(vb, offs_dv, sp, valid, DV, HW, DT)
            uv = _dot_exact(vt * sigma[None, :], onehot.to(DT), uv, PREC, OP)  # [BDV, BM]
            inside = _pool_in(lo_r, hi_r, lo_c, hi_c, r, col, valid, ph, pw)
            vc = _dot_exact(vt, inside.to(DT), vc, PREC, OP)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)
    if AGG:
        uv += vc * inv[None, :]
        part = g64 * NC + k
        ptrs, mask = _cm_block(puv_ptr + part * M * DV, offs_dv, offs_m, DV, M)
        tl.store(ptrs, uv, mask=mask)
        tl.store(pden_ptr + part * M + offs_m, den, mask=m_ok)


@_kernel
def _dispatch_kernel(a_ptr, sig_ptr, puv_ptr, pden_ptr, o_ptr, den_ptr, scr_ptr, y_ptr, alpha_ptr, beta_ptr,
                     H, W_v, fh, fw, rh, rw_v, M, DV, NC, RPC,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, BLOCK_DV: tl.constexpr,
                     VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr):
    """``o = (U + vc) / (den + 1)`` (chunk 0 stores ``o [G, M, DV]``, ``den [G, M]``); ``y_n = sigma_n o[a_n]``.
    y is NaN everywhere if alpha or beta is not finite (checked here rather than by a host sync)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < M
    uv = _sum_partials(puv_ptr + g64 * NC * M * DV, offs_m, offs_dv, M, DV, NC, DV, 1)  # [BM, BDV]
    den = _sum_vec_partials(pden_ptr + g64 * NC * M, offs_m, M, NC)
    o = uv / (den + 1.0)[:, None]
    o_offs = offs_m[:, None] * DV + offs_dv[None, :]
    o_mask = m_ok[:, None] & (offs_dv < DV)[None, :]
    tl.store(o_ptr + g64 * M * DV + o_offs, o, mask=o_mask & (k == 0))
    tl.store(den_ptr + g64 * M + offs_m, den, mask=m_ok & (k == 0))
    scr = scr_ptr + (g64 * NC + k) * M * DV  # this program's copy of o, read back by gathers
    tl.store(scr + o_offs, o, mask=o_mask)
    tl.debug_barrier()

    nan_if_bad = tl.load(alpha_ptr).to(DT) * 0.0 + tl.load(beta_ptr).to(DT) * 0.0  # 0, or NaN
    # a non-finite value in channel c (o[:, c] not finite) makes channel c of the whole group NaN, as the
    # original's dense sums do (inf * 0)
    chan_nan = tl.sum(tl.where(o_mask, o * 0.0, 0.0), axis=0)  # [BDV]: 0, or NaN
    yb = y_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        _r, _col, valid, n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a = tl.load(a_ptr + g64 * N + n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + n, mask=valid, other=0.0)
        gmask = (offs_dv < DV)[:, None] & valid[None, :]
        o_a = tl.load(scr + a[None, :] * DV + offs_dv[:, None], mask=gmask, other=0.0)  # [BDV, BN]
        _store_tile(yb, o_a * sigma[None, :] + (chan_nan[:, None] + nan_if_bad), offs_dv, sp, valid, DV, HW)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)


# ----------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------
@_kernel
def _bwd_do_kernel(dy_ptr, a_ptr, sig_ptr, pdo_ptr, H, W_v, fh, fw, rh, rw_v, M, DV, NC, RPC,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, BLOCK_DV: tl.constexpr,
                   VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                   OP: tl.constexpr):
    """Partial ``do_m = sum_{a_n = m} sigma_n dy_n`` of chunk k: ``pdo [G, NC, M, DV]``."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    dyb = dy_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros((BLOCK_DV, BLOCK_M), dtype=DT)
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        _r, _col, valid, n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a = tl.load(a_ptr + g64 * N + n, mask=valid, other=-1)
        sigma = tl.load(sig_ptr + g64 * N + n, mask=valid, other=0.0)
        onehot = (a[:, None] == offs_m[None, :]).to(DT)  # [BN, BM]
        acc = _dot_exact(_load_tile(dyb, offs_dv, sp, valid, DV, HW, DT) * sigma[None, :], onehot, acc, PREC, OP)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)
    ptrs, mask = _cm_block(pdo_ptr + (g64 * NC + k) * M * DV, offs_dv, offs_m, DV, M)
    tl.store(ptrs, acc, mask=mask)


@_kernel
def _bwd_main_kernel(x_ptr, v_ptr, dy_ptr, a_ptr, sig_ptr, c_ptr, o_ptr, den_ptr, alpha_ptr, pdo_ptr, scr_ptr,
                     dx_ptr, dv_ptr, pdc_ptr, pdab_ptr,
                     H, W_v, fh, fw, rh, rw_v, ph, pw, M, D, DV, NC, RPC,
                     BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                     VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                     OP: tl.constexpr):
    """Chunk k: dv (complete), the direct part of dx (fp32/fp64 ``dx``, contiguous), partial ``d c_hat``
    (``pdc [G, NC, M, D]``) and partial (dalpha, dbeta) (``pdab [G, NC, 2]``)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    part = g64 * NC + k
    eps = 1e-12
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    xb = x_ptr + _group_base(g, fh, fw, rh, rw, D, H, W)
    vb = v_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
    dyb = dy_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
    dxb = dx_ptr + _group_base(g, fh, fw, rh, rw, D, H, W)
    dvb = dv_ptr + _group_base(g, fh, fw, rh, rw, DV, H, W)
    alpha = tl.load(alpha_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < M
    dv_ok = offs_dv < DV
    d_ok = offs_d < D

    # group state, [channels, centres]: dU = do / (den + 1) (= d vc), dS, c_hat
    do = _sum_partials(pdo_ptr + g64 * NC * M * DV, offs_dv, offs_m, DV, M, NC, 1, DV)  # [BDV, BM]
    den = tl.load(den_ptr + g64 * M + offs_m, mask=m_ok, other=0.0)
    inv = 1.0 / (den + 1.0)
    dU = do * inv[None, :]
    c_ptrs, dm_mask = _cm_block(c_ptr + g64 * M * D, offs_d, offs_m, D, M)
    c_hat, _cn = _norm_cols(tl.load(c_ptrs, mask=dm_mask, other=0.0), eps)  # [BD, BM]
    # this program's copy for the gathers: dU [M, DV] | c_hat [M, D] | dS [M] | dU / |window| [M, DV]
    scr = scr_ptr + part * M * (2 * DV + D + 1)
    ptrs, dvm_mask = _cm_block(scr, offs_dv, offs_m, DV, M)
    tl.store(ptrs, dU, mask=dvm_mask)
    ptrs, _ = _cm_block(scr + M * DV, offs_d, offs_m, D, M)
    tl.store(ptrs, c_hat, mask=dm_mask)
    _lo_r, _hi_r, _lo_c, _hi_c, win_inv = _windows(offs_m, M, rh, rw, ph, pw, DT)
    ptrs, _ = _cm_block(scr + M * (DV + D + 1), offs_dv, offs_m, DV, M)
    tl.store(ptrs, dU * win_inv[None, :], mask=dvm_mask)
    if not BY_COUNT:
        o_ptrs, _ = _cm_block(o_ptr + g64 * M * DV, offs_dv, offs_m, DV, M)
        o = tl.load(o_ptrs, mask=dvm_mask, other=0.0)
        tl.store(scr + M * (DV + D) + offs_m, -tl.sum(do * o, axis=0) * inv, mask=m_ok)
    tl.debug_barrier()

    dch = tl.zeros((BLOCK_D, BLOCK_M), dtype=DT)
    dal = tl.zeros((BLOCK_N,), dtype=DT)
    dbe = tl.zeros((BLOCK_N,), dtype=DT)
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a = tl.load(a_ptr + g64 * N + n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + n, mask=valid, other=0.0)
        gv = dv_ok[:, None] & valid[None, :]
        gd = d_ok[:, None] & valid[None, :]
        o_a = tl.load(o_ptr + g64 * M * DV + a[None, :] * DV + offs_dv[:, None], mask=gv, other=0.0)
        dU_a = tl.load(scr + a[None, :] * DV + offs_dv[:, None], mask=gv, other=0.0)
        dyt = _load_tile(dyb, offs_dv, sp, valid, DV, HW, DT)
        vt = _load_tile(vb, offs_dv, sp, valid, DV, HW, DT)
        dsig = tl.sum(dyt * o_a, axis=0) + tl.sum(dU_a * vt, axis=0)
        if not BY_COUNT:
            dsig += tl.load(scr + M * (DV + D) + a, mask=valid, other=0.0)
        # dv_n = sigma_n dU[a_n] + sum_m w_mn dU_m
        dvt = sigma[None, :] * dU_a + _pool_adjoint(scr + M * (DV + D + 1), offs_dv, DV, r, col, valid, rh, rw,
                                                    ph, pw, KH, KW, DT)
        _store_tile(dvb, dvt, offs_dv, sp, valid, DV, HW)
        # through s = sigmoid(beta + alpha cos) and the normalisation of x
        c_a = tl.load(scr + M * DV + a[None, :] * D + offs_d[:, None], mask=gd, other=0.0)  # [BD, BN]
        x_hat, xn = _norm_cols(_load_tile(xb, offs_d, sp, valid, D, HW, DT), eps)
        dz = tl.where(valid, dsig * sigma * (1.0 - sigma), 0.0)
        dbe += dz
        dal += dz * tl.sum(c_a * x_hat, axis=0)
        dcos = alpha * dz
        dch = _dot_exact(x_hat * dcos[None, :], (a[:, None] == offs_m[None, :]).to(DT), dch, PREC, OP)
        dxh = dcos[None, :] * c_a
        proj = tl.where(xn > eps, tl.sum(x_hat * dxh, axis=0), 0.0)
        _store_tile(dxb, (dxh - x_hat * proj[None, :]) / tl.maximum(xn, eps)[None, :], offs_d, sp, valid, D, HW)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)
    ptrs, _ = _cm_block(pdc_ptr + part * M * D, offs_d, offs_m, D, M)
    tl.store(ptrs, dch, mask=dm_mask)
    tl.store(pdab_ptr + part * 2, tl.sum(dal, axis=0))
    tl.store(pdab_ptr + part * 2 + 1, tl.sum(dbe, axis=0))


@_kernel
def _bwd_pool_kernel(dxi_ptr, dx_ptr, c_ptr, pdc_ptr, pdab_ptr, scr_ptr, dalpha_ptr, dbeta_ptr,
                     H, W_v, fh, fw, rh, rw_v, ph, pw, M, D, NC, RPC, NPART,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_P: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, VEC: tl.constexpr,
                     STAGES: tl.constexpr, DT: tl.constexpr):
    """``dx = dxi + pooling adjoint of dc`` (both contiguous; may be the same buffer); program (0, 0) also
    sums the NPART (dalpha, dbeta) partials in a fixed order."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    eps = 1e-12
    BR = BLOCK_N // BW
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dch = _sum_partials(pdc_ptr + g64 * NC * M * D, offs_d, offs_m, D, M, NC, 1, D)  # [BD, BM]
    c_ptrs, mask_dm = _cm_block(c_ptr + g64 * M * D, offs_d, offs_m, D, M)
    c = tl.load(c_ptrs, mask=mask_dm, other=0.0)
    c_hat, cn = _norm_cols(c, eps)
    cproj = tl.where(cn > eps, tl.sum(c_hat * dch, axis=0), 0.0)
    dc = (dch - c_hat * cproj[None, :]) / tl.maximum(cn, eps)[None, :]
    _lo_r, _hi_r, _lo_c, _hi_c, win_inv = _windows(offs_m, M, rh, rw, ph, pw, DT)
    scr = scr_ptr + (g64 * NC + k) * M * D  # this program's copy of dc / |window| [M, D] for the gathers
    ptrs, _ = _cm_block(scr, offs_d, offs_m, D, M)
    tl.store(ptrs, dc * win_inv[None, :], mask=mask_dm)
    tl.debug_barrier()

    off = _group_base(g, fh, fw, rh, rw, D, H, W)
    dxib = dxi_ptr + off
    dxb = dx_ptr + off
    r0, row_end, n_tiles = _chunk(k, RPC, rh, rw, BR, BW)
    c0 = r0 * 0
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, _n, sp = _tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        dxt = _load_tile(dxib, offs_d, sp, valid, D, HW, DT)
        dxt += _pool_adjoint(scr, offs_d, D, r, col, valid, rh, rw, ph, pw, KH, KW, DT)
        _store_tile(dxb, dxt, offs_d, sp, valid, D, HW)
        r0, c0 = _next_tile(r0, c0, rw, BR, BW)

    if (g == 0) & (k == 0):
        offs_p = tl.arange(0, BLOCK_P)
        sa = tl.zeros((BLOCK_P,), dtype=DT)
        sb = tl.zeros((BLOCK_P,), dtype=DT)
        for p0 in range(0, NPART, BLOCK_P):
            pm = p0 + offs_p < NPART
            sa += tl.load(pdab_ptr + (p0 + offs_p) * 2, mask=pm, other=0.0)
            sb += tl.load(pdab_ptr + (p0 + offs_p) * 2 + 1, mask=pm, other=0.0)
        tl.store(dalpha_ptr, tl.sum(sa, axis=0).to(dalpha_ptr.dtype.element_ty))
        tl.store(dbeta_ptr, tl.sum(sb, axis=0).to(dbeta_ptr.dtype.element_ty))


# ----------------------------------------------------------------------------------------------------
# host side: launch configuration, launch recording, the custom ops and their autograd
# ----------------------------------------------------------------------------------------------------
#: at most this many chunks per group (each program re-reads the NC partials of its group)
MAX_CHUNKS = 16
DOT_PRECISIONS = ("split", "ieee", "tf32", "tf32x3")


@dataclasses.dataclass(frozen=True)
class LaunchPolicy:
    """How the op launches its kernels. Nothing here is read off the device, so the chunking, and with it
    every result, is the same on every GPU. The one in force is :func:`policy`; change it for a block with
    :func:`launch_policy` (tests, tuning sweeps, the compile gate)."""

    #: programs a launch aims for: groups are split into chunks until G * NC reaches this
    target_programs: int = 1024
    #: the (dalpha, dbeta) partials (one per group and chunk) are summed this many at a time, in a fixed order
    partial_block: int = 256
    #: ``tl.dot`` precision: "split" (tensor cores on bf16 pieces that sum exactly to the fp32 operands: fp32
    #: accuracy, see ``_dot_exact``; fp64 inputs take "ieee"), "ieee" (fp32 FMAs), or the TF32 modes (less
    #: accurate than fp32: assignments flip against the fp32 reference)
    precision: str = "split"
    #: fill every buffer the op allocates with NaN (int: -2**31) first, so an element no kernel writes shows
    poison: bool = False
    #: per-kernel overrides of :func:`kernel_config`, e.g. ``{"assign": {"BLOCK_N": 32}}``; ``"*"``: every kernel
    config_overrides: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.target_programs, int) or self.target_programs < 1:
            raise ValueError(f"target_programs must be a positive int, got {self.target_programs!r}")
        if not isinstance(self.partial_block, int) or self.partial_block < 1 or self.partial_block & (
                self.partial_block - 1):
            raise ValueError(f"partial_block must be a power of two, got {self.partial_block!r}")
        if self.precision not in DOT_PRECISIONS:
            raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_env(cls) -> "LaunchPolicy":
        """The defaults, with ``COC_TARGET_PROGRAMS`` and ``COC_DOT_PRECISION`` where set."""
        return cls(target_programs=int(os.environ.get("COC_TARGET_PROGRAMS", 1024)),
                   precision=os.environ.get("COC_DOT_PRECISION", "split"))


_POLICY = [LaunchPolicy.from_env()]


def policy() -> LaunchPolicy:
    """The launch policy in force."""
    return _POLICY[0]


@contextlib.contextmanager
def launch_policy(**changes):
    """Run the block under the current policy with ``changes`` (fields of :class:`LaunchPolicy`); the previous
    policy is back afterwards, also on an error."""
    prev = _POLICY[0]
    _POLICY[0] = dataclasses.replace(prev, **changes)
    try:
        yield _POLICY[0]
    finally:
        _POLICY[0] = prev


def _pow2(n: int) -> int:
    """Tile size for n (a power of two, at least 16: tl.dot's minimum)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


#: every kernel, in launch order (forward, then backward; ``assign_only`` is the assignment without aggregation)
KERNELS = ("pool", "assign", "assign_only", "dispatch", "bwd_do", "bwd_main", "bwd_pool")


def kernel_config(kernel: str, M: int, D: int, DV: int) -> dict:
    """``BLOCK_N`` (points per tile), warps, launch stages and ``STAGES`` (software pipelining of the tile
    loop: the next tiles' loads are issued while this one computes) of one kernel for M centres and D / DV
    channels.

    Chosen per kernel so that none spills registers at sm_80 / sm_90 with fp32, fp16 or bf16 inputs
    (``benchmarks/kernel_resources.py`` checks every launch, with triton 3.6 and 3.8) and per-point instructions
    stay low: the split dots run on tensor cores and hold their operands in shared memory, so tiles of 32-64
    points fit; the main backward at 4 and 49 centres does not pipeline its loop (the second stage's registers
    spill at sm_80 / sm_90).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; one of {KERNELS}")
    bm = _pow2(M)
    stages = PIPELINE_STAGES.get(kernel, 1)
    if kernel == "assign":  # the most state per point: 32 points per tile (with the FMA dots of 2026-11-26, 4 warps
        cfg = dict(BLOCK_N=32, num_warps=8 if bm >= 64 else 4)  # beat 8-16 by up to 2x on an H100)
    elif kernel == "bwd_main":
        cfg = dict(BLOCK_N=32, num_warps=8 if bm >= 64 else 4)
        if bm != 32:
            stages = 1
    elif kernel in ("dispatch", "bwd_pool"):  # gathers, no dot
        cfg = dict(BLOCK_N=64, num_warps=8)
    elif kernel == "pool":  # 8 warps at 64 centres: 1 program per SM; 64 points x 4 warps spill at sm_80
        cfg = dict(BLOCK_N=32 if bm >= 64 else 64, num_warps=4)
    elif kernel == "bwd_do":  # 64 points: 176 registers, 2 programs per SM (triton 3.6); 32: 96-128, 4-5
        cfg = dict(BLOCK_N=32, num_warps=4)
    else:  # assign_only
        cfg = dict(BLOCK_N=64, num_warps=8 if bm >= 64 else 4)
    cfg["num_stages"] = 1
    cfg["STAGES"] = stages
    overrides = policy().config_overrides
    cfg.update(overrides.get("*", {}))
    cfg.update(overrides.get(kernel, {}))
    n = cfg["BLOCK_N"]
    if n < 16 or n & (n - 1):
        raise ValueError(f"BLOCK_N of {kernel} must be a power of two >= 16, got {n}")
    return cfg


#: software-pipelining depth of each kernel's tile loop (``tl.range(..., num_stages=...)``: the next tile's loads
#: go out as ``cp.async`` while this one computes). 2 everywhere but the do-scatter, which spills with it (255
#: registers at sm_90, triton 3.6 and 3.8); 3 adds registers and nothing the gate can see
PIPELINE_STAGES = {"pool": 2, "assign": 2, "assign_only": 2, "dispatch": 2, "bwd_do": 1, "bwd_main": 2,
                   "bwd_pool": 2}


def tile_width(rw: int, block_n: int) -> int:
    """``BW``: columns per tile row for regions ``rw`` wide, a power of two. The fewest masked columns
    (``ceil(rw / BW) * BW - rw``) among widths of at least ``min(8, rw)`` rounded up, the widest on a tie: 16 for
    the detection models' ``rw = 42`` (48 columns, 12.5 % masked), 8 for ImageNet's 7."""
    best, bw = None, 1
    while bw < min(8, rw):
        bw *= 2
    while bw <= block_n:
        cost = _cdiv(max(rw, 1), bw) * bw
        if best is None or cost <= best[0]:
            best = (cost, bw)
        bw *= 2
    return best[1]


def vector_width(rw: int, W: int, bw: int) -> int:
    """``VEC``: elements per vector access, the largest of 4, 2, 1 that divides the region width, the image
    width and ``BW`` (every row segment of a tile then starts on a multiple of it)."""
    for vec in (4, 2):
        if rw % vec == 0 and W % vec == 0 and bw % vec == 0:
            return vec
    return 1


def chunking(G: int, rh: int, row_unit: int):
    """``(NC, rows per chunk)``: a group's ``rh`` region rows split into NC chunks of whole multiples of
    ``row_unit`` rows (the tallest tile of any kernel), until ``G * NC`` reaches the policy's target."""
    units = max(1, _cdiv(rh, row_unit))
    nc = max(1, min(units, MAX_CHUNKS, _cdiv(policy().target_programs, max(G, 1))))
    per = _cdiv(units, nc)
    return _cdiv(units, per), per * row_unit


@dataclasses.dataclass
class Launch:
    """One kernel launch as the op made it (what the compile gate compiles): ``args`` the runtime arguments
    (pointers, sizes, strides) and ``constexprs`` the compile-time ones, both by parameter name."""
    kernel: object
    grid: tuple
    args: dict
    constexprs: dict
    num_warps: int
    num_stages: int


class _Recording:
    """Who is listening to launches (:func:`record_launches`), and whether they only listen (dry run)."""
    recorders: list = []
    dry_run: bool = False


@contextlib.contextmanager
def record_launches(execute: bool = True):
    """Collect every kernel launch the op makes inside the block; ``execute=False`` records without
    running anything (and lets the op take CPU tensors without the interpreter), for the compile gate."""
    rec: list = []
    _Recording.recorders.append(rec)
    prev = _Recording.dry_run
    _Recording.dry_run = not execute
    try:
        yield rec
    finally:
        _Recording.recorders.remove(rec)
        _Recording.dry_run = prev


def dry_run() -> bool:
    """True inside ``record_launches(execute=False)``."""
    return _Recording.dry_run


_PARAMS: dict = {}


def kernel_params(kernel) -> tuple[tuple, tuple]:
    """``(runtime parameter names, constexpr parameter names)`` of a kernel, in its signature's order."""
    hit = _PARAMS.get(id(kernel))  # by identity: hashing a JITFunction hashes its source (triton's cache key)
    if hit is None or hit[0] is not kernel:
        import inspect
        params = inspect.signature(kernel.fn).parameters.items()
        const = tuple(n for n, p in params if "constexpr" in str(p.annotation))
        hit = _PARAMS[id(kernel)] = (kernel, (tuple(n for n, _ in params if n not in const), const))
    return hit[1]


def _launch(kernel, grid, args: dict, constexprs: dict, cfg):
    """Launch ``kernel`` on ``grid`` with every argument by name (a missing or unknown name is an error here,
    not a silently shifted argument list)."""
    runtime, const = kernel_params(kernel)
    if set(args) != set(runtime) or set(constexprs) != set(const):
        raise TypeError(f"{kernel.fn.__name__}: launch arguments do not match its parameters: missing "
                        f"{sorted(set(runtime) - set(args)) + sorted(set(const) - set(constexprs))}, unknown "
                        f"{sorted(set(args) - set(runtime)) + sorted(set(constexprs) - set(const))}")
    launch = Launch(kernel, tuple(grid), dict(args), dict(constexprs), cfg["num_warps"], cfg["num_stages"])
    for rec in _Recording.recorders:
        rec.append(launch)
    if _Recording.dry_run or grid[0] * grid[1] == 0:
        return
    kernel[grid](**args, **constexprs, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def _empty(shape, dtype, device):
    t = torch.empty(shape, dtype=dtype, device=device)
    if policy().poison and not _Recording.dry_run:
        t.fill_(float("nan") if t.is_floating_point() else -2 ** 31)
    return t


_acc = compute_dtype  # compute / saved-state dtype


def _dt(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_constexprs(dt) -> dict:
    """``PREC`` and ``OP`` (the split dots' operand type) of the dot kernels for compute type ``dt``."""
    prec = policy().precision
    if dt == tl.float64 and prec != "ieee":  # fp64 inputs: exact fp64 FMAs
        prec = "ieee"
    return dict(PREC=prec, OP=tl.float32 if triton_interpreting() else tl.bfloat16)


class _Geom:
    """Sizes of one call, and the launch configuration they imply."""

    def __init__(self, x: Tensor, value, heads: int, ph: int, pw: int, fh: int, fw: int):
        dv_channels = (x if value is None else value).shape[1]
        self.B, C, self.H, self.W = x.shape
        for t in (x,) if value is None else (x, value):
            if t.shape[1] * t.shape[2] * t.shape[3] >= 2 ** 31:
                raise ValueError(f"one image of {tuple(t.shape)} spans 2**31 elements or more: the kernels "
                                 "address an image with 32-bit offsets")
        self.heads, self.ph, self.pw, self.fh, self.fw = heads, ph, pw, fh, fw
        self.D, self.DV = C // heads, dv_channels // heads
        self.rh, self.rw = self.H // fh, self.W // fw
        self.G, self.N, self.M = self.B * heads * fh * fw, self.rh * self.rw, ph * pw
        self.cfg = {}
        for name in KERNELS:
            cfg = kernel_config(name, self.M, self.D, self.DV)
            bw = tile_width(self.rw, cfg["BLOCK_N"])
            self.cfg[name] = (cfg, bw, vector_width(self.rw, self.W, bw))
        self.row_unit = max(cfg["BLOCK_N"] // bw for cfg, bw, _ in self.cfg.values())
        self.NC, self.rpc = chunking(self.G, self.rh, self.row_unit)
        self.grid = (self.G, self.NC)
        self.dt = _dt(x.dtype)
        self.acc = _acc(x.dtype)
        self.dot = _dot_constexprs(self.dt)  # PREC / OP of the dot kernels (made under the policy in force)
        self.BM = _pow2(self.M)
        # windows a point can lie in, per axis (pooling adjoint gathers)
        self.KH, self.KW = 1 + _cdiv(ph, max(self.rh, 1)), 1 + _cdiv(pw, max(self.rw, 1))

    def tiles(self, name: str):
        """(config, tile constexprs) of one kernel."""
        cfg, bw, vec = self.cfg[name]
        return cfg, dict(BLOCK_M=self.BM, BLOCK_N=cfg["BLOCK_N"], BW=bw, VEC=vec, STAGES=cfg["STAGES"])

    def region(self, name: str) -> dict:
        """The image and group geometry every kernel takes (see ``_group_base``): widths in units of VEC."""
        vec = self.cfg[name][2]
        return dict(H=self.H, W_v=self.W // vec, fh=self.fh, fw=self.fw, rh=self.rh, rw_v=self.rw // vec)

    def __setattr__(self, name, value):  # shared between calls of one shape (_geometry): set once, in __init__
        if name in self.__dict__:
            raise AttributeError(f"_Geom.{name} is fixed once made")
        object.__setattr__(self, name, value)

    def sizes(self, *names: str) -> dict:
        """``M, NC, RPC`` and the named ones of ``ph, pw, D, DV``."""
        return dict(M=self.M, NC=self.NC, RPC=self.rpc, **{n: getattr(self, n) for n in names})

    def tiles_per_group(self, name: str) -> int:
        """Tile iterations one group takes in kernel ``name`` (over all its chunks)."""
        cfg, bw, _ = self.cfg[name]
        br = cfg["BLOCK_N"] // bw
        rows = [min(self.rh, (k + 1) * self.rpc) - k * self.rpc for k in range(self.NC)]
        return sum(_cdiv(r, br) for r in rows) * _cdiv(self.rw, bw)


#: geometries of recent calls, by what they depend on (a training step repeats the same few shapes; building one
#: costs more host time than the rest of the op's arguments): key -> (policy it was made under, _Geom)
_GEOMETRIES: dict = {}
_MAX_GEOMETRIES = 256


def _geometry(x: Tensor, value, heads: int, ph: int, pw: int, fh: int, fw: int) -> _Geom:
    """``_Geom(x, value, ...)``, reused while the launch policy in force is the one it was made under."""
    key = (tuple(x.shape), None if value is None else value.shape[1], x.dtype, heads, ph, pw, fh, fw)
    hit = _GEOMETRIES.get(key)
    if hit is not None and hit[0] is policy():
        return hit[1]
    if len(_GEOMETRIES) >= _MAX_GEOMETRIES:
        _GEOMETRIES.clear()
    q = _Geom(x, value, heads, ph, pw, fh, fw)
    _GEOMETRIES[key] = (policy(), q)
    return q


def points_per_tile(launch) -> float:
    """Real (unmasked) points per tile iteration of a recorded launch, averaged over its groups: what the
    compile gate divides a loop's instruction count by."""
    a, c = launch.args, launch.constexprs
    rh, rw = a["rh"], a["rw_v"] * c["VEC"]
    br, bw = c["BLOCK_N"] // c["BW"], c["BW"]
    rows = [min(rh, (k + 1) * a["RPC"]) - k * a["RPC"] for k in range(a["NC"])]
    tiles = sum(_cdiv(r, br) for r in rows) * _cdiv(rw, bw)
    return rh * rw / max(tiles, 1)


def _contiguous(t: Tensor) -> Tensor:
    """The kernels address ``[B, C, H, W]`` tensors as contiguous (W stride 1 known to the compiler)."""
    return t if t.is_contiguous() else t.contiguous()


def _centres_and_assign(x: Tensor, value, alpha: Tensor, beta: Tensor, q: _Geom, by_count: bool):
    """Launches 1 and 2 of the forward (value None: assignment only). Returns c, a, sigma, puv, pden."""
    dev = x.device
    pc = _empty((q.G, q.NC, q.M, q.D), q.acc, dev)
    cfg, blocks = q.tiles("pool")
    _launch(_pool_kernel, q.grid,
            dict(x_ptr=x, pc_ptr=pc, **q.region("pool"), **q.sizes("ph", "pw", "D")),
            dict(**blocks, BLOCK_D=_pow2(q.D), DT=q.dt, **q.dot), cfg)
    c = _empty((q.G, q.M, q.D), q.acc, dev)
    a = _empty((q.G, q.N), torch.int32, dev)
    sigma = _empty((q.G, q.N), q.acc, dev)
    agg = value is not None
    puv = _empty((q.G, q.NC, q.M, q.DV), q.acc, dev) if agg else pc
    pden = _empty((q.G, q.NC, q.M), q.acc, dev) if agg else pc
    v = value if agg else x
    name = "assign" if agg else "assign_only"
    cfg, blocks = q.tiles(name)
    _launch(_assign_kernel, q.grid,
            dict(x_ptr=x, v_ptr=v, pc_ptr=pc, c_ptr=c, a_ptr=a, sig_ptr=sigma, puv_ptr=puv, pden_ptr=pden,
                 alpha_ptr=alpha, beta_ptr=beta, **q.region(name), **q.sizes("ph", "pw", "D", "DV")),
            dict(AGG=agg, BY_COUNT=by_count, **blocks, BLOCK_D=_pow2(q.D), BLOCK_DV=_pow2(q.DV), DT=q.dt,
                 **q.dot), cfg)
    return c, a, sigma, puv, pden


def assignment(x: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int):
    """Hard assignment of every point: ``a [G, N]`` int32 and ``sigma [G, N]`` (launches 1-2 of the forward)."""
    x = _contiguous(x)
    q = _geometry(x, None, heads, ph, pw, fh, fw)
    _, a, sigma, _, _ = _centres_and_assign(x, None, alpha, beta, q, True)
    return a, sigma


def fused_forward(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int,
            by_count: bool):
    """Fused forward (3 launches). Returns ``y`` (value's dtype, contiguous) and the saved
    ``a, sigma, c, o, den``."""
    x, value = _contiguous(x), _contiguous(value)
    q = _geometry(x, value, heads, ph, pw, fh, fw)
    dev = x.device
    c, a, sigma, puv, pden = _centres_and_assign(x, value, alpha, beta, q, by_count)
    o = _empty((q.G, q.M, q.DV), q.acc, dev)
    den = _empty((q.G, q.M), q.acc, dev)
    scr = _empty((q.G, q.NC, q.M, q.DV), q.acc, dev)
    y = _empty((q.B, heads * q.DV, q.H, q.W), value.dtype, dev)
    cfg, blocks = q.tiles("dispatch")
    _launch(_dispatch_kernel, q.grid,
            dict(a_ptr=a, sig_ptr=sigma, puv_ptr=puv, pden_ptr=pden, o_ptr=o, den_ptr=den, scr_ptr=scr, y_ptr=y,
                 alpha_ptr=alpha, beta_ptr=beta, **q.region("dispatch"), **q.sizes("DV")),
            dict(**blocks, BLOCK_DV=_pow2(q.DV), DT=q.dt), cfg)
    return y, a, sigma, c, o, den


def fused_backward(dy: Tensor, x: Tensor, value: Tensor, alpha: Tensor, a: Tensor, sigma: Tensor, c: Tensor, o: Tensor,
             den: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int, by_count: bool):
    """Fused backward (3 launches): ``dx`` (x's dtype), ``dvalue`` (value's dtype), both contiguous;
    ``dalpha``, ``dbeta`` shaped like alpha, in the accumulation dtype (fp32, or fp64 for fp64 x)."""
    dy, x, value = _contiguous(dy), _contiguous(x), _contiguous(value)
    q = _geometry(x, value, heads, ph, pw, fh, fw)
    dev = x.device
    pdo = _empty((q.G, q.NC, q.M, q.DV), q.acc, dev)
    cfg, blocks = q.tiles("bwd_do")
    _launch(_bwd_do_kernel, q.grid,
            dict(dy_ptr=dy, a_ptr=a, sig_ptr=sigma, pdo_ptr=pdo, **q.region("bwd_do"), **q.sizes("DV")),
            dict(**blocks, BLOCK_DV=_pow2(q.DV), DT=q.dt, **q.dot), cfg)
    scr = _empty((q.G, q.NC, q.M * (2 * q.DV + q.D + 1)), q.acc, dev)
    dxi = _empty(x.shape, q.acc, dev)  # direct part, completed by the last launch (in place when x is fp32)
    dv = _empty(value.shape, value.dtype, dev)
    pdc = _empty((q.G, q.NC, q.M, q.D), q.acc, dev)
    pdab = _empty((q.G, q.NC, 2), q.acc, dev)
    cfg, blocks = q.tiles("bwd_main")
    _launch(_bwd_main_kernel, q.grid,
            dict(x_ptr=x, v_ptr=value, dy_ptr=dy, a_ptr=a, sig_ptr=sigma, c_ptr=c, o_ptr=o, den_ptr=den,
                 alpha_ptr=alpha, pdo_ptr=pdo, scr_ptr=scr, dx_ptr=dxi, dv_ptr=dv, pdc_ptr=pdc, pdab_ptr=pdab,
                 **q.region("bwd_main"), **q.sizes("ph", "pw", "D", "DV")),
            dict(BY_COUNT=by_count, **blocks, BLOCK_D=_pow2(q.D), BLOCK_DV=_pow2(q.DV), KH=q.KH, KW=q.KW, DT=q.dt,
                 **q.dot), cfg)
    dx = dxi if x.dtype == q.acc else _empty(x.shape, x.dtype, dev)
    # summed and kept in the accumulation dtype; cast to each scalar's own dtype by the autograd (a 16-bit
    # alpha must not round or overflow beta's gradient)
    dalpha = _empty(alpha.shape, q.acc, dev)
    dbeta = _empty(alpha.shape, q.acc, dev)
    cfg, blocks = q.tiles("bwd_pool")
    _launch(_bwd_pool_kernel, q.grid,
            dict(dxi_ptr=dxi, dx_ptr=dx, c_ptr=c, pdc_ptr=pdc, pdab_ptr=pdab, scr_ptr=scr, dalpha_ptr=dalpha,
                 dbeta_ptr=dbeta, **q.region("bwd_pool"), **q.sizes("ph", "pw", "D"), NPART=q.G * q.NC),
            dict(**blocks, BLOCK_D=_pow2(q.D), BLOCK_P=policy().partial_block, KH=q.KH, KW=q.KW, DT=q.dt), cfg)
    if q.G * q.NC == 0:  # empty input: no program ran
        dalpha.zero_()
        dbeta.zero_()
    return dx, dv, dalpha, dbeta


class ClusterFunction(torch.autograd.Function):
    """Eager autograd of the fused op: calls :func:`fused_forward` / :func:`fused_backward` directly (the custom
    ops below wrap the same functions for ``torch.compile``, at a higher per-call cost in eager mode); both
    share :func:`_setup_context` and :func:`_grads`."""

    @staticmethod
    def forward(ctx, *inputs):
        out = fused_forward(*inputs)
        _setup_context(ctx, inputs, out)
        return out[0]

    @staticmethod
    def backward(ctx, dy):
        return _grads(ctx, dy, fused_backward)


@torch.library.custom_op("coc_kernels::cluster_fwd", mutates_args=())
def cluster_fwd(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int,
                fh: int, fw: int, by_count: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward as a custom op (what ``torch.compile`` sees). See :func:`fused_forward`."""
    return fused_forward(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count)


@cluster_fwd.register_fake
def _cluster_fwd_fake(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count):
    B, _, H, W = x.shape
    D, DV = x.shape[1] // heads, value.shape[1] // heads
    G, N, M = B * heads * fh * fw, (H // fh) * (W // fw), ph * pw
    acc = _acc(x.dtype)
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
    acc = _acc(x.dtype)
    return (x.new_empty(x.shape), value.new_empty(value.shape), alpha.new_empty(alpha.shape, dtype=acc),
            alpha.new_empty(alpha.shape, dtype=acc))


def _setup_context(ctx, inputs, output):
    x, value, alpha, beta, heads, ph, pw, fh, fw, by_count = inputs
    _, a, sigma, c, o, den = output
    ctx.save_for_backward(x, value, alpha, beta, a, sigma, c, o, den)
    ctx.geom = (heads, ph, pw, fh, fw, by_count)
    ctx.set_materialize_grads(False)  # a, sigma, c, o, den get no gradient: no zero tensors for them


def _grads(ctx, dy, backward_fn):
    """Gradients of (x, value, alpha, beta) through ``backward_fn`` (:func:`fused_backward` or the custom op);
    none at all when no gradient reaches y (grads are not materialised as zeros)."""
    if dy is None:
        return (None,) * 10
    x, value, alpha, beta, a, sigma, c, o, den = ctx.saved_tensors
    if torch.is_grad_enabled() and backward_fn is fused_backward:
        return _differentiable_grads(ctx, dy, x, value, alpha, beta) + (None,) * 6
    dx, dv, dalpha, dbeta = backward_fn(dy, x, value, alpha, a, sigma, c, o, den, *ctx.geom)
    return (dx, dv, dalpha.reshape(alpha.shape).to(alpha.dtype), dbeta.reshape(beta.shape).to(beta.dtype),
            None, None, None, None, None, None)


def _differentiable_grads(ctx, dy, x, value, alpha, beta):
    """``backward(create_graph=True)`` (double backward, gradient penalties): the kernels' backward is not
    itself differentiable, so these gradients come from the reference math, with a graph."""
    heads, ph, pw, fh, fw, by_count = ctx.geom
    ins = (x, value, alpha, beta)
    y = torch_math(context_cluster_light, *ins, heads=heads, proposal=(ph, pw), fold=(fh, fw),
                   denominator="count" if by_count else "similarity")
    want = [i for i in range(4) if ctx.needs_input_grad[i]]
    got = torch.autograd.grad(y, [ins[i] for i in want], dy, create_graph=True, allow_unused=True)
    grads = [None] * 4
    for i, g in zip(want, got):
        grads[i] = torch.zeros_like(ins[i]) if g is None else g
    return tuple(grads)


def _backward(ctx, dy, *_unused):
    return _grads(ctx, dy, cluster_bwd)


cluster_fwd.register_autograd(_backward, setup_context=_setup_context)
