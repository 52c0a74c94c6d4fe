"""Kill anywhere: benchmarks/chaos_kill.py SIGKILLs a tiny CPU training run 3 times
(seed 0 plans one kill at start-up, one inside an async checkpoint write, one during training steps),
relaunches it after each, and the resumed run ends with parameters, optimizer state and BatchNorm
statistics bitwise equal to an uninterrupted run's; then single-bit flips in random checkpoint files
are each detected (named by load_weights; the newest step falls back). The final states are re-read and compared here
with the trainer tests' own helpers, independently of the script's comparison. Single kills at
chosen points are in tests/train/test_resume.py.
"""

import copy
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from repo_configs import load_script

from clapcomp import fs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "chaos_kill.py"
KILLS, STEPS, FLIPS = 3, 12, 4


def _load(path: Path, name: str):
    return load_script(path, name)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--kills",
            str(KILLS),
            "--seed",
            "0",
            "--steps",
            str(STEPS),
            "--workdir",
            str(root),
            "--launch-timeout",
            "200",
            "--flips",
            str(FLIPS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, json.loads((root / "summary.json").read_text())


@pytest.mark.slow
def test_every_flipped_checkpoint_bit_is_detected(chaos):
    root, s = chaos
    assert s["flips"]["flips"] == FLIPS and s["flips"]["detected"] == FLIPS
    for row in s["flips"]["rows"]:  # the flipped file is named; a flip in the newest step falls back
        assert row["named"] and row["fell_back"] in (None, True), row
    copy = root / "flips" / "checkpoints"
    for step in {row["step"] for row in s["flips"]["rows"]}:  # every flip was undone: the copy verifies again
        assert fs.verify_manifest(copy / str(step))


@pytest.mark.slow
def test_every_kill_is_survived_including_one_inside_a_checkpoint_write(chaos):
    root, s = chaos
    launches = s["launches"]
    killed = [r for r in launches if r["killed"]]
    assert len(killed) == s["kills"]["survived"] == KILLS and s["relaunches"] == KILLS
    assert all(r["rc"] == -signal.SIGKILL for r in killed)
    assert launches[-1]["rc"] == 0 and launches[-1]["last_step"] == STEPS
    assert s["errors"] == s["hangs"] == 0 and s["fallbacks"] == 0 and s["resumed_from_newest"]

    cut = [(i, r) for i, r in enumerate(launches) if r["cut_writes"]]
    assert cut and s["kills"]["write"] == len(cut) >= 1
    for i, r in cut:  # the half-written checkpoint was not used: the next launch resumed before it
        steps = [int(re.match(r"\d+", name).group()) for name in r["cut_writes"]]
        assert launches[i + 1]["resume"] < min(steps)
    assert not list((root / "chaos" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))  # cleaned up on resume


@pytest.mark.slow
def test_final_state_is_bitwise_equal_to_the_uninterrupted_run(chaos):
    root, s = chaos
    assert s["bitwise_equal"] and s["data_equal"] and s["leaves"] > 100
    h = _load(ROOT / "tests" / "train" / "conftest.py", "train_conftest")
    h.assert_states_bitwise_equal(h.read_state(root / "reference", STEPS), h.read_state(root / "chaos", STEPS))
    for name in ("reference", "chaos"):
        assert int(h.read_state(root / name, STEPS).step) == STEPS


@pytest.mark.slow
def test_every_re_executed_step_repeats_the_reference_numbers(chaos):
    root, s = chaos
    ref = {m["step"]: m for m in map(json.loads, (root / "reference" / "metrics.jsonl").read_text().splitlines())}
    seen = []
    for line in (root / "chaos" / "metrics.jsonl").read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        seen.append(m["step"])
        assert (m["loss"], m["grad_norm"]) == (ref[m["step"]]["loss"], ref[m["step"]]["grad_norm"]), m["step"]
    assert set(seen) == set(range(1, STEPS + 1)) and len(seen) > STEPS  # some steps ran twice


def test_the_scripts_comparison_sees_a_single_bit_and_the_sign_of_zero():
    compare_states = _load(SCRIPT, "chaos_kill").compare_states
    a = {
        "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(0.0)},
        "step": np.int32(3),
        "nu": np.array([np.nan, 1.0], np.float32),
    }
    assert compare_states(a, copy.deepcopy(a)) == (4, [])  # NaN == NaN bit for bit
    flipped = copy.deepcopy(a)
    flipped["params"]["w"].view(np.uint32)[1, 2] ^= 1  # one ulp
    negzero = copy.deepcopy(a)
    negzero["params"]["b"] = np.float32(-0.0)
    assert compare_states(a, flipped)[1] == ["['params']['w']"]
    assert compare_states(a, negzero)[1] == ["['params']['b']"]
