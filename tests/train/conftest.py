"""Fixtures for the trainer tests: a small synthetic record set and a runner for `clapcomp train`.

The records are 1-s tones at 8 kHz whose caption names their pitch and loudness ordering, with
two caption negatives and two extra positives each, so all three losses have something to learn.
Every process of a test run (both xdist workers and the `clapcomp train` subprocesses) shares one
persistent XLA compilation cache (tests/conftest.py), so each program compiles once per run, and the
reference run is trained once per run, not once per worker.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import filelock
import numpy as np
import pytest
from child_env import REPO, child_env  # tests/child_env.py (pytest pythonpath = tests)

PITCHES = ["low", "middle", "high", "very high"]
FREQS = [200.0, 450.0, 900.0, 1800.0]


def _example(i: int, rng: np.random.Generator) -> dict:
    a, b = rng.choice(4, size=2, replace=False)
    t = np.arange(8000) / 8000.0
    first = np.sin(2 * np.pi * FREQS[a] * t[:4000])
    second = np.sin(2 * np.pi * FREQS[b] * t[4000:])
    wave = (0.5 * np.concatenate([first, second]) + 0.01 * rng.standard_normal(8000)).astype(np.float32)
    return {
        "key": f"tone-{i}",
        "audio": wave,
        "sample_rate": 8000,
        "captions": [f"a {PITCHES[a]} tone followed by a {PITCHES[b]} tone"],
        "negatives": [
            f"a {PITCHES[b]} tone followed by a {PITCHES[a]} tone",
            f"a {PITCHES[a]} tone with a {PITCHES[b]} tone",
        ],
        "positives": [f"a {PITCHES[a]} tone", f"a {PITCHES[b]} tone"],
    }


def write_tone_records(out_dir: Path, n: int = 32, seed: int = 0) -> Path:
    from clapcomp.data.records import write_records

    rng = np.random.default_rng(seed)
    write_records(str(out_dir), [_example(i, rng) for i in range(n)], shard_size=16)
    return out_dir


def run_root(tmp_path_factory) -> Path:
    """A folder shared by every xdist worker of this test run (the session's own one without xdist)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def once_per_run(tmp_path_factory, name: str, make) -> Path:
    """`make(path)` runs once per test run, whichever worker asks first; the others wait and reuse it."""
    root = run_root(tmp_path_factory)
    path, done = root / name, root / f"{name}.done"
    with filelock.FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            make(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def tone_records(tmp_path_factory) -> Path:
    return once_per_run(tmp_path_factory, "tones", write_tone_records)


@pytest.fixture(scope="session")
def compile_cache() -> Path:
    """The test run's persistent XLA compilation cache (tests/conftest.py)."""
    return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


def train_env(cache: Path, devices: int = 8) -> dict:
    """This process's environment (its XLA flags and compilation-cache settings) on `devices` CPU devices."""
    return {**child_env(devices), "JAX_COMPILATION_CACHE_DIR": str(cache)}


def train_cmd(workdir: Path, records: Path, *overrides: str, config: str = "configs/tiny.py") -> list[str]:
    return [
        sys.executable,
        "-m",
        "clapcomp.cli",
        "train",
        f"--config={REPO / config}",
        f"--workdir={workdir}",
        f"--config.data.train={records}",
        *overrides,
    ]


def run_train(workdir, records, *overrides, cache, devices=8, timeout=600, config="configs/tiny.py"):
    """Runs `clapcomp train` to completion in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        train_cmd(workdir, records, *overrides, config=config),
        env=train_env(cache, devices),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


REFERENCE = ("--config.total_steps=8", "--config.ckpt_every=4", "--config.mesh.fsdp=2", "--config.fsdp_text=True")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tone_records, compile_cache) -> Path:
    """An uninterrupted 8-step tiny run on 8 devices (mesh data 4 x fsdp 2, text tower FSDP);
    checkpoints at steps 4 and 8."""

    def train(path):
        r = run_train(path / "run", tone_records, *REFERENCE, cache=compile_cache)
        assert r.returncode == 0, r.stderr[-3000:]

    return once_per_run(tmp_path_factory, "reference", train) / "run"


@pytest.fixture(scope="session")
def tone_benchmark(tmp_path_factory) -> Path:
    """A retrieval CSV (`audio,caption`) over 8 tone WAV files, for the evaluators."""
    import soundfile as sf

    out = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(1)
    rows = ["audio,caption"]
    for i in range(8):
        ex = _example(i, rng)
        sf.write(out / f"{i}.wav", ex["audio"], 8000)
        rows.append(f"{i}.wav,{ex['captions'][0]}")
    (out / "retrieval.csv").write_text("\n".join(rows) + "\n")
    return out / "retrieval.csv"


def read_state(workdir: Path, step: int):
    """The TrainState of checkpoint `step` as numpy arrays (restored on one device)."""
    import jax
    import orbax.checkpoint as ocp

    from clapcomp.train import checkpoint as ckpt_lib
    from clapcomp.train import state as state_lib

    config = ckpt_lib.read_config(workdir)
    mesh = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
    abstract = state_lib.setup(config, mesh).abstract
    with ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True)
    ) as m:
        restored = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    return jax.tree_util.tree_map(np.asarray, restored)


def assert_states_bitwise_equal(a, b) -> None:
    import jax

    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(
            x.view(np.uint8) if x.ndim else np.atleast_1d(x).view(np.uint8),
            y.view(np.uint8) if y.ndim else np.atleast_1d(y).view(np.uint8),
        ), jax.tree_util.keystr(path)


def straight_and_resumed(config, tmp_path: Path, *, step: int = 4, drop: str = "4"):
    """Trains `config` to the end in tmp_path/straight, copies it, drops checkpoint `drop` (as if killed after
    the one before), resumes the copy, and returns both runs' states at `step`: (straight, resumed)."""
    from clapcomp.train import loop

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loop.train(config, straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / drop)
    loop.train(config, resumed)
    return read_state(straight, step), read_state(resumed, step)


@pytest.fixture(scope="session")
def helpers():
    """This module's helper functions (test modules cannot import conftest under importlib mode)."""
    return sys.modules[__name__]


@pytest.fixture
def tiny(helpers, tone_records):
    """configs/tiny.py as `tiny(loss)`, training on the tone records, its parameters and optimizer state
    sharded over all 8 devices (mesh fsdp 8, text tower too). Replicated, each simulated device would
    run the whole AdamW update of the 30,522-row word embedding, under the tests' unoptimised XLA code:
    a tiny CompA training ran at 13-19 instead of 48-55 samples/s (2-core x86, 2026-11-30)."""
    from repo_configs import load_config  # tests/repo_configs.py

    return lambda loss: load_config("tiny", loss, f"data.train={tone_records}", "mesh.fsdp=8", "fsdp_text=true")
