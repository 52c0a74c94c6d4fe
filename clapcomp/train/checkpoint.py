"""Orbax checkpoints of the train state + the grain data iterator, one step directory each.

Layout of a workdir:
    <workdir>/config.json                 the resolved training config (`model` = ClapConfig fields)
    <workdir>/checkpoints/<step>/state    TrainState (Orbax PyTree: step, params, model_state,
                                          opt_state, nonfinite_run)
    <workdir>/checkpoints/<step>/data     the grain iterator position (one JSON per process)
    <workdir>/checkpoints/<step>/metrics  with `config.keep_best`: the evaluators' metrics of that step
    <workdir>/checkpoints/<step>/sha256.json  sha256 + size of every file of the step (clapcomp.fs), written
                                          by process 0 once the step's files are complete, before Orbax
                                          renames the step into place (so it commits with the step)
    <workdir>/restore_log.jsonl           what a restore skipped or accepted (one JSON per event)

Saves are asynchronous (the device->host copy blocks, the writes run in the background) and atomic
(Orbax writes a temporary directory and renames it when complete), so a process killed at any
moment leaves every finished checkpoint intact. `restore` reads the newest checkpoint into the
*current* mesh's abstract state (resharding on read: 8-device checkpoints restore on 4 or 1). What
happens when a step cannot be read depends on the cause, and no file is ever moved or deleted by a
restore:
- incompatible (array tree, shape or dtype differs from the current config; the data state was
  written by another process count) -> `IncompatibleCheckpoint`, naming what differs and how to go on;
- corrupt (missing or truncated files, or bytes that differ from the step's sha256.json: checked on
  every restore, alongside the read) -> skipped, recorded in restore_log.jsonl, the previous step
  is tried; when training later reaches a skipped step number again, `save` keeps the corrupt copy
  as `<workdir>/checkpoints_corrupt/<step>` (loudly) before writing the new one;
- transient I/O (permission, I/O errors) -> retried with back-off, then `TransientCheckpointError`;
- anything else -> `CheckpointError` with the original error; nothing is skipped.
It never starts from scratch over existing checkpoints: when none can be read, it raises. A step
without sha256.json (saved before manifests existed) is restored unverified, with a warning.

Kept: the newest `config.keep_checkpoints` steps (for resume) and, with `config.keep_best =
"eval/<label>/<metric>"`, also the evaluated step with the best value of that metric (the highest, or the
lowest with `keep_best_mode="min"`): Orbax's LatestN + BestN preservation policies. `load_weights(...,
best=True)` (`clapcomp.load(workdir, best=True)`) reads that step.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from clapcomp import fs
from clapcomp.models import lora as lora_lib
from clapcomp.train import state as state_lib
from clapcomp.train.config import RESTORE_MODES, defaults, fields_of, flat

log = logging.getLogger("clapcomp.train")

# tensorstore/Orbax report file problems as ValueError/RuntimeError with an absl status name.
_CORRUPT_STATUS = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "Error decoding", "Error reading")
_TRANSIENT_STATUS = ("PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")


# Orbax rewrites the step's metadata (timestamps) after the post-finalisation hook: not in the manifest.
_REWRITTEN = ("_CHECKPOINT_METADATA",)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be read."""


class IncompatibleCheckpoint(CheckpointError):
    """The newest checkpoint cannot be restored into the current config (nothing was changed)."""


class ForeignWorkdir(CheckpointError):
    """A fresh run was pointed at a folder holding another run's files (nothing was changed)."""


class TransientCheckpointError(CheckpointError):
    """Reading a checkpoint kept failing with an I/O error that may clear (nothing was changed)."""


