# Two commands for a newcomer:
#   make demo   set up everything (venv, torch, mmcv with ops, mmdet, this package), then train and evaluate
#               Mask R-CNN + Context Cluster on the bundled synthetic shapes data
#   make test   set up (seconds once done) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup:
	COC_VENV=$(abspath $(VENV)) bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_mixer.py
