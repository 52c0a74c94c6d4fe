"""`clapcomp data build`: manifests / CompA CSV / webdataset tars / tfds -> ArrayRecord shards.

Formats (``--format``):
- ``manifest``: CSV or JSONL with ``audio`` (path relative to the manifest; ``path`` is accepted
  too), ``caption`` (str, or a JSON list of str), optional ``negatives`` / ``positives`` (JSON
  lists of str).
- ``compa``: the same files with CompA's convention ``caption = "pos;neg1;neg2;neg3"``.
- ``webdataset``: LAION-CLAP tar shards of ``<key>.flac|wav|ogg`` + ``<key>.json`` (``"text"``:
  str or list); members are read in memory, never extracted; names escaping the archive root
  are refused.
- ``tfds``: one of the builders in `clapcomp.data.tfds_builders` over a ``--manual-dir``.

Every input item is decoded with soundfile, mixed to mono, resampled with soxr to
``sample_rate`` and stored as 16-bit FLAC (or raw int16 with ``audio_format="pcm16"``: bigger,
much faster to decode). A bad item is skipped and counted by reason (the readers and
`REASONS` live in `clapcomp.data.sources`; this module orchestrates them). A negative equal to
one of the row's captions or positives (`clapcomp.data.negatives.normalize`) is dropped and
counted. ``stats.json`` next to the shards holds the counts, examples of each skip reason,
duration figures and what the data can train (``rows_with_negatives``, ``negatives_per_row``,
``rows_with_positives``). Once ``max_error_rate`` of the items seen (after ``min_items_for_rate``) are
bad, the build stops with `BuildError`; the shards written until then stay valid.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter

import numpy as np

from clapcomp.data.negatives import clean_negatives
from clapcomp.data.records import RecordError, ShardWriter, call_with_timeout
from clapcomp.data.sources import (
    REASONS,
    Skip,
    clean_texts,
    expand_inputs,
    guarded,
    load_audio,
    read_manifest,
    read_webdataset,
)


class BuildError(RuntimeError):
    """The build stopped (too many bad items); shards written until then are valid."""


class BuildStats:
    """Counts, skip reasons with up to `n_examples` examples each, and duration figures."""

    def __init__(self, n_examples: int = 5):
        self.seen = self.written = 0
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[dict]] = {}
        self.durations: list[float] = []
        self.n_examples = n_examples
        self.negatives_per_row: Counter[int] = Counter()
        self.rows_with_positives = 0
        self.negatives_dropped = 0  # equal to one of the row's captions or positives

    def written_row(self, n_negatives: int, n_positives: int, seconds: float) -> None:
        self.written += 1
        self.durations.append(seconds)
        self.negatives_per_row[n_negatives] += 1
        self.rows_with_positives += n_positives > 0

    def skip(self, reason: str, item: str, detail: str) -> None:
        self.skipped[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.n_examples:
            bucket.append({"item": item, "detail": detail[:300]})

    def to_dict(self) -> dict:
        d = np.asarray(self.durations or [0.0])
        return {
            "seen": self.seen,
            "written": self.written,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skipped_examples": self.examples,
            "rows_with_negatives": sum(n for k, n in self.negatives_per_row.items() if k),
            "rows_with_positives": self.rows_with_positives,
            "negatives_per_row": {str(k): n for k, n in sorted(self.negatives_per_row.items())},
            "negatives_dropped_equal_to_positive": self.negatives_dropped,
            "total_duration_s": float(d.sum()),
            "duration_s": {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())},
        }


# ----------------------------------------------------------------------------- build


def build(
    inputs: list[str] | str | None,
    out_dir: str,
    *,
    format: str = "manifest",
    sample_rate: int = 48000,
    max_error_rate: float = 0.5,
    min_items_for_rate: int = 100,
    shard_size: int = 1024,
    audio_format: str = "flac",
    max_seconds: float = 600.0,
    max_channels: int = 16,
    max_file_mb: float = 2048.0,
    silence_threshold: float = 1e-4,
    max_caption_chars: int = 2000,
    timeout_s: float | None = 60.0,
    allow_outside_root: bool = False,
    tfds_name: str | None = None,
    manual_dir: str | None = None,
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
) -> dict:
    """Convert `inputs` to ArrayRecord shards in `out_dir`; returns (and writes) the stats."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if format in ("manifest", "compa"):
        files = expand_inputs(inputs, ("*.csv", "*.jsonl"))
        items = (
            x
            for p in files
            for x in guarded(p, read_manifest(p, compa=format == "compa", allow_outside_root=allow_outside_root))
        )
    elif format == "webdataset":
        files = expand_inputs(inputs, ("*.tar", "*.tar.gz", "*.tgz"))
        items = (x for p in files for x in guarded(p, read_webdataset(p, max_file_mb=max_file_mb)))
    elif format == "tfds":
        from clapcomp.data.tfds_builders import iter_candidates

        if not tfds_name or not manual_dir:
            raise ValueError("--format tfds needs --tfds-name and --manual-dir")
        items = iter_candidates(
            tfds_name, manual_dir, split=tfds_split, data_dir=tfds_data_dir or os.path.join(out_dir, "_tfds")
        )
    else:
        raise ValueError(f"unknown format {format!r}; use manifest, compa, webdataset or tfds")

    audio_kw = dict(
        sample_rate=sample_rate,
        max_seconds=max_seconds,
        max_channels=max_channels,
        max_file_mb=max_file_mb,
        silence_threshold=silence_threshold,
    )
    stats, start, stopped = BuildStats(), time.time(), None
    with ShardWriter(out_dir, shard_size=shard_size, audio_format=audio_format) as writer:
        for item, cand in items:
            stats.seen += 1
            try:
                if isinstance(cand, Skip):
                    raise cand
                captions = clean_texts(cand["captions"], "caption", max_caption_chars)
                if not captions:
                    raise Skip("missing_caption", "no non-empty caption")
                negatives = clean_texts(cand.get("negatives"), "negatives", max_caption_chars)
                positives = clean_texts(cand.get("positives"), "positives", max_caption_chars)
                negatives, dropped = clean_negatives(negatives, captions + positives)
                wave = call_with_timeout(
                    functools.partial(load_audio, cand["audio"], cand["name"], **audio_kw), timeout_s
                )
                writer.write(
                    dict(
                        key=cand["key"],
                        audio=wave,
                        sample_rate=sample_rate,
                        captions=captions,
                        negatives=negatives,
                        positives=positives,
                    )
                )
                stats.written_row(len(negatives), len(positives), wave.shape[0] / sample_rate)
                stats.negatives_dropped += dropped
            except (Skip, RecordError) as s:
                stats.skip(s.reason, item, s.detail)
            except Exception as e:  # never let one item kill the build
                stats.skip("unexpected_error", item, f"{type(e).__name__}: {e}")
            bad = stats.seen - stats.written
            if stats.seen >= min_items_for_rate and bad > max_error_rate * stats.seen:
                examples = [
                    f"{r}: {ex['item']} ({ex['detail']})" for r, exs in stats.examples.items() for ex in exs[:2]
                ]
                stopped = (
                    f"stopped after {stats.seen} items: {bad} bad "
                    f"({bad / stats.seen:.0%} > max_error_rate {max_error_rate:.0%}); "
                    f"{stats.written} records kept in {out_dir}. Fix the input or raise "
                    f"--max-error-rate. Examples: " + "; ".join(examples[:6])
                )
                break
    result = {
        "format": format,
        "inputs": inputs,
        "sample_rate": sample_rate,
        "audio_format": audio_format,
        **stats.to_dict(),
        "shards": [os.path.basename(s) for s in writer.shards],
        "elapsed_s": round(time.time() - start, 3),
        "stopped": stopped,
    }
    with open(os.path.join(out_dir, "stats.json.tmp"), "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    os.replace(os.path.join(out_dir, "stats.json.tmp"), os.path.join(out_dir, "stats.json"))
    if stopped:
        raise BuildError(stopped)
    return result


def main(argv: list[str]) -> int:
    reasons = "\n".join(f"  {k:<19} {v}" for k, v in REASONS.items())
    p = argparse.ArgumentParser(
        prog="clapcomp data build",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"skip reasons counted in OUT/stats.json:\n{reasons}",
    )
    p.add_argument("--input", nargs="*", default=[], help="manifest(s), tar(s), folder(s) or globs")
    p.add_argument("--format", choices=["manifest", "compa", "webdataset", "tfds"], default="manifest")
    p.add_argument("--out", required=True, help="empty output folder for the shards + stats.json")
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument(
        "--audio-format",
        choices=["flac", "pcm16"],
        default="flac",
        help="flac: smaller; pcm16: ~1.5x bigger, decodes ~10x faster",
    )
    p.add_argument("--max-error-rate", type=float, default=0.5)
    p.add_argument("--min-items-for-rate", type=int, default=100)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--max-channels", type=int, default=16)
    p.add_argument("--max-file-mb", type=float, default=2048.0)
    p.add_argument("--silence-threshold", type=float, default=1e-4)
    p.add_argument("--max-caption-chars", type=int, default=2000)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-item decode time bound")
    p.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest audio paths outside the manifest's folder"
    )
    p.add_argument("--tfds-name", help="audiocaps, clotho, esc50, compa_order, compa_attribute")
    p.add_argument("--manual-dir", help="folder with the dataset's files (see tfds_builders)")
    p.add_argument("--tfds-split", default="train")
    p.add_argument("--tfds-data-dir", help="where tfds prepares its copy (default OUT/_tfds)")
    a = p.parse_args(argv)
    try:  # every flag's dest is a `build` keyword
        stats = build(
            **{"inputs": a.input, "out_dir": a.out, **{k: v for k, v in vars(a).items() if k not in ("input", "out")}}
        )
    except (BuildError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"clapcomp data build: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                k: stats[k]
                for k in (
                    "seen",
                    "written",
                    "skipped",
                    "skipped_by_reason",
                    "rows_with_negatives",
                    "negatives_per_row",
                    "rows_with_positives",
                    "negatives_dropped_equal_to_positive",
                )
            }
        )
    )
    return 0
