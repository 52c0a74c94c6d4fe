"""`clapcomp probe`: a linear classifier on frozen audio embeddings, for `clapcomp classify --probe`.

    clapcomp probe --model M --train CSV --test CSV --out PROBE [--c C]

CSVs have columns `audio,label` (paths relative to the CSV). Each file is one vector, the normalised mean
of its window embeddings (`clapcomp.use.files`). The classifier is scikit-learn's multinomial
`LogisticRegression` (L2, lbfgs). Reported on the test split: accuracy (top-1) and mAP (mean over the
classes present in the test split of the average precision of ranking the test clips by that class's
probability), both 0-1. PROBE is a folder: `probe.safetensors` (`weight` [n_classes, D], `bias`
[n_classes]; class probabilities are softmax(x @ weight.T + bias)) and `probe.json` (labels, the model's
identity, the metrics). No pickle.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.decode import Limits
from clapcomp.inference import Clap, load
from clapcomp.use.files import embed_files, model_identity

FORMAT = "clapcomp-probe"


class Probe:
    """labels [n_classes], weight [n_classes, D], bias [n_classes], identity of the model it was fit on."""

    def __init__(self, labels: list[str], weight: np.ndarray, bias: np.ndarray, identity: dict):
        self.labels, self.weight, self.bias, self.identity = list(labels), weight, bias, identity

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        """emb [B, D] -> [B, n_classes]."""
        logits = emb.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    @classmethod
    def load(cls, path: str | Path, clap: Clap) -> Probe:
        """A probe folder, checked against `clap`'s identity (a probe fit on another model is refused)."""
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / "probe.json").is_file():
            raise FileNotFoundError(f"{path} holds no probe.json; write a probe with `clapcomp probe ... --out {path}`")
        meta = json.loads((path / "probe.json").read_text())
        if meta.get("model") != model_identity(clap):
            raise ValueError(f"the probe at {path} was fit on another model ({meta.get('model')}); "
                             "use the model it was fit on, or fit a new probe on this one")  # fmt: skip
        t = load_file(str(path / "probe.safetensors"))
        return cls(meta["labels"], t["weight"], t["bias"], meta["model"])

    def save(self, out: str | Path, extra: dict) -> None:
        from safetensors.numpy import save_file

        with fs.atomic_dir(Path(out), overwrite=True, purpose="clapcomp probe") as tmp:
            # C order: sklearn's coef_ can be Fortran-ordered, and safetensors writes an array's memory as it lies
            tensors = {
                k: np.ascontiguousarray(v, np.float32) for k, v in (("weight", self.weight), ("bias", self.bias))
            }
            save_file(tensors, str(tmp / "probe.safetensors"), metadata={"format": FORMAT})
            meta = {"format": FORMAT, "labels": self.labels, "model": self.identity, **extra}
            (tmp / "probe.json").write_text(json.dumps(meta, indent=2))


def read_split(path: str | Path) -> tuple[list[Path], list[str]]:
    """CSV `audio,label` -> (absolute audio paths, labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV {path} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not all(r.get("audio") and r.get("label") for r in rows):
        raise ValueError(f"{path} must be a non-empty CSV with columns `audio,label` and no empty cells")
    return [(path.parent / r["audio"]).resolve() for r in rows], [r["label"] for r in rows]


def embed_split(clap: Clap, files: list[Path], csv_path, limits: Limits | None = None) -> np.ndarray:
    """[n, D] file vectors; an unreadable file is an error (a probe's data must be whole)."""
    out = []
    for item in embed_files(clap, files, limits=limits):
        if item.error:
            raise ValueError(f"{item.error} (listed in {csv_path}); fix the file or drop its row")
        out.append(item.mean())
    return np.stack(out)


def fit(x: np.ndarray, y: list[str], c: float = 1.0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> (labels, weight [n_classes, D], bias [n_classes]), softmax(x @ weight.T + bias) = predict_proba."""
    from sklearn.linear_model import LogisticRegression

    labels = sorted(set(y))
    if len(labels) < 2:
        raise ValueError(f"the training split has {len(labels)} label(s); a probe needs at least 2")
    clf = LogisticRegression(C=c, tol=1e-8, max_iter=10_000).fit(x.astype(np.float64), [labels.index(v) for v in y])
    w, b = clf.coef_, clf.intercept_
    if len(labels) == 2:  # sklearn keeps one row for two classes: sigmoid(z) = softmax([0, z])[1]
        w, b = np.concatenate([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    return labels, w, b


def metrics(probs: np.ndarray, truth: np.ndarray) -> dict:
    """probs [n, C], truth [n] class ids -> {"accuracy", "mAP"} (module docstring)."""
    from sklearn.metrics import average_precision_score

    present = sorted(set(truth.tolist()))
    aps = [average_precision_score(truth == c, probs[:, c]) for c in present]
    return {"accuracy": float((probs.argmax(axis=1) == truth).mean()), "mAP": float(np.mean(aps))}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clapcomp probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--train", required=True, help="CSV audio,label to fit on")
    p.add_argument("--test", required=True, help="CSV audio,label to report accuracy / mAP on")
    p.add_argument("--out", required=True, help="probe folder to write (replaced whole when it exists)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression (default 1)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio files (header check)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    args = p.parse_args(argv)
    try:
        (train_files, train_y), (test_files, test_y) = read_split(args.train), read_split(args.test)
        clap, limits = load(args.model, tokenizer=args.tokenizer), Limits(max_seconds=args.max_seconds)
        labels, w, b = fit(embed_split(clap, train_files, args.train, limits), train_y, args.c)
        unknown = sorted(set(test_y) - set(labels))
        if unknown:
            raise ValueError(f"{args.test} has labels the training split lacks: {unknown}; add them to {args.train}")
        probe = Probe(labels, w, b, model_identity(clap))
        probs = probe.probabilities(embed_split(clap, test_files, args.test, limits))
        scores = metrics(probs, np.array([labels.index(v) for v in test_y]))
    except (ValueError, FileNotFoundError) as e:
        print(f"clapcomp probe: error: {e}", file=sys.stderr)
        return 2
    probe.save(args.out, {"c": args.c, "n_train": len(train_y), "n_test": len(test_y), "test": scores})
    print(json.dumps({"accuracy": round(scores["accuracy"], 4), "mAP": round(scores["mAP"], 4), "out": args.out}))
    return 0
