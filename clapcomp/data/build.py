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
much faster to decode). A bad item is skipped and counted by reason (see
`REASONS`); ``stats.json`` next to the shards holds the counts, examples of each skip reason and
duration figures. Once ``max_error_rate`` of the items seen (after ``min_items_for_rate``) are
bad, the build stops with `BuildError`; the shards written until then stay valid.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from clapcomp.data.records import RecordError, ShardWriter, call_with_timeout

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")
REASONS = {
    "missing_file": "the row's audio file does not exist",
    "path_escapes_root": "audio path leaves the manifest's folder (allow with --allow-outside-root)",
    "unsafe_member": "tar member escapes the archive root or is not a regular file",
    "unsupported_format": "file extension is not a soundfile audio format",
    "empty_file": "0-byte audio file",
    "too_large": "audio file bigger than --max-file-mb",
    "corrupt": "soundfile cannot open it (not audio, or a broken header)",
    "truncated": "fewer audio frames than the header declares",
    "zero_length": "a valid file with no samples",
    "bad_sample_rate": "sample rate outside [1 kHz, 384 kHz]",
    "too_many_channels": "more channels than --max-channels",
    "too_long": "longer than --max-seconds",
    "non_finite": "NaN or inf samples",
    "silent": "peak below --silence-threshold",
    "missing_caption": "no non-empty caption",
    "caption_too_long": "a text longer than --max-caption-chars",
    "non_utf8_text": "text that is not valid UTF-8",
    "bad_row": "malformed row (bad JSON, missing audio column value, ...)",
    "timeout": "decoding took longer than --timeout-s",
    "unexpected_error": "an unforeseen error while processing the item (see examples)",
}


class BuildError(RuntimeError):
    """The build stopped (too many bad items); shards written until then are valid."""


class InputError(ValueError):
    """A whole input file is unusable (e.g. a manifest without the needed columns)."""


class Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class BuildStats:
    """Counts, skip reasons with up to `n_examples` examples each, and duration figures."""

    def __init__(self, n_examples: int = 5):
        self.seen = self.written = 0
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[dict]] = {}
        self.durations: list[float] = []
        self.n_examples = n_examples

    def skip(self, reason: str, item: str, detail: str) -> None:
        self.skipped[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.n_examples:
            bucket.append({"item": item, "detail": detail[:300]})

    def to_dict(self) -> dict:
        d = np.asarray(self.durations or [0.0])
        return {
            "seen": self.seen,
            "written": self.written,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skipped_examples": self.examples,
            "total_duration_s": float(d.sum()),
            "duration_s": {"min": float(d.min()), "mean": float(d.mean()), "max": float(d.max())},
        }


# ----------------------------------------------------------------------------- audio


def _wav_truncated(head: bytes, size: int) -> bool:
    """RIFF/WAVE whose `data` chunk declares more bytes than the file holds."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            return pos + 8 + length > size
        pos += 8 + length + (length & 1)
    return False


def load_audio(
    source: str | bytes,
    name: str,
    *,
    sample_rate: int,
    max_seconds: float = 600.0,
    max_channels: int = 16,
    max_file_mb: float = 2048.0,
    silence_threshold: float = 1e-4,
) -> np.ndarray:
    """A file path or encoded bytes -> mono float32 `[T]` at `sample_rate`; raises `Skip`.

    The header is checked (rate, channels, declared duration) before any sample is decoded, so
    a huge declared length costs nothing. Peaks above 1 are scaled down to 1 (16-bit storage).
    """
    ext = os.path.splitext(name)[1].lower()
    if ext and ext not in AUDIO_EXTENSIONS:
        raise Skip("unsupported_format", f"extension {ext!r} (expected one of {AUDIO_EXTENSIONS})")
    if isinstance(source, str):
        if not os.path.isfile(source):
            raise Skip("missing_file", source)
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            head = f.read(1 << 16)
        opened = source
    else:
        size, head, opened = len(source), source[: 1 << 16], None
    if size == 0:
        raise Skip("empty_file", "0 bytes")
    if size > max_file_mb * 2**20:
        raise Skip("too_large", f"{size / 2**20:.0f} MB > {max_file_mb:g} MB")

    def fileobj():
        return opened if opened is not None else io.BytesIO(source)

    try:
        info = sf.info(fileobj())
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise Skip("corrupt", str(e).split(": ", 1)[-1]) from None
    if not 1000 <= info.samplerate <= 384000:
        raise Skip("bad_sample_rate", f"{info.samplerate} Hz")
    if not 1 <= info.channels <= max_channels:
        raise Skip("too_many_channels", f"{info.channels} channels > {max_channels}")
    if info.frames <= 0:
        raise Skip("zero_length", "no samples")
    if info.frames / info.samplerate > max_seconds:
        raise Skip("too_long", f"{info.frames / info.samplerate:.1f} s > {max_seconds:g} s")
    if _wav_truncated(head, size):
        raise Skip("truncated", "WAV data chunk is longer than the file")
    try:
        wave, _ = sf.read(fileobj(), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise Skip("truncated", f"decoding failed mid-file: {e}") from None
    if wave.shape[0] < info.frames:
        raise Skip("truncated", f"{wave.shape[0]} of {info.frames} declared frames")
    wave = wave.mean(axis=1, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(wave))
    if bad.size:
        raise Skip("non_finite", f"{bad.size} NaN/inf samples, first at sample {bad[0]}")
    peak = float(np.abs(wave).max())
    if peak < silence_threshold:
        raise Skip("silent", f"peak {peak:.2g} < {silence_threshold:g}")
    if info.samplerate != sample_rate:
        import soxr

        wave = soxr.resample(wave, info.samplerate, sample_rate).astype(np.float32)
    peak = float(np.abs(wave).max())
    return wave / peak if peak > 1.0 else wave


# ----------------------------------------------------------------------------- text


def clean_texts(values, field: str, max_chars: int) -> list[str]:
    """A list (or None) of texts -> stripped non-empty str; raises `Skip` on bad text."""
    if values is None:
        return []
    if not isinstance(values, list):
        raise Skip("bad_row", f"{field} must be a list of str, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise Skip("non_utf8_text", f"{field}: {v[:40]!r}") from None
        if not isinstance(v, str):
            raise Skip("bad_row", f"{field} holds a {type(v).__name__}, expected str")
        if any("\udc80" <= ch <= "\udcff" for ch in v):  # surrogateescape'd bytes
            raise Skip("non_utf8_text", f"{field}: {v[:40]!r}")
        v = " ".join(v.split())
        if len(v) > max_chars:
            raise Skip("caption_too_long", f"{field}: {len(v)} chars > {max_chars}")
        if v:
            out.append(v)
    return out


def _json_list(value, field: str) -> list:
    if value is None or value == "" or isinstance(value, list):
        return value or []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
            raise Skip("bad_row", f"{field} is not a valid JSON list: {e}") from None
        if not isinstance(parsed, list):
            raise Skip("bad_row", f"{field} must be a JSON list")
        return parsed
    return [value]


# ----------------------------------------------------------------------------- inputs
# Each reader yields (item_name, candidate dict | Skip). A candidate has key, audio (path or
# bytes), name (for the extension), captions, negatives, positives (raw, cleaned later).


def _manifest_rows(path: str) -> Iterator[tuple[int, dict | Skip]]:
    if path.endswith((".jsonl", ".json")):
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8"))
                    yield i + 1, row if isinstance(row, dict) else Skip("bad_row", "not an object")
                except UnicodeDecodeError:
                    yield i + 1, Skip("non_utf8_text", "line is not UTF-8")
                except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
                    yield i + 1, Skip("bad_row", f"invalid JSON: {e}")
        return
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"audio", "path"} & fields or "caption" not in fields:
            raise InputError(f"{path}: needs 'audio' and 'caption' columns (got "
                             f"{reader.fieldnames}); see `clapcomp data build --help`")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over the csv module's size limit: skip the row
                yield reader.line_num, Skip("bad_row", f"unparsable CSV row: {e}")
                continue
            yield reader.line_num, row


def read_manifest(path: str, *, compa: bool = False, allow_outside_root: bool = False):
    root = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for line, row in _manifest_rows(path):
        item = f"{os.path.basename(path)}:{line}"
        if isinstance(row, Skip):
            yield item, row
            continue
        rel = row.get("audio") or row.get("path")
        if not isinstance(rel, str) or not rel.strip():
            yield item, Skip("bad_row", "empty audio path")
            continue
        if "\x00" in rel:
            yield item, Skip("bad_row", "NUL byte in the audio path")
            continue
        full = os.path.realpath(os.path.join(root, rel))
        if not allow_outside_root and os.path.commonpath([root, full]) != root:
            yield item, Skip("path_escapes_root", f"{rel!r} resolves outside {root}")
            continue
        try:
            captions = _json_list(row.get("caption"), "caption")
            negatives = _json_list(row.get("negatives"), "negatives")
            positives = _json_list(row.get("positives"), "positives")
        except Skip as s:
            yield item, s
            continue
        if compa and len(captions) == 1 and isinstance(captions[0], str):
            parts = captions[0].split(";")
            captions, negatives = parts[:1], parts[1:] + list(negatives)
        key = os.path.relpath(full, root) if not allow_outside_root else rel
        yield item, dict(key=key, audio=full, name=rel, captions=captions,
                         negatives=negatives, positives=positives)


def _safe_member(m: tarfile.TarInfo) -> bool:
    parts = m.name.replace("\\", "/").split("/")
    return m.isreg() and not m.name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def read_webdataset(path: str, *, max_file_mb: float = 2048.0):
    """Members grouped by key (name up to the first '.' of the basename), in archive order."""
    tar_name = os.path.basename(path)

    def emit(key, group):
        item = f"{tar_name}/{key}"
        audio_ext = next((e for e in group if "." + e.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS), None)
        if audio_ext is None:
            exts = sorted(group)
            reason = "unsupported_format" if any(e != "json" for e in exts) else "missing_file"
            return item, Skip(reason, f"no audio member among {exts}")
        text = group.get("json")
        if text is None:
            return item, Skip("missing_caption", "no .json member")
        try:
            meta = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError:
            return item, Skip("non_utf8_text", ".json is not UTF-8")
        except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
            return item, Skip("bad_row", f".json invalid: {e}")
        captions = meta.get("text") if isinstance(meta, dict) else None
        captions = [captions] if isinstance(captions, str) else captions
        return item, dict(key=f"{tar_name}/{key}", audio=group[audio_ext], name=f"{key}.{audio_ext}",
                          captions=captions, negatives=meta.get("negatives"),
                          positives=meta.get("positives"))

    try:
        tar = tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError) as e:
        yield tar_name, Skip("corrupt", f"cannot open tar: {e}")
        return
    key, group = None, {}
    try:
        for m in tar:
            if not _safe_member(m):
                if not m.isdir():
                    yield f"{tar_name}/{m.name}", Skip("unsafe_member", f"refused member {m.name!r}")
                continue
            folder, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")
            mkey = f"{folder}/{stem}" if folder else stem
            if mkey != key and group:
                yield emit(key, group)
                group = {}
            key = mkey
            if m.size > max_file_mb * 2**20:
                yield f"{tar_name}/{m.name}", Skip("too_large", f"member of {m.size} bytes")
                continue
            group[ext.lower()] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        yield f"{tar_name}/{key}", Skip("truncated", f"tar ends early or is corrupt: {e}")
    finally:
        tar.close()
    if group:
        yield emit(key, group)


def _guarded(name: str, reader: Iterator) -> Iterator:
    """A reader's items; an unforeseen error in the reader ends that file as one counted item."""
    try:
        yield from reader
    except InputError:
        raise
    except Exception as e:
        yield name, Skip("unexpected_error", f"reading stopped: {type(e).__name__}: {e}")


def _expand(inputs: list[str], patterns: tuple[str, ...]) -> list[str]:
    paths = []
    for x in inputs:
        if os.path.isdir(x):
            paths += sorted(p for pat in patterns for p in glob.glob(os.path.join(x, pat)))
        else:
            found = sorted(glob.glob(x))
            paths += found or [x]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise FileNotFoundError(f"no input files found for {inputs} (missing: {missing[:5]})")
    return paths


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
    if format in ("manifest", "compa"):
        files = _expand(inputs, ("*.csv", "*.jsonl"))
        items = (x for p in files for x in _guarded(p, read_manifest(
            p, compa=format == "compa", allow_outside_root=allow_outside_root)))
    elif format == "webdataset":
        files = _expand(inputs, ("*.tar", "*.tar.gz", "*.tgz"))
        items = (x for p in files
                 for x in _guarded(p, read_webdataset(p, max_file_mb=max_file_mb)))
    elif format == "tfds":
        from clapcomp.data.tfds_builders import iter_candidates

        if not tfds_name or not manual_dir:
            raise ValueError("--format tfds needs --tfds-name and --manual-dir")
        items = iter_candidates(tfds_name, manual_dir, split=tfds_split,
                                data_dir=tfds_data_dir or os.path.join(out_dir, "_tfds"))
    else:
        raise ValueError(f"unknown format {format!r}; use manifest, compa, webdataset or tfds")

    audio_kw = dict(sample_rate=sample_rate, max_seconds=max_seconds, max_channels=max_channels,
                    max_file_mb=max_file_mb, silence_threshold=silence_threshold)
    stats, start, stopped = BuildStats(), time.time(), None
    with ShardWriter(out_dir, shard_size=shard_size, audio_format=audio_format) as writer:
        for item, cand in items:
            stats.seen += 1
            try:
                if isinstance(cand, Skip):
                    raise cand
                captions = clean_texts(cand["captions"], "caption", max_caption_chars)
                if not captions:
                    raise Skip("missing_caption", "no non-empty caption")
                negatives = clean_texts(cand.get("negatives"), "negatives", max_caption_chars)
                positives = clean_texts(cand.get("positives"), "positives", max_caption_chars)
                wave = call_with_timeout(
                    lambda: load_audio(cand["audio"], cand["name"], **audio_kw), timeout_s)
                writer.write(dict(key=cand["key"], audio=wave, sample_rate=sample_rate,
                                  captions=captions, negatives=negatives, positives=positives))
                stats.written += 1
                stats.durations.append(wave.shape[0] / sample_rate)
            except (Skip, RecordError) as s:
                stats.skip(s.reason, item, s.detail)
            except Exception as e:  # never let one item kill the build
                stats.skip("unexpected_error", item, f"{type(e).__name__}: {e}")
            bad = stats.seen - stats.written
            if stats.seen >= min_items_for_rate and bad > max_error_rate * stats.seen:
                examples = [f"{r}: {ex['item']} ({ex['detail']})"
                            for r, exs in stats.examples.items() for ex in exs[:2]]
                stopped = (f"stopped after {stats.seen} items: {bad} bad "
                           f"({bad / stats.seen:.0%} > max_error_rate {max_error_rate:.0%}); "
                           f"{stats.written} records kept in {out_dir}. Fix the input or raise "
                           f"--max-error-rate. Examples: " + "; ".join(examples[:6]))
                break
    result = {"format": format, "inputs": inputs, "sample_rate": sample_rate,
              "audio_format": audio_format, **stats.to_dict(),
              "shards": [os.path.basename(s) for s in writer.shards],
              "elapsed_s": round(time.time() - start, 3), "stopped": stopped}
    with open(os.path.join(out_dir, "stats.json.tmp"), "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    os.replace(os.path.join(out_dir, "stats.json.tmp"), os.path.join(out_dir, "stats.json"))
    if stopped:
        raise BuildError(stopped)
    return result


def main(argv: list[str]) -> int:
    reasons = "\n".join(f"  {k:<19} {v}" for k, v in REASONS.items())
    p = argparse.ArgumentParser(
        prog="clapcomp data build", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"skip reasons counted in OUT/stats.json:\n{reasons}")
    p.add_argument("--input", nargs="*", default=[], help="manifest(s), tar(s), folder(s) or globs")
    p.add_argument("--format", choices=["manifest", "compa", "webdataset", "tfds"], default="manifest")
    p.add_argument("--out", required=True, help="empty output folder for the shards + stats.json")
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--audio-format", choices=["flac", "pcm16"], default="flac",
                   help="flac: smaller; pcm16: ~1.5x bigger, decodes ~10x faster")
    p.add_argument("--max-error-rate", type=float, default=0.5)
    p.add_argument("--min-items-for-rate", type=int, default=100)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--max-channels", type=int, default=16)
    p.add_argument("--max-file-mb", type=float, default=2048.0)
    p.add_argument("--silence-threshold", type=float, default=1e-4)
    p.add_argument("--max-caption-chars", type=int, default=2000)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-item decode time bound")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest audio paths outside the manifest's folder")
    p.add_argument("--tfds-name", help="audiocaps, clotho, esc50, compa_order, compa_attribute")
    p.add_argument("--manual-dir", help="folder with the dataset's files (see tfds_builders)")
    p.add_argument("--tfds-split", default="train")
    p.add_argument("--tfds-data-dir", help="where tfds prepares its copy (default OUT/_tfds)")
    a = p.parse_args(argv)
    try:  # every flag's dest is a `build` keyword
        stats = build(**{"inputs": a.input, "out_dir": a.out,
                         **{k: v for k, v in vars(a).items() if k not in ("input", "out")}})
    except (BuildError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"clapcomp data build: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: stats[k] for k in ("seen", "written", "skipped", "skipped_by_reason")}))
    return 0
