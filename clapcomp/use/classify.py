"""`clapcomp classify`: zero-shot (prompt ensembles) or linear-probe labels for audio files.

    clapcomp classify --model M (--labels L1 L2 ... | --labels-file F | --probe P) [--templates-file T]
        [--top-k K] [--multi-label --threshold X] [--windows] [--json | --csv OUT] PATH...

Scores: zero-shot, single-label: the softmax over labels of exp(logit_scale) * cosine (`Clap.zero_shot`,
the same numbers); zero-shot, multi-label: the cosine of audio and label embedding, a label kept where it
is >= the threshold; with a probe: its class probabilities (both modes). A recording longer than the
model's clip is scored per window (`clapcomp.use.files`) and the file's score is the mean of its windows'.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.decode import Limits
from clapcomp.inference import Clap, load
from clapcomp.use.files import embed_files, find_audio

# Sound-event prompts (after open_clip's and msclap's audio templates); one per line in a --templates-file.
SOUND_TEMPLATES = (
    "This is a sound of {}.",
    "a sound of {}.",
    "the sound of {}.",
    "a recording of {}.",
    "an audio clip of {}.",
    "{} can be heard.",
)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file; a clear error when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    lines = [s.strip() for s in path.read_text().splitlines() if s.strip()]
    if not lines:
        raise ValueError(f"{what} file {path} is empty; write one entry per line")
    return lines


class Scorer:
    """audio embeddings [W, D] -> scores [W, n_labels] for `labels`, zero-shot or with a probe."""

    def __init__(self, clap: Clap, labels=None, templates=SOUND_TEMPLATES, probe=None, multi_label=False):
        self.clap, self.multi_label, self.probe = clap, multi_label, probe
        if probe is not None:
            self.labels = probe.labels
        else:
            self.labels, self.label_emb = list(labels), clap.label_embeddings(labels, templates)

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        if self.probe is not None:
            return self.probe.probabilities(emb)
        if self.multi_label:
            return emb @ self.label_emb.T
        return self.clap.label_probabilities(emb, self.label_emb)


def ranked(labels: list[str], scores: np.ndarray, top_k: int, threshold: float | None) -> list[dict]:
    """[{"label", "score"}] best first: the top_k, and with a threshold only those >= it."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [
        {"label": labels[i], "score": round(float(scores[i]), 6)}
        for i in order
        if threshold is None or scores[i] >= threshold
    ]


def classify(
    clap: Clap, files: list[Path], scorer: Scorer, *, top_k: int, threshold=None, windows=False, batch=32, limits=None
):
    """-> (results [{"file", "labels", ("windows": [{"offset", "labels"}])}], errors [str])."""
    results, errors = [], []
    for item in embed_files(clap, files, batch=batch, limits=limits):
        if item.error:
            errors.append(item.error)
            continue
        scores = scorer(item.embeddings)
        row = {"file": str(item.path), "labels": ranked(scorer.labels, scores.mean(axis=0), top_k, threshold)}
        if windows:
            row["windows"] = [
                {"offset": round(float(t), 3), "labels": ranked(scorer.labels, s, top_k, threshold)}
                for t, s in zip(item.offsets, scores, strict=True)
            ]
        results.append(row)
    return results, errors


def to_csv(results: list[dict]) -> str:
    """Rows `file,offset,label,score`: offset empty for a file's own scores, seconds for its windows'."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["file", "offset", "label", "score"])
    for r in results:
        w.writerows([r["file"], "", x["label"], x["score"]] for x in r["labels"])
        for win in r.get("windows", []):
            w.writerows([r["file"], win["offset"], x["label"], x["score"]] for x in win["labels"])
    return out.getvalue()


def _text(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(r["file"])
        lines += [f"  {x['score']:8.4f}  {x['label']}" for x in r["labels"]]
        for win in r.get("windows", []):
            lines.append(f"  @ {win['offset']:8.2f} s: " + ", ".join(f"{x['label']} ({x['score']:.3f})" for x in win["labels"]))  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clapcomp classify", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (export, HF ClapModel dir, training workdir)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--labels", nargs="+", help="label names (zero-shot)")
    which.add_argument("--labels-file", help="a file of label names, one per line (zero-shot)")
    which.add_argument("--probe", help="a probe folder written by `clapcomp probe` (its labels)")
    p.add_argument("--templates-file", help=f"prompt templates, one per line, '{{}}' for the label (default: {len(SOUND_TEMPLATES)} sound-event templates)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=5, help="labels per file / window (default 5)")
    p.add_argument("--multi-label", action="store_true", help="every label scoring >= --threshold (zero-shot: cosine)")
    p.add_argument("--threshold", type=float, help="the score a label needs with --multi-label")
    p.add_argument("--windows", action="store_true", help="also report each window of the model's clip length")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help='stdout: [{"file", "labels": [{"label", "score"}]}]')
    out.add_argument("--csv", metavar="OUT", help="write rows file,offset,label,score to OUT")
    p.add_argument("--batch", type=int, default=32, help="windows per model call (default 32)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio files (header check)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files or folders (searched recursively)")
    args = p.parse_args(argv)
    if not args.paths:  # `--labels a b sounds/` takes sounds/ for a label
        p.error("no PATH given: end the labels with -- (--labels dog rain -- sounds/) or put PATHs before --labels")
    if args.multi_label != (args.threshold is not None):
        p.error("--multi-label and --threshold go together")
    if args.top_k < 1 or args.batch < 1:
        p.error("--top-k and --batch must be >= 1")
    try:
        files = find_audio(args.paths)
        clap = load(args.model, tokenizer=args.tokenizer)
        if args.probe:
            from clapcomp.use.probe import Probe

            scorer = Scorer(clap, probe=Probe.load(args.probe, clap), multi_label=args.multi_label)
        else:
            labels = args.labels or read_lines(args.labels_file, "labels")
            templates = read_lines(args.templates_file, "templates") if args.templates_file else SOUND_TEMPLATES
            scorer = Scorer(clap, labels, templates, multi_label=args.multi_label)
        results, errors = classify(
            clap,
            files,
            scorer,
            top_k=args.top_k,
            threshold=args.threshold,
            windows=args.windows,
            batch=args.batch,
            limits=Limits(max_seconds=args.max_seconds),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"clapcomp classify: error: {e}", file=sys.stderr)
        return 2
    if args.csv:
        fs.write_text(Path(args.csv), to_csv(results))
        print(f"wrote {args.csv} ({len(results)} files)", file=sys.stderr)
    else:
        sys.stdout.write(json.dumps(results, indent=1) + "\n" if args.json else _text(results))
    for e in errors:
        print(f"clapcomp classify: skipped {e}", file=sys.stderr)
    if errors:
        print(f"clapcomp classify: {len(errors)} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if errors else 0
