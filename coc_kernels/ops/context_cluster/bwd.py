"""Backward kernels (3 launches, each on a ``(G, NC)`` grid; see the package's plan):

1. ``_bwd_do_kernel``: partial ``do_m = sum_{a_n=m} sigma_n dy_n``;
2. ``_bwd_main_kernel``: dv (complete), the direct part of dx, partial ``d c_hat`` and (dalpha, dbeta);
3. ``_bwd_pool_kernel``: ``dc`` through the normalisation, its pooling adjoint added to dx; the (dalpha,
   dbeta) partials summed in a fixed order.
"""
from __future__ import annotations

import triton.language as tl

from .dots import dot_exact, dot_exact_left
from .tiles import (chunk, cm_block, group_base, kernel, load_assignment, load_tile, mc_block, next_tile,
                    norm_cols, adjoint_table, pool_adjoint, store_tile, sum_partials, tile, windows)


@kernel
def _bwd_do_kernel(dy_ptr, a_ptr, sig_ptr, pdo_ptr, H, W_v, fh, fw, rh, rw_v, M, NC, RPC,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, DV: tl.constexpr,
                   BLOCK_DV: tl.constexpr,
                   VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                   OP: tl.constexpr):
    """Partial ``do_m = sum_{a_n = m} sigma_n dy_n`` of chunk k: ``pdo [G, NC, M, DV]``."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    dyb = dy_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    # the one-hot as the left operand, do as [BM, BDV] (16 / 64 centres: half the instructions and registers);
    # at 32 centres on 4 warps triton's layout of that product costs more than the one-hot on the right
    LEFT: tl.constexpr = BLOCK_M != 32
    if LEFT:
        acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=DT)
    else:
        acc = tl.zeros((BLOCK_DV, BLOCK_M), dtype=DT)
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        _r, _col, valid, n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a, sigma = load_assignment(a_ptr, sig_ptr, g64 * N, n, valid, -1)
        dys = load_tile(dyb, offs_dv, sp, valid, DV, HW, DT) * sigma[None, :]  # [BDV, BN]
        if LEFT:
            acc = dot_exact_left((offs_m[:, None] == a[None, :]).to(DT), tl.trans(dys), acc, PREC, OP)
        else:
            acc = dot_exact(dys, (a[:, None] == offs_m[None, :]).to(DT), acc, PREC, OP)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)
    part = g64 * NC + k
    if LEFT:
        ptrs, mask = mc_block(pdo_ptr + part * M * DV, offs_m, offs_dv, M, DV)
    else:
        ptrs, mask = cm_block(pdo_ptr + part * M * DV, offs_dv, offs_m, DV, M)
    tl.store(ptrs, acc, mask=mask)


@kernel
def _bwd_main_kernel(x_ptr, v_ptr, dy_ptr, a_ptr, sig_ptr, c_ptr, o_ptr, den_ptr, alpha_ptr, pdo_ptr, scr_ptr,
                     dx_ptr, dv_ptr, pdc_ptr, pdab_ptr,
                     H, W_v, fh, fw, rh, rw_v, ph, pw, M, NC, RPC,
                     BY_COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr,
                     D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     KH: tl.constexpr, KW: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr, DT: tl.constexpr,
                     PREC: tl.constexpr, OP: tl.constexpr):
    """Chunk k: dv (complete), the direct part of dx (fp32/fp64 ``dx``, contiguous), partial ``d c_hat``
    (``pdc [G, NC, M, D]``) and partial (dalpha, dbeta) (``pdab [G, NC, 2]``)."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    part = g64 * NC + k
    eps = tl.full((), 1e-12, DT)  # F.normalize's clamp in the compute dtype (a bare literal is fp32)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    N = rh * rw
    xb = x_ptr + group_base(g, fh, fw, rh, rw, D, H, W)
    vb = v_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    dyb = dy_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    dxb = dx_ptr + group_base(g, fh, fw, rh, rw, D, H, W)
    dvb = dv_ptr + group_base(g, fh, fw, rh, rw, DV, H, W)
    alpha = tl.load(alpha_ptr).to(DT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < M
    dv_ok = offs_dv < DV
    d_ok = offs_d < D

    # group state, [channels, centres]: dU = do / (den + 1) (= d vc), dS, c_hat
    do = sum_partials(pdo_ptr + g64 * NC * M * DV, offs_dv, offs_m, DV, M, NC, 1, DV)  # [BDV, BM]
    den = tl.load(den_ptr + g64 * M + offs_m, mask=m_ok, other=0.0)
    inv = 1.0 / (den + 1.0)
    dU = do * inv[None, :]
    c_ptrs, dm_mask = cm_block(c_ptr + g64 * M * D, offs_d, offs_m, D, M)
    c_hat, _cn = norm_cols(tl.load(c_ptrs, mask=dm_mask, other=0.0), eps)  # [BD, BM]
    # this program's copy for the gathers, blocks of BLOCK_M rows at compile-time offsets (a gather of o or
    # c_hat is then the dU gather's addresses plus a constant, no pointers of its own): dU [BM, DV] | o [BM, DV]
    # | c_hat [BM, D] | dS [BM] | dU / |window| [BM, DV] | its adjoint table [KH*KW*BM, DV]
    S_O: tl.constexpr = BLOCK_M * DV
    S_C: tl.constexpr = 2 * BLOCK_M * DV
    S_S: tl.constexpr = S_C + BLOCK_M * D
    S_W: tl.constexpr = S_S + BLOCK_M
    S_T: tl.constexpr = S_W + BLOCK_M * DV
    scr = scr_ptr + part * (S_T + KH * KW * BLOCK_M * DV)
    ptrs, dvm_mask = cm_block(scr, offs_dv, offs_m, DV, M)
    tl.store(ptrs, dU, mask=dvm_mask)
    o_ptrs, _ = cm_block(o_ptr + g64 * M * DV, offs_dv, offs_m, DV, M)
    o = tl.load(o_ptrs, mask=dvm_mask, other=0.0)
    tl.store(ptrs + S_O, o, mask=dvm_mask)
    ptrs, _ = cm_block(scr + S_C, offs_d, offs_m, D, M)
    tl.store(ptrs, c_hat, mask=dm_mask)
    _lo_r, _hi_r, _lo_c, _hi_c, win_inv = windows(offs_m, M, rh, rw, ph, pw, DT)
    ptrs, _ = cm_block(scr + S_W, offs_dv, offs_m, DV, M)
    tl.store(ptrs, dU * win_inv[None, :], mask=dvm_mask)
    if not BY_COUNT:
        tl.store(scr + S_S + offs_m, -tl.sum(do * o, axis=0) * inv, mask=m_ok)
    tl.debug_barrier()
    adjoint_table(scr + S_W, scr + S_T, offs_dv, DV, ph, pw, KH, KW, BLOCK_M)
    tl.debug_barrier()

    # d c_hat as [BM, BD], the one-hot the dot's left operand: with it on the right ([BD, BM]) the loop's 2-warp
    # programs need more than 128 registers (triton 3.6 spills) and 8 % more instructions
    dch = tl.zeros((BLOCK_M, BLOCK_D), dtype=DT)
    dal = tl.zeros((BLOCK_N,), dtype=DT)
    dbe = tl.zeros((BLOCK_N,), dtype=DT)
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        a, sigma = load_assignment(a_ptr, sig_ptr, g64 * N, n, valid, 0)
        gv = dv_ok[:, None] & valid[None, :]
        gd = d_ok[:, None] & valid[None, :]
        ia = a[None, :] * DV + offs_dv[:, None]  # row a_n of the [M, DV] o and dU
        dU_a = tl.load(scr + ia, mask=gv, other=0.0)
        o_a = tl.load(scr + S_O + ia, mask=gv, other=0.0)
        dyt = load_tile(dyb, offs_dv, sp, valid, DV, HW, DT)
        vt = load_tile(vb, offs_dv, sp, valid, DV, HW, DT)
        dsig = tl.sum(dyt * o_a + dU_a * vt, axis=0)
        if not BY_COUNT:
            dsig += tl.load(scr + S_S + a, mask=valid, other=0.0)
        # dv_n = sigma_n dU[a_n] + sum_m w_mn dU_m
        dvt = sigma[None, :] * dU_a + pool_adjoint(scr + S_T, offs_dv, DV, r, col, valid, rh, rw, ph, pw, KH, KW)
        store_tile(dvb, dvt, offs_dv, sp, valid, DV, HW)
        # through s = sigmoid(beta + alpha cos) and the normalisation of x
        c_a = tl.load(scr + S_C + a[None, :] * D + offs_d[:, None], mask=gd, other=0.0)  # [BD, BN]
        x_hat, xn = norm_cols(load_tile(xb, offs_d, sp, valid, D, HW, DT), eps)
        dz = tl.where(valid, dsig * sigma * (1.0 - sigma), 0.0)
        cos_a = tl.sum(c_a * x_hat, axis=0)
        dbe += dz
        dal += dz * cos_a
        dcos = alpha * dz
        dch = dot_exact_left((offs_m[:, None] == a[None, :]).to(DT), tl.trans(x_hat * dcos[None, :]), dch, PREC, OP)
        # dx = (dxh - x_hat (x_hat . dxh)) / |x| with dxh = dcos c_a (no projection where |x| <= eps)
        proj = tl.where(xn > eps, cos_a, 0.0)
        scale = dcos / tl.maximum(xn, eps)
        store_tile(dxb, (c_a - x_hat * proj[None, :]) * scale[None, :], offs_d, sp, valid, D, HW)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)
    ptrs, mask = mc_block(pdc_ptr + part * M * D, offs_m, offs_d, M, D)
    tl.store(ptrs, dch, mask=mask)
    # (dalpha, dbeta) in one reduction (two leave a thread-index value to keep across the loop: a 4-12 B spill)
    tl.store(pdab_ptr + part * 2 + tl.arange(0, 2), tl.sum(tl.join(dal, dbe), axis=0))