def cause(e: BaseException) -> str | None:
    """ "corrupt" | "transient" | None (unknown) for an exception raised while reading a step."""
    if isinstance(e, fs.CorruptFile):
        return "corrupt"
    if isinstance(
        e,
        (FileNotFoundError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError, EOFError),
    ):
        return "corrupt"
    if isinstance(e, OSError):
        return "transient"
    text = str(e)
    if any(s in text for s in _TRANSIENT_STATUS):
        return "transient"
    if isinstance(e, (ValueError, RuntimeError)) and any(s in text for s in _CORRUPT_STATUS):
        return "corrupt"
    return None


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class Checkpointer:
    """Keep-N async checkpoints of (TrainState, data iterator) under `<workdir>/checkpoints`, plus the best
    by `keep_best` (a key of the metrics `save` gets; "": none) in `keep_best_mode` ("max" | "min")."""

    def __init__(self, workdir: str | Path, *, keep: int, keep_best: str = "", keep_best_mode: str = "max",
                 retries: int = 3, backoff_s: float = 1.0):  # fmt: skip
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as policies

        self.workdir = fs.as_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.retries, self.backoff_s = retries, backoff_s
        self.skipped_corrupt: list[int] = []
        self.restored_skips: dict = {}  # the skip counters saved with the restored step
        self._saving: list[int] = []  # steps whose async saves are not finalised yet, oldest first
        self.keep_best = keep_best
        check_keep_best_mode(keep_best_mode)
        keeping = dict(max_to_keep=keep)
        if keep_best:
            worst = float("inf") if keep_best_mode == "min" else float("-inf")
            metric = lambda metrics: metrics.get(keep_best, worst)  # a step saved without evaluation: {}
            best = policies.BestN(
                get_metric_fn=metric, reverse=keep_best_mode == "min", n=1, keep_checkpoints_without_metrics=False
            )
            keeping = dict(preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(n=keep), best]),
                           best_fn=metric, best_mode=keep_best_mode)  # fmt: skip
        options = ocp.CheckpointManagerOptions(
            **keeping,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest),
        )
        self._ocp = ocp
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()  # the other items: Orbax's (and grain's) own
        state_handler = _state_handler(ocp)
        handlers.add("state", ocp.args.PyTreeSave, state_handler)
        handlers.add("state", ocp.args.PyTreeRestore, state_handler)
        self.manager = ocp.CheckpointManager(fs.absolute(self.directory), options=options, handler_registry=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: state_lib.TrainState, iterator, *, skips: dict | None = None,
             metrics: dict | None = None) -> None:  # fmt: skip
        """Starts an async save of `state`, `iterator` (and the data pipeline's skip counters
        `skips`, {reason: n}; the evaluators' `metrics` of this state, with `keep_best`) as checkpoint
        `step` (returns once the
        arrays are on the host). A failure (e.g. a full disk) raises CheckpointError; earlier
        checkpoints are untouched because Orbax only renames a step directory once complete.
        The first save after a restore that skipped corrupt steps keeps those as
        `<workdir>/checkpoints_corrupt/<step>` (Orbax never writes over an existing step, and its
        keep-N rule would otherwise count them and delete good checkpoints)."""
        if self.skipped_corrupt:
            self._keep_corrupt_aside(step)
        items = {"state": self._ocp.args.PyTreeSave(state), "data": _grain_args(save=True)(iterator)}
        if skips is not None:
            items["skips"] = self._ocp.args.JsonSave(skips)
        self._saving.append(step)  # (Orbax's save first waits for the previous one: its hook pops that step)
        try:
            self.manager.save(step, args=self._ocp.args.Composite(**items), force=True, metrics=metrics)
        except Exception as e:
            if self._saving and self._saving[-1] == step:
                self._saving.pop()
            raise self._save_error(step, e) from e

    def _write_manifest(self) -> None:
        """Orbax's post-finalisation hook (background thread, every process): once the step's files are
        complete and before its temporary folder is renamed, process 0 writes their sha256.json into it."""
        if not self._saving:
            return
        step = self._saving.pop(0)  # saves finalise in the order they were started
        if jax.process_index() != 0:
            return
        tmp = [p for p in glob.glob(str(self.directory / f"{step}.orbax-checkpoint-tmp*")) if os.path.isdir(p)]
        target = tmp[0] if len(tmp) == 1 else self.directory / str(step)  # no temporary folder on GCS: in place
        fs.write_manifest(target, exclude=_REWRITTEN)

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

    def _keep_corrupt_aside(self, step: int) -> None:
        multihost_utils.sync_global_devices(f"corrupt_aside_{step}_a")
        for s in self.skipped_corrupt:
            aside = self.workdir / "checkpoints_corrupt" / str(s)
            if aside.exists():
                aside = aside.with_name(f"{s}-{time.strftime('%Y%m%dT%H%M%S')}")
            log.warning(
                "checkpoint step %d was corrupt (skipped at restore, see %s); training continued from an older "
                "step, so before saving step %d the corrupt files are kept at %s (nothing is deleted)",
                s,
                self.workdir / "restore_log.jsonl",
                step,
                aside,
            )
            if jax.process_index() == 0 and (self.directory / str(s)).exists():
                aside.parent.mkdir(parents=True, exist_ok=True)
                fs.move(self.directory / str(s), aside)
                record(self.workdir, "corrupt_step_kept_aside", step=s, path=str(aside), before_saving=step)
        multihost_utils.sync_global_devices(f"corrupt_aside_{step}_b")
        self.skipped_corrupt = []
        self.manager.reload()

    def restore(self, abstract: state_lib.TrainState, iterator, *, mode: str = "latest"):
        """Newest readable checkpoint -> TrainState laid out as `abstract` (iterator positioned in
        place; left at its start with `mode="params_only"`). None when there is no checkpoint.
        Raises IncompatibleCheckpoint / TransientCheckpointError / CheckpointError (module doc)."""
        if mode not in RESTORE_MODES:
            raise ValueError(f"restore mode must be one of {RESTORE_MODES}, got {mode!r}")
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                with ThreadPoolExecutor(1) as pool:  # hashing runs while Orbax reads the same files
                    verified = pool.submit(self._retrying, step, functools.partial(self._verify, step))
                    try:
                        self._retrying(step, functools.partial(self._check_compatible, step, abstract, mode))
                        state = self._retrying(step, functools.partial(self._read, step, abstract, iterator, mode))
                    except Exception:
                        verified.result()  # changed bytes explain any read error: the step is corrupt
                        raise
                    verified.result()
                return state
            except CheckpointError:
                raise
            except Exception as e:
                if cause(e) != "corrupt":
                    raise CheckpointError(
                        f"reading checkpoint step {step} in {self.directory} failed with an unexpected "
                        f"{_first_line(e)}; no file was changed. Report this with the traceback above."
                    ) from e
                log.warning(
                    "checkpoint step %d in %s is corrupt (%s); leaving its files in place, recording "
                    "it in restore_log.jsonl and trying the previous step",
                    step,
                    self.directory,
                    _first_line(e),
                )
                if jax.process_index() == 0:
                    record(self.workdir, "skipped_corrupt_step", step=step, error=_first_line(e))
                self.skipped_corrupt.append(step)
        if steps:
            raise CheckpointError(
                f"checkpoints {sorted(steps)} exist in {self.directory} but none can be read (see the warnings "
                "above and restore_log.jsonl); refusing to start from scratch over them. To start a new run, "
                "pass a new --workdir; nothing in this one was changed."
            )
        return None

    def _check_compatible(self, step: int, abstract, mode: str) -> None:
        """Array tree/shapes/dtypes from the step's metadata vs `abstract`, and the data state's
        process count; raises IncompatibleCheckpoint before any array is read."""
        step_dir = self.directory / str(step)
        meta = self._ocp.StandardCheckpointHandler().metadata(step_dir / "state")
        saved = meta.tree if hasattr(meta, "tree") else meta
        diff = tree_diff(saved, abstract)
        if diff:
            raise IncompatibleCheckpoint(
                f"checkpoint step {step} in {self.directory} does not fit the current config ({len(diff)} "
                "difference(s), saved -> current):\n  " + "\n  ".join(diff[:20]) + "\nNothing was changed. "
                "Rerun with the run's own settings (see config.json), or start a new run from these weights: "
                f"--workdir NEW --config.init.kind=checkpoint --config.init.path={self.workdir}"
            )
        if mode == "latest":
            counts = {
                m.group(1)
                for f in (step_dir / "data").glob("process_*-of-*.json")
                if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))
            }
            if counts and counts != {str(jax.process_count())}:
                raise IncompatibleCheckpoint(
                    f"checkpoint step {step} in {self.directory} holds the data-iterator position of "
                    f"{'/'.join(sorted(counts))} process(es), this run has {jax.process_count()}; the per-process "
                    "position cannot be split or merged. Nothing was changed. Rerun with the same process count, "
                    "or pass --restore=params_only to restore parameters and optimizer state and restart the data "
                    "iterator from the beginning of the data."
                )

    def _verify(self, step: int) -> None:
        """Raises fs.CorruptFile when a file of the step differs from its sha256.json."""
        if not fs.verify_manifest(self.directory / str(step)):
            log.warning(
                "checkpoint step %d in %s has no %s (saved before clapcomp wrote manifests); restoring it "
                "unverified", step, self.directory, fs.MANIFEST,
            )  # fmt: skip

    def _read(self, step: int, abstract, iterator, mode: str):
        restore_args = self._ocp.checkpoint_utils.construct_restore_args(abstract)  # onto the current mesh
        items = {"state": self._ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args)}
        if mode == "latest":
            items["data"] = _grain_args(save=False)(iterator)
            if (self.directory / str(step) / "skips").is_dir():
                items["skips"] = self._ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=self._ocp.args.Composite(**items))
        self.restored_skips = dict(restored.get("skips") or {}) if "skips" in items else {}
        return restored.state

    def _retrying(self, step: int, read):
        """`read()`, retried with exponential back-off while it fails with a transient I/O error."""
        for attempt in range(self.retries + 1):
            try:
                return read()
            except CheckpointError:
                raise
            except Exception as e:
                if cause(e) != "transient":
                    raise
                if attempt == self.retries:
                    raise TransientCheckpointError(
                        f"reading checkpoint step {step} in {self.directory} failed {self.retries + 1} times with "
                        f"{_first_line(e)} (an I/O error that may clear: permissions, a storage outage). No file "
                        "was changed; fix access to the files and rerun the same command."
                    ) from e
                wait = self.backoff_s * 2**attempt
                log.warning("reading checkpoint step %d failed (%s); retrying in %.1f s", step, _first_line(e), wait)
                time.sleep(wait)


