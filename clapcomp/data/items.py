"""What both runners of `clapcomp data build` share (`build.py`: one process; `beam.py`: Apache Beam): the
build's options (`BuildOptions`), the items of the inputs (the readers of `sources.py`), one item's conversion
(decode, check, resample, clean texts and negatives), the counts (`BuildStats`), the error budget, `stats.json`
and the manifest `sha256.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np

from clapcomp import fs
from clapcomp.data.negatives import clean_negatives
from clapcomp.data.reasons import BadData
from clapcomp.data.records import call_with_timeout
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
INPUT_PATTERNS = {"manifest": ("*.csv", "*.jsonl"), "compa": ("*.csv", "*.jsonl"), "webdataset": ("*.tar", "*.tar.gz", "*.tgz")}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How `clapcomp data build` converts, for both runners: its defaults are the one source of the CLI's
    (one ``--flag-name`` per field) and of `build` / `build_beam`'s keywords.

    - `format`: the input kind (`FORMATS`); `sample_rate`: Hz of the stored audio; `shard_size`: records
      per shard; `audio_format`: ``flac`` or ``pcm16`` (`clapcomp.data.records.AUDIO_FORMATS`).
    - the error budget: stop once more than `max_error_rate` of the items seen are bad, judged after
      `min_items_for_rate` items.
    - per-item limits: `max_seconds`, `max_channels`, `max_file_mb`, `max_decoded_samples` (frames x channels,
      and frames at `sample_rate`), `timeout_s` (decode time; None: unbounded), `silence_threshold` (peak
      below it: a silent clip, skipped), `max_caption_chars`; `allow_outside_root`: accept manifest audio
      paths outside the manifest's folder.
    - ``--format tfds`` only: `tfds_name`, `manual_dir`, `tfds_split`, `tfds_data_dir` (None: OUT/_tfds).
    """

    format: str = "manifest"
    sample_rate: int = 48000
    max_error_rate: float = 0.5
    min_items_for_rate: int = 100
    shard_size: int = 1024
    audio_format: str = "flac"
    max_seconds: float = 600.0
    max_channels: int = 16
    max_file_mb: float = 2048.0
    max_decoded_samples: int = Limits.max_samples
    silence_threshold: float = 1e-4
    max_caption_chars: int = 2000
    timeout_s: float | None = 60.0
    allow_outside_root: bool = False
    tfds_name: str | None = None
    manual_dir: str | None = None
    tfds_split: str = "train"
    tfds_data_dir: str | None = None

    def convert_kw(self) -> dict:
        """`convert`'s keywords: the audio limits go to `load_audio`."""
        audio_kw = dict(sample_rate=self.sample_rate, timeout_s=self.timeout_s, max_seconds=self.max_seconds,
                        max_channels=self.max_channels, max_file_mb=self.max_file_mb,
                        max_decoded_samples=self.max_decoded_samples, silence_threshold=self.silence_threshold)  # fmt: skip
        return dict(sample_rate=self.sample_rate, max_caption_chars=self.max_caption_chars, timeout_s=self.timeout_s,
                    audio_kw=audio_kw)  # fmt: skip


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

    def merge(self, other: BuildStats) -> BuildStats:
        """Adds `other`'s counts (another worker's items) to these; examples up to `n_examples` per reason."""
        self.seen += other.seen
        self.written += other.written
        self.skipped.update(other.skipped)
        for reason, exs in other.examples.items():
            bucket = self.examples.setdefault(reason, [])
            bucket.extend(exs[: max(self.n_examples - len(bucket), 0)])
        self.durations.extend(other.durations)
        self.negatives_per_row.update(other.negatives_per_row)
        self.rows_with_positives += other.rows_with_positives
        self.negatives_dropped += other.negatives_dropped
        return self

    def count(self, item: str, outcome: tuple) -> None:
        """One item's `convert` outcome."""
        self.seen += 1
        if outcome[0] == "written":
            _, example, dropped = outcome
            self.written_row(len(example["negatives"]), len(example["positives"]), example["seconds"])
            self.negatives_dropped += dropped
        else:
            _, reason, detail = outcome
            self.skip(reason, item, detail)

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


