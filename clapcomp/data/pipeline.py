"""The grain input pipeline: records -> per-host numpy batches -> global sharded jax.Arrays.

    source (RecordSource) -> seed + global shuffle -> repeat(num_epochs)
    -> per record (random_map, rng from grain: deterministic and independent of worker count):
       parse, decode FLAC / PCM (time-bounded), crop, pick a caption, the record's negatives, positives
    (several sources: each is seeded, shuffled, repeated and mapped on its own, then grain's
     `MapDataset.mix` interleaves them by weight; examples carry `_source`, their source's index)
    -> [process_index::process_count] (lazy: each host decodes only its own records)
    -> batch(batch_size / process_count; Collate: rule negatives where a record has none, tokenise)
    -> IterDataset -> optional mp_prefetch(workers)
    -> DeviceIterator: jax.make_array_from_process_local_data with NamedSharding(mesh, P(axes))

The options are one `clapcomp.data.options.DataConfig`; the fields of an example are declared
in `clapcomp.data.options.FIELDS`.

The per-record and per-batch steps are `clapcomp.data.transform` (`RecordTransform`, `Collate`); bad records
are replaced there and counted in each example's `_skips`, which `DeviceIterator` sums into `metrics` (and
strips from the batch; `skip_totals` gives the run's totals, which the trainer logs and checkpoints). Past
`max_error_rate` the iterator stops with a clear error.

Checkpointing: `DeviceIterator.grain_iterator` is grain's iterator; save it in the trainer's Orbax
Composite as ``data=grain.checkpoint.CheckpointSave(it.grain_iterator)`` and restore with
``grain.checkpoint.CheckpointRestore(it.grain_iterator)`` (or `get_state()` / `set_state()`); a
restore needs the same process count and per-host batch size.
"""

from __future__ import annotations

import os

import numpy as np

from clapcomp.data.options import DataConfig
from clapcomp.data.reasons import READ_REASONS, renamed
from clapcomp.data.transform import Collate, RecordTransform


def make_dataset(
    source,
    options: DataConfig,
    *,
    tokenizer,
    tower_cache=None,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """A grain `IterDataset` of per-host numpy batches (see `RecordTransform` for the fields).

    `source`: a `RecordSource` (or any random-access source of record bytes), or a mixture: a dict
    {name: source} of two or more, drawn in proportion to `options.weights` (grain's `MapDataset.mix`:
    deterministic, each source shuffled and repeated on its own seed; bad records are replaced from
    the same source); `options`: what to do with it (`DataConfig`). `process_index/process_count` default to JAX's; each host gets the disjoint
    slice `[process_index::process_count]` of the shuffled stream and batches of
    `options.batch_size // process_count`. `options.workers > 0` decodes in that many (spawned)
    processes, so a script must guard its entry with `if __name__ == "__main__":` and parse absl
    flags (grain's workers read them; this function never changes global flag state); batches are
    identical for any worker count. Each process builds `read_threads` batches at a
    time and buffers `prefetch_batches` (memory: ~(threads + buffer) x batch x S x 4 bytes).
    Negatives come from the record, else (if `generate_negatives`) from
    `clapcomp.data.negatives.NegativeGenerator(seed)`. `tower_cache`: a `TowerCache` whose rows
    replace the waveforms (``audio_pooled``).
    """
    import grain

    from clapcomp.data.negatives import NegativeGenerator

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if options.batch_size % process_count:
        raise ValueError(
            f"batch_size {options.batch_size} (global) is not divisible by the {process_count} processes; "
            "pick a multiple"
        )
    sources = dict(source) if isinstance(source, dict) and len(source) > 1 else None
    if sources is None and isinstance(source, dict):
        (source,) = source.values()
    for name, src in (sources or {None: source}).items():
        if len(src) == 0:
            which = f" {name!r}" if name else ""
            raise ValueError(f"the record source{which} is empty; check the build's stats.json")
    generator = NegativeGenerator(options.seed) if options.generate_negatives else None

    def mapped(src, seed, index=None):
        # random_map before the host slice: the record at global position g gets the same rng
        # (crop, caption choice) whatever the process count; the map is lazy, so each host only
        # computes its own slice.
        transform = RecordTransform(
            src,
            options,
            tokenizer=tokenizer,
            tower_cache=tower_cache,
            source_index=index,
            batch_rows=options.batch_size // process_count,
        )
        return grain.MapDataset.source(src).seed(seed).shuffle().repeat(options.num_epochs).random_map(transform.read)

    if sources is None:
        ds = mapped(source, options.seed)
    else:
        if len(options.weights) not in (0, len(sources)):
            raise ValueError(f"{len(options.weights)} mixing weights for {len(sources)} sources; give one per source")
        seeds = np.random.SeedSequence(options.seed).generate_state(len(sources))  # one stream per source
        parts = [mapped(src, int(seed), i) for i, (src, seed) in enumerate(zip(sources.values(), seeds, strict=True))]
        ds = grain.MapDataset.mix(parts, list(options.weights) or None)
    ds = ds[process_index::process_count]
    collate = Collate(options, tokenizer, negative_generator=generator)
    ds = ds.batch(options.batch_size // process_count, drop_remainder=True, batch_fn=collate)
    read = grain.ReadOptions(num_threads=options.read_threads, prefetch_buffer_size=options.prefetch_batches)
    it = ds.to_iter_dataset(read)
    if options.workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            raise RuntimeError(
                "workers > 0 runs grain worker processes, which read absl flags: parse them in your "
                "program's entry point first (absl.app.run, or flags.FLAGS.mark_as_parsed() for the defaults)"
            )
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.workers))
    return it