def tree_diff(saved, abstract) -> list[str]:
    """`path: saved (shape, dtype) -> current` for every leaf that differs, is missing or is new."""

    def name(k):
        return str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))

    def flat(tree, leaf):
        return {"/".join(map(name, p)): leaf(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def describe(x):
        return tuple(x.shape), str(np.dtype(x.dtype))

    a, b = flat(saved, describe), flat(abstract, describe)
    out = []
    for k in sorted(a.keys() | b.keys()):
        if a.get(k, "absent") != b.get(k, "absent"):
            out.append(f"{k}: {a.get(k, 'absent')} -> {b.get(k, 'absent')}")
    return out


def record(workdir: str | Path, event: str, **fields) -> None:
    """Appends one event to `<workdir>/restore_log.jsonl` (call from process 0)."""
    with fs.AppendFile(fs.as_path(workdir) / "restore_log.jsonl") as f:
        f.write(
            json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}) + "\n"
        )


def _grain_args(save: bool):
    import grain.checkpoint

    return grain.checkpoint.CheckpointSave if save else grain.checkpoint.CheckpointRestore


# Fields a resume may change (clapcomp.train.config.FIELDS, class "resumable"): they shape neither the saved
# arrays nor the data position (paths may move between machines). Every other field must match config.json.
RESUMABLE = tuple(sorted(fields_of("resumable")))
_RECORDS = fields_of("record")  # written by the loader: what was set on purpose, not how the run trains


