"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and resumed ends bit-identical to an
uninterrupted run: same parameters, optimizer state and BatchNorm statistics."""

import json
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow  # multi-process / end-to-end: `make test-fast` skips it


def _start(h, workdir, records, cache):
    return subprocess.Popen(h.train_cmd(workdir, records, *h.REFERENCE), env=h.train_env(cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=600):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"trainer exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < end, "timed out waiting for the trainer"
        time.sleep(0.02)


def test_sigkill_after_checkpoint_then_resume_is_bitwise_identical(tmp_path, tone_records, compile_cache, reference_run, helpers):
    h = helpers
    workdir = tmp_path / "run"
    proc = _start(h, workdir, tone_records, compile_cache)
    _wait_for(lambda: (workdir / "checkpoints" / "4").is_dir(), proc)
    proc.kill()  # SIGKILL: no handler runs, the async write of anything later is cut off
    assert proc.wait() == -signal.SIGKILL
    assert not (workdir / "checkpoints" / "8").exists()

    r = h.run_train(workdir, tone_records, *h.REFERENCE, cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 4" in r.stderr
    h.assert_states_bitwise_equal(h.read_state(reference_run, 8), h.read_state(workdir, 8))


def test_sigterm_saves_exits_cleanly_and_resume_is_bitwise_identical(tmp_path, tone_records, compile_cache, reference_run, helpers):
    h = helpers
    workdir = tmp_path / "run"
    proc = _start(h, workdir, tone_records, compile_cache)
    metrics = workdir / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    stopped_at = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert saved[-1] == stopped_at < 8  # the step it was on when the signal came

    r = h.run_train(workdir, tone_records, *h.REFERENCE, cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming at step {stopped_at}" in r.stderr
    h.assert_states_bitwise_equal(h.read_state(reference_run, 8), h.read_state(workdir, 8))


def test_corrupt_newest_checkpoint_falls_back_and_still_matches(tmp_path, tone_records, compile_cache, reference_run, helpers):
    h = helpers
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    for p in (workdir / "checkpoints" / "8" / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 0:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated files
    r = h.run_train(workdir, tone_records, *h.REFERENCE, cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint step 8" in r.stderr and "unreadable" in r.stderr and "resuming at step 4" in r.stderr
    h.assert_states_bitwise_equal(h.read_state(reference_run, 8), h.read_state(workdir, 8))
