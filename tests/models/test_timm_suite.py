"""timm's own model tests, unmodified, for the seven ``coc_*`` models.

The file is ``tests/test_models.py`` of the installed timm's source distribution (fetched by the set-up into
``<venv>/share/timm-tests/<version>``, never copied into this repository). It runs in its own pytest process
with ``timm_suite_plugin`` (registers the models, keeps their cases, and lets the feature-API tests, which timm
filters by its own module names, collect them too). Every test function the file has for a model must be
collected for each of ours and pass: forward / backward, ``default_cfgs`` (built and run on the meta device,
``device=`` / ``dtype=`` keywords, ``in_chans``, the API contract), TorchScript, torch.fx forward / backward /
FX + TorchScript, ``features_only``, ``forward_intermediates`` and the prune contract."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from coc_det.classifier import TIMM_MODELS

timm = pytest.importorskip("timm")

SUITE = Path(sys.prefix) / "share" / "timm-tests" / timm.__version__
#: the test functions of timm's file that take every (suitable) model
#: the models split over two processes run side by side (the CPU machines have 2 cores; about equal halves)
SHARDS = (("coc_base_dim64", "coc_tiny2", "coc_tiny"), ("coc_base_dim96", "coc_medium", "coc_small", "coc_tiny_plain"))
FUNCTIONS = {"test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_torchscript",
             "test_model_forward_features", "test_model_forward_fx", "test_model_backward_fx",
             "test_model_forward_fx_torchscript", "test_model_forward_intermediates_features",
             "test_model_forward_intermediates", "test_prune_intermediate_layers_contract"}


def _outcomes(report: Path) -> dict:
    """``{(function, model): outcome}`` from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        function, params = name.split("[", 1)
        model = next(p for p in params.rstrip("]").split("-") if p in TIMM_MODELS)
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[(function, model)] = kinds[0] if kinds else "passed"
    return out


def test_timm_test_models_pass_for_every_coc_model(tmp_path):
    test_file = SUITE / "tests" / "test_models.py"
    assert test_file.is_file(), (f"timm {timm.__version__}'s tests/test_models.py is not at {test_file}: "
                                 "run `make setup` (tools/setup_env.sh fetches it)")
    assert sorted(sum(SHARDS, ())) == sorted(TIMM_MODELS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("GITHUB_ACTIONS", None)  # the file's smaller-runner exclusions do not apply to these models
    procs, reports = [], []
    for i, shard in enumerate(SHARDS):
        reports.append(tmp_path / f"report{i}.xml")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "timm_suite_plugin", "-p", "no:cacheprovider", "-q",
             "-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={reports[-1]}", "tests/test_models.py"],
            cwd=SUITE, env=dict(env, COC_TIMM_MODELS=",".join(shard)), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=1200)[0] for p in procs]
    outcomes = {}
    for report, log in zip(reports, logs):
        assert report.is_file(), log[-4000:]
        outcomes.update(_outcomes(report))
    expected = {(f, m) for f in FUNCTIONS for m in TIMM_MODELS}
    assert set(outcomes) == expected, (f"collected {len(outcomes)} cases; missing {sorted(expected - set(outcomes))}, "
                                       f"unexpected {sorted(set(outcomes) - expected)}")
    bad = {k: v for k, v in outcomes.items() if v != "passed"}
    assert not bad, f"{len(bad)} of {len(outcomes)} did not pass: {sorted(bad.items())}\n" + "\n".join(
        log[-4000:] for log in logs)
    assert all(p.returncode == 0 for p in procs), [log[-2000:] for log in logs]
