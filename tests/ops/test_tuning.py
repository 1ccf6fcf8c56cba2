"""Launch tuning (coc_kernels/ops/context_cluster/tuning.py) without a GPU: the kernels run in the interpreter on
the CPU (the tuner's device list widened for the test), candidates are timed by an injected timer, and every
candidate's outputs are checked against the memory-light torch path as on a GPU."""
import json
import os
import warnings

import pytest
import torch

from coc_kernels import cluster_assignment, context_cluster
from coc_kernels.ops import context_cluster as ops
from coc_kernels.ops.context_cluster import choices, host, tuning

KW = dict(heads=2, proposal=2, fold=1)
#: the shipped points per tile at KW's 4 centres (centre class 16), from the one table of launch configurations
SHIPPED = {k: ops.KERNEL_CONFIGS[k].at(16)["BLOCK_N"] for k in ("pool", "assign_only")}
#: a point of the tests' tuning space (16, 32) that the pool kernel does not ship
OTHER = 32 if SHIPPED["pool"] == 16 else 16


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    monkeypatch.setenv("COC_TUNING", "1")
    monkeypatch.setenv("COC_TUNING_CACHE", str(tmp_path / "cache" / "tuning.json"))
    monkeypatch.delenv("COC_TUNING_PINNED", raising=False)
    monkeypatch.setattr(tuning, "DEVICES", ("cpu",))
    # the shipped configuration, then two more per kernel
    monkeypatch.setattr(tuning, "TUNING_SPACE", dict(BLOCK_N=(16, 32), num_warps=(4,), STAGES=(1,)))
    tuning.clear()
    ops.clear_geometries()
    with ops.launch_policy(tuning=True):  # the suite's policy has it off (conftest)
        yield tuning
    tuning.clear()
    ops.clear_geometries()


def inputs(H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 32, H, W, generator=g), torch.ones(1), torch.zeros(1)


class Timer:
    """ms per (kernel, BLOCK_N); records what it timed."""

    def __init__(self, ms):
        self.ms, self.calls = ms, []

    def __call__(self, kernel, cand, launch):
        self.calls.append((kernel, cand["BLOCK_N"]))
        return self.ms(kernel, cand["BLOCK_N"])


def launched(fn):
    """``{kernel function name: BLOCK_N}`` of the launches ``fn`` makes."""
    with ops.record_launches() as rec:
        fn()
    return {r.kernel.fn.__name__: r.constexprs["BLOCK_N"] for r in rec}


def test_the_fastest_checked_candidate_wins_and_is_used(tuner):
    x, a, b = inputs()
    timer = Timer(lambda k, bn: {16: 1.0, 32: 0.5}.get(bn, 2.0) if k == "pool" else {16: 0.7}.get(bn, 1.0))
    with tuning.timer(timer):
        got = cluster_assignment(x, a, b, impl="triton", **KW)
    assert sorted(set(timer.calls)) == [("assign_only", 16), ("assign_only", 32), ("assign_only", 64),
                                        ("pool", 16), ("pool", 32)]
    table = {e[0]["kernel"]: e[1] for e in tuning.report()}
    assert table["pool"]["choice"]["BLOCK_N"] == 32 and table["assign_only"]["choice"]["BLOCK_N"] == 16
    assert all(c["outcome"] == "ok" for e in table.values() for c in e["candidates"])
    # the next call launches the choices, and the op still equals the reference
    assert launched(lambda: cluster_assignment(x, a, b, impl="triton", **KW)) == {"_pool_kernel": 32,
                                                                                  "_assign_kernel": 16}
    torch.testing.assert_close(got, cluster_assignment(x, a, b, impl="light", **KW), rtol=0, atol=0)
    # the cache holds every candidate's time and outcome
    cache = json.load(open(tuning.cache_path()))["entries"]
    assert {json.loads(k)["kernel"] for k in cache} == {"pool", "assign_only"}
    assert all(c["ms"] is not None for e in cache.values() for c in e["candidates"])


