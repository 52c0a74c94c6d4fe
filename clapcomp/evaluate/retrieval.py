"""Audio-text retrieval (AudioCaps / Clotho multi-caption protocol) and shared evaluation I/O.

Protocol (as LAION-CLAP's `evaluate_clotho_audiocaps`, src/laion_clap/training/train.py, which
follows XinhaoMei/audio-text_retrieval tools/utils.py `a2t` / `t2a`):
- text->audio: every caption is a query; its one relevant item is the audio it describes.
- audio->text: every audio is a query; its relevant items are all of its captions. R@k counts a
  hit when the best-ranked relevant caption is within the top k.
- AP@10 of one query with R relevant items, sorted positions p_1 < ... < p_R (0-based):
  AP@10 = (1 / R) * sum_{i : p_i < 10} i / (p_i + 1); mAP@10 is its mean over queries.
  With R = 1 (text->audio) this is 1 / (rank) for rank <= 10, else 0. For audio->text this is
  XinhaoMei's formula (it sorts the positions; LAION-CLAP's port omits that sort, which gives
  a different number when a later caption outranks an earlier one; we sort).
All numbers are percentages (0-100), as in the papers' tables.

Ties are resolved against the query (consistent with CompA's strict `>`): an irrelevant item
scoring equal to a relevant one is ranked above it, so a constant model gets no credit.

This module also holds the host-side helpers the three evaluators share: embedding texts in
batches, cosine, reading the benchmark files. Audio files are read and embedded by
`clapcomp.inference.embed_audio_files` (decode budget, a `--max-seconds` cap, batches by length).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from clapcomp.decode import Limits
from clapcomp.inference import embed_audio_files

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------
# ranking primitives


def relevant_positions(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks of the relevant items in one query's ranking, ascending.

    scores [N] float, relevant [N] bool. The i-th best relevant item (i = 0, 1, ...) sits at
    i + #(irrelevant items scoring >= it): ties with irrelevant items go against the query.
    Returns int [R] with R = relevant.sum().
    """
    scores = np.asarray(scores, np.float64)
    relevant = np.asarray(relevant, bool)
    rel = np.sort(scores[relevant])[::-1]
    irrelevant = np.sort(scores[~relevant])
    beaten_by = irrelevant.size - np.searchsorted(irrelevant, rel, side="left")
    return np.arange(rel.size) + beaten_by


def average_precision(positions: np.ndarray, n_relevant: int, cutoff: int | None = None) -> float:
    """AP from sorted 0-based positions of the relevant items: (1/R) sum_i (i+1)/(p_i+1).

    With `cutoff`, only positions < cutoff count (AP@cutoff, normalised by R as in the module
    docstring). Returns a fraction in [0, 1].
    """
    positions = np.asarray(positions)
    hits = np.arange(1, positions.size + 1) / (positions + 1.0)
    if cutoff is not None:
        hits = hits[positions < cutoff]
    return float(hits.sum() / n_relevant)


def _check_sim(sim: np.ndarray, ndim: int, what: str) -> np.ndarray:
    sim = np.asarray(sim, np.float64)
    if sim.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dims, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError(f"{what} has NaN or inf entries; check the embeddings (e.g. silent or corrupt audio)")
    return sim


