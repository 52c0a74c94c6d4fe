"""What the per-step sha256 manifests cost a checkpoint save and restore (`clapcomp.train.checkpoint`).

    python benchmarks/checkpoint_manifest.py --params 153.5e6 --repeats 3 --dir /tmp/ckpt_bench

A LAION-CLAP-size train state as plain float32 arrays: `--params` parameters (one 50265 x 768 word
embedding, the rest in 768 x 3072 matrices and one remainder) and the two AdamW moments of the same
shapes (3 x 153.5 M x 4 B = 1.84 GB), on one CPU device. With the `Checkpointer` the trainer uses, it
times, `--repeats` times each and alternating:
  blocking `save()` alone: what the train loop waits for (the device -> host copy);
  save     `save()` + `wait()`: the whole asynchronous write, with the manifest (hashing runs in Orbax's
           post-finalisation hook, on the background thread) and without it (the hook a no-op);
  restore  `restore()` of that step: with the check (hashing runs beside Orbax's read, in a thread)
           and without it;
  hash     `fs.write_manifest` of a finished step alone (the hashing work itself).
Prints the medians and the overheads in % of the time without manifests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def state_like_laion(n_params: float):
    """{"params", "mu", "nu"}: lists of float32 arrays holding `n_params` numbers each."""
    import jax

    shapes, left = [], int(n_params)
    if left >= 50265 * 768:
        shapes.append((50265, 768))
        left -= 50265 * 768
    while left >= 768 * 3072:
        shapes.append((768, 3072))
        left -= 768 * 3072
    if left:
        shapes.append((left,))
    rng = np.random.default_rng(0)

    def tree(scale):
        return [jax.device_put((scale * rng.standard_normal(s, np.float32)).astype(np.float32)) for s in shapes]

    return {"step": np.int32(1), "params": tree(0.02), "mu": tree(1e-3), "nu": tree(1e-6)}, len(shapes)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, default=153.5e6, help="parameters (LAION-CLAP HTSAT+RoBERTa: 153.5e6)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", type=Path, required=True, help="scratch folder (deleted at the end)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import grain
    import jax

    from clapcomp import fs
    from clapcomp.train import checkpoint as ckpt_lib

    state, leaves = state_like_laion(args.params)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
    gigabytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state)) / 1e9
    print(f"state: {3 * leaves} arrays, {gigabytes:.2f} GB; {jax.devices()[0].device_kind}", flush=True)
    names = (
        "save_with",
        "save_without",
        "blocking_with",
        "blocking_without",
        "restore_with",
        "restore_without",
        "hash",
    )
    times = {k: [] for k in names}
    real_hook, real_verify = ckpt_lib.Checkpointer._write_manifest, ckpt_lib.Checkpointer._verify
    try:
        for r in range(args.repeats):
            for manifests in (True, False) if r % 2 == 0 else (False, True):
                tag = "with" if manifests else "without"
                ckpt_lib.Checkpointer._write_manifest = real_hook if manifests else (lambda self: None)
                ckpt_lib.Checkpointer._verify = real_verify if manifests else (lambda self, step: None)
                shutil.rmtree(args.dir, ignore_errors=True)
                ck = ckpt_lib.Checkpointer(args.dir, keep=2)
                iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
                t = time.perf_counter()
                ck.save(1, state, iterator)
                times[f"blocking_{tag}"].append(time.perf_counter() - t)
                ck.wait()
                times[f"save_{tag}"].append(time.perf_counter() - t)
                t = time.perf_counter()
                restored = ck.restore(abstract, iterator)
                jax.block_until_ready(restored)
                times[f"restore_{tag}"].append(time.perf_counter() - t)
                ck.close()
                assert (args.dir / "checkpoints" / "1" / fs.MANIFEST).is_file() == manifests
                if manifests:
                    t = time.perf_counter()
                    fs.write_manifest(args.dir / "checkpoints" / "1", exclude=ckpt_lib._REWRITTEN)
                    times["hash"].append(time.perf_counter() - t)
                del restored
    finally:
        ckpt_lib.Checkpointer._write_manifest, ckpt_lib.Checkpointer._verify = real_hook, real_verify
        shutil.rmtree(args.dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for op in ("blocking", "save", "restore"):
        a, b = med[f"{op}_with"], med[f"{op}_without"]
        print(f"{op:8s} with manifest {a:6.2f} s, without {b:6.2f} s: +{a - b:5.2f} s ({100 * (a - b) / b:+.1f}%)  "
              f"[all: {' '.join(f'{x:.2f}' for x in times[f'{op}_with'])} / "
              f"{' '.join(f'{x:.2f}' for x in times[f'{op}_without'])}]")  # fmt: skip
    print(f"hash     sha256 of the step alone: {med['hash']:.2f} s ({gigabytes / med['hash']:.2f} GB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
