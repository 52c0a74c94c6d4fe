"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and resumed ends bit-identical to an
uninterrupted run: same parameters, optimizer state and BatchNorm statistics."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # multi-process / end-to-end: `make test-fast` skips it


def _start(h, workdir, records, cache):
    return subprocess.Popen(
        h.train_cmd(workdir, records, *h.REFERENCE),
        env=h.train_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc, timeout=600):
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"trainer exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < end, "timed out waiting for the trainer"
        time.sleep(0.02)


def test_sigkill_after_checkpoint_then_resume_is_bitwise_identical(
    tmp_path, tone_records, compile_cache, reference_run, helpers
):
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


def test_sigterm_saves_exits_cleanly_and_resume_is_bitwise_identical(
    tmp_path, tone_records, compile_cache, reference_run, helpers
):
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


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corrupt_newest_checkpoint_falls_back_and_still_matches(
    tmp_path, tone_records, compile_cache, reference_run, helpers
):
    h = helpers
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    for p in (workdir / "checkpoints" / "8" / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 0:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated files
    truncated = _snapshot(workdir / "checkpoints" / "8")
    r = h.run_train(workdir, tone_records, *h.REFERENCE, cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint step 8" in r.stderr and "corrupt" in r.stderr and "resuming at step 4" in r.stderr
    # Reaching step 8 again, the trainer kept the truncated files (byte for byte) and said where.
    assert f"kept at {workdir / 'checkpoints_corrupt' / '8'}" in r.stderr
    assert _snapshot(workdir / "checkpoints_corrupt" / "8") == truncated
    events = [json.loads(line)["event"] for line in (workdir / "restore_log.jsonl").read_text().splitlines()]
    assert events == ["skipped_corrupt_step", "corrupt_step_kept_aside"]
    h.assert_states_bitwise_equal(h.read_state(reference_run, 8), h.read_state(workdir, 8))


def test_wrong_model_flag_is_refused_untouched_then_correct_command_resumes(
    tmp_path, tone_records, compile_cache, reference_run, helpers
):
    h = helpers
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")  # as if killed after the step-4 checkpoint
    before = _snapshot(workdir)
    r = h.run_train(workdir, tone_records, *h.REFERENCE, "--config.model.projection_dim=16", cache=compile_cache)
    assert r.returncode != 0
    assert "model.projection_dim: 32 in" in r.stderr and "16 in the config" in r.stderr
    assert "--config.init.kind=checkpoint" in r.stderr and "keep their shapes" in r.stderr
    assert _snapshot(workdir) == before  # every checkpoint file and config.json byte-identical

    # The correct command (with a cadence change a resume may make) resumes at step 4 and matches.
    r = h.run_train(workdir, tone_records, *h.REFERENCE, "--config.log_every=2", cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 4" in r.stderr and "changed setting log_every: 1 -> 2" in r.stderr
    assert json.loads((workdir / "config.json").read_text())["log_every"] == 2
    h.assert_states_bitwise_equal(h.read_state(reference_run, 8), h.read_state(workdir, 8))


def test_load_newest_or_explicit_step_and_a_corrupt_step_is_an_error(tmp_path, reference_run, helpers):
    import shutil

    import jax
    import pytest
    from flax import nnx

    import clapcomp
    from clapcomp.train import checkpoint as ckpt_lib

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    for step in (8, 4):
        params = ckpt_lib.load_weights(workdir, step=None if step == 8 else step)[2]
        helpers.assert_states_bitwise_equal(
            helpers.read_state(reference_run, step).params, jax.tree_util.tree_map(np.asarray, params)
        )
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no step 5; it holds steps \[4, 8\]"):
        ckpt_lib.load_weights(workdir, step=5)

    arrays = max(
        (p for p in (workdir / "checkpoints" / "8" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit: same size, only the sha256 differs
    arrays.write_bytes(bytes(data))
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"step 8 .* cannot be read \(CorruptFile: {arrays}: sha256"):
        ckpt_lib.load_weights(workdir)

    for p in (workdir / "checkpoints" / "8" / "state").rglob("*"):
        if p.is_file() and p.stat().st_size > 0:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ckpt_lib.CheckpointError, match=r"step 8 .* cannot be read.*--step 4"):
        clapcomp.load(workdir)  # never a quiet older model
    from clapcomp import export

    with pytest.raises(ckpt_lib.CheckpointError, match="step 8"):
        export.main(["--model", str(workdir), "--format", "safetensors", "--out", str(tmp_path / "x")])
    assert (
        export.main(["--model", str(workdir), "--format", "safetensors", "--out", str(tmp_path / "e4"), "--step", "4"])
        == 0
    )
    model = clapcomp.load(tmp_path / "e4").model  # the export of step 4 ...
    loaded = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
    helpers.assert_states_bitwise_equal(helpers.read_state(reference_run, 4).params, loaded)
    model = clapcomp.load(workdir, step=4).model  # ... equals step 4 loaded from the workdir

    loaded = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
    helpers.assert_states_bitwise_equal(helpers.read_state(reference_run, 4).params, loaded)
