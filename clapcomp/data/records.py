"""The on-disk record schema: ArrayRecord shards of self-describing audio + text records.

One record = one audio clip, stored without pickle as::

    b"CLAPREC1" | uint32 little-endian header length | UTF-8 JSON header | audio bytes

The JSON header holds ``key`` (str), ``sample_rate`` (int), ``num_samples`` (int),
``audio_format``, ``captions``, ``negatives``, ``positives`` (list[str]). The audio is mono at the
model rate, either 16-bit FLAC (``"flac"``, the default: ~2/3 of the size) or raw little-endian
int16 PCM (``"pcm16"``: ~1.5x bigger, decodes ~10x faster; see benchmarks/pipeline_throughput.py).
``num_samples`` lets a reader refuse a record before decoding it (bounded work per record).

Shards are written to ``<name>.tmp`` and renamed when complete, so a build that dies keeps every
shard it finished, and a reader never sees a half-written file.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import soundfile as sf

from clapcomp import fs, gcs
from clapcomp.data.reasons import BadData
from clapcomp.decode import DecodeError, Limits, read_audio

MAGIC = b"CLAPREC1"
AUDIO_FORMATS = ("flac", "pcm16")
SHARD_SUFFIX = ".array_record"
TEXT_FIELDS = ("captions", "negatives", "positives")


# clapcomp.decode's refusals in the record vocabulary (the FLAC inside a record disagrees with its header)
_DECODE_TO_RECORD = {
    "timeout": "timeout",
    "decode_budget": "truncated",
    "truncated": "truncated",
    "zero_length": "truncated",
}


def call_with_timeout(fn, timeout_s: float | None, *args):
    """Run `fn(*args)`; raise `BadData("timeout")` if it takes longer than `timeout_s` seconds.

    The call runs on a daemon thread (the decoders release the GIL), so a pathological file
    stalls nothing: the caller moves on. Give `fn` the same bound (`clapcomp.decode.Limits.timeout_s`)
    so the abandoned thread stops itself within one chunk and frees its memory.
    `timeout_s=None` runs `fn` inline.
    """
    if timeout_s is None:
        return fn(*args)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise BadData("timeout", f"took longer than {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ----------------------------------------------------------------------------- audio codec


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    """`waveform [T]` float in [-1, 1] -> mono 16-bit FLAC bytes (values are clipped)."""
    pcm = np.clip(np.asarray(waveform, np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, pcm, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(
    data: bytes, expected_samples: int | None = None, timeout_s: float | None = None, int16: bool = False
) -> np.ndarray:
    """FLAC bytes -> `[T]` float32 (channel mean). Raises `BadData` if undecodable or of the wrong length.

    Decoded by `clapcomp.decode.read_audio` with `expected_samples` as the budget, so bytes whose own
    header declares more audio than the record's are refused before decoding; the decode stops
    itself after `timeout_s` seconds. `int16`: mono 16-bit FLAC (what `encode_flac` writes) comes back as
    its int16 samples (`pcm16_to_float` of them is the float32 result, bit for bit).
    """
    budget = Limits(
        max_seconds=math.inf,
        max_file_mb=math.inf,
        max_samples=Limits.max_samples if expected_samples is None else expected_samples,
        timeout_s=timeout_s,
    )
    try:
        wave, _ = read_audio(data, budget, name="record.flac", int16=int16)
    except DecodeError as e:
        reason = _DECODE_TO_RECORD.get(e.reason, "corrupt")
        raise BadData(reason, e.detail if reason == e.reason else f"{e.reason}: {e.detail}") from None
    if expected_samples is not None and wave.shape[0] != expected_samples:
        raise BadData("truncated", f"decoded {wave.shape[0]} samples, header says {expected_samples}")
    return wave


def encode_pcm16(waveform: np.ndarray) -> bytes:
    """`waveform [T]` float in [-1, 1] -> little-endian int16 bytes: x * 2**15 rounded half to even, clipped
    to the int16 range, as libsndfile writes 16-bit FLAC, so a pcm16 and a flac record of the same audio
    decode to the same samples (and audio read from 16-bit files round-trips exactly)."""
    pcm = np.round(np.asarray(waveform, np.float32) * np.float32(32768.0))
    return np.clip(pcm, -32768, 32767).astype("<i2").tobytes()


def decode_audio(record: dict, timeout_s: float | None = None) -> np.ndarray:
    """A parsed record -> its audio `[num_samples]` float32; raises `BadData` (a FLAC decode stops at `timeout_s`)."""
    if record["audio_format"] == "flac":
        return decode_flac(record["audio"], record["num_samples"], timeout_s)
    if record["audio_format"] == "pcm16":
        return pcm16_to_float(pcm16_samples(record))
    raise BadData("bad_record", f"unknown audio_format {record['audio_format']!r}")


def pcm16_samples(record: dict) -> np.ndarray:
    """A parsed pcm16 record -> its samples `[num_samples]` int16, a view of the record's bytes (no copy:
    slice it before converting); raises `BadData` if the byte count disagrees with the header."""
    if len(record["audio"]) != 2 * record["num_samples"]:
        raise BadData("truncated", f"{len(record['audio'])} PCM bytes for {record['num_samples']} samples")
    return np.frombuffer(record["audio"], "<i2")


def pcm16_to_float(pcm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 samples `[T]` -> float32 `x / 2**15` (exact: every int16 is a float32 and 2**-15 a power of two),
    written into `out [T]` when given (one pass, no temporary)."""
    return np.multiply(pcm, np.float32(1.0 / 32768.0), out=out, dtype=np.float32)


