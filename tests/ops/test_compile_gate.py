"""GPU compile gate, on the CPU: every kernel launch the op makes at the detection shapes (every arch of the
zoo, stages 1-4, 4/25/49 centres, fp32/bf16, both denominators, and the assignment maps) compiles ahead of
time for sm_80 and sm_90 without register spills, with a warp's lanes along W in every tile access and the
static speed targets held, under triton 3.8 and (small) 3.6. The interpreter, which runs the other kernel
tests, proves only the math: it accepts kernels that do not compile for any GPU."""
import os
import subprocess
import sys

from coc_det.backbone import ARCH_SETTINGS, PROPOSAL_OF_CENTRES
from coc_kernels import DENOMINATORS

from conftest import ROOT  # noqa: E402


#: triton 3.6, the GPU machines' version, installed beside the project's own by tools/setup_env.sh
TRITON_36 = os.environ.get("COC_TRITON36_DIR", os.path.join(ROOT, ".venv", "triton-3.6"))
#: what `make test` compiles (the whole sweep, fp16 and sm_100 too, is `python -m benchmarks.kernel_resources`, run
#: by hand after every kernel change): fp16 specialisations differ from bf16 ones only in the conversion after each
#: load. 16-bit ones are not fp32's twins: the pool kernel at 4 centres spilled with bf16 only (triton 3.6)
GATE_DTYPES = ("float32", "bfloat16")


def _run_gate(tmp_path, triton_dir=None, args=(), dtypes=GATE_DTYPES):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    if triton_dir:
        env["PYTHONPATH"] = os.pathsep.join([triton_dir] + [p for p in [env.get("PYTHONPATH")] if p])
    md = tmp_path / "resources.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources", "--md", str(md),
                        "--no-sm100", "--dtype", *dtypes, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    return md.read_text()


def _check_table(text, n_archs, dtypes=GATE_DTYPES):
    # the cases recorded are every (arch, stage, centres, dtype) x (assignment maps + each denominator)
    n_cases = n_archs * 4 * len(PROPOSAL_OF_CENTRES) * len(dtypes) * (1 + len(DENOMINATORS))
    assert f"covering {n_cases} cases" in text
    rows = [line for line in text.splitlines() if line.startswith("| _") and " BN=" in line]
    kernels = {row.split("|")[1].strip() for row in rows}
    assert kernels == {"_pool_kernel", "_assign_kernel", "_dispatch_kernel", "_bwd_do_kernel",
                       "_bwd_main_kernel", "_bwd_pool_kernel"}
    assert rows and all(row.rstrip().endswith("| yes |") for row in rows)
    for row in rows:  # "regs / spill bytes / shared" at sm_80 and sm_90
        cells = [c.strip() for c in row.split("|")]
        for cell in cells[4:6]:
            regs, spills, shared = (int(t) for t in cell.split("/"))
            assert spills == 0 and 0 < regs <= 255
        # static proxies (their per-kernel targets are checked by the script: a miss is not "yes"):
        # sm_90 programs / warps per multiprocessor, layout conversions inside loops, lanes along W
        programs, warps = (int(t) for t in cells[6].split("/"))
        assert programs >= 1 and warps == programs * int(cells[2].split(" w=")[1].split()[0]), row
        along, accesses = (int(t) for t in cells[8].split("/"))
        assert accesses > 0 and along == accesses, row
    return rows


def test_every_launch_compiles_for_sm80_sm90_without_spills(tmp_path):
    """Triton 3.8 (the project's): every arch of the zoo."""
    _check_table(_run_gate(tmp_path), len(ARCH_SETTINGS))