def test_within_the_noise_the_first_declared_wins():
    rows = [dict(config="shipped", ms=1.00, outcome="ok"), dict(config="b", ms=0.98, outcome="ok"),
            dict(config="c", ms=0.975, outcome="ok")]
    assert tuning.choose(rows) == "shipped"  # both within 3 % of 0.975
    rows[0]["ms"] = 1.01
    assert tuning.choose(rows) == "b"  # shipped 3.6 % slower than c
    rows[1]["outcome"] = "wrong: output 0"
    assert tuning.choose(rows) == "c"
    assert tuning.choose([dict(config="shipped", ms=None, outcome="raised: x")]) == "shipped"


def _sabotage(monkeypatch, kernel, block_n, how):
    real = host.launch

    def launch(k, grid, args, constexprs, cfg):
        if k.fn.__name__ == kernel and constexprs["BLOCK_N"] == block_n:
            if how == "raise":
                raise RuntimeError("out of resources: shared memory")
            args = dict(args, rh=args["rh"] - 1)  # skips the last row of tiles of every region
        return real(k, grid, args, constexprs, cfg)
    monkeypatch.setattr(host, "launch", launch)


@pytest.mark.parametrize("how", ["wrong", "raise"])
def test_a_wrong_or_raising_candidate_is_dropped_even_when_fastest(tuner, monkeypatch, how):
    _sabotage(monkeypatch, "_pool_kernel", OTHER, how)  # not the shipped tiles, which the assign_only runs use
    x, a, b = inputs()
    timer = Timer(lambda k, bn: 0.1 if bn == OTHER else 1.0)
    with tuning.timer(timer), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cluster_assignment(x, a, b, impl="triton", **KW)
    table = {e[0]["kernel"]: e[1] for e in tuning.report()}
    pool = table["pool"]
    bad = [c for c in pool["candidates"] if c["config"]["BLOCK_N"] == OTHER]
    assert bad[0]["outcome"].startswith("wrong" if how == "wrong" else "raised"), bad
    assert pool["choice"]["BLOCK_N"] != OTHER and table["assign_only"]["choice"]["BLOCK_N"] == OTHER
    assert ("pool", OTHER) not in timer.calls
    msgs = [str(m.message) for m in w if "dropped" in str(m.message)]
    assert len(msgs) == 1 and "pool candidate" in msgs[0] and f"'BLOCK_N': {OTHER}" in msgs[0]


def test_the_cache_round_trip_and_what_invalidates_it(tuner, monkeypatch):
    """Choices come back from the file in a new process; another image size is the same key; another kernel
    source is not."""
    x, a, b = inputs()
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 32 else 1.0)):
        cluster_assignment(x, a, b, impl="triton", **KW)
    tuning.clear()  # a new process: the file only

    def never(*_):
        raise AssertionError("timed again")
    with tuning.timer(never):
        assert launched(lambda: cluster_assignment(x, a, b, impl="triton", **KW)) == {"_pool_kernel": 32,
                                                                                      "_assign_kernel": 32}
        # another image size is the same key (never H or W)
        cluster_assignment(*inputs(H=16, W=24), impl="triton", **KW)
    # a changed kernel source is another key: tuned again
    timer = Timer(lambda k, bn: 1.0)
    monkeypatch.setattr(choices, "code_version", lambda: "changed")
    tuning.clear()
    with tuning.timer(timer):
        cluster_assignment(x, a, b, impl="triton", **KW)
    assert timer.calls
    entries = json.load(open(tuning.cache_path()))["entries"]
    assert sorted(json.loads(k)["code"] != "changed" for k in entries) == [False, False, True, True]


def test_the_cache_is_written_atomically(tuner, monkeypatch):
    path = tuning.cache_path()
    tuning.write_cache({"k": dict(choice=dict(BLOCK_N=32, num_warps=4, STAGES=1))})
    before = open(path).read()

    def broken_dump(obj, f, **kw):
        f.write('{"format": 1, "entr')
        raise OSError("disk full")
    monkeypatch.setattr(choices.json, "dump", broken_dump)
    with pytest.raises(OSError):
        tuning.write_cache({"k2": dict(choice=dict(BLOCK_N=16, num_warps=4, STAGES=1))})
    assert open(path).read() == before and os.listdir(os.path.dirname(path)) == ["tuning.json"]


