"""clapcomp.audio against HF `ClapFeatureExtractor` (the reference) and hand-checked behaviour.

HF draws its training-time choices from numpy's global RNG: `np.random.randint` for the
rand_trunc crop start (and, in fusion mode, to flag one random clip `is_longer` when no clip in
the batch is long), `np.random.choice(range)` for each of the three fusion chunk starts. The
tests replace those two functions (pytest monkeypatch, restored afterwards) so HF takes the
same starts as clapcomp: for key=None the documented rule applied to HF's *own* ranges (first of
the front range, middle element of the middle range, last of the back range; crop at 0); for a
key, the starts clapcomp drew, each asserted to lie in the range HF offers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import ClapFeatureExtractor
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

from clapcomp import audio
from clapcomp.models.configs import AudioConfig

SR = 48_000
ATOL_DB = 1e-4  # measured max |ours - HF| on broadband audio: ~1e-5 dB (unfused), ~4e-5 dB (fused)


def _extractor(fusion: bool) -> ClapFeatureExtractor:
    return ClapFeatureExtractor(frequency_min=50, frequency_max=14_000, truncation="fusion" if fusion else "rand_trunc")


def _noise(seconds: float, seed: int) -> np.ndarray:
    """Broadband test audio: white noise under a slow amplitude envelope, float32."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    envelope = 0.05 + 0.3 * np.abs(np.sin(np.linspace(0, 7, n)))
    return (envelope * rng.standard_normal(n)).astype(np.float32)


