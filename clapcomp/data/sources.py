"""Readers of `clapcomp data build` inputs.

Each reader yields ``(item_name, candidate | BadData)``; a bad item's reason is one of
`clapcomp.data.reasons.REASONS`. A candidate is a dict with ``key``, ``audio`` (a path or encoded
bytes), ``name`` (for the extension), ``captions``, ``negatives``, ``positives`` (raw; `clean_texts`
and `clean_negatives` check them). Readers: `read_manifest`
(CSV / JSONL manifests, and CompA's ``pos;neg1;neg2`` captions), `read_webdataset` (tar shards);
`clapcomp.data.tfds_builders.iter_candidates` adapts the tfds builders to the same items.
`load_audio` decodes one candidate's audio (or raises `BadData`).

Text rules: ``caption`` is a str or a list of str; ``negatives`` / ``positives`` must be lists of
str (a JSON list inside a CSV cell), anything else is a ``bad_row``; a CSV row with more fields
than its header is a ``bad_row`` (an unquoted comma would otherwise cut the caption).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from collections.abc import Iterator

import numpy as np

from clapcomp.data.reasons import BadData
from clapcomp.decode import AUDIO_EXTENSIONS, DecodeError, Limits, read_audio


class InputError(ValueError):
    """A whole input file is unusable (e.g. a manifest without the needed columns)."""


# ----------------------------------------------------------------------------- audio


def load_audio(
    source: str | bytes,
    name: str,
    *,
    sample_rate: int,
    max_seconds: float = 600.0,
    max_channels: int = 16,
    max_file_mb: float = 2048.0,
    max_decoded_samples: int = Limits.max_samples,
    timeout_s: float | None = None,
    silence_threshold: float = 1e-4,
) -> np.ndarray:
    """A file path or encoded bytes -> mono float32 `[T]` at `sample_rate`; raises `BadData`.

    Decoded by `clapcomp.decode.read_audio`: the header is held to the limits and the decode budget
    before any sample is decoded, and decoding stops itself at `timeout_s`. Peaks above 1 are scaled
    down to 1 (16-bit storage).
    """
    limits = Limits(max_seconds, max_channels, max_file_mb, max_decoded_samples, timeout_s)
    try:
        wave, rate = read_audio(source, limits, target_rate=sample_rate, name=name)
    except DecodeError as e:
        raise BadData(e.reason, e.detail) from None
    peak = _peak(wave)  # NaN / inf propagate through min and max
    if not np.isfinite(peak):
        bad = np.flatnonzero(~np.isfinite(wave))
        raise BadData("non_finite", f"{bad.size} NaN/inf samples, first at sample {bad[0]}")
    if peak < silence_threshold:
        raise BadData("silent", f"peak {peak:.2g} < {silence_threshold:g}")
    if rate != sample_rate:
        import soxr

        wave = soxr.resample(wave, rate, sample_rate).astype(np.float32, copy=False)
        peak = _peak(wave)
    if peak > 1.0:
        wave /= np.float32(peak)
    return wave


def _peak(wave: np.ndarray) -> float:
    """max |wave| without an |wave|-sized temporary (NaN if any sample is NaN)."""
    return max(float(wave.max()), -float(wave.min()))


# ----------------------------------------------------------------------------- text


def clean_texts(values, field: str, max_chars: int) -> list[str]:
    """A list (or None) of texts -> stripped non-empty str; raises `BadData` on bad text."""
    if values is None:
        return []
    if not isinstance(values, list):
        raise BadData("bad_row", f"{field} must be a list of str, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BadData("non_utf8_text", f"{field}: {v[:40]!r}") from None
        if not isinstance(v, str):
            raise BadData("bad_row", f"{field} holds a {type(v).__name__}, expected str")
        if any("\udc80" <= ch <= "\udcff" for ch in v):  # surrogateescape'd bytes
            raise BadData("non_utf8_text", f"{field}: {v[:40]!r}")
        v = " ".join(v.split())
        if len(v) > max_chars:
            raise BadData("caption_too_long", f"{field}: {len(v)} chars > {max_chars}")
        if v:
            out.append(v)
    return out


def _json_list(value, field: str, *, text_ok: bool = False) -> list:
    """None / "" -> []; a list, or a JSON list in a string, as is; a plain string -> [it] only if
    `text_ok` (captions); anything else is a `bad_row` (never a one-item list of junk)."""
    if value is None or value == "" or isinstance(value, list):
        return value or []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
            raise BadData("bad_row", f"{field} is not a valid JSON list: {e}") from None
        if not isinstance(parsed, list):
            raise BadData("bad_row", f"{field} must be a JSON list")
        return parsed
    if text_ok and isinstance(value, str):
        return [value]
    raise BadData("bad_row", f"{field} must be a JSON list of str, got {str(value)[:40]!r}")


# ----------------------------------------------------------------------------- inputs
# Each reader yields (item_name, candidate dict | BadData). A candidate has key, audio (path or
# bytes), name (for the extension), captions, negatives, positives (raw, cleaned later).


def _manifest_rows(path: str) -> Iterator[tuple[int, dict | BadData]]:
    if path.endswith((".jsonl", ".json")):
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8"))
                    yield i + 1, row if isinstance(row, dict) else BadData("bad_row", "not an object")
                except UnicodeDecodeError:
                    yield i + 1, BadData("non_utf8_text", "line is not UTF-8")
                except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
                    yield i + 1, BadData("bad_row", f"invalid JSON: {e}")
        return
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"audio", "path"} & fields or "caption" not in fields:
            raise InputError(
                f"{path}: needs 'audio' and 'caption' columns (got "
                f"{reader.fieldnames}); see `clapcomp data build --help`"
            )
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over the csv module's size limit: skip the row
                yield reader.line_num, BadData("bad_row", f"unparsable CSV row: {e}")
                continue
            if None in row:  # DictReader's key for fields beyond the header
                yield (
                    reader.line_num,
                    BadData(
                        "bad_row",
                        f"{len(row[None])} more field(s) than the header "
                        f"{reader.fieldnames} (an unquoted comma in a caption?)",
                    ),
                )
                continue
            yield reader.line_num, row


def read_manifest(path: str, *, compa: bool = False, allow_outside_root: bool = False):
    root = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for line, row in _manifest_rows(path):
        item = f"{os.path.basename(path)}:{line}"
        if isinstance(row, BadData):
            yield item, row
            continue
        rel = row.get("audio") or row.get("path")
        if not isinstance(rel, str) or not rel.strip():
            yield item, BadData("bad_row", "empty audio path")
            continue
        if "\x00" in rel:
            yield item, BadData("bad_row", "NUL byte in the audio path")
            continue
        full = os.path.realpath(os.path.join(root, rel))
        if not allow_outside_root and os.path.commonpath([root, full]) != root:
            yield item, BadData("path_escapes_root", f"{rel!r} resolves outside {root}")
            continue
        try:
            captions = _json_list(row.get("caption"), "caption", text_ok=True)
            negatives = _json_list(row.get("negatives"), "negatives")
            positives = _json_list(row.get("positives"), "positives")
        except BadData as s:
            yield item, s
            continue
        if compa and len(captions) == 1 and isinstance(captions[0], str):
            parts = captions[0].split(";")
            captions, negatives = parts[:1], parts[1:] + list(negatives)
        key = os.path.relpath(full, root) if not allow_outside_root else rel
        yield item, dict(key=key, audio=full, name=rel, captions=captions, negatives=negatives, positives=positives)


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
            return item, BadData(reason, f"no audio member among {exts}")
        text = group.get("json")
        if text is None:
            return item, BadData("missing_caption", "no .json member")
        try:
            meta = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError:
            return item, BadData("non_utf8_text", ".json is not UTF-8")
        except (json.JSONDecodeError, RecursionError) as e:  # deeply nested JSON overflows the decoder
            return item, BadData("bad_row", f".json invalid: {e}")
        captions = meta.get("text") if isinstance(meta, dict) else None
        captions = [captions] if isinstance(captions, str) else captions
        return item, dict(
            key=f"{tar_name}/{key}",
            audio=group[audio_ext],
            name=f"{key}.{audio_ext}",
            captions=captions,
            negatives=meta.get("negatives"),
            positives=meta.get("positives"),
        )

    try:
        tar = tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError) as e:
        yield tar_name, BadData("corrupt", f"cannot open tar: {e}")
        return
    key, group = None, {}
    try:
        for m in tar:
            if not _safe_member(m):
                if not m.isdir():
                    yield f"{tar_name}/{m.name}", BadData("unsafe_member", f"refused member {m.name!r}")
                continue
            folder, _, base = m.name.rpartition("/")
            stem, _, ext = base.partition(".")
            mkey = f"{folder}/{stem}" if folder else stem
            if mkey != key and group:
                yield emit(key, group)
                group = {}
            key = mkey
            if m.size > max_file_mb * 2**20:
                yield f"{tar_name}/{m.name}", BadData("too_large", f"member of {m.size} bytes")
                continue
            group[ext.lower()] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        yield f"{tar_name}/{key}", BadData("truncated", f"tar ends early or is corrupt: {e}")
    finally:
        tar.close()
    if group:
        yield emit(key, group)


def guarded(name: str, reader: Iterator) -> Iterator:
    """A reader's items; an unforeseen error in the reader ends that file as one counted item."""
    try:
        yield from reader
    except InputError:
        raise
    except Exception as e:
        yield name, BadData("unexpected_error", f"reading stopped: {type(e).__name__}: {e}")


def expand_inputs(inputs: list[str], patterns: tuple[str, ...]) -> list[str]:
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
