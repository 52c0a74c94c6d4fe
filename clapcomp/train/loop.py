"""`clapcomp train --config configs/x.py --workdir DIR [--config.field=value ...]`: the training loop.

    config <- clapcomp.train.init.prepare: architecture from config.init.path (kind detected), checked
    mesh  <- config.mesh (axes data x fsdp) over every device of every process
    state <- newest readable checkpoint in DIR, else config.init (random | HF | LAION | sentence | workdir | export)
    (config.data.tower_cache: batches carry the locked audio tower's cached outputs, checked against
    this state's tower: clapcomp.train.locked_tower)
    batch = next(data)                                       grain, global arrays on the mesh
    for step in range(state.step, config.total_steps):
        state, metrics = train_step(state, batch)             jitted, state donated, dispatched async
        report step - 1's metrics (fetched one step late, while this step runs), non-finite stop rule
        checkpoint (every ckpt_every, and on SIGTERM/SIGINT: save, wait, exit 0) / evaluate
        batch = next(data)                                   copied to device while this step runs
The host never waits for a step before it has queued the next one, except where it must read the
step itself: a checkpoint, an evaluation, the last step. The next batch is read only after this
step's checkpoint, so a saved data position always matches the batches the saved state consumed
(resume stays bit-identical). Preemption is polled every `preempt_check_every` steps (a collective
on multi-process runs).
Metrics go to a progress bar (step, loss, samples/s, ETA), `DIR/metrics.jsonl` and TensorBoard
(`DIR/tb`), from process 0 only. The resolved config is `DIR/config.json`, the run's tokenizer
`DIR/tokenizer.json` (its sha256 in config.json). `train(config, workdir)`
is the same loop as a Python function (the demo calls it); it returns the last logged metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from clapcomp import fs
from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import distributed, locked_tower
from clapcomp.train import init as init_lib
from clapcomp.train import state as state_lib
from clapcomp.train import step as step_lib

log = logging.getLogger("clapcomp.train")

# Dense bf16 peak FLOP/s per device, for the MFU estimate (device_kind prefix -> FLOP/s).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient."""


def train(config, workdir: str | Path, *, restore: str = "latest", workdir_reuse: bool = False) -> dict:
    """Trains (or resumes) `config` in `workdir` up to `config.total_steps`; returns the last metrics.

    `restore="latest"` resumes the newest readable checkpoint with its data position;
    `"params_only"` restores the train state but restarts the data iterator (e.g. after a change of
    process count). A checkpoint the config cannot resume raises `IncompatibleCheckpoint` before any
    file is written. Returns early, with a checkpoint saved, after SIGTERM/SIGINT
    (`metrics["preempted"] = True`).

    One run per workdir: another run's lock raises fs.LockHeld; a fresh run into a folder with another
    run's config.json / tokenizer.json raises ForeignWorkdir unless `workdir_reuse`. The run's objects are
    built here, once, from the config; the helpers take objects."""
    workdir = fs.as_path(workdir)
    fresh = not workdir.exists()
    lock = ckpt_lib.lock_workdir(workdir)
    try:
        return _train(config, workdir, restore, workdir_reuse)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
        if fresh and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()  # refused before anything was written: no folder left behind (only the lock made it)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir: Path, restore: str, workdir_reuse: bool) -> dict:
    config = init_lib.prepare(config, workdir)  # architecture from the checkpoint; checked before compiling
    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    parts = state_lib.setup(config, mesh)  # model config + graphdef, optimizer + schedule, shardings
    config.lr_groups = parts.lr_groups  # recorded in config.json
    log.info("learning-rate multiplier per parameter group:\n%s",
             "\n".join(f"  {m:<10.6g} {prefix or '(all)'}" for prefix, m in parts.lr_groups))  # fmt: skip
    _check_keep_best(config)
    ckpt_lib.check_fresh_workdir(workdir, config, lambda: init_lib.tokenizer_source(config), reuse=workdir_reuse)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best,
                                         keep_best_mode=config.keep_best_mode)  # fmt: skip
    try:
        accepted = ckpt_lib.check_resume_config(workdir, config) if checkpointer.steps() else []
        tokenizer = init_lib.run_tokenizer(config, workdir)
        tower_cache = locked_tower.load(config.data.tower_cache, config.freeze)  # None, or the tower's outputs
        iterator = _data_iterator(config, mesh, tokenizer, tower_cache)
        state = checkpointer.restore(parts.abstract, iterator.grain_iterator, mode=restore)
        # Only now, with a restore done or a fresh start decided, does the workdir change.
        ckpt_lib.save_config(workdir, config)
        init_lib.copy_tokenizer(config, workdir)
        if state is None:
            state = state_lib.init_state(parts, init_lib.load_init_model(config))
        else:
            _log_resume(workdir, int(state.step), accepted, restore)
            if restore == "latest":
                iterator.restore_skips(checkpointer.restored_skips)
        if tower_cache is not None:
            locked_tower.check(tower_cache, parts.cfg, state.params, state.model_state)
        start = int(state.step)
        log.info(
            "%s at step %d of %d on %d devices (%d processes), mesh %s",
            "resuming" if start else "starting",
            start,
            config.total_steps,
            jax.device_count(),
            jax.process_count(),
            dict(mesh.shape),
        )
        train_step = step_lib.from_parts(
            parts, mesh, loss=config.loss, freeze=config.freeze, accumulation_steps=config.accumulation_steps
        )
        keys = step_lib.batch_spec(config.loss, pooled=tower_cache is not None)
        evaluators = list(config.evaluators)
        run_eval = (
            (lambda s: evaluate(evaluators, parts.cfg, parts.graphdef, s, tokenizer, mesh)) if evaluators else None
        )
        reporter = Reporter(workdir, start, total_steps=config.total_steps, log_every=config.log_every,
                            batch_size=config.data.batch_size, max_nonfinite=config.max_consecutive_nonfinite)  # fmt: skip
        guard = PreemptionGuard(config.preempt_check_every)
        try:
            return _run(state, train_step, iterator, keys, checkpointer, reporter, guard, run_eval,
                        total_steps=config.total_steps, ckpt_every=config.ckpt_every, eval_every=config.eval_every)  # fmt: skip
        finally:
            guard.restore()
            reporter.close()
    finally:
        checkpointer.close()


