"""The fuzz input kinds of benchmarks/fuzz_inputs.py: makers, expected outcomes, writing to disk.

`KINDS[name] = (family, expected outcomes, maker)`; family "manifest" (one CSV/JSONL row),
"webdataset" (one tar holding one item) or "record" (one raw ArrayRecord record). Expected outcomes
are `OK` or skip reasons of `clapcomp.data.reasons.REASONS` (stage "build" or "read").
`write_inputs(out, n, seed)` writes n inputs (every kind at least once when n allows) under OUT/inputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import struct
import tarfile

import numpy as np
import soundfile as sf

SR = 16000  # the build's target rate (small: fast resampling)
OK = "accepted"
AUDIO_OUTCOMES = {
    OK,
    "corrupt",
    "truncated",
    "too_long",
    "bad_sample_rate",
    "too_many_channels",
    "zero_length",
    "non_finite",
    "silent",
    "timeout",
    "decode_budget",
}
ANY_READ = {OK, "bad_record", "corrupt", "truncated", "too_long", "missing_caption"}


class Marker:
    """Unpickling this creates `path`: proof that a pickle was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- audio makers


def tone(rng, seconds=None, channels=1):
    n = int(SR * (seconds if seconds is not None else rng.uniform(0.05, 0.4)))
    t = np.arange(n) / SR
    wave = 0.5 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(n)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def encoded(rng, fmt, subtype="PCM_16", seconds=None):
    sr = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
    buf = io.BytesIO()
    sf.write(
        buf, tone(rng, seconds, int(rng.integers(1, 3))), sr, format=fmt, subtype="VORBIS" if fmt == "OGG" else subtype
    )
    return buf.getvalue()


def wav(data: bytes, sr: int, channels: int, bits=16, tag=1, declared=None) -> bytes:
    """A RIFF/WAVE file by hand, so headers can lie (`declared` data length, any rate/channels)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, sr, (sr * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    size = len(data) if declared is None else declared
    riff = min(4 + 24 + 8 + size, 0xFFFFFFFF)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", size)
        + data
    )


def pcm(rng, frames, channels=1):
    return (rng.standard_normal(frames * channels) * 8000).astype("<i2").tobytes()


def huge_flac(rng):
    """A FLAC whose STREAMINFO declares 2^36 - 1 samples (~ 4 days at 192 kHz)."""
    data = bytearray(encoded(rng, "FLAC"))
    si = 8  # "fLaC" + 4-byte block header, then STREAMINFO; total samples = bits 108..143
    data[si + 13] |= 0x0F
    data[si + 14 : si + 18] = b"\xff\xff\xff\xff"
    return bytes(data)


def budget_flac(rng):
    """8-channel 384 kHz FLAC (0.05 s held) whose STREAMINFO declares 600 s: within --max-seconds and
    --max-channels, 1.8e9 decoded samples (6.9 GiB as float32) by its header."""
    buf = io.BytesIO()
    sf.write(buf, np.full((19_200, 8), 0.25, np.float32), 384_000, format="FLAC", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    packed = int.from_bytes(data[18:26], "big")  # 20 bits rate | 3 channels | 5 bps | 36 total samples
    data[18:26] = ((packed & ~((1 << 36) - 1)) | 600 * 384_000).to_bytes(8, "big")
    return bytes(data)


def deep_json(depth=100_000) -> str:
    """Nested JSON lists: valid JSON that exceeds the decoder's recursion limit."""
    return "[" * depth + "]" * depth


# ----------------------------------------------------------------------------- kinds
# Manifest makers: rng, i -> (files {name: bytes | ("symlink", target) | ("dir",)}, row).
# A row's "audio" may hold the placeholder {root}/{outside}; "caption" may be bytes (raw, not UTF-8).


def _m(audio_bytes, name, **row):
    return {name: audio_bytes}, {"audio": name, "caption": "a dog barks then a bell rings", **row}


def _ext(rng):
    return str(rng.choice(["wav", "flac", "ogg"]))


