"""What `classify`, `search` and `probe` share: finding audio files, reading them as windows of the
model's clip length, embedding them in batches, the model's identity, a progress line (writing: clapcomp.fs).

Windows: a recording of T samples (at the model's sample rate) is cut at 0, S, 2S, ... (S = the model's
clip length); a last, shorter window is kept when it is the only one or at least a quarter of a clip
(shorter tails would be mostly padding). A recording no longer than one clip is one window, the whole
recording, so its embedding is `Clap.embed_audio` of the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from clapcomp.decode import AUDIO_EXTENSIONS, Limits
from clapcomp.inference import Clap, read_audio_file


class UnreadableAudio(ValueError):
    """An audio file that cannot be decoded (or holds no finite samples); the message names it."""


def find_audio(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders -> absolute audio file paths, folders walked recursively for `AUDIO_EXTENSIONS`
    (`clapcomp.decode` reads those; a file named directly is tried whatever its suffix); each file once, in the order given."""
    out: dict[Path, None] = {}
    paths = [Path(p) for p in paths]
    for p in paths:
        if p.is_dir():
            out.update(
                (q.resolve(), None)
                for q in sorted(p.rglob("*"))
                if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file()
            )
        elif p.is_file():
            out[p.resolve()] = None
        else:
            raise FileNotFoundError(f"{p} does not exist; pass audio files or folders that hold them")
    if not out:
        raise ValueError(
            f"no audio files under {', '.join(map(str, paths))} (looked for {' '.join(AUDIO_EXTENSIONS)}); "
            "pass a folder that holds audio, or name the files"
        )
    return list(out)


def read_audio(path: Path, sample_rate: int, limits: Limits | None = None) -> np.ndarray:
    """An audio file -> mono float32 [T] at `sample_rate`: decoded within `limits` (`clapcomp.decode`, the
    header checked first; default: `Limits()`, 600 s), channels averaged, soxr HQ resampling in float64 as
    `Clap.embed_audio` does. Raises UnreadableAudio naming the file, what was wrong and what to do."""
    try:
        x, rate = read_audio_file(path, limits, target_rate=sample_rate)
    except (ValueError, FileNotFoundError) as e:
        raise UnreadableAudio(str(e)) from None
    if not np.isfinite(x).all():
        raise UnreadableAudio(f"audio file {str(path)!r} has NaN or inf samples; clean the file or drop it")
    if rate != sample_rate:
        import soxr

        x = soxr.resample(x.astype(np.float64), rate, sample_rate).astype(np.float32)
    return x


def windows(x: np.ndarray, clip: int) -> list[tuple[int, np.ndarray]]:
    """x [T] -> [(start sample, window [<= clip])] as the module docstring describes."""
    out = [(s, x[s : s + clip]) for s in range(0, x.size, clip)]
    if len(out) > 1 and out[-1][1].size < clip / 4:
        out.pop()
    return out


@dataclasses.dataclass
class Embedded:
    """One file's result: `offsets` [W] seconds, `embeddings` [W, D] unit rows; or `error` (then both empty)."""

    path: Path
    offsets: np.ndarray
    embeddings: np.ndarray
    error: str | None = None

    def mean(self) -> np.ndarray:
        """The file as one vector [D]: the normalised mean of its window embeddings."""
        m = self.embeddings.astype(np.float64).mean(axis=0)
        return (m / np.linalg.norm(m)).astype(np.float32)


def embed_files(
    clap: Clap, files: list[Path], *, batch: int = 32, what: str = "files", limits: Limits | None = None
) -> Iterator[Embedded]:
    """Each file's windows embedded, at most `batch` windows per model call (so host memory for the model's
    input stays `batch` clips, however long a recording); yields in the order of `files`
    (unreadable or refused ones (`limits`) with `.error` set). A progress line goes to stderr when it is a terminal."""
    rate, clip, dim = clap.config.audio.sample_rate, clap.config.audio.clip_samples, clap.config.projection_dim
    progress = Progress(len(files), what)
    pending: list[tuple[Path, list[tuple[int, np.ndarray]]]] = []

    def flush() -> Iterator[Embedded]:
        flat = [w for _, ws in pending for _, w in ws]
        parts = [clap.embed_audio(flat[i : i + batch], rate) for i in range(0, len(flat), batch)]
        emb = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        at = 0
        for path, ws in pending:
            yield Embedded(path, np.array([s / rate for s, _ in ws]), emb[at : at + len(ws)])
            at += len(ws)
        progress.advance(len(pending))
        pending.clear()

    for path in files:
        try:
            pending.append((path, windows(read_audio(path, rate, limits), clip)))
        except UnreadableAudio as e:
            yield from flush()
            progress.advance(1)
            yield Embedded(path, np.zeros(0), np.zeros((0, dim), np.float32), str(e))
            continue
        if sum(len(ws) for _, ws in pending) >= batch:
            yield from flush()
    yield from flush()
    progress.close()


class Progress:
    """`  done/total files, rate/s` on one stderr line, only on a terminal and after the first second."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done, self.start = total, what, 0, time.perf_counter()
        self.enabled = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.start
        if self.enabled and elapsed > 1.0:
            sys.stderr.write(f"\r  {self.done}/{self.total} {self.what}, {self.done / elapsed:.1f}/s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and time.perf_counter() - self.start > 1.0:
            sys.stderr.write("\n")


def model_identity(clap: Clap) -> dict[str, str]:
    """{"config_sha256", "weights_sha256"}: sha256 of the config (sorted JSON) and of every parameter
    (name, dtype, shape, bytes, in name order). Equal for every load of the same weights."""
    from flax import nnx

    config = hashlib.sha256(json.dumps(clap.config.to_dict(), sort_keys=True).encode()).hexdigest()
    weights = hashlib.sha256()
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(clap.model))}
    for name in sorted(flat):
        value = np.ascontiguousarray(np.asarray(flat[name].get_value()))
        weights.update(f"{name}:{value.dtype}:{value.shape}".encode())
        weights.update(value.tobytes())
    return {"config_sha256": config, "weights_sha256": weights.hexdigest()}