def test_a_pinned_file_is_used_and_never_tuned(tuner, monkeypatch, tmp_path):
    x, a, b = inputs()
    q = ops.geometry(x, None, 2, 2, 2, 1, 1)
    pinned = {tuning.key(n, q): dict(choice=dict(BLOCK_N=OTHER, num_warps=4, STAGES=1))
              for n in ("pool", "assign_only")}
    (tmp_path / "pinned.json").write_text(json.dumps(dict(format=1, entries=pinned)))
    monkeypatch.setenv("COC_TUNING_PINNED", str(tmp_path / "pinned.json"))

    def never(*_):
        raise AssertionError("timed a pinned key")
    with tuning.timer(never):
        assert launched(lambda: cluster_assignment(x, a, b, impl="triton", **KW)) == {"_pool_kernel": OTHER,
                                                                                      "_assign_kernel": OTHER}
    assert not os.path.exists(tuning.cache_path())


def test_switched_off_the_shipped_configurations_run(tuner, monkeypatch):
    x, a, b = inputs()
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 32 else 1.0)):
        cluster_assignment(x, a, b, impl="triton", **KW)  # choices held

    def never(*_):
        raise AssertionError("tuned while off")
    with tuning.timer(never), ops.launch_policy(tuning=False):
        assert launched(lambda: cluster_assignment(x, a, b, impl="triton", **KW)) == {
            "_pool_kernel": SHIPPED["pool"], "_assign_kernel": SHIPPED["assign_only"]}
    for env, want in (("0", False), ("1", True), ("", True)):
        monkeypatch.setenv("COC_TUNING", env)
        assert ops.LaunchPolicy.from_env().tuning is want
    monkeypatch.setenv("COC_TUNING", "yes")
    with pytest.raises(ValueError, match="COC_TUNING must be 0"):
        ops.LaunchPolicy.from_env()


@pytest.mark.parametrize("guard", ["compiling", "capturing", "deterministic"])
def test_no_tuning_where_it_cannot_time(tuner, monkeypatch, guard):
    x, a, b = inputs()
    if guard == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    elif guard == "capturing":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    else:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)

    def never(*_):
        raise AssertionError("tuned under a guard")
    with tuning.timer(never), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(2):
            assert launched(lambda: cluster_assignment(x, a, b, impl="triton", **KW)) == {
                "_pool_kernel": SHIPPED["pool"], "_assign_kernel": SHIPPED["assign_only"]}
    msgs = [str(m.message) for m in w if "no launch tuning" in str(m.message)]
    assert len(msgs) == 1, msgs
    assert {"compiling": "torch.compile", "capturing": "CUDA graph",
            "deterministic": "deterministic"}[guard] in msgs[0]


def _rank(rank, cache_dir, out_dir, port):
    import datetime
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), COC_TUNING="1",
                      COC_TUNING_CACHE=os.path.join(cache_dir, f"rank{rank}.json"))
    # a rank that skipped a broadcast would leave the other waiting: fail in a minute instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    from coc_kernels import cluster_assignment as ca
    from coc_kernels.ops.context_cluster import tuning as t
    t.DEVICES = ("cpu",)
    t.TUNING_SPACE = dict(BLOCK_N=(16, 32), num_warps=(4,), STAGES=(1,))
    calls = []

    def timer(kernel, cand, launch):  # each rank would choose otherwise
        calls.append(kernel)
        return 0.5 if cand["BLOCK_N"] == (16 if rank == 0 else 32) else 1.0
    x, a, b = inputs(seed=rank)  # ranks see different images of one shape class
    with t.timer(timer):
        ca(x, a, b, impl="triton", **KW)
        # a second shape class, which only rank 0's cache file holds
        ca(torch.randn(1, 32, 10, 10), a, b, impl="triton", heads=2, proposal=5, fold=1)
    choice = {(e[0]["kernel"], e[0]["centres"]): e[1]["choice"]["BLOCK_N"] for e in t.report()}
    choice = {f"{k} {c}": v for (k, c), v in choice.items()}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(dict(choice=choice, timed=len(calls)), f)
    dist.destroy_process_group()


