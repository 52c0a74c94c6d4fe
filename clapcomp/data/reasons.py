"""Bad data: the one exception (`BadData`) and the one table of reasons it can carry.

An input item (`clapcomp data build`) or a stored record (the training pipeline) that cannot be used
raises or yields ``BadData(reason, detail)``; it is skipped and counted under `reason`, never fatal.
Each reason has one spelling, the stage(s) that report it and a one-line meaning: the build counts
them in ``stats.json`` (``skipped_by_reason``), the trainer logs them as ``data/skipped/<reason>``
and checkpoints the totals. Counters saved under the names older versions used (`RENAMED`) are
read back under today's names (`renamed`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reason:
    name: str
    stages: tuple[str, ...]  # "build" (`clapcomp data build`), "read" (the training pipeline)
    meaning: str


REASONS = (
    Reason(
        "bad_record",
        ("read",),
        "not a clapcomp record, its header is unreadable, or (int16 batches) its audio is not 16-bit mono at the "
        "model rate (rebuild the records)",
    ),
    Reason("missing_file", ("build",), "the row's audio file does not exist"),
    Reason(
        "path_escapes_root", ("build",), "audio path leaves the manifest's folder (allow with --allow-outside-root)"
    ),
    Reason("unsafe_member", ("build",), "tar member escapes the archive root or is not a regular file"),
    Reason("unsupported_format", ("build",), "file extension is not a soundfile audio format"),
    Reason("empty_file", ("build",), "0-byte audio file"),
    Reason("too_large", ("build",), "audio file bigger than --max-file-mb"),
    Reason(
        "corrupt", ("build", "read"), "the audio (or tar) cannot be opened or decoded: not audio, or a broken header"
    ),
    Reason("truncated", ("build", "read"), "fewer audio samples than the header declares (or a tar that ends early)"),
    Reason("zero_length", ("build",), "a valid file with no samples"),
    Reason("bad_sample_rate", ("build",), "sample rate outside [1 kHz, 384 kHz]"),
    Reason("too_many_channels", ("build",), "more channels than --max-channels"),
    Reason("too_long", ("build", "read"), "longer than --max-seconds (build) or max_record_seconds (read)"),
    Reason(
        "decode_budget",
        ("build",),
        "the header declares more than --max-decoded-samples samples (frames x channels, or frames at "
        "--sample-rate): refused before decoding",
    ),
    Reason("non_finite", ("build",), "NaN or inf samples"),
    Reason("silent", ("build",), "peak below --silence-threshold"),
    Reason("missing_caption", ("build", "read"), "no non-empty caption"),
    Reason("caption_too_long", ("build",), "a text longer than --max-caption-chars"),
    Reason("non_utf8_text", ("build",), "text that is not valid UTF-8"),
    Reason(
        "bad_row",
        ("build",),
        "malformed row (bad JSON, missing audio path, negatives/positives not a list of str, "
        "more CSV fields than the header, ...)",
    ),
    Reason("timeout", ("build", "read"), "decoding took longer than --timeout-s (build) or decode_timeout_s (read)"),
    Reason("unexpected_error", ("build", "read"), "an unforeseen error while processing the item: a bug (see the log)"),
)
BY_NAME = {r.name: r for r in REASONS}
BUILD_REASONS = tuple(r.name for r in REASONS if "build" in r.stages)
READ_REASONS = tuple(r.name for r in REASONS if "read" in r.stages)  # the order of the pipeline's `_skips` vector
RENAMED = {"corrupt_audio": "corrupt", "truncated_audio": "truncated", "no_caption": "missing_caption"}  # old: new


class BadData(ValueError):
    """An item or record that cannot be used; `reason` is a name in `REASONS`, `detail` says what was seen."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in BY_NAME:
            raise ValueError(f"unknown bad-data reason {reason!r}; add it to clapcomp.data.reasons.REASONS")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def renamed(counts: dict[str, int]) -> dict[str, int]:
    """Skip counters (e.g. restored from an older checkpoint) with old reason names mapped to today's."""
    out: dict[str, int] = {}
    for name, n in counts.items():
        new = RENAMED.get(name, name)
        out[new] = out.get(new, 0) + int(n)
    return out


def markdown_table() -> str:
    """The reason table as Markdown (docs/data.md copies it; a test checks the copy)."""
    rows = [f"| `{r.name}` | {', '.join(r.stages)} | {r.meaning} |" for r in REASONS]
    return "\n".join(["| reason | stage | meaning |", "| --- | --- | --- |", *rows])
