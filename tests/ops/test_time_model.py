"""The GPU time model (benchmarks/time_model.py): its simulation of the SMs against hand-computed cases, and its fit
on the H100 run's six kernel times within the error the docs state. No test asserts a measured time."""
import math
import os

import pytest

from benchmarks import time_model as tm
from benchmarks.calibrate_time_model import measured_times

from conftest import ROOT  # noqa: E402

L = 10.0


def cost(programs, warps=4, per_sm=1, loop=100, other=0, nbytes=0, strided=0):
    return tm.KernelCost("k", tuple(programs), warps, per_sm, loop, other, nbytes, strided)


def test_one_wave_at_the_latency_bound():
    # 132 programs of 4 warps, one per SM: 4 warps on 4 schedulers each issue every L cycles
    c = cost([(132, 3)], loop=100, other=20)
    assert tm.core_cycles(c, L) == pytest.approx((3 * 100 + 20) * L)


def test_the_partial_sums_run_once_per_chunk():
    # 132 programs, one per SM; each sums its group's 5 chunk partials: the 30-instruction loop runs 4 times
    c = tm.KernelCost("k", ((132, 3),), 4, 1, 100, 20, 0, 0, partial_instructions=30, chunks=5)
    assert tm.core_cycles(c, L) == pytest.approx((3 * 100 + 20 + 4 * 30) * L)
    # the cost from a compile result: the partial loop comes out of the static rest, and a grid of 5 chunks
    r90 = dict(programs_per_sm=1, loop=dict(instructions=100), instructions=150, partial_loops=30)
    k = tm.kernel_cost("k", [3] * 5, 2, 4, r90, 0)
    assert (k.other_instructions, k.partial_instructions, k.chunks) == (20, 30, 5)
    assert k.programs == ((10, 3),)


def test_a_second_wave_doubles_the_time():
    assert tm.core_cycles(cost([(133, 1)]), L) == pytest.approx(2 * 100 * L)
    assert tm.core_cycles(cost([(264, 1)], per_sm=2), L) == pytest.approx(100 * L)  # both fit at once


def test_schedulers_saturate():
    # 2 programs of 32 warps per SM: 16 warps per scheduler, each issues once every 16 cycles (> L)
    assert tm.core_cycles(cost([(264, 1)], warps=32, per_sm=2), L) == pytest.approx(100 * 16)
    # and under L, the latency bounds: 8 warps per SM
    assert tm.core_cycles(cost([(264, 1)], warps=4, per_sm=2), L) == pytest.approx(100 * L)


def test_a_short_program_frees_its_slot_for_the_next():
    # SM 0 holds a 1-tile and a 3-tile program; the 1-tile one retires at 100 L and the third program (1 tile)
    # takes its slot: everything is done at 300 L, not 400 L
    c = cost([(1, 1), (1, 3), (1, 1)], per_sm=2)
    gpu = dict(tm.H100, sms=1)
    assert tm.core_cycles(c, L, gpu) == pytest.approx(300 * L)


def test_rate_rises_when_a_program_retires():
    # one SM, two 32-warp programs: 16 warps per scheduler (1 per 16 cycles), then the survivor's 8 per scheduler
    # issue every max(L, 8) = 10 cycles: 100 x 16 for both, then 100 more instructions x 10
    c = cost([(1, 1), (1, 2)], warps=32, per_sm=2)
    assert tm.core_cycles(c, L, dict(tm.H100, sms=1)) == pytest.approx(100 * 16 + 100 * L)


def test_bound_terms():
    c = cost([(132, 1)], nbytes=3_000_000_000, strided=10 ** 9)
    p = tm.Params(latency=L, store_ps=2.0)
    e = tm.predict(c, p)
    assert e["dram_ms"] == pytest.approx(1.0) and e["store_ms"] == pytest.approx(2.0)
    assert e["bound"] == "strided stores" and e["ms"] == e["store_ms"] and e["floor_ms"] == e["dram_ms"]
    assert tm.predict(cost([(132, 1)], per_sm=0), p)["ms"] == math.inf


