"""ClapModel (loaded from an HF ClapModel dir) vs HF `get_audio_features` from the same mel and
`get_text_features` from padded token ids; training-mode and dtype behaviour."""

from __future__ import annotations

import clap_reference as R  # tests/clap_reference.py (pytest pythonpath = tests)
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clapcomp.convert.hf import load_hf_clap
from clapcomp.models.clap import ClapModel, l2_normalize


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    hf = R.hf_clap(R.SMALL_AUDIO, fusion=True, seed=3)
    d = R.save_hf_dir(hf, tmp_path_factory.mktemp("hf_small"))
    cfg, model = load_hf_clap(d)
    return hf, cfg, model


def test_embed_mel_and_tokens_match_hf(small):
    hf, cfg, model = small
    waves = R.clips([3.0, 12.0], seed=1)
    features, is_longer = R.hf_audio_features(waves, fusion=True)
    expected = R.hf_audio_embeddings(hf, waves, fusion=True)
    embed_mel = nnx.jit(lambda m, mel, longer: m.embed_mel(mel, longer))
    ours = np.asarray(embed_mel(model, jnp.asarray(features.numpy()), jnp.asarray(is_longer.numpy()[:, 0])))
    assert ours.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)

    ids = np.array([[0, 17, 45, 99, 2, 1, 1], [0, 5, 2, 1, 1, 1, 1], [0, 7, 8, 9, 10, 11, 2]])
    mask = (ids != 1).astype(np.int64)
    expected = R.hf_text_embeddings(hf, ids, mask)
    ours = np.asarray(model.embed_tokens(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_logit_scale_is_hf_logit_scale_a(small):
    hf, cfg, model = small
    assert float(model.logit_scale.get_value()) == pytest.approx(float(hf.logit_scale_a.detach()), abs=1e-7)
    assert cfg.logit_scale_init == pytest.approx(np.log(1 / 0.07))


def test_train_mode_is_keyed_and_bf16_keeps_float32_params(small):
    _, cfg, model = small
    w = jnp.asarray(np.stack(R.clips([2.0, 2.0], seed=2)))
    lengths = jnp.array([96_000, 50_000], jnp.int32)
    k = jax.random.key(0)
    train = nnx.jit(lambda m, w, n, k: m.embed_audio(w, n, train=True, key=k))
    a = train(nnx.clone(model), w, lengths, k)  # clones: training updates the BatchNorm statistics
    b = train(nnx.clone(model), w, lengths, k)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="needs a PRNG"):
        model.embed_audio(w, lengths, train=True)
    import dataclasses

    bf = ClapModel(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(bf, nnx.Param))} == {jnp.dtype(jnp.float32)}
    out = bf.embed_tokens(jnp.array([[0, 5, 2, 1]], jnp.int32), jnp.array([[1, 1, 1, 0]], jnp.int32))
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_config_mismatch_is_refused(small):
    import dataclasses

    _, cfg, _ = small
    with pytest.raises(ValueError, match="front end and the audio tower must agree"):
        ClapModel(dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, fusion=False)), rngs=nnx.Rngs(0))


def test_l2_normalize_matches_float64_and_has_finite_gradient_at_zero():
    """An all-zero row (a padded hard negative before any training) must not poison the step."""
    x = np.random.default_rng(0).normal(size=(3, 5))
    x[1] = 0.0
    want = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(np.asarray(l2_normalize(jnp.asarray(x, jnp.float32))), want, atol=1e-6)
    grad = jax.grad(lambda v: l2_normalize(v)[:, 0].sum())(jnp.asarray(x, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))
    # at 0 the map is x / eps: the same finite gradient as torch F.normalize (1 / eps on the diagonal);
    # the loss zeroes masked rows, so this row's upstream gradient, and hence its update, is 0
    np.testing.assert_allclose(np.asarray(grad[1]), [1e12, 0, 0, 0, 0], rtol=1e-6)
