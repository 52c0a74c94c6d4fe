"""A checkpoint written on 8 devices (data 4 x fsdp 2) restores onto 8, 4 and 1 devices with
different meshes: bit-identical parameters and optimizer state, identical evaluation numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process / end-to-end: `make test-fast` skips it

SCRIPT = Path(__file__).with_name("restore_eval.py")


def _restore(helpers, workdir, csv, devices, fsdp, cache):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(workdir), str(csv), str(fsdp)],
        env=helpers.train_env(cache, devices),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=helpers.REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_restore_on_8_4_1_devices(reference_run, tone_benchmark, compile_cache, helpers):
    runs = [_restore(helpers, reference_run, tone_benchmark, d, f, compile_cache) for d, f in ((8, 2), (4, 4), (1, 1))]
    assert [r["devices"] for r in runs] == [8, 4, 1]
    assert runs[0]["mesh"] == {"data": 4, "fsdp": 2} and runs[1]["mesh"] == {"data": 1, "fsdp": 4}
    assert runs[0]["sharded"] and runs[1]["sharded"] and not runs[2]["sharded"]  # FSDP text matrices really sharded
    assert all(r["step"] == 8 for r in runs)
    assert runs[0]["sha256"] == runs[1]["sha256"] == runs[2]["sha256"]
    evals = [r["eval"] for r in runs]
    assert evals[0] and set(evals[0]) == set(evals[1]) == set(evals[2])
    assert evals[0] == evals[1] == evals[2], evals
