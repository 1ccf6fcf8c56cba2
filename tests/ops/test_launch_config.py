"""Launch configuration of the fused op: chunking, the per-shape geometry, recorded keyword launches, tile and
vector widths, the launch policy."""
import pytest
import torch

from coc_kernels import context_cluster
from coc_kernels.ops import context_cluster as ops
from op_helpers import assert_matches_dense, make


@pytest.mark.parametrize("target", [1, 4, 10 ** 6], ids=["one_chunk", "some_chunks", "max_chunks"])
def test_chunked_groups(target):
    """A group's points split over several programs (few groups) gives the dense result: the per-chunk
    partials and their fixed-order sums (centres, aggregates, do, d c_hat, dalpha/dbeta) are complete."""
    x, v, a, b = make(1, 2, 16, 16, 20, 26, alpha=1.3, beta=-0.2)  # 2 groups of N = 520 points
    with ops.launch_policy(target_programs=target):
        q = ops.Geometry(x, v, 2, 3, 2, 1, 1)
        # 6 centres chunk into equal rows: 20 region rows as 1 x 20, 2 x 10, and at most one chunk per 2 rows (the
        # tallest tile here, q.row_unit), so 10 of 2 rows
        assert q.row_unit == 2
        assert (q.NC, q.rpc) == {1: (1, 20), 4: (2, 10), 10 ** 6: (10, 2)}[target]
        assert_matches_dense("triton", x, v, a, b, heads=2, proposal=(3, 2), fold=1, denominator="similarity")


@pytest.mark.parametrize("centres, target, expected", [
    (4, None, (4, 7)), (25, None, (2, 13)), (49, None, (2, 16)),  # the shipped targets, 2048 / 1024 / 1024
    (4, 1024, (2, 13)), (49, 4096, (7, 4)), (25, 2048, (4, 7)),  # the policy's target, the class's kind of chunk
])
def test_shipped_chunking_by_centre_class(centres, target, expected):
    """Chunks per centre class (``CHUNKING``): 512 groups of 25 region rows with 4-row tiles the tallest, as the
    small model's stage 1 on 800x1344. 4 centres aim for 2048 programs in equal chunks (ceil(25 / 4) = 7 rows:
    7, 7, 7, 4), 25 centres for 1024 (13 + 12), 49 centres for 1024 in whole multiples of the 4-row tiles (16 + 9,
    the longer chunk first); a policy's target replaces the class's and keeps its kind of chunk."""
    with ops.launch_policy(target_programs=target):
        assert ops.chunking(512, 25, 4, centres) == expected


@pytest.mark.parametrize("groups, centres, expected", [
    (16, 25, (25, 1)), (24, 25, (25, 1)), (64, 25, (13, 2)),  # single rows: 400 / 600 / 832 programs
    (16, 4, (13, 2)), (16, 49, (13, 2)),
    (128, 25, (7, 4)), (128, 4, (7, 4)), (64, 49, (7, 4)),  # 896 and 448 programs: the tiles' rows
])
def test_few_groups_take_single_row_chunks(groups, centres, expected):
    """The later stages' few groups (small model, 25 region rows, 4-row tiles the tallest): where chunks of whole
    tile rows leave a launch short of its target and below the class's ``fine_below`` programs (512 / 1024 / 256
    at 4 / 25 / 49 centres), the chunks are of single rows, as many as the target wants up to the class's
    ``max_chunks`` (16 at 4 and 49 centres: ceil(25 / 16) = 2 rows, 13 chunks; 32 at 25 centres, whose whole waves
    pick 25 chunks of one row for stage 4's 16 or 24 groups, one wave, and keep 13 of 2 rows for stage 3's 64, where
    25 would take two waves); above it, 7 chunks of 4 rows (25 rows, at most one chunk per 4)."""
    assert ops.chunking(groups, 25, 4, centres) == expected