def test_launches_and_allocations_per_step_are_pinned():
    """Static proxy of host time (stages 2-4 are launch-bound): the fused op's launches and buffer
    allocations per call, recorded without running anything. Today: forward 3 launches / 10 buffers, backward
    3 / 8 (fp32 x), assignment maps 2 / 4. A change that adds launches or per-step allocations fails here
    and must say why (docs/performance.md, "Static proxies")."""
    import torch

    from coc_kernels import cluster_assignment, context_cluster
    from coc_kernels.ops import context_cluster as ops
    from coc_kernels.ops.context_cluster import host
    allocated = []
    real_empty = host.empty

    def counting_empty(shape, *args):
        allocated.append(tuple(shape))
        return real_empty(shape, *args)

    host.empty = counting_empty
    try:
        x = torch.empty(2, 64, 32, 48, requires_grad=True)
        v = torch.empty(2, 64, 32, 48, requires_grad=True)
        a, b = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        counts = {}
        with ops.record_launches(execute=False) as rec:
            y = context_cluster(x, v, a, b, heads=2, proposal=5, fold=4, impl="triton")
        counts["forward"] = (len(rec), len(allocated))
        allocated.clear()
        with ops.record_launches(execute=False) as rec:
            y.backward(torch.empty_like(y))
        counts["backward"] = (len(rec), len(allocated))
        allocated.clear()
        with ops.record_launches(execute=False) as rec:
            cluster_assignment(x, a, b, heads=2, proposal=5, fold=4, impl="triton")
        counts["assignment"] = (len(rec), len(allocated))
    finally:
        host.empty = real_empty
    assert counts == {"forward": (3, 10), "backward": (3, 8), "assignment": (2, 4)}


def test_ptx_profile_counts_the_tile_loop_by_hand():
    """The per-point proxies come from ``aot.ptx_profile``: on a hand-written PTX body, the loop with the tile
    accesses is found by its back edge, and its instructions, FMAs, shared loads (``ld.shared`` and the
    tensor-core dots' ``ldmatrix``), integer div/rem and ``cp.async`` are what a count by hand gives; access
    widths come from the vector suffix and cp.async's size. Tile accesses are those of the helpers' file: a kernel
    in another file has an access on the same line number, which is not one."""
    from coc_kernels.ops import aot
    ptx = "\n".join([
        ".loc 1 5 0",
        "mov.u32 %r1, 0;",  # before the loop: not counted
        "$L__BB0_1:",
        ".loc 1 10 0",  # a tile-access line
        "ld.global.v4.b32 {%r2, %r3, %r4, %r5}, [%rd1];",
        "cp.async.cg.shared.global [%r6], [%rd2], 16;",
        ".loc 2 10 0",  # the same line of the kernel's own file: not a tile access
        "st.global.b32 [%rd4], %r19;",
        ".loc 1 20 0",
        "fma.rn.f32 %f1, %f2, %f3, %f1;",
        "@%p1 fma.rn.f32 %f4, %f2, %f3, %f4;",
        "ld.shared.f32 %f5, [%r7];",
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r8, %r9, %r10, %r11}, [%r12];",
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f6, %f7, %f8, %f9}, {%r8, %r9, %r10, %r11}, "
        "{%r13, %r14}, {%f6, %f7, %f8, %f9};",
        "div.s32 %r15, %r16, %r17;",
        "rem.u32 %r18, %r16, %r17;",
        "@%p2 bra.uni $L__BB0_1;",
        ".loc 1 10 0",
        "st.global.v2.f32 [%rd3], {%f6, %f7};",  # after the loop: a tile access, not in the loop
        '.file 1 "/k/tiles.py"',
        '.file 2 "/k/fwd.py"',
    ])
    prof = aot.ptx_profile(ptx, "/k/tiles.py", {10})
    assert prof["loop"] == dict(instructions=11, fma=2, ld_shared=2, int_divrem=2, cp_async=1, tile_accesses=2)
    assert prof["tile_access_bytes"] == [8, 16]


def test_ptx_profile_takes_the_main_loop_before_a_longer_rare_one():
    """Two loops with as many tile accesses (the pool kernel's main loop and its rare non-finite pass, which holds
    the masks and counts besides): the profile is the first, the loop that runs, not the longer one after it."""
    from coc_kernels.ops import aot
    ptx = "\n".join([
        "$L__BB0_1:",
        ".loc 1 10 0",
        "cp.async.cg.shared.global [%r6], [%rd2], 8;",
        ".loc 1 20 0",
        "add.s32 %r1, %r1, 1;",
        "@%p1 bra.uni $L__BB0_1;",
        "$L__BB0_2:",
        ".loc 1 10 0",
        "ld.global.v2.b32 {%r2, %r3}, [%rd1];",
        ".loc 1 20 0",
        "setp.lt.f32 %p3, %f1, %f2;",
        "selp.b32 %r4, 1, 0, %p3;",
        "add.s32 %r5, %r5, %r4;",
        "@%p2 bra.uni $L__BB0_2;",
        '.file 1 "/k/tiles.py"',
    ])
    prof = aot.ptx_profile(ptx, "/k/tiles.py", {10})
    assert prof["loop"] == dict(instructions=3, fma=0, ld_shared=0, int_divrem=0, cp_async=1, tile_accesses=1)