def _run(state, train_step, iterator, keys, checkpointer, reporter, guard, run_eval, *, total_steps: int,
         ckpt_every: int, eval_every: int) -> dict:  # fmt: skip
    """The step loop of the module doc, from `state.step` to `total_steps`; `run_eval(state)` -> metrics
    (None: no evaluators)."""
    start, last = int(state.step), {}
    compiled, pending = None, None
    batch = _next_batch(iterator, keys) if start < total_steps else None
    for step in range(start, total_steps):
        if compiled is None:
            compiled = train_step.lower(state, batch).compile()
            reporter.set_flops(compiled)
        state, metrics = compiled(state, batch)  # dispatched: the device runs it while the host goes on
        for v in metrics.values():
            v.copy_to_host_async()
        done = step + 1
        if pending is not None:  # step done - 1, already finished or next in the queue
            last = reporter.report(*pending)
        preempted = guard.requested(done, after=metrics)
        saving = done % ckpt_every == 0 or done == total_steps or preempted
        evaluating = run_eval and ((eval_every and done % eval_every == 0) or done == total_steps)
        saving = saving or (evaluating and bool(checkpointer.keep_best))  # the best is one of the evaluated states
        # The data position now is exactly `done` batches: the counters and a save see that.
        skips = {**iterator.skip_totals(), **iterator.source_totals()} if saving or reporter.logs(done) else None
        pending = (done, metrics, _data_counters(skips or {}))
        if saving or evaluating:  # never save (or evaluate) a state whose metrics were not checked
            last, pending = reporter.report(*pending), None
        evals = run_eval(state) if evaluating and not preempted else None
        if saving:
            checkpointer.save(done, state, iterator.grain_iterator, skips=skips,
                              metrics=_best_metrics(evals, checkpointer.keep_best))  # fmt: skip
        if preempted:
            log.warning("stop requested (signal): saved checkpoint %d, exiting", done)
            checkpointer.wait()
            return {**last, "preempted": True}
        if evals is not None:
            last.update(reporter.write(done, evals))
        if done < total_steps:  # the next batch goes to the device while this step runs
            batch = _next_batch(iterator, keys)
    checkpointer.wait()
    if start >= total_steps and run_eval:
        last = run_eval(state)
    return last


def _data_counters(totals: dict) -> dict:
    """The iterator's totals as logged: data/skipped/<reason>, data/source/<name>/samples|skipped (mixtures)."""
    return {(f"data/{k}" if k.startswith("source/") else f"data/skipped/{k}"): v for k, v in totals.items()}


