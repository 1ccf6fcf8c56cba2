"""Host functions of the fused op: the forward (3 launches), the backward (3 launches) and the assignment alone
(2 launches), each allocating its buffers and launching by keyword through :func:`launch.launch`."""
from __future__ import annotations

import torch
from torch import Tensor

from .bwd import _bwd_do_kernel, _bwd_main_kernel, _bwd_pool_kernel
from .fwd import _assign_kernel, _dispatch_kernel, _pool_kernel
from .geometry import Geometry, geometry
from .config import pool_left, pool_rare_stages
from .launch import empty, launch
from .membership import pool_table


def _contiguous(t: Tensor) -> Tensor:
    """The kernels address ``[B, C, H, W]`` tensors as contiguous (W stride 1 known to the compiler)."""
    return t if t.is_contiguous() else t.contiguous()


def _centres_and_assign(x: Tensor, value, alpha: Tensor, beta: Tensor, q: Geometry, by_count: bool):
    """Launches 1 and 2 of the forward (value None: assignment only). Returns c, a, sigma, puv, pden."""
    dev = x.device
    agg = value is not None
    pc = empty((q.G, q.NC, q.M, q.D), q.acc, dev, q.policy.poison)
    # with the value: the pool kernel writes each chunk's vc here, the assign kernel adds its U
    puv = empty((q.G, q.NC, q.M, q.DV), q.acc, dev, q.policy.poison) if agg else pc
    v = value if agg else x
    cfg, blocks = q.tiles("pool")
    left = pool_left(q.BM, cfg["num_warps"])
    launch(_pool_kernel, q.grid,
            dict(x_ptr=x, v_ptr=v, mem_ptr=pool_table(q, "pool", left), pc_ptr=pc, puv_ptr=puv, **q.region("pool"),
                 **q.sizes("ph", "pw")),
            dict(AGG=agg, LEFT=left, PIECES=q.pieces(x), RARE_STAGES=pool_rare_stages(q.BM, blocks["STAGES"]),
                 **blocks, **q.channels("D", "DV"), DT=q.dt, **q.dot), cfg)
    c = empty((q.G, q.M, q.D), q.acc, dev, q.policy.poison)
    a = empty((q.G, q.N), torch.int32, dev, q.policy.poison)
    sigma = empty((q.G, q.N), q.acc, dev, q.policy.poison)
    pden = empty((q.G, q.NC, q.M), q.acc, dev, q.policy.poison) if agg else pc
    name = "assign" if agg else "assign_only"
    cfg, blocks = q.tiles(name)
    launch(_assign_kernel, q.grid,
            dict(x_ptr=x, v_ptr=v, pc_ptr=pc, c_ptr=c, a_ptr=a, sig_ptr=sigma, puv_ptr=puv, pden_ptr=pden,
                 alpha_ptr=alpha, beta_ptr=beta, **q.region(name), **q.sizes()),
            dict(AGG=agg, BY_COUNT=by_count, PIECES=q.pieces(x), **blocks, **q.channels("D", "DV"), DT=q.dt,
                 **q.dot), cfg)
    return c, a, sigma, puv, pden


def assignment(x: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int):
    """Hard assignment of every point: ``a [G, N]`` int32 and ``sigma [G, N]`` (launches 1-2 of the forward)."""
    x = _contiguous(x)
    q = geometry(x, None, heads, ph, pw, fh, fw)
    _, a, sigma, _, _ = _centres_and_assign(x, None, alpha, beta, q, True)
    return a, sigma


def fused_forward(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int,
            by_count: bool):
    """Fused forward (3 launches). Returns ``y`` (value's dtype, contiguous) and the saved
    ``a, sigma, c, o, den``."""
    x, value = _contiguous(x), _contiguous(value)
    q = geometry(x, value, heads, ph, pw, fh, fw)
    dev = x.device
    c, a, sigma, puv, pden = _centres_and_assign(x, value, alpha, beta, q, by_count)
    o = empty((q.G, q.M, q.DV), q.acc, dev, q.policy.poison)
    den = empty((q.G, q.M), q.acc, dev, q.policy.poison)
    scr = empty((q.G, q.NC, q.M, q.DV), q.acc, dev, q.policy.poison)
    y = empty((q.B, heads * q.DV, q.H, q.W), value.dtype, dev, q.policy.poison)
    cfg, blocks = q.tiles("dispatch")
    launch(_dispatch_kernel, q.grid,
            dict(a_ptr=a, sig_ptr=sigma, puv_ptr=puv, pden_ptr=pden, o_ptr=o, den_ptr=den, scr_ptr=scr, y_ptr=y,
                 alpha_ptr=alpha, beta_ptr=beta, **q.region("dispatch"), **q.sizes()),
            dict(**blocks, **q.channels("DV"), DT=q.dt), cfg)
    return y, a, sigma, c, o, den


