"""The grain input pipeline: records -> per-host numpy batches -> global sharded jax.Arrays.

    source (RecordSource) -> seed + global shuffle -> repeat(num_epochs)
    -> per record (random_map, rng from grain: deterministic and independent of worker count):
       parse, decode FLAC / PCM (time-bounded), crop, pick a caption, tokenise, negatives, positives
    (several sources: each is seeded, shuffled, repeated and mapped on its own, then grain's
     `MapDataset.mix` interleaves them by weight; examples carry `_source`, their source's index)
    -> [process_index::process_count] (lazy: each host decodes only its own records)
    -> batch(batch_size / process_count) -> IterDataset -> optional mp_prefetch(workers)
    -> DeviceIterator: jax.make_array_from_process_local_data with NamedSharding(mesh, P(axes))

The options are one `clapcomp.data.options.DataConfig`; the fields of an example are declared
in `clapcomp.data.options.FIELDS`.

A bad record found at read time (`BadData` with a `clapcomp.data.reasons.READ_REASONS` reason:
unparsable, undecodable, too long, no caption, decode timeout) is replaced by another record drawn
with the same per-record rng, so batches keep their size and order stays deterministic; each
replacement is counted by reason in the `_skips` field, which `DeviceIterator` sums into `metrics`
(and strips from the batch; `skip_totals` gives the run's totals, which the trainer logs and
checkpoints). Past `max_error_rate` the iterator stops
with a clear error. Any other exception in the transform is a bug, not bad data: it is logged with
its traceback, counted as `unexpected_error`, and the third one stops the pipeline; the same for the
negative generator, which `Collate` runs per batch (an example whose generation failed keeps no negatives).

Waveforms: unfused mode crops a random `clip_samples` window from longer clips; shorter clips are
zero-padded and `lengths` holds the true count (`clapcomp.audio.features` repeat-pads on device).
Fused mode (`fusion=True`) keeps up to `max_samples` (default 3 x clip_samples = 30 s; cropped at
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
import os
import threading

import numpy as np

from clapcomp.data.options import DataConfig, zeros
from clapcomp.data.reasons import READ_REASONS, BadData, renamed
from clapcomp.data.records import (
    call_with_timeout,
    decode_audio,
    decode_flac,
    parse_record,
    pcm16_samples,
    pcm16_to_float,
)
from clapcomp.data.tower_cache import TowerCacheMiss

_log = logging.getLogger(__name__)


class RecordTransform:
    """One record -> one training example (numpy). Picklable, for grain worker processes.

    The pipeline runs it in two steps: `read` (per record, on grain's threads: parse, crop, pick the
    texts) and `Collate` (per batch: int16 -> float32 straight into the batch, one tokenizer call for
    all texts). Calling the transform does both for one record: the example holds the
    `clapcomp.data.options.FIELDS` of its parts: ``waveform [S] f32`` (S = `options.out_samples`; int16 with
    `options.pcm16_batches`), or with a `tower_cache` ``audio_pooled [D] f32`` (the cache's row for the clip)
    instead; ``lengths`` i32; ``input_ids``/``attention_mask [L]`` i32; ``neg_input_ids``/``neg_attention_mask
    [K, L]`` i32, ``neg_mask [K]`` bool (K = `options.num_negatives`, may be 0); with P = `options.num_positives`
    > 0 also ``pos_input_ids``/``pos_attention_mask [P, L]``, ``pos_mask [P]``; plus ``_skips
    [len(READ_REASONS)]`` i32 (bad records replaced). `negative_generator` (`.generate(caption, k)`) fills in for a record without
    negatives when the transform is called on one record (the pipeline gives it to `Collate`). `batch_rows` (the pipeline's per-host batch size; int16 batches only): each waveform is copied
    at once, while its record is still in cache, into the next row of this thread's ``[batch_rows, S]`` int16
    buffer, which `Collate` then takes as the batch (grain builds a batch's examples in one thread, in order;
    otherwise `Collate` copies the rows as usual): one copy of the audio from a cold record less per sample.
    """

    def __init__(
        self,
        source,
        options: DataConfig,
        *,
        tokenizer,
        negative_generator=None,
        tower_cache=None,
        source_index=None,
        batch_rows=None,
    ):
        self.source, self.options, self.tokenizer = source, options, tokenizer
        self.negative_generator, self.tower_cache = negative_generator, tower_cache
        self.source_index = source_index  # in a mixture: the example's ``_source`` i32 (None: no such field)
        self.batch_rows = batch_rows if options.pcm16_batches and tower_cache is None else None
        self.unexpected = 0
        self._collate = Collate(options, tokenizer, negative_generator=negative_generator)  # for __call__
        self._rows = threading.local()  # .buffer [batch_rows, S] int16, .next: its first unused row

    def __getstate__(self) -> dict:  # pickled for grain's worker processes: each thread there starts a buffer
        return {k: v for k, v in self.__dict__.items() if k != "_rows"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _rows=threading.local())

    def __call__(self, record: bytes, rng: np.random.Generator) -> dict:
        batch = self._collate([self.read(record, rng)])
        return {k: v[0] for k, v in batch.items()}

    def read(self, record: bytes, rng: np.random.Generator) -> dict:
        """One record -> what `Collate` batches: ``audio [n]`` (int16 at the model's rate: pcm16 or mono 16-bit
        FLAC; else float32; n <= S) or ``audio_pooled [D]``, ``lengths`` i32, ``texts`` (caption, [negatives] or None:
        none in the record, to generate, [positives]), ``_skips`` (and ``_source``). A bad record is replaced by
        another drawn with `rng`, and counted."""
        skips = np.zeros(len(READ_REASONS), np.int32)
        for _ in range(self.options.max_retries + 1):
            try:
                example = self._load(record, rng)
                example["_skips"] = skips
                if self.source_index is not None:
                    example["_source"] = np.int32(self.source_index)
                return example
            except BadData as e:  # bad data: replaced and counted
                skips[READ_REASONS.index(e.reason)] += 1
                _log.warning("skipping a bad record (%s): %s", e.reason, e)
            except TowerCacheMiss:  # neither bad data nor a bug: a cache that does not fit the records
                raise
            except Exception as e:  # not bad data: a bug; tolerated a few times, with its traceback
                skips[READ_REASONS.index("unexpected_error")] += 1
                _tolerate_bug(self, e, "the record transform")
            record = self.source[int(rng.integers(len(self.source)))]
        counts = dict(zip(READ_REASONS, skips.tolist(), strict=True))
        raise RuntimeError(
            f"{self.options.max_retries + 1} bad records in a row ({counts}); "
            "the dataset looks broken: rebuild it with `clapcomp data build`"
        )

    def _load(self, record: bytes, rng: np.random.Generator) -> dict:
        o = self.options
        rec = parse_record(record, copy=False)
        if not rec["captions"]:
            raise BadData("missing_caption", f"record {rec['key']!r} has no caption")
        if rec["num_samples"] > o.max_record_seconds * rec["sample_rate"]:
            raise BadData("too_long", f"record {rec['key']!r}: {rec['num_samples']} samples")
        # At the model's rate the audio stays int16 until Collate converts the crop (or, with pcm16_batches, the
        # device does): the same floats, less work. FLAC decoding runs under the time bound (and stops itself there).
        timeout = o.decode_timeout_s if rec["audio_format"] == "flac" else None
        if rec["sample_rate"] == o.sample_rate and rec["audio_format"] == "pcm16":
            audio = pcm16_samples(rec)  # a view of the record's bytes
        elif rec["sample_rate"] == o.sample_rate:  # int16 when mono 16-bit (as written by `encode_flac`)
            audio = call_with_timeout(decode_flac, timeout, bytes(rec["audio"]), rec["num_samples"], timeout, True)
        else:
            rec["audio"] = bytes(rec["audio"])  # the decoder reads bytes, not a view
            audio = call_with_timeout(decode_at, timeout, rec, o.sample_rate, timeout)
        if o.pcm16_batches and audio.dtype != np.int16 and self.tower_cache is None:
            raise BadData(
                "bad_record",
                f"record {rec['key']!r} holds {rec['sample_rate']} Hz audio, not 16-bit mono at the model's "
                f"{o.sample_rate} Hz: int16 batches carry the records' own samples (rebuild the records at that rate)",
            )
        if audio.shape[0] > o.out_samples:
            start = int(rng.integers(audio.shape[0] - o.out_samples + 1))
            audio = audio[start : start + o.out_samples]
        if self.tower_cache is not None:
            wave = pcm16_to_float(audio) if audio.dtype == np.int16 else audio
            example = {"audio_pooled": self.tower_cache.lookup(wave, f"record {rec['key']!r}")}
        else:
            example = {"audio": self._into_row(audio) if self.batch_rows else audio}
        caption = rec["captions"][int(rng.integers(len(rec["captions"])))]
        negatives = self._pick(rec["negatives"], o.num_negatives, rng)
        if not negatives and o.num_negatives:
            negatives = None  # generated by Collate, per batch: the same texts for less CPU than record by record
        positives = self._pick(rec["positives"], o.num_positives, rng)
        example.update(lengths=np.int32(audio.shape[0]), texts=(caption, negatives, positives))
        return example

    def _into_row(self, audio: np.ndarray) -> np.ndarray:
        """`audio` [n] int16 copied into the next row of this thread's buffer (zero-tailed); the row's first n."""
        rows = self._rows
        if getattr(rows, "next", self.batch_rows) == self.batch_rows:
            rows.buffer, rows.next = np.empty((self.batch_rows, self.options.out_samples), np.int16), 0
        row = rows.buffer[rows.next]
        rows.next += 1
        row[: audio.shape[0]] = audio
        row[audio.shape[0] :] = 0
        return row[: audio.shape[0]]

    @staticmethod
    def _pick(texts: list[str], k: int, rng: np.random.Generator) -> list[str]:
        if len(texts) <= k:
            return list(texts)
        return [texts[i] for i in sorted(rng.choice(len(texts), size=k, replace=False))]


class Collate:
    """`RecordTransform.read` examples -> one batch of `FIELDS` with a leading ``[B]``: the waveforms
    converted (int16; copied as they are with `pcm16_batches`) or copied (float32) straight into one
    zero-tailed ``[B, S]`` array, the negatives of examples whose record has none from `negative_generator`
    (if any), all B x (1 + K + P) texts tokenised in one call. grain's `batch_fn`; picklable."""

    def __init__(self, options: DataConfig, tokenizer, *, negative_generator=None):
        self.options, self.tokenizer, self.negative_generator = options, tokenizer, negative_generator
        self.unexpected = 0

    def __call__(self, examples) -> dict:
        o, n = self.options, len(examples)
        texts = []  # (caption, negatives, positives) per example
        for e in examples:
            caption, negatives, positives = e["texts"]
            texts.append((caption, self._generate(caption, e["_skips"]) if negatives is None else negatives, positives))
        ids, mask = self.tokenizer(
            [t for caption, negatives, positives in texts for t in (caption, *negatives, *positives)]
        )
        sizes = dict(L=ids.shape[1], K=o.num_negatives, P=o.num_positives, S=o.out_samples)
        if "audio_pooled" in examples[0]:
            batch = {"audio_pooled": np.stack([e["audio_pooled"] for e in examples])}
        else:
            wave = _filled_buffer([e["audio"] for e in examples], (n, o.out_samples))
            if wave is None:
                wave = np.empty((n, o.out_samples), np.int16 if o.pcm16_batches else np.float32)
                for row, e in zip(wave, examples, strict=True):
                    audio, k = e["audio"], e["audio"].shape[0]
                    if audio.dtype == np.int16 and not o.pcm16_batches:
                        pcm16_to_float(audio, out=row[:k])
                    else:
                        row[:k] = audio
                    row[k:] = 0
            batch = {"waveform": wave}
        batch["lengths"] = np.array([e["lengths"] for e in examples], np.int32)
        parts = ("caption", "negatives", "positives") if o.num_positives else ("caption", "negatives")
        for part in parts:
            batch.update(zeros(part, batch=n, **sizes))
        row = 0
        for b, (_, negatives, positives) in enumerate(texts):
            batch["input_ids"][b], batch["attention_mask"][b] = ids[row], mask[row]
            row += 1
            for prefix, picked in (("neg", negatives), ("pos", positives)):
                if picked:
                    k = len(picked)
                    batch[f"{prefix}_input_ids"][b, :k] = ids[row : row + k]
                    batch[f"{prefix}_attention_mask"][b, :k] = mask[row : row + k]
                    batch[f"{prefix}_mask"][b, :k] = True
                    row += k
        batch["_skips"] = np.stack([e["_skips"] for e in examples])
        if "_source" in examples[0]:
            batch["_source"] = np.array([e["_source"] for e in examples], np.int32)
        return batch

    def _generate(self, caption: str, skips: np.ndarray) -> list[str]:
        if self.negative_generator is None:
            return []
        try:
            return self.negative_generator.generate(caption, self.options.num_negatives)
        except Exception as e:  # a bug: tolerated a few times, with its traceback; this example has no negatives
            skips[READ_REASONS.index("unexpected_error")] += 1
            _tolerate_bug(self, e, "the negative generator")
            return []


def _tolerate_bug(owner, e: Exception, where: str) -> None:
    """Count an exception that is not bad data on `owner` (``.unexpected``, ``.options.max_unexpected``) and log
    its traceback; at the limit, stop with a clear error."""
    owner.unexpected += 1
    limit = owner.options.max_unexpected
    _log.exception("unexpected error in %s (%d of at most %d)", where, owner.unexpected, limit)
    if owner.unexpected >= limit:
        raise RuntimeError(
            f"{owner.unexpected} unexpected errors in {where}, last {type(e).__name__}: {e}; this is a bug (in "
            "clapcomp or a custom negative generator), not bad data: see the tracebacks in the log"
        ) from e


def _filled_buffer(audio: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray | None:
    """The `shape` buffer whose rows 0..B-1 start with `audio`'s arrays, in order (`RecordTransform._into_row`
    filled it, zero-tailed), else None."""
    buffer = audio[0].base
    if not isinstance(buffer, np.ndarray) or buffer.shape != shape:
        return None
    start, step = buffer.__array_interface__["data"][0], buffer.strides[0]
    for j, a in enumerate(audio):
        if a.base is not buffer or a.__array_interface__["data"][0] != start + j * step:
            return None
    return buffer


def decode_at(rec: dict, sample_rate: int, timeout_s: float | None = None) -> np.ndarray:
    """A parsed record's audio `[T]` float32 at `sample_rate` (soxr when the record has another rate)."""
    wave = decode_audio(rec, timeout_s)
    if rec["sample_rate"] != sample_rate:
        import soxr

        wave = soxr.resample(wave, rec["sample_rate"], sample_rate).astype(np.float32)
    return wave


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