MANIFEST = {
    "valid_wav": ({OK}, lambda r, i: _m(encoded(r, "WAV"), f"v{i}.wav")),
    "valid_flac": ({OK}, lambda r, i: _m(encoded(r, "FLAC"), f"v{i}.flac")),
    "valid_ogg": ({OK}, lambda r, i: _m(encoded(r, "OGG"), f"v{i}.ogg")),
    "one_sample": ({OK}, lambda r, i: _m(wav(np.int16([16000]).tobytes(), SR, 1), f"o{i}.wav")),
    "unicode_caption": (
        {OK},
        lambda r, i: _m(encoded(r, "WAV"), f"u{i}.wav", caption="\u202eevil\u200b 狗叫 \U0001f415 e\u0301 \t\n"),
    ),
    "nul_caption": ({OK, "bad_row"}, lambda r, i: _m(encoded(r, "WAV"), f"n{i}.wav", caption="a dog\x00barks")),
    "random_bytes": ({"corrupt"}, lambda r, i: _m(r.bytes(int(r.integers(1, 4096))), f"r{i}.{_ext(r)}")),
    "truncated_header": (
        {"corrupt"},
        lambda r, i: (lambda d: _m(d[: int(r.integers(1, 40))], f"h{i}.{_ext(r)}"))(
            encoded(r, str(r.choice(["WAV", "FLAC", "OGG"])))
        ),
    ),
    "truncated_data": (
        {"truncated"},
        lambda r, i: (lambda d: _m(d[: int(len(d) * r.uniform(0.5, 0.9))], f"t{i}.wav"))(
            encoded(r, "WAV", seconds=0.3)
        ),
    ),
    "huge_declared_wav": (
        {"too_long", "truncated"},
        lambda r, i: _m(wav(pcm(r, 800, 2), 48000, 2, declared=0xFFFFFF00), f"hw{i}.wav"),
    ),
    "huge_declared_flac": ({"too_long"}, lambda r, i: _m(huge_flac(r), f"hf{i}.flac")),
    "budget_flac": ({"decode_budget"}, lambda r, i: _m(budget_flac(r), f"bf{i}.flac")),
    "nan_float_wav": (
        {"non_finite"},
        lambda r, i: _m(
            wav(
                np.where(r.random(400) < 0.1, np.float32(r.choice([np.nan, np.inf, -np.inf])), tone(r, 0.025)[:, 0])
                .astype("<f4")
                .tobytes(),
                SR,
                1,
                bits=32,
                tag=3,
            ),
            f"nan{i}.wav",
        ),
    ),
    "rate_1hz": ({"bad_sample_rate"}, lambda r, i: _m(wav(pcm(r, 10), 1, 1), f"s1_{i}.wav")),
    "rate_10mhz": ({"bad_sample_rate"}, lambda r, i: _m(wav(pcm(r, 5000), 10_000_000, 1), f"s10m{i}.wav")),
    "zero_samples": ({"zero_length", "corrupt"}, lambda r, i: _m(wav(b"", SR, 1), f"z{i}.wav")),
    "many_channels": (
        {"too_many_channels", "corrupt"},
        lambda r, i: (lambda c: _m(wav(pcm(r, 4, c), SR, c), f"c{i}.wav"))(int(r.choice([17, 64, 255, 1024, 4096]))),
    ),
    "silent": ({"silent"}, lambda r, i: _m(wav(np.zeros(1600, "<i2").tobytes(), SR, 1), f"q{i}.wav")),
    "empty_file": ({"empty_file"}, lambda r, i: _m(b"", f"e{i}.{_ext(r)}")),
    "too_large": ({"too_large"}, lambda r, i: _m(wav(bytes(int(2.2 * 2**20)), SR, 1), f"big{i}.wav")),
    "unsupported_ext": (
        {"unsupported_format"},
        lambda r, i: _m(encoded(r, "WAV"), f"x{i}.{r.choice(['txt', 'mp4', 'pkl'])}"),
    ),
    "missing_file": ({"missing_file"}, lambda r, i: ({}, {"audio": f"nope{i}.wav", "caption": "c"})),
    "directory_path": (
        {"missing_file"},
        lambda r, i: ({f"d{i}.wav": ("dir",)}, {"audio": f"d{i}.wav", "caption": "c"}),
    ),
    "missing_path": ({"bad_row"}, lambda r, i: ({}, {"audio": str(r.choice(["", "  "])), "caption": "c"})),
    "nul_in_path": ({"bad_row"}, lambda r, i: ({}, {"audio": f"a\x00{i}.wav", "caption": "c", "_jsonl": True})),
    "absolute_outside": (
        {"path_escapes_root"},
        lambda r, i: ({}, {"audio": f"{{outside}}/abs{i}.wav", "caption": "c"}),
    ),
    "absolute_inside": (
        {OK},
        lambda r, i: ({f"ai{i}.wav": encoded(r, "WAV")}, {"audio": f"{{root}}/ai{i}.wav", "caption": "c"}),
    ),
    "dotdot_traversal": (
        {"path_escapes_root"},
        lambda r, i: ({}, {"audio": f"sub/../../outside/t{i}.wav", "caption": "c"}),
    ),
    "symlink_escape": (
        {"path_escapes_root"},
        lambda r, i: ({f"ln{i}.wav": ("symlink", "{outside}/victim.wav")}, {"audio": f"ln{i}.wav", "caption": "c"}),
    ),
    "symlink_inside": (
        {OK},
        lambda r, i: (
            {f"real{i}.wav": encoded(r, "WAV"), f"li{i}.wav": ("symlink", f"real{i}.wav")},
            {"audio": f"li{i}.wav", "caption": "c"},
        ),
    ),
    "empty_caption": (
        {"missing_caption"},
        lambda r, i: _m(encoded(r, "WAV"), f"ec{i}.wav", caption=str(r.choice(["", "   ", "\n\t"]))),
    ),
    "overlong_caption": (
        {"caption_too_long", "bad_row"},
        lambda r, i: _m(encoded(r, "WAV"), f"lc{i}.wav", caption="x" * int(r.choice([2001, 50_000, 200_000]))),
    ),
    "non_utf8_caption": (
        {"non_utf8_text"},
        lambda r, i: _m(encoded(r, "WAV"), f"nu{i}.wav", caption=b"caf\xe9 \xff\xfe dog"),
    ),
    "bad_caption_list": (
        {"bad_row"},
        lambda r, i: _m(encoded(r, "WAV"), f"bl{i}.wav", caption=str(r.choice(["[1, 2]", '["a", ', '[{"x": 1}]']))),
    ),
    "garbage_line": ({"bad_row"}, lambda r, i: ({}, {"_raw": str(r.choice(["{not json", "[1, 2]", "42", '"x"']))})),
    "deep_json_row": ({"bad_row"}, lambda r, i: ({}, {"_raw": '{"audio": "a.wav", "caption": ' + deep_json() + "}"})),
    "deep_json_caption": ({"bad_row"}, lambda r, i: ({}, {"audio": "a.wav", "caption": deep_json(5000)})),
    "bitflip_audio": (
        AUDIO_OUTCOMES,
        lambda r, i: (lambda f: _m(_flip(r, encoded(r, f)), f"bf{i}.{f.lower()}"))(
            str(r.choice(["WAV", "FLAC", "OGG"]))
        ),
    ),
}

