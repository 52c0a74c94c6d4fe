"""Plain vs CompA stage 2 vs CompA stage 2 + modular stage 3 on the real-sound corpus.

    python examples/real_sounds/compare.py --corpus data/real_sounds --workdir runs/real_sounds \
        --config configs/demo.py --seeds 0,1,2 --steps 1200

For every seed, from the same initialisation (config.init and the seed), the same training
records (the corpus's composed train split) and the same number of optimizer steps:
- "plain":          get_config("plain"),  `steps` steps of the standard contrastive loss;
- "CompA s2":       get_config("compa"),  `steps` steps with K hard negatives per audio;
- "CompA s2+s3":    get_config("compa") for `steps - stage3_steps` steps, then get_config("modular")
                    initialised from that checkpoint (init.kind = "checkpoint") for `stage3_steps`
                    (`--stage3-steps 0`: this model is left out).
Each model is evaluated on the held-apart test files the corpus built from test-split clips
only: test/order.csv, test/attribute.csv (loudness + counting) and test/retrieval.jsonl. Prints
the table of `clapcomp.demo.format_table` (mean ± std over seeds) and writes
WORKDIR/report/compare.json and the PNG charts.

`--config` is any config file whose get_config(arg) takes "plain" / "compa" / "modular" (the audio
tower is the config's: configs/real_sounds.py starts from the pretrained aisfx CNN + MiniLM with
the audio tower locked, configs/demo.py trains a small model from scratch);
`--set key=value` (repeatable) overrides any field, e.g. `--set optimizer.lr=1e-4`, for every
run; `--set3 key=value` only for the stage-3 run (after `--set`); both are read as `clapcomp train
--config.key=value` is (`clapcomp.train.config.load`): an unknown key stops the script at once.

A locked audio tower (`freeze="audio_tower"`, as configs/real_sounds.py) runs once per distinct clip:
its outputs on the training records are written once into WORKDIR/tower_cache/ and every run trains
from them (`config.data.tower_cache`, `clapcomp.train.locked_tower`), and the evaluations share one
in-memory cache of its outputs on the test files (`CachedClap`): the same numbers, without rerunning
the tower per run, seed and evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from clapcomp.train.config import load


def records_for(corpus: Path, workdir: Path, sample_rate: int) -> Path:
    """The corpus's train records at `sample_rate` (built into WORKDIR once when the corpus lacks them)."""
    from clapcomp.data import build

    for rec in (corpus / f"records_{sample_rate}", workdir / f"records_{sample_rate}"):
        if (rec / "stats.json").is_file():
            return rec
    stats = build.build([str(corpus / "train.jsonl")], rec, format="manifest", sample_rate=sample_rate)
    print(f"   built {rec}: written {stats['written']}, skipped {stats['skipped']}", flush=True)
    return rec