def config_changes(saved: dict, config) -> tuple[list[str], list[str]]:
    """(accepted, refused) differences `field: saved -> new` between config.json and `config`. A field
    config.json lacks (written before the field existed) stands for its default, which keeps the old
    behaviour: resuming with the default is no change."""
    old, new = flat(saved), flat(json.loads(json.dumps(config.to_dict())))
    default = flat(json.loads(json.dumps(defaults().to_dict())))
    accepted, refused = [], []
    for k in sorted((old.keys() | new.keys()) - _RECORDS):
        a, b = old.get(k, default.get(k, "<absent>")), new.get(k, "<absent>")
        if a != b:
            ok = any(k == f or k.startswith(f + ".") for f in RESUMABLE)
            (accepted if ok else refused).append(f"{k}: {a!r} -> {b!r}")
    return accepted, refused


def check_resume_config(workdir: str | Path, config) -> list[str]:
    """Compares `<workdir>/config.json` with `config` before any array is read: returns the accepted
    changes, raises IncompatibleCheckpoint naming the others (nothing is changed)."""
    path = fs.as_path(workdir) / "config.json"
    if not path.is_file():
        return []
    accepted, refused = config_changes(json.loads(path.read_text()), config)
    if refused:
        new_run = f"to start a new run from its weights: --workdir NEW --config.init.kind=checkpoint --config.init.path={workdir}"
        if any(r.startswith("model.") for r in refused):
            new_run += " (only if the towers and projections keep their shapes)"
        raise IncompatibleCheckpoint(
            f"{workdir} holds checkpoints of a run whose config differs from this one in fields a resume cannot "
            "change (config.json -> command line):\n  " + "\n  ".join(refused) + "\nNothing was changed. To resume, "
            f"rerun with the run's values (drop these overrides); {new_run}. Fields a resume may change: "
            f"{', '.join(RESUMABLE)}."
        )
    return accepted


