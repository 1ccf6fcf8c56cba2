"""Triton kernels of the Context Cluster mixer (forward, backward, and each step on its own).

Every program handles one group g = (image b, head h, region i, j) and addresses its points directly in
the ``[B, C, H, W]`` layout through strides: no rearrange copies, no ``[G, M, N]`` or ``[G, M, N, d]``
tensor in memory. Tiles of ``BLOCK_N`` points are streamed; the per-group state (centres, their
values, the aggregates) lives in registers as ``[BLOCK_M, BLOCK_D]`` tiles. All products go through
``tl.dot`` with ``input_precision="ieee"`` (fp32, no TF32: the assignment is an argmax and must agree
with the torch reference), with one-hot / pooling-weight matrices playing the role of gather, scatter
and pooling. Loads are upcast to fp32; outputs are stored in the caller's dtype.

Forward (one kernel, three passes over the group's points):
  1. pool ``c`` (from x) and ``vc`` (from value) with exact ``adaptive_avg_pool2d`` windows;
  2. ``s = sigmoid(beta + alpha * <c_hat, x_hat>)``, ``a = argmax_m s`` (first index on ties),
     ``sigma = max_m s``; aggregate ``U = sum sigma v`` and the denominator; ``o = (U + vc)/(D + 1)``;
  3. dispatch ``y_n = sigma_n * o[a_n]``.
Saved for backward: ``a [G, N]`` int32, ``sigma [G, N]``, ``c [G, M, d]``, ``o [G, M, dv]``,
``den [G, M]`` (all fp32): O(G * (N + M * d)).

Backward (one kernel, three passes): ``do``; then dv, dalpha, dbeta, the direct part of dx and
``d c_hat``; then the pooling adjoint of ``dc`` added to dx. Per-group dalpha/dbeta partials are summed
by torch afterwards (no float atomics: results are bitwise reproducible).
"""
from __future__ import annotations

import triton
import triton.language as tl


