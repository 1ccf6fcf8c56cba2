"""Ahead-of-time compilation of the op's kernel launches for NVIDIA GPUs, on a machine without one.

The Triton interpreter proves the math, not that a kernel compiles or fits in registers. This module takes
the launches the op really makes (:func:`context_cluster.record_launches`), rebuilds the specialisation
Triton's JIT would compile for each (argument types, 16-byte pointer alignment, constexprs, warps, stages),
compiles it with ``triton.compile`` for a given compute capability, and reads registers, spills, stack and
shared memory off ``ptxas -v`` (the ptxas inside the triton wheel). Works with triton 3.6 and 3.8; must run
without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions).
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_PTR = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
        torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.bool: "i1"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One distinct compilation: what ``triton.compile`` needs, hashable for de-duplication."""
    module: str
    kernel: str
    signature: tuple  # ((name, type), ...)
    constexprs: tuple  # ((name, value), ...)
    aligned: tuple  # indices of 16-byte aligned pointer arguments
    num_warps: int
    num_stages: int

    def label(self) -> str:
        shown = {k: v for k, v in self.constexprs if k.startswith("BLOCK") or k in ("AGG", "BY_COUNT")}
        ptrs = sorted({t[1:] for _, t in self.signature if t.startswith("*") and t[1:] not in ("i32",)})
        return (" ".join(f"{k.replace('BLOCK_', 'B')}={int(v) if isinstance(v, bool) else v}"
                         for k, v in shown.items()) + f" w={self.num_warps} ptr={'/'.join(ptrs)}")


def spec_of(launch) -> Spec:
    """The specialisation Triton's JIT compiles for a recorded launch."""
    fn = launch.kernel
    names = list(fn.arg_names)
    dont = {p.num for p in fn.params if p.do_not_specialize}
    sig, aligned = [], []
    runtime = [n for n in names if n in launch.args]
    if names[:len(runtime)] != runtime:
        raise ValueError(f"{fn.__name__}: runtime parameters must precede the constexprs")
    for i, name in enumerate(runtime):
        v = launch.args[name]
        if isinstance(v, torch.Tensor):
            sig.append((name, "*" + _PTR[v.dtype]))
            if v.data_ptr() % 16 == 0:
                aligned.append(i)
        elif isinstance(v, bool):
            sig.append((name, "i1"))
        elif isinstance(v, int):
            if i not in dont:
                raise ValueError(f"{fn.__name__}: int argument {name} is value-specialised by the JIT; the gate "
                                 "compiles only unspecialised ints (mark it do_not_specialize)")
            sig.append((name, "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"))
        elif isinstance(v, float):
            sig.append((name, "fp32"))
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={v!r}")
    consts = []
    for name in names[len(launch.args):]:
        if name not in launch.constexprs:
            raise ValueError(f"{fn.__name__}: launch gives no value for {name}")
        sig.append((name, "constexpr"))
        consts.append((name, launch.constexprs[name]))
    return Spec(fn.fn.__module__, fn.__name__, tuple(sig), tuple(consts), tuple(aligned),
                launch.num_warps, launch.num_stages)


def _kernel_fn(spec: Spec):
    import importlib
    return getattr(importlib.import_module(spec.module), spec.kernel)


def ptxas_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_spec(spec: Spec, cc: int, resources: bool = True) -> dict:
    """Compile for ``sm_<cc>``; with ``resources``, ptxas's report: regs, spill bytes, stack, shared memory.

    Returns ``dict(ok=True, regs=..., spill_stores=..., spill_loads=..., stack=..., shared=...)`` or
    ``dict(ok=False, error=...)``.
    """
    fn = _kernel_fn(spec)
    consts = dict(spec.constexprs)
    src = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=consts,
                    attrs={(i,): [["tt.divisibility", 16]] for i in spec.aligned})
    try:
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                           options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    except Exception as e:  # a compile error is a result here, not a crash of the gate
        msg = str(e).strip().splitlines()
        return dict(ok=False, error=(msg[-1] if msg else type(e).__name__)[:300])
    out = dict(ok=True, shared=int(getattr(k.metadata, "shared", 0)))
    if not resources:
        return out
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(k.asm["ptx"])
        arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
        r = subprocess.run([ptxas_path(), "-v", f"--gpu-name={arch}", path, "-o", os.devnull],
                           capture_output=True, text=True)
    text = r.stdout + r.stderr
    if r.returncode:
        return dict(ok=False, error=f"ptxas: {text.strip()[-300:]}")

    def num(pat):
        m = re.search(pat, text)
        return int(m.group(1)) if m else 0

    out.update(regs=num(r"Used (\d+) registers"), stack=num(r"(\d+) bytes stack frame"),
               spill_stores=num(r"(\d+) bytes spill stores"), spill_loads=num(r"(\d+) bytes spill loads"))
    out["loop_converts"] = loop_converts(k.asm.get("ttgir", ""))
    out["programs_per_sm"] = programs_per_sm(out["regs"], spec.num_warps, out["shared"], cc)
    return out


#: per-multiprocessor limits of the GPUs the gate checks (CUDA occupancy calculator): 64K 32-bit registers,
#: allocated per warp in units of 256; resident warps and blocks; shared memory per SM and per-block reserve
SM_LIMITS = {80: dict(warps=64, blocks=32, smem=164 * 1024, reserve=1024),
             90: dict(warps=64, blocks=32, smem=228 * 1024, reserve=1024)}


def programs_per_sm(regs: int, num_warps: int, shared: int, cc: int) -> int:
    """Programs (thread blocks) of one kernel that fit on a multiprocessor at once, limited by registers,
    warps, blocks and shared memory: the occupancy the launch can reach, computed without a GPU."""
    lim = SM_LIMITS.get(cc, SM_LIMITS[90])
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = (65536 // per_warp) // num_warps
    by_warps = lim["warps"] // num_warps
    by_smem = lim["smem"] // (shared + lim["reserve"]) if shared else lim["blocks"]
    return max(0, min(by_regs, by_warps, by_smem, lim["blocks"]))


def loop_converts(ttgir: str) -> int:
    """``convert_layout`` operations inside loops of a kernel's TTGIR: each moves a register tile to another
    distribution across threads (through shared memory, unless the two layouts happen to agree) on every
    iteration. Loops are ``scf.for`` / ``scf.while`` regions, found by brace depth."""
    depth, loop_depths, n = 0, [], 0
    for line in ttgir.splitlines():
        code = line.split("//")[0]
        if re.search(r"\bscf\.(for|while)\b", code) and code.rstrip().endswith("{"):
            loop_depths.append(depth + 1)
        if "convert_layout" in code and loop_depths:
            n += 1
        depth += code.count("{") - code.count("}")
        while loop_depths and depth < loop_depths[-1]:
            loop_depths.pop()
    return n