def retrieval_metrics(sim: np.ndarray, text_owner: np.ndarray) -> dict:
    """Retrieval metrics from a similarity matrix.

    sim [n_audio, n_text]: cosine similarity of audio a and caption t.
    text_owner [n_text] int: index of the audio each caption describes.
    Returns {"text_to_audio": {...}, "audio_to_text": {...}, "n_audio", "n_text"} with R@1/5/10,
    mAP@10 (percent) and mean / median rank (1-based) per direction.
    """
    sim = _check_sim(sim, 2, "sim [n_audio, n_text]")
    owner = np.asarray(text_owner)
    n_audio, n_text = sim.shape
    if owner.shape != (n_text,) or owner.min(initial=0) < 0 or owner.max(initial=0) >= n_audio:
        raise ValueError(f"text_owner must be [n_text={n_text}] ints in [0, {n_audio}), got {owner!r}")
    counts = np.bincount(owner, minlength=n_audio)
    if (counts == 0).any():
        raise ValueError(f"audio {int(np.argmin(counts))} has no caption; every audio needs at least one")

    # one relevant audio per caption: its position = #other audios scoring >= it
    own = sim[owner, np.arange(n_text)]
    t2a_pos = (sim >= own[None, :]).sum(axis=0) - 1
    t2a_ap = np.where(t2a_pos < 10, 1.0 / (t2a_pos + 1), 0.0)
    a2t_pos, a2t_ap = [], []
    for a in range(n_audio):
        pos = relevant_positions(sim[a], owner == a)
        a2t_pos.append(pos[0])
        a2t_ap.append(average_precision(pos, pos.size, cutoff=10))
    return {
        "n_audio": int(n_audio),
        "n_text": int(n_text),
        "text_to_audio": _direction(t2a_pos, t2a_ap),
        "audio_to_text": _direction(np.array(a2t_pos), np.array(a2t_ap)),
    }


def _direction(best_pos: np.ndarray, ap: np.ndarray) -> dict:
    out = {f"R@{k}": 100.0 * float(np.mean(best_pos < k)) for k in KS}
    out["mAP@10"] = 100.0 * float(np.mean(ap))
    out["mean_rank"] = float(np.mean(best_pos) + 1)
    out["median_rank"] = float(np.floor(np.median(best_pos)) + 1)
    return out


# ---------------------------------------------------------------------------------------------
# shared I/O: audio files and embedding in batches


def embed_texts(embedder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embed texts [N] -> [N, D] float32 in batches."""
    chunks = [
        np.asarray(embedder.embed_text(list(texts[s : s + batch_size]))) for s in range(0, len(texts), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity [N, D] x [M, D] -> [N, M] float64 (re-normalises; embeddings may be fp32)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


# ---------------------------------------------------------------------------------------------
# evaluator


def read_captions(path: str | Path) -> tuple[list[Path], list[list[str]]]:
    """Read a retrieval file: CSV `audio,caption` (one row per caption, audio repeated; or a JSON
    list in `caption`; or Clotho's `file_name,caption_1..caption_5`) or JSONL
    `{"audio": ..., "caption": str | list}`. Paths are relative to the file. Returns the audio
    paths [N_audio] in first-seen order and each audio's captions."""
    path = Path(path)
    rows = _read_rows(path)
    captions: dict[Path, list[str]] = {}
    for i, row in enumerate(rows):
        audio = row.get("audio", row.get("file_name"))
        caps = row.get("caption", row.get("captions"))
        if caps is None:
            caps = [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]
        if not audio or not caps:
            raise ValueError(
                f"{path}: row {i + 1} needs an `audio` path and a `caption` (got columns {sorted(row)}); "
                'use CSV `audio,caption` or JSONL {"audio": ..., "caption": [...]}'
            )
        if isinstance(caps, str):
            caps = json.loads(caps) if caps.lstrip().startswith("[") else [caps]
        captions.setdefault(resolve(path, audio), []).extend(str(c) for c in caps)
    if not captions:
        raise ValueError(f"{path} has no rows")
    return list(captions), list(captions.values())


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    return read_csv(path)


def read_csv(path: Path) -> list[dict]:
    """CSV rows as dicts with stripped header names and values."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def resolve(base_file: Path, rel: str) -> Path:
    """A path from a benchmark file: absolute as is, otherwise relative to the file's folder."""
    p = Path(rel)
    return p if p.is_absolute() else Path(base_file).parent / p


def evaluate_retrieval(embedder, data, *, batch_size: int = 16, max_seconds: float = 600.0) -> dict:
    """Text<->audio retrieval on a caption file (see `read_captions`). Returns `retrieval_metrics`
    plus "benchmark", "data"."""
    audio_paths, caps = read_captions(data)
    texts = [c for cs in caps for c in cs]
    owner = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
    sim = cosine(
        embed_audio_files(embedder, audio_paths, batch_size=batch_size, limits=Limits(max_seconds=max_seconds)),
        embed_texts(embedder, texts, 4 * batch_size),
    )
    return {"benchmark": "retrieval", "data": str(data), **retrieval_metrics(sim, owner)}
