"""Files/s of `clapcomp classify` and `clapcomp search index`, queries/s of `search query`, on CPU.

    python benchmarks/use_speed.py [--config tiny|demo] [--files 64] [--seconds 4] [--queries 144]

A model of configs/<config>.py with random weights (speed does not depend on training), exported as
safetensors; `--files` synthetic recordings of `--seconds` each (clapcomp.data.synth events, repeated).
Each job runs once after a warm-up pass over the same files (compilation excluded); the index is built from scratch.
Prints one JSON line. Nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from flax import nnx

import clapcomp
from clapcomp.convert.safetensors import save_safetensors
from clapcomp.data.synth import EVENTS, render_event
from clapcomp.models.clap import ClapModel
from clapcomp.tokenizer import Tokenizer
from clapcomp.train.config import load
from clapcomp.train.state import model_config
from clapcomp.use.classify import SOUND_TEMPLATES, Scorer, classify
from clapcomp.use.search import Searcher, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="demo", choices=["tiny", "demo"])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--queries", type=int, default=144)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="use-speed-"))
    config = load(Path(__file__).parents[1] / "configs" / f"{a.config}.py")
    cfg = model_config(config)
    save_safetensors(ClapModel(cfg, rngs=nnx.Rngs(0)), cfg, root / "model",
                     Tokenizer.from_file(config.tokenizer, max_length=cfg.text.max_length))  # fmt: skip
    clap = clapcomp.load(root / "model")
    rate, n = cfg.audio.sample_rate, int(a.seconds * cfg.audio.sample_rate)
    (root / "lib").mkdir()
    for i in range(a.files):
        x = np.resize(render_event(EVENTS[i % len(EVENTS)], {}, i, rate), n)  # the event repeated to --seconds
        sf.write(str(root / "lib" / f"{i:04d}.wav"), x.astype(np.float32), rate, subtype="PCM_16")
    files = sorted((root / "lib").glob("*.wav"))
    labels = list(EVENTS)
    scorer = Scorer(clap, labels, SOUND_TEMPLATES)
    classify(clap, files, scorer, top_k=5)  # warm-up: compiles every batch shape the timed runs use
    t = time.perf_counter()
    classify(clap, files, scorer, top_k=5)
    classify_fps = a.files / (time.perf_counter() - t)
    t = time.perf_counter()
    build(clap, str(root / "model"), root / "idx", [str(root / "lib")])
    index_fps = a.files / (time.perf_counter() - t)
    searcher = Searcher(root / "idx", clap=clap)
    queries = [f"a {e}, then a {f}" for e in EVENTS for f in EVENTS][: a.queries]
    searcher.text(queries[0])
    t = time.perf_counter()
    for q in queries:
        searcher.text(q, 10)
    qps = len(queries) / (time.perf_counter() - t)
    print(json.dumps({"config": a.config, "files": a.files, "seconds": a.seconds, "classify_files_per_s": round(classify_fps, 1),
                      "index_files_per_s": round(index_fps, 1), "queries_per_s": round(qps, 1), "n_queries": len(queries)}))  # fmt: skip


if __name__ == "__main__":
    main()
