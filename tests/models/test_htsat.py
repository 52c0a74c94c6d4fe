"""HTSAT audio tower: parity with HF transformers `ClapAudioModel` (random weights, offline) and the
HF <-> clapcomp weight mapping; training mode against HF's own training-mode forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from clapcomp.convert.hf import htsat_config_from_hf, htsat_from_hf, htsat_to_hf
from clapcomp.models.htsat import HTSAT

PREFIX = "audio_encoder."  # ClapAudioModel state-dict names (ClapModel: "audio_model.audio_encoder.")
SMALL = dict(depths=[2, 2], num_attention_heads=[2, 4], patch_embeds_hidden_size=32, hidden_size=64)


def hf_model(fusion: bool, seed: int = 0, **overrides) -> transformers.ClapAudioModel:
    """HF ClapAudioModel with every parameter and BatchNorm statistic randomised (HF init is near-trivial)."""
    config = transformers.ClapAudioConfig(enable_fusion=fusion, **overrides)
    model = transformers.ClapAudioModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.3))
            if name.endswith("norm.weight") or "layernorm" in name:
                p.add_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


def state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def ours_from(model, dtype=jnp.float32) -> HTSAT:
    cfg = htsat_config_from_hf(model.config.to_dict())
    htsat = HTSAT(cfg, dtype=dtype, rngs=nnx.Rngs(1))
    nnx.update(htsat, htsat_from_hf(state_dict(model), cfg, PREFIX))
    return htsat


def hf_forward(model, mel, is_longer):
    """(pooler_output [B, H], final normed tokens [B, L, H]) from HF, tokens via a hook on the final norm."""
    seen = []
    hook = model.audio_encoder.norm.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().numpy()))
    try:
        with torch.no_grad():
            out = model(input_features=torch.from_numpy(mel), is_longer=torch.from_numpy(is_longer)[:, None])
    finally:
        hook.remove()
    return out.pooler_output.numpy(), seen[0]


@nnx.jit(static_argnames="train")
def run(htsat, mel, is_longer, key=None, train=False):
    return htsat(mel, is_longer, train=train, key=key), htsat.tokens(mel, is_longer)


def inputs(batch: int, fusion: bool, seed: int = 0):
    g = np.random.default_rng(seed)
    mel = (g.normal(size=(batch, 4 if fusion else 1, 1001, 64)) * 3 - 20).astype(np.float32)
    is_longer = np.array([True, False, True, True][:batch])
    return mel, is_longer


def check_parity(model, batch: int, fusion: bool):
    mel, is_longer = inputs(batch, fusion)
    ref_pooled, ref_tokens = hf_forward(model, mel, is_longer)
    htsat = ours_from(model)
    pooled, tokens = run(htsat, jnp.asarray(mel), jnp.asarray(is_longer))
    tokens = np.asarray(tokens).reshape(ref_tokens.shape)  # our [B, H', W', C] is HF's row-major token order
    pooled_err, token_err = np.abs(np.asarray(pooled) - ref_pooled).max(), np.abs(tokens - ref_tokens).max()
    print(f"fusion={fusion} batch={batch}: pooled max abs {pooled_err:.2e}, tokens max abs {token_err:.2e}")
    assert pooled.shape == (batch, htsat.cfg.hidden_size) and pooled.dtype == jnp.float32
    assert pooled_err <= 1e-4 and token_err <= 1e-4
    assert np.abs(ref_tokens).std() > 0.3  # the tokens are far from constant: the comparison has teeth


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_parity_small_config(fusion, batch):
    check_parity(hf_model(fusion, **SMALL), batch, fusion)


@pytest.mark.slow  # full size: the small configs above run the same code in `make test-fast`
def test_parity_htsat_tiny_fused():
    model = hf_model(True)  # HF defaults: HTSAT-tiny, depths [2, 2, 6, 2], embed 96, window 8
    assert tuple(model.config.depths) == (2, 2, 6, 2) and model.config.patch_embeds_hidden_size == 96
    check_parity(model, 1, True)


@pytest.mark.parametrize("segments", [2, 4])
def test_time_segments_pool_hf_unfolded_time_sequence(segments):
    """time_segments = S: HF's `last_hidden_state` [B, C, rows, T] (the grid unfolded chunk after chunk
    along time) averaged over rows, cut into S spans of T / S steps, each averaged -> [B, S * C]."""
    model = hf_model(False, **SMALL)
    mel, is_longer = inputs(2, False, seed=5)
    mel[:, :, :300] += 15  # a loud first part: the time spans differ
    with torch.no_grad():
        unfolded = model(input_features=torch.from_numpy(mel), is_longer=torch.from_numpy(is_longer)[:, None])
    unfolded = unfolded.last_hidden_state.numpy().astype(np.float64)  # [B, C, rows, T]
    b, c, _, t = unfolded.shape
    want = unfolded.mean(2).reshape(b, c, segments, t // segments).mean(-1).transpose(0, 2, 1).reshape(b, -1)
    htsat = ours_from(model)
    htsat = HTSAT(dataclasses.replace(htsat.cfg, time_segments=segments), rngs=nnx.Rngs(1))
    nnx.update(htsat, htsat_from_hf(state_dict(model), htsat.cfg, PREFIX))
    got = np.asarray(htsat(jnp.asarray(mel), jnp.asarray(is_longer)))
    assert got.shape == (2, segments * c) == (2, htsat.cfg.pooled_size)
    np.testing.assert_allclose(got, want, atol=1e-4)
    first, last = got[:, :c], got[:, -c:]
    assert np.abs(first - last).max() > 0.02  # the spans differ (>> atol): the comparison has teeth
    with pytest.raises(ValueError, match="time_segments=3 must divide the 128 time steps"):
        HTSAT(dataclasses.replace(htsat.cfg, time_segments=3), rngs=nnx.Rngs(0))


def test_mapping_round_trip_and_config():
    model = hf_model(True, **SMALL)
    sd = state_dict(model)
    cfg = htsat_config_from_hf(model.config.to_dict())
    assert (cfg.depths, cfg.num_heads, cfg.embed_dim, cfg.hidden_size) == ((2, 2), (2, 4), 32, 64)
    assert cfg.enable_fusion and cfg.drop_rate == model.config.hidden_dropout_prob
    back = htsat_to_hf(htsat_from_hf(sd, cfg, PREFIX), cfg, PREFIX)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    # from a module, and with the ClapModel prefix
    htsat = ours_from(model)
    clap_names = htsat_to_hf(htsat, cfg, "audio_model.audio_encoder.")
    assert set(clap_names) == {"audio_model." + k for k in sd}


def test_mapping_errors():
    model = hf_model(False, **SMALL)
    cfg = htsat_config_from_hf(model.config.to_dict())
    sd = state_dict(model)
    with pytest.raises(ValueError, match="no place"):
        htsat_from_hf({**sd, PREFIX + "extra.weight": np.zeros(3)}, cfg, PREFIX)
    with pytest.raises(KeyError, match="lacks"):
        htsat_from_hf({k: v for k, v in sd.items() if "query" not in k}, cfg, PREFIX)
    bad = dict(sd)
    bad[PREFIX + "norm.weight"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="shape"):
        htsat_from_hf(bad, cfg, PREFIX)
    wide = dataclasses.replace(cfg, embed_dim=48)  # weights of another width
    with pytest.raises(ValueError, match="shape"):
        htsat_from_hf(sd, wide, PREFIX)
    with pytest.raises(ValueError, match="hidden_size"):
        htsat_config_from_hf({**model.config.to_dict(), "hidden_size": 768})
    with pytest.raises(ValueError, match="fusion_type"):
        htsat_config_from_hf({"enable_fusion": True, "fusion_type": "channel_map"})


def bn_update(old: np.ndarray, x: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
    """Expected running (mean, biased var) after one training step with PyTorch momentum 0.1."""
    return 0.9 * old[0] + 0.1 * x.mean(axes, dtype=np.float64), 0.9 * old[1] + 0.1 * x.var(axes, dtype=np.float64)


def test_train_mode_matches_hf_training_forward():
    """Without dropout / drop-path / SpecAugment, train=True is HF's model.train() forward (batch stats,
    AFF statistics over the is_longer rows only); running statistics move as PyTorch's would."""
    zero = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    model = hf_model(True, **SMALL, **zero)
    htsat = ours_from(model)
    htsat.cfg = dataclasses.replace(htsat.cfg, spec_augment=False)
    mel, is_longer = inputs(3, True)
    old_bn0 = (np.asarray(htsat.bn0.mean[...]), np.asarray(htsat.bn0.var[...]))
    aff = htsat.patch_embed.aff
    old_aff = np.asarray(aff.local_bn1.mean[...])
    model.train()
    ref, _ = hf_forward(model, mel, is_longer)
    pooled, _ = run(htsat, jnp.asarray(mel), jnp.asarray(is_longer), jax.random.key(0), train=True)
    print(f"train mode: pooled max abs {np.abs(np.asarray(pooled) - ref).max():.2e}")
    assert np.abs(np.asarray(pooled) - ref).max() <= 1e-4
    want_mean, want_var = bn_update(old_bn0, mel, (0, 1, 2))
    np.testing.assert_allclose(htsat.bn0.mean[...], want_mean, atol=1e-5)
    np.testing.assert_allclose(htsat.bn0.var[...], want_var, rtol=1e-4)
    hf_aff = model.audio_encoder.patch_embed.fusion_model.local_att[1].running_mean.numpy()
    np.testing.assert_allclose(aff.local_bn1.mean[...], hf_aff, atol=1e-5)
    assert not np.allclose(aff.local_bn1.mean[...], old_aff)
    # a batch with no longer clip leaves the AFF statistics alone
    before = np.asarray(aff.global_bn2.var[...])
    run(htsat, jnp.asarray(mel), jnp.zeros(3, bool), jax.random.key(1), train=True)
    np.testing.assert_array_equal(aff.global_bn2.var[...], before)
    assert np.isfinite(np.asarray(htsat.bn0.mean[...])).all()


