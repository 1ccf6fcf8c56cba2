"""Launch configuration: the policy in force (per block of code), one table of per-kernel settings, and the
tile width, vector width and chunking a shape implies. Nothing here is read off the device, so with the
shipped table every GPU launches the same configurations and computes the same results."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import types
from typing import Mapping


#: at most this many chunks per group in any centre class (each program re-reads the NC partials of its group;
#: ``ChunkConfig.max_chunks`` is each class's own limit)
MAX_CHUNKS = 32
DOT_PRECISIONS = ("split", "ieee", "tf32", "tf32x3")


@dataclasses.dataclass(frozen=True)
class LaunchPolicy:
    """How the op launches its kernels. Nothing here is read off the device, so the chunking, and with it
    every result, is the same on every GPU. The one in force is :func:`policy`; change it for a block with
    :func:`launch_policy` (tests, tuning sweeps, the compile gate). Every field is checked here, where it is set."""

    #: programs a launch aims for: groups are split into chunks until G * NC reaches this; None: the centre class's
    #: in :data:`CHUNKING`
    target_programs: int | None = None
    #: the (dalpha, dbeta) partials (one per group and chunk) are summed this many at a time, in a fixed order
    partial_block: int = 256
    #: ``tl.dot`` precision: "split" (tensor cores on bf16 pieces that sum exactly to the fp32 operands: fp32
    #: accuracy, see ``dots.dot_exact``; fp64 inputs take "ieee"), "ieee" (fp32 FMAs), or the TF32 modes (less
    #: accurate than fp32: assignments flip against the fp32 reference)
    precision: str = "split"
    #: fill every buffer the op allocates with NaN (int: -2**31) first, so an element no kernel writes shows
    poison: bool = False
    #: per-kernel overrides of :func:`kernel_config`, e.g. ``{"assign": {"BLOCK_N": 32}}``; ``"*"``: every kernel.
    #: Taken as a copy: changing the dict afterwards changes nothing
    config_overrides: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    #: tune the launch configurations on the user's CUDA device at a shape class's first call (``tuning.py``);
    #: False: the shipped ones (and the overrides), bitwise the same results on every GPU
    tuning: bool = True

    def __post_init__(self):
        if self.target_programs is not None and (not _is_int(self.target_programs) or self.target_programs < 1):
            raise ValueError(f"target_programs must be a positive int or None, got {self.target_programs!r}")
        if not _is_int(self.partial_block) or self.partial_block < 1 or self.partial_block & (self.partial_block - 1):
            raise ValueError(f"partial_block must be a power of two (an int), got {self.partial_block!r}")
        if not isinstance(self.precision, str) or self.precision not in DOT_PRECISIONS:
            raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.poison, bool):
            raise TypeError(f"poison must be a bool, got {self.poison!r}")
        if not isinstance(self.tuning, bool):
            raise TypeError(f"tuning must be a bool, got {self.tuning!r}")
        object.__setattr__(self, "config_overrides", _checked_overrides(self.config_overrides))

    @classmethod
    def from_env(cls) -> "LaunchPolicy":
        """The defaults, with ``COC_TARGET_PROGRAMS`` (a positive integer), ``COC_DOT_PRECISION`` (one of
        :data:`DOT_PRECISIONS`) and ``COC_TUNING`` (``0`` or ``1``) where set and not empty."""
        kw = {}
        target = os.environ.get("COC_TARGET_PROGRAMS", "").strip()
        if target:
            if not target.isdigit() or int(target) < 1:
                raise ValueError(f"COC_TARGET_PROGRAMS must be a positive integer, got {target!r}")
            kw["target_programs"] = int(target)
        precision = os.environ.get("COC_DOT_PRECISION", "").strip()
        if precision:
            if precision not in DOT_PRECISIONS:
                raise ValueError(f"COC_DOT_PRECISION must be one of {DOT_PRECISIONS}, got {precision!r}")
            kw["precision"] = precision
        tuning = os.environ.get("COC_TUNING", "").strip()
        if tuning:
            if tuning not in ("0", "1"):
                raise ValueError(f"COC_TUNING must be 0 (the shipped launch configurations) or 1, got {tuning!r}")
            kw["tuning"] = tuning == "1"
        return cls(**kw)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checked_overrides(overrides) -> Mapping[str, Mapping[str, int]]:
    """``config_overrides`` as a read-only copy, every kernel name, key and value checked."""
    if not isinstance(overrides, Mapping):
        raise TypeError(f"config_overrides must be a dict of {{kernel: {{setting: value}}}}, got {overrides!r}")
    out = {}
    for kernel, settings in overrides.items():
        if kernel != "*" and kernel not in KERNEL_CONFIGS:
            raise ValueError(f"config_overrides: unknown kernel {kernel!r}; one of {KERNELS} or '*'")
        if not isinstance(settings, Mapping):
            raise TypeError(f"config_overrides[{kernel!r}] must be a dict of settings, got {settings!r}")
        for key, value in settings.items():
            if key not in _SETTINGS:
                raise ValueError(f"config_overrides[{kernel!r}]: unknown setting {key!r}; one of {tuple(_SETTINGS)}")
            ok, what = _SETTINGS[key]
            if not _is_int(value) or not ok(value):
                raise ValueError(f"config_overrides[{kernel!r}][{key!r}] must be {what}, got {value!r}")
        out[kernel] = types.MappingProxyType(dict(settings))
    return types.MappingProxyType(out)


#: what each launch setting accepts
_SETTINGS = {
    "BLOCK_N": (lambda v: v >= 16 and not v & (v - 1), "a power of two >= 16 (points per tile)"),
    "num_warps": (lambda v: v in (1, 2, 4, 8, 16, 32), "a power of two from 1 to 32"),
    "num_stages": (lambda v: v >= 1, "a positive int"),
    "STAGES": (lambda v: v >= 1, "a positive int (1: no pipelining)"),
    "maxnreg": (lambda v: v == 0 or 32 <= v <= 255, "0 (no cap) or 32 to 255 (registers per thread at most)"),
}
#: the settings a tuning choice sets, and that a register cap belongs to: where one of them differs from the shipped
#: configuration, the cap goes
SETTINGS = ("BLOCK_N", "num_warps", "STAGES")


def with_settings(base: dict, changes) -> dict:
    """``base`` (a :func:`kernel_config`) with ``changes``; its register cap only where ``changes`` keep the
    settings it was chosen for, or set one themselves."""
    out = dict(base, **changes)
    if "maxnreg" not in changes and any(out[s] != base[s] for s in SETTINGS):
        out["maxnreg"] = 0
    return out

#: the policy each thread (and asyncio task) set with launch_policy; None: the one from the environment
_SET: contextvars.ContextVar = contextvars.ContextVar("coc_launch_policy", default=None)
#: the policy of the environment variables, by their values (read on every call: set later, they count)
_FROM_ENV: dict = {}


def policy() -> LaunchPolicy:
    """The launch policy in force in this thread: the innermost :func:`launch_policy` block's, else the defaults
    with the environment's ``COC_TARGET_PROGRAMS`` / ``COC_DOT_PRECISION`` / ``COC_TUNING``."""
    p = _SET.get()
    if p is not None:
        return p
    key = tuple(os.environ.get(k) for k in ("COC_TARGET_PROGRAMS", "COC_DOT_PRECISION", "COC_TUNING"))
    p = _FROM_ENV.get(key)
    if p is None:
        p = LaunchPolicy.from_env()
        _FROM_ENV.clear()
        _FROM_ENV[key] = p
    return p


