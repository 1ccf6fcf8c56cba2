"""Launch configurations tuned on the user's GPU, each candidate checked before it is trusted.

Plan. The first forward (or assignment) of a shape class on a CUDA device times, per kernel and **key** (kernel,
code version, triton / torch versions, device name, compute capability and SM count, dtype, dot precision, centre
class, channel classes; never H or W), a short candidate list: the shipped configuration first, then the
:data:`TUNING_SPACE` around it. Each candidate runs the op on the real inputs (the backward kernels: the real
forward state and an upstream gradient from a fixed seed) into fresh NaN-filled buffers, and its outputs are
compared with the memory-light torch path on the same inputs by the near-tie rule of :mod:`coc_kernels.agreement`.
A candidate that fails the check, raises or spills is dropped with one warning line. The winner is the fastest
median; among candidates within :data:`NOISE` of it, the first declared (the shipped one where it qualifies), so
noise does not flip the choice.

Choices live in a JSON cache (``COC_TUNING_CACHE``, default ``~/.cache/coc_kernels/tuning.json``; written
atomically, with every candidate's timings and outcome) and in an optional read-only file of pinned choices
(``COC_TUNING_PINNED``, same format; pinned keys are never tuned). Under ``torch.distributed`` rank 0 resolves each
key (pinned, cache, or tuning) and broadcasts it; every rank uses rank 0's choice. ``COC_TUNING=0`` (or
``launch_policy(tuning=False)``) turns tuning off: the shipped configurations, bitwise the same results on every GPU.
No tuning while ``torch.compile`` traces, while a CUDA graph is captured, or under
``torch.use_deterministic_algorithms(True)``: known choices are used, else the shipped ones, with one warning.
:func:`tune` warms the cache for given shapes before a capture or a run.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
import statistics
import time
import warnings

import torch

from ...reference import DEFAULT_DENOMINATOR, DENOMINATORS
from . import choices
from .choices import FORMAT, SETTINGS, cache_path, clear, key, report, write_cache
from .config import KERNELS, kernel_config, launch_policy, policy
from .geometry import geometry
from .host import assignment, fused_backward, fused_forward
from .launch import dry_run, isolated_recording, launch_options

#: what the tuner varies around the shipped configuration, in declared order (the shipped one is always first)
TUNING_SPACE = dict(BLOCK_N=(32, 64), num_warps=(4, 8), STAGES=(1, 2))
#: candidates within this fraction of the fastest median count as equally fast (the first declared wins)
NOISE = 0.03
#: timed launches per candidate (after one warm-up), and the most seconds one key may spend
REPS = 10
BUDGET_S = 60.0
#: the kernels each host function launches, tuned at its first call of a key
KINDS = {"forward": ("pool", "assign", "dispatch", "bwd_do", "bwd_main", "bwd_pool"),
         "assignment": ("pool", "assign_only")}
#: devices tuning runs on (the interpreter's CPU tensors only in tests)
DEVICES = ("cuda",)
_TIMER: contextvars.ContextVar = contextvars.ContextVar("coc_tuning_timer", default=None)
__all__ = ["TUNING_SPACE", "NOISE", "REPS", "BUDGET_S", "KINDS", "DEVICES", "ensure", "candidates", "choose", "timer",
           "tune", "tuned_forward", "tuned_assignment", "FORMAT", "SETTINGS", "cache_path", "clear", "key", "report",
           "write_cache"]


# ----------------------------------------------------------------------------------------------------------------
# when to tune
# ----------------------------------------------------------------------------------------------------------------
def _blocked() -> str:
    """Why tuning cannot time now ('' if it can)."""
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    if torch.are_deterministic_algorithms_enabled():
        return "torch.use_deterministic_algorithms(True) is set"
    return ""


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _may_tune(device) -> bool:
    """Tuning is on, the device is one tuning runs on, and this is neither a dry run nor a tuning run."""
    return (policy().tuning and device.type in DEVICES and not dry_run() and not choices.ACTIVE.get()
            and choices.FORCED.get() is None)


def ensure(kind: str, q, run_inputs):
    """Make sure every kernel of ``kind`` has a choice for ``q``'s keys: pinned, cached, rank 0's or tuned now on
    ``run_inputs()`` (``(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count)``). Geometries made before a
    choice is read or made are rebuilt at their next use (``choices.token``)."""
    if not _may_tune(q.device) or q.G * q.NC == 0:
        return
    p = policy()
    names = [n for n in KINDS[kind] if n not in p.config_overrides and "*" not in p.config_overrides]
    keys = choices.keys_of(q)
    dist = _distributed()
    choices.load(pinned_only=dist)
    if not dist:
        choices.load()
    missing = [n for n in names if keys[n] not in choices.TABLE]
    if not missing:
        return
    why = _blocked()
    if why:
        choices.warn_once(f"blocked:{why}", f"context_cluster: no launch tuning while {why}; using the cached or "
                          "shipped configurations (warm the cache first: coc_kernels.ops.context_cluster.tune)")
        return
    if dist:
        import torch.distributed as tdist
        if tdist.get_rank() == 0:  # its cache only for these keys: every rank's table must hold the same keys
            on_file = choices.read_file(cache_path())
            got = {n: dict(on_file[keys[n]], source="cache") for n in missing if keys[n] in on_file}
            todo = [n for n in missing if n not in got]
            if todo:
                got.update(_tune_or_shipped(todo, keys, q, run_inputs))
        else:
            got = None
        box = [got]
        tdist.broadcast_object_list(box, src=0)
        got = box[0]
    else:
        got = _tune_or_shipped(missing, keys, q, run_inputs)
    for n, e in got.items():
        choices.TABLE[keys[n]] = e
    choices.changed()


# ----------------------------------------------------------------------------------------------------------------
# tuning
# ----------------------------------------------------------------------------------------------------------------
def candidates(base: dict) -> list:
    """The shipped configuration, then every other point of :data:`TUNING_SPACE` in declared order."""
    first = {s: base[s] for s in SETTINGS}
    out = [first]
    for values in itertools.product(*TUNING_SPACE.values()):
        c = dict(zip(SETTINGS, values))
        if c != first:
            out.append(c)
    return out


def choose(tried: list) -> dict:
    """The winner among ``[{config, ms, outcome}]`` (declared order): the first whose outcome is ``ok`` and whose
    median is within :data:`NOISE` of the fastest; the first (shipped) configuration if none passed."""
    ok = [r for r in tried if r["outcome"] == "ok"]
    if not ok:
        return tried[0]["config"]
    best = min(r["ms"] for r in ok)
    return next(r["config"] for r in ok if r["ms"] <= best * (1 + NOISE))


def _cuda_median_ms(fn) -> float:
    fn()  # warm-up (compiles)
    torch.cuda.synchronize()
    times = []
    for _ in range(REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@contextlib.contextmanager
def timer(fn):
    """Time candidates with ``fn(kernel, config, launch) -> median ms`` in this thread (tests: no GPU)."""
    tok = _TIMER.set(fn)
    try:
        yield
    finally:
        _TIMER.reset(tok)


def _reference(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count, dy):
    """The memory-light torch path on the same inputs: y, the assignment, and the gradients for ``dy``."""
    from ...reference import cluster_assignment_light, context_cluster_light
    kw = dict(heads=heads, proposal=(ph, pw), fold=(fh, fw))
    # the caller's modes must not change the reference: no autocast (it would round the light path's products),
    # and tensors usable by autograd even when the call came under inference_mode
    with torch.inference_mode(False), torch.autocast(x.device.type, enabled=False):
        with torch.no_grad():
            a = cluster_assignment_light(x.clone(), alpha.clone(), beta.clone(), **kw)
        if value is None:
            return dict(a=a)
        ins = [t.detach().clone().requires_grad_() for t in (x, value, alpha, beta)]
        with torch.enable_grad():
            y = context_cluster_light(*ins, **kw, denominator="count" if by_count else "similarity")
            grads = torch.autograd.grad(y, ins, dy.to(y.dtype))
    return dict(a=a, y=y.detach(), grads=grads)


def _to_map(a, x, heads, fh, fw):
    """``a [G, N]`` of the kernels as ``[B, heads, H, W]``."""
    from ...reference import from_groups
    B, _, H, W = x.shape
    return from_groups(a.reshape(-1, 1, H // fh, W // fw), B, heads, (fh, fw))


def _tune_or_shipped(names, keys, q, run_inputs) -> dict:
    """:func:`_tune`, or, where tuning itself fails (the reference cannot run, say), the shipped configurations for
    this process (not cached) and one warning: the user's call goes on."""
    try:
        return _tune(names, keys, q, run_inputs)
    except Exception as e:
        choices.warn_once(f"failed:{type(e).__name__}", f"context_cluster tuning failed ({type(e).__name__}: "
                          f"{str(e)[:200]}); using the shipped configurations in this process")
        base = {n: kernel_config(n, q.M, q.D, q.DV) for n in names}  # the names have no override
        return {n: dict(choice={s: base[n][s] for s in SETTINGS}, source=f"shipped (tuning failed: {type(e).__name__})")
                for n in names}