def _check_keep_best(config) -> None:
    """config.keep_best names an evaluator's label ("eval/<label>/<metric>"), evaluated during the run."""
    ckpt_lib.check_keep_best_mode(config.keep_best_mode)
    if not config.keep_best:
        return
    labels = [ev.get("label", ev["name"]) for ev in config.evaluators]
    parts = config.keep_best.split("/")
    if len(parts) != 3 or parts[0] != "eval" or parts[1] not in labels or not config.eval_every:
        raise ValueError(
            f"config.keep_best={config.keep_best!r}: expected 'eval/<label>/<metric>' with <label> one of the "
            f"evaluators' labels {labels} and config.eval_every > 0 (eval_every={config.eval_every})"
        )


def _best_metrics(evals: dict | None, keep_best: str) -> dict | None:
    """The metrics saved with a checkpoint for keep-best: None without keep_best, {} for a step not evaluated."""
    if not keep_best or evals is None:
        return {} if keep_best else None
    if keep_best not in evals:
        raise ValueError(
            f"config.keep_best={keep_best!r} is no metric the evaluators report; they report {sorted(evals)}"
        )
    return evals


def _next_batch(iterator, keys) -> dict:
    """The next global batch, restricted to the loss's `keys` (its arrays start their copy to device)."""
    return {k: v for k, v in next(iterator).items() if k in keys}


def _log_resume(workdir: Path, step: int, accepted: list[str], restore: str) -> None:
    for change in accepted:
        log.warning("resuming with a changed setting %s", change)
    if restore != "latest":
        log.warning(
            "restore=%s: train state of step %d restored, data iterator restarted from the beginning", restore, step
        )
    if jax.process_index() == 0 and (accepted or restore != "latest"):
        ckpt_lib.record(workdir, "resumed", step=step, restore=restore, changed=accepted)


# ----------------------------------------------------------------------------- data


def _data_iterator(config, mesh, tokenizer, tower_cache=None):
    """The checkpointable grain iterator of global batches for `config.data` (clapcomp.data.pipeline);
    with a `tower_cache` its batches carry the locked audio tower's outputs instead of waveforms."""
    from clapcomp.data import pipeline
    from clapcomp.data.options import DataConfig, built_at, mixture, source_name
    from clapcomp.data.records import RecordSource

    dirs = [d for d, _ in mixture(config.data.train, config.data.weights)]
    audio = state_lib.model_config(config).audio
    options = DataConfig.from_config(config, audio, pcm16_batches=built_at(dirs, audio.sample_rate))
    if options.workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # the trainer is the application: grain's workers read absl flags
            flags.FLAGS.mark_as_parsed()
    pipeline.serial_tokenizers()  # the trainer is the application: a process-wide setting (see there)
    sources = {source_name(d): RecordSource(d) for d in dirs}
    source = sources if len(sources) > 1 else next(iter(sources.values()))
    return pipeline.make_iterator(
        source, mesh, options, tokenizer=tokenizer, tower_cache=tower_cache, batch_axes=distributed.AXES
    )


# ----------------------------------------------------------------------------- evaluation


EVAL_ROWS_PER_DEVICE = 16  # clips (and 4x as many texts) per device per embedding call


def evaluate(evaluators: list[dict], cfg, graphdef, state, tokenizer, mesh) -> dict:
    """Runs `evaluators` (config.evaluators) on the current weights of a model of ClapConfig `cfg` (their
    EMA when the state has one); returns {"eval/<label>/<metric>": value}.

    Data-parallel over the eval set: every process reads the whole set, and every device of `mesh` embeds
    its share of each batch (`Clap(mesh=)`: weights replicated, the embeddings gathered to every process).
    An evaluator's `batch_size` (files per embedding call) defaults to EVAL_ROWS_PER_DEVICE x devices."""
    from flax import nnx

    from clapcomp.evaluate.run import EVALUATORS, headline
    from clapcomp.inference import Clap

    weights = state.params if state.ema is None else state.ema
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    model = nnx.merge(graphdef, *jax.device_put((weights, state.model_state), replicated))
    rows = EVAL_ROWS_PER_DEVICE * mesh.size
    embedder = Clap.from_model(model, cfg, tokenizer, max_batch=rows, mesh=mesh)
    out = {}
    for ev in evaluators:
        result = EVALUATORS[ev["name"]](embedder, **({"batch_size": rows} | ev.get("kwargs", {})))
        label = ev.get("label", ev["name"])
        out.update({f"eval/{label}/{k}": float(v) for k, v in headline(result).items()})
    return out


# ----------------------------------------------------------------------------- observability


