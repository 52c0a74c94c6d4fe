"""Kill anywhere: SIGKILL a tiny CPU training run at N random moments, resume it each time, and check
that it ends bitwise equal to an uninterrupted run.

    python benchmarks/chaos_kill.py --kills 20 --seed 0 --steps 24 --workdir /tmp/chaos

1. reference: `clapcomp train --config configs/tiny.py` for --steps steps with a checkpoint every
   --ckpt-every steps (async Orbax writes), uninterrupted, in DIR/reference;
2. chaos: the same command in DIR/chaos, SIGKILLed (its whole process group; no handler runs) at
   --kills moments and relaunched until it completes. The plan is drawn from --seed: each kill
   targets a phase - start-up/restore (before the "starting|resuming at step" line), compile (up
   to the first step line), training steps (1..3 steps after the resume point), or an async
   checkpoint write (while `checkpoints/<step>.orbax-checkpoint-tmp-*` exists; if the write
   finishes before the planned moment, the next write is killed on sight) - at a random fraction
   of that phase's duration as measured on the latest launch that went through it;
3. compare: the final checkpoints' TrainState (step, params, BatchNorm statistics, optimizer state,
   non-finite counter) leaf by leaf with np.array_equal on the raw bytes, the grain iterator
   positions, and the loss / grad norm of every step each launch logged against the reference.
4. flips (--flips N): in a copy of the reference run, N times one random bit of one random file of a
   random checkpoint step (any file its sha256.json lists: array data, metadata, iterator position) is
   flipped; each must be detected: `load_weights` of that step raises naming the file, and when the
   step is the newest, the trainer's restore falls back to the previous step. The bytes are restored
   after each flip.
A kill counts as "during a checkpoint write" only if a temporary checkpoint directory of the killed
process is still there after it died (the write was really cut). All launches share a persistent
XLA compilation cache (DIR/xla_cache; the reference fills it), so relaunches load the compiled step.
Every launch is bounded by --launch-timeout. Logs: DIR/logs/*.log. Prints a table and writes
DIR/summary.json. Exit status: 0 all equal and every flip detected; 1 a difference or an undetected flip, a launch that failed other than by our
SIGKILL or hung, or a relaunch that resumed from an older checkpoint than the newest one without
the corrupt-checkpoint warning; 2 bad arguments; 3 the run completed before all kills landed
(raise --steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHASES = ("write", "steps", "startup", "compile")  # cycled, then shuffled: 1 kill -> a write kill
START = re.compile(rb"(starting|resuming) at step (\d+) of")
STEP = re.compile(rb"^step (\d+)/", re.M)
TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
FALLBACK = b"is corrupt ("
POLL_S = 0.002


# ----------------------------------------------------------------------------- set-up


def write_records(out_dir: Path, n: int = 32, seed: int = 0) -> None:
    """`n` 1-s 8-kHz two-tone clips with captions naming the tones (as tests/train/conftest.py)."""
    from clapcomp.data.records import write_records as write

    rng = np.random.default_rng(seed)
    names, freqs = ["low", "middle", "high", "very high"], [200.0, 450.0, 900.0, 1800.0]
    t = np.arange(4000) / 8000.0
    examples = []
    for i in range(n):
        a, b = rng.choice(4, size=2, replace=False)
        wave = np.concatenate([np.sin(2 * np.pi * freqs[a] * t), np.sin(2 * np.pi * freqs[b] * (t + 0.5))])
        wave = (0.5 * wave + 0.01 * rng.standard_normal(8000)).astype(np.float32)
        examples.append(
            {
                "key": f"tone-{i}",
                "audio": wave,
                "sample_rate": 8000,
                "captions": [f"a {names[a]} tone followed by a {names[b]} tone"],
                "negatives": [f"a {names[b]} tone followed by a {names[a]} tone"],
                "positives": [f"a {names[a]} tone"],
            }
        )
    write(str(out_dir), examples, shard_size=16)


def train_cmd(args, workdir: Path, records: Path) -> list[str]:
    return [
        sys.executable,
        "-u",
        "-m",
        "clapcomp.cli",
        "train",
        f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}",
        f"--config.data.train={records}",
        f"--config.total_steps={args.steps}",
        f"--config.ckpt_every={args.ckpt_every}",
        f"--config.mesh.fsdp={args.fsdp}",
        "--config.fsdp_text=True",
    ]


def train_env(args, cache: Path) -> dict:
    """The environment of each training run: `args.devices` CPU devices, the caller's other XLA flags."""
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
    ]
    return {
        **os.environ,
        "XLA_FLAGS": " ".join([f"--xla_force_host_platform_device_count={args.devices}", *flags]),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        "PYTHONPATH": str(REPO),
    }