def test_ptx_profile_counts_the_loops_over_chunk_partials():
    """A loop with no tile access whose located instructions lie mostly on the partial-sum helpers' lines (they run
    once per chunk) is counted in ``partial_loops``; the tile loop and a loop of other lines are not."""
    from coc_kernels.ops import aot
    ptx = "\n".join([
        "$L__BB0_1:",  # the partial sums: 3 of 4 located instructions on line 30
        ".loc 1 30 0",
        "ld.global.b32 %r1, [%rd1];",
        "add.f32 %f1, %f1, %f2;",
        "add.s32 %r2, %r2, 1;",
        ".loc 2 5 0",
        "@%p1 bra.uni $L__BB0_1;",
        "$L__BB0_2:",  # the tile loop
        ".loc 1 10 0",
        "ld.global.v2.b32 {%r3, %r4}, [%rd2];",
        ".loc 1 30 0",
        "add.f32 %f3, %f3, %f4;",
        "@%p2 bra.uni $L__BB0_2;",
        "$L__BB0_3:",  # another loop (half on line 30: not a majority)
        ".loc 1 30 0",
        "add.f32 %f5, %f5, %f6;",
        ".loc 2 7 0",
        "@%p3 bra.uni $L__BB0_3;",
        '.file 1 "/k/tiles.py"',
        '.file 2 "/k/fwd.py"',
    ])
    prof = aot.ptx_profile(ptx, "/k/tiles.py", {10}, {30})
    assert prof["partial_loops"] == 4
    assert prof["loop"]["instructions"] == 3
    assert aot.ptx_profile(ptx, "/k/tiles.py", {10})["partial_loops"] == 0


def test_ptx_profile_reads_a_kernel_with_a_local_memory_depot():
    """A ``.local`` declaration (a local-memory depot, as triton 3.6 emits for some 1-warp programs) is not a ``.loc``
    directive: the profile reads on (it crashed the gate's sweep before)."""
    from coc_kernels.ops import aot
    ptx = "\n".join([
        ".local .align 16 .b8 __local_depot0[80];",
        "",
        "$L__BB0_1:",
        ".loc 1 10 0",
        "ld.global.v2.b32 {%r3, %r4}, [%rd2];",
        "@%p2 bra.uni $L__BB0_1;",
        '.file 1 "/k/tiles.py"',
    ])
    assert aot.ptx_profile(ptx, "/k/tiles.py", {10})["loop"]["tile_accesses"] == 1


_CAP_SCRIPT = """
import torch
from coc_kernels import context_cluster
from coc_kernels.ops import aot
from coc_kernels.ops import context_cluster as ops
x = torch.randn(1, 64, 14, 14, requires_grad=True)
v = torch.randn(1, 64, 14, 14)
a, b = torch.ones(1), torch.zeros(1)
for cap in (0, 64):
    with ops.launch_policy(config_overrides={"bwd_main": {"maxnreg": cap}}), ops.record_launches(execute=False) as rec:
        context_cluster(x, v, a, b, heads=2, proposal=(7, 7), fold=1, impl="triton").sum().backward()
    spec = aot.spec_of(next(r for r in rec if r.kernel.fn.__name__ == "_bwd_main_kernel"))
    assert spec.maxnreg == cap and ("maxnreg=64" in spec.label()) == bool(cap)
    r = aot.compile_spec(spec, 90)
    print(cap, r["ok"], r["regs"])
"""


def test_a_register_cap_reaches_ptxas():
    """A configuration's ``maxnreg`` is compiled in (the gate's registers and occupancy are of the capped code):
    the main backward kernel at 49 centres takes more than 64 registers uncapped and at most 64 capped."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _CAP_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    (cap0, ok0, regs0), (cap, ok, regs) = [line.split() for line in r.stdout.split("\n") if line.strip()][-2:]
    assert (cap0, ok0, cap, ok) == ("0", "True", "64", "True")
    assert int(regs0) > 64 >= int(regs), (regs0, regs)


_LOG_SCRIPT = """
import contextlib, io, triton
import torch
from coc_kernels import context_cluster
from coc_kernels.ops import aot
from coc_kernels.ops import context_cluster as ops
x = torch.randn(1, 64, 14, 14, requires_grad=True)
v = torch.randn(1, 64, 14, 14)
a, b = torch.ones(1), torch.zeros(1)
with ops.record_launches(execute=False) as rec:
    context_cluster(x, v, a, b, heads=2, proposal=(7, 7), fold=1, impl="triton").sum().backward()
