"""The environment of a child process of the test run (`clapcomp ...`, a benchmark script): this run's
XLA flags and compilation cache (tests/conftest.py) on `devices` CPU devices, the checkout importable."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(devices: int = 1) -> dict:
    flags = [f for f in os.environ["XLA_FLAGS"].split() if not f.startswith("--xla_force_host_platform_device_count")]
    return {
        **os.environ,
        "XLA_FLAGS": " ".join([f"--xla_force_host_platform_device_count={devices}", *flags]),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