def _tune(names, keys, q, run_inputs) -> dict:
    """Tune ``names`` on the inputs; ``{name: entry}``, written to the cache."""
    from ...agreement import compare
    x, value, alpha, beta, heads, ph, pw, fh, fw, by_count = run_inputs()
    gen = torch.Generator(device="cpu").manual_seed(0)
    dy = torch.randn(x.shape[0], heads * q.DV, x.shape[2], x.shape[3], generator=gen).to(
        x.device, (x if value is None else value).dtype)
    kw = dict(heads=heads, proposal=(ph, pw), fold=(fh, fw))
    ref = _reference(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count, dy)
    geo = (heads, ph, pw, fh, fw)
    timer_fn = _TIMER.get()
    entries = {}
    tok = choices.ACTIVE.set(True)
    try:
        with launch_policy(poison=True):
            state = None if value is None else fused_forward(x, value, alpha, beta, *geo, by_count)
            for name in names:
                t0 = time.perf_counter()
                base = kernel_config(name, q.M, q.D, q.DV)
                tried = []
                for cand in candidates(base):
                    row = dict(config=cand, ms=None)
                    tried.append(row)
                    if time.perf_counter() - t0 > BUDGET_S:
                        row["outcome"] = "skipped: tuning budget spent"
                        continue
                    ftok = choices.FORCED.set((name, tuple(sorted(cand.items()))))
                    try:
                        with isolated_recording() as rec:
                            if name in ("bwd_do", "bwd_main", "bwd_pool"):
                                outs = fused_backward(dy, x, value, alpha, *state[1:], *geo, by_count)
                                a_map = _to_map(state[1], x, heads, fh, fw)
                                got = [outs[0], outs[1], outs[2].reshape(alpha.shape), outs[3].reshape(beta.shape)]
                                want, maps = list(ref["grads"]), 2
                            elif value is None:
                                a_map = _to_map(assignment(x, alpha, beta, *geo)[0], x, heads, fh, fw)
                                got, want, maps = [], [], 0
                            else:
                                outs = fused_forward(x, value, alpha, beta, *geo, by_count)
                                a_map = _to_map(outs[1], x, heads, fh, fw)
                                got, want, maps = [outs[0]], [ref["y"]], 1
                        bad = compare(got, want, a_map, ref["a"], x, alpha, beta, dy=dy, maps=maps, **kw)
                        mine = [r for r in rec if r.kernel.fn.__name__ == f"_{_KERNEL_FN[name]}_kernel"]
                        spills = max([getattr(r.compiled, "n_spills", 0) or 0 for r in mine] + [0])
                        if bad:
                            row["outcome"] = "wrong: " + "; ".join(bad)
                        elif spills:
                            row["outcome"] = f"spills registers (n_spills {spills})"
                        else:
                            launch_ = mine[-1]
                            row["ms"] = (timer_fn or _time_launch)(name, cand, launch_)
                            row["outcome"] = "ok"
                    except Exception as e:  # a candidate that raises is dropped, not the user's call
                        row["outcome"] = f"raised: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    finally:
                        choices.FORCED.reset(ftok)
                    if row["outcome"] != "ok":
                        warnings.warn(f"context_cluster tuning: {name} candidate {cand} dropped ({row['outcome']})",
                                      stacklevel=2)
                entries[keys[name]] = dict(choice=choose(tried), candidates=tried,
                                           seconds=round(time.perf_counter() - t0, 3),
                                           passed=sum(r["outcome"] == "ok" for r in tried),
                                           made=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    finally:
        choices.ACTIVE.reset(tok)
    try:
        write_cache(entries)
    except OSError as e:
        choices.warn_once(f"write:{cache_path()}", f"context_cluster tuning: cannot write the cache {cache_path()} "
                          f"({e}); choices are kept for this process only")
    return {n: dict(entries[keys[n]], source="tuned") for n in names}


#: kernel function of each configured kernel name (assign_only is the assign kernel without aggregation)
_KERNEL_FN = {"pool": "pool", "assign": "assign", "assign_only": "assign", "dispatch": "dispatch",
              "bwd_do": "bwd_do", "bwd_main": "bwd_main", "bwd_pool": "bwd_pool"}


def _time_launch(name, cand, launch_) -> float:
    """Median time of re-launching one recorded launch (its outputs are scratch by now)."""
    def again():
        launch_.kernel[launch_.grid](**launch_.args, **launch_.constexprs, **launch_options(launch_))
    if launch_.args[next(iter(launch_.args))].device.type != "cuda":
        raise RuntimeError("timing needs a CUDA device (tests inject a timer)")
    return _cuda_median_ms(again)


def tuned_forward(x, value, alpha, beta, heads: int, ph: int, pw: int, fh: int, fw: int, by_count: bool):
    """:func:`~.host.fused_forward` after the tuner has settled the configurations of this shape class."""
    _settle("forward", x, value, alpha, beta, heads, ph, pw, fh, fw, by_count)
    return fused_forward(x, value, alpha, beta, heads, ph, pw, fh, fw, by_count)


def tuned_assignment(x, alpha, beta, heads: int, ph: int, pw: int, fh: int, fw: int):
    """:func:`~.host.assignment` after the tuner has settled the configurations of this shape class."""
    _settle("assignment", x, None, alpha, beta, heads, ph, pw, fh, fw, True)
    return assignment(x, alpha, beta, heads, ph, pw, fh, fw)


def _settle(kind, x, value, alpha, beta, heads, ph, pw, fh, fw, by_count):
    if not _may_tune(x.device):
        return  # the common case: no geometry made here
    x = x if x.is_contiguous() else x.contiguous()
    if value is not None and not value.is_contiguous():
        value = value.contiguous()
    q = geometry(x, value, heads, ph, pw, fh, fw)
    ensure(kind, q, lambda: (x, value, alpha, beta, heads, ph, pw, fh, fw, by_count))


def tune(x, value, alpha, beta, *, heads: int, proposal, fold, denominator: str = DEFAULT_DENOMINATOR) -> dict:
    """Warm the tuning table (and its cache file) for the shape class of these inputs (fused forward and backward,
    or the assignment alone when ``value`` is None) before a capture or a run: ``{kernel: entry}`` of the choices
    (``proposal`` / ``fold``: an int or a pair, as the op takes them)."""
    (ph, pw), (fh, fw) = ((v, v) if isinstance(v, int) else tuple(v) for v in (proposal, fold))
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    x = x.detach().contiguous()
    value = None if value is None else value.detach().contiguous()
    with launch_policy(tuning=True):
        q = geometry(x, value, heads, ph, pw, fh, fw)
        ensure("assignment" if value is None else "forward", q,
               lambda: (x, value, alpha.detach(), beta.detach(), heads, ph, pw, fh, fw, denominator == "count"))
    keys = choices.keys_of(q)
    return {n: choices.TABLE[keys[n]] for n in KINDS["assignment" if value is None else "forward"]
            if keys[n] in choices.TABLE}


assert set(_KERNEL_FN) == set(KERNELS)
