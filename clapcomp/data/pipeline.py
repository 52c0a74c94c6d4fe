"""The grain input pipeline: records -> per-host numpy batches -> global sharded jax.Arrays.

    source (RecordSource) -> seed + global shuffle -> repeat(epochs)
    -> per record (random_map, rng from grain: deterministic and independent of worker count):
       parse, decode FLAC / PCM (time-bounded), crop, pick a caption, tokenise, negatives, positives
    -> [process_index::process_count] (lazy: each host decodes only its own records)
    -> batch(global_batch / process_count) -> IterDataset -> optional mp_prefetch(workers)
    -> DeviceIterator: jax.make_array_from_process_local_data with NamedSharding(mesh, P(axes))

A bad record found at read time (unparsable, undecodable, too long, no caption, decode
timeout) is replaced by another record drawn with the same per-record rng, so batches keep their
size and order stays deterministic; each replacement is counted by reason in the `_skips` field,
which `DeviceIterator` sums into `metrics` (and strips from the batch; `skip_totals` gives the
run's totals, which the trainer logs and checkpoints). Past `max_error_rate` the iterator stops
with a clear error. Any other exception in the transform is a bug, not bad data: it is logged with
its traceback, counted as `unexpected_error`, and the third one stops the pipeline.

Waveforms: unfused mode crops a random `clip_samples` window from longer clips; shorter clips are
zero-padded and `lengths` holds the true count (`clapcomp.audio.features` repeat-pads on device).
Fused mode (`fused=True`) keeps up to `max_samples` (default 3 x clip_samples = 30 s; cropped at
random beyond that), so the fusion front end sees the whole clip and can set `is_longer`.
With a `tower_cache` (`clapcomp.data.tower_cache`: a locked audio tower's outputs keyed by clip) an
example carries the cached row `audio_pooled` instead of the waveform (a clip the cache lacks stops
the pipeline with `TowerCacheMiss`: the cache does not fit the records).

Checkpointing: `DeviceIterator.grain_iterator` is grain's iterator; save it in the trainer's Orbax
Composite as ``data=grain.checkpoint.CheckpointSave(it.grain_iterator)`` and restore with
``grain.checkpoint.CheckpointRestore(it.grain_iterator)`` (or `get_state()` / `set_state()`); a
restore needs the same process count and per-host batch size.
"""

from __future__ import annotations

import logging

import numpy as np

from clapcomp.data.records import RecordError, call_with_timeout, decode_audio, parse_record
from clapcomp.data.tower_cache import TowerCacheMiss

READ_REASONS = (
    "bad_record",
    "corrupt_audio",
    "truncated_audio",
    "too_long",
    "no_caption",
    "timeout",
    "unexpected_error",
)
_log = logging.getLogger(__name__)