# ----------------------------------------------------------------------------------------------------
# helpers shared by all kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _group_offset(g, heads, fh, fw, rh, rw, C, s_b, s_c, s_h, s_w):
    """Element offset of channel 0, pixel (0, 0) of group g's head and region."""
    j = g % fw
    i = (g // fw) % fh
    h = (g // (fw * fh)) % heads
    b = g // (fw * fh * heads)
    return (b.to(tl.int64) * s_b + (h * C).to(tl.int64) * s_c
            + (i * rh).to(tl.int64) * s_h + (j * rw).to(tl.int64) * s_w)


@triton.jit
def _point_offsets(offs_n, offs_c, rw, s_c, s_h, s_w):
    r = offs_n // rw
    s = offs_n % rw
    return (r * s_h + s * s_w)[:, None] + offs_c[None, :] * s_c


@triton.jit
def _load_points(ptr, offs_n, offs_c, N, C, rw, s_c, s_h, s_w, DT: tl.constexpr):
    """``[BLOCK_N, BLOCK_C]`` tile in the compute dtype DT of point features (zeros outside)."""
    mask = (offs_n < N)[:, None] & (offs_c < C)[None, :]
    return tl.load(ptr + _point_offsets(offs_n, offs_c, rw, s_c, s_h, s_w), mask=mask, other=0.0).to(DT)


@triton.jit
def _store_points(ptr, val, offs_n, offs_c, N, C, rw, s_c, s_h, s_w):
    mask = (offs_n < N)[:, None] & (offs_c < C)[None, :]
    tl.store(ptr + _point_offsets(offs_n, offs_c, rw, s_c, s_h, s_w), val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pool_weights(offs_m, offs_n, M, N, rh, rw, ph, pw, DT: tl.constexpr):
    """``[BLOCK_M, BLOCK_N]``: 1/|window m| where point n lies in adaptive-avg-pool window m, else 0."""
    mi = offs_m // pw
    mj = offs_m % pw
    r0 = (mi * rh) // ph
    r1 = ((mi + 1) * rh + ph - 1) // ph
    c0 = (mj * rw) // pw
    c1 = ((mj + 1) * rw + pw - 1) // pw
    area = tl.maximum((r1 - r0) * (c1 - c0), 1).to(DT)
    r = (offs_n // rw)[None, :]
    s = (offs_n % rw)[None, :]
    inside = ((r >= r0[:, None]) & (r < r1[:, None]) & (s >= c0[:, None]) & (s < c1[:, None])
              & (offs_m < M)[:, None] & (offs_n < N)[None, :])
    return tl.where(inside, 1.0 / area[:, None], 0.0)


@triton.jit
def _pool(ptr, M, N, C, rh, rw, ph, pw, s_c, s_h, s_w,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, DT: tl.constexpr):
    """Adaptive-avg-pool centres of one group: ``[BLOCK_M, BLOCK_C]`` in DT."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        w = _pool_weights(offs_m, offs_n, M, N, rh, rw, ph, pw, DT)
        t = _load_points(ptr, offs_n, offs_c, N, C, rw, s_c, s_h, s_w, DT)
        acc += tl.dot(w, t, input_precision="ieee")
    return acc


@triton.jit
def _normalize_rows(t, eps):
    """F.normalize along dim 1 (returns the normalised tile and the row norms)."""
    nrm = tl.sqrt(tl.sum(t * t, axis=1))
    return t / tl.maximum(nrm, eps)[:, None], nrm


@triton.jit
def _assign(c_hat, xt, offs_m, M, alpha, beta, eps):
    """Hard assignment of a tile of points. Returns ``a [BLOCK_N]`` int32, ``sigma``, ``x_hat``, ``|x|``."""
    x_hat, xn = _normalize_rows(xt, eps)
    cos = tl.dot(c_hat, tl.trans(x_hat), input_precision="ieee")  # [BLOCK_M, BLOCK_N]
    s = 1.0 / (1.0 + tl.exp(-(beta + alpha * cos)))
    s = tl.where((offs_m < M)[:, None], s, -1.0)
    a = tl.argmax(s, axis=0, tie_break_left=True).to(tl.int32)
    sigma = tl.max(s, axis=0)
    return a, sigma, x_hat, xn


@triton.jit
def _mat_ptrs(ptr, g64, offs_m, offs_c, M, C):
    """Pointers and mask of group g's row-major ``[M, C]`` block in a ``[G, M, C]`` buffer."""
    return (ptr + g64 * M * C + offs_m[:, None] * C + offs_c[None, :],
            (offs_m < M)[:, None] & (offs_c < C)[None, :])


@triton.jit
def _accumulate(U, den, oh, sigma, vt, BY_COUNT: tl.constexpr):
    """Aggregate one tile: ``U += (onehot * sigma)^T v``; ``den +=`` assigned count or sigma sum."""
    U += tl.dot(tl.trans(oh * sigma[:, None]), vt, input_precision="ieee")
    if BY_COUNT:
        den += tl.sum(oh, axis=0)
    else:
        den += tl.sum(oh * sigma[:, None], axis=0)
    return U, den


@triton.jit
def _dispatch(a_ptr, sig_ptr, o, yb, g64, offs_m, offs_dv, N, DV, rw, s_c, s_h, s_w,
              BLOCK_N: tl.constexpr, DT: tl.constexpr):
    """``y_n = sigma_n * o[a_n]`` for every point of the group, from the stored ``a`` and ``sigma``."""
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        a = tl.load(a_ptr + g64 * N + offs_n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + offs_n, mask=valid, other=0.0)
        yt = tl.dot(_onehot_t(a, offs_m, valid, DT), o, input_precision="ieee") * sigma[:, None]
        _store_points(yb, yt, offs_n, offs_dv, N, DV, rw, s_c, s_h, s_w)


@triton.jit
def _onehot_t(a, offs_m, valid_n, DT: tl.constexpr):
    """``[BLOCK_N, BLOCK_M]`` one-hot of the assignment (rows of invalid points are zero)."""
    return ((a[:, None] == offs_m[None, :]) & valid_n[:, None]).to(DT)


# ----------------------------------------------------------------------------------------------------
# fused forward / backward
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _coc_fwd_kernel(
    x_ptr, v_ptr, y_ptr, a_ptr, sig_ptr, c_ptr, o_ptr, den_ptr, alpha_ptr, beta_ptr,
    sxb, sxc, sxh, sxw, svb, svc, svh, svw, syb, syc, syh, syw,
    heads, fh, fw, rh, rw, ph, pw, M, N, D, DV,
    BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DT: tl.constexpr,
):
    g = tl.program_id(0)
    eps = 1e-12
    xb = x_ptr + _group_offset(g, heads, fh, fw, rh, rw, D, sxb, sxc, sxh, sxw)
    vb = v_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, svb, svc, svh, svw)
    yb = y_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, syb, syc, syh, syw)
    alpha = tl.load(alpha_ptr).to(DT)
    beta = tl.load(beta_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    g64 = g.to(tl.int64)

    # 1. centres and value centres
    c = _pool(xb, M, N, D, rh, rw, ph, pw, sxc, sxh, sxw, BLOCK_M, BLOCK_N, BLOCK_D, DT)
    vc = _pool(vb, M, N, DV, rh, rw, ph, pw, svc, svh, svw, BLOCK_M, BLOCK_N, BLOCK_DV, DT)
    c_p, c_mask = _mat_ptrs(c_ptr, g64, offs_m, offs_d, M, D)
    tl.store(c_p, c, mask=c_mask)
    c_hat, _ = _normalize_rows(c, eps)

    # 2. assignment + aggregate
    U = tl.zeros((BLOCK_M, BLOCK_DV), dtype=DT)
    den = tl.zeros((BLOCK_M,), dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        xt = _load_points(xb, offs_n, offs_d, N, D, rw, sxc, sxh, sxw, DT)
        a, sigma, _, _ = _assign(c_hat, xt, offs_m, M, alpha, beta, eps)
        tl.store(a_ptr + g64 * N + offs_n, a, mask=valid)
        tl.store(sig_ptr + g64 * N + offs_n, sigma, mask=valid)
        vt = _load_points(vb, offs_n, offs_dv, N, DV, rw, svc, svh, svw, DT)
        U, den = _accumulate(U, den, _onehot_t(a, offs_m, valid, DT), sigma, vt, BY_COUNT)
    o = (U + vc) / (den + 1.0)[:, None]
    o_p, o_mask = _mat_ptrs(o_ptr, g64, offs_m, offs_dv, M, DV)
    tl.store(o_p, o, mask=o_mask)
    tl.store(den_ptr + g64 * M + offs_m, den, mask=offs_m < M)
    tl.debug_barrier()  # a / sigma written above are read back by other threads below

    # 3. dispatch
    _dispatch(a_ptr, sig_ptr, o, yb, g64, offs_m, offs_dv, N, DV, rw, syc, syh, syw, BLOCK_N, DT)


@triton.jit
def _coc_bwd_kernel(
    x_ptr, v_ptr, dy_ptr, a_ptr, sig_ptr, c_ptr, o_ptr, den_ptr, alpha_ptr,
    dx_ptr, dv_ptr, dab_ptr,
    sxb, sxc, sxh, sxw, svb, svc, svh, svw, sdb, sdc, sdh, sdw,
    heads, fh, fw, rh, rw, ph, pw, M, N, D, DV,
    BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DT: tl.constexpr,
):
    """dx and dv are contiguous ``[B, C, H, W]`` (dx in fp32); ``dab [G, 2]`` gets (dalpha, dbeta)."""
    g = tl.program_id(0)
    eps = 1e-12
    W = fw * rw
    H = fh * rh
    xb = x_ptr + _group_offset(g, heads, fh, fw, rh, rw, D, sxb, sxc, sxh, sxw)
    vb = v_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, svb, svc, svh, svw)
    dyb = dy_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, sdb, sdc, sdh, sdw)
    dxb = dx_ptr + _group_offset(g, heads, fh, fw, rh, rw, D, heads * D * H * W, H * W, W, 1)
    dvb = dv_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, heads * DV * H * W, H * W, W, 1)
    alpha = tl.load(alpha_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    g64 = g.to(tl.int64)
    c_p, c_mask = _mat_ptrs(c_ptr, g64, offs_m, offs_d, M, D)
    c = tl.load(c_p, mask=c_mask, other=0.0)
    o_p, o_mask = _mat_ptrs(o_ptr, g64, offs_m, offs_dv, M, DV)
    o = tl.load(o_p, mask=o_mask, other=0.0)
    den = tl.load(den_ptr + g64 * M + offs_m, mask=offs_m < M, other=0.0)

    # A. do_m = sum_{a_n = m} sigma_n dy_n
    do = tl.zeros((BLOCK_M, BLOCK_DV), dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        a = tl.load(a_ptr + g64 * N + offs_n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + offs_n, mask=valid, other=0.0)
        dyt = _load_points(dyb, offs_n, offs_dv, N, DV, rw, sdc, sdh, sdw, DT)
        do += tl.dot(tl.trans(_onehot_t(a, offs_m, valid, DT) * sigma[:, None]), dyt, input_precision="ieee")
    inv = 1.0 / (den + 1.0)
    dU = do * inv[:, None]  # = d vc
    if BY_COUNT:
        dS = tl.zeros((BLOCK_M,), dtype=DT)
    else:
        dS = -tl.sum(do * o, axis=1) * inv
    c_hat, cn = _normalize_rows(c, eps)

    # B. dv (complete), dalpha, dbeta, direct part of dx, d c_hat
    dch = tl.zeros((BLOCK_M, BLOCK_D), dtype=DT)
    dal = tl.zeros((BLOCK_N,), dtype=DT)
    dbe = tl.zeros((BLOCK_N,), dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        a = tl.load(a_ptr + g64 * N + offs_n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + offs_n, mask=valid, other=0.0)
        oh = _onehot_t(a, offs_m, valid, DT)  # [BN, BM]
        dyt = _load_points(dyb, offs_n, offs_dv, N, DV, rw, sdc, sdh, sdw, DT)
        vt = _load_points(vb, offs_n, offs_dv, N, DV, rw, svc, svh, svw, DT)
        xt = _load_points(xb, offs_n, offs_d, N, D, rw, sxc, sxh, sxw, DT)
        o_a = tl.dot(oh, o, input_precision="ieee")
        dU_a = tl.dot(oh, dU, input_precision="ieee")
        c_a = tl.dot(oh, c_hat, input_precision="ieee")
        dsig = tl.sum(dyt * o_a, axis=1) + tl.sum(dU_a * vt, axis=1) + tl.sum(oh * dS[None, :], axis=1)
        wt = tl.trans(_pool_weights(offs_m, offs_n, M, N, rh, rw, ph, pw, DT))  # [BN, BM]
        dvt = sigma[:, None] * dU_a + tl.dot(wt, dU, input_precision="ieee")
        _store_points(dvb, dvt, offs_n, offs_dv, N, DV, rw, H * W, W, 1)
        x_hat, xn = _normalize_rows(xt, eps)
        cos = tl.sum(c_a * x_hat, axis=1)
        dz = tl.where(valid, dsig * sigma * (1.0 - sigma), 0.0)
        dbe += dz
        dal += dz * cos
        dcos = alpha * dz
        dxh = dcos[:, None] * c_a
        dch += tl.dot(tl.trans(oh * dcos[:, None]), x_hat, input_precision="ieee")
        proj = tl.where(xn > eps, tl.sum(x_hat * dxh, axis=1), 0.0)
        dxt = (dxh - x_hat * proj[:, None]) / tl.maximum(xn, eps)[:, None]
        _store_points(dxb, dxt, offs_n, offs_d, N, D, rw, H * W, W, 1)
    tl.store(dab_ptr + g64 * 2, tl.sum(dal, axis=0))
    tl.store(dab_ptr + g64 * 2 + 1, tl.sum(dbe, axis=0))
    cproj = tl.where(cn > eps, tl.sum(c_hat * dch, axis=1), 0.0)
    dc = (dch - c_hat * cproj[:, None]) / tl.maximum(cn, eps)[:, None]
    tl.debug_barrier()  # dx written above is read back (and completed) below

    # C. pooling adjoint of dc into dx
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        wt = tl.trans(_pool_weights(offs_m, offs_n, M, N, rh, rw, ph, pw, DT))
        dxt = _load_points(dxb, offs_n, offs_d, N, D, rw, H * W, W, 1, DT)
        dxt += tl.dot(wt, dc, input_precision="ieee")
        _store_points(dxb, dxt, offs_n, offs_d, N, D, rw, H * W, W, 1)


# ----------------------------------------------------------------------------------------------------
# the steps on their own (tests, the assignment maps, debugging)
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _pool_kernel(x_ptr, c_ptr, sxb, sxc, sxh, sxw, heads, fh, fw, rh, rw, ph, pw, M, N, D,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DT: tl.constexpr):
    """Centre proposal: ``c [G, M, D]`` fp32."""
    g = tl.program_id(0)
    xb = x_ptr + _group_offset(g, heads, fh, fw, rh, rw, D, sxb, sxc, sxh, sxw)
    c = _pool(xb, M, N, D, rh, rw, ph, pw, sxc, sxh, sxw, BLOCK_M, BLOCK_N, BLOCK_D, DT)
    c_p, c_mask = _mat_ptrs(c_ptr, g.to(tl.int64), tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), M, D)
    tl.store(c_p, c, mask=c_mask)


@triton.jit
def _assign_kernel(x_ptr, c_ptr, a_ptr, sig_ptr, alpha_ptr, beta_ptr, sxb, sxc, sxh, sxw,
                   heads, fh, fw, rh, rw, M, N, D,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DT: tl.constexpr):
    """Similarity + hard assignment from given centres ``c [G, M, D]``: ``a, sigma [G, N]``."""
    g = tl.program_id(0)
    g64 = g.to(tl.int64)
    xb = x_ptr + _group_offset(g, heads, fh, fw, rh, rw, D, sxb, sxc, sxh, sxw)
    alpha = tl.load(alpha_ptr).to(DT)
    beta = tl.load(beta_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    c_p, c_mask = _mat_ptrs(c_ptr, g64, offs_m, offs_d, M, D)
    c = tl.load(c_p, mask=c_mask, other=0.0)
    c_hat, _ = _normalize_rows(c, 1e-12)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        xt = _load_points(xb, offs_n, offs_d, N, D, rw, sxc, sxh, sxw, DT)
        a, sigma, _, _ = _assign(c_hat, xt, offs_m, M, alpha, beta, 1e-12)
        tl.store(a_ptr + g64 * N + offs_n, a, mask=valid)
        tl.store(sig_ptr + g64 * N + offs_n, sigma, mask=valid)


@triton.jit
def _aggregate_kernel(v_ptr, a_ptr, sig_ptr, vc_ptr, o_ptr, den_ptr, svb, svc, svh, svw,
                      heads, fh, fw, rh, rw, M, N, DV,
                      BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_DV: tl.constexpr, DT: tl.constexpr):
    """``o [G, M, DV] = (sum_{a_n=m} sigma_n v_n + vc_m) / (den_m + 1)``, ``den [G, M]``."""
    g = tl.program_id(0)
    g64 = g.to(tl.int64)
    vb = v_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, svb, svc, svh, svw)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    U = tl.zeros((BLOCK_M, BLOCK_DV), dtype=DT)
    den = tl.zeros((BLOCK_M,), dtype=DT)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = offs_n < N
        a = tl.load(a_ptr + g64 * N + offs_n, mask=valid, other=0)
        sigma = tl.load(sig_ptr + g64 * N + offs_n, mask=valid, other=0.0)
        vt = _load_points(vb, offs_n, offs_dv, N, DV, rw, svc, svh, svw, DT)
        U, den = _accumulate(U, den, _onehot_t(a, offs_m, valid, DT), sigma, vt, BY_COUNT)
    vc_p, mask_md = _mat_ptrs(vc_ptr, g64, offs_m, offs_dv, M, DV)
    o = (tl.load(vc_p, mask=mask_md, other=0.0) + U) / (den + 1.0)[:, None]
    o_p, _ = _mat_ptrs(o_ptr, g64, offs_m, offs_dv, M, DV)
    tl.store(o_p, o, mask=mask_md)
    tl.store(den_ptr + g64 * M + offs_m, den, mask=offs_m < M)


@triton.jit
def _dispatch_kernel(a_ptr, sig_ptr, o_ptr, y_ptr, syb, syc, syh, syw, heads, fh, fw, rh, rw, M, N, DV,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, DT: tl.constexpr):
    """``y_n = sigma_n * o[a_n]`` written into ``y [B, heads*DV, H, W]``."""
    g = tl.program_id(0)
    g64 = g.to(tl.int64)
    yb = y_ptr + _group_offset(g, heads, fh, fw, rh, rw, DV, syb, syc, syh, syw)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    o_p, o_mask = _mat_ptrs(o_ptr, g64, offs_m, offs_dv, M, DV)
    o = tl.load(o_p, mask=o_mask, other=0.0)
    _dispatch(a_ptr, sig_ptr, o, yb, g64, offs_m, offs_dv, N, DV, rw, syc, syh, syw, BLOCK_N, DT)


# ----------------------------------------------------------------------------------------------------
# host side: launchers, the torch custom ops and their autograd
# ----------------------------------------------------------------------------------------------------
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

BLOCK_N = 64


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def _geometry(x: Tensor, value: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int):
    B, C, H, W = x.shape
    D, DV = C // heads, value.shape[1] // heads
    rh, rw = H // fh, W // fw
    return dict(B=B, H=H, W=W, D=D, DV=DV, rh=rh, rw=rw, G=B * heads * fh * fw, N=rh * rw, M=ph * pw)


def _s(t: Tensor):
    return tuple(t.stride())


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Compute / saved-state dtype: fp32, or fp64 for fp64 inputs (interpreter tests, gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dt(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def pool(x: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int) -> Tensor:
    """Centre proposal of every group: ``[G, M, d]`` (fp32, fp64 for fp64 input)."""
    g = _geometry(x, x, heads, ph, pw, fh, fw)
    c = torch.empty(g["G"], g["M"], g["D"], device=x.device, dtype=_acc(x.dtype))
    _pool_kernel[(g["G"],)](x, c, *_s(x), heads, fh, fw, g["rh"], g["rw"], ph, pw, g["M"], g["N"], g["D"],
                            BLOCK_M=_pow2(g["M"]), BLOCK_N=BLOCK_N, BLOCK_D=_pow2(g["D"]), DT=_dt(x.dtype))
    return c


def assign(x: Tensor, c: Tensor, alpha: Tensor, beta: Tensor, heads: int, fh: int, fw: int):
    """Hard assignment from centres ``c [G, M, d]``: ``a [G, N]`` int32 and ``sigma [G, N]`` (c's dtype)."""
    G, M, D = c.shape
    B, _, H, W = x.shape
    rh, rw = H // fh, W // fw
    N = rh * rw
    a = torch.empty(G, N, device=x.device, dtype=torch.int32)
    sigma = torch.empty(G, N, device=x.device, dtype=c.dtype)
    _assign_kernel[(G,)](x, c.contiguous(), a, sigma, alpha, beta, *_s(x), heads, fh, fw, rh, rw, M, N, D,
                         BLOCK_M=_pow2(M), BLOCK_N=BLOCK_N, BLOCK_D=_pow2(D), DT=_dt(c.dtype))
    return a, sigma


def aggregate(value: Tensor, a: Tensor, sigma: Tensor, vc: Tensor, heads: int, fh: int, fw: int, by_count: bool):
    """``o [G, M, dv]`` and the denominators ``den [G, M]`` from an assignment."""
    G, M, DV = vc.shape
    _, _, H, W = value.shape
    rh, rw = H // fh, W // fw
    N = rh * rw
    o = torch.empty(G, M, DV, device=value.device, dtype=vc.dtype)
    den = torch.empty(G, M, device=value.device, dtype=vc.dtype)
    _aggregate_kernel[(G,)](value, a.contiguous(), sigma.contiguous(), vc.contiguous(), o, den, *_s(value),
                            heads, fh, fw, rh, rw, M, N, DV, BY_COUNT=by_count,
                            BLOCK_M=_pow2(M), BLOCK_N=BLOCK_N, BLOCK_DV=_pow2(DV), DT=_dt(vc.dtype))
    return o, den


def dispatch(a: Tensor, sigma: Tensor, o: Tensor, B: int, heads: int, H: int, W: int, fh: int, fw: int,
             dtype=torch.float32) -> Tensor:
    """``y [B, heads*dv, H, W]`` with ``y_n = sigma_n * o[a_n]``."""
    G, M, DV = o.shape
    rh, rw = H // fh, W // fw
    y = torch.empty(B, heads * DV, H, W, device=o.device, dtype=dtype)
    _dispatch_kernel[(G,)](a.contiguous(), sigma.contiguous(), o.contiguous(), y, *_s(y), heads, fh, fw, rh, rw,
                           M, rh * rw, DV, BLOCK_M=_pow2(M), BLOCK_N=BLOCK_N, BLOCK_DV=_pow2(DV),
                           DT=_dt(o.dtype))
    return y


@torch.library.custom_op("coc_kernels::cluster_fwd", mutates_args=())
def cluster_fwd(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int,
                fh: int, fw: int, by_count: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused forward. Returns ``y`` (value's dtype) and the saved ``a, sigma, c, o, den``."""
    g = _geometry(x, value, heads, ph, pw, fh, fw)
    G, M, N, D, DV = g["G"], g["M"], g["N"], g["D"], g["DV"]
    dev = x.device
    y = torch.empty(g["B"], heads * DV, g["H"], g["W"], device=dev, dtype=value.dtype)
    a = torch.empty(G, N, device=dev, dtype=torch.int32)
    acc = _acc(x.dtype)
    sigma = torch.empty(G, N, device=dev, dtype=acc)
    c = torch.empty(G, M, D, device=dev, dtype=acc)
    o = torch.empty(G, M, DV, device=dev, dtype=acc)
    den = torch.empty(G, M, device=dev, dtype=acc)
    _coc_fwd_kernel[(G,)](
        x, value, y, a, sigma, c, o, den, alpha, beta, *_s(x), *_s(value), *_s(y),
        heads, fh, fw, g["rh"], g["rw"], ph, pw, M, N, D, DV,
        BY_COUNT=by_count, BLOCK_M=_pow2(M), BLOCK_N=BLOCK_N, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV),
        DT=_dt(x.dtype))
    return y, a, sigma, c, o, den


@cluster_fwd.register_fake
def _cluster_fwd_fake(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count):
    g = _geometry(x, value, heads, ph, pw, fh, fw)
    G, M, N = g["G"], g["M"], g["N"]
    acc = _acc(x.dtype)
    return (value.new_empty(g["B"], heads * g["DV"], g["H"], g["W"]), x.new_empty(G, N, dtype=torch.int32),
            x.new_empty(G, N, dtype=acc), x.new_empty(G, M, g["D"], dtype=acc),
            x.new_empty(G, M, g["DV"], dtype=acc), x.new_empty(G, M, dtype=acc))


@torch.library.custom_op("coc_kernels::cluster_bwd", mutates_args=())
def cluster_bwd(dy: Tensor, x: Tensor, value: Tensor, alpha: Tensor, a: Tensor, sigma: Tensor, c: Tensor,
                o: Tensor, den: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int,
                by_count: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: ``dx, dvalue, dalpha, dbeta``."""
    g = _geometry(x, value, heads, ph, pw, fh, fw)
    G, M, N, D, DV = g["G"], g["M"], g["N"], g["D"], g["DV"]
    acc = _acc(x.dtype)
    dx = torch.empty(x.shape, device=x.device, dtype=acc)  # completed in place by the kernel's last pass
    dv = torch.empty(value.shape, device=x.device, dtype=value.dtype)
    dab = torch.empty(G, 2, device=x.device, dtype=acc)
    _coc_bwd_kernel[(G,)](
        x, value, dy, a, sigma, c, o, den, alpha, dx, dv, dab, *_s(x), *_s(value), *_s(dy),
        heads, fh, fw, g["rh"], g["rw"], ph, pw, M, N, D, DV,
        BY_COUNT=by_count, BLOCK_M=_pow2(M), BLOCK_N=BLOCK_N, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV),
        DT=_dt(x.dtype))
    # fixed-order torch reductions of the per-group partials: deterministic, and fresh tensors
    dalpha = dab[:, 0].sum().reshape(alpha.shape).to(alpha.dtype)
    dbeta = dab[:, 1].sum().reshape(alpha.shape).to(alpha.dtype)
    return dx.to(x.dtype), dv, dalpha, dbeta


@cluster_bwd.register_fake
def _cluster_bwd_fake(dy, x, value, alpha, a, sigma, c, o, den, heads, ph, pw, fh, fw, by_count):
    return torch.empty_like(x), torch.empty_like(value), torch.empty_like(alpha), torch.empty_like(alpha)


def _setup_context(ctx, inputs, output):
    x, value, alpha, beta, heads, ph, pw, fh, fw, by_count = inputs
    _, a, sigma, c, o, den = output
    ctx.save_for_backward(x, value, alpha, a, sigma, c, o, den)
    ctx.geom = (heads, ph, pw, fh, fw, by_count)
    ctx.beta_meta = (beta.shape, beta.dtype)


def _backward(ctx, dy, *_unused):
    x, value, alpha, a, sigma, c, o, den = ctx.saved_tensors
    dx, dv, dalpha, dbeta = cluster_bwd(dy, x, value, alpha, a, sigma, c, o, den, *ctx.geom)
    shape, dtype = ctx.beta_meta
    return dx, dv, dalpha, dbeta.reshape(shape).to(dtype), None, None, None, None, None, None


cluster_fwd.register_autograd(_backward, setup_context=_setup_context)
