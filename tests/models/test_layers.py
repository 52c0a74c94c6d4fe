"""models/layers.py: sub-keys, dropout / drop-path and the BatchNorm every tower uses, against NumPy."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clapcomp.models import layers


def test_split_is_jax_split_and_none_at_inference():
    key = jax.random.key(7)
    want = jax.random.split(key, 3)
    got = layers.split(key, 3)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
    assert layers.split(None, 4) == [None] * 4


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_scaled_values_at_the_expected_rate(rate):
    x = np.random.default_rng(0).uniform(1.0, 2.0, (64, 500)).astype(np.float32)  # never 0
    y = np.asarray(layers.dropout(jnp.asarray(x), rate, jax.random.key(1)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)
    n = x.size  # kept count ~ Binomial(n, 1 - rate): 6 standard deviations
    assert abs(kept.sum() - n * (1 - rate)) < 6 * np.sqrt(n * rate * (1 - rate))
    again = np.asarray(layers.dropout(jnp.asarray(x), rate, jax.random.key(1)))
    other = np.asarray(layers.dropout(jnp.asarray(x), rate, jax.random.key(2)))
    np.testing.assert_array_equal(again, y)
    assert (other != y).any()


def test_dropout_per_sample_drops_whole_rows():
    x = jnp.ones((400, 3, 5), jnp.bfloat16)
    y = np.asarray(layers.dropout(x, 0.25, jax.random.key(3), per_sample=True), np.float32)
    assert layers.dropout(x, 0.25, jax.random.key(3), per_sample=True).dtype == jnp.bfloat16
    per_row = y.reshape(400, -1)
    assert set(np.unique(per_row)) <= {0.0, np.float32(jnp.bfloat16(1 / 0.75))}
    assert (per_row == per_row[:, :1]).all()  # one draw per row
    assert 0 < (per_row[:, 0] == 0).sum() < 400


def test_dropout_is_identity_without_key_or_rate():
    x = jnp.arange(12.0).reshape(3, 4)
    assert layers.dropout(x, 0.5, None) is x
    assert layers.dropout(x, 0.0, jax.random.key(0)) is x


def test_batch_norm_is_pytorch_constants_numpy_reference():
    """One training step: batch statistics normalise (biased variance, eps 1e-5) and the running
    statistics move 0.1 of the way towards the batch's (flax: biased variance)."""
    x = np.random.default_rng(1).normal(3.0, 2.0, (8, 5, 4))
    bn = layers.batch_norm(4, dtype=jnp.float32, rngs=nnx.Rngs(0))
    y = np.asarray(bn(jnp.asarray(x, jnp.float32), use_running_average=False), np.float64)
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * var, rtol=1e-5)
    assert layers.TORCH_EPS == 1e-5


def test_towers_draw_randomness_and_batch_norm_only_through_layers():
    """The one-helper rule: no model file but layers.py calls jax.random or builds nnx.BatchNorm."""
    models = Path(layers.__file__).parent
    offenders = {
        p.name: hits
        for p in sorted(models.glob("*.py"))
        if p.name != "layers.py" and (hits := re.findall(r"jax\.random\.\w+|nnx\.BatchNorm\(|fold_in", p.read_text()))
    }
    assert offenders == {}
