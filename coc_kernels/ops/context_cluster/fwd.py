"""Forward kernels (3 launches, each on a ``(G, NC)`` grid; see the package's plan):

1. ``_pool_kernel``: partial window sums of x, the centres' numerators, and (AGG) of the value, ``vc``;
2. ``_assign_kernel``: centres, similarities, the hard assignment ``a, sigma`` and (AGG) partial cluster sums
   ``U``, added to the pool kernel's ``vc``;
3. ``_dispatch_kernel``: ``o = (U + vc) / (den + 1)`` and ``y_n = sigma_n o[a_n]``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .dots import dot_dense, dot_exact, dot_exact_left, split3
from .tiles import (chunk, cm_block, col_norms, group_base, kernel, load_assignment, load_tile, mc_block, next_tile,
                    norm_cols, pool_member, store_tile, sum_partials, sum_vec_partials, tile, windows)


@triton.jit
def _window_sums(xb, vb, mem_ptr, offs_m, offs_d, offs_dv, k, RPC, rh, rw, W, HW,
                 CAREFUL: tl.constexpr, AGG: tl.constexpr, LEFT: tl.constexpr, PIECES: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                 STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, OP: tl.constexpr):
    """Chunk k's window sums of x, with AGG of v (else zeros), and per window the points holding a non-finite x
    (CAREFUL; else zeros): ``[BLOCK_M, BLOCK_D]`` / ``[BLOCK_M, BLOCK_DV]`` with LEFT (membership^T @ tile^T),
    else ``[BLOCK_D, BLOCK_M]`` / ``[BLOCK_DV, BLOCK_M]``. CAREFUL: non-finite x values enter the dot as 0
    (``inf * 0`` would reach every window), and are counted instead; otherwise x enters as it is."""
    if LEFT:
        acc = tl.zeros((BLOCK_M, offs_d.shape[0]), dtype=DT)
        vc = tl.zeros((BLOCK_M, offs_dv.shape[0]), dtype=DT)
    else:
        acc = tl.zeros((offs_d.shape[0], BLOCK_M), dtype=DT)
        vc = tl.zeros((offs_dv.shape[0], BLOCK_M), dtype=DT)
    bad = tl.zeros((BLOCK_M,), dtype=tl.int32)
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, _n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        xt = load_tile(xb, offs_d, sp, valid, D, HW, DT)
        inside = pool_member(mem_ptr, offs_m, r0, r, c0, valid, rw, LEFT, BLOCK_N, BW)
        if CAREFUL:
            finite = tl.abs(xt) < float("inf")  # false for NaN too
            bad_n = tl.max(tl.where(finite, 0, 1), axis=0)  # [BN]
            if LEFT:
                bad += tl.sum(tl.where((bad_n[None, :] > 0) & (inside != 0), 1, 0), axis=1)
            else:
                bad += tl.sum(tl.where((bad_n[:, None] > 0) & (inside != 0), 1, 0), axis=0)
            xt = tl.where(finite, xt, 0.0)
        if LEFT:
            acc = dot_exact_left(inside, tl.trans(xt), acc, PREC, OP, PIECES)
        else:
            acc = dot_exact(xt, inside, acc, PREC, OP, PIECES)
        if AGG:
            vt = load_tile(vb, offs_dv, sp, valid, DV, HW, DT)
            if LEFT:
                vc = dot_exact_left(inside, tl.trans(vt), vc, PREC, OP, PIECES)
            else:
                vc = dot_exact(vt, inside, vc, PREC, OP, PIECES)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)
    return acc, vc, bad


@kernel
def _pool_kernel(x_ptr, v_ptr, mem_ptr, pc_ptr, puv_ptr, H, W_v, fh, fw, rh, rw_v, ph, pw, M, NC, RPC,
                 AGG: tl.constexpr, LEFT: tl.constexpr, PIECES: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr, RARE_STAGES: tl.constexpr,
                 DT: tl.constexpr, PREC: tl.constexpr, OP: tl.constexpr):
    """Partial window means of chunk k for the centres: ``pc [G, NC, M, D]`` (window sums over the chunk's
    points, divided by the whole window's size); with AGG, those of the value too, ``vc``, into the chunk's
    slot of ``puv [G, NC, M, DV]`` (the assign kernel adds the chunk's cluster sums ``U`` to it). Window
    membership comes from the table ``mem`` (``membership.pool_table``; LEFT: its layout for the transposed
    products) and serves both dots. RARE_STAGES: the pipelining of the non-finite pass (``config.pool_rare_stages``).

    A window holding a non-finite x is NaN in every channel (its normalised centre is NaN either way, as
    adaptive_avg_pool2d's would be); other windows stay finite. The sums take x as it is; a non-finite x makes
    its channel non-finite in every window (``inf * 0``), and only then (or where a sum overflowed) are the x
    sums made again with non-finite values entering as 0 and the windows holding one counted. Non-finite values
    of v reach every window, as in the original's dense sums."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    xb = x_ptr + group_base(g, fh, fw, rh, rw, D, H, W)
    vb = v_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    _lo_r, _hi_r, _lo_c, _hi_c, inv = windows(offs_m, M, rh, rw, ph, pw, DT)
    acc, vc, bad = _window_sums(xb, vb, mem_ptr, offs_m, offs_d, offs_dv, k, RPC, rh, rw, W, HW, False,
                                AGG, LEFT, PIECES, BLOCK_M, BLOCK_N, BW, D, DV, STAGES, DT, PREC, OP)
    # rare: a non-finite x. One reduction over every element (two in a row over a tensor-memory accumulator crash
    # triton 3.6's TMEM layout pass at sm_100)
    if tl.max(tl.where(tl.abs(acc) < float("inf"), 0, 1), axis=None) > 0:
        acc, _vc, bad = _window_sums(xb, vb, mem_ptr, offs_m, offs_d, offs_dv, k, RPC, rh, rw, W, HW,
                                     True, False, LEFT, PIECES, BLOCK_M, BLOCK_N, BW, D, DV, RARE_STAGES, DT,
                                     PREC, OP)
    part = g.to(tl.int64) * NC + k
    if LEFT:
        acc = tl.where(bad[:, None] > 0, float("nan"), acc * inv[:, None])
        ptrs, mask = mc_block(pc_ptr + part * M * D, offs_m, offs_d, M, D)
        tl.store(ptrs, acc, mask=mask)
        if AGG:
            ptrs, mask = mc_block(puv_ptr + part * M * DV, offs_m, offs_dv, M, DV)
            tl.store(ptrs, vc * inv[:, None], mask=mask)
    else:
        acc = tl.where(bad[None, :] > 0, float("nan"), acc * inv[None, :])
        ptrs, mask = cm_block(pc_ptr + part * M * D, offs_d, offs_m, D, M)
        tl.store(ptrs, acc, mask=mask)
        if AGG:
            ptrs, mask = cm_block(puv_ptr + part * M * DV, offs_dv, offs_m, DV, M)
            tl.store(ptrs, vc * inv[None, :], mask=mask)


@kernel
def _assign_kernel(x_ptr, v_ptr, pc_ptr, c_ptr, a_ptr, sig_ptr, puv_ptr, pden_ptr, alpha_ptr, beta_ptr,
                   H, W_v, fh, fw, rh, rw_v, M, NC, RPC,
                   AGG: tl.constexpr, BY_COUNT: tl.constexpr, PIECES: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr,
                   PREC: tl.constexpr, OP: tl.constexpr):
    """Centres from the partials (chunk 0 stores ``c [G, M, D]``); assignment ``a, sigma [G, N]`` of chunk k;
    with AGG, partial ``U + vc`` (``puv [G, NC, M, DV]``: the chunk's ``U`` added to the ``vc`` the pool kernel
    left there) and denominators (``pden [G, NC, M]``). PIECES: bf16 pieces of an x value (``dots.pieces``)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    eps = tl.full((), 1e-12, DT)  # F.normalize's clamp in the compute dtype (a bare literal is fp32)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    xb = x_ptr + group_base(g, fh, fw, rh, rw, D, H, W)
    alpha = tl.load(alpha_ptr).to(DT)
    beta = tl.load(beta_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    # padded centres: z = -inf, s = 0 (they come after every real one, so they never win a tie; NaN where
    # alpha or beta is, as every real centre's z then is)
    beta_m = tl.where(m_ok, beta, float("-inf") + beta * 0.0)

    c = sum_partials(pc_ptr + g64 * NC * M * D, offs_m, offs_d, M, D, NC, D, 1)  # [BM, BD]
    c_mask = m_ok[:, None] & (offs_d < D)[None, :]
    tl.store(c_ptr + g64 * M * D + offs_m[:, None] * D + offs_d[None, :], c, mask=c_mask & (k == 0))
    nrm = tl.sqrt(tl.sum(c * c, axis=1))
    c_hat = c / tl.maximum(nrm, eps)[:, None]
    # NaN similarities (torch's max picks them: first NaN index, value NaN) come from a non-finite centre
    # (a whole row: the first such centre wins for every point) or a non-finite point (a whole column: 0 wins)
    # (a centre is non-finite when a value is: an overflowed sum of squares of finite values makes c_hat = 0,
    # as F.normalize's c / inf does)
    c_bad = tl.max(tl.where(tl.abs(c) < float("inf"), 0, 1), axis=1) > 0
    nan_c = tl.min(tl.where(m_ok & c_bad, offs_m, BLOCK_M), axis=0)
    if PREC == "split":
        c_hi, c_mid, c_lo = split3(c_hat)
    else:
        c_hi, c_mid, c_lo = c_hat, c_hat, c_hat

    if AGG:
        vb = v_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
        offs_dv = tl.arange(0, BLOCK_DV)
        uv = tl.zeros((BLOCK_M, BLOCK_DV), dtype=DT)  # U: sum of sigma v over the cluster, [BM, BDV]
        den = tl.zeros((BLOCK_M,), dtype=DT)
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        _r, _col, valid, n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        xt = load_tile(xb, offs_d, sp, valid, D, HW, DT)
        if PIECES == 1:
            # bf16 x: c_hat @ x on its one piece (3 products, no split of the tile), then alpha / |x| per point
            # (fp32 and fp16 split x_hat: with 3 or 2 pieces the raw tile saves nothing). Only bf16 values of
            # 1e37 and more can overflow the raw products (x_hat's are at most 1): their windows' sums overflow too
            cos = dot_dense(c_hi, c_mid, c_lo, xt, PREC, OP, PIECES)  # [BM, BN], times |x|
            z = beta_m[:, None] + (alpha / tl.maximum(col_norms(xt), eps))[None, :] * cos
        else:
            x_hat, _xn = norm_cols(xt, eps)
            z = beta_m[:, None] + alpha * dot_dense(c_hi, c_mid, c_lo, x_hat, PREC, OP)
        s = 1.0 / (1.0 + tl.exp(-z))
        s = tl.where(s == s, s, -1.0)  # NaN below every number
        sigma = tl.max(s, axis=0)
        a = tl.min(tl.where(s == sigma[None, :], offs_m[:, None], BLOCK_M), axis=0)  # first index of the max
        bad_x = sigma < 0.0  # every similarity NaN: a non-finite point
        a = tl.where(bad_x, 0, tl.where(nan_c < BLOCK_M, nan_c, a))
        sigma = tl.where(bad_x | (nan_c < BLOCK_M), float("nan"), sigma)
        tl.store(a_ptr + g64 * N + n, a, mask=valid)
        tl.store(sig_ptr + g64 * N + n, sigma, mask=valid)
        if AGG:
            # [BM, BN], the exact operand on the left (laid out like the similarities); masked points in no cluster
            onehot = offs_m[:, None] == tl.where(valid, a, -1)[None, :]
            if BY_COUNT:
                den += tl.sum(onehot.to(DT), axis=1)
            else:
                den += tl.sum(tl.where(onehot, sigma[None, :], 0.0), axis=1)
            vt = load_tile(vb, offs_dv, sp, valid, DV, HW, DT)
            uv = dot_exact_left(onehot.to(DT), tl.trans(vt * sigma[None, :]), uv, PREC, OP)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)
    if AGG:
        part = g64 * NC + k
        ptrs, mask = mc_block(puv_ptr + part * M * DV, offs_m, offs_dv, M, DV)
        tl.store(ptrs, uv + tl.load(ptrs, mask=mask, other=0.0), mask=mask)  # U + vc (vc: the pool kernel's)
        tl.store(pden_ptr + part * M + offs_m, den, mask=m_ok)


@kernel
def _dispatch_kernel(a_ptr, sig_ptr, puv_ptr, pden_ptr, o_ptr, den_ptr, scr_ptr, y_ptr, alpha_ptr, beta_ptr,
                     H, W_v, fh, fw, rh, rw_v, M, NC, RPC,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, DV: tl.constexpr,
                     BLOCK_DV: tl.constexpr,
                     VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr):
    """``o = (U + vc) / (den + 1)`` (chunk 0 stores ``o [G, M, DV]``, ``den [G, M]``); ``y_n = sigma_n o[a_n]``.
    y is NaN everywhere if alpha or beta is not finite (checked here rather than by a host sync)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < M
    uv = sum_partials(puv_ptr + g64 * NC * M * DV, offs_m, offs_dv, M, DV, NC, DV, 1)  # [BM, BDV]
    den = sum_vec_partials(pden_ptr + g64 * NC * M, offs_m, M, NC)
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
    yb = y_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        _r, _col, valid, n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a, sigma = load_assignment(a_ptr, sig_ptr, g64 * N, n, valid, 0)
        gmask = (offs_dv < DV)[:, None] & valid[None, :]
        o_a = tl.load(scr + a[None, :] * DV + offs_dv[:, None], mask=gmask, other=0.0)  # [BDV, BN]
        store_tile(yb, o_a * sigma[None, :] + (chan_nan[:, None] + nan_if_bad), offs_dv, sp, valid, DV, HW)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)
