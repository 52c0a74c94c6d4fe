"""Where a model trained on the real-sound corpus stands, split by what it must do:

    python examples/real_sounds/diagnose.py --corpus data/real_sounds runs/real_sounds/seed0/compa ...

- recognition: each single clip of a split against the captions of all clips of that split
  (caption R@1, and whether the best caption's class is the clip's), train vs held-apart test clips;
- order on training compositions: over the first 96 order trees "A and then B" of train.jsonl whose
  first negative is the swap, how often the audio prefers its caption over the swap (also with the
  test split's connective "followed by").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

import clapcomp


def _audio(root: Path, rows: list[dict]) -> tuple[list[np.ndarray], int]:
    waves = [sf.read(root / r["audio"], dtype="float32", always_2d=True) for r in rows]
    return [w.mean(axis=1) for w, _ in waves], waves[0][1]


def recognition(model, root: Path, clips: list[dict], split: str) -> str:
    rows = [c for c in clips if c["split"] == split]
    audio, rate = _audio(root, rows)
    best = np.argmax(model.embed_audio(audio, rate) @ model.embed_text([r["caption"] for r in rows]).T, axis=1)
    r1 = np.mean(best == np.arange(len(rows)))
    cls = np.mean([rows[b]["class"] == r["class"] for b, r in zip(best, rows, strict=True)])
    return f"{split} ({len(rows)} clips): caption R@1 {100 * r1:.1f}, class {100 * cls:.1f}"


def train_order(model, root: Path) -> str:
    lines = (root / "train.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, lines) if r["kind"] == "tree" and r["negatives"]
            and " and then " in r["caption"] and " and then " in r["negatives"][0]][:96]  # fmt: skip
    audio, rate = _audio(root, rows)
    a = model.embed_audio(audio, rate)
    out = []
    for connective in (" and then ", " followed by "):
        cap = model.embed_text([r["caption"].replace(" and then ", connective) for r in rows])
        swap = model.embed_text([r["negatives"][0].replace(" and then ", connective) for r in rows])
        out.append(f"'{connective.strip()}' {100 * np.mean(np.sum(a * cap, 1) > np.sum(a * swap, 1)):.0f}%")
        if connective == " and then ":
            cosine = np.mean(np.sum(cap * swap, 1))
    return f"order over its swap ({len(rows)} train trees): {', '.join(out)}; caption-swap cosine {cosine:.2f}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="the folder build_corpus.py wrote")
    ap.add_argument("runs", nargs="+", type=Path, help="training workdirs")
    a = ap.parse_args(argv)
    clips = [json.loads(line) for line in (a.corpus / "clips.jsonl").read_text().splitlines()]
    for run in a.runs:
        model = clapcomp.load(run)
        parts = [recognition(model, a.corpus, clips, s) for s in ("train", "test")]
        print(f"{run}\n  {' | '.join(parts)}\n  {train_order(model, a.corpus)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