def test_rank_zero_tunes_and_every_rank_uses_its_choice(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "out").mkdir()
    q = ops.geometry(torch.randn(1, 32, 10, 10), None, 2, 5, 5, 1, 1)
    cached = {tuning.key(n, q): dict(choice=dict(BLOCK_N=32, num_warps=4, STAGES=1)) for n in ("pool", "assign_only")}
    tuning.write_cache(cached, str(tmp_path / "rank0.json"))
    mp.spawn(_rank, args=(str(tmp_path), str(tmp_path / "out"), port), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / "out" / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["choice"] == r1["choice"] == {"pool 16": 16, "assign_only 16": 16, "pool 32": 32, "assign_only 32": 32}
    assert r0["timed"] > 0 and r1["timed"] == 0
    assert not (tmp_path / "rank1.json").exists()


def test_tune_warms_the_cache_before_a_run(tuner):
    x, a, b = inputs()
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 32 else 1.0)):
        got = ops.tune(x, None, a, b, **KW)
    assert {n: e["choice"]["BLOCK_N"] for n, e in got.items()} == dict(pool=32, assign_only=32)
    assert all(e["seconds"] >= 0 for e in got.values())

    def never(*_):
        raise AssertionError("tuned at the run")
    with tuning.timer(never):
        cluster_assignment(x, a, b, impl="triton", **KW)


def test_the_tuning_script_reports_and_pins(tuner, monkeypatch, tmp_path):
    """``python -m benchmarks.tune``: shipped beside chosen per kernel, and a pinned file the op then takes."""
    from benchmarks import tune as script
    monkeypatch.setattr(tuning, "TUNING_SPACE", dict(BLOCK_N=(128,), num_warps=(4,), STAGES=(1,)))
    md, pin = tmp_path / "t.md", tmp_path / "pinned.json"
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 128 else 1.0)):
        script.main(["--arch", "small", "--stages", "4", "--centres", "4", "--batch", "1", "--size", "128", "160",
                     "--md", str(md), "--pin", str(pin)])
    rows = [r for r in md.read_text().splitlines() if r.startswith("| small s4 4c float32 |")]
    assert len(rows) == 6 and all("| BN=128 w=4 stages=1 | 0.5000 | 2 / 2 | tuned |" in r for r in rows), rows
    # the fused forward and backward at that shape class now launch the choices, and still equal the light path
    from benchmarks._harness import make_inputs, mixer_geometry
    heads, prop, fold = mixer_geometry("small", 4, 4)
    x, v, a, b = make_inputs("small", 4, 1, torch.float32, "cpu", (128, 160))
    kw = dict(heads=heads, proposal=prop, fold=fold)

    def never(*_):
        raise AssertionError("tuned again")
    with tuning.timer(never), ops.record_launches() as rec:
        y = context_cluster(x, v, a, b, impl="triton", **kw)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, v, a, b), g)
    assert {r.constexprs["BLOCK_N"] for r in rec} == {128} and len(rec) == 6
    xr, vr, ar, br = (t.detach().requires_grad_() for t in (x, v, a, b))
    yr = context_cluster(xr, vr, ar, br, impl="light", **kw)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    for got_, ref in zip(got, torch.autograd.grad(yr, (xr, vr, ar, br), g)):
        torch.testing.assert_close(got_, ref, rtol=1e-5, atol=1e-5)
    tuning.clear()
    monkeypatch.setenv("COC_TUNING_PINNED", str(pin))
    monkeypatch.setenv("COC_TUNING_CACHE", str(tmp_path / "other.json"))

    def never_pinned(*_):
        raise AssertionError("timed a pinned key")
    x = torch.randn(1, 256, 8, 10)  # another image size of the shape class
    # the assignment alone: pool pinned; assign_only (the script tuned the fused op) kept as shipped
    with tuning.timer(never_pinned), ops.launch_policy(config_overrides={"assign_only": {}}), \
            warnings.catch_warnings():
        warnings.simplefilter("error")
        got = launched(lambda: cluster_assignment(x, torch.ones(1), torch.zeros(1), impl="triton", heads=8,
                                                  proposal=2, fold=1))
    assert got == {"_pool_kernel": 128, "_assign_kernel": 64}


