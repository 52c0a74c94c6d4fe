"""Per-tower rematerialisation (`htsat.remat`, `text.remat`): the same loss and the same gradients
as without it (float32, tiny towers with dropout and drop-path on, so the recomputed forward must
draw the same randomness), and a clear error for an unknown policy."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from clapcomp.models import remat
from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import AudioConfig, ClapConfig, HTSATConfig, TextConfig

BASE = ClapConfig(
    audio=AudioConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, f_min=50.0, f_max=4000.0, clip_seconds=1.0),
    htsat=HTSATConfig(n_mels=16, spec_size=64, embed_dim=16, depths=(2, 1), num_heads=(1, 2), window_size=8,
                      drop_path_rate=0.2, drop_rate=0.1, spec_augment=False),
    text=TextConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                    max_position_embeddings=32, max_length=8, dropout=0.1, attn_dropout=0.1),
    projection_dim=16,
)  # fmt: skip


def _loss_and_grads(cfg: ClapConfig):
    graphdef, params, rest = nnx.split(ClapModel(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # fresh Variables inside the trace
    rng = np.random.default_rng(0)
    wave = 0.1 * rng.standard_normal((2, cfg.audio.clip_samples)).astype(np.float32)
    lengths = np.full(2, cfg.audio.clip_samples, np.int32)
    ids = rng.integers(3, 100, (2, 8)).astype(np.int32)
    mask = np.ones_like(ids)

    def loss(p):
        model = nnx.merge(graphdef, p, rest)
        a = model.embed_audio(wave, lengths, train=True, key=jax.random.key(1))
        t = model.embed_tokens(ids, mask, train=True, key=jax.random.key(2))
        return (a @ t.T).sum() + (a**2 * np.arange(a.shape[1])).sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), grads


@pytest.fixture(scope="module")
def reference():
    return _loss_and_grads(BASE)


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable"])
def test_remat_keeps_loss_and_gradients(policy, reference):
    ref_loss, ref_grads = reference
    cfg = dataclasses.replace(BASE, htsat=dataclasses.replace(BASE.htsat, remat=policy),
                              text=dataclasses.replace(BASE.text, remat=policy))  # fmt: skip
    loss, grads = _loss_and_grads(cfg)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    flat_ref, flat = jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree_util.tree_leaves(grads)
    assert len(flat_ref) == len(flat) and any(np.abs(g).max() > 0 for _, g in flat_ref)
    for (path, want), got in zip(flat_ref, flat, strict=True):
        # float32 summation order may differ; a wrong dropout mask in the recomputation would be O(1) off
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_unknown_policy_names_the_field():
    cfg = dataclasses.replace(BASE, text=dataclasses.replace(BASE.text, remat="everything"))
    with pytest.raises(ValueError, match=r"text.remat='everything' is not a remat policy; use one of"):
        _loss_and_grads(cfg)
    assert set(remat.POLICIES) == {"none", "dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable"}