def iter_items(inputs: list[str], format: str, *, allow_outside_root: bool, max_file_mb: float, **tfds) -> Iterator:
    """`(item_name, candidate | BadData)` of every input item, by `format` (the readers of `sources.py`)."""
    if format in ("manifest", "compa"):
        files = expand_inputs(inputs, INPUT_PATTERNS[format])
        return (
            x
            for p in files
            for x in guarded(p, read_manifest(p, compa=format == "compa", allow_outside_root=allow_outside_root))
        )
    if format == "webdataset":
        files = expand_inputs(inputs, INPUT_PATTERNS[format])
        return (x for p in files for x in guarded(p, read_webdataset(p, max_file_mb=max_file_mb)))
    if format == "tfds":
        from clapcomp.data.tfds_builders import iter_candidates

        if not tfds["tfds_name"] or not tfds["manual_dir"]:
            raise ValueError("--format tfds needs --tfds-name and --manual-dir")
        return iter_candidates(tfds["tfds_name"], tfds["manual_dir"], split=tfds["tfds_split"],
                               data_dir=tfds["tfds_data_dir"])  # fmt: skip
    raise ValueError(f"unknown format {format!r}; use one of {FORMATS}")


def convert(cand, *, sample_rate: int, max_caption_chars: int, timeout_s: float | None, audio_kw: dict) -> tuple:
    """One candidate -> ``("written", example, negatives dropped)`` (example: `encode_record`'s fields plus
    ``seconds``) or ``("skip", reason, detail)``; never raises (a bug is an ``unexpected_error`` skip)."""
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
        wave = call_with_timeout(functools.partial(load_audio, cand["audio"], cand["name"], **audio_kw), timeout_s)
        example = dict(key=cand["key"], audio=wave, sample_rate=sample_rate, captions=captions,
                       negatives=negatives, positives=positives, seconds=wave.shape[0] / sample_rate)  # fmt: skip
        return ("written", example, dropped)
    except BadData as s:
        return ("skip", s.reason, s.detail)
    except Exception as e:  # never let one item kill the build
        return ("skip", "unexpected_error", f"{type(e).__name__}: {e}")


def over_budget(stats: BuildStats, max_error_rate: float, min_items_for_rate: int, out_dir: str) -> str | None:
    """Why the build stops (more than `max_error_rate` of the items seen were bad), or None."""
    bad = stats.seen - stats.written
    if stats.seen < min_items_for_rate or bad <= max_error_rate * stats.seen:
        return None
    examples = [f"{r}: {ex['item']} ({ex['detail']})" for r, exs in stats.examples.items() for ex in exs[:2]]
    return (
        f"stopped after {stats.seen} items: {bad} bad ({bad / stats.seen:.0%} > max_error_rate "
        f"{max_error_rate:.0%}); {stats.written} records kept in {out_dir}. Fix the input or raise "
        f"--max-error-rate. Examples: " + "; ".join(examples[:6])
    )


def finish(out_dir: str, stats: BuildStats, shards: list[str], stopped: str | None, start: float, **head) -> dict:
    """Writes (atomically) and returns stats.json, then the folder's manifest `sha256.json` (`fs.write_manifest`:
    what a copy of the records, e.g. one staged from GCS by `clapcomp.data.stage`, is checked against);
    raises `BuildError` if the build `stopped` (the shards kept are in both)."""
    result = {**head, **stats.to_dict(), "shards": shards, "elapsed_s": round(time.time() - start, 3),
              "stopped": stopped}  # fmt: skip
    fs.write_json(os.path.join(out_dir, "stats.json"), result, indent=1, ensure_ascii=False)
    fs.write_manifest(out_dir)
    if stopped:
        raise BuildError(stopped)
    return result
