"""CompA compositional benchmarks (CompA-order, CompA-attribute): Winoground-style scores.

CSV columns: `pair_caption, reversed_pair_caption, pair_file, reversed_pair_file` and optionally
`triplet_caption, triplet_file` ("-" or empty = no triplet); files relative to the CSV. An
optional `category` column names the row's group in the breakdown; without it the breakdown uses
the connective found in the caption and, separately, the swapped attribute word pair.

For a row with captions C_i and audios A_i and cosine similarity s (strict `>`, a tie fails):
- text score:  every audio prefers its own caption, s(C_i, A_i) > s(C_j, A_i) for all j != i;
- audio score: every caption prefers its own audio, s(C_i, A_i) > s(C_i, A_j) for all j != i;
- group score: both. For n = 2 this is CompA's definition; n = 3 is the triplet generalisation.
Triplet rows are scored 3-way ("triplets.three_way") and, to compare with the paper (whose
script ignores triplets), also on their pair alone ("triplets.pairs"; "pairs" covers every row).

Chance levels (iid continuous similarities): text = audio = (1/n)^n, since each of the n audios
(captions) independently needs its own caption (audio) on top of n; group is counted exactly over
all (n^2)! rank orders of the n x n matrix: 1/6 for n = 2, 1/60 for n = 3 (tests re-derive both
by enumeration and Monte Carlo).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from clapcomp.decode import Limits
from clapcomp.evaluate.retrieval import _check_sim, cosine, embed_texts, read_csv, resolve
from clapcomp.inference import embed_audio_files

CHANCE = {  # n -> percent; see module docstring
    2: {"text": 25.0, "audio": 25.0, "group": 100.0 / 6},
    3: {"text": 100.0 / 27, "audio": 100.0 / 27, "group": 100.0 / 60},
}

# Most specific first; the earliest match in the caption wins (ties: the longer phrase).
CONNECTIVES = (
    "followed by",
    "succeeded by",
    "preceded by",
    "and then",
    "after which",
    "overlayed by",
    "overlaid by",
    "accompanied by",
    "along with",
    "together with",
    "in the background of",
    "at the same time as",
    "simultaneously with",
    "amidst",
    "amid",
    "during",
    "while",
    "before",
    "after",
    "then",
    "as",
    "with",
    "and",
)
_CONNECTIVE_RE = re.compile(r"\b(" + "|".join(re.escape(c) for c in CONNECTIVES) + r")\b", re.IGNORECASE)
NO_TRIPLET = {"", "-"}
SAMPLE_ROWS = 6  # rows whose full caption x audio similarity goes into the report heatmap


def winoground_scores(sim: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row Winoground outcomes.

    sim [R, n, n]: sim[r, i, j] = similarity of caption i and audio j of row r (caption i and
    audio i belong together). Returns {"text", "audio", "group"} each bool [R].
    """
    sim = _check_sim(sim, 3, "sim [R, n, n]")
    n = sim.shape[1]
    if sim.shape[2] != n or n < 2:
        raise ValueError(f"sim must be [R, n, n] with n >= 2, got {sim.shape}")
    diag = np.diagonal(sim, axis1=1, axis2=2)  # [R, n]
    off = ~np.eye(n, dtype=bool)
    # text: column j (audio j) -> own caption beats every other caption i != j
    text = np.all((diag[:, None, :] > sim) | ~off[None], axis=(1, 2))
    # audio: row i (caption i) -> own audio beats every other audio j != i
    audio = np.all((diag[:, :, None] > sim) | ~off[None], axis=(1, 2))
    return {"text": text, "audio": audio, "group": text & audio}


def summarize(flags: dict[str, np.ndarray], n: int) -> dict:
    """Percentages, counts, row count and chance level (n = 2 or 3) of `winoground_scores` output."""
    rows = len(flags["text"])
    out = {k: (100.0 * float(np.mean(v)) if rows else float("nan")) for k, v in flags.items()}
    out["counts"] = {k: int(np.sum(v)) for k, v in flags.items()}
    out["n"] = rows
    out["chance"] = dict(CHANCE[n])
    return out


def connective(caption: str) -> str:
    """The connective phrase of a caption ("followed by", "while", ...), or "other"."""
    found = [(m.start(), -len(m.group(1)), m.group(1).lower()) for m in _CONNECTIVE_RE.finditer(caption)]
    return min(found)[2] if found else "other"


def swapped_words(caption: str, reversed_caption: str) -> str:
    """ "a/b" when the two captions differ by exchanging exactly two words (an attribute swap such as
    "loud"/"quiet"), else "other"."""
    a = re.findall(r"[\w'-]+", caption.lower())
    b = re.findall(r"[\w'-]+", reversed_caption.lower())
    if len(a) != len(b):
        return "other"
    diff = {w for x, y in zip(a, b, strict=True) if x != y for w in (x, y)}
    return "/".join(sorted(diff)) if len(diff) == 2 else "other"


