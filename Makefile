# Two commands for a newcomer:
#   make demo   set up everything (venv, torch, mmcv with ops, mmdet, this package), then train and evaluate
#               Mask R-CNN + Context Cluster on the bundled synthetic shapes data
#   make test   set up (seconds once done) and run the test suite
# (make demo-seg: the same for semantic segmentation, Semantic FPN + CoC on the shapes as classes, mIoU;
#  make docs: the documentation site into build/site, strictly: a broken link or a missing page fails)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-seg test bench docs
setup:
	COC_VENV=$(abspath $(VENV)) bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py

demo-seg: setup
	$(PY) tools/run_demo.py --seg

# the linter (ruff, configured in pyproject.toml), then the suite on TEST_WORKERS processes, each test file on one
# of them (module fixtures are built once), in collection order (tests/conftest.py puts the compile gates, the
# longest files, first; xdist would otherwise start the files with the most tests first and the gate last)
TEST_WORKERS ?= 2

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

bench: setup
	$(PY) -m benchmarks.bench_mixer

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