# ----------------------------------------------------------------------------- record codec


def encode_record(example: dict, audio_format: str = "flac") -> bytes:
    """Example dict -> record bytes.

    `example`: ``key`` str; ``audio`` encoded bytes (in `audio_format`) *or* a float waveform
    `[T]` (then encoded here); ``sample_rate`` int; optional ``num_samples`` (required with
    bytes), ``captions``, ``negatives``, ``positives`` (list[str]).
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}")
    audio = example["audio"]
    if isinstance(audio, np.ndarray):
        num_samples = int(audio.shape[0])
        audio = encode_flac(audio, example["sample_rate"]) if audio_format == "flac" else encode_pcm16(audio)
    else:
        num_samples = int(example["num_samples"])
    header = {
        "key": str(example["key"]),
        "sample_rate": int(example["sample_rate"]),
        "num_samples": num_samples,
        "audio_format": audio_format,
    }
    for field in TEXT_FIELDS:
        values = example.get(field) or []
        if isinstance(values, str):
            raise TypeError(f"example {header['key']!r}: {field} must be a list of str, got a str")
        header[field] = [str(v) for v in values]
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(head)) + head + bytes(audio)


def _header_problem(h: dict) -> str | None:
    """What is wrong with a decoded JSON header, or None."""
    if not isinstance(h.get("key"), str):
        return "key must be a str"
    if h.get("audio_format") not in AUDIO_FORMATS:
        return f"audio_format {h.get('audio_format')!r} not in {AUDIO_FORMATS}"
    if not (isinstance(h.get("sample_rate"), int) and 1000 <= h["sample_rate"] <= 384000):
        return f"sample_rate {h.get('sample_rate')!r} outside [1000, 384000]"
    if not (isinstance(h.get("num_samples"), int) and h["num_samples"] >= 0):
        return f"num_samples {h.get('num_samples')!r} is not a count"
    for field in TEXT_FIELDS:
        if not (isinstance(h.get(field), list) and all(isinstance(t, str) for t in h[field])):
            return f"{field} must be a list of str"
    return None


def parse_record(data: bytes, *, copy: bool = True) -> dict:
    """Record bytes -> dict with the header fields and ``audio`` (encoded bytes, not decoded; with
    ``copy=False`` a read-only memoryview of `data`, which saves copying the audio)."""
    n = len(MAGIC)
    if len(data) < n + 4 or data[:n] != MAGIC:
        raise BadData("bad_record", "not a clapcomp record (missing CLAPREC1 magic)")
    (size,) = struct.unpack("<I", data[n : n + 4])
    if n + 4 + size > len(data):
        raise BadData("bad_record", "header longer than the record")
    try:
        header = json.loads(data[n + 4 : n + 4 + size].decode("utf-8"))
        problem = _header_problem(header)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        problem = str(e)
    if problem:
        raise BadData("bad_record", f"unreadable header: {problem}")
    header["audio"] = bytes(data[n + 4 + size :]) if copy else memoryview(data)[n + 4 + size :]
    return header


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes records into `out_dir/<prefix>-NNNNN.array_record`, `shard_size` records each.

    Use as a context manager; `close()` finalises the open shard (even after an error in the
    caller, so everything written so far is kept). Shards become visible only when complete. On GCS
    (``gs://`` `out_dir`; ArrayRecord writes local files only) each shard is written to a local temporary
    file and uploaded as one object when complete: local disk holds one shard at a time.
    """

    def __init__(self, out_dir: str, *, shard_size: int = 1024, prefix: str = "data", audio_format: str = "flac"):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.remote = gcs.is_remote(out_dir)
        if self.remote:
            existing = list(fs.as_path(out_dir).glob(f"{prefix}-*{SHARD_SUFFIX}"))
        else:
            os.makedirs(out_dir, exist_ok=True)
            existing = glob.glob(os.path.join(out_dir, f"{prefix}-*{SHARD_SUFFIX}"))
        if existing:
            raise FileExistsError(
                f"{out_dir} already holds {len(existing)} '{prefix}' shards; write to an empty "
                "directory or delete them first"
            )
        if audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}")
        self.out_dir, self.shard_size, self.prefix = out_dir, shard_size, prefix
        self.audio_format = audio_format
        self.shards: list[str] = []
        self.num_records = 0
        self._writer = None
        self._tmp = self._final = None
        self._in_shard = 0
        self._local = tempfile.mkdtemp(prefix="clapcomp-shard-") if self.remote else None

    def write(self, example: dict) -> None:
        record = encode_record(example, self.audio_format)
        if self._writer is None:
            self._open()
        self._writer.write(record)
        self._in_shard += 1
        self.num_records += 1
        if self._in_shard == self.shard_size:
            self._finish()

    def _open(self) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        name = f"{self.prefix}-{len(self.shards):05d}{SHARD_SUFFIX}"
        self._final = f"{self.out_dir.rstrip('/')}/{name}" if self.remote else os.path.join(self.out_dir, name)
        self._tmp = os.path.join(self._local, name) if self.remote else self._final + ".tmp"
        # group_size:1: grain reads records one by one; uncompressed: FLAC gains nothing from
        # zstd, and zstd costs ~1 ms per 10-s PCM record to decompress.
        self._writer = ArrayRecordWriter(self._tmp, "group_size:1,uncompressed")
        self._in_shard = 0

    def _finish(self) -> None:
        self._writer.close()
        if self.remote:
            gcs.upload(self._tmp, self._final)
            os.remove(self._tmp)
        else:
            os.replace(self._tmp, self._final)
        self.shards.append(self._final)
        self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._finish()
        if self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records(
    out_dir: str,
    examples: Iterable[dict],
    *,
    shard_size: int = 1024,
    prefix: str = "data",
    audio_format: str = "flac",
) -> dict:
    """Write `examples` (see `encode_record`) as ArrayRecord shards; returns
    ``{"num_records": int, "shards": [paths]}``."""
    with ShardWriter(out_dir, shard_size=shard_size, prefix=prefix, audio_format=audio_format) as writer:
        for example in examples:
            writer.write(example)
    return {"num_records": writer.num_records, "shards": list(writer.shards)}


