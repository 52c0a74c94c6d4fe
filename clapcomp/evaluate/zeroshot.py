"""Zero-shot classification (ESC-50 / US8K style): each label becomes a prompt, the audio's
class is the prompt it is most similar to.

- top-1 accuracy: the true label's similarity is strictly above every other label's (a tie counts
  as wrong, as in CompA's strict `>`).
- mAP: mean over classes (that occur in the data) of the average precision of ranking all audios
  by their similarity to that class's prompt, relevant = audios of that class; AP as in
  `retrieval.average_precision` without cutoff (ties against the class). Percentages (0-100).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clapcomp.decode import Limits
from clapcomp.evaluate.retrieval import (
    _check_sim,
    average_precision,
    cosine,
    embed_texts,
    read_csv,
    relevant_positions,
    resolve,
)
from clapcomp.inference import embed_audio_files

DEFAULT_TEMPLATE = "This is a sound of {label}."


def prompts(labels: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per label; underscores become spaces ("chirping_birds" -> "chirping birds")."""
    if "{label}" not in template:
        raise ValueError(f"template {template!r} must contain '{{label}}'")
    return [template.format(label=str(label).replace("_", " ")) for label in labels]


def zero_shot_metrics(sim: np.ndarray, labels: np.ndarray) -> dict:
    """sim [n_audio, n_labels] similarity of audio and label prompt; labels [n_audio] int class ids.

    Returns {"top1", "mAP", "n_audio", "n_classes", "per_class_top1": [n_labels] (NaN where a class
    has no audio)}.
    """
    sim = _check_sim(sim, 2, "sim [n_audio, n_labels]")
    labels = np.asarray(labels)
    n_audio, n_labels = sim.shape
    if labels.shape != (n_audio,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= n_labels:
        raise ValueError(f"labels must be [n_audio={n_audio}] ints in [0, {n_labels}), got {labels!r}")
    own = sim[np.arange(n_audio), labels]
    others = np.where(np.eye(n_labels, dtype=bool)[labels], -np.inf, sim)
    correct = own > others.max(axis=1)
    aps, per_class = [], []
    for c in range(n_labels):
        rel = labels == c
        per_class.append(100.0 * float(correct[rel].mean()) if rel.any() else float("nan"))
        if rel.any():
            aps.append(average_precision(relevant_positions(sim[:, c], rel), int(rel.sum())))
    return {
        "n_audio": int(n_audio),
        "n_classes": len(aps),
        "top1": 100.0 * float(correct.mean()),
        "mAP": 100.0 * float(np.mean(aps)),
        "per_class_top1": per_class,
    }


def read_labels(path: str | Path) -> tuple[list[Path], list[str]]:
    """CSV `audio,label` -> (audio paths relative to the CSV, labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zero-shot CSV {str(path)!r} does not exist")
    rows = read_csv(path)
    if not rows or not all(r.get("audio") and r.get("label") for r in rows):
        raise ValueError(f"{path} must be a non-empty CSV with columns `audio,label` and no empty cells")
    return [resolve(path, r["audio"]) for r in rows], [r["label"] for r in rows]


def evaluate_zeroshot(
    embedder,
    data,
    *,
    template: str = DEFAULT_TEMPLATE,
    class_names: list[str] | None = None,
    batch_size: int = 16,
    max_seconds: float = 600.0,
) -> dict:
    """Zero-shot classification on a CSV `audio,label`. Classes are `class_names` if given (every
    CSV label must be among them), else the sorted distinct CSV labels."""
    files, labels = read_labels(data)
    classes = list(class_names) if class_names is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} in {data} are not in class_names; add them or fix the CSV")
    ids = np.array([classes.index(label) for label in labels])
    audio = embed_audio_files(embedder, files, batch_size=batch_size, limits=Limits(max_seconds=max_seconds))
    sim = cosine(audio, embed_texts(embedder, prompts(classes, template)))
    out = zero_shot_metrics(sim, ids)
    out["per_class_top1"] = dict(zip(classes, out["per_class_top1"], strict=True))
    return {"benchmark": "zeroshot", "data": str(data), "template": template, "classes": classes, **out}