def lock_workdir(workdir: str | Path) -> fs.Lock | None:
    """One run per workdir: process 0 takes `<workdir>/.clapcomp.lock` for the run, and every process
    learns the run id and whether it was taken. Raises fs.LockHeld (naming the holder) on every process
    when another run holds it. Returns process 0's lock (release it when the run ends), else None."""
    run_id, lock, refusal = secrets.token_hex(8), None, ""
    if jax.process_index() == 0:
        try:
            lock = fs.lock_folder(workdir, purpose="clapcomp train", run_id=run_id)
        except fs.LockHeld as e:
            refusal = str(e)
    if jax.process_count() > 1:  # the lock belongs to process 0; the others share its run id
        word = np.frombuffer((run_id if lock else "0" * 16).encode(), np.uint8)
        run_id = bytes(np.asarray(multihost_utils.broadcast_one_to_all(word), np.uint8)).decode()
        if run_id == "0" * 16 and not refusal:
            refusal = f"process 0 could not lock {workdir}: another run writes there (see process 0's log)"
    if refusal:
        raise fs.LockHeld(refusal)
    log.info("run %s holds %s", run_id, fs.as_path(workdir) / fs.LOCK_NAME)
    return lock


def check_fresh_workdir(workdir: str | Path, config, tokenizer: Callable[[], Path], *, reuse: bool) -> None:
    """Before a fresh run (no checkpoint) writes into `workdir`: ForeignWorkdir when it holds another run's
    config.json (fields a resume could not change differ) or a tokenizer.json other than the run's
    (`tokenizer()`, sha256 vs config.tokenizer_sha256), unless `reuse` (then process 0 replaces that
    tokenizer.json; config.json is rewritten at the start). The same run killed before its first
    checkpoint (equal config and tokenizer) goes on. Runs before anything is created in `workdir`."""
    workdir = fs.as_path(workdir)
    if (workdir / "checkpoints").is_dir() and any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir()):
        return  # a resume: check_resume_config compares the configs
    foreign = []
    if (workdir / "config.json").is_file():
        try:
            refused = config_changes(json.loads((workdir / "config.json").read_text()), config)[1]
        except (ValueError, AttributeError) as e:
            refused = [f"unreadable ({type(e).__name__})"]
        if refused:
            foreign.append(f"a config.json of another run ({len(refused)} field(s) differ, e.g. {refused[0]})")
    tok = workdir / "tokenizer.json"
    if tok.is_file() and (digest := fs.sha256_file(tok)) != config.tokenizer_sha256:
        foreign.append(f"a tokenizer.json with sha256 {digest[:12]}..., not this run's ({tokenizer()})")
    if not foreign:
        return
    if not reuse:
        raise ForeignWorkdir(
            f"{workdir} holds no checkpoint but {' and '.join(foreign)}; a fresh run would use or overwrite them. "
            "Nothing was changed. Pass a new --workdir, or --workdir-reuse to start this run there (its "
            "config.json and tokenizer.json are replaced by this run's)."
        )
    log.warning("--workdir-reuse: %s holds %s; replacing them with this run's", workdir, " and ".join(foreign))
    if jax.process_index() == 0 and tok.is_file():
        fs.write_bytes(tok, tokenizer().read_bytes())
    multihost_utils.sync_global_devices("check_fresh_workdir")


def save_config(workdir: str | Path, config) -> None:
    """The resolved config as `<workdir>/config.json` (process 0 only)."""
    if jax.process_index() == 0:
        fs.write_text(fs.as_path(workdir) / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))


def read_config(workdir: str | Path):
    """`<workdir>/config.json` -> ml_collections.ConfigDict. A field the file lacks (written before the field
    existed: `lora`, `ema_decay`, ...) takes its default, which keeps the old behaviour."""
    import ml_collections

    path = fs.as_path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; is {workdir} a clapcomp training workdir (clapcomp train --workdir)?"
        )
    return ml_collections.ConfigDict(_with_defaults(json.loads(path.read_text()), defaults().to_dict()))


def _with_defaults(saved: dict, default: dict) -> dict:
    """`saved` with every key of `default` it lacks added, recursively (dict fields of both are merged)."""
    out = dict(saved)
    for k, v in default.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _state_handler(ocp):
    """Orbax's PyTree handler for the train state: StandardSave's layout (without its per-host array
    metadata files), read back by StandardRestore as well (`load_weights`). On CPU without
    replica-parallel saving: that splits each replicated array into one slice per device to spread
    the device->host copies over the replicas, which costs a compiled program per shape and device
    (192 compiles, 6.9 s, in a training process of the small HF model on 8 CPU devices) and spreads
    nothing on a CPU. Elsewhere Orbax's default (replica-parallel on TPU, not on GPU)."""
    th = ocp.type_handlers
    array = th.ArrayHandler(use_replica_parallel=False if jax.default_backend() == "cpu" else None)
    registry = th.create_type_handler_registry(
        (jax.Array, array), (np.ndarray, th.NumpyHandler()), (int, th.ScalarHandler()), (float, th.ScalarHandler()),
        (np.number, th.ScalarHandler()),
    )  # fmt: skip
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's notices that a read-only open is read-only: exactly what was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            ("Given directory is read only", "CheckpointManagerOptions.read_only=True")
        )