def tower_cache_for(config, records: Path, workdir: Path) -> str:
    """`config.data.tower_cache` for the runs of `config`: with a locked audio tower, its outputs on
    `records` (written into WORKDIR/tower_cache/ once, then found there); else ''."""
    from clapcomp.train import locked_tower, optim

    if not optim.audio_tower_locked(config.freeze):
        return ""
    t0 = time.perf_counter()
    path = locked_tower.cache_for_config(config, records, workdir / "tower_cache")
    print(f"   audio-tower cache {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return str(path)


def train(config, records: Path, seed: int, steps: int, run_dir: Path, init: Path | None = None,
          tower_cache: str = "") -> None:  # fmt: skip
    from clapcomp.train import loop

    config.seed = seed
    config.data.train = str(records)
    config.data.tower_cache = tower_cache
    config.total_steps = steps
    config.ckpt_every = steps
    if init is not None:
        config.init.kind, config.init.path = "checkpoint", str(init)
    print(f"\n== seed {seed}: {config.loss} loss, {steps} steps -> {run_dir}", flush=True)
    loop.train(config, run_dir)


def evaluate(run_dir: Path, tokenizer_path: str, test: Path, caches: dict) -> dict:
    """The held-apart scores of `run_dir`'s model; its audio tower's outputs come from (and go into)
    `caches`, shared by every model evaluated (a tower runs once per distinct test file)."""
    from clapcomp.evaluate.run import EVALUATORS
    from clapcomp.tokenizer import Tokenizer
    from clapcomp.train import checkpoint
    from clapcomp.train.locked_tower import CachedClap

    cfg, model = checkpoint.load_model(run_dir)
    tokenizer = Tokenizer.from_file(tokenizer_path, max_length=cfg.text.max_length)
    embedder = CachedClap(model, cfg, tokenizer, caches=caches)
    return {
        "order": EVALUATORS["compa"](embedder, data=str(test / "order.csv")),
        "attribute": EVALUATORS["compa"](embedder, data=str(test / "attribute.csv")),
        "retrieval": EVALUATORS["retrieval"](embedder, data=str(test / "retrieval.jsonl")),
    }


def run_seed(a, seed: int, caches: dict) -> dict:
    workdir = a.workdir / f"seed{seed}"
    cfg = lambda loss: load(a.config, loss, a.set)
    records = records_for(a.corpus, a.workdir, cfg("plain").model.audio.sample_rate)
    s3 = a.stage3_steps if a.stage3_steps is not None else a.steps // 2
    if not 0 <= s3 < a.steps:
        raise ValueError(f"--stage3-steps must be in [0, --steps={a.steps}), got {s3}")
    seeded = cfg("plain")
    seeded.seed = seed
    cache = tower_cache_for(seeded, records, a.workdir)  # stage 3 starts from stage 2: the same locked tower
    train(cfg("plain"), records, seed, a.steps, workdir / "plain", tower_cache=cache)
    train(cfg("compa"), records, seed, a.steps, workdir / "compa", tower_cache=cache)
    runs = {"plain": "plain", "CompA s2": "compa"}
    if s3:
        train(cfg("compa"), records, seed, a.steps - s3, workdir / "compa_s2_for_s3", tower_cache=cache)
        train(load(a.config, "modular", a.set + a.set3), records, seed, s3, workdir / "compa_s3",
              init=workdir / "compa_s2_for_s3", tower_cache=cache)  # fmt: skip
        runs["CompA s2+s3"] = "compa_s3"
    tok, test = cfg("plain").tokenizer, a.corpus / "test"
    return {name: evaluate(workdir / d, tok, test, caches) for name, d in runs.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="the folder build_corpus.py wrote")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path("configs/demo.py"))
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument(
        "--set3", action="append", default=[], help="override for the stage-3 run only, e.g. optimizer.lr=1e-4"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps of every model")
    ap.add_argument("--stage3-steps", type=int, default=None,
                    help="of --steps, spent in stage 3 (default half; 0: no s2+s3 model)")  # fmt: skip
    a = ap.parse_args(argv)
    try:  # every override is checked before anything runs
        load(a.config, "plain", a.set), load(a.config, "modular", a.set + a.set3)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    if not (a.corpus / "corpus.json").is_file():
        ap.error(f"{a.corpus} has no corpus.json; build it with examples/real_sounds/build_corpus.py")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    from clapcomp.demo import _numbers, format_table
    from clapcomp.evaluate.report import write_report

    t0 = time.perf_counter()
    seeds = [int(s) for s in a.seeds.split(",")]
    caches: dict = {}  # the audio towers' outputs on the test files, shared by every evaluation
    per_seed = []
    for seed in seeds:
        per_seed.append(run_seed(a, seed, caches))
        print(f"\n== seed {seed}, held-apart test split ({(time.perf_counter() - t0) / 60:.1f} min so far)")
        print(format_table(per_seed[-1:], list(per_seed[-1])), flush=True)
    out = a.workdir / "report"
    write_report(per_seed, out, seeds=seeds)
    summary = {"seeds": seeds, "steps": a.steps, "stage3_steps": a.stage3_steps, "config": str(a.config), "set": a.set,
               "set3": a.set3, "corpus": str(a.corpus),
               "per_seed": [_numbers(r) for r in per_seed], "seconds": time.perf_counter() - t0}  # fmt: skip
    (out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n== held-apart real-sound test split (percent; pairs scored Winoground-style)")
    print(format_table(per_seed, list(per_seed[-1])))
    print(f"\n{out}/compare.json; total {summary['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
