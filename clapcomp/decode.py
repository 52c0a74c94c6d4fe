"""Bounded audio decoding: the one function every command reads an audio file (path or bytes) with.

`read_audio(source, limits, target_rate=...)` -> mono float32 `[T]` at the file's own rate, or
`DecodeError(reason, detail)`. Used by `data build` (`clapcomp.data.sources.load_audio`), the
record decoder of the grain pipeline (`clapcomp.data.records.decode_flac`), `eval`, `embed`
(`clapcomp.inference.read_audio_file`) and `data compose`.

Before a sample is decoded, the header is held to `Limits`: file size, sample rate, channels,
declared duration, and the decode budget `max_samples` on both frames x channels (what the decoder
produces) and frames at `target_rate` (what resampling produces). A 16 KB FLAC can declare 600 s of
8-channel 384 kHz audio (1.8e9 samples, 6.9 GiB as float32) within the other limits; the budget
refuses it before anything is allocated.

Decoding then runs in chunks of `CHUNK_FRAMES` frames, mixed to mono as they arrive, so memory is
the mono output plus one chunk, never frames x channels; the deadline (`timeout_s`) is checked
between chunks, so a decode that runs too long stops itself and frees what it held (a decode
abandoned by a caller's timeout thread stops within one chunk instead of running on).

Mono 16-bit FLAC bytes read as int16 (the training pipeline's records) are first decoded by dr_flac
(`miniaudio`, the `train` extra; ~1.6x faster than libsndfile's FLAC path, the same samples) in one call,
after the same header checks (the sample budget bounds its memory and time); anything it does not
decode whole, exactly as declared, goes the libsndfile way below, which names the problem.

A leaf: numpy only; soundfile (and miniaudio) are imported when a file is read.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time

import numpy as np

CHUNK_FRAMES = 1 << 16
MIN_RATE, MAX_RATE = 1000, 384000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")

# the reasons `DecodeError` carries; each is a bad-data reason of `clapcomp.data.reasons.REASONS`,
# which explains it
REASONS = (
    "missing_file", "unsupported_format", "empty_file", "too_large", "corrupt", "truncated", "zero_length",
    "bad_sample_rate", "too_many_channels", "too_long", "decode_budget", "timeout",
)  # fmt: skip


class DecodeError(ValueError):
    """An audio file refused or undecodable; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one decode may cost. `max_samples` bounds frames x channels and frames at the target rate
    (2**27 = 23 min of stereo 48 kHz; 512 MiB if it were held as float32, which it never is)."""

    max_seconds: float = 600.0
    max_channels: int = 16
    max_file_mb: float = 2048.0
    max_samples: int = 1 << 27
    timeout_s: float | None = 60.0


@dataclasses.dataclass(frozen=True)
class Header:
    frames: int
    sample_rate: int
    channels: int


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


def check_header(h: Header, limits: Limits, target_rate: int | None = None) -> None:
    """Raise `DecodeError` if decoding what `h` declares would exceed `limits` (nothing is decoded)."""
    if not MIN_RATE <= h.sample_rate <= MAX_RATE:
        raise DecodeError("bad_sample_rate", f"{h.sample_rate} Hz")
    if not 1 <= h.channels <= limits.max_channels:
        raise DecodeError("too_many_channels", f"{h.channels} channels > {limits.max_channels}")
    if h.frames <= 0:
        raise DecodeError("zero_length", "no samples")
    seconds = h.frames / h.sample_rate
    if seconds > limits.max_seconds:
        raise DecodeError("too_long", f"{seconds:.1f} s > {limits.max_seconds:g} s")
    decoded = h.frames * h.channels
    resampled = -(-h.frames * (target_rate or h.sample_rate) // h.sample_rate)
    if max(decoded, resampled) > limits.max_samples:
        raise DecodeError(
            "decode_budget",
            f"{h.frames} frames x {h.channels} channels at {h.sample_rate} Hz = {decoded} decoded samples "
            f"({decoded * 4 / 2**30:.1f} GiB as float32), {resampled} at {target_rate or h.sample_rate} Hz; "
            f"the decode budget is {limits.max_samples}",
        )


def probe(source: str | os.PathLike) -> Header:
    """A file's header (nothing decoded); raises `DecodeError` (``missing_file``, ``corrupt``)."""
    import soundfile as sf

    source = os.fspath(source)
    if not os.path.isfile(source):
        raise DecodeError("missing_file", source)
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DecodeError("corrupt", str(e).split(": ", 1)[-1]) from None
    return Header(int(info.frames), int(info.samplerate), int(info.channels))


