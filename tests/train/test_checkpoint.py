"""Checkpoint mechanics on a toy pytree (no model): keep-N, fallback past damaged checkpoints,
refusal to start over when nothing is readable, and a failed save (full disk) keeping the last one."""

import errno
import logging
from pathlib import Path
from unittest import mock

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import distributed


def _state(step: int, mesh):
    sharding = distributed.batch_sharding(mesh)
    w = jax.device_put(np.arange(16, dtype=np.float32) * step, sharding)
    return {"step": jnp.asarray(step), "w": w}


def _abstract(mesh):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state(0, mesh))


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


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_falls_back_with_warning(tmp_path, caplog, damage):
    mesh = distributed.make_mesh()
    _save_steps(tmp_path, [2, 4], mesh)
    newest = tmp_path / "checkpoints" / "4" / "state"
    files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in files:
        if damage == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
        else:
            p.unlink()
    with caplog.at_level(logging.WARNING, logger="clapcomp.train"):
        state, it = _restore(tmp_path, mesh)
    assert int(state["step"]) == 2 and next(it) == 3  # the iterator position of step 2 too
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 4" in warning and "unreadable" in warning
    assert (tmp_path / "checkpoints_unreadable" / "4").is_dir()  # set aside, so step 4 can be saved again
    _save_steps(tmp_path, [4], mesh)


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