def make_plan(kills: int, seed: int) -> list[dict]:
    """Per kill: target phase, fraction `u` of that phase's duration, and `n` = which step after the
    resume point (1..3) or which checkpoint write of the launch (1..2)."""
    rng = np.random.default_rng(seed)
    phases = [PHASES[i % len(PHASES)] for i in range(kills)]
    return [
        {"phase": phases[i], "u": float(rng.uniform()), "n": int(rng.integers(1, 4 if phases[i] == "steps" else 3))}
        for i in rng.permutation(kills)
    ]


# ----------------------------------------------------------------------------- one launch


def tmp_dirs(ckpt_dir: Path) -> set[str]:
    try:
        return {n for n in os.listdir(ckpt_dir) if TMP.match(n)}
    except FileNotFoundError:
        return set()


def finished_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if ckpt_dir.is_dir() else []


class Launch:
    """One `clapcomp train` subprocess, watched through its log and its checkpoint directory."""

    def __init__(self, cmd, env, log_path: Path, workdir: Path):
        self.ckpt_dir = workdir / "checkpoints"
        self.before = finished_steps(self.ckpt_dir)
        self.old_tmp = tmp_dirs(self.ckpt_dir)
        with open(log_path, "wb") as log:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.reader = open(log_path, "rb")
        self.text = b""
        self.t_start = self.resume = None
        self.steps: dict[int, float] = {}  # step -> when its line appeared
        self.writes: dict[str, list] = {}  # tmp dir -> [first seen, gone or None]
        self.killed_at = None

    def poll(self) -> float:
        now = time.monotonic()
        chunk = self.reader.read()
        if chunk:
            done = self.text.rfind(b"\n") + 1
            self.text += chunk
            new = self.text[done:]
            if self.t_start is None and (m := START.search(new)):
                self.t_start, self.resume = now, int(m.group(2))
            for m in STEP.finditer(new):
                self.steps.setdefault(int(m.group(1)), now)
        found = tmp_dirs(self.ckpt_dir)
        self.old_tmp &= found  # a leftover of an earlier launch, once removed, is a new write if it reappears
        live = found - self.old_tmp
        for name in live:
            self.writes.setdefault(name, [now, None])
        for name, w in self.writes.items():
            if w[1] is None and name not in live:
                w[1] = now
        return now

    def kill(self) -> None:
        self.killed_at = time.monotonic() - self.t0
        os.killpg(self.proc.pid, signal.SIGKILL)

    def phase(self) -> str:
        """Where the process was when it died (by what it had logged)."""
        if self.t_start is None:
            return "startup"
        return "compile" if not self.steps else "steps"

    def durations(self) -> dict:
        out = {}
        if self.t_start is not None:
            out["startup"] = self.t_start - self.t0
            if self.steps:
                out["compile"] = min(self.steps.values()) - self.t_start
        times = sorted(self.steps.values())
        if len(times) > 1:
            out["step"] = float(np.median(np.diff(times)))
        lives = [g - s for s, g in self.writes.values() if g is not None]
        if lives:
            out["write"] = float(np.median(lives))
        return out


