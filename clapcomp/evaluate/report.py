"""Evaluation report: one JSON with every number and PNG plots a person would rather look at.

`results` maps model name -> benchmark name -> the dict an evaluator returned (its "benchmark"
key says which kind: "compa", "retrieval" or "zeroshot"), e.g.
{"plain CLAP": {"order": {...}, "attribute": {...}}, "CompA": {...}}. Models are drawn side by
side in every bar chart; CompA charts carry the chance level as a dashed line.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

SCORES = ("text", "audio", "group")


def write_report(results: dict[str, dict[str, dict]], out_dir) -> list[Path]:
    """Write `results.json` and the PNG plots into out_dir; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no results to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json"]
    paths[0].write_text(json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")

    models = list(results)
    benches = list(dict.fromkeys(b for m in models for b in results[m]))
    for bench in benches:
        per_model = {m: results[m][bench] for m in models if bench in results[m]}
        kind = next(iter(per_model.values()))["benchmark"]
        if kind == "compa":
            paths.append(_save(plt, _compa_bars(plt, bench, per_model), out_dir, f"{bench}_scores"))
            paths.append(_save(plt, _breakdown(plt, bench, per_model), out_dir, f"{bench}_breakdown"))
            for model, res in per_model.items():
                if res.get("sample"):
                    fig = _heatmap(plt, f"{bench} · {model}", res["sample"])
                    paths.append(_save(plt, fig, out_dir, f"{bench}_similarity_{model}"))
        elif kind == "retrieval":
            paths.append(_save(plt, _retrieval_bars(plt, bench, per_model), out_dir, f"{bench}_retrieval"))
        elif kind == "zeroshot":
            fig = _grouped(plt, f"{bench}: zero-shot", ("top1", "mAP"), per_model)
            paths.append(_save(plt, fig, out_dir, f"{bench}_zeroshot"))
        else:
            raise ValueError(f"benchmark {bench!r} has unknown kind {kind!r}; expected compa, retrieval or zeroshot")
    return paths


def _clean(x):
    """JSON-safe copy: numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _save(plt, fig, out_dir: Path, stem: str) -> Path:
    path = out_dir / (re.sub(r"[^\w.-]+", "_", stem) + ".png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _grouped(plt, title: str, metrics, per_model: dict, ax=None, chance: dict | None = None):
    """Grouped bars: one group per metric, one bar per model; optional chance tick per metric."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 2.0 + 1.2 * len(metrics)), 3.6))
    width = 0.8 / max(1, len(per_model))
    x = np.arange(len(metrics))
    for i, (model, res) in enumerate(per_model.items()):
        vals = [res.get(k, np.nan) for k in metrics]
        bars = ax.bar(x + (i - (len(per_model) - 1) / 2) * width, vals, width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if chance:
        for j, k in enumerate(metrics):
            ax.hlines(
                chance[k],
                j - 0.45,
                j + 0.45,
                colors="k",
                linestyles="--",
                linewidth=1,
                label="chance" if j == 0 else None,
            )
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=len(per_model) + 1, frameon=False)
    return fig if fig is not None else ax.figure


def _compa_bars(plt, bench: str, per_model: dict):
    parts = [("pairs (all rows)", lambda r: r["pairs"])]
    if any("triplets" in r for r in per_model.values()):
        parts += [
            ("triplet rows, 3-way", lambda r: r.get("triplets", {}).get("three_way", {})),
            ("triplet rows, pair only", lambda r: r.get("triplets", {}).get("pairs", {})),
        ]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.6 * len(parts), 3.8), squeeze=False)
    for ax, (name, get) in zip(axes[0], parts, strict=True):
        sub = {m: get(r) for m, r in per_model.items()}
        chance = next((s["chance"] for s in sub.values() if s), None)
        n = next((s["n"] for s in sub.values() if s), 0)
        _grouped(plt, f"{bench}: {name} (n={n})", SCORES, sub, ax=ax, chance=chance)
    fig.tight_layout()
    return fig


def _breakdown(plt, bench: str, per_model: dict):
    kinds = list(dict.fromkeys(k for r in per_model.values() for k in r.get("breakdown", {})))
    fig, axes = plt.subplots(len(kinds) or 1, 1, figsize=(8, 3.4 * max(1, len(kinds))), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=False):  # no breakdown: one empty axis
        labels = list(dict.fromkeys(g for r in per_model.values() for g in r["breakdown"].get(kind, {})))
        sub = {
            m: {g: r["breakdown"].get(kind, {}).get(g, {}).get("group", np.nan) for g in labels}
            for m, r in per_model.items()
        }
        counts = {
            g: max(r["breakdown"].get(kind, {}).get(g, {}).get("n", 0) for r in per_model.values()) for g in labels
        }
        _grouped(plt, f"{bench}: group score by {kind.replace('_', ' ')}", labels, sub, ax=ax)
        ax.set_xticks(np.arange(len(labels)), [f"{g}\n(n={counts[g]})" for g in labels], fontsize=7)
    fig.tight_layout()
    return fig


def _heatmap(plt, title: str, sample: dict):
    sim = np.asarray(sample["sim"], float)
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * sim.shape[1], 1.5 + 0.4 * sim.shape[0]))
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xticks(range(sim.shape[1]), sample["audio"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(sim.shape[0]), [c if len(c) <= 48 else c[:45] + "..." for c in sample["captions"]], fontsize=7)
    for i in range(sim.shape[0]):  # own pairs outlined
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="w", linewidth=1.5))
    if sim.size <= 400:
        for (i, j), v in np.ndenumerate(sim):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < sim.mean() else "k")
    ax.set_title(title, fontsize=10)
    return fig


def _retrieval_bars(plt, bench: str, per_model: dict):
    metrics = ("R@1", "R@5", "R@10", "mAP@10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, direction in zip(axes, ("text_to_audio", "audio_to_text"), strict=True):
        _grouped(
            plt,
            f"{bench}: {direction.replace('_', ' ')}",
            metrics,
            {m: r[direction] for m, r in per_model.items()},
            ax=ax,
        )
    fig.tight_layout()
    return fig