class DeviceIterator:
    """Iterates a `make_dataset` dataset as dicts of global `jax.Array`s sharded over the batch.

    `mesh`: a `jax.sharding.Mesh`; `batch_axes`: the mesh axis name(s) the batch dim is split
    over. `metrics`: ``{"examples": n, "skipped": {reason: n}}`` since this iterator started, and with
    `source_names` (a mixture's sources, in `_source` order) ``"sources": {name: {"samples": n,
    "skipped": n}}``. `grain_iterator` (with `get_state()/set_state()`) is what the trainer checkpoints.
    """

    def __init__(
        self,
        dataset,
        mesh,
        batch_axes=("data",),
        *,
        max_error_rate: float = 0.1,
        min_examples_for_rate: int = 1000,
        source_names: tuple[str, ...] = (),
    ):
        from jax.sharding import NamedSharding, PartitionSpec

        self.grain_iterator = iter(dataset)
        self.sharding = NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))
        self.max_error_rate, self.min_examples_for_rate = max_error_rate, min_examples_for_rate
        self.metrics = {"examples": 0, "skipped": dict.fromkeys(READ_REASONS, 0)}
        self.source_names = tuple(source_names)
        if self.source_names:
            self.metrics["sources"] = {name: {"samples": 0, "skipped": 0} for name in self.source_names}
        self._skips_before: dict[str, int] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax

        batch = next(self.grain_iterator)
        per_example = batch.pop("_skips")
        skips = per_example.sum(axis=0)
        which = batch.pop("_source", None)
        if self.source_names:
            n = len(self.source_names)
            samples = np.bincount(which, minlength=n)
            skipped = np.bincount(which, weights=per_example.sum(axis=1), minlength=n)
            for name, k, bad in zip(self.source_names, samples.tolist(), skipped.tolist(), strict=True):
                self.metrics["sources"][name]["samples"] += k
                self.metrics["sources"][name]["skipped"] += int(bad)
        self.metrics["examples"] += len(batch["lengths"])
        for reason, n in zip(READ_REASONS, skips.tolist(), strict=True):
            self.metrics["skipped"][reason] += n
        self._check_error_rate()
        return {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in batch.items()}

    def _check_error_rate(self) -> None:
        bad = sum(self.metrics["skipped"].values())
        seen = self.metrics["examples"] + bad
        if seen >= self.min_examples_for_rate and bad > self.max_error_rate * seen:
            raise RuntimeError(
                f"{bad} of {seen} records read were bad ({self.metrics['skipped']}), more than "
                f"max_error_rate={self.max_error_rate:g}; the warnings log names them. Rebuild the "
                "dataset with `clapcomp data build` or raise max_error_rate."
            )

    def skip_totals(self) -> dict[str, int]:
        """Bad records replaced since the run began, summed over processes, plus the counts
        restored with a checkpoint (`restore_skips`). A collective: call it on every process."""
        import jax
        from jax.experimental import multihost_utils

        local = np.array([self.metrics["skipped"][r] for r in READ_REASONS], np.int64)
        if jax.process_count() > 1:
            local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(READ_REASONS)).sum(0)
        return {r: int(self._skips_before.get(r, 0)) + int(n) for r, n in zip(READ_REASONS, local, strict=True)}

    def source_totals(self) -> dict[str, int]:
        """A mixture's per-source counters since the run began, summed over processes, plus those restored
        with a checkpoint: ``{"source/<name>/samples": n, "source/<name>/skipped": n}`` ({} for one source).
        A collective: call it on every process."""
        import jax
        from jax.experimental import multihost_utils

        if not self.source_names:
            return {}
        pairs = [(name, what) for name in self.source_names for what in ("samples", "skipped")]
        keys = [f"source/{name}/{what}" for name, what in pairs]
        local = np.array([self.metrics["sources"][name][what] for name, what in pairs], np.int64)
        if jax.process_count() > 1:
            local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys)).sum(0)
        return {k: int(self._skips_before.get(k, 0)) + int(n) for k, n in zip(keys, local, strict=True)}

    def restore_skips(self, totals: dict[str, int]) -> None:
        """Counts saved with the checkpoint this run resumes from (`skip_totals` and `source_totals` add
        them); counts saved under a reason's old name (`clapcomp.data.reasons.RENAMED`) are restored under its new one."""
        self._skips_before = renamed(totals)

    def get_state(self) -> dict:
        return self.grain_iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.grain_iterator.set_state(state)


def serial_tokenizers() -> None:
    """``TOKENIZERS_PARALLELISM=false`` unless the environment sets it: the `tokenizers` library then encodes on
    the calling thread. The pipeline already builds batches on `read_threads` threads (and `workers`
    processes); the library's own thread pool only adds wake-ups: ~15% more CPU per pcm16 sample in
    `benchmarks/pipeline_throughput.py` (2-core CPU, 2026-12-07). A process-wide setting, so the application
    makes it: the trainer calls this before it builds the pipeline."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_iterator(source, mesh, options: DataConfig, *, tokenizer, tower_cache=None, batch_axes=("data",)):
    """`DeviceIterator(make_dataset(source, options, ...), mesh, batch_axes)`; a mixture ({name: source})
    counts per source."""
    names = tuple(source) if isinstance(source, dict) and len(source) > 1 else ()
    ds = make_dataset(source, options, tokenizer=tokenizer, tower_cache=tower_cache)
    return DeviceIterator(ds, mesh, batch_axes, source_names=names)