@contextlib.contextmanager
def launch_policy(**changes):
    """Run the block under the current policy with ``changes`` (fields of :class:`LaunchPolicy`), in this thread
    only (other threads keep theirs); the previous policy is back afterwards, also on an error."""
    token = _SET.set(dataclasses.replace(policy(), **changes))
    try:
        yield _SET.get()
    finally:
        _SET.reset(token)


def policy_set() -> bool:
    """True inside a :func:`launch_policy` (or :func:`policy_of`) block of this thread."""
    return _SET.get() is not None


@contextlib.contextmanager
def policy_of(p: LaunchPolicy):
    """Run the block under ``p`` (the backward of a call made under it, in whatever thread autograd runs it)."""
    token = _SET.set(p)
    try:
        yield p
    finally:
        _SET.reset(token)


def pow2(n: int) -> int:
    """Tile size for n (a power of two, at least 16: tl.dot's minimum)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


#: centre classes: ``BLOCK_M``, the centre tile (the centres per region rounded up to a power of two, at least
#: 16: tl.dot's minimum); the fused op takes at most 64 centres, so every call falls in one of these
CENTRE_CLASSES = (16, 32, 64)


def centre_class(M: int) -> int:
    """The centre class (``BLOCK_M``) of M centres: the power of two at or above M within :data:`CENTRE_CLASSES`."""
    return min(max(pow2(M), CENTRE_CLASSES[0]), CENTRE_CLASSES[-1])


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Launch settings of one kernel, one value per centre class (:data:`CENTRE_CLASSES`): ``BLOCK_N`` points
    per tile, warps per program, ``STAGES`` the software-pipelining depth of the tile loop
    (``tl.range(..., num_stages=STAGES)``: the next tile's loads go out as ``cp.async`` while this one
    computes). The same for every dtype. ``maxnreg``: registers per thread at most (ptxas ``.maxnreg``; 0: no
    cap), for a configuration whose occupancy ptxas reaches by spilling when left to itself; it belongs to these
    settings and is dropped where tuning or an override changes them. ``max_vec``: elements per vector access at
    most (:func:`vector_width`; 4-element accesses take more registers per thread: a kernel capped near its
    occupancy step may spill with them); ``max_vec_fp16``: the same for fp16 inputs in tiles of 16 columns or more
    where it differs (empty: as ``max_vec``; an fp16 tile is widened to fp32 by other instructions than a bf16
    one). ``why``: what chose them."""
    BLOCK_N: tuple
    num_warps: tuple
    STAGES: tuple
    maxnreg: tuple = (0, 0, 0)
    max_vec: tuple = (4, 4, 4)
    max_vec_fp16: tuple = ()
    why: str = ""

    def at(self, block_m: int) -> dict:
        i = CENTRE_CLASSES.index(block_m)
        return dict(BLOCK_N=self.BLOCK_N[i], num_warps=self.num_warps[i], num_stages=1, STAGES=self.STAGES[i],
                    maxnreg=self.maxnreg[i])


