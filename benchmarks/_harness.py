"""What the benchmarks share: the stage shapes and inputs of the mixer at detection sizes (from
``ARCH_SETTINGS``), the implementations they compare (``MIXER[+FLAG...]``) and how each is set up, one timer
(:func:`time_steps`), the peak memory of a step, the per-kernel GPU times, and the baseline rows of a table."""
from __future__ import annotations

import statistics
import time
import types

import torch

from coc_det.backbone import ARCH_SETTINGS, PROPOSAL_OF_CENTRES
from coc_kernels import context_cluster
from coc_kernels.functional import pair
from coc_kernels.reference import context_cluster_dense

ON_GPU = torch.cuda.is_available()
MIXERS = ("dense", "triton", "light")
FLAGS = ("compile", "graphs", "cp")


# the model zoo's settings (one source of truth: coc_det.backbone)
HEADS = {arch: s["heads"] for arch, s in ARCH_SETTINGS.items()}
HEAD_DIMS = {arch: s["head_dim"] for arch, s in ARCH_SETTINGS.items()}
FOLDS = {arch: list(s["folds"]) for arch, s in ARCH_SETTINGS.items()}
CENTRES = PROPOSAL_OF_CENTRES


def mixer_geometry(arch: str, stage: int, centres: int):
    """``(heads, centres per region axis, fold)`` of a stage's mixer (stage 1-based, centres 4/25/49)."""
    return HEADS[arch][stage - 1], CENTRES[centres], FOLDS[arch][stage - 1]


def stage_shape(batch: int, stage: int, img=(800, 1344)):
    s = 4 * 2 ** (stage - 1)
    return batch, img[0] // s, img[1] // s


def make_inputs(arch, stage, batch, dtype, device, img=(800, 1344)):
    B, H, W = stage_shape(batch, stage, img)
    C = HEADS[arch][stage - 1] * HEAD_DIMS[arch][stage - 1]
    x = torch.randn(B, C, H, W, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, C, H, W, device=device, dtype=dtype, requires_grad=True)
    a = torch.ones(1, device=device, requires_grad=True)
    b = torch.zeros(1, device=device, requires_grad=True)
    return x, v, a, b


_compiled = {}


def mixer_runner(impl, heads, p, fold):
    """``f(x, v, alpha, beta)`` of one mixer implementation (``dense+compile``: the dense form compiled)."""
    kw = dict(heads=heads, proposal=p, fold=fold)
    if impl == "dense+compile":
        key = (heads, p, fold)
        if key not in _compiled:
            def dense(x, v, a, b):
                return context_cluster_dense(x, v, a, b, heads=heads, proposal=(p, p), fold=(fold, fold))
            # static shapes: with automatic dynamic shapes the second case recompiles into an inductor
            # lowering error of adaptive_avg_pool2d (torch 2.11)
            _compiled[key] = torch.compile(dense, dynamic=False)
        return _compiled[key]
    return lambda x, v, a, b: context_cluster(x, v, a, b, impl=impl, **kw)


def parse_impl(impl: str):
    """``'triton+compile+cp'`` -> ``('triton', {'compile', 'cp'})``; unknown parts raise."""
    mixer, *flags = impl.split("+")
    if mixer not in MIXERS or any(f not in FLAGS for f in flags):
        raise ValueError(f"implementation {impl!r}: expected one of {MIXERS} followed by +flags from {FLAGS}")
    if "graphs" in flags and "compile" not in flags:
        raise ValueError(f"{impl!r}: +graphs needs +compile (CUDA graphs through torch.compile)")
    return mixer, set(flags)


def compile_options(flags: set, backend: str):
    """``torch.compile`` arguments of an implementation's flags (``+graphs``: CUDA graphs), or None without
    ``+compile``."""
    if "compile" not in flags:
        return None
    return dict(backend=backend, mode="reduce-overhead") if "graphs" in flags else dict(backend=backend)