class _HFRandom:
    """Stands in for np.random.randint / np.random.choice inside HF's extractor."""

    def __init__(self, choices=None, crops=None):
        self.choices = list(choices) if choices is not None else None  # chunk starts, in call order
        self.crops = list(crops) if crops is not None else None  # crop starts of the long clips
        self.part = 0  # key=None rule: HF asks front, middle, back in turn

    def randint(self, low, high=None, size=None):
        if self.crops is None:
            return 0  # crop at the front; in fusion mode the "flag one clip" quirk picks clip 0
        pick = int(self.crops.pop(0))
        assert low <= pick < high, f"clapcomp crop {pick} outside HF's range [{low}, {high})"
        return pick

    def choice(self, values):
        values = list(values)
        if self.choices is None:  # clapcomp's key=None rule on HF's own range
            part, self.part = self.part, (self.part + 1) % 3
            return [values[0], values[len(values) // 2], values[-1]][part]
        pick = int(self.choices.pop(0))
        assert pick in values, f"clapcomp start {pick} outside HF's range {values[0]}..{values[-1]}"
        return pick


def _hf_features(monkeypatch, clips, fusion, hf_random):
    monkeypatch.setattr(np.random, "randint", hf_random.randint)
    monkeypatch.setattr(np.random, "choice", hf_random.choice)
    out = _extractor(fusion)(clips, sampling_rate=SR, return_tensors="np")
    monkeypatch.undo()
    return out["input_features"], out["is_longer"][:, 0]


def _ours(clips, cfg, key=None):
    waveform, lengths = audio.prepare_waveforms(clips, SR, cfg)
    mel, longer = jax.jit(lambda w, n, k: audio.features(w, n, cfg, key=k))(waveform, lengths, key)
    return np.asarray(mel), np.asarray(longer), lengths


@pytest.mark.parametrize("mel_scale,norm", [("htk", None), ("slaney", "slaney")])
def test_mel_filter_bank_matches_hf(mel_scale, norm):
    ours = audio.mel_filter_bank(513, 64, 50.0, 14_000.0, SR, mel_scale)
    ref = hf_mel_filter_bank(513, 64, 50.0, 14_000.0, SR, norm=norm, mel_scale=mel_scale)
    assert ours.dtype == np.float64 and ours.shape == (513, 64)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_filter_banks_follow_hf_extractor_per_mode():
    fe = _extractor(True)
    cfg = AudioConfig()
    _, htk = audio._constants(cfg, "htk")
    _, slaney = audio._constants(cfg, "slaney")
    np.testing.assert_allclose(htk, fe.mel_filters, rtol=1e-6)
    np.testing.assert_allclose(slaney, fe.mel_filters_slaney, rtol=1e-6)


@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
def test_log_mel_matches_hf_spectrogram(mel_scale):
    fe, cfg = _extractor(False), AudioConfig()
    filters = fe.mel_filters if mel_scale == "htk" else fe.mel_filters_slaney
    clips = np.stack([_noise(1.3, 1), _noise(1.3, 2)])
    ours = np.asarray(jax.jit(lambda x: audio.log_mel(x, cfg, mel_scale=mel_scale))(clips))
    assert ours.shape == (2, clips.shape[1] // 480 + 1, 64)
    for b in range(2):
        ref = fe._np_extract_fbank_features(clips[b].astype(np.float64), filters)
        np.testing.assert_allclose(ours[b], ref, rtol=0, atol=ATOL_DB)


def test_log_mel_tonal_audio_within_float32_floor():
    """A pure tone: HF FFTs in float64, we in float32, whose rounding floor sits ~140 dB under
    the loudest bin; where HF's band is within 100 dB of the frame's loudest band we agree to
    1e-2 dB (measured ~3e-3), and everything stays within 0.1 dB."""
    fe, cfg = _extractor(False), AudioConfig()
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)
    ours = np.asarray(audio.log_mel(jnp.asarray(tone[None]), cfg, mel_scale="slaney"))[0]
    ref = fe._np_extract_fbank_features(tone.astype(np.float64), fe.mel_filters_slaney)
    near = ref >= ref.max(axis=1, keepdims=True) - 100
    np.testing.assert_allclose(ours[near], ref[near], rtol=0, atol=1e-2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0.1)


# Lengths in samples: 3 s (tiled 3 times, then zero-padded), exactly 10 s, 10 s + 100 samples
# (long, but its mel still has 1001 frames: HF's corner case), 17 s (fused global resize by 1701/1001).
LENGTHS = {"3s": 3 * SR, "10s": 10 * SR, "10s+100": 10 * SR + 100, "17s": 17 * SR}
BATCHES = [("3s",), ("10s",), ("17s",), ("3s", "10s", "17s"), ("17s", "10s+100", "3s")]


@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("names", BATCHES, ids=["-".join(b) for b in BATCHES])
def test_features_match_hf_deterministic(monkeypatch, fusion, names):
    clips = [_noise(LENGTHS[n] / SR, seed) for seed, n in enumerate(names)]
    cfg = AudioConfig(fusion=fusion)
    mel, longer, lengths = _ours(clips, cfg)
    ref, ref_longer = _hf_features(monkeypatch, clips, fusion, _HFRandom())
    assert mel.shape == ref.shape == (len(clips), 4 if fusion else 1, 1001, 64)
    np.testing.assert_allclose(mel, ref, rtol=0, atol=ATOL_DB)
    expected_longer = lengths // 480 + 1 > 1001 if fusion else lengths > 480_000
    np.testing.assert_array_equal(longer, expected_longer)
    if fusion and not expected_longer.any():
        # HF flags one random clip of an all-short fused batch as longer; clapcomp does not.
        assert ref_longer.sum() == 1
    else:
        np.testing.assert_array_equal(longer, ref_longer)


@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
def test_features_match_hf_with_random_starts(monkeypatch, fusion):
    clips = [_noise(17, 0), _noise(3, 1), _noise(12.3, 2)]
    cfg = AudioConfig(fusion=fusion)
    key = jax.random.key(7)
    mel, _, lengths = _ours(clips, cfg, key)
    if fusion:
        starts = np.asarray(audio.fusion_chunk_starts(lengths, cfg, key))
        long = lengths > cfg.clip_samples
        hf_random = _HFRandom(starts[long].ravel())  # HF calls choice only for long clips
        assert (starts[long] > 0).any()
    else:
        offsets = np.asarray(audio.crop_offsets(lengths, cfg, key))
        assert offsets[0] > 0 and offsets[1] == 0 and offsets[2] > 0
        hf_random = _HFRandom(crops=offsets[lengths > cfg.clip_samples])  # HF draws for long clips
    ref, _ = _hf_features(monkeypatch, clips, fusion, hf_random)
    np.testing.assert_allclose(mel, ref, rtol=0, atol=ATOL_DB)


def test_fusion_chunk_starts_split_like_numpy_array_split():
    cfg = AudioConfig(fusion=True)
    lengths = np.array([3 * SR, 10 * SR + 479, 10 * SR + 480, 10 * SR + 960, 10 * SR + 1440, 17 * SR])
    starts = np.asarray(audio.fusion_chunk_starts(lengths, cfg))
    for length, got in zip(lengths, starts, strict=True):
        n = max(length, cfg.clip_samples) // 480 + 1 - 1001 + 1
        parts = [list(p) or [0] for p in np.array_split(np.arange(n), 3)]
        assert list(got) == [parts[0][0], parts[1][len(parts[1]) // 2], parts[2][-1]]


def test_features_deterministic_and_batch_independent():
    cfg = AudioConfig(fusion=True)
    clips = [_noise(12, 3), _noise(4, 4)]
    mel_a, longer_a, _ = _ours(clips, cfg)
    mel_b, _, _ = _ours(clips, cfg)
    np.testing.assert_array_equal(mel_a, mel_b)
    alone, longer_alone, _ = _ours(clips[1:], cfg)  # padded to 10 s instead of 20 s
    np.testing.assert_allclose(alone[0], mel_a[1], rtol=0, atol=1e-5)
    assert list(longer_a) == [True, False] and list(longer_alone) == [False]


@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
def test_keys_change_crops_of_long_audio_only(fusion):
    cfg = AudioConfig(fusion=fusion)
    clips = [_noise(13, 5), _noise(5, 6)]
    mel_1, _, _ = _ours(clips, cfg, jax.random.key(1))
    mel_1b, _, _ = _ours(clips, cfg, jax.random.key(1))
    mel_2, _, _ = _ours(clips, cfg, jax.random.key(2))
    np.testing.assert_array_equal(mel_1, mel_1b)
    assert np.abs(mel_1[0] - mel_2[0]).max() > 1.0  # different crop / chunks of the long clip
    np.testing.assert_array_equal(mel_1[1], mel_2[1])  # the short clip has nothing to draw
    if fusion:  # the global view does not depend on the key either
        np.testing.assert_array_equal(mel_1[0, 0], mel_2[0, 0])


def test_prepare_waveforms_pads_and_reports_lengths():
    cfg = AudioConfig()
    clips = [np.ones(100, np.float32), np.ones(480_001, np.float64)]
    waveform, lengths = audio.prepare_waveforms(clips, SR, cfg)
    assert waveform.dtype == np.float32 and lengths.dtype == np.int32
    assert waveform.shape == (2, 960_000) and list(lengths) == [100, 480_001]
    assert waveform[0, :100].sum() == 100 and not waveform[0, 100:].any()
    batch, lengths = audio.prepare_waveforms(np.zeros((3, 1000), np.float32), SR, cfg)
    assert batch.shape == (3, 480_000) and list(lengths) == [1000] * 3


def test_prepare_waveforms_resamples_keeping_frequency():
    cfg = AudioConfig()
    t = np.arange(44_100) / 44_100
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    waveform, lengths = audio.prepare_waveforms([sine], 44_100, cfg)
    assert lengths[0] == 48_000
    x = waveform[0, :48_000].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    assert np.argmax(spectrum) == 1000  # bins are 1 Hz apart for 1 s at 48 kHz
    assert abs(np.abs(x[1000:-1000]).max() - 0.5) < 5e-3


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros(1000, np.float32), r"shape \(1000,\).*batch \[B, T\]"),
        (np.zeros((2, 2, 100), np.float32), r"shape \(2, 2, 100\)"),
        ([np.zeros(10, np.float32), np.zeros((100, 2), np.float32)], r"clip 1 has shape \(100, 2\).*mono"),
        ([np.zeros(10, np.float32), np.zeros(0, np.float32)], r"clip 1 is empty"),
        ([], r"empty batch"),
        ([np.zeros(10, np.int16)], r"clip 0 has dtype int16"),
    ],
)
def test_prepare_waveforms_rejects_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        audio.prepare_waveforms(bad, SR, AudioConfig())


@pytest.mark.parametrize("value,name", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_prepare_waveforms_rejects_non_finite(value, name):
    clips = np.zeros((3, 2000), np.float32)
    clips[2, 1234] = value
    with pytest.raises(ValueError, match=rf"clip 2 has {name} at sample 1234"):
        audio.prepare_waveforms(clips, 44_100, AudioConfig())


def test_spec_augment_masks_documented_stripes():
    rng = np.random.default_rng(0)
    mel = jnp.asarray(rng.uniform(1, 2, (64, 2, 1001, 64)).astype(np.float32))
    out = np.asarray(jax.jit(audio.spec_augment)(mel, jax.random.key(3)))
    zero = out == 0
    np.testing.assert_array_equal(out[~zero], np.asarray(mel)[~zero])  # the rest is untouched
    np.testing.assert_array_equal(zero[:, 0], zero[:, 1])  # same stripes in every channel
    time_drop = zero[:, 0].all(axis=2)  # [B, F] frames zeroed across all mels
    freq_drop = zero[:, 0].all(axis=1)  # [B, M]
    np.testing.assert_array_equal(zero[:, 0], time_drop[:, :, None] | freq_drop[:, None, :])
    for drop, width in [(time_drop, 64), (freq_drop, 8)]:
        counts = drop.sum(axis=1)
        runs = (np.diff(drop.astype(int), axis=1, prepend=0) == 1).sum(axis=1)
        assert counts.max() <= 2 * (width - 1) and runs.max() <= 2  # two stripes of < width
        assert counts.max() > width - 1  # both stripes are used ...
        assert counts.mean() > 0.5 * (width - 1)  # ... with widths spread over [0, width)
    again = np.asarray(audio.spec_augment(mel, jax.random.key(3)))
    np.testing.assert_array_equal(out, again)
    other = np.asarray(audio.spec_augment(mel, jax.random.key(4)))
    assert (other != out).any()


def test_global_resize_matches_torch_bilinear():
    """The fused global view is torch's bilinear resize (align_corners=False) of the whole mel:
    checked over many lengths, where a 1-ulp slip in the source index would show."""
    import torch

    rng = np.random.default_rng(0)
    totals = np.array([1001, 1002, 1234, 1701, 2999, 4321], np.int32)
    mel = (10 * rng.standard_normal((len(totals), 4400, 3))).astype(np.float32)
    ours = np.asarray(jax.jit(audio._resize_frames, static_argnums=2)(mel, totals, 1001))
    for b, total in enumerate(totals):
        x = torch.from_numpy(mel[b, :total][None, None])
        ref = torch.nn.functional.interpolate(x, size=[1001, 3], mode="bilinear", align_corners=False)
        np.testing.assert_allclose(ours[b], ref[0, 0].numpy(), rtol=0, atol=1e-5)


def _htk_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


@pytest.mark.parametrize("essentia", [True, False])
def test_aisfx_front_end_options_match_a_numpy_float64_reference(essentia):
    """AISFX_AUDIO = aisfx's Essentia spectrogram (frames centred with zeros, symmetric Hann, 96 HTK
    mels with triangles linear in mel and unit-sum weights, log10(1e4 p + 1), min-max range); its
    librosa variant (peak-normalised audio, periodic Hann, triangles linear in Hz). Written out in
    NumPy float64 on a loud decaying noise and a quiet clip shorter than the clip (repeat-padded)."""
    import dataclasses

    from clapcomp.audio import AISFX_AUDIO

    cfg = AISFX_AUDIO if essentia else dataclasses.replace(
        AISFX_AUDIO, peak_normalize=True, window="periodic", mel_weighting="hz")  # fmt: skip
    n = cfg.clip_samples
    rng = np.random.default_rng(5)
    clips = [0.3 * rng.standard_normal(n) * np.exp(-np.arange(n) / 20_000), 0.05 * rng.standard_normal(n // 2 + 333)]
    clips = [np.clip(c, -1, 1).astype(np.float32) for c in clips]
    wave, lengths = audio.prepare_waveforms(clips, cfg.sample_rate, cfg)
    ours = np.asarray(audio.features(jnp.asarray(wave), jnp.asarray(lengths), cfg)[0][:, 0])
    assert ours.shape == (2, 100, 96)

    edges = 700.0 * (10.0 ** (np.linspace(0.0, _htk_mel(22_050.0), 98) / 2595.0) - 1.0)
    bins = np.linspace(0.0, 22_050.0, 1025)[:, None]
    warp = _htk_mel if essentia else (lambda f: f)
    lo, mid, hi, at = warp(edges[:-2]), warp(edges[1:-1]), warp(edges[2:]), warp(bins)
    filters = np.maximum(0.0, np.minimum((at - lo) / (mid - lo), (hi - at) / (hi - mid)))
    filters = filters / filters.sum(axis=0, keepdims=True)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / (2047 if essentia else 2048))
    for b, clip in enumerate(clips):
        x = clip.astype(np.float64)
        x = x if essentia else x / np.abs(x).max()
        x = np.resize(x, (n // x.size) * x.size)  # HF repeat-pad: whole repeats, then zeros
        x = np.pad(x, (1024, 1024 + n - x.size))
        frames = np.stack([x[t * 1024 : t * 1024 + 2048] for t in range(100)])
        power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
        ref = np.log10(1e4 * power @ filters + 1.0) / 9.457798957824707
        np.testing.assert_allclose(ours[b], ref, rtol=0, atol=1e-4)


def test_mel_filter_bank_unit_sum_and_unknown_norm():
    bank = audio.mel_filter_bank(1025, 96, 0.0, 22_050.0, 44_100, "htk", "unit_sum")
    np.testing.assert_allclose(bank.sum(axis=0), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown mel norm 'l2'"):
        audio.mel_filter_bank(1025, 96, 0.0, 22_050.0, 44_100, "htk", "l2")
    with pytest.raises(ValueError, match="unknown mel weighting 'bark'"):
        audio.mel_filter_bank(1025, 96, 0.0, 22_050.0, 44_100, "htk", "unit_sum", "bark")


@pytest.mark.parametrize("padding", ["repeatpad", "pad"])
def test_short_clip_padding_matches_hf(padding):
    """HF's `padding="repeatpad"` (whole repeats, then zeros) and `"pad"` (zeros after the clip)."""
    import dataclasses

    fe, cfg = _extractor(False), dataclasses.replace(AudioConfig(), padding=padding)
    clip = _noise(3, 8)
    mel, _, _ = _ours([clip], cfg)
    ref = fe([clip], sampling_rate=SR, padding=padding, return_tensors="np")["input_features"]
    np.testing.assert_allclose(mel, ref, rtol=0, atol=ATOL_DB)
    late = mel[0, 0, 400:]  # 4 s on: repeated audio or the silence floor
    assert (late.max() < -90) == (padding == "pad")
    with pytest.raises(ValueError, match="padding must be 'repeatpad' or 'pad', got 'wrap'"):
        _ours([clip], dataclasses.replace(cfg, padding="wrap"))
