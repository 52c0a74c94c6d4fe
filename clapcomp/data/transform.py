"""One record -> one training example, and examples -> one batch: the pipeline's per-record and per-batch steps.

`RecordTransform.read` runs per record on grain's threads (parse, decode FLAC / PCM time-bounded, crop,
pick a caption, negatives and positives); `Collate` per batch (waveforms into one ``[B, S]`` array,
generated negatives, one tokenizer call). `clapcomp.data.pipeline.make_dataset` wires them into grain.

A bad record found at read time (`BadData` with a `clapcomp.data.reasons.READ_REASONS` reason:
unparsable, undecodable, too long, no caption, decode timeout) is replaced by another record drawn
with the same per-record rng, so batches keep their size and order stays deterministic; each
replacement is counted by reason in the `_skips` field, which `clapcomp.data.pipeline.DeviceIterator`
sums into its `metrics`. Any other exception in the transform is a bug, not bad data: it is logged with
its traceback, counted as `unexpected_error`, and the third one stops the pipeline; the same for the
negative generator, which `Collate` runs per batch (an example whose generation failed keeps no negatives).

Waveforms: unfused mode crops a random `clip_samples` window from longer clips; shorter clips are
zero-padded and `lengths` holds the true count (`clapcomp.audio.features` repeat-pads on device).
Fused mode (`fusion=True`) keeps up to `max_samples` (default 3 x clip_samples = 30 s; cropped at
random beyond that), so the fusion front end sees the whole clip and can set `is_longer`.
With a `tower_cache` (`clapcomp.data.tower_cache`: a locked audio tower's outputs keyed by clip) an
example carries the cached row `audio_pooled` instead of the waveform (a clip the cache lacks stops
the pipeline with `TowerCacheMiss`: the cache does not fit the records).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from clapcomp.data.options import DataConfig, zeros
from clapcomp.data.reasons import READ_REASONS, BadData
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
    [len(READ_REASONS)]`` i32 (bad records replaced). `negative_generator` (`.generate(caption, k)`) fills in
    for a record without negatives when the transform is called on one record (the pipeline gives it to
    `Collate`). `batch_rows` (the pipeline's per-host batch size; int16 batches only): each waveform is
    copied at once, while its record is still in cache, into the next row of this thread's
    ``[batch_rows, S]`` int16 buffer, which `Collate` then takes as the batch (grain builds a batch's
    examples in one thread, in order; otherwise `Collate` copies the rows as usual): one copy of the audio
    from a cold record less per sample.
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
        self.source, self.options, self.tower_cache = source, options, tower_cache
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