class Reporter:
    """Progress bar / log lines, metrics.jsonl and TensorBoard (process 0), non-finite stop rule."""

    def __init__(self, workdir: Path, start: int, *, total_steps: int, log_every: int, batch_size: int,
                 max_nonfinite: int):  # fmt: skip
        self.start, self.main = start, jax.process_index() == 0
        self.total_steps, self.log_every, self.batch_size = total_steps, log_every, batch_size
        self.max_nonfinite = max_nonfinite  # config.max_consecutive_nonfinite
        self.flops = None
        self.peak = next((v for k, v in PEAK_FLOPS.items() if jax.devices()[0].device_kind.startswith(k)), None)
        self.t_last = time.perf_counter()
        self.step_last = start
        self.bar = self.tb = self.jsonl = None
        if self.main:
            self.jsonl = fs.AppendFile(workdir / "metrics.jsonl")  # gs://: the object rewritten at each line
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True)

    def set_flops(self, compiled) -> None:
        """FLOPs per step per device from XLA's cost analysis of the compiled step (for MFU)."""
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        self.flops = float(cost.get("flops", 0.0)) if cost else None
        self.t_last = time.perf_counter()  # steps are timed from here, after compilation

    def logs(self, step: int) -> bool:
        """Whether `report(step, ...)` writes a log line."""
        return step % self.log_every == 0 or step == self.total_steps

    def report(self, step: int, metrics, extra: dict | None = None) -> dict:
        """Fetches step `step`'s metrics (waits for that step), enforces the non-finite limit, logs every
        log_every (with `extra` host-side figures, e.g. the data pipeline's skip counters).

        The loop reports a step after queueing the next one, so the stop rule acts one step late: when
        step n reaches the limit, step n + 1 has been dispatched but is neither saved nor logged. Steps
        that save or evaluate are reported before their save, so no checkpoint ever holds a state past
        the limit: the newest one holds the last good parameters."""
        m = {k: v.item() for k, v in jax.device_get(metrics).items()}
        limit = self.max_nonfinite
        if m["nonfinite_run"] >= limit:
            raise NonFiniteError(
                f"{m['nonfinite_run']} steps in a row (up to step {step}) had a NaN/inf loss or gradient "
                f"(config.max_consecutive_nonfinite={limit}); they were skipped and the run stopped. The "
                "checkpoints in the workdir hold the last good parameters: inspect the data near this step, "
                "lower optimizer.lr or raise the limit, then rerun to resume."
            )
        if m["nonfinite"]:
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step, m["nonfinite_run"])
        if not self.logs(step):
            return m
        m.update(extra or {})
        now = time.perf_counter()
        dt = (now - self.t_last) / max(step - self.step_last, 1)
        self.t_last, self.step_last = now, step
        m["step_time_s"] = dt
        m["samples_per_s"] = self.batch_size / dt
        if self.flops:
            m["tflops_per_device"] = self.flops / dt / 1e12
            if self.peak:
                m["mfu"] = self.flops / dt / self.peak
        return {**m, **self.write(step, m)}

    def write(self, step: int, m: dict) -> dict:
        if not self.main:
            return {}
        self.jsonl.write(json.dumps({"step": step, **m}) + "\n")
        for k, v in m.items():
            self.tb.add_scalar(k, v, step)
        eta = (self.total_steps - step) * m.get("step_time_s", 0.0)
        line = (
            f"loss {m['loss']:.4f}  {m.get('samples_per_s', 0):.1f} samples/s  ETA {eta / 60:.1f} min"
            if "loss" in m
            else ""
        )
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(line or ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
        else:
            print(f"step {step}/{self.total_steps}  " + (line or json.dumps(m)), flush=True)
        return {}

    def close(self) -> None:
        for h in (self.bar, self.tb, self.jsonl):
            if h is not None:
                h.close()


class PreemptionGuard:
    """SIGTERM / SIGINT -> finish the current step, save, exit 0. All processes agree on the step.

    With several processes, `requested(step)` gathers every process's flag only at steps that are
    multiples of `every` (the same steps everywhere; the gather waits for the devices), so a stop
    lands up to `every - 1` steps after the signal; a single process reads its flag at every step.

    A second SIGINT (Ctrl-C again) exits at once with status 130, even inside a long compile or
    save: the signals are read by a watcher thread from `signal.set_wakeup_fd`, which the C-level
    handler writes while the main thread is still inside XLA or Orbax. The newest complete
    checkpoint stays valid (saves are atomic)."""

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"config.preempt_check_every must be >= 1, got {every}")
        self.flag, self.every = False, every
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
        self.old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="preemption-guard", daemon=True).start()

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            for signum in data:
                self._on_signal(signum)
        os.close(self._read)

    def _on_signal(self, signum: int) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT):
            return
        if self.flag and signum == signal.SIGINT:
            log.warning("second SIGINT: exiting now without a checkpoint; the newest complete one is intact")
            logging.shutdown()
            os._exit(130)
        log.warning(
            "received %s; saving a checkpoint after this step (Ctrl-C again to exit at once)",
            signal.Signals(signum).name,
        )
        self.flag = True

    def requested(self, step: int, after=None) -> bool:
        """Whether to save and stop after `step` (a collective at multiples of `every` on multi-process).

        `after`: arrays of the step just dispatched; the collective waits for them, so that its
        all-gather cannot interleave with that step's collectives (on CPU, gloo pairs the processes'
        messages by order: two programs' collectives in flight at once can deadlock)."""
        if jax.process_count() == 1:
            return self.flag
        if step % self.every:
            return False
        jax.block_until_ready(after)
        return bool(np.any(multihost_utils.process_allgather(np.array(self.flag))))

    def restore(self) -> None:
        signal.set_wakeup_fd(self.old_fd)
        for s, handler in self.old.items():
            signal.signal(s, handler)
        os.close(self._write)  # the watcher reads EOF and ends