#: every kernel, in launch order (forward, then backward; ``assign_only`` is the assignment without aggregation),
#: and its launch settings by centre class (4 / 25 / 49 centres are the classes 16 / 32 / 64). Chosen so that
#: none spills registers at sm_80 / sm_90 with fp32, fp16 or bf16 inputs (``benchmarks/kernel_resources.py``
#: checks every launch, with triton 3.6 and 3.8) and per-point instructions stay low: the split dots run on
#: tensor cores and hold their operands in shared memory, so tiles of 32-64 points fit.
KERNEL_CONFIGS = {
    "pool": KernelConfig(BLOCK_N=(16, 16, 16), num_warps=(2, 2, 4), STAGES=(2, 2, 2), max_vec=(4, 4, 2),
                         why="pipelined 16-point tiles, the window membership loaded from a table "
                             "(membership.py) beside each tile; 4 and 25 centres on 2 warps with the tile on the "
                             "left of the dots (12-24 resident warps; 4 warps repeat the tile's pieces in every "
                             "warp: small stage 1 at 25 centres 0.064 -> 0.115 ms); 49 centres on 4 warps, a "
                             "warpgroup, with the membership on the left (config.pool_left; 2 warps: 0.155 -> "
                             "0.107 ms; 32 points: 4 programs per SM with the value's sums; 8 warps: layout "
                             "conversions in the loop); at 49 centres at most 2-element accesses (with 4, ptxas "
                             "took 128 registers for the assignment-only pool and spilled 8 B, bf16, triton 3.6)"),
    "assign": KernelConfig(BLOCK_N=(16, 16, 16), num_warps=(2, 2, 4), STAGES=(1, 2, 1), maxnreg=(112, 128, 0),
                           why="one warp per 16 centres: the similarity dot feeds the one-hot dots, so triton lays "
                               "its warps along the centres (a chained dot), and more than BLOCK_M / 16 warps would "
                               "repeat every per-(centre, point) instruction; 16-point tiles: 16-20 resident warps; "
                               "pipelined at 4 centres it spills 4 B at sm_90 (triton 3.8); capped where ptxas left "
                               "to itself keeps a few registers more than the next program per SM allows (4 "
                               "centres: 118 for 8 programs, 112 for 9, medium stage 1 0.29 -> 0.21 ms; 25 "
                               "centres: 144 for 7, 128 for 8); at 49 centres a cap of 128 spills at sm_80"),
    "assign_only": KernelConfig(BLOCK_N=(64, 64, 64), num_warps=(4, 4, 8), STAGES=(2, 2, 2)),
    "dispatch": KernelConfig(BLOCK_N=(64, 32, 64), num_warps=(8, 4, 8), STAGES=(2, 2, 2), maxnreg=(0, 0, 48),
                           why="gathers, no dot; at 25 centres 2-row tiles on 4 warps (4-row tiles are partly masked "
                               "under chunks of 12-13 rows: 651-695 instructions per point, 483-516 on 2 rows; 10-12 "
                               "programs per SM, capped at 40 registers it spills at sm_80 under triton 3.6); at 49 "
                               "centres ptxas left to itself takes 40 registers and spills at sm_80 (triton 3.6)"),
    "bwd_do": KernelConfig(BLOCK_N=(16, 16, 16), num_warps=(4, 4, 4), STAGES=(1, 1, 1),
                           why="16 points: 36-48 resident warps (32 points: 16-28; 64: 176 registers, 2 programs "
                               "per SM); pipelined, it spills (255 registers at sm_90, triton 3.6 and 3.8); with the "
                               "one-hot on the left at 4 and 49 centres 40-48 registers (49 centres: 72 with it on "
                               "the right, small stage 1 0.117 -> 0.055 ms)"),
    "bwd_main": KernelConfig(BLOCK_N=(16, 16, 32), num_warps=(4, 2, 4), STAGES=(1, 1, 1), maxnreg=(0, 128, 128),
                             max_vec=(1, 2, 1), max_vec_fp16=(1, 1, 1),
                             why="unpipelined tiles capped at 128 registers where ptxas left to itself keeps more: 25 "
                                 "centres on 2 warps, 8 programs per SM, the 1,024 programs of stage 1 in one wave "
                                 "(4 warps: 4 per SM, two waves; 0.26 -> 0.20 ms); 49 centres 32 points on 4 warps "
                                 "(16 points on 2 warps spill 200-700 B; 32 on 8 warps hold 2 programs per SM: "
                                 "0.36 -> 0.25 ms); 4 centres 16 points on 4 warps (2 warps: medium stage 1 0.24 -> "
                                 "0.35 ms); at 4 and 49 centres 1-element accesses: the loop is unpipelined (plain "
                                 "loads, no cp.async), and 2-element ones cost instructions and registers to unpack "
                                 "(small stage 1 fp32, triton 3.8: 4 centres 0.468 -> 0.440 ms, 49 centres 0.752 -> "
                                 "0.746); at 25 centres 2 (with 1, ptxas of triton 3.6 spills 12-24 B under the cap; "
                                 "with 2, that of triton 3.8 spills 12 B for fp16), and 1 for fp16 in tiles of 16 "
                                 "columns (no spill under either triton: small stage 1 0.202 -> 0.198 ms under 3.8, "
                                 "0.2038 -> 0.2048 under 3.6; in 8-column tiles, 2 rows of 8, triton 3.6 spills "
                                 "12-24 B with 1 and 3.8 12 B with 2: they keep 2, the GPU machines' triton clean); "
                                 "4-element ones spill at every class"),
    "bwd_pool": KernelConfig(BLOCK_N=(64, 64, 64), num_warps=(8, 8, 8), STAGES=(2, 2, 2), maxnreg=(0, 0, 64),
                           why="gathers, no dot; at 49 centres ptxas left to itself takes 48 registers and "
                               "spills at sm_90 (triton 3.8)"),
}
KERNELS = tuple(KERNEL_CONFIGS)


