"""Does the training loop wait on the host? Drives the real `clapcomp.train.loop.train` on a tiny model.

    python benchmarks/loop_overlap.py --steps 80 --clip-seconds 0.25 --workdir /tmp/loop_overlap

Writes `--records` synthetic 8-kHz two-tone records (pcm16: decoding is cheap), trains
`configs/tiny.py` (plain loss, one CPU device unless XLA_FLAGS says otherwise) with metrics logged
every step and one checkpoint at the end, and prints, over the steps after `--skip` (compile and
warm-up excluded):
  steps/s            1 / median `step_time_s` of metrics.jsonl (wall time between logged steps)
  steps/s wall       steps / wall time from step --skip to the last step
  device-bound       the same compiled step dispatched back to back on one batch, one wait at the end
                     (on a CPU the "device" is the same cores as the host: indicative only)
  host data ms/step  time in `next(data iterator)` (grain + host->device copy)
  device_get ms/step time the host sat blocked in `jax.device_get` (waiting for a step's metrics)
  device_get calls   how many metric fetches blocked for more than 0.2 ms
A loop that serialises on the host blocks in device_get every step for the whole device time of
that step, then spends its data time with the device idle: steps/s ~ 1 / (device + host). A loop
that overlaps them blocks on step n-1 while step n is already queued: steps/s ~ 1 / max(device,
host). Run it on two trees (e.g. `PYTHONPATH=<old checkout> python benchmarks/loop_overlap.py`) to
compare before / after; the figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_records(out_dir: Path, n: int, seconds: float, seed: int = 0) -> None:
    """`n` two-tone clips of `seconds` at 8 kHz, each with a caption naming its tones."""
    from clapcomp.data.records import write_records as write

    rng = np.random.default_rng(seed)
    freqs, names = [200.0, 450.0, 900.0, 1800.0], ["low", "middle", "high", "very high"]
    t = np.arange(int(8000 * seconds)) / 8000.0
    examples = []
    for i in range(n):
        a, b = rng.choice(4, size=2, replace=False)
        half = len(t) // 2
        wave = np.concatenate([np.sin(2 * np.pi * freqs[a] * t[:half]), np.sin(2 * np.pi * freqs[b] * t[half:])])
        examples.append(
            {
                "key": f"tone-{i}",
                "audio": (0.5 * wave).astype(np.float32),
                "sample_rate": 8000,
                "captions": [f"a {names[a]} tone followed by a {names[b]} tone"],
            }
        )
    write(str(out_dir), examples, shard_size=64, audio_format="pcm16")


def tiny_config(records: Path, steps: int, clip_seconds: float, batch: int):
    from clapcomp.train.config import load

    return load(REPO / "configs" / "tiny.py", "plain", [f"data.train={records}", f"data.batch_size={batch}",
                f"model.audio.clip_seconds={clip_seconds}", f"total_steps={steps}", "log_every=1", f"ckpt_every={steps}"])  # fmt: skip


class Timed:
    """Wraps a callable; sums the seconds spent inside it (after `arm()`)."""

    def __init__(self, fn):
        self.fn, self.armed, self.seconds, self.calls, self.blocking = fn, False, 0.0, 0, 0

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if self.armed:
            dt = time.perf_counter() - t
            self.seconds, self.calls, self.blocking = self.seconds + dt, self.calls + 1, self.blocking + (dt > 2e-4)
        return out


def device_bound(config, batch: dict, n: int) -> float:
    """Steps/s of the same compiled step on one fixed batch, `n` dispatched back to back, one wait:
    what the device sustains with no host in the way."""
    import jax

    from clapcomp.train import distributed
    from clapcomp.train import state as state_lib
    from clapcomp.train import step as step_lib

    mesh = distributed.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch = {k: v for k, v in batch.items() if k in step_lib.batch_spec(config.loss)}
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts)
    step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze).lower(state, batch).compile()
    for _ in range(3):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    t = time.perf_counter()
    for _ in range(n):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--skip", type=int, default=10, help="first steps left out of the figures (compile, warm-up)")
    p.add_argument("--clip-seconds", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--workdir", default="/tmp/loop_overlap")
    args = p.parse_args()

    import jax

    from clapcomp.train import loop

    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    write_records(root / "records", args.records, args.clip_seconds)
    config = tiny_config(root / "records", args.steps, args.clip_seconds, args.batch)

    device_get = Timed(jax.device_get)
    jax.device_get = device_get  # the loop fetches metrics through jax.device_get
    make = loop._data_iterator

    class Iterator:  # the trainer's data iterator, with next() timed
        def __init__(self, it):
            self.it, self.next = it, Timed(it.__next__)

        def __next__(self):
            data["batch"] = self.next()
            return data["batch"]

        def __getattr__(self, name):  # grain_iterator, skip counters
            return getattr(self.it, name)

    data = {}
    loop._data_iterator = lambda *a: data.setdefault("it", Iterator(make(*a)))
    reported = {}
    report = loop.Reporter.report

    def timed_report(self, step, *a, **k):
        if step == args.skip:  # from here on: steady state
            device_get.armed = data["it"].next.armed = True
        reported[step] = time.perf_counter()
        return report(self, step, *a, **k)

    loop.Reporter.report = timed_report
    loop.train(config, root / "run")
    wall = reported[args.steps] - reported[args.skip]

    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows if r["step"] > args.skip]
    n = args.steps - args.skip
    out = {
        "loop": str(Path(loop.__file__).resolve()),
        "device": f"{jax.devices()[0].device_kind} x {jax.device_count()}, {platform.machine()}",
        "date": datetime.date.today().isoformat(),
        "steps": n,
        "steps_per_s": round(1.0 / float(np.median(times)), 2),
        "steps_per_s_wall": round(n / wall, 2),
        "device_bound_steps_per_s": round(device_bound(config, data["batch"], n), 2),
        "host_data_ms_per_step": round(1e3 * data["it"].next.seconds / n, 2),
        "device_get_ms_per_step": round(1e3 * device_get.seconds / n, 2),
        "device_get_calls_blocking": device_get.blocking,
        "device_get_calls": device_get.calls,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
