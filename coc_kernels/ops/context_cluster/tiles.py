"""Tile and window helpers of the kernels (inlined by triton): where a group and its tiles lie in a
``[B, C, H, W]`` tensor, the tiles' loads and stores, adaptive-pool windows, sums of chunk partials.

Tiles. The op makes x, value and dy contiguous ``[B, C, H, W]`` (a no-op for the 1x1 convs' outputs), so a
pixel's W stride is the compile-time 1 and the H stride is W. A tile is ``[channels, BR x BW]``: BR rows of
BW consecutive columns of one region, the points axis (fastest in registers) running along W, so a warp's
lanes read whole row segments. Sizes that must be multiples of the vector width for 2- or 4-element
accesses (the image width W and the region width rw) arrive as ``W_v = W / VEC`` and ``rw_v = rw / VEC``
with VEC a constexpr: ``W = W_v * VEC`` tells the compiler what it needs to emit vector loads, without a
value specialisation per image size.
"""
from __future__ import annotations

import inspect

import triton
import triton.language as tl


def kernel(fn):
    """``triton.jit`` without value specialisation of any integer argument: sizes change with every image
    (detection inputs vary in size), and the rest (folds, centres) gains nothing from it, so each (block
    sizes, tile width, vector width, dtypes) configuration compiles once. What the compiler must know to
    coalesce and vectorise is constexpr instead: the W stride (1: inputs are contiguous), the vector width
    that the image and region widths are multiples of (they arrive divided by it), and a head's channel counts
    ``D`` / ``DV`` (fixed by the model; where they equal their power-of-two block no channel mask is left: 9 % of
    the main backward kernel's instructions, 40-50 % of the gathers of dispatch and the pooling adjoint)."""
    ints = [name for name, p in inspect.signature(fn).parameters.items()
            if not name.endswith("_ptr") and "constexpr" not in str(p.annotation)]
    return triton.jit(do_not_specialize=ints)(fn)