def test_train_randomness_comes_from_key():
    model = hf_model(True, **SMALL, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, drop_path_rate=0.2)
    htsat = ours_from(model)
    mel, is_longer = jnp.asarray(inputs(2, True)[0]), jnp.array([True, False])
    stats = nnx.state(htsat, nnx.BatchStat)

    def train(key):
        nnx.update(htsat, stats)  # same running statistics before every call
        return np.asarray(run(htsat, mel, is_longer, key, train=True)[0])

    a, b, c = train(jax.random.key(3)), train(jax.random.key(3)), train(jax.random.key(4))
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3
    assert np.isfinite(a).all()
    e1, e2 = run(htsat, mel, is_longer)[0], run(htsat, mel, is_longer)[0]
    assert np.array_equal(e1, e2)
    with pytest.raises(ValueError, match="key"):
        htsat(mel, is_longer, train=True)


def test_train_gradients_are_finite_without_longer_clips():
    """A fused batch with no is_longer row must not poison gradients through the (unused) AFF statistics."""
    htsat = ours_from(hf_model(True, **SMALL))
    mel = jnp.asarray(inputs(2, True)[0])

    @nnx.jit
    def grads(model):
        loss = lambda m: jnp.sum(m(mel, jnp.zeros(2, bool), train=True, key=jax.random.key(0)) ** 2)
        return nnx.grad(loss)(model)

    leaves = jax.tree.leaves(grads(htsat))
    assert leaves and all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(nnx.state(htsat, nnx.BatchStat)))


def test_bfloat16_compute_is_close_to_float32():
    model = hf_model(False, **SMALL)
    mel, is_longer = inputs(2, False)
    f32 = np.asarray(run(ours_from(model), jnp.asarray(mel), jnp.asarray(is_longer))[1])
    htsat = ours_from(model, dtype=jnp.bfloat16)
    assert htsat.stages[0].blocks[0].query.kernel[...].dtype == jnp.float32  # parameters stay float32
    pooled, tokens = run(htsat, jnp.asarray(mel), jnp.asarray(is_longer))
    assert pooled.dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(tokens) - f32) / np.linalg.norm(f32)
    print(f"bf16 vs f32 tokens: relative error {rel:.3f}")
    assert rel < 0.05


def test_bad_input_is_refused():
    htsat = HTSAT(htsat_config_from_hf(transformers.ClapAudioConfig(**SMALL).to_dict()), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="enable_fusion"):
        htsat(jnp.zeros((1, 4, 1001, 64)), jnp.zeros(1, bool))
    with pytest.raises(ValueError, match="does not fit"):
        htsat(jnp.zeros((1, 1, 1100, 64)), jnp.zeros(1, bool))
