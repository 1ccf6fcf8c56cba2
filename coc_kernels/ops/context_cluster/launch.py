"""Launching and recording: every kernel launch goes through :func:`launch`, by keyword, so that a launch can be
recorded (the compile gate compiles exactly what the op launches) or only recorded (a dry run); buffers come
from :func:`empty`, which can poison them (``LaunchPolicy.poison``)."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect

import torch

from .config import policy


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


class _Recording:
    """Who is listening to launches (:func:`record_launches`), and whether they only listen (dry run)."""
    recorders: list = []
    dry_run: bool = False


@contextlib.contextmanager
def record_launches(execute: bool = True):
    """Collect every kernel launch the op makes inside the block; ``execute=False`` records without
    running anything (and lets the op take CPU tensors without the interpreter), for the compile gate."""
    rec: list = []
    _Recording.recorders.append(rec)
    prev = _Recording.dry_run
    _Recording.dry_run = not execute
    try:
        yield rec
    finally:
        _Recording.recorders.remove(rec)
        _Recording.dry_run = prev


def dry_run() -> bool:
    """True inside ``record_launches(execute=False)``."""
    return _Recording.dry_run


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
    made = Launch(kernel, tuple(grid), dict(args), dict(constexprs), cfg["num_warps"], cfg["num_stages"])
    for rec in _Recording.recorders:
        rec.append(made)
    if _Recording.dry_run or grid[0] * grid[1] == 0:
        return
    kernel[grid](**args, **constexprs, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def empty(shape, dtype, device):
    """``torch.empty``, NaN-filled (ints: -2**31) under ``LaunchPolicy(poison=True)`` outside a dry run."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if policy().poison and not _Recording.dry_run:
        t.fill_(float("nan") if t.is_floating_point() else -2 ** 31)
    return t