class RecordTransform:
    """One record -> one training example (numpy). Picklable, for grain worker processes.

    Output: ``waveform [S] f32`` (S = clip_samples; fused: max_samples, default 3 x clip_samples), or with a
    `tower_cache` ``audio_pooled [P] f32`` (the cache's row for the clip) instead; ``lengths`` i32,
    ``input_ids``/``attention_mask [L]`` i32, ``neg_input_ids``/``neg_attention_mask [K, L]`` i32,
    ``neg_mask [K]`` bool, with ``n_positives`` P > 0 also ``pos_input_ids``/``pos_attention_mask
    [P, L]``, ``pos_mask [P]``; ``_skips [len(READ_REASONS)]`` i32 (bad records replaced).
    """

    def __init__(
        self,
        source,
        *,
        tokenizer,
        sample_rate,
        clip_samples,
        k_negatives,
        n_positives=0,
        fused=False,
        max_samples=None,
        negative_generator=None,
        tower_cache=None,
        decode_timeout_s=10.0,
        max_record_seconds=600.0,
        max_retries=16,
        max_unexpected=3,
    ):
        self.source, self.tokenizer, self.sample_rate = source, tokenizer, sample_rate
        self.tower_cache = tower_cache
        self.k, self.p = k_negatives, n_positives
        self.out_samples = (max_samples or 3 * clip_samples) if fused else clip_samples
        self.negative_generator = negative_generator
        self.decode_timeout_s, self.max_retries = decode_timeout_s, max_retries
        self.max_record_seconds = max_record_seconds
        self.max_unexpected, self.unexpected = max_unexpected, 0

    def __call__(self, record: bytes, rng: np.random.Generator) -> dict:
        skips = np.zeros(len(READ_REASONS), np.int32)
        for _ in range(self.max_retries + 1):
            try:
                example = self._load(record, rng)
                example["_skips"] = skips
                return example
            except RecordError as e:  # bad data: replaced and counted
                skips[READ_REASONS.index(e.reason)] += 1
                _log.warning("skipping a bad record (%s): %s", e.reason, e)
            except TowerCacheMiss:  # neither bad data nor a bug: a cache that does not fit the records
                raise
            except Exception as e:  # not bad data: a bug; tolerated a few times, with its traceback
                self.unexpected += 1
                skips[READ_REASONS.index("unexpected_error")] += 1
                _log.exception(
                    "unexpected error in the record transform (%d of at most %d)", self.unexpected, self.max_unexpected
                )
                if self.unexpected >= self.max_unexpected:
                    raise RuntimeError(
                        f"{self.unexpected} unexpected errors in the record transform, last {type(e).__name__}: "
                        f"{e}; this is a bug (in clapcomp or a custom tokenizer / negative generator), not bad "
                        "data: see the tracebacks in the log"
                    ) from e
            record = self.source[int(rng.integers(len(self.source)))]
        raise RuntimeError(
            f"{self.max_retries + 1} bad records in a row ({dict(zip(READ_REASONS, skips.tolist(), strict=True))}); "
            "the dataset looks broken: rebuild it with `clapcomp data build`"
        )

    def _load(self, record: bytes, rng: np.random.Generator) -> dict:
        rec = parse_record(record)
        if not rec["captions"]:
            raise RecordError("no_caption", f"record {rec['key']!r} has no caption")
        if rec["num_samples"] > self.max_record_seconds * rec["sample_rate"]:
            raise RecordError("too_long", f"record {rec['key']!r}: {rec['num_samples']} samples")
        # FLAC decoding runs under the time bound; PCM is a bounded copy and runs inline.
        timeout = self.decode_timeout_s if rec["audio_format"] != "pcm16" else None
        wave = call_with_timeout(decode_at, timeout, rec, self.sample_rate)  # from int16: always finite
        if wave.shape[0] > self.out_samples:
            start = int(rng.integers(wave.shape[0] - self.out_samples + 1))
            wave = wave[start : start + self.out_samples]
        if self.tower_cache is not None:
            audio = {"audio_pooled": self.tower_cache.lookup(wave, f"record {rec['key']!r}")}
        else:
            audio = {"waveform": np.zeros(self.out_samples, np.float32)}
            audio["waveform"][: wave.shape[0]] = wave

        caption = rec["captions"][int(rng.integers(len(rec["captions"])))]
        negatives = self._pick(rec["negatives"], self.k, rng)
        if not negatives and self.k and self.negative_generator is not None:
            negatives = self.negative_generator.generate(caption, self.k)
        positives = self._pick(rec["positives"], self.p, rng)
        ids, mask = self.tokenizer([caption] + negatives + positives)
        n, L = len(negatives), ids.shape[1]
        example = {**audio, "lengths": np.int32(wave.shape[0]), "input_ids": ids[0], "attention_mask": mask[0]}
        example.update(_padded("neg", ids[1 : 1 + n], mask[1 : 1 + n], self.k, L))
        if self.p:
            example.update(_padded("pos", ids[1 + n :], mask[1 + n :], self.p, L))
        return example

    @staticmethod
    def _pick(texts: list[str], k: int, rng: np.random.Generator) -> list[str]:
        if len(texts) <= k:
            return list(texts)
        return [texts[i] for i in sorted(rng.choice(len(texts), size=k, replace=False))]


def decode_at(rec: dict, sample_rate: int) -> np.ndarray:
    """A parsed record's audio `[T]` float32 at `sample_rate` (soxr when the record has another rate)."""
    wave = decode_audio(rec)
    if rec["sample_rate"] != sample_rate:
        import soxr

        wave = soxr.resample(wave, rec["sample_rate"], sample_rate).astype(np.float32)
    return wave


