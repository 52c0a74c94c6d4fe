"""benchmarks/train_throughput.py: CPU smoke run (tiny config) with grain / tfds / soxr blocked, the
train step importable without ml_collections too, and the analytic FLOP count. No speed asserts."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import child_env  # tests/child_env.py (pytest pythonpath = tests)
from repo_configs import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
BLOCKED = ("grain", "tensorflow_datasets", "soxr")  # the benchmark runs without them (it reads configs: ml_collections)


def _load(path: Path, name: str):
    return load_script(path, name)


bench = _load(SCRIPT, "train_throughput")


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--batch", "--steps", "--warmup", "--config", "--dtype", "--k", "--skip-torch", "--out"):
        assert flag in out


def _block(tmp_path, names) -> dict:
    """An environment in which every process, children included, sees `names` blocked."""
    (tmp_path / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names))
    return {**child_env(devices=1), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def test_train_step_imports_without_grain_tfds_ml_collections(tmp_path):
    env = _block(tmp_path, BLOCKED + ("ml_collections", "orbax"))
    code = "import clapcomp.train.step, clapcomp.train.state; import sys; assert 'ml_collections' not in sys.modules or sys.modules['ml_collections'] is None"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_cpu_smoke_run_without_grain_tfds_soxr(tmp_path):
    env = _block(tmp_path, BLOCKED)
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--config", "tiny", "--batch", "8", "--steps", "2", "--warmup", "1",
           "--dtype", "fp32", "--k", "2", "--skip-torch", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["clapcomp train (plain)", "clapcomp train (compa, K=2)", "text extra (fwd+bwd, 8x2 rows)",
                     "clapcomp text embed (16 tokens)", "clapcomp audio embed (from waveforms)"]  # fmt: skip
    for r in result["rows"]:
        assert r["step_s"] > 0 and r["samples_per_s"] > 0 and r["program_bytes"] > 0 and len(r["times_s"]) == 2, r
        # the analytic count covers the matmuls only: a large part of, and not more than, XLA's count
        assert 0.4 * r["flops_xla"] < r["flops_model"] <= 1.05 * r["flops_xla"], r
    for r in result["rows"][:2]:
        assert math.isfinite(r["loss"]) and r["nonfinite"] == 0
    assert result["skipped"] == {"torch": "--skip-torch"} and not result["failed"]
    assert result["env"]["backend"] == "cpu" and result["env"]["jax"]
    assert "compa step / (plain step + text extra)" in proc.stdout and "samples/s" in proc.stdout
    assert "clapcomp train (plain)" in proc.stdout


def test_configs_are_the_config_files():
    """--config picks the real config files: the model, the optimizer and the loss come from them."""
    args = bench.parse_args(["--dtype", "fp32"])
    plain, compa = bench.train_config(args, "plain"), bench.train_config(args, "compa")
    assert (plain.loss, compa.loss, compa.seed, compa.optimizer.warmup_steps) == ("plain", "compa", 3407, 1600)
    from clapcomp.models.configs import ClapConfig

    assert bench.model_config(args) == ClapConfig()  # configs/clap_htsat_roberta.py: LAION-CLAP HTSAT-tiny + RoBERTa
    tiny = bench.model_config(bench.parse_args(["--config", "tiny"]))
    assert tiny.text.family == "roberta" and tiny.htsat.depths == (1, 1) and tiny.dtype == "bfloat16"


def test_analytic_flops_match_the_measured_anchor():
    """shared/REFERENCE.md: ~75 GFLOP per training sample, 35.4 of them HTSAT's (LAION-CLAP shapes)."""
    cfg = bench.model_config(bench.parse_args([]))
    assert bench.model_flops(cfg, 1, 0, train=True) / 1e9 == pytest.approx(35.4, abs=0.1)
    assert bench.model_flops(cfg, 1, 1, train=True) / 1e9 == pytest.approx(75, abs=1)
    # RoBERTa-base forward on 77 tokens by hand: 12 x (24 * 77 * 768^2 + 4 * 77^2 * 768) + pooler + head
    text = 12 * (24 * 77 * 768**2 + 4 * 77**2 * 768) + 2 * 768**2 + 2 * (768 * 512 + 512**2)
    assert bench.model_flops(cfg, 0, 1, train=False) == text