# ----------------------------------------------------------------------------- reading


def shard_paths(paths_or_dir: str | Sequence[str]) -> list[str]:
    """A directory (all `*.array_record` in it, sorted), one file, or a list of files."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        path = os.fspath(paths_or_dir)
        if "://" in path:  # the installed ArrayRecord reader hangs on gs:// (array_record issue #120)
            raise ValueError(
                f"{path} is a URL: read it through its staged local copy, clapcomp.data.stage.local_records(url) "
                "(config.data.train does this)"
            )
        if os.path.isdir(path):
            paths = sorted(glob.glob(os.path.join(path, f"*{SHARD_SUFFIX}")))
            if not paths:
                raise FileNotFoundError(f"no *{SHARD_SUFFIX} shards in {path}; build them with `clapcomp data build`")
            return paths
        paths = [path]
    else:
        paths = [os.fspath(p) for p in paths_or_dir]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"record shards not found: {missing[:5]}")
    return paths


class RecordSource:
    """grain random-access source over clapcomp ArrayRecord shards.

    `source[i]` is the raw record bytes (grain's `RandomAccessDataSource` protocol: `__len__`,
    `__getitem__`); parsing happens in the pipeline where a bad record is counted, not fatal.
    `source.example(i)` returns the parsed dict (see `parse_record`). Picklable, so grain
    worker processes can open it.
    """

    def __init__(self, paths_or_dir: str | Sequence[str]):
        import grain

        self.paths = shard_paths(paths_or_dir)
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]

    def example(self, index: int) -> dict:
        return parse_record(self[index])

    def __repr__(self) -> str:
        return f"RecordSource({len(self.paths)} shards, {len(self)} records)"
