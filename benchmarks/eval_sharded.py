"""Sharded evaluation: the evaluators' embedding work on one device vs data-parallel on every device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/eval_sharded.py \
        [--config configs/tiny.py] [--clips 256] [--captions 1024] [--per-device 16] [--repeats 3]

The model of `--config` (random weights) embeds `--clips` random clips of its clip length and `--captions`
random token rows through `clapcomp.inference.Clap`, as the trainer's evaluators do
(`clapcomp.train.loop.evaluate`): once on the first device (`max_batch` = `--per-device`, what every
process did before), once with the trainer's mesh over all devices (`Clap(mesh=)`, `max_batch` =
`--per-device` x devices, the rows of each call split over the devices). The two run interleaved, one
warm-up round first (compiles); each figure is the median of `--repeats` rounds. Also prints the largest
difference between the two embeddings and the load average. Simulated CPU devices
(`--xla_force_host_platform_device_count`) share the host's cores: they show the program is split, not
the speed-up of real accelerators.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.py", help="config file[:arg] (its model)")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--captions", type=int, default=1024)
    parser.add_argument("--per-device", type=int, default=16, help="rows per device per call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from clapcomp.inference import Clap
    from clapcomp.models.clap import ClapModel
    from clapcomp.train import config as config_lib
    from clapcomp.train import distributed
    from clapcomp.train import state as state_lib

    cfg = state_lib.model_config(config_lib.load(args.config))
    mesh = distributed.make_mesh()
    model = ClapModel(cfg, rngs=nnx.Rngs(0))
    one = Clap.from_model(model, cfg, max_batch=args.per_device)
    sharded = Clap.from_model(model, cfg, max_batch=args.per_device * mesh.size, mesh=mesh)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.clips, cfg.audio.clip_samples))).astype(np.float32)
    ids = rng.integers(3, cfg.text.vocab_size, (args.captions, cfg.text.max_length)).astype(np.int32)
    mask = np.ones_like(ids)
    rate = cfg.audio.sample_rate
    jobs = {
        (kind, name): (lambda c=clap, k=kind: c.embed_audio(audio, rate) if k == "audio" else c.embed_tokens(ids, mask))
        for kind in ("audio", "text")
        for name, clap in (("1 device", one), (f"{mesh.size} devices", sharded))
    }
    times, outs = {job: [] for job in jobs}, {}
    for round_ in range(args.repeats + 1):  # round 0: warm-up (compiles)
        for job, fn in jobs.items():
            start = time.perf_counter()
            outs[job] = fn()
            if round_:
                times[job].append(time.perf_counter() - start)
    print(f"{jax.devices()[0].device_kind}: {mesh.size} devices (mesh {dict(mesh.shape)}), {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.config}, "
          f"{args.per_device} rows per device per call")  # fmt: skip
    for kind, n, unit in (("audio", args.clips, "clips"), ("text", args.captions, "captions")):
        (a, ta), (b, tb) = ((job, statistics.median(times[job])) for job in jobs if job[0] == kind)
        diff = np.abs(outs[a] - outs[b]).max()
        print(f"  {kind:5s} {a[1]:>10s} {n / ta:9.1f} {unit}/s   {b[1]:>10s} {n / tb:9.1f} {unit}/s   "
              f"speed-up {ta / tb:.2f}x   max |diff| {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