WDS = {  # makers: rng, i -> [(member name, bytes | None, tar type or None)]
    "wds_valid": (
        {OK},
        lambda r, i: [(f"k{i}.flac", encoded(r, "FLAC"), None), (f"k{i}.json", b'{"text": "a cat"}', None)],
    ),
    "wds_traversal": ({"unsafe_member"}, lambda r, i: [(f"../../evil{i}.flac", encoded(r, "FLAC"), None)]),
    "wds_absolute": ({"unsafe_member"}, lambda r, i: [(f"/tmp/clapcomp_fuzz_evil{i}.json", b"{}", None)]),
    "wds_symlink": (
        {"unsafe_member"},
        lambda r, i: [(f"k{i}.wav", None, r.choice([tarfile.SYMTYPE, tarfile.LNKTYPE]))],
    ),
    "wds_no_json": ({"missing_caption"}, lambda r, i: [(f"k{i}.wav", encoded(r, "WAV"), None)]),
    "wds_no_audio": ({"missing_file"}, lambda r, i: [(f"k{i}.json", b'{"text": "x"}', None)]),
    "wds_bad_json": (
        {"bad_row"},
        lambda r, i: [(f"k{i}.wav", encoded(r, "WAV"), None), (f"k{i}.json", b"{nope", None)],
    ),
    "wds_non_utf8_json": (
        {"non_utf8_text"},
        lambda r, i: [(f"k{i}.wav", encoded(r, "WAV"), None), (f"k{i}.json", b'{"text": "\xff"}', None)],
    ),
    "wds_random_audio": (
        {"corrupt"},
        lambda r, i: [(f"k{i}.ogg", r.bytes(3000), None), (f"k{i}.json", b'{"text": "x"}', None)],
    ),
    "wds_pickle_member": (
        {"unsupported_format"},
        lambda r, i: [(f"k{i}.pkl", b"PICKLE", None), (f"k{i}.json", b'{"text": "x"}', None)],
    ),
    "wds_deep_json": (
        {"bad_row"},
        lambda r, i: [(f"k{i}.wav", encoded(r, "WAV"), None), (f"k{i}.json", deep_json().encode(), None)],
    ),
    "wds_truncated_tar": ({"truncated"}, None),  # special-cased in `write_inputs`
    "wds_random_tar": ({"corrupt"}, None),
}


