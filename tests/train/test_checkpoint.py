"""Checkpoint mechanics on a toy pytree (no model): keep-N, fallback past damaged checkpoints,
refusal to start over when nothing is readable, and a failed save (full disk) keeping the last one."""

import errno
import json
import logging
from pathlib import Path
from unittest import mock

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clapcomp import fs
from clapcomp.data.pipeline import DeviceIterator
from clapcomp.data.reasons import READ_REASONS
from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import distributed
from clapcomp.train.config import defaults


def _state(step: int, mesh):
    sharding = distributed.batch_sharding(mesh)
    w = jax.device_put(np.arange(16, dtype=np.float32) * step, sharding)
    return {"step": jnp.asarray(step), "w": w}


def _abstract(mesh):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0, mesh)
    )


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _save_steps(workdir: Path, steps, mesh, keep=5):
    ck = ckpt_lib.Checkpointer(workdir, keep=keep)
    it = _iterator()
    for s in steps:
        for _ in range(3):  # the iterator advances 3 elements per "step"
            next(it)
        ck.save(s, _state(s, mesh), it)
        ck.wait()
    ck.close()


def _restore(workdir, mesh):
    ck = ckpt_lib.Checkpointer(workdir, keep=5)
    it = _iterator()
    state = ck.restore(_abstract(mesh), it)
    ck.close()
    return state, it


def test_restore_newest_with_iterator_position(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4, 6], mesh, keep=2)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    state, it = _restore(tmp_path, mesh)
    assert int(state["step"]) == 6
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(16) * 6.0)
    assert next(it) == 9  # 3 steps x 3 elements consumed before the save


def test_restore_onto_fewer_devices(tmp_path):
    _save_steps(tmp_path, [3], distributed.make_mesh())  # 8 devices
    small = jax.make_mesh((2, 1), distributed.AXES, devices=jax.devices()[:2])
    state, _ = _restore(tmp_path, small)
    assert state["w"].sharding.mesh.shape == {"data": 2, "fsdp": 1}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(16) * 3.0)


def _snapshot(root: Path) -> dict:
    """Every file under `root` -> its bytes (to prove a restore changed nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _log_events(workdir: Path) -> list[dict]:
    path = workdir / "restore_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_falls_back_and_leaves_files_in_place(tmp_path, caplog, damage):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    newest = tmp_path / "checkpoints" / "4" / "state"
    files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in files:
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
        else:
            p.unlink()
    before = _snapshot(tmp_path / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="clapcomp.train"):
        state, it = _restore(tmp_path, mesh)
    assert int(state["step"]) == 2 and next(it) == 3  # the iterator position of step 2 too
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 4" in warning and "corrupt" in warning
    assert _snapshot(tmp_path / "checkpoints") == before  # nothing moved, nothing deleted
    assert [(e["event"], e["step"]) for e in _log_events(tmp_path)] == [("skipped_corrupt_step", 4)]

    # Training continues from step 2 and reaches step 4 again: the corrupt copy is kept aside, loudly.
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    it = _iterator()
    with caplog.at_level(logging.WARNING, logger="clapcomp.train"):
        ck.restore(_abstract(mesh), it)
        ck.save(4, _state(4, mesh), it)
    ck.close()
    assert "checkpoints_corrupt" in caplog.text
    kept = {k.removeprefix("4/"): v for k, v in before.items() if k.startswith("4/")}
    assert _snapshot(tmp_path / "checkpoints_corrupt" / "4") == kept
    assert _log_events(tmp_path)[-1]["event"] == "corrupt_step_kept_aside"
    state, _ = _restore(tmp_path, mesh)
    assert int(state["step"]) == 4


def test_every_flipped_byte_is_detected_and_the_previous_step_restored(tmp_path, caplog):
    """One byte flipped in any file of the newest step (array data, metadata, iterator position): the
    step's sha256.json catches it, the restore falls back to step 2, loudly, and no file changes."""
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    step_dir = tmp_path / "checkpoints" / "4"
    listed = json.loads((step_dir / fs.MANIFEST).read_text())["sha256"]
    assert any(k.startswith("state/") for k in listed) and any(k.startswith("data/") for k in listed)
    rng = np.random.default_rng(0)
    for rel in sorted(listed):
        path = step_dir / rel
        original = path.read_bytes()
        if not original:
            continue
        flipped = bytearray(original)
        flipped[int(rng.integers(len(original)))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(flipped))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clapcomp.train"):
            state, it = _restore(tmp_path, mesh)
        assert int(state["step"]) == 2 and next(it) == 3, rel
        assert f"checkpoint step 4 in {tmp_path / 'checkpoints'} is corrupt (CorruptFile: {path}" in caplog.text
        assert path.read_bytes() == bytes(flipped)  # left in place
        path.write_bytes(original)
    state, _ = _restore(tmp_path, mesh)  # all bytes back: step 4 verifies again
    assert int(state["step"]) == 4
    assert [e["step"] for e in _log_events(tmp_path)] == [4] * sum(1 for r in listed if (step_dir / r).stat().st_size)


