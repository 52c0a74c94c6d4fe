"""Seconds per batch of a CNN audio tower, inference (forward) and training (forward + backward).

  python benchmarks/cnn_throughput.py --preset aisfx --seconds 2.3 10 --batch 8

Random weights of the preset's shape (the pretrained ones run at the same speed) on random log-mels of
the preset's front end (`AISFX_AUDIO` for aisfx, `AudioConfig()` otherwise); prints one line per clip
length. Use it to decide between fine-tuning the tower and locking it (forward only).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp.audio import AISFX_AUDIO, AudioConfig
from clapcomp.models.cnn import Cnn
from clapcomp.models.configs import CNN_PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="aisfx", choices=sorted(CNN_PRESETS))
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.3, 10.0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--time-segments", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = dataclasses.replace(CNN_PRESETS[args.preset], time_segments=args.time_segments)
    front = AISFX_AUDIO if args.preset == "aisfx" else AudioConfig()
    tower = Cnn(cfg, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda m, x: m(x))
    grads = nnx.jit(lambda m, x, k: nnx.grad(lambda m: jnp.sum(m(x, train=True, key=k) ** 2))(m))
    print(f"{args.preset}, batch {args.batch}, {jax.devices()[0].device_kind}, {len(jax.devices())} device(s)")
    for seconds in args.seconds:
        frames = dataclasses.replace(front, clip_seconds=seconds).n_frames
        x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (args.batch, 1, frames, cfg.n_mels)), jnp.float32)
        for name, fn, fn_args in [
            ("forward", forward, (tower, x)),
            ("forward+backward", grads, (tower, x, jax.random.key(0))),
        ]:
            jax.block_until_ready(fn(*fn_args))  # compile
            start = time.perf_counter()
            for _ in range(args.repeats):
                jax.block_until_ready(fn(*fn_args))
            per = (time.perf_counter() - start) / args.repeats
            print(
                f"{seconds:6.2f} s clips ({frames} frames): {name:17s} {per:7.3f} s/batch  {per / args.batch:7.3f} s/clip"
            )


if __name__ == "__main__":
    main()