def make_record(rng, fmt="flac", **header):
    from clapcomp.data.records import encode_record

    example = dict(
        key="k",
        audio=tone(rng, 0.2)[:, 0],
        sample_rate=SR,
        captions=["a dog barks"],
        negatives=["a cat meows"],
        positives=["a dog"],
    )
    return encode_record({**example, **header}, fmt)


def _with_header(rng, **changes):
    from clapcomp.data.records import MAGIC

    data = make_record(rng, str(rng.choice(["flac", "pcm16"])))
    (n,) = struct.unpack("<I", data[8:12])
    header = {**json.loads(data[12 : 12 + n]), **changes}
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + data[12 + n :]


def _flip(rng, data):
    data = bytearray(data)  # half the time only in the first 64 bytes (the header)
    for j in rng.integers(0, len(data) if rng.random() < 0.5 else min(64, len(data)), int(rng.integers(1, 9))):
        data[j] = int(rng.integers(256))
    return bytes(data)


RECORDS = {  # makers: rng, i, marker path -> record bytes
    "rec_valid_flac": ({OK}, lambda r, i, m: make_record(r, "flac")),
    "rec_valid_pcm16": ({OK}, lambda r, i, m: make_record(r, "pcm16")),
    "rec_weird_captions": (
        {OK},
        lambda r, i, m: make_record(r, captions=["a\x00b \U0001f415 " + "y" * 10000, "\u202e"]),
    ),
    "rec_empty": ({"bad_record"}, lambda r, i, m: b""),
    "rec_bad_magic": ({"bad_record"}, lambda r, i, m: b"CLAPREC9" + make_record(r)[8:]),
    "rec_header_len_huge": (
        {"bad_record"},
        lambda r, i, m: make_record(r)[:8] + b"\xff\xff\xff\xff" + make_record(r)[12:],
    ),
    "rec_header_garbage": (
        {"bad_record"},
        lambda r, i, m: b"CLAPREC1" + struct.pack("<I", 64) + r.bytes(64) + r.bytes(100),
    ),
    "rec_header_types": (
        {"bad_record"},
        lambda r, i, m: _with_header(
            r,
            **[
                {"sample_rate": "16000"},
                {"num_samples": -5},
                {"captions": "a str"},
                {"captions": [1, 2]},
                {"key": None},
                {"audio_format": "mp3"},
                {"negatives": None},
                {"num_samples": 1.5},
            ][int(r.integers(8))],
        ),
    ),
    "rec_rate_extreme": ({"bad_record"}, lambda r, i, m: _with_header(r, sample_rate=int(r.choice([1, 10_000_000])))),
    "rec_random_flac": ({"corrupt"}, lambda r, i, m: make_record(r, audio=r.bytes(2000), num_samples=3200)),
    "rec_truncated_flac": (
        {"truncated", "corrupt"},
        lambda r, i, m: (lambda d: d[: len(d) - int(r.integers(50, 400))])(make_record(r, "flac")),
    ),
    "rec_wrong_num_samples": (
        {"truncated"},
        lambda r, i, m: _with_header(r, num_samples=int(r.integers(1, 3000))),
    ),
    "rec_pcm_odd_bytes": ({"truncated"}, lambda r, i, m: make_record(r, "pcm16") + b"\x01"),
    "rec_declared_hours": ({"too_long"}, lambda r, i, m: _with_header(r, num_samples=SR * 3600 * 24)),
    "rec_no_caption": ({"missing_caption"}, lambda r, i, m: make_record(r, captions=[])),
    "rec_pickle": ({"bad_record"}, lambda r, i, m: pickle.dumps(Marker(m))),
    "rec_pickle_audio": (
        {"corrupt"},
        lambda r, i, m: make_record(r, audio=pickle.dumps(Marker(m)), num_samples=100),
    ),
    "rec_bitflip": (ANY_READ, lambda r, i, m: _flip(r, make_record(r, str(r.choice(["flac", "pcm16"]))))),
    "rec_cut": (
        ANY_READ - {OK, "missing_caption", "too_long"},
        lambda r, i, m: (lambda d: d[: int(r.integers(0, len(d) - 1))])(
            make_record(r, str(r.choice(["flac", "pcm16"])))
        ),
    ),
    "rec_deep_json": ({"bad_record"}, lambda r, i, m: b"CLAPREC1" + struct.pack("<I", 200_000) + deep_json().encode()),
}
KINDS = (
    {k: ("manifest",) + v for k, v in MANIFEST.items()}
    | {k: ("webdataset",) + v for k, v in WDS.items()}
    | {k: ("record",) + v for k, v in RECORDS.items()}
)
BIG_KINDS = ("too_large",)  # ~2 MB files: drawn rarely


