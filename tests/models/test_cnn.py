"""The CNN audio tower: time-segment pooling against a NumPy float64 head on its own time map, the
tower as ClapModel's audio tower (inference, training, config round trip, export), and the errors a
user can cause. Parity with LAION-CLAP's and aisfx's PyTorch modules: tests/convert/test_panns.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clapcomp.convert.safetensors import load_exported, save_safetensors
from clapcomp.models.clap import ClapModel
from clapcomp.models.cnn import Cnn
from clapcomp.models.configs import AudioConfig, ClapConfig, CnnConfig, TextConfig

TINY = CnnConfig(n_mels=16, channels=(4, 8, 8), spec_augment=False)
FRONT = AudioConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, f_min=50.0, f_max=4000.0, clip_seconds=1.0)
TEXT = TextConfig(family="bert", vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                  max_position_embeddings=16, type_vocab_size=2, pad_token_id=0, pooling="mean")  # fmt: skip


def _reference_head(x: np.ndarray, tower: Cnn, segments: int) -> np.ndarray:
    """NumPy float64: time map [B, T, C] -> [B, S * C], the head on spans [floor(i T / S), floor((i+1) T / S))."""
    t = x.shape[1]
    out = []
    for i in range(segments):
        span = x[:, (i * t) // segments : ((i + 1) * t) // segments].astype(np.float64)
        if tower.cfg.head == "max":
            out.append(span.max(axis=1))
        else:
            w = np.asarray(tower.fc1.kernel[...], np.float64)
            b = np.asarray(tower.fc1.bias[...], np.float64)
            out.append(np.maximum((span.max(axis=1) + span.mean(axis=1)) @ w + b, 0.0))
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize("head,pool,segments", [("fc1", "avg", 1), ("fc1", "avg", 3), ("max", "max", 4)])
def test_time_segments_pool_each_span_of_the_time_map(head, pool, segments):
    cfg = dataclasses.replace(TINY, head=head, pool=pool, pool_last=pool == "avg", time_segments=segments)
    tower = Cnn(cfg, rngs=nnx.Rngs(0))
    mel = jax.random.normal(jax.random.key(1), (2, 1, 101, 16))
    x = np.asarray(tower.time_map(mel))
    assert x.shape == (2, 101 // tower.time_ratio, 8)
    ours = np.asarray(tower(mel))
    assert ours.shape == (2, cfg.pooled_size)
    np.testing.assert_allclose(ours, _reference_head(x, tower, segments), atol=1e-5, rtol=1e-5)


def test_segments_keep_order_that_the_pooled_embedding_loses():
    """A time map and its reversal: the same pooled embedding, different time-segment embeddings."""
    tower = Cnn(dataclasses.replace(TINY, time_segments=2), rngs=nnx.Rngs(0))
    x = np.asarray(tower.time_map(jax.random.normal(jax.random.key(2), (1, 1, 101, 16))))
    forward, backward = _reference_head(x, tower, 1), _reference_head(x[:, ::-1], tower, 1)
    np.testing.assert_allclose(forward, backward, rtol=1e-12)
    assert not np.allclose(_reference_head(x, tower, 2), _reference_head(x[:, ::-1], tower, 2))


def _clap(**cnn) -> ClapModel:
    cfg = ClapConfig(audio=FRONT, audio_tower="cnn", cnn=dataclasses.replace(TINY, **cnn), text=TEXT, projection_dim=8)
    return ClapModel(cfg, rngs=nnx.Rngs(0))


def test_clap_with_cnn_tower_embeds_trains_and_round_trips(tmp_path):
    model = _clap(time_segments=2, spec_augment=True)
    assert isinstance(model.audio_tower, Cnn) and model.audio_projection.linear1.kernel.shape == (16, 8)
    wave = jax.random.uniform(jax.random.key(3), (2, 8000), minval=-0.5, maxval=0.5)
    lengths = jnp.array([8000, 5000], jnp.int32)
    emb = np.asarray(model.embed_audio(wave, lengths))
    assert emb.shape == (2, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)

    before = np.asarray(model.audio_tower.bn0.mean[...])
    trained = np.asarray(model.embed_audio(wave, lengths, train=True, key=jax.random.key(4)))
    assert np.isfinite(trained).all() and not np.allclose(trained, emb)
    assert not np.allclose(np.asarray(model.audio_tower.bn0.mean[...]), before)  # batch statistics moved

    assert ClapConfig.from_dict(model.cfg.to_dict()) == model.cfg
    save_safetensors(model, model.cfg, tmp_path / "export")
    cfg, loaded = load_exported(tmp_path / "export")
    assert cfg == model.cfg
    again = np.asarray(loaded.embed_audio(wave, lengths))
    np.testing.assert_allclose(again, np.asarray(model.embed_audio(wave, lengths)), atol=1e-6)


def test_old_configs_default_to_htsat():
    d = ClapConfig().to_dict()
    del d["audio_tower"], d["cnn"]
    assert ClapConfig.from_dict(d).audio_tower == "htsat"


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(audio=dataclasses.replace(FRONT, fusion=True)), "fusion=False"),
        (dict(audio=dataclasses.replace(FRONT, n_mels=32)), "CnnConfig.n_mels=16"),
        (dict(audio_tower="panns"), "'htsat' or 'cnn'"),
        (dict(cnn=dataclasses.replace(TINY, kernel_size=7)), "kernel_size"),
    ],
)
def test_config_mistakes_are_named(change, match):
    cfg = ClapConfig(audio=FRONT, audio_tower="cnn", cnn=TINY, text=TEXT, projection_dim=8)
    cfg = dataclasses.replace(cfg, **change)
    with pytest.raises(ValueError, match=match):
        ClapModel(cfg, rngs=nnx.Rngs(0))


def test_too_many_segments_for_the_clip_says_what_to_do():
    tower = Cnn(dataclasses.replace(TINY, time_segments=20), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="time_segments=20 exceeds the 12 time steps"):
        tower(jnp.zeros((1, 1, 101, 16)))
    with pytest.raises(ValueError, match=r"expects mel \[B, 1, frames, 16\]"):
        tower(jnp.zeros((1, 4, 101, 16)))


def test_hf_export_refuses_the_cnn_tower(tmp_path):
    from clapcomp.export import save_hf

    model = _clap()
    with pytest.raises(ValueError, match="HTSAT audio tower only; this model's is 'cnn'"):
        save_hf(model, model.cfg, tmp_path / "hf")
