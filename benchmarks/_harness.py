"""What the backbone and the training benchmarks share: the implementations they compare (``MIXER[+FLAG...]``),
how each is set up, and the timing and peak memory of a step."""
from __future__ import annotations

import statistics
import time
import types

import torch

from coc_kernels.functional import _pair
from coc_kernels.reference import context_cluster_dense

ON_GPU = torch.cuda.is_available()
MIXERS = ("dense", "triton", "reference")
FLAGS = ("compile", "graphs", "cp")


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
                                proposal=_pair(self.proposal, "proposal"), fold=_pair(self.fold, "fold"),
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
