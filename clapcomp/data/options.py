"""The data options (`DataConfig`, one frozen object) and the batch's fields (`FIELDS`), declared once.

`DataConfig` is built once (the trainer: `DataConfig.from_config(config, audio)`) and handed to
`clapcomp.data.pipeline.make_iterator` / `make_dataset` / `clapcomp.data.transform.RecordTransform`; its fields keep the
training config's names (``config.data.batch_size``, ``num_negatives``, ``num_positives``,
``workers``; ``model.audio.sample_rate``, ``clip_samples``, ``fusion``; ``config.seed``).

`FIELDS` lists every per-example array the pipeline emits: its name, its shape in symbols and its
dtype, and the part of the batch it belongs to. The pipeline allocates batches from it and
`clapcomp.train.step.batch_spec` picks a loss's inputs from it by part. A new per-example field is
one row here plus the lines in `RecordTransform._load` (per record) and `Collate` (per batch) that fill it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from clapcomp import fs


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the pipeline does with the records. Sizes: ``S`` = `out_samples`, ``K`` = `num_negatives`,
    ``P`` = `num_positives`, ``L`` = the tokenizer's max length."""

    batch_size: int  # global: split over processes (each host batches batch_size // process_count)
    clip_samples: int  # the model's clip window; shorter clips are zero-padded, longer ones cropped at random
    sample_rate: int = 48000  # the model's rate; records at another rate are resampled (soxr)
    fusion: bool = False  # keep the whole clip up to max_samples (the fusion front end sees it all)
    max_samples: int | None = None  # fusion only: default 3 x clip_samples (cropped at random beyond)
    num_negatives: int = 0  # K hard-negative captions per example (the record's, else generated)
    num_positives: int = 0  # P extra positive captions per example (0: no pos_* fields)
    generate_negatives: bool = True  # NegativeGenerator(seed) when a record has no negatives
    seed: int = 0  # shuffle order, crops, caption picks, generated negatives
    num_epochs: int | None = None  # None: repeat forever
    workers: int = 0  # grain worker processes per host (0: in-process); batches are the same for any count
    read_threads: int = 2  # batches built at a time per process
    prefetch_batches: int = 4  # batches buffered per process
    decode_timeout_s: float | None = 10.0  # per-record FLAC decode bound (a `timeout` skip past it)
    max_record_seconds: float = 600.0  # longer records are `too_long` skips, refused before decoding
    max_retries: int = 16  # bad records in a row before the pipeline stops (the data looks broken)
    max_unexpected: int = 3  # transform bugs (`unexpected_error`) tolerated before stopping
    weights: tuple[float, ...] = ()  # mixing weight per source (several `data.train` dirs); (): equal weights
    # waveform as int16 (the records' samples; the model's float32 is x * 2**-15, which the train step computes on
    # the device: half the bytes copied and sent); a record not 16-bit mono at sample_rate is then a bad record
    pcm16_batches: bool = False

    def __post_init__(self):
        for name in ("batch_size", "clip_samples", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"data option {name}={getattr(self, name)} must be >= 1")
        for name in ("num_negatives", "num_positives", "workers", "max_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"data option {name}={getattr(self, name)} must be >= 0")
        if not all(w > 0 for w in self.weights):
            raise ValueError(f"data option weights={self.weights}: every mixing weight must be > 0")

    @property
    def out_samples(self) -> int:
        """S, the waveform length of an example: clip_samples, or with fusion max_samples (3 x clip_samples)."""
        return (self.max_samples or 3 * self.clip_samples) if self.fusion else self.clip_samples

    @classmethod
    def from_config(cls, config, audio, **overrides) -> DataConfig:
        """From a training config (`config.seed`, `config.data.*`; `data.train` and `data.tower_cache` name
        inputs the caller opens) and the model's audio front end (`sample_rate`, `clip_samples`, `fusion`);
        `overrides` replace any field (the trainer sets `pcm16_batches` from its sources: `built_at`)."""
        train = config.data.train
        fields = dict(
            batch_size=config.data.batch_size,
            clip_samples=audio.clip_samples,
            sample_rate=audio.sample_rate,
            fusion=audio.fusion,
            num_negatives=config.data.num_negatives,
            num_positives=config.data.num_positives,
            seed=config.seed,
            workers=config.data.workers,
            weights=tuple(w for _, w in parse_mixture(train, config.data.weights)) if train else (),
        )
        return cls(**{**fields, **overrides})


def built_at(dirs: list[str], sample_rate: int) -> bool:
    """Whether every folder in `dirs` was written by `clapcomp data build` at `sample_rate` (its `stats.json`
    says so): then every record is 16-bit mono at that rate and batches can carry int16 (`pcm16_batches`).
    Records written otherwise (no stats.json, another rate) keep float32 batches: resampled as they are read,
    none skipped."""
    for directory in dirs:
        stats_file = fs.as_path(directory) / "stats.json"
        if not stats_file.is_file() or json.loads(stats_file.read_text()).get("sample_rate") != sample_rate:
            return False
    return True


def mixture(train: str, weights: str = "") -> list[tuple[str, float]]:
    """`parse_mixture`, with every source a local folder: one on GCS (``gs://bkt/recs``) is staged to
    local disk first (`clapcomp.data.stage.local_records`; once per process) and its copy, which keeps the
    source's basename, is returned in its place. Where the trainer opens its sources."""
    from clapcomp.data.stage import local_records

    return [(local_records(d), w) for d, w in parse_mixture(train, weights)]


def parse_mixture(train: str, weights: str = "") -> list[tuple[str, float]]:
    """`config.data.train` ("DIR" or "DIR_A,DIR_B,...", local folders or URLs) and `config.data.weights`
    ("" or "3,1,...") -> [(dir, weight)], weights as given (grain normalises them; "": 1 each). Sources are
    named by their folder's basename in the counters, so two sources with the same basename are refused."""
    dirs = [d.strip() for d in train.split(",") if d.strip()]
    if not dirs:
        raise ValueError("config.data.train is empty; pass --config.data.train=DIR or DIR_A,DIR_B,...")
    texts = [w.strip() for w in weights.split(",")] if weights.strip() else ["1"] * len(dirs)
    if len(texts) != len(dirs):
        raise ValueError(
            f"config.data.weights={weights!r} gives {len(texts)} weights for the {len(dirs)} directories of "
            f"config.data.train={train!r}; give one weight per directory (or none: equal weights)"
        )
    try:
        values = [float(w) for w in texts]
    except ValueError:
        raise ValueError(f"config.data.weights={weights!r}: expected numbers, e.g. 3,1,1") from None
    if not all(w > 0 for w in values):
        raise ValueError(f"config.data.weights={weights!r}: every weight must be > 0 (drop a source instead)")
    names = [source_name(d) for d in dirs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"config.data.train={train!r}: two sources share a folder name ({names}); the per-source counters "
            "are named by it: rename or link one of the folders"
        )
    return list(zip(dirs, values, strict=True))


def source_name(directory: str) -> str:
    """A source's name in the counters (`data/source/<name>/samples`): its folder's basename."""
    return directory.rstrip("/").rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    shape: tuple[str, ...]  # per example, in symbols: S samples, D pooled width, L tokens, K negatives, P positives
    dtype: str
    part: str  # "waveform" | "pooled" | "length" | "caption" | "negatives" | "positives"


FIELDS = (
    Field("waveform", ("S",), "float32", "waveform"),  # zero-padded past `lengths`; int16 with pcm16_batches
    Field("audio_pooled", ("D",), "float32", "pooled"),  # a tower cache's row, instead of the waveform
    Field("lengths", (), "int32", "length"),  # the clip's true sample count (<= S)
    Field("input_ids", ("L",), "int32", "caption"),
    Field("attention_mask", ("L",), "int32", "caption"),
    Field("neg_input_ids", ("K", "L"), "int32", "negatives"),
    Field("neg_attention_mask", ("K", "L"), "int32", "negatives"),
    Field("neg_mask", ("K",), "bool", "negatives"),  # which of the K rows hold a negative
    Field("pos_input_ids", ("P", "L"), "int32", "positives"),
    Field("pos_attention_mask", ("P", "L"), "int32", "positives"),
    Field("pos_mask", ("P",), "bool", "positives"),  # which of the P rows hold a positive
)


def fields(*parts: str) -> tuple[Field, ...]:
    """The `FIELDS` of these parts, in table order."""
    unknown = set(parts) - {f.part for f in FIELDS}
    if unknown:
        raise ValueError(f"unknown batch parts {sorted(unknown)}; known: {sorted({f.part for f in FIELDS})}")
    return tuple(f for f in FIELDS if f.part in parts)


def zeros(part: str, *, batch: int | None = None, **sizes: int) -> dict[str, np.ndarray]:
    """One example's arrays of `part` (with `batch`: B examples', ``[B, ...]``), zero-filled, with the symbols
    of their shapes given in `sizes`."""
    lead = () if batch is None else (batch,)
    return {f.name: np.zeros(lead + tuple(sizes[d] for d in f.shape), f.dtype) for f in fields(part)}
