"""Audio front end: waveform -> log-mel on device (jax.numpy, jittable), fusion chunks, SpecAugment.

Numerics follow HF `ClapFeatureExtractor` (transformers), the reference clapcomp matches:

- STFT: frames of `n_fft` samples every `hop_length`, centred (`n_fft // 2` reflect padding on
  both sides), periodic Hann window, one-sided FFT, power spectrum |X|^2. A clip of T samples
  gives T // hop + 1 frames (480,000 samples -> 1001 frames).
- Mel filters (computed once in NumPy float64, constants): fused models use the HTK mel scale
  without normalisation (torchaudio defaults); unfused models use the Slaney scale with Slaney
  area normalisation (librosa defaults). `features` picks the bank from `cfg.fusion`, as HF does.
- dB: 10 * log10(max(mel, 1e-10)) (floor -100 dB, no top_db clipping).
- Short clips (<= clip_samples) are repeat-padded: tiled a whole number of times, then
  zero-padded to clip_samples (HF `padding="repeatpad"`); with `padding="pad"` only zero-padded
  (HF "pad"), which keeps each event where it sits in time (a repeated "A then B" reads "A B A B").
- Long clips, unfused: one crop of clip_samples (random start with a key; the front without).
- Long clips, fused: channel 0 is the mel of the whole clip resized to n_frames x n_mels (PyTorch
  bilinear, align_corners=False), channels 1..3 are n_frames-long chunks of that mel whose start
  frames come from the front / middle / back thirds of the possible starts (random with a key;
  without a key the first start of the front third, the middle start of the middle third and the
  last start of the back third, so together they cover the start, centre and end of the clip).
  Clips of at most clip_samples, and clips whose mel has exactly n_frames frames (a few hundred
  samples longer than a clip), get the same mel in all 4 channels and `is_longer` False.

Batches are padded to a static length S; `lengths` carries the true sample counts and all
per-clip work (repeat-pad, crop, reflect padding at the true end, resize, chunking) is done with
gathers and masks, so the functions are jittable with static shapes.

Options of `AudioConfig` for towers trained on another front end (defaults = the above; aisfx's CNN
uses `AISFX_AUDIO` below): `mel_scale` / `mel_norm` pick the filter bank ("unit_sum": each filter's
weights sum to 1, librosa `norm=1` / Essentia `unit_sum`), `mel_weighting="mel"` draws its triangles
linear in mel (Essentia's "warping"), `window="symmetric"` is Essentia's Hann window (periodic:
n / n_fft, symmetric: n / (n_fft - 1)), `pad_mode="constant"` centre-pads with zeros
(librosa >= 0.9, Essentia's FrameCutter), `compression="log10_1e4"` is log10(1e4 p + 1) instead of dB,
`peak_normalize` divides each clip by its largest |sample| first, `feature_range=(lo, hi)` maps the
features to (x - lo) / (hi - lo).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Waveform -> log-mel front end (HF `ClapFeatureExtractor` semantics)."""

    sample_rate: int = 48_000
    n_fft: int = 1024  # also the Hann window length
    hop_length: int = 480
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14_000.0
    clip_seconds: float = 10.0  # 480,000 samples -> 1001 frames
    fusion: bool = False  # True: global + 3 local chunks (`aff_2d`); False: one repeat-padded mel
    padding: str = "repeatpad"  # clips shorter than the window: "repeatpad" (HF, LAION) | "pad" (zeros after)
    # Front-end variants; the defaults are HF / LAION-CLAP (HTSAT and PANN alike). aisfx: AISFX_AUDIO below.
    mel_scale: str = "auto"  # "auto": htk if fusion else slaney (HF) | "slaney" | "htk"
    mel_norm: str = "auto"  # "auto": slaney area with the slaney scale, none with htk | "slaney" | "none" | "unit_sum"
    mel_weighting: str = "hz"  # filter triangles linear in "hz" (HF, librosa) or in "mel" (Essentia's "warping")
    window: str = "periodic"  # Hann window: "periodic" (HF, librosa, torchlibrosa) | "symmetric" (Essentia)
    pad_mode: str = "reflect"  # centre padding of the STFT: "reflect" (HF, torchlibrosa) | "constant" (zeros)
    compression: str = "db"  # "db": 10 log10(max(p, 1e-10)) | "log10_1e4": log10(1e4 p + 1) (Essentia shift_scale_log)
    peak_normalize: bool = False  # divide each clip by its largest |sample| before the STFT
    feature_range: tuple[float, float] = (0.0, 1.0)  # (lo, hi): features -> (x - lo) / (hi - lo)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return self.clip_samples // self.hop_length + 1