def test_runs():
    assert tm.runs([3, 3, 2, 3]) == ((2, 3), (1, 2), (1, 3))


def test_the_calibration_file_holds_the_runs_times():
    """The data file's measured times are the run's, as its report in docs/gpu states them."""
    data = tm.load_calibration()
    doc = measured_times(os.path.join(ROOT, data["source"]))
    assert {n: k["measured_ms"] for n, k in data["kernels"].items()} == doc
    assert set(doc) == set(tm.FWD_BWD) and data["commit"].startswith("6c7bf35")


def test_fit_error_stays_within_what_the_docs_state():
    f = tm.fit()
    assert f["rms_log_error"] <= tm.STATED_RMS_LOG_ERROR
    assert all(1 / tm.STATED_LEAVE_ONE_OUT <= r <= tm.STATED_LEAVE_ONE_OUT for r in f["leave_one_out"].values()), f
    # the fitted latency is a GPU's, not the edge of the searched grid
    assert 4 < f["params"].latency < 40 and 0 < f["params"].store_ps < 60
    # the model reproduces the run's total within the same error
    total = sum(f["measured_ms"].values())
    assert abs(math.log(sum(f["predicted_ms"].values()) / total)) <= tm.STATED_RMS_LOG_ERROR


def test_docs_state_the_fit_error():
    text = open(os.path.join(ROOT, "docs", "performance.md")).read()
    f = tm.fit()
    assert f"L = {f['params'].latency:.1f}" in text
    assert f"rms error {100 * (math.exp(f['rms_log_error']) - 1):.0f} %" in text


def test_the_gate_fails_on_a_rise_of_the_recorded_stage1_estimate():
    """``kernel_resources.estimate_report``: a stage-1 total more than 10 % above the record is a failure; within
    10 %, or below, is not; the per-stage table sums the six kernels."""
    from benchmarks import kernel_resources as kr
    fit = tm.fit()

    def est(ms):
        row = {k: dict(ms=ms / 6, core_ms=ms / 6, dram_ms=0.01, store_ms=0.0, floor_ms=0.01, bound="issue",
                       warps=8, programs=1024, label="x") for k in tm.FWD_BWD}
        return {f"small s{s} 25c float32 {kr.DEFAULT_DENOMINATOR}": row for s in (1, 2)}
    record = {"small s1 25c float32": 2.0}
    lines, bad, totals = kr.estimate_report(est(2.3), "3.8", record, fit)
    assert len(bad) == 1 and "15 % above" in bad[0] and totals == {"small s1 25c float32": pytest.approx(2.3)}
    assert any(line.startswith("| small | 25 | float32 | 2.300 | 2.300 | - | - | - | 2.000 |") for line in lines), lines
    # the backbone column weighs each stage by its blocks (small: 2, 2, 6, 2 layers), where all four are estimated
    four = {f"small s{s} 25c float32 {kr.DEFAULT_DENOMINATOR}": next(iter(est(s / 10).values())) for s in (1, 2, 3, 4)}
    lines = kr.estimate_report(four, "3.8", record, fit)[0]
    assert any(line.startswith("| small | 25 | float32 | 0.100 | 0.200 | 0.300 | 0.400 | 3.200 | 2.000 |")
               for line in lines), lines
    assert kr.estimate_report(est(2.19), "3.8", record, fit)[1] == []
    assert kr.estimate_report(est(1.0), "3.8", record, fit)[1] == []
    assert "not met" in "\n".join(kr.estimate_report(est(1.0), "3.8", record, fit)[0])


def test_the_recorded_stage1_estimates_cover_both_tritons():
    import json
    from benchmarks import kernel_resources as kr
    rec = json.load(open(kr.PREDICTION_RECORD))
    for version in ("3.6", "3.8"):
        assert {f"{a} s1 {m}c {d}" for a in kr.ESTIMATE_ARCHS for m in (4, 25, 49)
                for d in ("float32", "bfloat16")} <= set(rec[version])
