# `make demo` and `make test` are the two commands a newcomer runs; both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# LAION-CLAP's model classes, only as the reference of the .pt import test (its metadata pins numpy<2);
	# aisfx: its pretrained CNN (CC BY 4.0) and model class (its metadata pins numpy==1.23 and librosa==0.9.2)
	$(PY) -m pip install -q --no-deps laion-clap==1.1.7 torchlibrosa==0.1.0 aisfx==0.1.2
	# an NVIDIA GPU present: jax's CUDA plugin, so `make demo` trains on it with no other change
	if nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install -q -e '.[gpu]'; fi
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(VENV)/bin/clapcomp demo --workdir runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