def _padded(prefix: str, ids: np.ndarray, mask: np.ndarray, width: int, L: int) -> dict:
    out_ids = np.zeros((width, L), np.int32)
    out_mask = np.zeros((width, L), np.int32)
    out_ids[: len(ids)], out_mask[: len(ids)] = ids, mask
    valid = np.arange(width) < len(ids)
    return {f"{prefix}_input_ids": out_ids, f"{prefix}_attention_mask": out_mask, f"{prefix}_mask": valid}


def make_dataset(
    source,
    *,
    tokenizer,
    seed: int,
    global_batch_size: int,
    clip_samples: int,
    k_negatives: int = 0,
    n_positives: int = 0,
    sample_rate: int = 48000,
    fused: bool = False,
    max_samples: int | None = None,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    read_threads: int = 2,
    prefetch_batches: int = 4,
    generate_negatives: bool = True,
    tower_cache=None,
    decode_timeout_s: float | None = 10.0,
):
    """A grain `IterDataset` of per-host numpy batches (see `RecordTransform` for the fields).

    `source`: a `RecordSource` (or any random-access source of record bytes). `num_epochs=None`
    repeats forever. `process_index/process_count` default to JAX's; each host gets the disjoint
    slice `[process_index::process_count]` of the shuffled stream and batches of
    `global_batch_size // process_count`. `num_workers > 0` decodes in that many (spawned)
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
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the {process_count} processes; pick a multiple"
        )
    if len(source) == 0:
        raise ValueError("the record source is empty; check the build's stats.json")
    transform = RecordTransform(
        source,
        tokenizer=tokenizer,
        sample_rate=sample_rate,
        clip_samples=clip_samples,
        k_negatives=k_negatives,
        n_positives=n_positives,
        fused=fused,
        max_samples=max_samples,
        negative_generator=NegativeGenerator(seed) if generate_negatives else None,
        tower_cache=tower_cache,
        decode_timeout_s=decode_timeout_s,
    )
    # random_map before the host slice: the record at global position g gets the same rng
    # (crop, caption choice) whatever the process count; the map is lazy, so each host only
    # computes its own slice.
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(num_epochs)
    ds = ds.random_map(transform)[process_index::process_count]
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            raise RuntimeError(
                "num_workers > 0 runs grain worker processes, which read absl flags: parse them in your "
                "program's entry point first (absl.app.run, or flags.FLAGS.mark_as_parsed() for the defaults)"
            )
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


class DeviceIterator:
    """Iterates a `make_dataset` dataset as dicts of global `jax.Array`s sharded over the batch.

    `mesh`: a `jax.sharding.Mesh`; `batch_axes`: the mesh axis name(s) the batch dim is split
    over. `metrics`: ``{"examples": n, "skipped": {reason: n}}`` since this iterator started.
    `grain_iterator` (with `get_state()/set_state()`) is what the trainer checkpoints.
    """

    def __init__(
        self, dataset, mesh, batch_axes=("data",), *, max_error_rate: float = 0.1, min_examples_for_rate: int = 1000
    ):
        from jax.sharding import NamedSharding, PartitionSpec

        self.grain_iterator = iter(dataset)
        self.sharding = NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))
        self.max_error_rate, self.min_examples_for_rate = max_error_rate, min_examples_for_rate
        self.metrics = {"examples": 0, "skipped": dict.fromkeys(READ_REASONS, 0)}
        self._skips_before: dict[str, int] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        import jax

        batch = next(self.grain_iterator)
        skips = batch.pop("_skips").sum(axis=0)
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

    def restore_skips(self, totals: dict[str, int]) -> None:
        """Counts saved with the checkpoint this run resumes from (`skip_totals` adds them)."""
        self._skips_before = {r: int(n) for r, n in totals.items()}

    def get_state(self) -> dict:
        return self.grain_iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.grain_iterator.set_state(state)


def make_iterator(source, mesh, *, batch_axes=("data",), **dataset_kwargs) -> DeviceIterator:
    """`DeviceIterator(make_dataset(source, **dataset_kwargs), mesh, batch_axes)`."""
    return DeviceIterator(make_dataset(source, **dataset_kwargs), mesh, batch_axes)
