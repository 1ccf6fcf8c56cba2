"""Geometry of one call: the sizes of a ``[B, C, H, W]`` input split into groups and chunks, and the launch
configuration (tiles, vector widths, chunking, dot precision) they imply, made once per shape and policy
(:func:`geometry`)."""
from __future__ import annotations

import torch
import triton.language as tl
from torch import Tensor

from ...reference import MAX_FUSED_IMAGE_ELEMENTS, compute_dtype, triton_interpreting
from . import choices, membership
from .config import (KERNELS, cdiv, chunking, kernel_config, max_vec, policy, pow2, tile_width,
                     vector_width)


def _dt(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_constexprs(dt) -> dict:
    """``PREC`` and ``OP`` (the split dots' operand type) of the dot kernels for compute type ``dt``."""
    prec = policy().precision
    if dt == tl.float64 and prec != "ieee":  # fp64 inputs: exact fp64 FMAs
        prec = "ieee"
    return dict(PREC=prec, OP=tl.float32 if triton_interpreting() else tl.bfloat16)


def windows_per_point(r: int, p: int) -> int:
    """At most how many of the ``p`` adaptive-pool windows along an axis of ``r`` points hold one point (the
    pooling adjoint's ``KH`` / ``KW``): 1 where they tile the axis (``r % p == 0``: window i is ``[i*r/p,
    (i+1)*r/p)``, no two overlap), else ``1 + ceil(p / r)`` (the windows ``[floor(i*r/p), ceil((i+1)*r/p))``
    overlap; no point lies in more). With 1 the adjoint's table has one cell per window along that axis: where one
    axis tiles, as in the detection shapes (25 region rows in 5 windows; 42 columns in 2 or 7), half the cells,
    each summed from half the windows."""
    return 1 if r % p == 0 else 1 + cdiv(p, max(r, 1))


class Geometry:
    """Sizes of one call, and the launch configuration they imply."""

    def __init__(self, x: Tensor, value, heads: int, ph: int, pw: int, fh: int, fw: int):
        dv_channels = (x if value is None else value).shape[1]
        self.B, C, self.H, self.W = x.shape
        for t in (x,) if value is None else (x, value):
            if t.shape[1] * t.shape[2] * t.shape[3] > MAX_FUSED_IMAGE_ELEMENTS:
                raise ValueError(f"one image of {tuple(t.shape)} spans 2**31 elements or more: the kernels "
                                 "address an image with 32-bit offsets")
        self.policy = policy()  # the launch policy it is made under (one read per call: buffers, partials)
        self.tuning = choices.token()  # and the tuning state (choices held, a tuning run's candidate)
        self.device, self.dtype = x.device, x.dtype
        self.heads, self.ph, self.pw, self.fh, self.fw = heads, ph, pw, fh, fw
        self.D, self.DV = C // heads, dv_channels // heads
        self.rh, self.rw = self.H // fh, self.W // fw
        self.G, self.N, self.M = self.B * heads * fh * fw, self.rh * self.rw, ph * pw
        # chunks from the shipped configurations (and the policy's overrides): the same with tuning on or off (a
        # kernel masks the rows past its chunk, so any tile height is correct in any chunk)
        base = {name: kernel_config(name, self.M, self.D, self.DV) for name in KERNELS}
        self.row_unit = max(cfg["BLOCK_N"] // tile_width(self.rw, cfg["BLOCK_N"]) for cfg in base.values())
        self.NC, self.rpc = chunking(self.G, self.rh, self.row_unit, self.M)
        if max(self.rh * ph, self.rw * pw) > 2 ** 24:
            raise ValueError(f"regions of {self.rh}x{self.rw} points with {ph}x{pw} centres: the pooling adjoint finds "
                             "a point's windows by a float division, exact only while region size x centres per axis "
                             "stays within 2**24: use impl='light'")
        if self.G * self.NC * 2 > MAX_FUSED_IMAGE_ELEMENTS:
            raise ValueError(f"{self.G} groups x {self.NC} chunks: their (dalpha, dbeta) partials span 2**31 "
                             "elements or more, which the kernels address with 32-bit offsets (only regions of a "
                             "pixel or two reach this): use impl='light'")
        self.grid = (self.G, self.NC)
        self.dt = _dt(x.dtype)
        self.acc = compute_dtype(x.dtype)
        self.dot = _dot_constexprs(self.dt)  # PREC / OP of the dot kernels (made under the policy in force)
        # the torch dtype of an exact (0/1) operand the kernels load for their dots: OP's for the split dots
        self.dot_operand = ((torch.float32 if self.dot["OP"] == tl.float32 else torch.bfloat16)
                            if self.dot["PREC"] == "split" else self.acc)
        self.BM = pow2(self.M)
        self.cfg = {}
        for name in KERNELS:
            cfg = choices.config_for(name, self, base[name])
            bw = tile_width(self.rw, cfg["BLOCK_N"])
            self.cfg[name] = (cfg, bw, vector_width(self.rw, self.W, bw, max_vec(name, self.M, self.dtype, bw)))
        membership.check_size(self.rh, self.rw, self.BM, self.cfg["pool"][1])
        # windows a point can lie in, per axis (pooling adjoint gathers)
        self.KH, self.KW = windows_per_point(self.rh, ph), windows_per_point(self.rw, pw)

    @staticmethod
    def pieces(t: Tensor) -> int:
        """bf16 pieces that sum to an element of t exactly (``dots.pieces``, the split dots' PIECES): 1 for bf16,
        2 for fp16 (11 significant bits), 3 for fp32 (24)."""
        return {torch.bfloat16: 1, torch.float16: 2}.get(t.dtype, 3)

    def tiles(self, name: str):
        """(config, tile constexprs) of one kernel."""
        cfg, bw, vec = self.cfg[name]
        return cfg, dict(BLOCK_M=self.BM, BLOCK_N=cfg["BLOCK_N"], BW=bw, VEC=vec, STAGES=cfg["STAGES"])

    def region(self, name: str) -> dict:
        """The image and group geometry every kernel takes (see ``tiles.group_base``): widths in units of VEC."""
        vec = self.cfg[name][2]
        return dict(H=self.H, W_v=self.W // vec, fh=self.fh, fw=self.fw, rh=self.rh, rw_v=self.rw // vec)

    def __setattr__(self, name, value):  # shared between calls of one shape (geometry): set once, in __init__
        if name in self.__dict__:
            raise AttributeError(f"Geometry.{name} is fixed once made")
        object.__setattr__(self, name, value)

    def sizes(self, *names: str) -> dict:
        """``M, NC, RPC`` and the named ones of ``ph, pw`` (runtime arguments)."""
        return dict(M=self.M, NC=self.NC, RPC=self.rpc, **{n: getattr(self, n) for n in names})

    def channels(self, *names: str) -> dict:
        """The named channel counts of ``D, DV`` and their blocks ``BLOCK_D, BLOCK_DV`` (constexprs: a head's
        channels are fixed by the model, and a count the block equals leaves no channel mask in the code)."""
        out = {n: getattr(self, n) for n in names}
        out.update({f"BLOCK_{n}": pow2(getattr(self, n)) for n in names})
        return out



#: geometries of recent calls, by what they depend on (a training step repeats the same few shapes; building one
#: costs more host time than the rest of the op's arguments): key -> Geometry (its policy: the one it was made under)
_GEOMETRIES: dict = {}
_MAX_GEOMETRIES = 256


def geometry(x: Tensor, value, heads: int, ph: int, pw: int, fh: int, fw: int) -> Geometry:
    """``Geometry(x, value, ...)``, reused while the launch policy in force is the one it was made under."""
    key = (tuple(x.shape), None if value is None else value.shape[1], x.dtype, heads, ph, pw, fh, fw)
    hit = _GEOMETRIES.get(key)
    if hit is not None and hit.policy is policy() and hit.tuning == choices.token():
        return hit
    if len(_GEOMETRIES) >= _MAX_GEOMETRIES:
        _GEOMETRIES.clear()
    q = _GEOMETRIES[key] = Geometry(x, value, heads, ph, pw, fh, fw)
    return q


def clear_geometries():
    """Forget the geometries made so far (host-time benchmarks time the first call of a shape)."""
    _GEOMETRIES.clear()


def chunk_tiles(launch) -> list:
    """Tile iterations of one program of a recorded launch, per chunk (every group's programs alike)."""
    a, c = launch.args, launch.constexprs
    rh, rw = a["rh"], a["rw_v"] * c["VEC"]
    br, bw = c["BLOCK_N"] // c["BW"], c["BW"]
    return [cdiv(min(rh, (k + 1) * a["RPC"]) - k * a["RPC"], br) * cdiv(rw, bw) for k in range(a["NC"])]


def points_per_tile(launch) -> float:
    """Real (unmasked) points per tile iteration of a recorded launch, averaged over its groups: what the
    compile gate divides a loop's instruction count by."""
    a, c = launch.args, launch.constexprs
    return a["rh"] * a["rw_v"] * c["VEC"] / max(sum(chunk_tiles(launch)), 1)