spec = aot.spec_of(next(r for r in rec if r.kernel.fn.__name__ == "_bwd_main_kernel"))
calls = []
plain = aot._run_ptxas
aot._run_ptxas = lambda ptx, cc: calls.append(cc) or plain(ptx, cc)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    from_log = aot.compile_spec(spec, 90)
aot._ptxas_log_printed = lambda on: contextlib.nullcontext()  # a triton that prints no log
rerun = aot.compile_spec(spec, 90)
print(len(out.getvalue()), calls, triton.knobs.nvidia.dump_ptxas_log)
print(*[from_log[k] for k in ("ok", "regs", "spill_stores", "spill_loads")])
print(*[rerun[k] for k in ("ok", "regs", "spill_stores", "spill_loads")])
"""


def test_the_gate_reads_the_report_of_tritons_own_ptxas_run():
    """``aot.compile_spec`` takes registers and spills from the ``ptxas -v`` log of the cubin triton built (one
    ptxas run per compile, with triton's own flags), printing nothing and leaving triton's knob as it was; where
    no log comes (a triton that does not print it) it runs ptxas on the PTX itself, with the same figures."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DUMP_PTXAS_LOG")}
    env["TRITON_ALWAYS_COMPILE"] = "1"  # as the gate runs: a kernel from triton's cache runs no ptxas, so no log
    r = subprocess.run([sys.executable, "-c", _LOG_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    printed, from_log, rerun = [line for line in r.stdout.split("\n") if line.strip()][-3:]
    assert printed == "0 [90] False"  # nothing printed; ptxas run by hand once, for the rerun without a log
    assert from_log == rerun and from_log.split()[0] == "True" and int(from_log.split()[1]) > 0, (from_log, rerun)


def test_tile_accesses_are_found_by_file_and_line_even_where_a_location_names_a_missing_file(tmp_path):
    """``aot.tile_accesses`` counts a load whose location chain passes through a helper line of the helpers' file;
    a location naming a file that no longer exists (a kernel cached from another checkout) is not one, and is no
    crash (it raised FileNotFoundError from ``os.path.samefile``)."""
    from coc_kernels.ops import aot
    real = tmp_path / "tiles.py"
    real.write_text("\n" * 20)
    ttgir = "\n".join([
        "#blocked = #ttg.blocked<{sizePerThread = [1, 2], threadsPerWarp = [4, 8], warpsPerCTA = [4, 1], "
        "order = [1, 0]}>",
        '#loc1 = loc("/no/such/checkout/tiles.py":10:5)',
        f'#loc2 = loc("{real}":10:5)',
        f'#loc3 = loc("{real}":3:1)',
        "%1 = tt.load %0 : tensor<32x16x!tt.ptr<f32>, #blocked> loc(#loc1)",
        "%2 = tt.load %0 : tensor<32x16x!tt.ptr<f32>, #blocked> loc(#loc2)",
        "%3 = tt.load %0 : tensor<32x16x!tt.ptr<f32>, #blocked> loc(#loc3)",
    ])
    got = aot.tile_accesses(ttgir, str(real), {10})
    assert [(a["op"], a["shape"]) for a in got] == [("tt.load", [32, 16])]
    assert got[0]["order"] == [1, 0]


def test_the_gate_notices_kernel_sources_changed_during_its_run(tmp_path):
    """The gate profiles compiled code by source lines it reads from the files: ``choices.kernel_sources`` (read at
    the start and compared at the end of a run; also the tuning key's code version) changes when one of the files
    that make the kernels does."""
    from coc_kernels.ops.context_cluster import choices
    for name in choices.KERNEL_SOURCES:
        (tmp_path / name).write_text(f"# {name}\n")
    before = choices.kernel_sources(str(tmp_path))
    assert {os.path.basename(f) for f in before} == set(choices.KERNEL_SOURCES)
    assert choices.kernel_sources(str(tmp_path)) == before
    (tmp_path / "tiles.py").write_text("Y = 2\n")
    after = choices.kernel_sources(str(tmp_path))
    assert [os.path.basename(f) for f in before if after[f] != before[f]] == ["tiles.py"]
    # the kernels, their helpers and the tables they read
    assert {"tiles.py", "fwd.py", "bwd.py", "dots.py", "membership.py"} <= set(choices.KERNEL_SOURCES)