def test_back_to_back_async_saves_each_get_their_own_manifest(tmp_path):
    """As the train loop saves: no wait between saves (Orbax's save waits for the previous one itself)."""
    mesh = distributed.make_mesh()
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    it = _iterator()
    for s in (2, 4, 6):
        ck.save(s, _state(s, mesh), it)
    ck.close()
    for s in (2, 4, 6):
        step_dir = tmp_path / "checkpoints" / str(s)
        assert fs.verify_manifest(step_dir), s
        listed = json.loads((step_dir / fs.MANIFEST).read_text())["sha256"]
        assert any(k.startswith("state/") for k in listed) and "data/process_0-of-1.json" in listed


def test_step_without_manifest_restores_unverified_with_a_warning(tmp_path, caplog):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2], mesh)
    (tmp_path / "checkpoints" / "2" / fs.MANIFEST).unlink()  # as saved before manifests existed
    with caplog.at_level(logging.WARNING, logger="clapcomp.train"):
        state, _ = _restore(tmp_path, mesh)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(16) * 2.0)
    assert "has no sha256.json" in caplog.text and "unverified" in caplog.text


def test_shape_mismatch_is_refused_before_touching_anything(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    before = _snapshot(tmp_path)
    wrong = {**_abstract(mesh), "w": jax.ShapeDtypeStruct((8,), np.float32, sharding=distributed.batch_sharding(mesh))}
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    with pytest.raises(ckpt_lib.IncompatibleCheckpoint) as info:
        ck.restore(wrong, _iterator())
    ck.close()
    assert "w: ((16,), 'float32') -> ((8,), 'float32')" in str(info.value)
    assert "--config.init.kind=checkpoint" in str(info.value)
    assert _snapshot(tmp_path) == before


def test_other_process_count_is_refused_unless_params_only(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2], mesh)
    data = tmp_path / "checkpoints" / "2" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")  # as written by 2 processes
    fs.write_manifest(data.parent, exclude=ckpt_lib._REWRITTEN)  # as a 2-process run's manifest lists it
    before = _snapshot(tmp_path)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    with pytest.raises(ckpt_lib.IncompatibleCheckpoint, match="2 process.*this run has 1.*--restore=params_only"):
        ck.restore(_abstract(mesh), _iterator())
    assert _snapshot(tmp_path) == before
    it = _iterator()
    state = ck.restore(_abstract(mesh), it, mode="params_only")
    ck.close()
    assert int(state["step"]) == 2 and next(it) == 0  # weights restored, data iterator from the start


