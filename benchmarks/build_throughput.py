"""`clapcomp data build` throughput: items/s of the local runner and of `--runner beam` with N workers.

Writes a manifest of `--clips` 10-s FLAC clips (half at 44.1 kHz, half at 48 kHz; band-limited noise
and tones, as `pipeline_throughput.py`) and builds it with each runner, alternating, `--repeats`
times, each build a fresh `clapcomp data build` process into an empty folder:

    python benchmarks/build_throughput.py [--clips 240] [--workers 1 2] [--repeats 2]

Prints one JSON line per build: wall seconds, items/s, CPU seconds of the build and its children
(user + sys: Beam's worker processes included) and items per CPU-second, plus the load average.
The beam runner needs the `beam` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

SECONDS = 10


def _clip(rng: np.random.Generator, rate: int) -> np.ndarray:
    """10 s of band-limited noise + a few tones: compresses like real field audio."""
    t = np.arange(rate * SECONDS) / rate
    noise = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same")
    tones = sum(np.sin(2 * np.pi * f * t) * rng.uniform(0.05, 0.2) for f in rng.uniform(100, 4000, 3))
    return (0.1 * noise + tones).astype(np.float32) * 0.5


def _manifest(root: str, clips: int) -> str:
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "m.jsonl"), "w") as f:
        for i in range(clips):
            rate = 44100 if i % 2 else 48000
            sf.write(os.path.join(root, f"c{i}.flac"), _clip(rng, rate), rate, subtype="PCM_16")
            f.write(json.dumps({"audio": f"c{i}.flac", "caption": f"clip {i}", "negatives": [f"not clip {i}"]}) + "\n")
    return f.name


def _build(manifest: str, out: str, runner: list[str]) -> dict:
    """One `clapcomp data build` process: wall and CPU seconds (its children's rusage)."""
    cmd = [sys.executable, "-m", "clapcomp.cli", "data", "build", "--input", manifest, "--out", out,
           "--sample-rate", "48000", *runner]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # Beam logs each worker's start and end
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "stats.json")) as f:
        written = json.load(f)["written"]
    return dict(written=written, wall_s=round(wall, 2), items_per_s=round(written / wall, 1), cpu_s=round(cpu, 2),
                items_per_cpu_s=round(written / cpu, 1))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=240)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="beam DirectRunner workers to measure")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    runs = [("local", [])] + [(f"beam, {n} worker(s)", ["--runner", "beam", "--workers", str(n)]) for n in a.workers]
    with tempfile.TemporaryDirectory() as root:
        manifest = _manifest(root, a.clips)
        for r in range(a.repeats):
            for i, (name, flags) in enumerate(runs):
                figures = _build(manifest, os.path.join(root, f"out-{r}-{i}"), flags)
                print(json.dumps(dict(runner=name, clips=a.clips, **figures, load=os.getloadavg()[0],
                                      cpu=platform.processor() or platform.machine(),
                                      utc=time.strftime("%H:%M", time.gmtime()))), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