def breakdown(flags: dict[str, np.ndarray], groups: list[str]) -> dict:
    """Scores per group label: {label: {"n", "text", "audio", "group"}} (percent), largest first."""
    out = {}
    for label, _ in Counter(groups).most_common():
        mask = np.array([g == label for g in groups])
        out[label] = {"n": int(mask.sum()), **{k: 100.0 * float(np.mean(v[mask])) for k, v in flags.items()}}
    return out


def read_compa_csv(path: str | Path) -> list[dict]:
    """Rows as {"captions": [C0, C1(, C2)], "files": [Path...], "category": str | None}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CompA CSV {str(path)!r} does not exist")
    need = ("pair_caption", "reversed_pair_caption", "pair_file", "reversed_pair_file")
    rows = []
    for i, row in enumerate(read_csv(path)):
        missing = [k for k in need if not row.get(k)]
        if missing:
            raise ValueError(
                f"{path}: row {i + 1} lacks {missing}; a CompA CSV has columns "
                "pair_caption, reversed_pair_caption, pair_file, reversed_pair_file[, triplet_caption, triplet_file]"
            )
        caps = [row["pair_caption"], row["reversed_pair_caption"]]
        files = [resolve(path, row["pair_file"]), resolve(path, row["reversed_pair_file"])]
        tc, tf = row.get("triplet_caption", ""), row.get("triplet_file", "")
        if (tc in NO_TRIPLET) != (tf in NO_TRIPLET):
            raise ValueError(f"{path}: row {i + 1} has only one of triplet_caption / triplet_file; give both or '-'")
        if tc not in NO_TRIPLET:
            caps.append(tc)
            files.append(resolve(path, tf))
        rows.append({"captions": caps, "files": files, "category": row.get("category") or None})
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def compa_metrics(rows: list[dict], sims: list[np.ndarray]) -> dict:
    """Scores from parsed rows and each row's caption x audio similarity [n_r, n_r]."""
    pair_sim = np.stack([s[:2, :2] for s in sims])
    pairs = winoground_scores(pair_sim)
    out = {"n_rows": len(rows), "pairs": summarize(pairs, 2)}
    tri = [i for i, s in enumerate(sims) if s.shape[0] == 3]
    if tri:
        out["triplets"] = {
            "three_way": summarize(winoground_scores(np.stack([sims[i] for i in tri])), 3),
            "pairs": summarize({k: v[tri] for k, v in pairs.items()}, 2),
        }
    key = "category" if any(r["category"] for r in rows) else "connective"
    out["breakdown"] = {key: breakdown(pairs, [r["category"] or connective(r["captions"][0]) for r in rows])}
    swaps = [swapped_words(*r["captions"][:2]) for r in rows]
    if any(s != "other" for s in swaps):
        out["breakdown"]["swapped_words"] = breakdown(pairs, swaps)
    return out


def evaluate_compa(embedder, data, *, batch_size: int = 16, max_seconds: float = 600.0) -> dict:
    """Embed a CompA CSV's audios and captions and score it (see module docstring).

    Returns {"benchmark": "compa", "data", "n_rows", "pairs", ["triplets"], "breakdown", "sample"};
    "sample" holds the full caption x audio similarity of the first rows for the report heatmap.
    """
    rows = read_compa_csv(data)
    files = list(dict.fromkeys(f for r in rows for f in r["files"]))
    texts = list(dict.fromkeys(c for r in rows for c in r["captions"]))
    audio_emb = embed_audio_files(embedder, files, batch_size=batch_size, limits=Limits(max_seconds=max_seconds))
    text_emb = embed_texts(embedder, texts, 4 * batch_size)
    f_idx = {f: i for i, f in enumerate(files)}
    t_idx = {t: i for i, t in enumerate(texts)}
    sims = [
        cosine(text_emb[[t_idx[c] for c in r["captions"]]], audio_emb[[f_idx[f] for f in r["files"]]]) for r in rows
    ]
    out = {"benchmark": "compa", "data": str(data), **compa_metrics(rows, sims)}
    head = rows[:SAMPLE_ROWS]
    s_caps = [c for r in head for c in r["captions"]]
    s_files = [f for r in head for f in r["files"]]
    out["sample"] = {
        "captions": s_caps,
        "audio": [f.name for f in s_files],
        "sim": cosine(text_emb[[t_idx[c] for c in s_caps]], audio_emb[[f_idx[f] for f in s_files]]).tolist(),
    }
    return out
