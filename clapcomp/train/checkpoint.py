"""Orbax checkpoints of the train state + the grain data iterator, one step directory each.

Layout of a workdir:
    <workdir>/config.json                 the resolved training config (`model` = ClapConfig fields)
    <workdir>/checkpoints/<step>/state    TrainState (Orbax StandardSave: step, params, model_state,
                                          opt_state, nonfinite_run)
    <workdir>/checkpoints/<step>/data     the grain iterator position (one JSON per process)

Saves are asynchronous (the device->host copy blocks, the writes run in the background) and atomic
(Orbax writes a temporary directory and renames it when complete), so a process killed at any
moment leaves every finished checkpoint intact. `restore` reads the newest checkpoint into the
*current* mesh's abstract state (resharding on read: 8-device checkpoints restore on 4 or 1); if
it is unreadable (truncated or deleted files) it warns, names the skipped step and the reason,
moves it to `<workdir>/checkpoints_unreadable/` and falls back to the next newest. It never starts
from scratch silently: when checkpoints exist and none can be read, it raises.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from clapcomp.train import state as state_lib

log = logging.getLogger("clapcomp.train")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be read."""


class Checkpointer:
    """Keep-N async checkpoints of (TrainState, data iterator) under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str | Path, *, keep: int):
        import orbax.checkpoint as ocp

        self.workdir = Path(workdir)
        self.directory = self.workdir / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: state_lib.TrainState, iterator) -> None:
        """Starts an async save of `state` and `iterator` as checkpoint `step` (returns once the
        arrays are on the host). A failure (e.g. a full disk) raises CheckpointError; earlier
        checkpoints are untouched because Orbax only renames a step directory once complete."""
        args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(state), data=_grain_args(save=True)(iterator))
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:
            raise self._save_error(step, e) from e

    def wait(self) -> None:
        """Blocks until the pending async save is on disk; raises CheckpointError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(None, e) from e

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def _save_error(self, step, e: Exception) -> CheckpointError:
        done = [s for s in self.steps() if s != step]
        kept = f"the previous checkpoint (step {done[-1]}) is intact" if done else "no earlier checkpoint exists"
        return CheckpointError(
            f"saving checkpoint{'' if step is None else f' step {step}'} in {self.directory} failed: "
            f"{type(e).__name__}: {e}. {kept}. Free disk space (or fix the path's permissions) and "
            "rerun the same command: training resumes from the newest intact checkpoint."
        )

    def restore(self, abstract: state_lib.TrainState, iterator):
        """Newest readable checkpoint -> TrainState laid out as `abstract` (iterator positioned in
        place). None when there is no checkpoint; unreadable ones are skipped with a warning."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            args = self._ocp.args.Composite(
                state=self._ocp.args.StandardRestore(abstract), data=_grain_args(save=False)(iterator)
            )
            try:
                return self.manager.restore(step, args=args).state
            except Exception as e:  # Orbax / tensorstore raise many types for damaged files
                self._set_aside(step, e)
        if steps:
            raise CheckpointError(
                f"checkpoints {steps} exist in {self.directory} but none can be read (see the warnings above); "
                "refusing to start from scratch over them. Move the workdir away to start a new run."
            )
        return None

    def _set_aside(self, step: int, e: Exception) -> None:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        aside = self.workdir / "checkpoints_unreadable" / str(step)
        log.warning(
            "checkpoint step %d in %s is unreadable (%s); skipping it, moving it to %s and falling back "
            "to an older checkpoint", step, self.directory, reason, aside,
        )
        multihost_utils.sync_global_devices(f"set_aside_{step}_a")
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(aside, ignore_errors=True)
            shutil.move(str(self.directory / str(step)), aside)
        multihost_utils.sync_global_devices(f"set_aside_{step}_b")
        self.manager.reload()


def _grain_args(save: bool):
    import grain.checkpoint

    return grain.checkpoint.CheckpointSave if save else grain.checkpoint.CheckpointRestore


def save_config(workdir: str | Path, config) -> None:
    """The resolved config as `<workdir>/config.json` (process 0 only)."""
    if jax.process_index() == 0:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        tmp = Path(workdir) / "config.json.tmp"  # write + rename: a kill mid-write never truncates config.json
        tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, Path(workdir) / "config.json")


def read_config(workdir: str | Path):
    """`<workdir>/config.json` -> ml_collections.ConfigDict."""
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {workdir} a clapcomp training workdir (clapcomp train --workdir)?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_weights(workdir: str | Path, mesh: Mesh | None = None):
    """A training workdir's newest readable checkpoint -> (ClapConfig, graphdef, params, model_state).

    For inference, export and `init.kind="checkpoint"`; arrays are laid out on `mesh` (default: one
    local device)."""
    import orbax.checkpoint as ocp

    config = read_config(workdir)
    if mesh is None:
        mesh = Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    abstract = state_lib.abstract_state(config, mesh)
    manager = ocp.CheckpointManager(Path(workdir, "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:
            log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying an older one", step, workdir, type(e).__name__, e)
            continue
        graphdef = state_lib.abstract_model(config)[0]
        return state_lib.model_config(config), graphdef, restored.params, restored.model_state
    raise CheckpointError(f"no readable checkpoint under {workdir}/checkpoints; train first or pass another workdir")


def load_model(workdir: str | Path):
    """A training workdir -> (ClapConfig, ClapModel) with the newest readable weights."""
    cfg, graphdef, params, model_state = load_weights(workdir)
    return cfg, nnx.merge(graphdef, params, model_state)