def test_chunks_per_group_stay_within_each_class_limit():
    """Single-row chunks of a tall region stop at the class's ``max_chunks`` (ceil(rh / limit) rows each), and a
    class limit above MAX_CHUNKS is refused."""
    for centres, limit in zip((4, 25, 49), ops.CHUNKING.max_chunks):
        nc, rows = ops.chunking(1, 200, 1, centres)
        assert nc <= limit <= ops.MAX_CHUNKS and rows == -(-200 // limit), (centres, nc, rows)
    with pytest.raises(ValueError, match="max_chunks"):
        ops.ChunkConfig(programs=(1, 1, 1), balanced=(True,) * 3, max_chunks=(16, ops.MAX_CHUNKS + 1, 16))


@pytest.mark.parametrize("groups, expected", [
    (512, (2, 13)), (768, (5, 5)), (128, (7, 4)), (192, (5, 5)), (96, (9, 3)),
])
def test_25_centres_chunk_in_whole_waves(groups, expected):
    """25 centres pick the chunk count whose waves of 1,056 programs (8 per SM on 132) times rows per chunk is
    least, 25 region rows and 4-row tiles (at most 7 chunks, or single rows where fine_below allows 16):
    small stage 1 (512 groups): 2 chunks, 1 wave x 13 rows (3 chunks: 2 x 9, 4: 2 x 7); medium (768): 5 chunks,
    ceil(3840 / 1056) = 4 waves x 5 rows = 20 (2: 2 x 13, 4: 3 x 7 = 21, 7: 6 x 4); stage 2 (128 / 192 groups)
    8 -> 7 chunks of 4 rows (1 x 4) and 5 of 5 (6: 2 waves x 5); medium stage 3 (96, single rows) 9 of 3 (11 ties
    at 1 x 3: the fewer). The target's rule gives 2 chunks for medium (1024 / 768 groups)."""
    assert ops.CHUNKING.wave[1] == 8 * 132
    assert ops.chunking(groups, 25, 4, 25) == expected


def test_single_row_chunks_under_two_row_tiles():
    """Chunks of one row where some kernels' tiles hold two: those tiles mask the row past their chunk, and the
    result is the dense one."""
    x, v, a, b = make(1, 2, 16, 16, 12, 26, alpha=1.3, beta=-0.2)  # 2 groups of 12 x 26 points
    q = ops.Geometry(x, v, 2, 3, 2, 1, 1)
    assert q.row_unit == 2 and (q.NC, q.rpc) == (12, 1)
    # a region no taller than its tallest tile keeps one chunk (8 groups of 4 rows, 16-row tiles)
    assert ops.chunking(8, 4, 16, 4) == (1, 4)
    assert_matches_dense("triton", x, v, a, b, heads=2, proposal=(3, 2), fold=1, denominator="similarity")


def test_the_launch_geometry_is_made_once_per_shape_and_policy():
    """The per-shape geometry is reused (host time), and never across launch policies or shapes: a chunking
    changed by the policy shows in the next call's launches."""
    x, v, a, b = make(1, 2, 16, 16, 20, 26, device="cpu")
    nc = {}
    for target in (1, 10 ** 6, 1):
        with ops.launch_policy(target_programs=target):
            q = ops.geometry(x, v, 2, 3, 2, 1, 1)
            assert ops.geometry(x, v, 2, 3, 2, 1, 1) is q
            assert ops.geometry(x[:, :, :, :24], v[:, :, :, :24], 2, 3, 2, 1, 1) is not q
            with ops.record_launches(execute=False) as rec:
                context_cluster(x, v, a, b, heads=2, proposal=(3, 2), fold=1, impl="triton")
            nc.setdefault(target, set()).update(launch.args["NC"] for launch in rec)
    assert nc[1] == {1} and min(nc[10 ** 6]) > 1
    with pytest.raises(AttributeError, match="fixed once made"):
        q.NC = 3


def test_launches_are_recorded_without_running():
    """record_launches(execute=False) sees the forward's and backward's launches and runs none of them."""
    x, v, a, b = make(1, 2, 16, 16, 8, 8, device="cpu")
    x.requires_grad_(True)
    with ops.record_launches(execute=False) as rec:
        y = context_cluster(x, v, a, b, heads=2, proposal=2, fold=2, impl="triton")
        y.backward(torch.ones_like(y))
    names = [launch.kernel.__name__ for launch in rec]
    assert names == ["_pool_kernel", "_assign_kernel", "_dispatch_kernel",
                     "_bwd_do_kernel", "_bwd_main_kernel", "_bwd_pool_kernel"]
    assert all(launch.grid == (2 * 2 * 2, 1) for launch in rec)


def test_every_launch_names_its_arguments():
    """Kernels are launched by parameter name: the recorded launches give every runtime parameter and every
    constexpr of their kernel, by name (geometry from an independent source: the recorded tensors and sizes),
    and a launch that leaves one out or adds one is refused before anything runs."""
    x, v, a, b = make(1, 2, 16, 16, 8, 12, device="cpu")
    with ops.record_launches(execute=False) as rec:
        context_cluster(x, v, a, b, heads=2, proposal=(2, 3), fold=(2, 3), impl="triton")
    for launch in rec:
        runtime, const = ops.kernel_params(launch.kernel)
        assert set(launch.args) == set(runtime) and set(launch.constexprs) == set(const)
        vec = launch.constexprs["VEC"]
        region = {k: launch.args[k] for k in ("H", "fh", "fw", "rh")}
        assert region == dict(H=8, fh=2, fw=3, rh=4), launch.kernel.__name__
        assert (launch.args["W_v"] * vec, launch.args["rw_v"] * vec) == (12, 4), launch.kernel.__name__
        if "ph" in launch.args:
            assert (launch.args["ph"], launch.args["pw"], launch.args["M"]) == (2, 3, 6)
    pool = rec[0]
    with ops.record_launches(execute=False):
        with pytest.raises(TypeError, match=r"missing \['pw'\].*unknown \['pww'\]"):
            args = {("pww" if k == "pw" else k): val for k, val in pool.args.items()}
            ops.launch(pool.kernel, pool.grid, args, pool.constexprs, dict(num_warps=4, num_stages=1))


def test_tile_and_vector_widths():
    """Tiles of BW columns with the fewest masked columns (widest on a tie, at least 8 where the region is that
    wide), and the vector width VEC dividing the region width, the image width and BW; counted by hand."""
    # rw=42: BW 8 and 16 both take 48 columns, 32 and 64 take 64 -> 16; rw=7 -> 8; rw=26: 8/16/32 all take 32
    assert [ops.tile_width(rw, 64) for rw in (42, 7, 26, 2, 336, 3)] == [16, 8, 32, 2, 16, 4]
    assert ops.tile_width(42, 16) == 16 and ops.tile_width(26, 16) == 16  # never wider than the tile
    # (rw, W, BW): 42 = 2*21, 336 = 16*21, 7 odd, 12 = 4*3
    assert [ops.vector_width(*c) for c in ((42, 336, 16), (336, 336, 16), (7, 56, 8), (12, 24, 16), (2, 8, 2))] \
        == [2, 4, 1, 4, 2]
    # at most max_vec: 336 allows 4, capped at 2 and 1
    assert [ops.vector_width(336, 336, 16, m) for m in (4, 2, 1)] == [4, 2, 1]


@pytest.mark.parametrize("centres, dtype, expected", [
    (2, torch.float32, {"_pool_kernel": 4, "_dispatch_kernel": 4, "_bwd_do_kernel": 4, "_bwd_main_kernel": 1}),
    (5, torch.float32, {"_pool_kernel": 4, "_dispatch_kernel": 4, "_bwd_do_kernel": 4, "_bwd_main_kernel": 2}),
    (5, torch.bfloat16, {"_pool_kernel": 4, "_dispatch_kernel": 4, "_bwd_do_kernel": 4, "_bwd_main_kernel": 2}),
    (5, torch.float16, {"_pool_kernel": 4, "_dispatch_kernel": 4, "_bwd_do_kernel": 4, "_bwd_main_kernel": 1}),
    (7, torch.float32, {"_pool_kernel": 2, "_dispatch_kernel": 4, "_bwd_do_kernel": 4, "_bwd_main_kernel": 1})])
@pytest.mark.parametrize("width", [32, 8])
def test_a_kernel_vector_width_is_capped_by_its_class(centres, dtype, expected, width):
    """Regions 32 columns wide in a 32-wide image allow 4-element accesses (BW 16); the main backward takes 1-element
    ones at 4 and 49 centres (its loop is unpipelined), 2 at 25 but 1 for fp16 (``max_vec_fp16``: with 2, triton
    3.8's ptxas spills), and pool at most 2 at 49 (``KernelConfig.max_vec``), the others 4. Regions 8 wide (tiles
    of 8 columns, at most 4-element accesses either way): the same, except fp16 at 25 centres keeps 2 there
    (with 1, triton 3.6 spills). Counted by hand from the shipped table."""
    if width == 8 and dtype == torch.float16:
        expected = dict(expected, _bwd_main_kernel=2)
    x, v, a, b = make(1, 1, 32, 32, 12, width, device="cpu", dtype=dtype)
    x.requires_grad_(True)
    with ops.record_launches(execute=False) as rec:
        y = context_cluster(x, v, a, b, heads=1, proposal=centres, fold=1, impl="triton")
        y.backward(torch.ones_like(y))
    vec = {launch.kernel.__name__: launch.constexprs["VEC"] for launch in rec}
    assert {k: vec[k] for k in expected} == expected
    assert {launch.kernel.__name__: launch.args["W_v"] for launch in rec}["_bwd_main_kernel"] == width // expected[
        "_bwd_main_kernel"]