# ----------------------------------------------------------------------------- CLI


def usage(fv, config=None, source: str = "") -> str:
    """`clapcomp train --help`: the flags, then every config field (clapcomp.train.config.FIELDS) with
    its value (the given --config's, with its overrides, else the defaults), class and meaning."""
    from clapcomp.train import config as config_lib

    values = config_lib.flat((config or config_lib.defaults()).to_dict())
    head = [
        (main.__doc__ or "").strip(),
        "",
        "flags:",
        "  --config: config file configs/*.py[:arg], then any --config.FIELD=VALUE",
    ]
    for name in ("workdir", "restore", "coordinator", "num_processes", "process_id"):
        head.append(f"  --{name}: {fv[name].help}")
    classes = [f"  {name}: {meaning}" for name, meaning in config_lib.CLASSES.items()]
    rows = []
    for k, (klass, meaning) in config_lib.FIELDS.items():
        flag = f"--config.{k}={_show(values[k])}"
        rows.append(
            f"  {flag:<48} [{klass}] {meaning}" if len(flag) <= 48 else f"  {flag}\n  {'':<48} [{klass}] {meaning}"
        )
    return "\n".join([*head, "", "field classes (on top of pretrained weights; on resume):", *classes, "",
                      f"config fields ({source or 'clapcomp/train/config.py defaults'}; override any with "
                      "--config.FIELD=VALUE):", *rows])  # fmt: skip


def _show(v) -> str:
    return repr(list(v) if isinstance(v, tuple) else v)


def main(argv: list[str]) -> int:
    """`clapcomp train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v ...] [--coordinator H:P
    --num_processes N --process_id I]`."""
    from absl import flags

    from clapcomp.train import config as config_lib

    try:
        path, overrides, rest = config_lib.split_argv(argv)
    except ValueError as e:
        sys.stderr.write(f"clapcomp train: {e}\n")
        return 2
    want_help = any(a in ("-h", "--help", "-help", "--helpfull") for a in rest)
    rest = [
        "clapcomp train",
        *(
            a.replace("--workdir-reuse", "--workdir_reuse")
            for a in rest
            if a not in ("-h", "--help", "-help", "--helpfull")
        ),
    ]
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, config.json", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process without SLURM/TPU)", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)", flag_values=fv)
    flags.DEFINE_enum(
        "restore",
        "latest",
        list(config_lib.RESTORE_MODES),
        "latest: resume the newest checkpoint "
        "with its data position; params_only: restore the train state, restart the data iterator "
        "(e.g. after changing the process count)",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "workdir_reuse", False, "start a fresh run in a folder holding another run's config.json / tokenizer.json "
        "(they are replaced)", flag_values=fv,
    )  # fmt: skip
    try:
        fv(rest)
        config = config_lib.load(path, overrides=overrides) if path else None
    except (flags.Error, ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"clapcomp train: {e}\n")
        return 2
    if want_help:
        print(usage(fv, config, path or ""))
        return 0
    if config is None or not fv.workdir:
        sys.stderr.write("clapcomp train: --config and --workdir are required\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("absl", "gcsfs"):  # Orbax logs every file it writes at INFO, gcsfs every file it opens
        logging.getLogger(chatty).setLevel(logging.WARNING)
    distributed.initialize(fv.coordinator, fv.num_processes, fv.process_id)
    try:
        metrics = train(config, fv.workdir, restore=fv.restore, workdir_reuse=fv.workdir_reuse)
    except (NonFiniteError, ckpt_lib.CheckpointError, fs.LockHeld) as e:
        log.error("%s", e)
        return 1
    if jax.process_index() == 0:
        print(json.dumps({"workdir": fv.workdir, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}))
    return 0
