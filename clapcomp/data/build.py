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
from collections.abc import Iterator

import numpy as np

from clapcomp import fs
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
INPUT_PATTERNS = {"manifest": ("*.csv", "*.jsonl"), "compa": ("*.csv", "*.jsonl"), "webdataset": ("*.tar", "*.tar.gz", "*.tgz")}  # fmt: skip


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
    fs.refuse_inputs(out_dir, [*inputs, manual_dir])
    items = iter_items(inputs, format, allow_outside_root=allow_outside_root, max_file_mb=max_file_mb,
                       tfds_name=tfds_name, manual_dir=manual_dir, tfds_split=tfds_split,
                       tfds_data_dir=tfds_data_dir or os.path.join(out_dir, "_tfds"))  # fmt: skip

    kw = convert_options(sample_rate=sample_rate, max_seconds=max_seconds, max_channels=max_channels,
                         max_file_mb=max_file_mb, max_decoded_samples=max_decoded_samples, timeout_s=timeout_s,
                         silence_threshold=silence_threshold, max_caption_chars=max_caption_chars)  # fmt: skip
    with fs.lock_folder(out_dir, purpose="clapcomp data build"):  # one build per folder
        stats, start, stopped = BuildStats(), time.time(), None
        with ShardWriter(out_dir, shard_size=shard_size, audio_format=audio_format) as writer:
            for item, cand in items:
                outcome = convert(cand, **kw)
                if outcome[0] == "written":
                    writer.write(outcome[1])
                stats.count(item, outcome)
                stopped = over_budget(stats, max_error_rate, min_items_for_rate, out_dir)
                if stopped:
                    break
        shards = [os.path.basename(s) for s in writer.shards]
        return finish(out_dir, stats, shards, stopped, start, format=format, inputs=inputs, sample_rate=sample_rate,
                      audio_format=audio_format)  # fmt: skip


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


def convert_options(*, sample_rate: int, max_caption_chars: int, timeout_s: float | None, **audio) -> dict:
    """`convert`'s keywords from `build`'s arguments (both runners): `audio` are `load_audio`'s limits."""
    audio_kw = dict(sample_rate=sample_rate, timeout_s=timeout_s, **audio)
    return dict(sample_rate=sample_rate, max_caption_chars=max_caption_chars, timeout_s=timeout_s, audio_kw=audio_kw)


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
    """Writes (atomically) and returns stats.json; raises `BuildError` if the build `stopped`."""
    result = {**head, **stats.to_dict(), "shards": shards, "elapsed_s": round(time.time() - start, 3),
              "stopped": stopped}  # fmt: skip
    fs.write_json(os.path.join(out_dir, "stats.json"), result, indent=1, ensure_ascii=False)
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
    beam = p.add_argument_group("runner", "--runner beam: the same build on Apache Beam (clapcomp.data.beam)")
    beam.add_argument("--runner", choices=("local", "beam"), default="local", help="default: %(default)s")
    beam.add_argument("--workers", type=int, default=2, help="beam DirectRunner processes (default: %(default)s)")
    beam.add_argument(
        "--beam-options", default="", help='Beam flags passed through, e.g. "--runner=DataflowRunner ..."'
    )
    beam.add_argument("--num-shards", type=int, default=None, help="beam: shard count (default: items / shard size)")
    a = p.parse_args(argv)
    runner_args = {k: vars(a).pop(k) for k in ("runner", "workers", "beam_options", "num_shards")}
    kwargs = {"inputs": a.input, "out_dir": a.out, **{k: v for k, v in vars(a).items() if k not in ("input", "out")}}
    try:  # every other flag's dest is a `build` keyword
        if runner_args.pop("runner") == "beam":
            try:
                from clapcomp.data.beam import build_beam
            except ImportError as e:
                raise ValueError(
                    f"--runner beam needs Apache Beam ({e}): pip install 'clapcomp[beam]', in an environment of "
                    "its own if this one pins protobuf >= 7 or pyarrow >= 26 (apache-beam 2.78 needs older ones)"
                ) from None
            stats = build_beam(**kwargs, **runner_args)
        else:
            stats = build(**kwargs)
    except (BuildError, ValueError, FileNotFoundError, FileExistsError, fs.LockHeld) as e:
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
