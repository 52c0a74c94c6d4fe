"""What every tower shares: training randomness from explicit keys, and PyTorch's normalisation constants.

Randomness. A tower's `__call__(..., train, key)` takes one PRNG key (None at inference) and hands
its parts sub-keys made by `split` only, so a forward pass is a pure function of (parameters, inputs,
key): the train step re-runs a micro-batch bit for bit by passing the same key again. `split(None, n)`
is n Nones and `dropout(x, rate, None)` is x, so inference code paths carry no key at all.
Why not `nnx.Dropout` + `nnx.Rngs`: those keep a counter inside the module that each call advances,
which makes the forward pass depend on how often it ran before; here the key is an argument.

Normalisation. Checkpoints come from PyTorch (LAION-CLAP, HF, PANNs): `batch_norm` has
`torch.nn.BatchNorm`'s constants (momentum 0.1, eps 1e-5; flax moves the running variance towards the
biased batch variance, PyTorch towards the unbiased one), `TORCH_EPS` is PyTorch's default LayerNorm /
BatchNorm epsilon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

TORCH_EPS = 1e-5  # torch.nn.BatchNorm* / LayerNorm default eps
BN_MOMENTUM = 0.9  # flax keeps `momentum` of the old running stats: 1 - PyTorch's momentum 0.1


def split(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """n sub-keys of `key` (`jax.random.split`), or n Nones when `key` is None (inference)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def dropout(x: jax.Array, rate: float, key: jax.Array | None, *, per_sample: bool = False) -> jax.Array:
    """Inverted dropout of x [B, ...]: each element kept with probability 1 - rate and scaled by
    1 / (1 - rate), else 0. `per_sample=True` is stochastic depth (drop-path): one draw per row of the
    leading axis drops a whole residual branch. Identity when `key` is None or `rate` is 0."""
    if key is None or rate <= 0.0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if per_sample else x.shape
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def batch_norm(features: int, *, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """`torch.nn.BatchNorm{1,2}d(features)` over the last axis (running stats, affine)."""
    return nnx.BatchNorm(
        features, momentum=BN_MOMENTUM, epsilon=TORCH_EPS, use_fast_variance=False, dtype=dtype, rngs=rngs
    )
