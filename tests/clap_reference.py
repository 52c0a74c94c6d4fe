"""HF transformers reference models for the CLAP parity tests (imported by path by the tests).

`hf_clap(...)` builds a `transformers.ClapModel` with small configs and randomised weights (every
tensor, BatchNorm statistics included, so each parameter matters), `save_hf_dir` writes it with
`save_pretrained` plus a small RoBERTa-style tokenizer.json, and `hf_audio_features` runs HF's
`ClapFeatureExtractor` with its random crop / chunk choices pinned to clapcomp's deterministic
inference choice (front crop; first / middle / last start of the front / middle / back third).
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import torch

SENTENCES = ["a dog barks twice", "rain falls on a tin roof", "a car passes by, then a horn honks", "birds sing"]
TEXT = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=80)  # fmt: skip
SMALL_AUDIO = dict(patch_embeds_hidden_size=8, depths=[1, 2], num_attention_heads=[2, 4], hidden_size=16)
TINY_AUDIO = dict(patch_embeds_hidden_size=96, depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32], hidden_size=768)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in), norm gains 1 + N(0, 0.2), biases N(0, 0.1), BatchNorm stats random
    (the mel BatchNorm around dB-scale statistics)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda shape: torch.randn(shape, generator=g)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point() or name.startswith("logit_scale"):
                continue
            if name.endswith("running_var"):
                value = (300.0 if "audio_encoder.batch_norm" in name else 1.0) * (
                    0.5 + torch.rand(t.shape, generator=g)
                )
            elif name.endswith("running_mean"):
                value = -40.0 + 5 * rand(t.shape) if "audio_encoder.batch_norm" in name else 0.1 * rand(t.shape)
            elif name.endswith("bias") or "bias_table" in name:
                value = 0.1 * rand(t.shape) if name.endswith("bias") else 0.5 * rand(t.shape)
            elif t.ndim == 1:
                value = 1.0 + 0.2 * rand(t.shape)
            else:
                value = rand(t.shape) / math.sqrt(max(1, t[0].numel()))
            t.copy_(value)


def hf_clap(audio: dict, *, fusion: bool, seed: int = 0):
    from transformers import ClapConfig, ClapModel

    cfg = ClapConfig(
        text_config=dict(TEXT),
        audio_config=dict(audio, enable_fusion=fusion, fusion_type="aff_2d" if fusion else None),
        projection_dim=24,
    )
    model = ClapModel(cfg).eval()
    randomise(model, seed)
    return model


def write_tokenizer(path: Path) -> None:
    """A byte-level BPE with RoBERTa's special tokens (<s>=0, <pad>=1, </s>=2) and post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT["vocab_size"], special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    tok.train_from_iterator(SENTENCES * 3, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(path))


def save_hf_dir(model, directory: Path, *, safe: bool = True, tokenizer: bool = True) -> Path:
    model.save_pretrained(str(directory), safe_serialization=safe)
    if tokenizer:
        write_tokenizer(directory / "tokenizer.json")
    return directory


def clips(seconds: list[float], seed: int = 0, rate: int = 48_000) -> list[np.ndarray]:
    """Deterministic test audio: a few sines + noise, float32."""
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        t = np.arange(int(s * rate)) / rate
        x = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 9000) * t) for _ in range(3))
        out.append((x + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def hf_audio_features(waveforms: list[np.ndarray], *, fusion: bool):
    """HF ClapFeatureExtractor output with clapcomp's deterministic crop / chunks and true is_longer."""
    from transformers import ClapFeatureExtractor

    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000)
    picks = iter([lambda r: r[0], lambda r: r[len(r) // 2], lambda r: r[-1]] * len(waveforms))
    with (
        mock.patch.object(np.random, "randint", lambda low, high=None: 0),
        mock.patch.object(np.random, "choice", lambda r: next(picks)(np.asarray(r))),
    ):
        out = fe(waveforms, sampling_rate=48_000, truncation="fusion" if fusion else "rand_trunc", return_tensors="pt")
    n_frames = fe.nb_max_samples // fe.hop_length + 1
    longer = [len(w) // fe.hop_length + 1 > n_frames if fusion else len(w) > fe.nb_max_samples for w in waveforms]
    return out["input_features"], torch.tensor(longer)[:, None]


def hf_audio_embeddings(model, waveforms: list[np.ndarray], *, fusion: bool) -> np.ndarray:
    features, is_longer = hf_audio_features(waveforms, fusion=fusion)
    with torch.no_grad():
        return model.get_audio_features(input_features=features, is_longer=is_longer).pooler_output.numpy()


def hf_text_embeddings(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.get_text_features(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    return out.pooler_output.numpy()


def save_small_hf_dir(directory: Path, *, fusion: bool = False, seed: int = 0) -> Path:
    """A small random `transformers.ClapModel` dir as `save_pretrained` writes it (HF's own dropout and
    drop-path defaults), with an 8 kHz / 1-s / 16-mel `ClapFeatureExtractor` and a tokenizer.json:
    the layout of laion/clap-htsat-*, at the tiny config's audio size."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    audio = dict(patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[1, 2], hidden_size=32,
                 num_mel_bins=16, spec_size=64, window_size=8, enable_fusion=fusion,
                 fusion_type="aff_2d" if fusion else None)  # fmt: skip
    model = ClapModel(ClapConfig(text_config=dict(TEXT), audio_config=audio, projection_dim=24)).eval()
    randomise(model, seed)
    save_hf_dir(model, directory)
    ClapFeatureExtractor(feature_size=16, sampling_rate=8000, hop_length=80, fft_window_size=256, max_length_s=1,
                         frequency_min=50, frequency_max=4000,
                         truncation="fusion" if fusion else "rand_trunc").save_pretrained(directory)  # fmt: skip
    return directory
