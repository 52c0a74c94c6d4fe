"""Evaluation report: one JSON with every number and PNG plots a person would rather look at.

A run maps model name -> benchmark name -> the dict an evaluator returned (its "benchmark" key says
which kind: "compa", "retrieval" or "zeroshot"), e.g.
{"plain CLAP": {"order": {...}, "attribute": {...}}, "CompA": {...}}. Models are drawn side by
side in every bar chart; CompA charts carry the chance level as a dashed line. Several runs (one per
seed) are drawn as the mean of every number with its spread over the runs (population std, as
`clapcomp demo` prints it) as error bars, and every chart is titled with the seeds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clapcomp import fs

SCORES = ("text", "audio", "group")


def write_report(runs: Sequence[dict[str, dict[str, dict]]], out_dir, *, seeds: Sequence[int] = ()) -> list[Path]:
    """Write `results.json` and the PNG plots of `runs` (one per seed) into out_dir; returns the written paths.

    results.json holds the run itself when there is one, else {"seeds": [...], "per_seed": [run, ...]}.
    `seeds` (one per run, or empty) names the runs in the chart titles. Each file is written whole (temp
    sibling + rename), results.json last: a report cut short leaves the previous results.json.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs or not all(runs):
        raise ValueError("no results to report")
    if seeds and len(seeds) != len(runs):
        raise ValueError(f"{len(seeds)} seeds for {len(runs)} runs; give one seed per run (or none)")
    return _write(plt, runs, seeds, fs.as_path(out_dir))