def kernel_config(kernel: str, M: int, D: int, DV: int) -> dict:
    """``BLOCK_N``, ``num_warps``, ``num_stages`` (triton's launch stages: 1) and ``STAGES`` of one kernel for M
    centres and D / DV channels: its row of :data:`KERNEL_CONFIGS`, then the policy's ``config_overrides``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; one of {KERNELS}")
    cfg = KERNEL_CONFIGS[kernel].at(centre_class(M))
    overrides = policy().config_overrides  # checked when the policy was made
    return with_settings(cfg, {**overrides.get("*", {}), **overrides.get(kernel, {})})


def pool_left(block_m: int, num_warps: int) -> bool:
    """Whether the pool kernel sums its windows as ``membership^T @ tile^T`` (``[BLOCK_M, channels]``
    accumulators) rather than ``tile @ membership``: where its programs are whole warpgroups and the centre tile
    is one warpgroup's rows (64), the product runs as a warpgroup MMA at sm_90 with the tile's pieces made once
    (on the right of an MMA over 2-4 warps every warp makes them all); small stage 1 at 49 centres 0.155 (2 warps,
    the tile on the left) -> 0.107 ms (the estimate, triton 3.8). Below that, 2 warps with the tile on the left
    are shorter."""
    return block_m >= 64 and num_warps % 4 == 0


def pool_rare_stages(block_m: int, stages: int) -> int:
    """Pipelining depth of the pool kernel's rare non-finite pass (its loop holds the masks and counts besides the
    sums): unpipelined it keeps the kernel's register peak lower at 16 and 64 centre slots (49 centres, triton 3.6:
    83 -> 79 registers, 5 -> 6 programs per SM, small stage 1 0.834 -> 0.797 ms; 4 centres fp32, triton 3.8: 0.056 ->
    0.047 ms for the kernel), but at 32 slots ptxas then takes more (bf16: 123 -> 141, 0.030 -> 0.057 ms): there it
    is pipelined as the main loop."""
    return stages if block_m == 32 else 1


def max_vec(kernel: str, M: int, dtype=None, bw: int = 16) -> int:
    """Elements per vector access at most for one kernel at M centres, inputs of ``dtype`` (a torch dtype) and
    tiles ``bw`` columns wide (:attr:`KernelConfig.max_vec`, or ``max_vec_fp16`` for fp16 at ``bw`` >= 16)."""
    cfg = KERNEL_CONFIGS[kernel]
    fp16 = cfg.max_vec_fp16 and str(dtype) == "torch.float16" and bw >= 16
    caps = cfg.max_vec_fp16 if fp16 else cfg.max_vec
    return caps[CENTRE_CLASSES.index(centre_class(M))]


def describe(cfg: dict) -> str:
    """A launch configuration in words, for tables and logs: ``BN=16 w=2 stages=2`` (`` cap=128`` with a register
    cap)."""
    out = f"BN={cfg['BLOCK_N']} w={cfg['num_warps']} stages={cfg['STAGES']}"
    return out + (f" cap={cfg['maxnreg']}" if cfg.get("maxnreg") else "")


def tile_width(rw: int, block_n: int) -> int:
    """``BW``: columns per tile row for regions ``rw`` wide, a power of two. The fewest masked columns
    (``ceil(rw / BW) * BW - rw``) among widths of at least ``min(8, rw)`` rounded up, the widest on a tie: 16 for
    the detection models' ``rw = 42`` (48 columns, 12.5 % masked), 8 for ImageNet's 7."""
    best, bw = None, 1
    while bw < min(8, rw):
        bw *= 2
    while bw <= block_n:
        cost = cdiv(max(rw, 1), bw) * bw
        if best is None or cost <= best[0]:
            best = (cost, bw)
        bw *= 2
    return best[1]


def vector_width(rw: int, W: int, bw: int, max_vec: int = 4) -> int:
    """``VEC``: elements per vector access, the largest of 4, 2, 1 (at most ``max_vec``) that divides the region
    width, the image width and ``BW`` (every row segment of a tile then starts on a multiple of it)."""
    for vec in (4, 2):
        if vec <= max_vec and rw % vec == 0 and W % vec == 0 and bw % vec == 0:
            return vec
    return 1


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """How a group's region rows are split into chunks (one program each), one value per centre class:
    ``programs``, the number of programs a launch aims for (chunks are added until ``G * NC`` reaches it; the
    policy's ``target_programs`` replaces it where set); ``balanced``: chunks of ``ceil(rh / NC)`` rows, else of
    whole multiples of the tallest tile's rows (the first chunks then run longer than the last); ``fine_below``:
    where chunks of the tallest tile's rows (a region of two such tiles or more) leave a launch short of the target
    and below this many programs (the later stages' few groups), chunks of single rows (a taller tile masks the
    rows past its chunk); ``wave``: where set (balanced chunks, no policy target), the programs one wave of the dot
    kernels holds on the reference GPU, and NC, of the counts the region's rows allow (as above), is the one that
    minimises waves x rows per chunk (``ceil(G * NC / wave) * ceil(rh / NC)``; the fewest chunks on a tie) rather
    than the target's: the last wave is then full, or its chunks short. A fixed number, not read off the device:
    every GPU chunks alike. ``max_chunks``: chunks per group at most (at most :data:`MAX_CHUNKS`). ``why``: what
    chose them."""
    programs: tuple
    balanced: tuple
    fine_below: tuple = (0, 0, 0)
    wave: tuple = (0, 0, 0)
    max_chunks: tuple = (16, 16, 16)
    why: str = ""

    def __post_init__(self):
        if not all(_is_int(n) and 1 <= n <= MAX_CHUNKS for n in self.max_chunks):
            raise ValueError(f"max_chunks must be ints in 1..{MAX_CHUNKS}, got {self.max_chunks!r}")

    def at(self, block_m: int) -> dict:
        i = CENTRE_CLASSES.index(block_m)
        return dict(programs=self.programs[i], balanced=self.balanced[i], fine_below=self.fine_below[i],
                    wave=self.wave[i], max_chunks=self.max_chunks[i])


#: chunking by centre class, chosen by the time model's estimate (``benchmarks/sweep_chunking.py``: every candidate
#: at every stage of the small and medium models, fp32): the estimate simulates programs on the SMs, so a launch
#: whose programs all fit at once (one wave) ends with its longest program, and one that needs more ends sooner when
#: its longer programs go first
CHUNKING = ChunkConfig(
    programs=(2048, 1024, 1024), balanced=(True, True, False), fine_below=(512, 1024, 256), wave=(0, 8 * 132, 0),
    max_chunks=(16, 32, 16),
    why="4 / 25 centres: the dot kernels hold 8-9 programs per SM, so a launch is about one wave and equal chunks "
        "shorten its longest program (small stage 1 fwd+bwd 0.63 -> 0.58 and 0.72 -> 0.65 ms, medium stage 2 at "
        "25 centres 0.41 -> 0.29); 4 centres take twice the programs (medium stage 1 0.79 with 3 chunks, 0.90 "
        "with 2 equal ones); at 49 centres 2-6 per SM, several waves, where longer first chunks end sooner "
        "(equal chunks: small stage 1 +4 %); single-row chunks where the 4-row tiles (bwd_pool, the assignment "
        "alone) would leave the later stages' few groups (16-96) at 7 chunks of 4 rows: small stage 4 0.131 / 0.196 "
        "/ 0.176 -> 0.086 / 0.131 / 0.124 ms at 4 / 25 / 49 centres, stage 3 at 4 and 25 centres 0.131 / 0.196 -> "
        "0.102 / 0.142 (the partial sums counted per chunk); not above 512 / 1024 / 256 programs, where more chunks "
        "take a second wave (small stage 2 at 4 centres 0.141 -> 0.156, stage 3 at 49 0.170 -> 0.182, counted once); "
        "25 centres in whole waves of the dot kernels' 8 programs per SM on 132 (the target's 1,024 split medium "
        "stage 1's 768 groups in 2 chunks, 1.45 waves: 1.060 -> 0.990 ms with 5; every other stage and arch keeps "
        "its chunks; at 4 and 49 centres no wave size picks the estimate's best at both archs); 25 centres up to 32 "
        "chunks a group (16 before 2026-12-08): stage 4's 16-24 groups of 25 rows take 25 single-row chunks in one "
        "wave, 3 tiles a program rather than 6 (small and medium stage 4 fwd+bwd 0.120 -> 0.099 ms fp32, 0.116 -> "
        "0.097 bf16, triton 3.8; 0.122 -> 0.100 under 3.6); at 4 and 49 centres 16 (32: small stage 3 at 4 centres "
        "0.096 -> 0.136, two waves; medium stage 4 at 49 centres 0.111 -> 0.151)")


def chunking(G: int, rh: int, row_unit: int, M: int):
    """``(NC, rows per chunk)``: a group's ``rh`` region rows split into NC chunks until ``G * NC`` reaches the
    target (:data:`CHUNKING` of the class of M centres, or the policy's ``target_programs``), at most the class's
    ``max_chunks``, at most one chunk per ``row_unit`` rows (the tallest tile of any kernel; each program re-reads
    its group's NC partials) unless that leaves fewer than the class's ``fine_below`` programs short of the target
    in a region of two tiles or more (then one per row), of ``ceil(rh / NC)`` rows where the class's chunks are
    balanced, else of whole multiples of ``row_unit`` rows."""
    c = CHUNKING.at(centre_class(M))
    target = policy().target_programs or c["programs"]
    want = min(c["max_chunks"], cdiv(target, max(G, 1)))
    units = max(1, cdiv(rh, row_unit))
    if 1 < units < want and G * units < c["fine_below"]:  # few programs, held back by the tallest tile: single rows
        row_unit, units = 1, rh
    nc = max(1, min(units, want))
    if c["wave"] and c["balanced"] and not policy().target_programs:
        # whole waves: of every chunk count the region's units allow, the one whose waves x rows per chunk is least
        nc = min(range(1, min(units, c["max_chunks"]) + 1), key=lambda n: (cdiv(G * n, c["wave"]) * cdiv(rh, n), n))
    if c["balanced"]:
        per = max(1, cdiv(rh, nc))
        return max(1, cdiv(rh, per)), per
    per = cdiv(units, nc)
    return cdiv(units, per), per * row_unit