@triton.jit
def group_base(g, fh, fw, rh, rw, C, H, W):
    """Element offset of channel 0, pixel (0, 0) of group g in a contiguous ``[B, heads*C, H, W]`` tensor
    (group order: image, head, region row, region column; ``g // (fh*fw) = image*heads + head``)."""
    j = g % fw
    i = (g // fw) % fh
    bh = g // (fw * fh)
    return (bh.to(tl.int64) * C * H + i * rh) * W + j * rw


@triton.jit
def chunk(k, RPC, rh, rw, BLOCK_N: tl.constexpr, BW: tl.constexpr):
    """Chunk k's first tile (row ``row0``, column 0), its end row ``row_end`` (exclusive) and its number of tiles
    (blocks of ``BLOCK_N // BW`` rows x column blocks): ``row0, col0, row_end, n_tiles``."""
    BR = BLOCK_N // BW
    row0 = k * RPC
    row_end = tl.minimum(rh, row0 + RPC)
    return row0, row0 * 0, row_end, tl.cdiv(row_end - row0, BR) * tl.cdiv(rw, BW)


@triton.jit
def next_tile(r0, c0, rw, BLOCK_N: tl.constexpr, BW: tl.constexpr):
    """Top-left (row, column) of the next tile: column blocks first, then the next row block (carried, so the
    loop has no integer division)."""
    BR = BLOCK_N // BW
    c0 += BW
    wrap = c0 >= rw
    return tl.where(wrap, r0 + BR, r0), tl.where(wrap, 0, c0)


@triton.jit
def tile(r0, row_end, c0, rw, W, BLOCK_N: tl.constexpr, BW: tl.constexpr):
    """The tile at (r0, c0), ``BLOCK_N // BW`` rows of BW columns: per point its region row and column, validity,
    index in the group (``r*rw + col``, the ``[G, N]`` state) and offset in the image plane (``r*W + col``)."""
    idx = tl.arange(0, BLOCK_N)
    r = r0 + idx // BW
    col = c0 + idx % BW
    valid = (r < row_end) & (col < rw)
    return r, col, valid, r * rw + col, r * W + col


def tile_access(fn):
    """Marks a helper that makes ``[B, C, H, W]`` tile loads or stores: the compile gate (``ops.aot``) finds it among
    a kernel module's names and checks the layout and width of every access made in it."""
    fn.tile_access = True
    return fn


def partials_loop(fn):
    """Marks a helper whose loop runs once per chunk partial (NC - 1 times): the time model (``ops.aot``,
    ``benchmarks/time_model.py``) counts that loop's instructions per chunk, not once."""
    fn.partials_loop = True
    return fn


@tile_access
@triton.jit
def load_tile(base, offs_c, sp, valid, C, HW, DT: tl.constexpr):
    """``[BLOCK_C, points]`` tile of a contiguous ``[B, C, H, W]`` tensor: channel c at ``base + c*HW + sp``. The
    offset is summed in 32 bits first (it stays within one image: ``MAX_FUSED_IMAGE_ELEMENTS``): as
    ``(base + c*HW) + sp`` the compiler hoists a 64-bit pointer per channel row held, two registers each, for every
    tensor a loop touches (the main backward: 40 registers of its 2-warp programs)."""
    ptrs = base + (offs_c[:, None] * HW + sp[None, :])
    return tl.load(ptrs, mask=(offs_c < C)[:, None] & valid[None, :], other=0.0).to(DT)


@tile_access
@triton.jit
def store_tile(base, val, offs_c, sp, valid, C, HW):
    ptrs = base + (offs_c[:, None] * HW + sp[None, :])
    tl.store(ptrs, val.to(base.dtype.element_ty), mask=(offs_c < C)[:, None] & valid[None, :])



@triton.jit
def load_assignment(a_ptr, sig_ptr, base, n, valid, A_OTHER: tl.constexpr):
    """The tile's assignment ``a`` and ``sigma`` from the ``[G, N]`` state (``base = g * N``, ``n`` the points'
    indices in the group); masked points read ``A_OTHER`` and 0."""
    a = tl.load(a_ptr + base + n, mask=valid, other=A_OTHER)
    return a, tl.load(sig_ptr + base + n, mask=valid, other=0.0)


@triton.jit
def windows(offs_m, M, rh, rw, ph, pw, DT: tl.constexpr):
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
def pool_member(mem_ptr, offs_m, r0, r, c0, valid, rw, LEFT: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr):
    """Window membership of the tile at (r0, c0) from the table of ``membership.build``, ``mem [rh, ceil(rw / BW),
    BLOCK_M, BW]`` (LEFT; else its blocks ``[BW, BLOCK_M]``): 1 where the point lies in window m. Returns
    ``[BLOCK_M, BLOCK_N]`` (LEFT) or ``[BLOCK_N, BLOCK_M]`` in the table's dtype (the dots' exact operand), 0 for
    masked points: loaded where the dot needs it (pipelined with the tile), its address from the tile's position
    alone (row patterns found per tile by two divisions, or a table of offsets loaded per tile, cost more than
    the loads save)."""
    BM: tl.constexpr = offs_m.shape[0]
    cols = tl.arange(0, BLOCK_N) % BW
    row = tl.cdiv(rw, BW) * (BW * BM)  # one region row's blocks
    if BLOCK_N == BW:  # one row: one block
        base = r0 * row + c0 * BM
        if LEFT:
            offs = base + (offs_m[:, None] * BW + cols[None, :])
        else:
            offs = base + (cols[:, None] * BM + offs_m[None, :])
    else:
        base = r * row + c0 * BM
        if LEFT:
            offs = base[None, :] + (offs_m[:, None] * BW + cols[None, :])
        else:
            offs = base[:, None] + (cols[:, None] * BM + offs_m[None, :])
    if LEFT:
        mask = valid[None, :]
    else:
        mask = valid[:, None]
    return tl.load(mem_ptr + offs, mask=mask, other=0.0)


@triton.jit
def floor_div(a, b, b_inv):
    """``a // b`` for ``a >= 0``, ``0 < b``, ``a < 2**24`` without an integer division: a float estimate
    (``b_inv = 1/b``), corrected by one either way."""
    q = (a.to(tl.float32) * b_inv).to(tl.int32)
    q = tl.where((q + 1) * b <= a, q + 1, q)
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def adjoint_table(src, dst, offs_c, C, ph, pw, KH: tl.constexpr, KW: tl.constexpr, BLOCK_M: tl.constexpr):
    """The pooling adjoint's table: ``dst[t, c] = sum_{m in cell t} src[m, c]`` for the ``KH*KW*BLOCK_M`` cells
    of the ``ph*KH x pw*KW`` grid, ``src`` and ``dst`` row-major ``[., C]`` copies in memory, ``src`` already
    scaled by ``1/|window m|``. A point (r, s) lies in the windows ``i = i0 .. i0+er`` and ``j = j0 .. j0+ec``
    (:func:`adjoint_cells`): cell ``t = (i0*KH + er) * pw*KW + j0*KW + ec``. Made once per program, so a point's
    adjoint is one gather (:func:`pool_adjoint`), summed here in the order the point's windows would be."""
    c_ok = (offs_c < C)[:, None]
    for t0 in tl.static_range(0, KH * KW * BLOCK_M, BLOCK_M):
        t = t0 + tl.arange(0, BLOCK_M)
        ri = t // (pw * KW)
        ci = t - ri * (pw * KW)
        i0 = ri // KH
        j0 = ci // KW
        er = ri - i0 * KH
        ec = ci - j0 * KW
        live = i0 < ph
        acc = tl.zeros((offs_c.shape[0], BLOCK_M), dtype=dst.dtype.element_ty)
        for di in tl.static_range(KH):
            for dj in tl.static_range(KW):
                ok = live & (di <= er) & (dj <= ec) & (i0 + di < ph) & (j0 + dj < pw)
                m = (i0 + di) * pw + j0 + dj
                acc += tl.load(src + m[None, :] * C + offs_c[:, None], mask=ok[None, :] & c_ok, other=0.0)
        tl.store(dst + t[None, :] * C + offs_c[:, None], acc, mask=live[None, :] & c_ok)


@triton.jit
def adjoint_cells(r, col, rh, rw, ph, pw, KH: tl.constexpr, KW: tl.constexpr):
    """The :func:`adjoint_table` cell of each point (r, s) of a tile: its windows are ``i = i0 .. i0+er`` with
    ``i0 = r*ph // rh`` (``i0*rh <= r*ph < (i0+1)*rh``: window i0 always holds the point) and ``er`` the number of
    later rows of windows that start before the point's row ends (``i*rh < (r+1)*ph``; their other bound and
    ``i < ph`` follow), at most ``KH - 1`` (``geometry.windows_per_point``); ``j`` likewise."""
    rp = r * ph
    cp = col * pw
    i0 = floor_div(rp, rh, 1.0 / rh.to(tl.float32))
    j0 = floor_div(cp, rw, 1.0 / rw.to(tl.float32))
    er = i0 * 0
    for di in tl.static_range(1, KH):
        er += tl.where((i0 + di) * rh < rp + ph, 1, 0)
    ec = j0 * 0
    for dj in tl.static_range(1, KW):
        ec += tl.where((j0 + dj) * rw < cp + pw, 1, 0)
    return (i0 * KH + er) * (pw * KW) + j0 * KW + ec


@triton.jit
def pool_adjoint(table, offs_c, C, r, col, valid, rh, rw, ph, pw, KH: tl.constexpr, KW: tl.constexpr):
    """``sum_m w_mn src[m, c]`` for every point of the tile, ``[BLOCK_C, points]``: one gather from the
    :func:`adjoint_table` of ``src`` (L1-resident), not a dot over the centres."""
    cell = adjoint_cells(r, col, rh, rw, ph, pw, KH, KW)
    return tl.load(table + cell[None, :] * C + offs_c[:, None], mask=(offs_c < C)[:, None] & valid[None, :],
                   other=0.0)


@triton.jit
def cm_block(base, offs_c, offs_m, C, M):
    """Pointers and mask of a row-major ``[M, C]`` block (one group's centres, a partial, a scratch copy)
    seen as a ``[BLOCK_C, BLOCK_M]`` tile: element (c, m) at ``base + m * C + c``."""
    return base + offs_c[:, None] + offs_m[None, :] * C, (offs_c < C)[:, None] & (offs_m < M)[None, :]


@triton.jit
def mc_block(base, offs_m, offs_c, M, C):
    """Pointers and mask of a row-major ``[M, C]`` block as a ``[BLOCK_M, BLOCK_C]`` tile (:func:`cm_block`'s
    transpose): element (m, c) at ``base + m * C + c``."""
    return base + offs_m[:, None] * C + offs_c[None, :], (offs_m < M)[:, None] & (offs_c < C)[None, :]


@partials_loop
@triton.jit
def sum_partials(ptr, offs_r, offs_c, R, C, NC, ROW_STRIDE, COL_STRIDE):
    """Fixed-order sum over the NC chunk partials of a ``[NC, ...]`` buffer; tile ``[len(offs_r), len(offs_c)]``
    with element (r, c) at ``r * ROW_STRIDE + c * COL_STRIDE`` inside each partial of size R*C."""
    mask = (offs_r < R)[:, None] & (offs_c < C)[None, :]
    offs = offs_r[:, None] * ROW_STRIDE + offs_c[None, :] * COL_STRIDE
    acc = tl.load(ptr + offs, mask=mask, other=0.0)
    for j in range(1, NC):
        acc += tl.load(ptr + j * R * C + offs, mask=mask, other=0.0)
    return acc


@partials_loop
@triton.jit
def sum_vec_partials(ptr, offs, R, NC):
    acc = tl.load(ptr + offs, mask=offs < R, other=0.0)
    for j in range(1, NC):
        acc += tl.load(ptr + j * R + offs, mask=offs < R, other=0.0)
    return acc


@triton.jit
def col_norms(t):
    """Euclidean norms of the columns of a ``[C, K]`` tile, ``[K]``."""
    return tl.sqrt(tl.sum(t * t, axis=0))


@triton.jit
def norm_cols(t, eps):
    """F.normalize over dim 0 of a ``[C, K]`` tile: the normalised tile and the column norms."""
    nrm = col_norms(t)
    return t / tl.maximum(nrm, eps)[None, :], nrm
