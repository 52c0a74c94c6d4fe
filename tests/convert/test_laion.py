"""LAION-CLAP `.pt` import against the `laion-clap` package's own model class (random init), built
offline and small by tests/laion_reference.py. Nothing in clapcomp is patched.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import clapcomp
from clapcomp.convert.hf import TEXT_BUFFERS, hf_config_from_clap
from clapcomp.convert.laion import DROPPED, laion_config, laion_to_hf, load_laion_clap, read_laion_checkpoint
from clapcomp.models.configs import AudioConfig

torch = pytest.importorskip("torch")
from laion_reference import laion_builder  # noqa: E402  tests/laion_reference.py (pytest pythonpath = tests)

RATE = 48_000


@pytest.fixture(scope="module")
def laion():
    """`make(fusion, ape) -> eval-mode laion_clap CLAP` (tests/laion_reference.py)."""
    return laion_builder()


def _tokens(rng):
    ids = rng.integers(3, 300, (3, 12))
    ids[:, 0], mask = 0, np.ones_like(ids)
    ids[1, 7], ids[1, 8:], mask[1, 8:] = 2, 1, 0  # </s> then padding
    return ids, mask


def test_unfused_checkpoint_imports_completely_with_equal_embeddings(tmp_path, laion):
    import transformers

    ref = laion(False)
    state = ref.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "laion.pt")
    tensors = read_laion_checkpoint(tmp_path / "laion.pt")
    assert set(tensors) == set(state)  # "module." stripped
    cfg, model = load_laion_clap(tmp_path / "laion.pt", audio=AudioConfig(clip_seconds=1))
    h, t = cfg.htsat, cfg.text
    assert (h.embed_dim, h.depths, h.num_heads, h.window_size, h.spec_size, h.enable_fusion) == (
        8,
        (2, 1),
        (1, 2),
        4,
        128,
        False,
    )
    assert (t.num_layers, t.hidden_size, t.vocab_size, t.max_position_embeddings, cfg.projection_dim) == (
        1,
        768,
        300,
        40,
        12,
    )
    np.testing.assert_allclose(float(model.logit_scale.get_value()), 2.5)

    # Every key is accounted for: dropped ones are only the documented kinds, the rest land on HF names
    # that transformers' own ClapModel takes with no learned tensor missing or left over.
    mapped = laion_to_hf(tensors)
    dropped = {k for k in tensors if DROPPED.match(k)}
    assert sorted({_category(k) for k in dropped}) == ["attn_mask", "audio_transform", "head", "logmel_extractor",
                                                       "spectrogram_extractor", "text_transform", "tscam_conv"]  # fmt: skip
    n_qkv = sum(k.endswith((".attn.qkv.weight", ".attn.qkv.bias")) for k in tensors)
    assert len(mapped) == len(tensors) - len(dropped) + 2 * n_qkv
    hf = transformers.ClapModel(transformers.ClapConfig(**hf_config_from_clap(cfg)))
    result = hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in mapped.items()}, strict=False)
    buffers = {f"text_model.{b}" for b in TEXT_BUFFERS}  # HF's position/token-type id buffers: no learned state
    assert set(result.missing_keys) <= buffers and not result.unexpected_keys, result

    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)  # exactly one clip: no padding/cropping
    with torch.no_grad():
        want = ref.get_audio_embedding([{"waveform": torch.from_numpy(w)} for w in waveform]).numpy()
    lengths = jnp.full((2,), RATE, jnp.int32)
    np.testing.assert_allclose(np.asarray(model.embed_audio(jnp.asarray(waveform), lengths)), want, atol=1e-4)

    ids, mask = _tokens(rng)
    with torch.no_grad():
        want = ref.get_text_embedding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}).numpy()
    got = model.embed_tokens(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

    clap = clapcomp.load(tmp_path / "laion.pt")  # the public entry point takes the .pt as is
    assert clap.tokenizer is None and clap.config.text == cfg.text
    np.testing.assert_allclose(clap.embed_tokens(ids, mask), want, atol=1e-4)


def test_fused_bare_state_dict_matches_on_the_same_mel(tmp_path, laion):
    ref = laion(True)
    torch.save(ref.state_dict(), tmp_path / "fused.pt")
    cfg, model = load_laion_clap(tmp_path / "fused.pt", audio=AudioConfig(clip_seconds=1))
    assert cfg.htsat.enable_fusion and cfg.audio.fusion
    rng = np.random.default_rng(1)
    mel = (rng.standard_normal((2, 4, 101, 64)) * 10 - 30).astype(np.float32)
    longer = np.array([True, False])
    with torch.no_grad():
        want = ref.get_audio_embedding(
            [{"mel_fusion": torch.from_numpy(m), "longer": torch.tensor(b)} for m, b in zip(mel, longer, strict=True)]
        ).numpy()
    np.testing.assert_allclose(np.asarray(model.embed_mel(jnp.asarray(mel), jnp.asarray(longer))), want, atol=1e-4)


def test_absolute_position_embedding_imports_and_refuses_hf_export(tmp_path, laion):
    ref = laion(False, ape=True)
    with torch.no_grad():  # larger than its init so a misplaced grid cell would show
        ref.audio_branch.absolute_pos_embed.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    torch.save(ref.state_dict(), tmp_path / "ape.pt")
    cfg, model = load_laion_clap(tmp_path / "ape.pt", audio=AudioConfig(clip_seconds=1))
    assert cfg.htsat.ape and model.audio_tower.absolute_pos_embed.get_value().shape == (1, 32, 32, 8)
    rng = np.random.default_rng(2)
    waveform = (0.1 * rng.standard_normal((2, RATE))).astype(np.float32)
    with torch.no_grad():
        want = ref.get_audio_embedding([{"waveform": torch.from_numpy(w)} for w in waveform]).numpy()
    got = model.embed_audio(jnp.asarray(waveform), jnp.full((2,), RATE, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    with pytest.raises(ValueError, match="no absolute position embedding"):
        hf_config_from_clap(cfg)


def test_unknown_keys_and_other_towers_are_named(laion):
    tensors = {k: v.numpy() for k, v in laion(False).state_dict().items()}
    with pytest.raises(
        ValueError, match=r"2 LAION-CLAP tensors have no mapping: \['audio_branch.extra.weight', 'mystery'\]"
    ):
        laion_to_hf({**tensors, "mystery": np.zeros(1), "audio_branch.extra.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="no 'text_branch.embeddings.word_embeddings.weight'"):
        laion_config({k: v for k, v in tensors.items() if not k.startswith("text_branch.")})


def _category(key: str) -> str:
    parts = key.split(".")
    if parts[0] != "audio_branch":
        return parts[0]
    return "attn_mask" if parts[-1] == "attn_mask" else parts[1]
