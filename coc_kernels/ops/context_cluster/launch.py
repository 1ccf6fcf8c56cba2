"""Launching and recording: every kernel launch goes through :func:`launch`, by keyword, so that a launch can be
recorded (the compile gate compiles exactly what the op launches) or only recorded (a dry run); buffers come
from :func:`empty`, which can poison them (``LaunchPolicy.poison``)."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect

import torch

from .config import policy, policy_of
from .config import policy_set as _POLICY_SET


@dataclasses.dataclass
class Launch:
    """One kernel launch as the op made it (what the compile gate compiles): ``args`` the runtime arguments
    (pointers, sizes, strides) and ``constexprs`` the compile-time ones, both by parameter name."""
    kernel: object
    grid: tuple
    args: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    maxnreg: int = 0  # registers per thread at most (0: ptxas decides)
    compiled: object = None  # what triton compiled for it (registers, spills), once it ran


#: who listens to launches in this thread (record_launches blocks, innermost last), and whether they only listen
_RECORDERS: contextvars.ContextVar = contextvars.ContextVar("coc_launch_recorders", default=())
_DRY_RUN: contextvars.ContextVar = contextvars.ContextVar("coc_launch_dry_run", default=False)


@contextlib.contextmanager
def record_launches(execute: bool = True):
    """Collect every kernel launch the op makes inside the block, in this thread (and in the backward of calls
    made here, wherever autograd runs it); ``execute=False`` records without running anything (and lets the op
    take CPU tensors without the interpreter), for the compile gate. Other threads launch and compute as usual."""
    rec: list = []
    tokens = _RECORDERS.set(_RECORDERS.get() + (rec,)), _DRY_RUN.set(not execute)
    try:
        yield rec
    finally:
        _DRY_RUN.reset(tokens[1])
        _RECORDERS.reset(tokens[0])


@contextlib.contextmanager
def isolated_recording():
    """Record the launches of the block, executed, without telling any other recorder of this thread (the tuner's
    candidate runs are not the caller's launches)."""
    rec: list = []
    tokens = _RECORDERS.set((rec,)), _DRY_RUN.set(False)
    try:
        yield rec
    finally:
        _DRY_RUN.reset(tokens[1])
        _RECORDERS.reset(tokens[0])


def dry_run() -> bool:
    """True inside ``record_launches(execute=False)`` in this thread."""
    return _DRY_RUN.get()


def capture():
    """This thread's launch state (policy, recorders, dry run), for :func:`restored` in a backward."""
    return policy(), _RECORDERS.get(), _DRY_RUN.get()


@contextlib.contextmanager
def restored(state):
    """Run the block under a launch state from :func:`capture` where this thread set none of its own: the
    backward of an eager call runs in the state of the thread that calls it if that thread set one, and in
    autograd's worker threads (one per device on CUDA, which set none) in the state of its forward."""
    p, recorders, dry = state
    if _POLICY_SET() or _RECORDERS.get() or _DRY_RUN.get():
        yield
        return
    tokens = _RECORDERS.set(recorders), _DRY_RUN.set(dry)
    try:
        with policy_of(p):
            yield
    finally:
        _DRY_RUN.reset(tokens[1])
        _RECORDERS.reset(tokens[0])


_PARAMS: dict = {}


def kernel_params(kernel) -> tuple[tuple, tuple]:
    """``(runtime parameter names, constexpr parameter names)`` of a kernel, in its signature's order."""
    hit = _PARAMS.get(id(kernel))  # by identity: hashing a JITFunction hashes its source (triton's cache key)
    if hit is None or hit[0] is not kernel:
        params = inspect.signature(kernel.fn).parameters.items()
        const = tuple(n for n, p in params if "constexpr" in str(p.annotation))
        hit = _PARAMS[id(kernel)] = (kernel, (tuple(n for n, _ in params if n not in const), const))
    return hit[1]


def launch(kernel, grid, args: dict, constexprs: dict, cfg):
    """Launch ``kernel`` on ``grid`` with every argument by name (a missing or unknown name is an error here,
    not a silently shifted argument list)."""
    runtime, const = kernel_params(kernel)
    if set(args) != set(runtime) or set(constexprs) != set(const):
        raise TypeError(f"{kernel.fn.__name__}: launch arguments do not match its parameters: missing "
                        f"{sorted(set(runtime) - set(args)) + sorted(set(const) - set(constexprs))}, unknown "
                        f"{sorted(set(args) - set(runtime)) + sorted(set(constexprs) - set(const))}")
    made = Launch(kernel, tuple(grid), dict(args), dict(constexprs), cfg["num_warps"], cfg["num_stages"],
                  cfg.get("maxnreg", 0))
    for rec in _RECORDERS.get():
        rec.append(made)
    if _DRY_RUN.get() or grid[0] * grid[1] == 0:
        return
    made.compiled = kernel[grid](**args, **constexprs, **launch_options(made))


def launch_options(made: Launch) -> dict:
    """Triton's launch options of a launch: warps, stages and the register cap where it has one."""
    opts = dict(num_warps=made.num_warps, num_stages=made.num_stages)
    if made.maxnreg:
        opts["maxnreg"] = made.maxnreg
    return opts


def empty(shape, dtype, device, poison: bool):
    """``torch.empty``, NaN-filled (ints: -2**31) with ``poison`` (the call's ``LaunchPolicy.poison``) outside a
    dry run."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if poison and not _DRY_RUN.get():
        t.fill_(float("nan") if t.is_floating_point() else -2 ** 31)
    return t
