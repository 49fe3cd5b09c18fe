# make demo: set up and train the demo. make test: set up and run the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.setup-stamp

.PHONY: setup data demo dan-demo reproduce test test-avx2 bench bench-gpu gpu-verify clean

setup: $(STAMP) data

# Rebuilt when the metadata, the build script or a CUDA source changes (the editable install compiles csrc/
# into _C). Dependencies and extras are in pyproject.toml; torch goes in first because the build imports it
# (no build isolation). The extras: train (trainer, export checks, plots), test (pytest, hypothesis), bench.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cu csrc/*.cuh csrc/*.cpp csrc/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch torchvision==0.29.1
	$(PY) -m pip install -q --no-build-isolation -e ".[train,test,bench]" torchvision==0.29.1
	touch $(STAMP)

data:
	@if [ ! -d $(DATA) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	  else \
	    echo "Fashion-MNIST is missing at $(DATA). Install the Debian package dataset-fashion-mnist as root," \
	         "or download the four IDX .gz files and pass --data-dir DIR to adjoined-train."; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/adjoined-train --out runs/demo

# DAN: search widths at the uniform alpha=4 small network's FLOPs, retrain them, compare (docs/dan.md).
dan-demo: setup
	$(PY) python/dan_demo.py --out runs/dan-demo

# The paper's claims on Fashion-MNIST (python/reproduce/results/claims.md; under 60 minutes on 2 shared CPU cores).
reproduce: setup
	$(PY) python/reproduce/paper_claims.py --dataset fashion-mnist --seeds 3 --subset 5000 --epochs 3 --out runs/claims
	cp runs/claims/claims.md runs/claims/claims.csv runs/claims/claims.png python/reproduce/results/

# -n 1: the tests run in one pytest-xdist worker, so a native crash (a oneDNN abort) fails the test that
# crashed, the worker is replaced and the run goes on.
test: setup
	$(PY) -m pytest -q -n 1 tests

# The parts that train or call oneDNN once more with ATen's and oneDNN's AVX2 kernels, the ones an AVX2-only
# CPU runs (docs/kernels.md, "Memory format on CPU"); .ci/run runs it after `make test`.
AVX2_TESTS := tests/test_train.py tests/test_baselines.py $(wildcard tests/test_dan*.py) \
	$(wildcard tests/test_adjoin*.py) tests/test_cpu_layout.py tests/ops
test-avx2: setup
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -n 1 $(AVX2_TESTS)

bench: setup
	cd bench && ../$(PY) -m pytest -q test_cpu.py --benchmark-json=results/$$(date -u +%Y-%m-%d)-cpu.json
	$(PY) bench/report.py

# On the GPU machine (through the device tool): no venv there, its python3 has torch and triton.
bench-gpu:
	bash bench/gpu_run.sh bench

gpu-verify:
	bash bench/gpu_run.sh all

clean:
	rm -rf runs build *.egg-info