# ----------------------------------------------------------------------------- writing inputs


def draw_kinds(n: int, rng) -> list[str]:
    """Every kind once (the first n if n is smaller), the rest drawn at random."""
    names = list(KINDS)
    p = np.array([0.2 if k in BIG_KINDS else 1.0 for k in names])
    return names[:n] + [names[j] for j in rng.choice(len(names), size=max(n - len(names), 0), p=p / p.sum())]


def _write_manifests(root, outside, rows):
    csv_rows, jsonl_lines = [], []
    for j, row in enumerate(rows):
        row = {
            k: v.replace("{root}", root).replace("{outside}", outside) if isinstance(v, str) else v
            for k, v in row.items()
        }
        cap = row.get("caption")
        if "_raw" in row:
            jsonl_lines.append(row["_raw"].encode())
        elif row.pop("_jsonl", False) or j % 2:
            jsonl_lines.append(
                json.dumps(
                    {**row, "caption": cap.decode("utf-8", "surrogateescape") if isinstance(cap, bytes) else cap},
                    ensure_ascii=False,
                ).encode("utf-8", "surrogateescape")
            )
        else:
            csv_rows.append(
                {
                    "audio": row["audio"],
                    "caption": cap.decode("utf-8", "surrogateescape") if isinstance(cap, bytes) else cap,
                }
            )
    paths = []
    if csv_rows:
        paths.append(os.path.join(root, "m.csv"))
        with open(paths[-1], "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=["audio", "caption"])
            w.writeheader()
            w.writerows(csv_rows)
    if jsonl_lines:
        paths.append(os.path.join(root, "m.jsonl"))
        with open(paths[-1], "wb") as f:
            f.write(b"\n".join(jsonl_lines) + b"\n")
    return paths


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind is not None:
                info.type, info.linkname = kind, "/etc/passwd"
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def write_inputs(out: str, n: int, seed: int) -> dict:
    """The n fuzz inputs under OUT/inputs; returns the index {kind: {family, tried, inputs, expected}}."""
    from array_record.python.array_record_module import ArrayRecordWriter

    rng = np.random.default_rng(seed)
    kinds = draw_kinds(n, rng)
    base = os.path.join(out, "inputs")
    outside = os.path.join(base, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "victim.wav"), "wb") as f:
        f.write(encoded(rng, "WAV"))
    marker = os.path.join(out, "PICKLE_WAS_EXECUTED")
    index, rows, records = {}, {}, []
    for i, kind in enumerate(kinds):
        family, expected, maker = KINDS[kind]
        entry = index.setdefault(kind, {"family": family, "tried": 0, "inputs": [], "expected": sorted(expected)})
        entry["tried"] += 1
        if family == "manifest":
            root = os.path.join(base, "manifest", kind)
            os.makedirs(root, exist_ok=True)
            files, row = maker(rng, i)
            for name, data in files.items():
                path = os.path.join(root, name)
                if isinstance(data, tuple) and data[0] == "dir":
                    os.makedirs(path)
                elif isinstance(data, tuple):
                    os.symlink(data[1].replace("{outside}", outside), path)
                else:
                    with open(path, "wb") as f:
                        f.write(data)
            rows.setdefault(kind, (root, []))[1].append(row)
        elif family == "webdataset":
            folder = os.path.join(base, "wds", kind)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{i:05d}.tar")
            if kind == "wds_random_tar":
                with open(path, "wb") as f:
                    f.write(rng.bytes(int(rng.integers(1, 20000))))
            elif kind == "wds_truncated_tar":
                _tar(path, WDS["wds_valid"][1](rng, i))
                with open(path, "rb") as f:  # cut inside the first member's data
                    data = f.read()
                with open(path, "wb") as f:
                    f.write(data[: 512 + int(rng.integers(1, 1000))])
            else:
                _tar(path, maker(rng, i))
            entry["inputs"].append(path)
        else:
            records.append((kind, maker(rng, i, marker)))
    for kind, (root, kind_rows) in rows.items():
        index[kind]["inputs"] = _write_manifests(root, outside, kind_rows)
    rec_dir = os.path.join(base, "records")
    os.makedirs(rec_dir)
    if records:
        writer = ArrayRecordWriter(os.path.join(rec_dir, "mutated-00000.array_record"), "group_size:1,uncompressed")
        for _, data in records:
            writer.write(data)
        writer.close()
    index = {"kinds": index, "records": [k for k, _ in records], "marker": marker}
    with open(os.path.join(out, "inputs", "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index
