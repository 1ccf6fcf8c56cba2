"""Ahead-of-time compilation of the op's kernel launches for NVIDIA GPUs, on a machine without one.

The Triton interpreter proves the math, not that a kernel compiles or fits in registers. This module takes
the launches the op really makes (:func:`context_cluster.record_launches`), rebuilds the specialisation
Triton's JIT would compile for each (argument types, 16-byte pointer alignment, constexprs, warps, stages),
compiles it with ``triton.compile`` for a given compute capability, and reads registers, spills, stack and
shared memory off the log of triton's own ``ptxas -v`` run (the ptxas inside the triton wheel, triton's
flags). Works with triton 3.6 and 3.8; must run without ``TRITON_INTERPRET`` (the interpreter replaces the
kernels by Python functions).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
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
    maxnreg: int = 0  # ptxas's register cap (0: none)

    def label(self) -> str:
        shown = {k: v for k, v in self.constexprs if k.startswith("BLOCK") or k in ("AGG", "BY_COUNT", "BW", "VEC",
                                                                                       "STAGES")}
        ptrs = sorted({t[1:] for _, t in self.signature if t.startswith("*") and t[1:] not in ("i32",)})
        return (" ".join(f"{k.replace('BLOCK_', 'B')}={int(v) if isinstance(v, bool) else v}"
                         for k, v in shown.items()) + f" w={self.num_warps}"
                + (f" maxnreg={self.maxnreg}" if self.maxnreg else "") + f" ptr={'/'.join(ptrs)}")


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
                launch.num_warps, launch.num_stages, getattr(launch, "maxnreg", 0))


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
    options = dict(num_warps=spec.num_warps, num_stages=spec.num_stages)
    if spec.maxnreg:
        options["maxnreg"] = spec.maxnreg
    log = io.StringIO()
    try:
        # triton runs ptxas -v itself (with its own flags: line info, and under 3.8 --regAllocOptLevel=2); its log,
        # which triton prints when asked, is the report of the very cubin it built: read it rather than run ptxas
        # a second time on the PTX
        with _ptxas_log_printed(resources), contextlib.redirect_stdout(log):
            k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    except Exception as e:  # a compile error is a result here, not a crash of the gate
        msg = str(e).strip().splitlines()
        return dict(ok=False, error=(msg[-1] if msg else type(e).__name__)[:300])
    out = dict(ok=True, shared=int(getattr(k.metadata, "shared", 0)))
    if not resources:
        return out
    text = log.getvalue()
    if "Used " not in text:  # no log printed (a triton that does not): run ptxas -v on the PTX
        ok, text = _run_ptxas(k.asm["ptx"], cc)
        if not ok:
            return dict(ok=False, error=f"ptxas: {text.strip()[-300:]}")

    def num(pat):
        m = re.search(pat, text)
        return int(m.group(1)) if m else 0

    out.update(regs=num(r"Used (\d+) registers"), stack=num(r"(\d+) bytes stack frame"),
               spill_stores=num(r"(\d+) bytes spill stores"), spill_loads=num(r"(\d+) bytes spill loads"))
    out["loop_converts"] = loop_converts(k.asm.get("ttgir", ""))
    out["programs_per_sm"] = programs_per_sm(out["regs"], spec.num_warps, out["shared"], cc)
    file, lines = tile_helper_lines(spec.module)
    if lines:
        out["accesses"] = tile_accesses(k.asm.get("ttgir", ""), file, lines)
        out.update(ptx_profile(k.asm["ptx"], file, lines, tile_helper_lines(spec.module, "partials_loop")[1]))
    return out


@contextlib.contextmanager
def _ptxas_log_printed(on: bool):
    """Inside the block, triton prints the log of its ``ptxas -v`` run (``knobs.nvidia.dump_ptxas_log``, triton 3.6
    and 3.8) when ``on``; the knob is restored afterwards."""
    nv = getattr(getattr(triton, "knobs", None), "nvidia", None)
    if not on or nv is None or not hasattr(nv, "dump_ptxas_log"):
        yield
        return
    before = nv.dump_ptxas_log
    nv.dump_ptxas_log = True
    try:
        yield
    finally:
        nv.dump_ptxas_log = before


def _run_ptxas(ptx: str, cc: int):
    """``(ok, text)``: whether ``ptxas -v`` compiled ``ptx`` for ``sm_<cc>``, and its report (or its error)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
        r = subprocess.run([ptxas_path(), "-v", f"--gpu-name={arch}", path, "-o", os.devnull],
                           capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


def tile_helper_lines(module: str, mark: str = "tile_access"):
    """``(file, source lines)`` of the tile-access helpers the module's kernels call (the names in it marked
    ``tile_access``: the functions that make every ``[B, C, H, W]`` tile load and store; or those of another
    ``mark``, such as ``partials_loop``), from the decorator to one line past the body: compilers differ by a line
    in where they place the load of a ``return tl.load(...)``."""
    import importlib
    import inspect
    helpers = [v for v in vars(importlib.import_module(module)).values() if getattr(v, mark, False)]
    lines, file = set(), None
    for h in helpers:
        fn = getattr(h, "fn", h)
        file = inspect.getsourcefile(fn)
        src, start = inspect.getsourcelines(fn)
        lines |= set(range(start, start + len(src) + 1))
    return file, lines


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


# ----------------------------------------------------------------------------------------------------
# what the emitted code predicts about speed (TTGIR layouts, PTX of the main loop), without a GPU
# ----------------------------------------------------------------------------------------------------
_LOC_DEF = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$", re.M)
_FILE_LINE = re.compile(r'"([^"]+)":(\d+):\d+')
_LAYOUT_DEF = re.compile(r"^(#[\w]+) = #ttg\.blocked<\{(.*)\}>\s*$", re.M)
_ACCESS_OPS = ("tt.load", "tt.store", "ttg.async_copy_global_to_local")


def _layout_fields(body: str) -> dict:
    out = {}
    for key in ("sizePerThread", "threadsPerWarp", "warpsPerCTA", "order"):
        m = re.search(key + r" = \[([\d, ]+)\]", body)
        out[key] = [int(v) for v in m.group(1).split(",")] if m else []
    return out


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one existing file (a location may name a file that no longer exists: a kernel
    cached from another checkout, a generated source)."""
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def tile_accesses(ttgir: str, file: str, lines: set) -> list:
    """Every global load / store / async copy of the TTGIR whose location chain passes through one of
    ``lines`` of ``file`` (the tile-access helpers): ``[{op, shape, layout fields}]``."""
    locs = dict(_LOC_DEF.findall(ttgir))
    layouts = {name: _layout_fields(body) for name, body in _LAYOUT_DEF.findall(ttgir)}

    def places(ref, seen):
        if ref in seen or ref not in locs:
            return set()
        seen.add(ref)
        body = locs[ref]
        found = {(f, int(n)) for f, n in _FILE_LINE.findall(body)}
        for sub in re.findall(r"#loc\d*", body):
            found |= places(sub, seen)
        return found

    out = []
    for line in ttgir.splitlines():
        code = line.strip()
        op = next((o for o in _ACCESS_OPS if re.search(r"(^|= |\s)" + re.escape(o) + r"\b", code)), None)
        m = re.search(r"loc\((#loc\d*)\)\s*$", code)
        if op is None or m is None:
            continue
        hit = {p for p in places(m.group(1), set()) if p[1] in lines and _same_file(p[0], file)}
        if not hit:
            continue
        t = re.search(r"tensor<([\dx]+)x!tt\.ptr<\w+>, (#\w+)>", code)
        if t is None:
            continue
        shape = [int(v) for v in t.group(1).split("x")]
        out.append(dict(op=op, shape=shape, **layouts.get(t.group(2), {})))
    return out


def lanes_along_points(access: dict, bw: int) -> bool:
    """A warp's lanes run along the contiguous W axis of a ``[channels, points]`` tile: the points axis is
    the fastest in the layout's order and one warp covers at least a whole ``bw``-wide row segment (or 32
    lanes' worth of it)."""
    spt, tpw, order = access.get("sizePerThread"), access.get("threadsPerWarp"), access.get("order")
    if not order:
        return False
    last = len(access["shape"]) - 1
    return order[0] == last and tpw[last] >= min(32, max(1, bw // max(1, spt[last])))


def _ptx_instructions(ptx: str):
    """``((source file, line) or None, instruction text, label or None)`` per PTX line of interest, in order
    (``.loc`` names the innermost place of inlined code, its file by a ``.file`` index)."""
    files = {int(n): os.path.realpath(p) for n, p in re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M)}
    cur = None
    for raw in ptx.splitlines():
        s = raw.strip()
        if s.split(None, 1)[:1] == [".loc"]:  # not ".local" (a local-memory depot); lines may be empty
            parts = s.split()
            cur = (files.get(int(parts[1])), int(parts[2].rstrip(","))) if len(parts) > 2 else None
            continue
        m = re.match(r"^(\$L__\w+):", s)
        if m:
            yield None, "", m.group(1)
            continue
        code = s.split("//")[0].strip()
        if not code or code[0] in ".{}" or not code.endswith(";") or code.startswith("//"):
            continue
        yield cur, code, None


def ptx_profile(ptx: str, tile_file: str, tile_lines: set, partial_lines: set = frozenset()) -> dict:
    """From the PTX: the kernel's instruction count (``instructions``); the loop that holds the most tile accesses
    (``tile_lines`` of ``tile_file``: the source lines of the tile-access helpers; the first of several, the main
    loop: a rare path's loop, such as the pool kernel's non-finite pass, comes after it), and in it the instruction
    count, FMAs, shared-memory loads (``ld.shared`` and the tensor-core dots' ``ldmatrix``), integer div/rem,
    cp.async; the byte widths of every tile access of the kernel (``ld.global`` / ``st.global`` /
    ``cp.async``); and ``partial_loops``, the instructions of the loops over chunk partials (loops with no tile
    access, most of whose located instructions lie on ``partial_lines`` of ``tile_file``: they run once per
    chunk)."""
    items = list(_ptx_instructions(ptx))
    labels = {lab: i for i, (_, _, lab) in enumerate(items) if lab}
    loops = []
    for i, (_, code, _) in enumerate(items):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", code)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))

    tile_file = os.path.realpath(tile_file)

    def is_tile_access(loc, code):
        return (loc is not None and loc[0] == tile_file and loc[1] in tile_lines
                and re.search(r"\b(ld\.global|st\.global|cp\.async\.(ca|cg))", code))

    widths = []
    for line, code, _ in items:
        if is_tile_access(line, code):
            op = code.split()[1] if code.startswith("@") else code.split()[0]
            cp = re.search(r"cp\.async\.\w+\.shared\.global[.\w]* \[[^\]]+\], \[[^\]]+\], (0x[0-9a-fA-F]+|\d+)", code)
            if cp:
                widths.append(int(cp.group(1), 0))
            else:
                vec = re.search(r"\.v(\d)\b", op)
                bits = re.search(r"\.[bfu](\d+)\b", op)
                widths.append((int(vec.group(1)) if vec else 1) * (int(bits.group(1)) // 8 if bits else 4))
    best, partial = None, 0
    for lo, hi in loops:
        body = [(line, code) for line, code, _ in items[lo:hi + 1] if code]
        n_tile = sum(1 for line, code in body if is_tile_access(line, code))
        if best is None or n_tile > best[0]:  # the first of the loops with the most (a rare path's comes later)
            best = (n_tile, lo, hi)
        located = [line for line, _ in body if line is not None]
        if (n_tile == 0 and located
                and 2 * sum(line[0] == tile_file and line[1] in partial_lines for line in located) > len(located)):
            partial += len(body)
    out = dict(tile_access_bytes=sorted(set(widths)), loop=None, partial_loops=partial,
               instructions=sum(1 for _, code, _ in items if code))
    if best is None or best[0] == 0:
        return out
    body = [code for _, code, _ in items[best[1]:best[2] + 1] if code]
    out["loop"] = dict(
        instructions=len(body),
        fma=sum(bool(re.match(r"(@!?%p\d+\s+)?fma\.", c)) for c in body),
        ld_shared=sum(bool(re.search(r"\b(ld\.shared|ldmatrix)", c)) for c in body),  # ldmatrix: the dots' loads
        int_divrem=sum(bool(re.search(r"\b(div|rem)\.(s|u)(32|64)\b", c)) for c in body),
        cp_async=sum(bool(re.search(r"\bcp\.async\.(ca|cg|bulk)", c)) for c in body),
        tile_accesses=best[0])
    return out