def _original_forward(self, x):
    """The original Cluster.forward's arithmetic as it ran: the dense formulation called directly, so an
    enclosing autocast applies to it (the public op computes in fp32 inside on every path instead)."""
    out = context_cluster_dense(self.f(x), self.v(x), self.sim_alpha, self.sim_beta, heads=self.heads,
                                proposal=pair(self.proposal, "proposal"), fold=pair(self.fold, "fold"),
                                denominator=self.denominator)
    return self.proj(out)


def set_impl(model, impl):
    """Mixer implementation of every block; ``dense`` is the original's, autocast included (the baseline)."""
    for m in model.modules():
        if hasattr(m, "impl") and hasattr(m, "sim_alpha"):
            m.impl = impl
            if impl == "dense":
                m.forward = types.MethodType(_original_forward, m)


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def time_steps(step, warmup: int, reps: int, after=None):
    """``(first call ms, median ms of reps)`` of ``step()``: the first call (compilation included) is timed on
    its own, then ``warmup - 1`` more untimed calls (at least the first one warms up), then ``reps`` timed;
    ``after()`` runs after every call, outside the timing."""
    warm = max(warmup, 1)
    first, times = None, []
    for i in range(warm + reps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        ms = (time.perf_counter() - t) * 1e3
        if i == 0:
            first = ms
        elif i >= warm:
            times.append(ms)
        if after is not None:
            after()
    return first, statistics.median(times)


def peak_extra_gb(step):
    """GPU: peak memory allocated during one ``step()`` above what was allocated before it (GB); CPU: None."""
    if not ON_GPU:
        return None
    sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 30


#: the rows every table compares with: the original eager, and the original under torch.compile
BASELINES = ("dense", "dense+compile")


def baseline_rows(rows: list, row: dict, group: str, time_key: str) -> list:
    """For each of :data:`BASELINES`, the row of ``rows`` with the same ``row[group]`` (variant, config) that
    has a time under ``time_key``, or None."""
    return [next((q for q in rows if q.get("impl") == impl and q[group] == row[group] and time_key in q), None)
            for impl in BASELINES]


def kernel_times(arch, stage, centres, batch, dtype, img=(800, 1344)):
    """GPU: ``[(kernel name, launches, ms), ...]`` per forward+backward step of the triton path, longest
    first (torch.profiler, mean over 10 steps after 3 warm-up steps)."""
    from torch.profiler import ProfilerActivity, profile as tprofile
    heads, p, fold = mixer_geometry(arch, stage, centres)
    x, v, a, b = make_inputs(arch, stage, batch, dtype, "cuda", img)
    dy = torch.randn_like(x)
    f = mixer_runner("triton", heads, p, fold)

    def step():
        torch.autograd.grad(f(x, v, a, b), (x, v, a, b), dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    rows = [(e.key, e.count // 10, (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) / 1e4)
            for e in prof.key_averages()]
    return sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])


def configurations_line() -> str:
    """Which launch configurations the fused op ran with in this process (shipped, or tuned: per kernel)."""
    from coc_kernels.ops.context_cluster import policy, tuning
    if not policy().tuning:
        return "Launch configurations: the shipped ones (tuning off)."
    held = tuning.report()
    if not held:
        return "Launch configurations: the shipped ones (tuning on; nothing tuned in this process: no CUDA device)."
    from coc_kernels.ops.context_cluster.config import KERNEL_CONFIGS, describe, with_settings
    parts = [f"{k['kernel']} {k['dtype']} {k['centres']}c d{k['d']}: "  # a key's centres: its centre class
             f"{describe(with_settings(KERNEL_CONFIGS[k['kernel']].at(k['centres']), e['choice']))} "
             f"({e.get('source', 'tuned')})" for k, e in held]
    return f"Launch configurations (tuning on, cache {tuning.cache_path()}): " + "; ".join(parts)