def test_launch_policy_is_scoped_and_checked():
    """launch_policy changes the policy for its block only, also when the block raises; bad values are refused."""
    before = ops.policy()
    with pytest.raises(RuntimeError, match="inside"):
        with ops.launch_policy(target_programs=5, partial_block=16):
            assert ops.policy().partial_block == 16 and ops.chunking(1, 10, 1, 25)[0] == 5
            raise RuntimeError("inside")
    assert ops.policy() is before and ops.chunking(1, 10, 1, 25)[0] == 10
    for bad in (dict(partial_block=12), dict(target_programs=0), dict(precision="tf16")):
        with pytest.raises(ValueError):
            with ops.launch_policy(**bad):
                pass
    assert ops.policy() is before


def test_a_register_cap_belongs_to_the_settings_it_was_chosen_for(monkeypatch):
    """``maxnreg`` of a shipped configuration reaches the launch (recorded, and in the compile gate's spec); an
    override or a tuning choice that changes the tile, warps or pipelining drops it (it was chosen for those), one
    that sets it keeps its own; out-of-range caps are refused."""
    from coc_kernels.ops.context_cluster import choices, config
    row = config.KernelConfig(BLOCK_N=(16, 16, 32), num_warps=(4, 8, 8), STAGES=(1, 1, 1), maxnreg=(0, 0, 128))
    monkeypatch.setitem(config.KERNEL_CONFIGS, "bwd_main", row)
    assert ops.kernel_config("bwd_main", 49, 32, 32)["maxnreg"] == 128
    assert ops.kernel_config("bwd_main", 25, 32, 32)["maxnreg"] == 0
    with ops.launch_policy(config_overrides={"bwd_main": {"num_warps": 4}}):
        assert ops.kernel_config("bwd_main", 49, 32, 32)["maxnreg"] == 0
    with ops.launch_policy(config_overrides={"bwd_main": {"num_warps": 8}}):  # the same settings: kept
        assert ops.kernel_config("bwd_main", 49, 32, 32)["maxnreg"] == 128
    with ops.launch_policy(config_overrides={"bwd_main": {"num_warps": 4, "maxnreg": 96}}):
        assert ops.kernel_config("bwd_main", 49, 32, 32)["maxnreg"] == 96
    base = ops.kernel_config("bwd_main", 49, 32, 32)
    assert config.with_settings(base, dict(BLOCK_N=16, num_warps=8, STAGES=1))["maxnreg"] == 0
    assert config.with_settings(base, dict(BLOCK_N=32, num_warps=8, STAGES=1))["maxnreg"] == 128
    assert choices.with_settings is config.with_settings  # the tuner's choices go through the same rule
    for bad in (16, 256, -1):
        with pytest.raises(ValueError, match="maxnreg"):
            with ops.launch_policy(config_overrides={"bwd_main": {"maxnreg": bad}}):
                pass

    x, v, a, b = make(1, 2, 16, 16, 14, 14, device="cpu")
    x.requires_grad_()
    with ops.record_launches(execute=False) as rec:
        y = context_cluster(x, v, a, b, heads=2, proposal=(7, 7), fold=1, impl="triton")
        y.backward(torch.ones_like(y))
    caps = {r.kernel.fn.__name__: r.maxnreg for r in rec}
    assert ops.KERNEL_CONFIGS["pool"].at(64)["maxnreg"] == 0  # pool ships no cap at 49 centres
    assert caps["_bwd_main_kernel"] == 128 and caps["_pool_kernel"] == 0
    from coc_kernels.ops.context_cluster.launch import launch_options
    opts = {r.kernel.fn.__name__: launch_options(r) for r in rec}  # what the launch gives triton
    assert opts["_bwd_main_kernel"] == dict(num_warps=8, num_stages=1, maxnreg=128)
    assert "maxnreg" not in opts["_pool_kernel"]
    # what the compile gate builds from it: tests/ops/test_compile_gate.py::test_a_register_cap_reaches_ptxas


_SWEEP_SCRIPT = """
import dataclasses, json
from benchmarks import sweep_chunking
from coc_kernels.ops.context_cluster import config
shipped = config.CHUNKING
one = sweep_chunking._launches(["small"], [25], dataclasses.replace(shipped, programs=(1, 1, 1), wave=(0, 0, 0)))
again = sweep_chunking._launches(["small"], [25])
print(json.dumps(dict(one=sorted({len(t) for made in one.values() for _, t, _, _ in made}),
                      again=sorted({len(t) for _, t, _, _ in again["small s1 25c float32 similarity"]}),
                      restored=config.CHUNKING is shipped)))
"""


def test_the_chunking_sweep_records_each_candidate_and_restores_the_shipped_one():
    """``benchmarks/sweep_chunking.py`` estimates each candidate on launches recorded under it: a candidate of one
    program per group gives every launch one chunk, the shipped chunking two at small stage 1 (512 groups, 25
    rows), and the shipped table is back afterwards. (Recorded specs need the compiler's kernels: a subprocess
    without the interpreter; nothing compiles or runs.)"""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _SWEEP_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == dict(one=[1], again=[2], restored=True)