def test_tuning_under_inference_mode_and_autocast_and_when_it_fails(tuner, monkeypatch):
    """The first call may come under ``inference_mode`` or autocast: the light reference still runs (in fp32, with
    autograd) and the candidates pass; and a tuner that fails leaves the user's call to the shipped configurations."""
    monkeypatch.setattr(tuning, "KINDS", dict(tuning.KINDS, forward=("dispatch",)))
    x, a, b = inputs()
    v = torch.randn(1, 32, 8, 8)
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 16 else 1.0)), torch.inference_mode(), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        y = context_cluster(x, v, a, b, impl="triton", **KW)
    entry = {e[0]["kernel"]: e[1] for e in tuning.report()}["dispatch"]
    assert all(c["outcome"] == "ok" for c in entry["candidates"]) and entry["choice"]["BLOCK_N"] == 16
    torch.testing.assert_close(y, context_cluster(x, v, a, b, impl="light", **KW), rtol=1e-5, atol=1e-5)

    tuning.clear()
    monkeypatch.setenv("COC_TUNING_CACHE", os.path.join(os.path.dirname(tuning.cache_path()), "second.json"))
    monkeypatch.setattr(tuning, "_reference", lambda *a, **k: 1 / 0)
    with tuning.timer(Timer(lambda k, bn: 1.0)), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y2 = context_cluster(x, v, a, b, impl="triton", **KW)
    assert [str(m.message) for m in w if "tuning failed" in str(m.message)]
    entry = {e[0]["kernel"]: e[1] for e in tuning.report()}["dispatch"]
    assert entry["source"].startswith("shipped (tuning failed") and entry["choice"]["BLOCK_N"] == 64
    assert not os.path.exists(tuning.cache_path()) or not any(
        "failed" in json.dumps(e) for e in json.load(open(tuning.cache_path()))["entries"].values())
    torch.testing.assert_close(y2, context_cluster(x, v, a, b, impl="light", **KW), rtol=1e-5, atol=1e-5)


def test_an_unreadable_cache_is_ignored_and_rewritten_an_unreadable_pinned_file_is_an_error(tuner, monkeypatch,
                                                                                            tmp_path):
    x, a, b = inputs()
    os.makedirs(os.path.dirname(tuning.cache_path()), exist_ok=True)
    with open(tuning.cache_path(), "w") as f:
        f.write('{"format": 1, "entr')
    with tuning.timer(Timer(lambda k, bn: 0.5 if bn == 32 else 1.0)), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cluster_assignment(x, a, b, impl="triton", **KW)
    assert any("not readable JSON" in str(m.message) for m in w)
    assert len(json.load(open(tuning.cache_path()))["entries"]) == 2
    tuning.clear()
    (tmp_path / "pinned.json").write_text("not json")
    monkeypatch.setenv("COC_TUNING_PINNED", str(tmp_path / "pinned.json"))
    with pytest.raises(ValueError, match="pinned.json is not readable JSON"):
        cluster_assignment(x, a, b, impl="triton", **KW)


def test_configuration_strings_show_the_register_cap_that_travels_with_a_choice(tuner):
    """The benchmarks' line of launch configurations names a register cap where the configuration has one: a held
    choice equal to the shipped settings of a capped kernel (assign at 32 centres) keeps the shipped cap; a choice
    that changes the tile drops it (``config.with_settings``), and the line says so."""
    from benchmarks._harness import configurations_line
    from coc_kernels.ops.context_cluster.config import KERNEL_CONFIGS
    shipped = KERNEL_CONFIGS["assign"].at(32)
    assert shipped["maxnreg"], "assign at 32 centres ships with a register cap (the premise of this test)"
    same = {s: shipped[s] for s in tuning.SETTINGS}
    other = dict(same, BLOCK_N=2 * shipped["BLOCK_N"])

    def held(kernel, dtype, choice):
        k = json.dumps(dict(kernel=kernel, dtype=dtype, centres=32, d=32, dv=32), sort_keys=True)
        choices.TABLE[k] = dict(choice=choice, source="tuned")
    held("assign", "float32", same)
    held("assign", "bfloat16", other)
    line = configurations_line()
    fp32 = next(p for p in line.split("; ") if "assign float32 32c" in p)
    bf16 = next(p for p in line.split("; ") if "assign bfloat16 32c" in p)
    assert f"cap={shipped['maxnreg']}" in fp32 and f"BN={shipped['BLOCK_N']} " in fp32, line
    assert "cap=" not in bf16 and f"BN={2 * shipped['BLOCK_N']} " in bf16, line