def due(kill: dict, launch: Launch, est: dict, now: float, args) -> bool:
    """Whether the planned `kill` should fire now in `launch`."""
    phase, u = kill["phase"], kill["u"]
    if phase == "startup":  # (the estimates may be long: a phase that ended early is killed on its end)
        return now >= launch.t0 + u * est["startup"] or launch.t_start is not None
    if launch.t_start is None:
        return False
    if phase == "compile":
        return now >= launch.t_start + u * est["compile"] or bool(launch.steps)
    if phase == "steps":
        seen = launch.steps.get(min(launch.resume + kill["n"], args.steps))
        return seen is not None and now >= seen + u * est["step"]
    live = [n for n, w in launch.writes.items() if w[1] is None]
    if kill.get("on_sight"):
        return bool(live)
    writes_left = -(-(args.steps - launch.resume) // args.ckpt_every)
    order = sorted(launch.writes, key=lambda n: launch.writes[n][0])
    n = min(kill["n"], writes_left)
    if len(order) < n or n == 0 or now < launch.writes[order[n - 1]][0] + u * est["write"]:
        return False
    if launch.writes[order[n - 1]][1] is None:
        return True
    kill["on_sight"] = True  # the planned write was over before its moment: cut the next one
    return bool(live)


def run_launch(args, cmd, env, log_path: Path, workdir: Path, kill: dict | None, est: dict) -> dict:
    """Runs one launch to its end (or to `kill`); returns what happened."""
    launch = Launch(cmd, env, log_path, workdir)
    hung = False
    while launch.proc.poll() is None:
        now = launch.poll()
        if kill is not None and launch.killed_at is None and due(kill, launch, est, now, args):
            launch.kill()
        elif now - launch.t0 > args.launch_timeout:
            launch.kill()
            hung = True
        time.sleep(POLL_S)
    launch.poll()
    launch.reader.close()
    rc = launch.proc.returncode
    killed = launch.killed_at is not None and rc == -signal.SIGKILL and not hung
    cut = sorted(tmp_dirs(launch.ckpt_dir) - launch.old_tmp) if killed else []
    newest = launch.before[-1] if launch.before else 0
    fallbacks = launch.text.count(FALLBACK)
    return {
        "log": log_path.name,
        "planned": kill and kill["phase"],
        "killed": killed,
        "rc": rc,
        "hung": hung,
        "at_s": launch.killed_at,
        "phase": ("write" if cut else launch.phase()) if killed else None,
        "cut_writes": cut,
        "newest_before": newest,
        "resume": launch.resume,
        "last_step": max(launch.steps, default=None),
        "fallbacks": fallbacks,
        "went_back": launch.resume is not None and launch.resume < newest and not fallbacks,
        "seconds": time.monotonic() - launch.t0,
        "durations": launch.durations(),
        "error": None if killed or rc == 0 else launch.text.decode(errors="replace")[-3000:],
    }


# ----------------------------------------------------------------------------- comparison


def read_state(workdir: Path, step: int):
    """Checkpoint `step` of `workdir` as the raw restored TrainState of numpy arrays (one device)."""
    import logging

    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh

    logging.getLogger("absl").setLevel(logging.ERROR)  # read_only notices

    from clapcomp.train import checkpoint as ckpt_lib
    from clapcomp.train import state as state_lib

    config = ckpt_lib.read_config(workdir)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    abstract = state_lib.setup(config, mesh).abstract
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    return jax.tree_util.tree_map(np.asarray, restored)


def compare_states(a, b) -> tuple[int, list[str]]:
    """(number of leaves, key paths whose dtype, shape or bytes differ)."""
    import jax

    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:
        return len(leaves_a), ["<tree structure>"]
    raw = lambda x: np.ascontiguousarray(np.atleast_1d(x)).view(np.uint8)
    diff = [
        jax.tree_util.keystr(p)
        for (p, x), y in zip(leaves_a, leaves_b, strict=True)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(raw(x), raw(y))
    ]
    return len(leaves_a), diff


def compare_metrics(reference: Path, chaos: Path) -> dict:
    """Every step line the chaos launches logged (re-executed steps included) against the reference."""
    ref = {}
    for line in reference.read_text().splitlines():
        m = json.loads(line)
        ref[m["step"]] = (m["loss"], m["grad_norm"])
    logged, torn, differ = [], 0, []
    for line in chaos.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            torn += 1  # a line cut by a kill (the next launch appends after it)
            continue
        logged.append(m["step"])
        if ref.get(m["step"]) != (m["loss"], m["grad_norm"]):
            differ.append(m["step"])
    return {
        "steps_logged": len(logged),
        "steps_reexecuted": len(logged) - len(set(logged)),
        "torn_lines": torn,
        "steps_differing": differ,
        "all_steps_logged": set(logged) == set(ref),
    }


# ----------------------------------------------------------------------------- byte flips


def flip_case(args, reference: Path, root: Path) -> dict:
    """`args.flips` single-bit flips in random checkpoint files of a copy of `reference` (see module doc)."""
    import logging
    import shutil

    import jax
    from jax.sharding import Mesh

    from clapcomp import fs
    from clapcomp.train import checkpoint as ckpt_lib
    from clapcomp.train import state as state_lib

    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("clapcomp.train").setLevel(logging.ERROR)  # the fallback warnings: counted below
    workdir = root / "flips"
    shutil.copytree(reference, workdir)
    rng = np.random.default_rng(args.seed)
    steps = finished_steps(workdir / "checkpoints")
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    abstract = state_lib.setup(ckpt_lib.read_config(workdir), mesh).abstract
    rows = []
    for _ in range(args.flips):
        step = int(rng.choice(steps))
        step_dir = workdir / "checkpoints" / str(step)
        listed = json.loads((step_dir / fs.MANIFEST).read_text())["bytes"]
        rel = str(rng.choice(sorted(r for r, n in listed.items() if n > 0)))
        path = step_dir / rel
        original = path.read_bytes()
        offset, bit = int(rng.integers(len(original))), int(rng.integers(8))
        flipped = bytearray(original)
        flipped[offset] ^= 1 << bit
        path.write_bytes(bytes(flipped))
        try:
            ckpt_lib.load_weights(workdir, mesh, step=step)
            named = False
        except ckpt_lib.CheckpointError as e:
            named = str(path) in str(e)
        fell_back = None
        if step == steps[-1]:
            ck = ckpt_lib.Checkpointer(workdir, keep=len(steps) + 1)
            try:
                fell_back = int(ck.restore(abstract, None, mode="params_only").step) == steps[-2]
            finally:
                ck.close()
        path.write_bytes(original)
        rows.append({"step": step, "file": rel, "offset": offset, "bit": bit, "named": named, "fell_back": fell_back})
    detected = sum(r["named"] and r["fell_back"] is not False for r in rows)
    return {"flips": len(rows), "detected": detected, "rows": rows}


# ----------------------------------------------------------------------------- main


def table(s: dict) -> str:
    k = s["kills"]
    rows = [
        ("kills survived", f"{k['survived']} / {s['args']['kills']}"),
        ("  at start-up / restore", k["startup"]),
        ("  while compiling", k["compile"]),
        ("  during training steps", k["steps"]),
        ("  during async checkpoint writes (write cut)", k["write"]),
        ("relaunches", s["relaunches"]),
        ("fallbacks to an older checkpoint", s["fallbacks"]),
        ("resumed from the newest checkpoint each time", "yes" if s["resumed_from_newest"] else "NO"),
        ("non-kill errors / hangs", f"{s['errors']} / {s['hangs']}"),
        (
            "step lines re-executed, all equal to reference",
            f"{s['metrics']['steps_reexecuted']}, "
            f"{'yes' if not s['metrics']['steps_differing'] else 'NO ' + str(s['metrics']['steps_differing'])}",
        ),
        ("metrics.jsonl lines torn by a kill", s["metrics"]["torn_lines"]),
        (
            f"final state bitwise equal ({s['leaves']} leaves: params, opt state, BN stats)",
            "yes" if s["bitwise_equal"] else "NO " + ", ".join(s["differing"][:5]),
        ),
        ("data iterator position equal", "yes" if s["data_equal"] else "NO"),
        (
            "flipped checkpoint bits detected (file named; newest step: fell back)",
            f"{s['flips']['detected']} / {s['flips']['flips']}",
        ),
        (
            "seconds (reference / chaos / total)",
            " / ".join(f"{s['seconds'][k]:.0f}" for k in ("reference", "chaos", "total")),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--steps", type=int, default=None, help="training steps (default max(12, kills + 4))")
    p.add_argument("--workdir", required=True, type=Path, help="new directory for both runs, logs and summary.json")
    p.add_argument("--ckpt-every", type=int, default=2, help="checkpoint interval in steps")
    p.add_argument("--devices", type=int, default=2, help="simulated CPU devices")
    p.add_argument("--fsdp", type=int, default=2, help="mesh fsdp axis (parameters sharded over it)")
    p.add_argument("--launch-timeout", type=float, default=300.0, help="seconds before a launch counts as hung")
    p.add_argument("--flips", type=int, default=20, help="single-bit flips in random checkpoint files to detect")
    args = p.parse_args(argv)
    args.steps = args.steps or max(12, args.kills + 4)
    if args.kills < 0 or args.steps < 1 or args.ckpt_every < 1:
        p.error("--kills must be >= 0, --steps and --ckpt-every >= 1")
    args.workdir = args.workdir.absolute()
    if (args.workdir / "reference").exists() or (args.workdir / "chaos").exists():
        p.error(f"{args.workdir} already holds a run; pass a new --workdir")
    return args


def chaos_launches(args, records: Path, env: dict, est: dict) -> list[dict]:
    """Launches the chaos run, killing it per the plan, until a launch ends by itself."""
    plan, launches, root = make_plan(args.kills, args.seed), [], args.workdir
    while not launches or launches[-1]["killed"]:
        landed = sum(r["killed"] for r in launches)
        kill = plan[landed] if landed < len(plan) else None
        log = root / "logs" / f"launch_{len(launches):02d}.log"
        r = run_launch(args, train_cmd(args, root / "chaos", records), env, log, root / "chaos", kill, est)
        launches.append(r)
        est.update(r["durations"])
        end = f"KILLED ({r['phase']})" if r["killed"] else f"rc {r['rc']}"
        cut = f" cut {','.join(r['cut_writes'])}" if r["cut_writes"] else ""
        print(
            f"launch {len(launches) - 1:2d}: planned {r['planned'] or '-':8s} resume {r['resume']!s:>4} "
            f"last step {r['last_step']!s:>4} -> {end}{cut}  {r['seconds']:.1f} s",
            flush=True,
        )
    return launches


def summarize(args, argv, launches: list[dict]) -> dict:
    root, last = args.workdir, launches[-1]
    done = last["rc"] == 0 and not last["hung"]
    kills = [r for r in launches if r["killed"]]
    s = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "command": " ".join(["benchmarks/chaos_kill.py", *argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "kills": {
            "survived": len(kills) if done else max(len(kills) - 1, 0),
            **{ph: sum(r["phase"] == ph for r in kills) for ph in PHASES},
        },
        "relaunches": len(launches) - 1,
        "fallbacks": sum(r["fallbacks"] for r in launches),
        "resumed_from_newest": not any(r["went_back"] for r in launches),
        "errors": sum(r["error"] is not None and not r["hung"] for r in launches),
        "hangs": sum(r["hung"] for r in launches),
        "launches": launches,
    }
    if not done:
        s.update(
            leaves=0,
            differing=["<chaos run did not complete>"],
            data_equal=False,
            bitwise_equal=False,
            metrics={"steps_reexecuted": 0, "steps_differing": ["-"], "torn_lines": 0, "all_steps_logged": False},
        )
        return s
    ref, chaos = root / "reference", root / "chaos"
    s["leaves"], s["differing"] = compare_states(read_state(ref, args.steps), read_state(chaos, args.steps))
    s["bitwise_equal"] = not s["differing"]
    data = [sorted((w / "checkpoints" / str(args.steps) / "data").glob("*.json")) for w in (ref, chaos)]
    s["data_equal"] = bool(data[0]) and [f.read_bytes() for f in data[0]] == [f.read_bytes() for f in data[1]]
    s["metrics"] = compare_metrics(ref / "metrics.jsonl", chaos / "metrics.jsonl")
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    root = args.workdir
    os.environ["JAX_PLATFORMS"] = "cpu"  # for the comparison in this process
    sys.path.insert(0, str(REPO))
    t_begin = time.monotonic()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    records = root / "records"
    if not records.is_dir():
        write_records(records)
    env = train_env(args, root / "xla_cache")

    ref = run_launch(
        args,
        train_cmd(args, root / "reference", records),
        env,
        root / "logs" / "reference.log",
        root / "reference",
        None,
        {},
    )
    if ref["rc"] != 0:
        print(f"the reference run failed (rc {ref['rc']}); its log ends:\n{ref['error']}", file=sys.stderr)
        return 1
    est = {"startup": 5.0, "compile": 5.0, "step": 0.3, "write": 0.1, **ref["durations"]}
    print(
        f"reference: {ref['seconds']:.1f} s, phases (s): {json.dumps({k: round(v, 3) for k, v in est.items()})}",
        flush=True,
    )
    t_chaos = time.monotonic()
    launches = chaos_launches(args, records, env, est)
    s = summarize(args, argv, launches)
    s["flips"] = flip_case(args, root / "reference", root)
    s["seconds"] = {
        "reference": ref["seconds"],
        "chaos": time.monotonic() - t_chaos,
        "total": time.monotonic() - t_begin,
    }
    (root / "summary.json").write_text(json.dumps(s, indent=2))

    print(f"\n{s['date']}  {s['machine']}\n{s['command']}\n\n{table(s)}")
    for r in launches:
        if r["error"]:
            state = "hung" if r["hung"] else "failed"
            print(f"\n{root / 'logs' / r['log']} {state} (rc {r['rc']}); it ends:\n{r['error']}", file=sys.stderr)
    ok = (
        s["bitwise_equal"]
        and s["data_equal"]
        and not s["metrics"]["steps_differing"]
        and s["metrics"]["all_steps_logged"]
        and s["resumed_from_newest"]
        and not s["errors"]
        and not s["hangs"]
        and s["flips"]["detected"] == s["flips"]["flips"]
    )
    if not ok:
        return 1
    if s["kills"]["survived"] < args.kills:
        print(
            f"\nthe run completed after {s['kills']['survived']} of {args.kills} kills; raise --steps", file=sys.stderr
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