def _mono16_flac(data: bytes, limits: Limits, target_rate: int | None) -> tuple[np.ndarray, int] | None:
    """Mono 16-bit FLAC bytes -> (int16 `[T]`, rate) by dr_flac, in one call after `check_header`; None when the
    file is anything else, miniaudio is not installed, or dr_flac does not return exactly the declared frames."""
    try:
        import miniaudio
    except ImportError:
        return None
    try:
        info = miniaudio.flac_get_info(data)
    except miniaudio.DecodeError:
        return None
    if info.nchannels != 1 or info.sample_format != miniaudio.SampleFormat.SIGNED16 or info.num_frames <= 0:
        return None
    check_header(Header(int(info.num_frames), int(info.sample_rate), 1), limits, target_rate)
    try:
        decoded = miniaudio.flac_read_s16(data)
    except miniaudio.DecodeError:
        return None
    if decoded.num_frames != info.num_frames or decoded.nchannels != 1:
        return None
    return np.frombuffer(decoded.samples, np.int16), int(info.sample_rate)


def read_audio(
    source: str | os.PathLike | bytes,
    limits: Limits | None = None,
    *,
    target_rate: int | None = None,
    name: str | None = None,
    first_frames: int | None = None,
    int16: bool = False,
) -> tuple[np.ndarray, int]:
    """A file path or encoded bytes -> (mono float32 `[T]` (channel mean), sample rate); raises `DecodeError`.

    `name` gives the extension for bytes (default: the path). The header is checked against `limits`
    (`check_header`) before any sample is decoded; a stream shorter than its header is ``truncated``.
    `first_frames`: decode only the file's first frames (T = min(first_frames, the header's frames)).
    `int16`: a mono 16-bit PCM file (WAV, FLAC, ...) comes back as its int16 samples (the float32 result is
    exactly them x 2**-15; half the bytes, and a cheaper decode), any other file as float32.
    """
    import soundfile as sf

    limits = limits or Limits()
    name = str(source) if name is None and not isinstance(source, bytes) else name or ""
    ext = os.path.splitext(name)[1].lower()
    if ext and ext not in AUDIO_EXTENSIONS:
        raise DecodeError("unsupported_format", f"extension {ext!r} (expected one of {AUDIO_EXTENSIONS})")
    if isinstance(source, bytes):
        size, head = len(source), source[: 1 << 16]
    else:
        source = os.fspath(source)
        if not os.path.isfile(source):
            raise DecodeError("missing_file", source)
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            head = f.read(1 << 16)
    if size == 0:
        raise DecodeError("empty_file", "0 bytes")
    if size > limits.max_file_mb * 2**20:
        raise DecodeError("too_large", f"{size / 2**20:.0f} MB > {limits.max_file_mb:g} MB")
    if int16 and isinstance(source, bytes) and ext == ".flac" and first_frames is None:
        fast = _mono16_flac(source, limits, target_rate)
        if fast is not None:
            return fast
    deadline = None if limits.timeout_s is None else time.monotonic() + limits.timeout_s
    try:
        f = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DecodeError("corrupt", str(e).split(": ", 1)[-1]) from None
    with f:
        header = Header(int(f.frames), int(f.samplerate), int(f.channels))
        check_header(header, limits, target_rate)
        if _wav_truncated(head, size):
            raise DecodeError("truncated", "WAV data chunk is longer than the file")
        frames = header.frames if first_frames is None else min(header.frames, first_frames)
        mono = header.channels == 1
        dtype = "int16" if int16 and mono and f.subtype == "PCM_16" else "float32"
        out = np.empty(frames, dtype)  # pages are touched only as frames arrive
        done = 0
        while done < frames:
            n = min(CHUNK_FRAMES, frames - done)
            try:  # mono: straight into `out` (the mean of one channel is that channel, bit for bit)
                block = f.read(n, dtype, out=out[done : done + n]) if mono else f.read(n, dtype, always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise DecodeError("truncated", f"decoding failed mid-file: {e}") from None
            if block.shape[0] == 0:
                break
            if not mono:
                out[done : done + block.shape[0]] = block.mean(axis=1, dtype=np.float32)
            done += block.shape[0]
            if deadline is not None and time.monotonic() > deadline:
                raise DecodeError("timeout", f"decoded {done} of {frames} frames in {limits.timeout_s:g} s")
    if done < frames:
        raise DecodeError("truncated", f"{done} of {frames} declared frames")
    return out, header.sample_rate