# The front end aisfx's CNN was trained on, its Essentia spectrogram (44.1 kHz, 2048 / 1024 frames centred
# with zeros, symmetric Hann, 96 HTK mels to 22.05 kHz, triangles in mel, unit-sum, log10(1e4 p + 1), min-max
# by its training range); its clips are 100 frames (2.3 s). aisfx's librosa path instead peak-normalises the
# audio and uses a periodic window with Hz triangles: replace(AISFX_AUDIO, peak_normalize=True,
# window="periodic", mel_weighting="hz").
AISFX_AUDIO = AudioConfig(
    sample_rate=44_100, n_fft=2048, hop_length=1024, n_mels=96, f_min=0.0, f_max=22_050.0,
    clip_seconds=99 * 1024 / 44_100, mel_scale="htk", mel_norm="unit_sum", mel_weighting="mel", window="symmetric",
    pad_mode="constant", compression="log10_1e4", feature_range=(0.0, 9.457798957824707),
)  # fmt: skip

MEL_FLOOR = 1e-10  # power floor before dB (HF mel_floor / min_value): -100 dB


# --------------------------------------------------------------------------------------------
# Constants: Hann window and mel filter banks (NumPy float64, built once per config)
# --------------------------------------------------------------------------------------------


def hertz_to_mel(freq: np.ndarray, mel_scale: str) -> np.ndarray:
    """Hz -> mel. "htk": 2595 log10(1 + f/700); "slaney": linear below 1 kHz, log above."""
    freq = np.asarray(freq, dtype=np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    if mel_scale == "slaney":
        linear = 3.0 * freq / 200.0
        log = 15.0 + np.log(np.maximum(freq, 1e-300) / 1000.0) * (27.0 / np.log(6.4))
        return np.where(freq >= 1000.0, log, linear)
    raise ValueError(f"unknown mel_scale {mel_scale!r}; use 'htk' (fused models) or 'slaney' (unfused)")


def mel_to_hertz(mel: np.ndarray, mel_scale: str) -> np.ndarray:
    """Inverse of `hertz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if mel_scale == "slaney":
        linear = 200.0 * mel / 3.0
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
        return np.where(mel >= 15.0, log, linear)
    raise ValueError(f"unknown mel_scale {mel_scale!r}; use 'htk' (fused models) or 'slaney' (unfused)")


def mel_filter_bank(
    n_freqs: int,
    n_mels: int,
    f_min: float,
    f_max: float,
    sample_rate: int,
    mel_scale: str,
    norm: str = "auto",
    weighting: str = "hz",
) -> np.ndarray:
    """Triangular mel filters `[n_freqs, n_mels]` float64 (power spectrum -> mel).

    Filter edges are n_mels + 2 points equally spaced in mel between f_min and f_max; the
    triangles are built on the FFT bin frequencies linspace(0, sample_rate // 2, n_freqs), linear in
    Hz (weighting "hz") or in mel ("mel", Essentia's "warping"). norm "slaney": each filter scaled
    by 2 / (its width in Hz); "unit_sum": by 1 / (the sum of its weights; an empty filter stays 0);
    "none"; "auto": slaney for the slaney scale, none for htk.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
    edges_mel = np.linspace(hertz_to_mel(f_min, mel_scale), hertz_to_mel(f_max, mel_scale), n_mels + 2)
    edges = mel_to_hertz(edges_mel, mel_scale)  # [n_mels + 2] Hz
    bins = np.linspace(0.0, sample_rate // 2, n_freqs)[:, None]  # [n_freqs, 1]
    lower, centre, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    if weighting == "mel":
        bins, lower, centre, upper = (hertz_to_mel(f, mel_scale) for f in (bins, lower, centre, upper))
    elif weighting != "hz":
        raise ValueError(f"unknown mel weighting {weighting!r}; use 'hz' (HF, librosa) or 'mel' (Essentia)")
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "auto":
        norm = "slaney" if mel_scale == "slaney" else "none"
    if norm == "slaney":
        filters = filters * (2.0 / (edges[None, 2:] - edges[None, :-2]))
    elif norm == "unit_sum":
        sums = filters.sum(axis=0, keepdims=True)
        filters = filters / np.where(sums > 0, sums, 1.0)
    elif norm != "none":
        raise ValueError(f"unknown mel norm {norm!r}; use 'auto', 'slaney', 'unit_sum' or 'none'")
    return filters


def resolved_mel_scale(cfg: AudioConfig) -> str:
    """cfg.mel_scale, with "auto" resolved as HF does: htk for fused models, slaney otherwise."""
    if cfg.mel_scale == "auto":
        return "htk" if cfg.fusion else "slaney"
    return cfg.mel_scale


@functools.cache
def _constants(cfg: AudioConfig, mel_scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(Hann window [n_fft] f32 (cfg.window), mel filters [n_fft // 2 + 1, n_mels] f32)."""
    n = np.arange(cfg.n_fft, dtype=np.float64)
    if cfg.window not in ("periodic", "symmetric"):
        raise ValueError(f"AudioConfig.window must be 'periodic' or 'symmetric', got {cfg.window!r}")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (cfg.n_fft - (cfg.window == "symmetric")))
    n_freqs = cfg.n_fft // 2 + 1
    filters = mel_filter_bank(
        n_freqs, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.sample_rate, mel_scale, cfg.mel_norm, cfg.mel_weighting
    )
    return window.astype(np.float32), filters.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Log-mel of (already centre-padded) signals
# --------------------------------------------------------------------------------------------


def _log_mel_padded(padded: jax.Array, n_frames: int, cfg: AudioConfig, mel_scale: str) -> jax.Array:
    """padded [B, P] (P >= (n_frames - 1) * hop + n_fft) -> dB log-mel [B, n_frames, n_mels].

    Frames are built from hop-sized blocks with slices and one concatenate (no gather): frame t
    is blocks t, t+1, ... of the signal, the last one cut so the frame has n_fft samples.
    """
    window, filters = _constants(cfg, mel_scale)
    hop, n_fft = cfg.hop_length, cfg.n_fft
    blocks_per_frame = -(-n_fft // hop)
    n_blocks = n_frames + blocks_per_frame - 1
    need = n_blocks * hop
    if padded.shape[1] < need:
        padded = jnp.pad(padded, ((0, 0), (0, need - padded.shape[1])))
    blocks = padded[:, :need].reshape(padded.shape[0], n_blocks, hop)
    frames = jnp.concatenate(
        [blocks[:, j : j + n_frames, : min(hop, n_fft - j * hop)] for j in range(blocks_per_frame)], axis=-1
    )  # [B, n_frames, n_fft]
    spec = jnp.fft.rfft(frames * window, n=n_fft, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2  # [B, n_frames, n_fft // 2 + 1]
    mel = jnp.einsum("btf,fm->btm", power, filters, precision=jax.lax.Precision.HIGHEST)
    if cfg.compression == "db":
        out = 10.0 * jnp.log10(jnp.maximum(mel, MEL_FLOOR))
    elif cfg.compression == "log10_1e4":
        out = jnp.log10(1e4 * mel + 1.0)
    else:
        raise ValueError(f"AudioConfig.compression must be 'db' or 'log10_1e4', got {cfg.compression!r}")
    lo, hi = cfg.feature_range
    if (lo, hi) != (0.0, 1.0):
        out = (out - lo) / (hi - lo)
    return out


def log_mel(waveform: jax.Array, cfg: AudioConfig, *, mel_scale: str) -> jax.Array:
    """waveform [B, T] f32 -> log-mel [B, T // hop + 1, n_mels] f32 in dB.

    Exactly HF's `spectrogram(..., center=True, pad_mode="reflect", power=2, log_mel="dB")` with a
    periodic Hann window (with the default options). `mel_scale`: "htk" (unnormalised, fused models)
    or "slaney" (Slaney-normalised, unfused models). Needs T > n_fft // 2 (reflect padding).
    """
    if waveform.ndim != 2:
        raise ValueError(f"log_mel expects waveform [B, T], got shape {waveform.shape}")
    half = cfg.n_fft // 2
    if waveform.shape[1] <= half:
        raise ValueError(f"waveform has {waveform.shape[1]} samples; need more than n_fft // 2 = {half}")
    padded = jnp.pad(waveform.astype(jnp.float32), ((0, 0), (half, half)), mode=_pad_mode(cfg))
    return _log_mel_padded(padded, waveform.shape[1] // cfg.hop_length + 1, cfg, mel_scale)


def _pad_mode(cfg: AudioConfig) -> str:
    if cfg.pad_mode not in ("reflect", "constant"):
        raise ValueError(f"AudioConfig.pad_mode must be 'reflect' or 'constant', got {cfg.pad_mode!r}")
    return cfg.pad_mode


def _repeats(cfg: AudioConfig) -> bool:
    if cfg.padding not in ("repeatpad", "pad"):
        raise ValueError(f"AudioConfig.padding must be 'repeatpad' or 'pad', got {cfg.padding!r}")
    return cfg.padding == "repeatpad"


# --------------------------------------------------------------------------------------------
# Per-clip waveform layout: repeat-pad / crop, then reflect padding at the clip's own end
# --------------------------------------------------------------------------------------------


def _padded_views(
    waveform: jax.Array,
    lengths: jax.Array,
    offsets: jax.Array,
    view_len: jax.Array,
    out_len: int,
    cfg: AudioConfig,
) -> jax.Array:
    """The centre-padded signal of each clip's "view", by one gather: [B, out_len + n_fft].

    The view of clip b has view_len[b] samples: v[j] = x[(offsets[b] + j) % L] where clips
    shorter than a clip repeat whole times and are then zero (HF "repeatpad"; cfg.padding "pad":
    zero after the clip's own end), and it is
    reflect-padded (zero-padded with cfg.pad_mode "constant") by n_fft // 2 at both of its own ends
    (not at the batch's padded end).
    """
    half = cfg.n_fft // 2
    clip = cfg.clip_samples
    q = jnp.arange(out_len + 2 * half, dtype=jnp.int32)[None, :] - half  # [1, P] view position
    vl = view_len[:, None]
    j = jnp.abs(q)  # reflect at the start
    j = jnp.where(j >= vl, 2 * (vl - 1) - j, j)  # reflect at the end
    j = jnp.clip(j, 0, vl - 1)  # positions past the reflection are never used by valid frames
    length = lengths[:, None]
    short_end = (clip // length) * length if _repeats(cfg) else length
    repeat_end = jnp.where(length >= clip, jnp.iinfo(jnp.int32).max, short_end)
    src = (offsets[:, None] + j) % length
    values = jnp.take_along_axis(waveform, src, axis=1)
    inside = j < repeat_end
    if _pad_mode(cfg) == "constant":
        inside = inside & (q >= 0) & (q < vl)
    return jnp.where(inside, values, 0.0)


def crop_offsets(lengths: jax.Array, cfg: AudioConfig, key: jax.Array | None = None) -> jax.Array:
    """Unfused crop start [B] int32 for each clip: 0 without a key (the front, reproducible
    embeddings at inference); with a key uniform in [0, L - clip_samples] for long clips (HF
    rand_trunc). Clips of at most clip_samples always start at 0."""
    lengths = jnp.asarray(lengths, jnp.int32)
    if key is None:
        return jnp.zeros_like(lengths)
    overflow = jnp.maximum(lengths - cfg.clip_samples, 0)
    return jax.random.randint(key, lengths.shape, 0, overflow + 1, dtype=jnp.int32)


def fusion_chunk_starts(lengths: jax.Array, cfg: AudioConfig, key: jax.Array | None = None) -> jax.Array:
    """Start frames [B, 3] int32 of the front / middle / back local chunks of the fused input.

    The n = total_frames - n_frames + 1 possible starts are split in three consecutive ranges
    like `np.array_split(range(n), 3)` (an empty range becomes {0}). With a key: one uniform start
    per range (HF `_random_mel_fusion`). Without: the first start of the front range, the middle
    one (index len // 2) of the middle range, the last one of the back range.
    """
    lengths = jnp.asarray(lengths, jnp.int32)
    total = jnp.maximum(lengths, cfg.clip_samples) // cfg.hop_length + 1
    n = total - cfg.n_frames + 1  # [B] >= 1
    part = jnp.arange(3, dtype=jnp.int32)[None, :]
    base, rem = (n // 3)[:, None], (n % 3)[:, None]
    first = part * base + jnp.minimum(part, rem)  # [B, 3]
    size = base + (part < rem).astype(jnp.int32)
    first = jnp.where(size == 0, 0, first)
    size = jnp.maximum(size, 1)
    if key is None:
        pick = jnp.concatenate([jnp.zeros_like(size[:, :1]), size[:, 1:2] // 2, size[:, 2:] - 1], axis=1)
    else:
        pick = jax.random.randint(key, size.shape, 0, size, dtype=jnp.int32)
    return first + pick


def _resize_frames(mel: jax.Array, total: jax.Array, n_out: int) -> jax.Array:
    """Bilinear resize of mel[b, :total[b]] to n_out frames: mel [B, F, M], total [B] -> [B, n_out, M].

    Reproduces PyTorch `interpolate(mode="bilinear", align_corners=False)` bit for bit in its
    index maths (the mel axis keeps its size, so only frames move): scale = fl32(total / n_out),
    src = fl32(scale * (i + 0.5) - 0.5) rounded once, as PyTorch's fused multiply-add does. A
    1-ulp change in src moves outputs by up to ~1e-3 dB on long clips, so neither the division
    nor the product is left to the compiler: scales come from a NumPy table (IEEE division) and
    the product is split into two exact halves so only the final addition rounds.
    """
    scales = np.arange(mel.shape[1] + 1, dtype=np.float32) / np.float32(n_out)
    # split in NumPy (no bitcast in the graph: ONNX has none): the top 12 significant bits, and the other 12 (exact)
    highs = (scales.view(np.int32) & ~0xFFF).view(np.float32)
    scale_hi = jnp.asarray(highs)[total][:, None]  # [B, 1]
    scale_lo = jnp.asarray(scales - highs)[total][:, None]
    dst = jnp.arange(n_out, dtype=jnp.float32)[None, :] + jnp.float32(0.5)  # (2i + 1) / 2, exact
    # scale_hi * dst and scale_lo * dst are exact (<= 23 significant bits), so is "- 0.5"
    src = jnp.maximum((scale_hi * dst - jnp.float32(0.5)) + scale_lo * dst, 0.0)  # [B, n_out]
    i0 = jnp.minimum(src.astype(jnp.int32), total[:, None] - 1)
    i1 = jnp.minimum(i0 + 1, total[:, None] - 1)
    lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)[..., None]
    lo = jnp.take_along_axis(mel, i0[..., None], axis=1)
    hi = jnp.take_along_axis(mel, i1[..., None], axis=1)
    return (1.0 - lam) * lo + lam * hi


def features(
    waveform: jax.Array, lengths: jax.Array, cfg: AudioConfig, *, key: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Model input from a padded batch: waveform [B, S] f32 @ cfg.sample_rate, lengths [B] int32.

    Returns (mel [B, C, cfg.n_frames, n_mels] f32 dB, is_longer [B] bool), C = 4 if cfg.fusion
    else 1. See the module docstring for padding, cropping and chunking. `key` draws the
    training-time crop / chunk starts; key=None is deterministic (front crop; fixed chunks).
    Lengths are clipped to [1, S]; samples past a clip's length are ignored. is_longer: the clip
    is longer than clip_samples (fused: its mel has more than n_frames frames), as HF sets it.
    """
    if waveform.ndim != 2:
        raise ValueError(f"features expects waveform [B, S], got shape {waveform.shape}")
    batch, size = waveform.shape
    if jnp.shape(lengths) != (batch,):
        raise ValueError(f"lengths must have shape [B] = ({batch},), got {jnp.shape(lengths)}")
    waveform = waveform.astype(jnp.float32)
    lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 1, size)
    if cfg.peak_normalize:
        valid = jnp.arange(size)[None, :] < lengths[:, None]
        peak = jnp.max(jnp.where(valid, jnp.abs(waveform), 0.0), axis=1, keepdims=True)
        waveform = waveform / jnp.where(peak > 0, peak, 1.0)
    clip, n_frames = cfg.clip_samples, cfg.n_frames

    if not cfg.fusion:
        offsets = crop_offsets(lengths, cfg, key)
        view_len = jnp.full_like(lengths, clip)
        padded = _padded_views(waveform, lengths, offsets, view_len, clip, cfg)
        mel = _log_mel_padded(padded, n_frames, cfg, resolved_mel_scale(cfg))
        return mel[:, None], lengths > clip

    view_len = jnp.maximum(lengths, clip)
    out_len = max(size, clip)
    padded = _padded_views(waveform, lengths, jnp.zeros_like(lengths), view_len, out_len, cfg)
    mel = _log_mel_padded(padded, out_len // cfg.hop_length + 1, cfg, resolved_mel_scale(cfg))  # [B, F, M]
    total = view_len // cfg.hop_length + 1
    glob = _resize_frames(mel, total, n_frames)
    starts = fusion_chunk_starts(lengths, cfg, key)  # [B, 3]
    idx = (starts[:, :, None] + jnp.arange(n_frames, dtype=jnp.int32)).reshape(batch, 3 * n_frames, 1)
    chunks = jnp.take_along_axis(mel, idx, axis=1).reshape(batch, 3, n_frames, cfg.n_mels)
    return jnp.concatenate([glob[:, None], chunks], axis=1), total > n_frames


# --------------------------------------------------------------------------------------------
# SpecAugment (training only)
# --------------------------------------------------------------------------------------------


def _stripe_mask(key: jax.Array, batch: int, extent: int, max_width: int, stripes: int) -> jax.Array:
    """[B, extent] bool: per clip `stripes` stripes, width uniform in [0, max_width), start
    uniform in [0, extent - width) (torchlibrosa DropStripes)."""
    k_width, k_start = jax.random.split(key)
    width = jax.random.randint(k_width, (batch, stripes), 0, max_width)
    start = jax.random.randint(k_start, (batch, stripes), 0, extent - width)
    pos = jnp.arange(extent)[None, None, :]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return inside.any(axis=1)


def spec_augment(
    mel: jax.Array,
    key: jax.Array,
    *,
    time_width: int = 64,
    time_stripes: int = 2,
    freq_width: int = 8,
    freq_stripes: int = 2,
) -> jax.Array:
    """Zero random time and mel stripes (LAION-CLAP's SpecAugmentation): mel [B, C, F, M] -> same.

    Per clip, `time_stripes` stripes of width uniform in [0, time_width) frames and
    `freq_stripes` of width uniform in [0, freq_width) mel bins are set to 0, the same stripes in
    every channel C; everything else is returned unchanged. Deterministic for a given key.
    """
    if mel.ndim != 4:
        raise ValueError(f"spec_augment expects mel [B, C, F, M], got shape {mel.shape}")
    batch, _, frames, mels = mel.shape
    if time_width > frames or freq_width > mels:
        raise ValueError(f"stripe widths ({time_width}, {freq_width}) exceed the mel size ({frames}, {mels})")
    k_time, k_freq = jax.random.split(key)
    drop_t = _stripe_mask(k_time, batch, frames, time_width, time_stripes)  # [B, F]
    drop_m = _stripe_mask(k_freq, batch, mels, freq_width, freq_stripes)  # [B, M]
    drop = drop_t[:, None, :, None] | drop_m[:, None, None, :]
    return jnp.where(drop, jnp.zeros((), mel.dtype), mel)


# --------------------------------------------------------------------------------------------
# Host side: validate, resample, pad
# --------------------------------------------------------------------------------------------


def _check_clip(index: int, clip: np.ndarray) -> None:
    if clip.ndim != 1:
        hint = " (multi-channel? average the channels: x.mean(axis=-1))" if clip.ndim == 2 else ""
        raise ValueError(f"clip {index} has shape {clip.shape}; each clip must be 1-D mono audio{hint}")
    if clip.size == 0:
        raise ValueError(f"clip {index} is empty (0 samples); drop it or pass audio with samples")
    if not np.issubdtype(clip.dtype, np.floating):
        raise ValueError(
            f"clip {index} has dtype {clip.dtype}; pass float audio in [-1, 1] "
            "(e.g. int16 PCM: x.astype(np.float32) / 32768)"
        )
    bad = ~np.isfinite(clip)
    if bad.any():
        at = int(np.argmax(bad))
        what = "NaN" if np.isnan(clip[at]) else "inf"
        raise ValueError(f"clip {index} has {what} at sample {at}; clean the audio or drop the clip")


def prepare_waveforms(
    audio: np.ndarray | Sequence[np.ndarray], sample_rate: int, cfg: AudioConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Host-side batch preparation for `features`.

    audio: float array [B, T] or a list of B 1-D float arrays (any lengths) at `sample_rate`.
    Validates every clip (ValueError naming the clip and the problem: rank, empty, non-float,
    NaN/inf), resamples with soxr (HQ) to cfg.sample_rate, and zero-pads to a common length S =
    the longest clip rounded up to whole multiples of clip_samples (at least one clip), so jitted
    callers compile once per bucket. Returns (waveform [B, S] float32, lengths [B] int32).
    """
    if isinstance(audio, np.ndarray):
        if audio.ndim != 2:
            raise ValueError(
                f"audio array has shape {audio.shape}; pass a batch [B, T] (one clip: audio[None]) "
                "or a list of 1-D arrays"
            )
        clips = list(audio)
    elif isinstance(audio, (list, tuple)):
        clips = [np.asarray(a) for a in audio]
    else:
        kind = type(audio).__name__
        raise ValueError(f"audio must be an np.ndarray [B, T] or a list of 1-D arrays, got {kind}")
    if not clips:
        raise ValueError("audio is an empty batch; pass at least one clip")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate}")
    out = []
    for i, clip in enumerate(clips):
        _check_clip(i, clip)
        clip = clip.astype(np.float64)
        if sample_rate != cfg.sample_rate:
            import soxr  # host-side only: the jitted front end and train step run without it

            clip = soxr.resample(clip, int(sample_rate), cfg.sample_rate)
            if clip.size == 0:
                rates = f"{sample_rate} Hz to {cfg.sample_rate} Hz"
                raise ValueError(f"clip {i} is too short to resample from {rates}; drop it or pad it")
        out.append(clip.astype(np.float32))
    lengths = np.array([c.size for c in out], dtype=np.int32)
    clip_len = cfg.clip_samples
    size = max(1, -(-int(lengths.max()) // clip_len)) * clip_len
    waveform = np.zeros((len(out), size), dtype=np.float32)
    for i, c in enumerate(out):
        waveform[i, : c.size] = c
    return waveform, lengths