def read_only_manager(directory: str | Path):
    """An Orbax CheckpointManager that only reads `directory` (for loading weights), without Orbax's
    warnings that it is read-only."""
    import orbax.checkpoint as ocp

    absl_log, notice = logging.getLogger("absl"), _ReadOnlyNotice()
    absl_log.addFilter(notice)
    try:
        return ocp.CheckpointManager(fs.absolute(directory), options=ocp.CheckpointManagerOptions(read_only=True))
    finally:
        absl_log.removeFilter(notice)


def load_weights(workdir: str | Path, mesh: Mesh | None = None, *, step: int | None = None, best: bool = False,
                 raw_weights: bool = False):  # fmt: skip
    """A training workdir's checkpoint `step` (default: the newest; `best`: the best by `config.keep_best`)
    -> (ClapConfig, graphdef, params, model_state). A step that cannot be read raises CheckpointError:
    never a quiet older model. A run with `config.ema_decay` gives the EMA of the weights, unless
    `raw_weights`. Which step and weights it loads is logged.

    For inference, export and `init.kind="checkpoint"`; arrays are laid out on `mesh` (default: one
    local device)."""
    import orbax.checkpoint as ocp

    config = read_config(workdir)
    if mesh is None:
        mesh = Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    parts = state_lib.setup(config, mesh)
    manager = read_only_manager(fs.as_path(workdir) / "checkpoints")
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"no checkpoint under {workdir}/checkpoints; train first or pass another workdir")
    if best and step is not None:
        raise ValueError(f"pass step={step} or best=True, not both")
    if best:
        step = best_step(manager, config, workdir)
    elif step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{workdir}/checkpoints has no step {step}; it holds steps {steps}")
    try:
        fs.verify_manifest(fs.as_path(workdir) / "checkpoints" / str(step))
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(parts.abstract))).state
    except Exception as e:
        older = [s for s in steps if s < step]
        hint = f" Pass an older step explicitly (step={older[-1]} / --step {older[-1]})." if older else ""
        raise CheckpointError(f"checkpoint step {step} in {workdir} cannot be read ({_first_line(e)}).{hint}") from e
    ema = restored.ema is not None and not raw_weights
    log.info("%s: checkpoint step %d (%s), %s weights", workdir, step, f"best by {config.keep_best}" if best else
             "newest" if step == steps[-1] else "asked for", "EMA" if ema else "raw")  # fmt: skip
    return parts.cfg, parts.graphdef, restored.ema if ema else restored.params, restored.model_state


def check_keep_best_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"config.keep_best_mode must be 'max' or 'min', got {mode!r}")


def best_step(manager, config, workdir) -> int:
    """The kept step with the best `config.keep_best` metric (saved with it), for `load_weights(best=True)`."""
    if not config.get("keep_best"):
        raise CheckpointError(f"{workdir} was trained without config.keep_best; pass step= or load the newest")
    scored = [
        (s, m[config.keep_best]) for s in manager.all_steps() if (m := manager.metrics(s)) and config.keep_best in m
    ]
    if not scored:
        raise CheckpointError(
            f"no checkpoint under {workdir} holds the metric {config.keep_best} (no evaluation saved yet)"
        )
    pick = max if config.get("keep_best_mode", "max") == "max" else min
    return pick(scored, key=lambda sv: sv[1])[0]


def load_model(workdir: str | Path, *, step: int | None = None, best: bool = False, raw_weights: bool = False):
    """A training workdir -> (ClapConfig, ClapModel) with the weights of `step` (default: the newest;
    `best`: the best by config.keep_best); their EMA if the run kept one, unless `raw_weights`. A LoRA run's
    adapters are merged into the weights (W + scale * A @ B): the model is a plain ClapModel."""
    cfg, graphdef, params, model_state = load_weights(workdir, step=step, best=best, raw_weights=raw_weights)
    return cfg, lora_lib.merge(nnx.merge(graphdef, params, model_state))