def test_transient_read_error_is_retried_refused_and_then_resumes(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    before = _snapshot(tmp_path)
    denied = PermissionError(errno.EACCES, "Permission denied", "process_0-of-1.json")
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5, retries=2, backoff_s=0.01)
    with mock.patch("grain._src.python.checkpoint.handler.CheckpointHandler.restore", side_effect=denied) as read:
        with pytest.raises(ckpt_lib.TransientCheckpointError, match="failed 3 times with PermissionError"):
            ck.restore(_abstract(mesh), _iterator())
    assert read.call_count == 3  # tried, then retried twice; never reclassified as corrupt
    assert _snapshot(tmp_path) == before and not _log_events(tmp_path)
    state, it = _restore(tmp_path, mesh)  # the fault cleared
    assert int(state["step"]) == 4 and next(it) == 6


def test_a_fault_that_clears_during_the_retries_resumes_the_newest_step(tmp_path):
    import orbax.checkpoint as ocp

    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    real, calls = ocp.StandardCheckpointHandler.metadata, []

    def flaky(self, directory):  # the first two reads of the metadata fail, as on a storage hiccup
        calls.append(directory)
        if len(calls) <= 2:
            raise OSError(errno.EIO, "Input/output error", str(directory))
        return real(self, directory)

    ck = ckpt_lib.Checkpointer(tmp_path, keep=5, retries=2, backoff_s=0.01)
    with mock.patch.object(ocp.StandardCheckpointHandler, "metadata", flaky):
        state = ck.restore(_abstract(mesh), _iterator())
    ck.close()
    assert int(state["step"]) == 4 and len(calls) == 3 and not _log_events(tmp_path)


def test_unknown_read_error_is_not_treated_as_corrupt(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    before = _snapshot(tmp_path)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    with mock.patch("grain._src.python.checkpoint.handler.CheckpointHandler.restore", side_effect=KeyError("x")):
        with pytest.raises(ckpt_lib.CheckpointError, match="unexpected KeyError"):
            ck.restore(_abstract(mesh), _iterator())
    ck.close()
    assert _snapshot(tmp_path) == before


def test_skip_counters_are_saved_with_the_step(tmp_path):
    mesh = distributed.make_mesh()
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    ck.save(2, _state(2, mesh), _iterator(), skips={"corrupt_audio": 3, "timeout": 1})
    ck.close()
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    ck.restore(_abstract(mesh), _iterator())
    ck.close()
    assert ck.restored_skips == {"corrupt_audio": 3, "timeout": 1}
    # `corrupt_audio` is how older versions spelled `corrupt`: the pipeline counts on under the new name
    it = DeviceIterator(grain.MapDataset.range(4).to_iter_dataset(), mesh)
    it.restore_skips(ck.restored_skips)
    assert it.skip_totals() == {**dict.fromkeys(READ_REASONS, 0), "corrupt": 3, "timeout": 1}


def test_config_changes_split_into_accepted_and_refused():
    import ml_collections

    saved = {
        "total_steps": 8,
        "loss": "compa",
        "model": {"projection_dim": 32, "htsat": {"depths": [1, 1]}},
        "optimizer": {"lr": 0.01, "warmup_steps": 3},
        "data": {"workers": 0, "batch_size": 8},
    }
    new = ml_collections.ConfigDict(
        {
            "total_steps": 16,
            "loss": "plain",
            "model": {"projection_dim": 32, "htsat": {"depths": (1, 1)}},
            "optimizer": {"lr": 0.01, "warmup_steps": 5},
            "data": {"workers": 2, "batch_size": 8},
            "log_every": 5,
        }
    )
    accepted, refused = ckpt_lib.config_changes(saved, new)
    assert accepted == [
        "data.workers: 0 -> 2",
        f"log_every: {defaults().log_every} -> 5",  # absent from config.json: its default
        "optimizer.warmup_steps: 3 -> 5",
        "total_steps: 8 -> 16",
    ]
    assert refused == ["loss: 'compa' -> 'plain'"]  # the tuple/list spelling of depths is no change


def test_a_field_newer_than_config_json_is_its_default():
    """A run saved before model.audio.padding existed used repeat-padding, the field's default."""
    saved = json.loads(json.dumps(defaults().to_dict()))  # as config.json holds it
    del saved["model"]["audio"]["padding"]
    assert ckpt_lib.config_changes(saved, defaults()) == ([], [])
    zeros = defaults()
    zeros.model.audio.padding = "pad"
    assert ckpt_lib.config_changes(saved, zeros) == ([], ["model.audio.padding: 'repeatpad' -> 'pad'"])


def test_nothing_readable_refuses_to_start_over(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2], mesh)
    for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.raises(ckpt_lib.CheckpointError, match="refusing to start from scratch"):
        _restore(tmp_path, mesh)


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert _restore(tmp_path, distributed.make_mesh())[0] is None


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2], mesh)
    ck = ckpt_lib.Checkpointer(tmp_path, keep=5)
    full = OSError(errno.ENOSPC, "No space left on device")
    with mock.patch("grain._src.python.checkpoint.handler.CheckpointHandler.save", side_effect=full):
        with pytest.raises(ckpt_lib.CheckpointError) as info:
            ck.save(4, _state(4, mesh), _iterator())
            ck.wait()
    message = str(info.value)
    assert "No space left on device" in message and "previous checkpoint (step 2) is intact" in message
    state, _ = _restore(tmp_path, mesh)
    assert int(state["step"]) == 2


