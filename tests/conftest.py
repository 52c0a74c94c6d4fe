"""Test-wide set-up, before anything imports jax: 8 simulated CPU devices, XLA's CPU backend compiling
for speed of compilation, and one persistent XLA compilation cache for the whole run, shared by both
xdist workers and every `clapcomp` subprocess, so a program one test compiled is loaded, not compiled
again, by the next. The cache lives in a temporary folder the run's first process makes and removes; a
JAX_COMPILATION_CACHE_DIR of your own is used instead, and kept.
Tests run small programs a few steps each, so most of their time is compilation. Without LLVM
optimisation the demo model's programs compiled in 24 s instead of 43 s (2-core x86, 2026-11-29) and
ran at 30 instead of 47 samples/s; emitting fusions with XLA's older elemental emitters instead of its
MLIR fusion emitters took the demo model's compile from ~24 s to ~19 s, and the whole suite from
861 s to 714 s of pytest (`make test`, same machine and day). The semantics are XLA's either way (float
rounding may differ in the last bits, inside every test's tolerance); tests/child_env.py passes the
flags on to subprocesses.
"""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)
os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys([*os.environ["XLA_FLAGS"].split(), *FAST_COMPILE]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWNED_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the first process's
    _OWNED_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="clapcomp-test-xla-")
# No maximum size: with one, jax rescans the whole folder on every write (0.3 s at the ~3,400 entries
# of a run; the suite took 22.5 min with it). Without it there is no file lock either: two processes
# writing one entry write the same bytes, and a reader that meets a half-written entry warns and compiles.
os.environ.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def pytest_unconfigure(config):
    if _OWNED_CACHE is not None:
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)


@pytest.fixture
def gcs():
    """A fresh local GCS (tests/gcs_emulator.py) with one bucket, its variables set in os.environ; the
    `.env` to pass to child processes. gcsfs's cached filesystems (pointing at an older emulator) dropped."""
    import gcs_emulator
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    with gcs_emulator.running() as emulator:
        yield emulator
    gcsfs.GCSFileSystem.clear_instance_cache()
