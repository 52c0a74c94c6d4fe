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
`clapcomp.data.sources`, the reasons in `clapcomp.data.reasons`, one item's conversion and the stats in
`clapcomp.data.items`; this module runs them in one process and chooses the runner). A negative equal to
one of the row's captions or positives (`clapcomp.data.negatives.normalize`) is dropped and
counted. ``stats.json`` next to the shards holds the counts, examples of each skip reason,
duration figures and what the data can train (``rows_with_negatives``, ``negatives_per_row``,
``rows_with_positives``); ``sha256.json``, written last, the sha256 and size of every file
(`clapcomp.fs.write_manifest`: what a staged copy is checked against, `clapcomp.data.stage`). Once
``max_error_rate`` of the items seen (after ``min_items_for_rate``) are bad, the build stops with
`BuildError`; the shards written until then stay valid (and listed in both files).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from clapcomp import fs
from clapcomp.data.items import (
    FORMATS,
    BuildError,
    BuildOptions,
    BuildStats,
    convert,
    finish,
    iter_items,
    over_budget,
)
from clapcomp.data.reasons import REASONS
from clapcomp.data.records import AUDIO_FORMATS, ShardWriter

# ----------------------------------------------------------------------------- build


def build(inputs: list[str] | str | None, out_dir: str, options: BuildOptions | None = None, **overrides) -> dict:
    """Convert `inputs` to ArrayRecord shards in `out_dir`; returns (and writes) the stats. `options` (default
    `BuildOptions()`) with `overrides` of its fields, e.g. ``build(m, out, sample_rate=16000)``."""
    o = dataclasses.replace(options or BuildOptions(), **overrides)
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    fs.refuse_inputs(out_dir, [*inputs, o.manual_dir])
    items = iter_items(inputs, o.format, allow_outside_root=o.allow_outside_root, max_file_mb=o.max_file_mb,
                       tfds_name=o.tfds_name, manual_dir=o.manual_dir, tfds_split=o.tfds_split,
                       tfds_data_dir=o.tfds_data_dir or os.path.join(out_dir, "_tfds"))  # fmt: skip
    kw = o.convert_kw()
    with fs.lock_folder(out_dir, purpose="clapcomp data build"):  # one build per folder
        stats, start, stopped = BuildStats(), time.time(), None
        with ShardWriter(out_dir, shard_size=o.shard_size, audio_format=o.audio_format) as writer:
            for item, cand in items:
                outcome = convert(cand, **kw)
                if outcome[0] == "written":
                    writer.write(outcome[1])
                stats.count(item, outcome)
                stopped = over_budget(stats, o.max_error_rate, o.min_items_for_rate, out_dir)
                if stopped:
                    break
        shards = [os.path.basename(s) for s in writer.shards]
        return finish(out_dir, stats, shards, stopped, start, format=o.format, inputs=inputs,
                      sample_rate=o.sample_rate, audio_format=o.audio_format)  # fmt: skip


def main(argv: list[str]) -> int:
    reasons = "\n".join(f"  {r.name:<19} {r.meaning}" for r in REASONS if "build" in r.stages)
    p = argparse.ArgumentParser(
        prog="clapcomp data build",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"skip reasons counted in OUT/stats.json:\n{reasons}",
    )
    defaults = {f.name: f.default for f in dataclasses.fields(BuildOptions)}

    def option(dest: str, help: str | None = None, **kw) -> None:  # --dest-name, typed and defaulted by BuildOptions
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
    options = BuildOptions(**{k: vars(a)[k] for k in defaults})
    try:
        if a.runner == "beam":
            try:
                from clapcomp.data.beam import build_beam
            except ImportError as e:
                raise ValueError(
                    f"--runner beam needs Apache Beam ({e}): pip install -c constraints.txt 'clapcomp[beam]' "
                    "(apache-beam 2.78 needs protobuf < 7, pyarrow < 26, python-dateutil < 3)"
                ) from None
            stats = build_beam(a.input, a.out, options, workers=a.workers, beam_options=a.beam_options,
                               num_shards=a.num_shards)  # fmt: skip
        else:
            stats = build(a.input, a.out, options)
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