@kernel
def _bwd_pool_kernel(dxi_ptr, dx_ptr, c_ptr, pdc_ptr, pdab_ptr, scr_ptr, dalpha_ptr, dbeta_ptr,
                     H, W_v, fh, fw, rh, rw_v, ph, pw, M, NC, RPC, NPART,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr, D: tl.constexpr,
                     BLOCK_D: tl.constexpr,
                     BLOCK_P: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, VEC: tl.constexpr,
                     STAGES: tl.constexpr, DT: tl.constexpr):
    """``dx = dxi + pooling adjoint of dc`` (both contiguous; may be the same buffer); program (0, 0) also
    sums the NPART (dalpha, dbeta) partials in a fixed order."""
    g = tl.program_id(0)
    k = tl.program_id(1)
    g64 = g.to(tl.int64)
    eps = tl.full((), 1e-12, DT)  # F.normalize's clamp in the compute dtype (a bare literal is fp32)
    W = W_v * VEC
    rw = rw_v * VEC
    HW = H * W
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dch = sum_partials(pdc_ptr + g64 * NC * M * D, offs_d, offs_m, D, M, NC, 1, D)  # [BD, BM]
    c_ptrs, mask_dm = cm_block(c_ptr + g64 * M * D, offs_d, offs_m, D, M)
    c = tl.load(c_ptrs, mask=mask_dm, other=0.0)
    c_hat, cn = norm_cols(c, eps)
    cproj = tl.where(cn > eps, tl.sum(c_hat * dch, axis=0), 0.0)
    dc = (dch - c_hat * cproj[None, :]) / tl.maximum(cn, eps)[None, :]
    _lo_r, _hi_r, _lo_c, _hi_c, win_inv = windows(offs_m, M, rh, rw, ph, pw, DT)
    # this program's copy of dc / |window| [BM, D] and its adjoint table [KH*KW*BM, D] for the gathers
    scr = scr_ptr + (g64 * NC + k) * ((1 + KH * KW) * BLOCK_M * D)
    ptrs, _ = cm_block(scr, offs_d, offs_m, D, M)
    tl.store(ptrs, dc * win_inv[None, :], mask=mask_dm)
    tl.debug_barrier()
    adjoint_table(scr, scr + BLOCK_M * D, offs_d, D, ph, pw, KH, KW, BLOCK_M)
    tl.debug_barrier()

    off = group_base(g, fh, fw, rh, rw, D, H, W)
    dxib = dxi_ptr + off
    dxb = dx_ptr + off
    r0, c0, row_end, n_tiles = chunk(k, RPC, rh, rw, BLOCK_N, BW)
    for _t in tl.range(0, n_tiles, num_stages=STAGES):
        r, col, valid, _n, sp = tile(r0, row_end, c0, rw, W, BLOCK_N, BW)
        dxt = load_tile(dxib, offs_d, sp, valid, D, HW, DT)
        dxt += pool_adjoint(scr + BLOCK_M * D, offs_d, D, r, col, valid, rh, rw, ph, pw, KH, KW)
        store_tile(dxb, dxt, offs_d, sp, valid, D, HW)
        r0, c0 = next_tile(r0, c0, rw, BLOCK_N, BW)

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

