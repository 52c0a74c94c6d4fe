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
much faster to decode). A bad item is skipped and counted by reason (the readers live in
`clapcomp.data.sources`, the reasons in `clapcomp.data.reasons`; this module orchestrates them). A negative equal to
one of the row's captions or positives (`clapcomp.data.negatives.normalize`) is dropped and
counted. ``stats.json`` next to the shards holds the counts, examples of each skip reason,
duration figures and what the data can train (``rows_with_negatives``, ``negatives_per_row``,
``rows_with_positives``). Once ``max_error_rate`` of the items seen (after ``min_items_for_rate``) are
bad, the build stops with `BuildError`; the shards written until then stay valid.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import time
from collections import Counter

import numpy as np

from clapcomp.data.negatives import clean_negatives
from clapcomp.data.reasons import REASONS, BadData
from clapcomp.data.records import AUDIO_FORMATS, ShardWriter, call_with_timeout
from clapcomp.data.sources import (
    clean_texts,
    expand_inputs,
    guarded,
    load_audio,
    read_manifest,
    read_webdataset,
)
from clapcomp.decode import Limits

FORMATS = ("manifest", "compa", "webdataset", "tfds")


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
    max_decoded_samples: int = Limits.max_samples,
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
        raise ValueError(f"unknown format {format!r}; use one of {FORMATS}")

    audio_kw = dict(
        sample_rate=sample_rate,
        max_seconds=max_seconds,
        max_channels=max_channels,
        max_file_mb=max_file_mb,
        max_decoded_samples=max_decoded_samples,
        timeout_s=timeout_s,
        silence_threshold=silence_threshold,
    )
    stats, start, stopped = BuildStats(), time.time(), None
    with ShardWriter(out_dir, shard_size=shard_size, audio_format=audio_format) as writer:
        for item, cand in items:
            stats.seen += 1
            try:
                if isinstance(cand, BadData):
                    raise cand
                captions = clean_texts(cand["captions"], "caption", max_caption_chars)
                if not captions:
                    raise BadData("missing_caption", "no non-empty caption")
                negatives = clean_texts(cand.get("negatives"), "negatives", max_caption_chars)
                positives = clean_texts(cand.get("positives"), "positives", max_caption_chars)
                negatives, dropped = clean_negatives(negatives, captions + positives)
                # the decoder stops itself at timeout_s (freeing its memory); the thread guards a stuck call
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
            except BadData as s:
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
    reasons = "\n".join(f"  {r.name:<19} {r.meaning}" for r in REASONS if "build" in r.stages)
    p = argparse.ArgumentParser(
        prog="clapcomp data build",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"skip reasons counted in OUT/stats.json:\n{reasons}",
    )
    defaults = {k: v.default for k, v in inspect.signature(build).parameters.items()}

    def option(dest: str, help: str | None = None, **kw) -> None:  # --dest-name, typed and defaulted by `build`
        default = defaults[dest]
        if default is not None and "choices" not in kw:
            kw["type"] = type(default)
        help = f"{help} (default: %(default)s)" if help else "default: %(default)s"
        p.add_argument("--" + dest.replace("_", "-"), default=default, help=help, **kw)

    p.add_argument("--input", nargs="*", default=[], help="manifest(s), tar(s), folder(s) or globs")
    option("format", choices=FORMATS)
    p.add_argument("--out", required=True, help="empty output folder for the shards + stats.json")
    option("sample_rate")
    option("shard_size")
    option("audio_format", "flac: smaller; pcm16: ~1.5x bigger, decodes ~10x faster", choices=AUDIO_FORMATS)
    option("max_error_rate")
    option("min_items_for_rate")
    option("max_seconds")
    option("max_channels")
    option("max_file_mb")
    option(
        "max_decoded_samples", "decode budget checked from the header: frames x channels, and frames at --sample-rate"
    )
    option("silence_threshold")
    option("max_caption_chars")
    option("timeout_s", "per-item decode time bound", type=float)
    p.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest audio paths outside the manifest's folder"
    )
    option("tfds_name", "audiocaps, clotho, esc50, compa_order, compa_attribute")
    option("manual_dir", "folder with the dataset's files (see tfds_builders)")
    option("tfds_split")
    option("tfds_data_dir", "where tfds prepares its copy; None: OUT/_tfds")
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