def _write(plt, runs: Sequence[dict], seeds: Sequence[int], out_dir: Path) -> list[Path]:
    paths = [out_dir / "results.json"]

    results, spread = _mean_and_spread(runs)
    tag = _seeds_tag(seeds, len(runs))
    models = list(results)
    benches = list(dict.fromkeys(b for m in models for b in results[m]))
    for bench in benches:
        per_model = {m: results[m][bench] for m in models if bench in results[m]}
        errs = {m: spread[m][bench] for m in per_model} if len(runs) > 1 else None
        kind = next(iter(per_model.values()))["benchmark"]
        if kind == "compa":
            paths.append(_save(plt, _compa_bars(plt, bench, per_model, errs, tag), out_dir, f"{bench}_scores"))
            paths.append(_save(plt, _breakdown(plt, bench, per_model, errs, tag), out_dir, f"{bench}_breakdown"))
            last = f" · seed {seeds[-1]}" if seeds else ""
            for model, res in per_model.items():
                if res.get("sample"):  # one run's similarities: the last seed's
                    fig = _heatmap(plt, f"{bench} · {model}{last}", res["sample"])
                    paths.append(_save(plt, fig, out_dir, f"{bench}_similarity_{model}"))
        elif kind == "retrieval":
            paths.append(_save(plt, _retrieval_bars(plt, bench, per_model, errs, tag), out_dir, f"{bench}_retrieval"))
        elif kind == "zeroshot":
            fig = _grouped(plt, f"{bench}: zero-shot{tag}", ("top1", "mAP"), per_model, errors=errs)
            paths.append(_save(plt, fig, out_dir, f"{bench}_zeroshot"))
        else:
            raise ValueError(f"benchmark {bench!r} has unknown kind {kind!r}; expected compa, retrieval or zeroshot")
    doc = runs[0] if len(runs) == 1 else {"seeds": list(seeds), "per_seed": list(runs)}
    fs.write_text(paths[0], json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")  # last (see write_report)
    return paths


def _seeds_tag(seeds: Sequence[int], n: int) -> str:
    """The title suffix naming what a chart shows: '', ' · seed 0' or ' · mean ± std of seeds 0, 1, 2'."""
    if n == 1:
        return f" · seed {seeds[0]}" if seeds else ""
    return f" · mean ± std of {'seeds ' + ', '.join(map(str, seeds)) if seeds else f'{n} runs'}"


def _mean_and_spread(runs: Sequence[dict]) -> tuple[dict, dict]:
    """Leaf by leaf over the runs: (the last run with every number replaced by its mean over the runs,
    the same tree of population standard deviations). A number only some runs hold (a breakdown group
    one seed lacks) is averaged over those; a NaN (None in a results.json) in any run makes the mean
    NaN; anything not a number (samples, names) is the last run's."""

    def walk(xs: list) -> tuple:
        x = xs[-1]
        if isinstance(x, dict):
            pairs = {k: walk([r[k] for r in xs if isinstance(r, dict) and k in r]) for k in x}
            return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
        is_number = [isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in xs]
        if any(is_number) and all(n or v is None for n, v in zip(is_number, xs, strict=True)):
            v = np.asarray([np.nan if v is None else v for v in xs], np.float64)  # None: NaN read back from JSON
            return float(v.mean()), float(v.std())
        return x, None

    return walk(list(runs))


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
    with fs.atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _grouped(
    plt, title: str, metrics, per_model: dict, ax=None, chance: dict | None = None, errors: dict | None = None
):
    """Grouped bars: one group per metric, one bar per model (labelled with its value); optional chance
    tick per metric; `errors` ({model: {metric: std}}, several runs) as error bars."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 2.0 + 1.2 * len(metrics)), 3.6))
    width = 0.8 / max(1, len(per_model))
    x = np.arange(len(metrics))
    for i, (model, res) in enumerate(per_model.items()):
        vals = [res.get(k, np.nan) for k in metrics]
        err = None if errors is None else [errors[model].get(k) or 0.0 for k in metrics]
        bars = ax.bar(x + (i - (len(per_model) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=model)
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


def _compa_bars(plt, bench: str, per_model: dict, errors: dict | None, tag: str):
    parts = [("pairs (all rows)", lambda r: r["pairs"])]
    if any("triplets" in r for r in per_model.values()):
        parts += [
            ("triplet rows, 3-way", lambda r: r.get("triplets", {}).get("three_way", {})),
            ("triplet rows, pair only", lambda r: r.get("triplets", {}).get("pairs", {})),
        ]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.6 * len(parts), 3.8), squeeze=False)
    for ax, (name, get) in zip(axes[0], parts, strict=True):
        sub = {m: get(r) for m, r in per_model.items()}
        err = None if errors is None else {m: get(e) or {} for m, e in errors.items()}
        chance = next((s["chance"] for s in sub.values() if s), None)
        n = next((s["n"] for s in sub.values() if s), 0)
        _grouped(plt, f"{bench}: {name} (n={n:.0f})", SCORES, sub, ax=ax, chance=chance, errors=err)
    fig.suptitle(f"{bench}{tag}", fontsize=10)
    fig.tight_layout()
    return fig


def _breakdown(plt, bench: str, per_model: dict, errors: dict | None, tag: str):
    kinds = list(dict.fromkeys(k for r in per_model.values() for k in r.get("breakdown", {})))
    fig, axes = plt.subplots(len(kinds) or 1, 1, figsize=(8, 3.4 * max(1, len(kinds))), squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds, strict=False):  # no breakdown: one empty axis
        labels = list(dict.fromkeys(g for r in per_model.values() for g in r["breakdown"].get(kind, {})))
        sub = {
            m: {g: r["breakdown"].get(kind, {}).get(g, {}).get("group", np.nan) for g in labels}
            for m, r in per_model.items()
        }
        err = None
        if errors is not None:
            err = {m: {g: (e.get("breakdown") or {}).get(kind, {}).get(g, {}).get("group") for g in labels}
                   for m, e in errors.items()}  # fmt: skip
        counts = {
            g: max(r["breakdown"].get(kind, {}).get(g, {}).get("n", 0) for r in per_model.values()) for g in labels
        }
        _grouped(plt, f"{bench}: group score by {kind.replace('_', ' ')}{tag}", labels, sub, ax=ax, errors=err)
        ax.set_xticks(np.arange(len(labels)), [f"{g}\n(n={counts[g]:.0f})" for g in labels], fontsize=7)
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


def _retrieval_bars(plt, bench: str, per_model: dict, errors: dict | None, tag: str):
    metrics = ("R@1", "R@5", "R@10", "mAP@10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, direction in zip(axes, ("text_to_audio", "audio_to_text"), strict=True):
        err = None if errors is None else {m: e[direction] for m, e in errors.items()}
        sub = {m: r[direction] for m, r in per_model.items()}
        _grouped(plt, f"{bench}: {direction.replace('_', ' ')}{tag}", metrics, sub, ax=ax, errors=err)
    fig.tight_layout()
    return fig
