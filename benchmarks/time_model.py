"""A GPU time model for the op's kernels, from the code the compiler emits (no GPU needed): ``../shared/DESIGN.md``,
"A GPU time model". An estimate, not a measurement: fitted on the one H100 run that timed kernels one by one.

Per launch, ``T = max(T_core, T_dram, T_store)``:

- ``T_core``: the grid's programs, in launch order (axis 0, the group, fastest), placed on the SMs, at most
  ``per_sm`` at a time on each (registers, warps and shared memory, as ptxas reports them); a program does
  ``loop x tiles + partial x (chunks - 1) + other`` warp-instructions per warp (PTX counts of the tile loop, of the
  loops that sum the group's chunk partials, and of the rest of the kernel).
  On an SM holding ``n`` warps (spread over 4 schedulers), each warp issues ``min(1 / L, 4 / n)`` instructions
  per cycle: one every ``L`` cycles while the schedulers have slack, a share of one per cycle once they do not.
- ``T_dram``: compulsory bytes (every tensor argument read or written once) / DRAM bandwidth.
- ``T_store``: one L2 write per element of an uncoalesced tile store (the kernels before 2026-12-02 only).

Two constants are fitted: ``L`` (cycles per warp-instruction) and the cost of one uncoalesced element store, on
the six kernel times of commit 6c7bf35 (``benchmarks/data/time_model_6c7bf35.json``, written by
``python -m benchmarks.calibrate_time_model``), by least squares on log time over a grid.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import numpy as np

#: the GPU of the calibration run (H100 SXM): SMs, SM clock under load, DRAM bandwidth reached by a copy,
#: warp schedulers per SM
H100 = dict(name="H100 SXM", sms=132, clock_hz=1.755e9, dram_bytes_per_s=3.0e12, schedulers=4)
CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "time_model_6c7bf35.json")
#: the error of the fit that the docs state (docs/performance.md): rms of log(predicted / measured) over the six
#: kernels, and the largest leave-one-out miss (each kernel predicted by a fit on the other five), as a ratio
STATED_RMS_LOG_ERROR = 0.20
STATED_LEAVE_ONE_OUT = 1.7  # predicted / measured within [1/1.7, 1.7]
#: the kernels of one fused forward + backward, in launch order
FWD_BWD = ("_pool_kernel", "_assign_kernel", "_dispatch_kernel", "_bwd_do_kernel", "_bwd_main_kernel",
           "_bwd_pool_kernel")


@dataclasses.dataclass(frozen=True)
class KernelCost:
    """What the model needs of one launch: ``programs`` = ``((count, tiles), ...)`` runs of programs in launch
    order and the tile-loop iterations each takes; warps per program; programs resident per SM; PTX instructions
    per thread of one tile-loop iteration and of the rest of the kernel; compulsory bytes; elements stored
    through uncoalesced tile stores; PTX instructions of one iteration of the loops over the group's chunk
    partials (``aot.ptx_profile``'s ``partial_loops``), which run ``chunks - 1`` times (0 where not counted: the
    calibration data)."""
    kernel: str
    programs: tuple
    warps: int
    per_sm: int
    loop_instructions: int
    other_instructions: int
    bytes: int
    strided_store_elements: int = 0
    partial_instructions: int = 0
    chunks: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "KernelCost":
        d = dict(d)
        d["programs"] = tuple(tuple(r) for r in d["programs"])
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class Params:
    latency: float  # L: cycles between two instructions of one warp when its scheduler has slack (PTX count)
    store_ps: float  # picoseconds per element of an uncoalesced tile store


def tensor_bytes(args) -> int:
    """Compulsory bytes of a launch: every tensor argument read or written once (an argument passed twice, read
    and written in place, counts twice)."""
    return sum(v.numel() * v.element_size() for v in args if hasattr(v, "element_size"))


def kernel_cost(kernel: str, chunk_tiles, groups: int, warps: int, r90: dict, nbytes: int,
                strided_store_elements: int = 0) -> KernelCost:
    """A launch's cost from its grid (``groups`` programs per chunk, ``chunk_tiles[k]`` tile iterations each,
    chunk by chunk) and its sm_90 compile result (``aot.compile_spec``: programs per SM, PTX counts)."""
    loop = (r90.get("loop") or {}).get("instructions", 0)
    partial = r90.get("partial_loops", 0)
    chunk_tiles = tuple(chunk_tiles)
    return KernelCost(kernel=kernel, programs=runs(t for t in chunk_tiles for _ in range(groups)), warps=warps,
                      per_sm=r90["programs_per_sm"], loop_instructions=loop,
                      other_instructions=max(0, r90.get("instructions", loop) - loop - partial), bytes=int(nbytes),
                      strided_store_elements=int(strided_store_elements), partial_instructions=partial,
                      chunks=len(chunk_tiles))


def runs(values) -> tuple:
    """``((count, value), ...)``: run-length encoding of a sequence."""
    out = []
    for v in values:
        if out and out[-1][1] == v:
            out[-1][0] += 1
        else:
            out.append([1, v])
    return tuple((c, v) for c, v in out)


def core_cycles(cost: KernelCost, latency: float, gpu: dict = H100) -> float:
    """Cycles until the last program of the launch retires (event simulation of the SMs)."""
    if cost.per_sm < 1:
        return math.inf
    fixed = cost.other_instructions + cost.partial_instructions * max(cost.chunks - 1, 0)
    work = np.repeat([cost.loop_instructions * t + fixed for _, t in cost.programs],
                     [c for c, _ in cost.programs]).astype(np.float64)
    sms, slots = gpu["sms"], cost.per_sm
    rem = np.full((sms, slots), np.inf)
    nxt = 0
    for s in range(slots):  # the first wave: round robin over the SMs, one slot at a time
        k = min(sms, len(work) - nxt)
        rem[:k, s] = work[nxt:nxt + k]
        nxt += k
    t = 0.0
    while True:
        occ = np.isfinite(rem)
        n = occ.sum(axis=1)
        if not n.any():
            return t
        rate = np.minimum(1.0 / latency, gpu["schedulers"] / np.maximum(n * cost.warps, 1))  # per warp, per cycle
        ttf = rem / rate[:, None]
        dt = ttf.min()
        t += dt
        done = occ & (ttf <= dt * (1 + 1e-9))
        rem = np.where(occ & ~done, rem - rate[:, None] * dt, np.inf)
        free = np.argwhere(~np.isfinite(rem))  # in SM order: the next programs go to the lowest free SMs
        k = min(len(free), len(work) - nxt)
        if k:
            rem[free[:k, 0], free[:k, 1]] = work[nxt:nxt + k]
            nxt += k


def predict(cost: KernelCost, params: Params, gpu: dict = H100, _core: float = None) -> dict:
    """``{ms, core_ms, dram_ms, store_ms, floor_ms, bound}``: the estimate and its terms (floor: DRAM)."""
    core = (core_cycles(cost, params.latency, gpu) if _core is None else _core) / gpu["clock_hz"] * 1e3
    dram = cost.bytes / gpu["dram_bytes_per_s"] * 1e3
    store = cost.strided_store_elements * params.store_ps * 1e-9
    terms = dict(core_ms=core, dram_ms=dram, store_ms=store)
    bound = max(terms, key=terms.get)
    return dict(terms, ms=terms[bound], floor_ms=dram,
                bound={"core_ms": "issue", "dram_ms": "memory", "store_ms": "strided stores"}[bound])


def load_calibration(path: str = CALIBRATION) -> dict:
    """``{commit, triton, gpu, case, kernels: {name: {measured_ms, cost: KernelCost}}}`` from the data file."""
    with open(path) as f:
        data = json.load(f)
    for k in data["kernels"].values():
        k["cost"] = KernelCost.from_dict(k["cost"])
    return data


#: the grid of constants the fit searches: L from 2 to 64 cycles (log-spaced), the store cost from 0 to 60 ps
_LATENCIES = tuple(float(v) for v in np.round(np.geomspace(2.0, 64.0, 301), 4))
_STORE_PS = tuple(float(v) for v in np.round(np.arange(0.0, 60.01, 0.1), 2))


def _fit(costs: dict, measured: dict, names) -> tuple:
    """``(Params, rms log error)`` minimising the rms log error over ``names`` (the store cost vectorised)."""
    best = None
    ps = np.asarray(_STORE_PS)
    meas = np.array([measured[n] for n in names])[:, None]
    dram = np.array([costs[n].bytes / H100["dram_bytes_per_s"] * 1e3 for n in names])[:, None]
    elems = np.array([costs[n].strided_store_elements for n in names], dtype=np.float64)[:, None]
    for L in _LATENCIES:
        core = np.array([_core_cached(costs[n], L) / H100["clock_hz"] * 1e3 for n in names])[:, None]
        pred = np.maximum(np.maximum(core, dram), elems * ps[None, :] * 1e-9)
        rms = np.sqrt((np.log(pred / meas) ** 2).mean(axis=0))
        i = int(np.argmin(rms))
        if best is None or rms[i] < best[1] - 1e-12:
            best = (Params(L, float(ps[i])), float(rms[i]))
    return best


@functools.lru_cache(maxsize=None)
def _core_cached(cost: KernelCost, latency: float) -> float:
    return core_cycles(cost, latency)


@functools.lru_cache(maxsize=4)
def fit(path: str = CALIBRATION) -> dict:
    """The fit on the calibration file: ``{params, rms_log_error, predicted_ms, measured_ms, leave_one_out}``
    (``leave_one_out[k]``: predicted / measured for kernel k by a fit on the other five)."""
    data = load_calibration(path)
    costs = {n: k["cost"] for n, k in data["kernels"].items()}
    measured = {n: k["measured_ms"] for n, k in data["kernels"].items()}
    names = sorted(costs)
    params, rms = _fit(costs, measured, names)
    loo = {}
    for n in names:
        p, _ = _fit(costs, measured, [m for m in names if m != n])
        loo[n] = predict(costs[n], p)["ms"] / measured[n]
    return dict(params=params, rms_log_error=rms, measured_ms=measured,
                predicted_ms={n: predict(costs[n], params)["ms"] for n in names}, leave_one_out=loo)


def params() -> Params:
    """The fitted constants (deterministic: a grid search over the data file)."""
    return fit()["params"]
