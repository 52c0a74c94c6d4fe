"""`clapcomp data build --runner beam`: the same conversion as `clapcomp.data.build.build`, as an Apache Beam
pipeline (the `beam` extra: ``pip install 'clapcomp[beam]'``).

    input files (manifests, tars) -> Reshuffle -> the readers of `clapcomp.data.sources`, one file per
    worker: items numbered (file, row) -> Reshuffle (spread over the workers)
    -> convert (`items.convert`: decode, check, resample, clean texts and negatives; `encode_record`)
    -> records: by item number into num_shards (a side input: items / shard_size unless given)
       -> GroupByKey -> one ArrayRecord shard each, in item order
    -> outcomes: `BuildStats` per bundle, merged (CombineGlobally) -> the driver writes stats.json

Same options (`BuildOptions`), items, skip reasons, negatives cleaning and record encoder as the one-process
build, so both give the same record set and the same stats.json counts; like it, the driver holds ``--out``'s
folder lock (`fs.lock_folder`) from start to stats.json, so a second writer of the folder is refused.
Differences: the error budget (`max_error_rate`) is judged once over all items at the end (every shard is
written, then `BuildError`), where the local build stops early; shards are
``data-NNNNN-of-MMMMM.array_record`` (``num_shards``, or items / ``shard_size``), each written to a local
temporary file and then through Beam's `FileSystems` (``--out gs://...`` where the Beam GCP extra and
credentials are; the lock and stats.json go through `clapcomp.fs`, so gs:// as far as it reaches); manifests
are read by the same readers as the local build, so they and their audio must be on a filesystem every
worker mounts. ``--format tfds`` stays on the local runner.

Runners: locally the DirectRunner in multi-process mode (`workers` processes); any other runner through
`beam_options`, Beam's own flags passed through, e.g. ``--runner=DataflowRunner --project=P
--region=R --temp_location=gs://B/tmp`` (docs/data-at-scale.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import tempfile
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from clapcomp import fs
from clapcomp.data.items import INPUT_PATTERNS, BuildOptions, BuildStats, convert, finish, iter_items, over_budget
from clapcomp.data.reasons import BadData
from clapcomp.data.records import SHARD_SUFFIX, encode_record
from clapcomp.data.sources import expand_inputs

STATS_PART = "_beam_stats.json"  # the merged BuildStats, handed from the pipeline to the driver (JSON: no pickle)


def build_beam(
    inputs: list[str] | str | None,
    out_dir: str,
    options: BuildOptions | None = None,
    *,
    workers: int = 2,
    beam_options: str = "",
    num_shards: int | None = None,
    **overrides,
) -> dict:
    """`clapcomp.data.build.build` on Beam: the same `options` / `overrides`, plus `workers` (DirectRunner
    processes), `beam_options` (Beam flags, e.g. ``"--runner=DataflowRunner ..."``; then `workers` is unused)
    and `num_shards` (default: items / shard size). Holds `out_dir`'s folder lock (`fs.lock_folder`, as the
    local build) from start to stats.json. Returns (and writes) the stats."""
    o = dataclasses.replace(options or BuildOptions(), **overrides)
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if o.format not in INPUT_PATTERNS:
        raise ValueError(
            f"--runner beam reads {sorted(INPUT_PATTERNS)} inputs; build --format {o.format} with --runner local"
        )
    fs.refuse_inputs(out_dir, inputs)
    with fs.lock_folder(out_dir, purpose="clapcomp data build --runner beam"):  # one build per folder
        return _run(inputs, out_dir, o, workers, beam_options, num_shards)


def _run(
    inputs: list[str], out_dir: str, o: BuildOptions, workers: int, beam_options: str, num_shards: int | None
) -> dict:
    """The pipeline, then stats.json (`build_beam`'s arguments; the caller holds the folder lock)."""
    start = time.time()
    existing = FileSystems.match([FileSystems.join(out_dir, "*" + SHARD_SUFFIX)])[0].metadata_list
    if existing:
        raise FileExistsError(f"{out_dir} already holds {len(existing)} shards; write to an empty folder")
    files = expand_inputs(inputs, INPUT_PATTERNS[o.format])
    read_kw = dict(allow_outside_root=o.allow_outside_root, max_file_mb=o.max_file_mb)
    kw = o.convert_kw()
    shard_size, audio_format = o.shard_size, o.audio_format

    flags = shlex.split(beam_options)
    local = not any(f.startswith("--runner") for f in flags)
    extra = dict(runner="DirectRunner", direct_num_workers=workers, direct_running_mode="multi_processing")
    options = PipelineOptions(flags, **(extra if local else {}))
    with beam.Pipeline(options=options) as p:
        items = (
            p
            | "files" >> beam.Create(list(enumerate(files)))
            | "spread files" >> beam.Reshuffle()
            | "read" >> beam.FlatMap(_read_file, o.format, read_kw)
        )
        count = items | "count" >> beam.combiners.Count.Globally()
        shards = beam.pvalue.AsSingleton(
            count | "shards" >> beam.Map(lambda n: max(1, num_shards or -(-n // shard_size)))
        )
        converted = items | "spread" >> beam.Reshuffle() | "convert" >> beam.Map(_convert, kw, audio_format)
        _ = (
            converted
            | "by shard" >> beam.FlatMap(_by_shard, shards)
            | "group" >> beam.GroupByKey()
            | "write shards" >> beam.Map(_write_shard, out_dir, shards)
        )
        _ = converted | "stats" >> beam.CombineGlobally(MergeStats()) | "hand over" >> beam.Map(_write_stats, out_dir)
    with FileSystems.open(FileSystems.join(out_dir, STATS_PART)) as f:
        stats = _stats_from_json(f.read())
    FileSystems.delete([FileSystems.join(out_dir, STATS_PART)])
    names = sorted(os.path.basename(m.path) for m in FileSystems.match([FileSystems.join(out_dir, "*" + SHARD_SUFFIX)])[0].metadata_list)  # fmt: skip
    stopped = over_budget(stats, o.max_error_rate, o.min_items_for_rate, out_dir)
    head = dict(format=o.format, inputs=inputs, sample_rate=o.sample_rate, audio_format=audio_format, runner="beam")
    return finish(out_dir, stats, names, stopped, start, **head)


def _read_file(numbered: tuple, format: str, read_kw: dict):
    """(file number, path) -> ((file number, row number), item, candidate | a reader's skip outcome)."""
    i, path = numbered
    for j, (item, cand) in enumerate(iter_items([path], format, **read_kw)):
        yield (i, j), item, ("skip", cand.reason, cand.detail) if isinstance(cand, BadData) else cand


def _convert(numbered: tuple, kw: dict, audio_format: str) -> tuple:
    """(number, item, candidate | outcome) -> (number, item, outcome) with the record encoded (bytes)."""
    number, item, cand = numbered
    outcome = cand if isinstance(cand, tuple) else convert(cand, **kw)
    if outcome[0] == "written":
        example = outcome[1]
        summary = dict(negatives=example["negatives"], positives=example["positives"], seconds=example["seconds"])
        outcome = ("written", {**summary, "record": encode_record(example, audio_format)}, outcome[2])
    return number, item, outcome


def _by_shard(converted: tuple, shards: int):
    (i, j), _, outcome = converted
    if outcome[0] == "written":  # rows of a file round-robin over the shards, each file starting elsewhere
        yield (j + 7919 * i) % shards, ((i, j), outcome[1]["record"])


def _write_shard(group: tuple, out_dir: str, shards: int) -> str:
    """One shard's records, in item order: a local temporary file, then copied through `FileSystems` to
    ``<name>.tmp`` and renamed, so a reader never sees a half-written shard."""
    from array_record.python.array_record_module import ArrayRecordWriter

    shard, records = group
    name = FileSystems.join(out_dir, f"data-{shard:05d}-of-{shards:05d}{SHARD_SUFFIX}")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "shard" + SHARD_SUFFIX)
        writer = ArrayRecordWriter(local, "group_size:1,uncompressed")  # as records.ShardWriter writes
        for _, record in sorted(records, key=lambda r: r[0]):
            writer.write(record)
        writer.close()
        with open(local, "rb") as src, FileSystems.create(name + ".tmp") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    FileSystems.rename([name + ".tmp"], [name])
    return name


class MergeStats(beam.CombineFn):
    """Converted items -> one `BuildStats` (per bundle, then merged)."""

    def create_accumulator(self) -> BuildStats:
        return BuildStats()

    def add_input(self, stats: BuildStats, converted: tuple) -> BuildStats:
        _, item, outcome = converted
        stats.count(item, outcome)
        return stats

    def merge_accumulators(self, accumulators) -> BuildStats:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.merge(other)
        return merged

    def extract_output(self, stats: BuildStats) -> BuildStats:
        return stats


def _write_stats(stats: BuildStats, out_dir: str) -> None:
    state = {**vars(stats), "negatives_per_row": sorted(stats.negatives_per_row.items())}
    with FileSystems.create(FileSystems.join(out_dir, STATS_PART)) as f:
        f.write(json.dumps(state).encode())


def _stats_from_json(data: bytes) -> BuildStats:
    """The merged stats `_write_stats` handed over: every count of `BuildStats`, nothing executable."""
    state = json.loads(data)
    stats = BuildStats(state.pop("n_examples"))
    stats.skipped.update(state.pop("skipped"))
    stats.negatives_per_row.update(dict(state.pop("negatives_per_row")))
    for name, value in state.items():
        setattr(stats, name, value)
    return stats