def fused_backward(dy: Tensor, x: Tensor, value: Tensor, alpha: Tensor, a: Tensor, sigma: Tensor, c: Tensor, o: Tensor,
             den: Tensor, heads: int, ph: int, pw: int, fh: int, fw: int, by_count: bool):
    """Fused backward (3 launches): ``dx`` (x's dtype), ``dvalue`` (value's dtype), both contiguous;
    ``dalpha``, ``dbeta`` shaped like alpha, in the accumulation dtype (fp32, or fp64 for fp64 x)."""
    dy, x, value = _contiguous(dy), _contiguous(x), _contiguous(value)
    q = geometry(x, value, heads, ph, pw, fh, fw)
    dev = x.device
    pdo = empty((q.G, q.NC, q.M, q.DV), q.acc, dev, q.policy.poison)
    cfg, blocks = q.tiles("bwd_do")
    launch(_bwd_do_kernel, q.grid,
            dict(dy_ptr=dy, a_ptr=a, sig_ptr=sigma, pdo_ptr=pdo, **q.region("bwd_do"), **q.sizes()),
            dict(**blocks, **q.channels("DV"), DT=q.dt, **q.dot), cfg)
    # the kernels' scratch copies: bwd_main's [BM, 3 DV + D + 1] and adjoint table [KH*KW*BM, DV]; then bwd_pool's
    # dc copy [BM, D] and adjoint table [KH*KW*BM, D]
    cells = q.KH * q.KW * q.BM
    scr = empty((q.G, q.NC, max(q.BM * (3 * q.DV + q.D + 1) + cells * q.DV, q.BM * q.D + cells * q.D)), q.acc, dev,
                q.policy.poison)
    # the direct part of dx, completed by the last launch (in place when x is fp32)
    dxi = empty(x.shape, q.acc, dev, q.policy.poison)
    dv = empty(value.shape, value.dtype, dev, q.policy.poison)
    pdc = empty((q.G, q.NC, q.M, q.D), q.acc, dev, q.policy.poison)
    pdab = empty((q.G, q.NC, 2), q.acc, dev, q.policy.poison)
    cfg, blocks = q.tiles("bwd_main")
    launch(_bwd_main_kernel, q.grid,
            dict(x_ptr=x, v_ptr=value, dy_ptr=dy, a_ptr=a, sig_ptr=sigma, c_ptr=c, o_ptr=o, den_ptr=den,
                 alpha_ptr=alpha, pdo_ptr=pdo, scr_ptr=scr, dx_ptr=dxi, dv_ptr=dv, pdc_ptr=pdc, pdab_ptr=pdab,
                 **q.region("bwd_main"), **q.sizes("ph", "pw")),
            dict(BY_COUNT=by_count, **blocks, **q.channels("D", "DV"), KH=q.KH, KW=q.KW, DT=q.dt,
                 **q.dot), cfg)
    dx = dxi if x.dtype == q.acc else empty(x.shape, x.dtype, dev, q.policy.poison)
    # summed and kept in the accumulation dtype; cast to each scalar's own dtype by the autograd (a 16-bit
    # alpha must not round or overflow beta's gradient)
    dalpha = empty(alpha.shape, q.acc, dev, q.policy.poison)
    dbeta = empty(alpha.shape, q.acc, dev, q.policy.poison)
    cfg, blocks = q.tiles("bwd_pool")
    scr_pool = scr.view(-1)[:q.G * q.NC * (q.BM * q.D + cells * q.D)]  # the part the last launch uses
    launch(_bwd_pool_kernel, q.grid,
            dict(dxi_ptr=dxi, dx_ptr=dx, c_ptr=c, pdc_ptr=pdc, pdab_ptr=pdab, scr_ptr=scr_pool, dalpha_ptr=dalpha,
                 dbeta_ptr=dbeta, **q.region("bwd_pool"), **q.sizes("ph", "pw"), NPART=q.G * q.NC),
            dict(**blocks, **q.channels("D"), BLOCK_P=q.policy.partial_block, KH=q.KH, KW=q.KW, DT=q.dt), cfg)
    if q.G * q.NC == 0:  # empty input: no program ran
        dalpha.zero_()
        dbeta.zero_()
    return dx, dv, dalpha, dbeta
