"""Window membership table of the pool kernel: which adaptive-pool windows each point of a region lies in, made once
per region geometry and device, so that the kernel loads a tile's 0/1 block where its dot needs it instead of
computing it per (point, centre): ``mem [rh, ceil(rw / BW), BLOCK_M, BW]`` (``left``; else its blocks ``[BW,
BLOCK_M]``), a tile's block at ``(r * ceil(rw / BW) + c0 / BW) * BLOCK_M * BW`` (``tiles.pool_member``).

Its size is the region's points (columns rounded up to BW) x BLOCK_M, in the dots' operand dtype (bf16): shared by
every image, head and region, ``BLOCK_M * 2 / (B * C * fh * fw * 4)`` of an fp32 x (small stage 1 at 49 centres:
154 KB in bf16, 1/224 of x); below 2**31 elements (``check_size``, made by the geometry)."""
from __future__ import annotations

import torch

from .config import cdiv
from .launch import dry_run

#: tables made so far: (rh, rw, ph, pw, BLOCK_M, BW, left, dtype, device) -> mem
_TABLES: dict = {}
_MAX_TABLES = 64


def check_size(rh: int, rw: int, block_m: int, bw: int):
    """Raises where the table of a region of rh x rw points (tiles BW wide) and BLOCK_M centre slots would span
    2**31 elements or more: the pool kernel addresses it with 32-bit offsets."""
    if rh * cdiv(rw, bw) * bw * block_m >= 2 ** 31:
        raise ValueError(f"regions of {rh}x{rw} points with {block_m} centre slots: the pool kernel's window table "
                         "would span 2**31 elements or more, which it addresses with 32-bit offsets; use impl='light'")


def build(rh: int, rw: int, ph: int, pw: int, block_m: int, bw: int, left: bool, dtype: torch.dtype,
          device="cpu") -> torch.Tensor:
    """``mem`` (see the module's docstring), made on ``device``: entry ``[r, ct, m, n]`` is 1 where window
    ``m = (i, j)`` (``i = m // pw``, ``j = m % pw``, ``m < ph * pw``) holds row r and column ``c = ct * BW + n``
    (``c < rw``), by the integer test of ``tiles.windows``: ``i*rh < (r+1)*ph``, ``r*ph < (i+1)*rh``, and likewise
    for c and j."""
    check_size(rh, rw, block_m, bw)
    nct = cdiv(rw, bw)
    m = torch.arange(block_m, device=device)
    i, j = m // pw, m % pw
    r = torch.arange(rh, device=device)[:, None]
    rows = (i * rh < (r + 1) * ph) & (r * ph < (i + 1) * rh) & (m < ph * pw)  # [rh, BLOCK_M]
    c = torch.arange(nct * bw, device=device)[:, None]
    cols = (j * rw < (c + 1) * pw) & (c * pw < (j + 1) * rw) & (c < rw)  # [nct * BW, BLOCK_M]
    mem = rows[:, None, None, :] & cols.reshape(1, nct, bw, block_m)  # [rh, nct, BW, BLOCK_M]
    if left:
        mem = mem.transpose(2, 3)
    return mem.to(dtype).contiguous()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def pool_table(q, name: str, left: bool) -> torch.Tensor:
    """``mem`` of geometry q's kernel ``name`` (its tile width), in q's exact dot operand dtype on q's device;
    cached per geometry and device (a training step repeats the same few shapes). While a CUDA graph is being
    captured, made afresh by kernels recorded into the graph and not cached: the graph then makes it at every
    replay in memory of its own, and never reads a cached table that a later eviction frees. In a dry run (the
    compile gate) an empty CPU tensor of that dtype."""
    bw = q.cfg[name][1]
    dtype = q.dot_operand
    if dry_run():
        return torch.empty(0, dtype=dtype)
    args = (q.rh, q.rw, q.ph, q.pw, q.BM, bw, left, dtype)
    if _capturing(q.device):
        return build(*args, device=q.device)
    key = args + (q.device,)
    hit = _TABLES.get(key)
    if hit is None:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.clear()
        hit = _TABLES[key] = build(*args, device=q.device)
    return hit