def test_resume_classes_hold_for_a_field_set_to_its_default():
    """Resuming a run saved with batch 8 and log_every 1, both now set on purpose to their defaults: the
    fixed field is refused, the resumable one accepted; `overrides` (a record) is never a change."""
    saved = json.loads(json.dumps(defaults().to_dict()))
    saved.update(log_every=1, overrides=["log_every"])
    saved["data"]["batch_size"] = 8
    new = defaults()
    new.overrides = ["data.batch_size", "log_every"]  # --config.data.batch_size=256 --config.log_every=50
    assert ckpt_lib.config_changes(saved, new) == (["log_every: 1 -> 50"], ["data.batch_size: 8 -> 256"])


@pytest.mark.parametrize(("mode", "pick"), [("max", max), ("min", min)])
def test_keep_best_keeps_the_newest_and_the_best_evaluated_step(tmp_path, mode, pick):
    """keep=2 + keep_best: steps 1..7 saved, 2, 4, 6 evaluated; kept: 6, 7 and the best of 2, 4, 6."""
    import ml_collections

    mesh = distributed.make_mesh()
    scores = {2: 0.9, 4: 0.3, 6: 0.5}
    ck = ckpt_lib.Checkpointer(tmp_path, keep=2, keep_best="eval/r/m", keep_best_mode=mode)
    it = _iterator()
    for s in range(1, 8):
        metrics = {"eval/r/m": scores[s], "eval/r/other": -scores[s]} if s in scores else {}
        ck.save(s, _state(s, mesh), it, metrics=metrics)
        ck.wait()
    best = pick(scores, key=scores.get)
    assert ck.steps() == sorted({6, 7, best})
    ck.close()
    config = ml_collections.ConfigDict(dict(keep_best="eval/r/m", keep_best_mode=mode))
    manager = ckpt_lib.read_only_manager(tmp_path / "checkpoints")
    assert ckpt_lib.best_step(manager, config, tmp_path) == best
    with pytest.raises(ckpt_lib.CheckpointError, match="trained without config.keep_best"):
        ckpt_lib.best_step(manager, ml_collections.ConfigDict(dict(keep_best="")), tmp_path)


def test_a_config_json_written_before_a_field_existed_reads_with_its_default(tmp_path):
    saved = defaults().to_dict()
    del saved["lora"], saved["ema_decay"], saved["model"]["projection_dim"]
    saved["total_steps"], saved["model"]["text"]["dropout"] = 7, 0.3
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = ckpt_lib.read_config(tmp_path)
    want = defaults()
    assert config.lora.to_dict() == want.lora.to_dict() and config.ema_decay == want.ema_decay
    assert config.model.projection_dim == want.model.projection_dim
    assert config.total_steps == 7 and config.model.text.dropout == 0.3  # the file's values stay
