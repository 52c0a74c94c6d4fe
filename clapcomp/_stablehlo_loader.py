"""Standalone runner for a `clapcomp export --format stablehlo` directory: needs only jax and numpy.

This file is copied into every stablehlo export as `clapcomp_stablehlo_loader.py`; it uses no
clapcomp code. Usage:

    from clapcomp_stablehlo_loader import StableHLOClap
    clap = StableHLOClap("export_dir")
    audio = clap.embed_audio(waveform, lengths)         # waveform [B, T<=S] f32 @ clap.sample_rate
    text = clap.embed_tokens(input_ids, attention_mask)  # [B, L<=max_length] int (tokenizer.json ids)

Both return L2-normalised float32 embeddings [B, D]. Resampling to `sample_rate` and tokenising
(e.g. with the `tokenizers` package and the dir's tokenizer.json) are the caller's job.

Trust: importing this file runs Python, and deserialising the functions runs compiled code, as HF's
`trust_remote_code` does: use exports you made or trust. The sha256 of model.safetensors and of each
function file, recorded in stablehlo.json at export, are checked before anything is parsed or
deserialised (a mismatch raises ValueError naming the file).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import jax
import numpy as np

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip


def checked_bytes(path, sha256: str | None) -> bytes:
    """The bytes of `path`, after checking their sha256 against `sha256` (None: exports older than the check)."""
    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()} differs from {sha256} in stablehlo.json; "
                         "the file changed since export: export again, or restore the file")  # fmt: skip
    return data


def read_safetensors(path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Parse a .safetensors file (8-byte header size, JSON header, raw little-endian data) with numpy."""
    data = checked_bytes(path, sha256)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        raw = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=8 + size + start)
        out[name] = raw.astype(dtype.newbyteorder("=")).reshape(info["shape"])
    return out


class StableHLOClap:
    """The exported audio and text embedding functions with their parameters."""

    def __init__(self, directory):
        directory = Path(directory)
        self.manifest = json.loads((directory / "stablehlo.json").read_text())
        self.sample_rate = int(self.manifest["sample_rate"])
        self.audio_samples = int(self.manifest["audio_samples"])
        self.max_length = int(self.manifest["max_length"])
        self.pad_token_id = int(self.manifest["pad_token_id"])
        params = read_safetensors(directory / self.manifest["params"], self.manifest.get("params_sha256"))
        self.params = {k: jax.numpy.asarray(v) for k, v in params.items()}
        self._fns = {
            kind: jax.export.deserialize(bytearray(checked_bytes(directory / spec["file"], spec.get("sha256"))))
            for kind, spec in self.manifest["functions"].items()
        }

    def embed_audio(self, waveform, lengths=None) -> np.ndarray:
        """waveform [B, T] float32 at `sample_rate`, T <= audio_samples; lengths [B] (default T) -> [B, D]."""
        waveform = np.asarray(waveform, np.float32)
        if waveform.ndim != 2:
            raise ValueError(f"waveform must be [B, T], got shape {waveform.shape}")
        b, t = waveform.shape
        if t > self.audio_samples:
            raise ValueError(f"waveform has {t} samples; this export takes at most {self.audio_samples} "
                             "(crop the audio, or re-export with a larger --audio-samples)")  # fmt: skip
        lengths = np.full((b,), t, np.int32) if lengths is None else np.asarray(lengths, np.int32)
        padded = np.zeros((b, self.audio_samples), np.float32)
        padded[:, :t] = waveform
        return np.asarray(self._fns["audio"].call(self.params, padded, lengths))

    def embed_tokens(self, input_ids, attention_mask) -> np.ndarray:
        """input_ids, attention_mask [B, L] int, L <= max_length -> [B, D] (padded to max_length here)."""
        ids, mask = np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32)
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] > self.max_length:
            raise ValueError(f"input_ids / attention_mask must both be [B, L<={self.max_length}], "
                             f"got {ids.shape} / {mask.shape}")  # fmt: skip
        pad = self.max_length - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=self.pad_token_id)
        mask = np.pad(mask, ((0, 0), (0, pad)))
        return np.asarray(self._fns["text"].call(self.params, ids, mask))
