"""PANNs-style CNN audio towers: Cnn6 / Cnn10 / Cnn14 as LAION-CLAP builds them, and aisfx's 4-block net.

The network (PyTorch module names kept, so checkpoints map one to one):

  mel [B, 1, F, M] -> bn0 (BatchNorm over the M mel bins; `input_norm`) -> SpecAugment (training)
  -> conv_block1 .. conv_blockN -> mean over mel -> time map [B, T', C] -> head.

A block is conv -> BatchNorm -> ReLU (twice with 3x3 kernels, once with 5x5: Cnn6), then a 2x2 pool
(avg: PANNs, max: aisfx; the last block of Cnn14 and aisfx does not pool) and dropout 0.2 in training.
The time map has T' = F // 2**pools steps. Heads:

- "fc1" (PANNs / LAION-CLAP): embedding = relu(fc1(max_t + mean_t)) [B, C], dropout 0.5 before and
  after fc1 in training; fine_grained_embedding = relu(fc1(max3_t + avg3_t)) per step (3-wide
  stride-1 pools over time, the average counting its zero padding), each step repeated 2**pools times.
- "max" (aisfx): embedding = max_t; fine_grained_embedding = the time map itself, repeated likewise.

`__call__` gives what the audio projection takes. time_segments = 1: the embedding (LAION-CLAP's
`embedding`). S > 1: the T' steps cut into S near-equal consecutive spans (boundaries floor(i T' / S)),
the head's pooling applied inside each span, [B, S * C]: the embedding keeps which sound came first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp.audio import spec_augment
from clapcomp.models.configs import CnnConfig
from clapcomp.models.layers import batch_norm, dropout, split


class ConvBlock(nnx.Module):
    """[B, H, W, Cin] -> [B, H', W', Cout]: (conv -> BN -> ReLU) x 1 or 2, then a 2x2 pool (or none)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, dtype, rngs: nnx.Rngs):
        conv = functools.partial(nnx.Conv, kernel_size=(kernel, kernel), padding="SAME", use_bias=False,
                                 dtype=dtype, param_dtype=jnp.float32, rngs=rngs)  # fmt: skip
        self.conv1, self.bn1 = conv(cin, cout), batch_norm(cout, dtype=dtype, rngs=rngs)
        self.double = kernel == 3
        if self.double:
            self.conv2, self.bn2 = conv(cout, cout), batch_norm(cout, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, pool: str | None, train: bool):
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if self.double:
            x = jax.nn.relu(self.bn2(self.conv2(x), use_running_average=not train))
        if pool == "avg":
            return nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        if pool == "max":
            return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return x


def span_bounds(steps: int, segments: int) -> np.ndarray:
    """[segments + 1] int: span i of `steps` time steps is [b[i], b[i + 1]), b[i] = floor(i * steps / segments)."""
    if segments > steps:
        raise ValueError(
            f"time_segments={segments} exceeds the {steps} time steps of the CNN's time map; use a longer clip "
            "(AudioConfig.clip_seconds) or fewer time_segments"
        )
    return (np.arange(segments + 1) * steps) // segments


class Cnn(nnx.Module):
    """The audio tower. `__call__(mel [B, 1, F, M], is_longer [B]) -> pooled [B, cfg.pooled_size]` f32."""

    def __init__(self, cfg: CnnConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.kernel_size not in (3, 5):
            raise ValueError(
                f"CnnConfig.kernel_size must be 3 (two 3x3 convs per block) or 5 (one 5x5), got {cfg.kernel_size}"
            )
        if cfg.pool not in ("avg", "max") or cfg.head not in ("fc1", "max"):
            raise ValueError(
                f"CnnConfig.pool must be 'avg' | 'max' and head 'fc1' | 'max', got {cfg.pool!r}, {cfg.head!r}"
            )
        if cfg.time_segments < 1:
            raise ValueError(f"CnnConfig.time_segments must be >= 1, got {cfg.time_segments}")
        self.cfg = cfg
        self.dtype = dtype
        if cfg.input_norm:
            self.bn0 = batch_norm(cfg.n_mels, dtype=jnp.float32, rngs=rngs)
        cins = (1,) + tuple(cfg.channels[:-1])
        self.blocks = nnx.List(
            [ConvBlock(i, o, cfg.kernel_size, dtype=dtype, rngs=rngs) for i, o in zip(cins, cfg.channels, strict=True)]
        )
        if cfg.head == "fc1":
            self.fc1 = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    @property
    def time_ratio(self) -> int:
        """Input frames per time-map step: 2 ** (number of pooling blocks)."""
        return 2 ** (len(self.cfg.channels) - (0 if self.cfg.pool_last else 1))

    def time_map(self, mel, *, train: bool = False, key=None) -> jax.Array:
        """mel [B, 1, F, M] f32 -> [B, F // time_ratio, hidden_size] f32 (the last block, mean over mel)."""
        cfg = self.cfg
        if mel.ndim != 4 or mel.shape[1] != 1 or mel.shape[3] != cfg.n_mels:
            raise ValueError(
                f"the CNN tower expects mel [B, 1, frames, {cfg.n_mels}], got {tuple(mel.shape)}; set "
                f"AudioConfig.fusion=False and AudioConfig.n_mels={cfg.n_mels}"
            )
        if train and key is None:
            raise ValueError("Cnn(train=True) needs a PRNG key for SpecAugment and dropout")
        keys = split(key if train else None, len(self.blocks) + 1)
        x = jnp.asarray(mel, jnp.float32)
        if cfg.input_norm:
            x = self.bn0(x, use_running_average=not train)
        if train and cfg.spec_augment:
            x = spec_augment(x, keys[0])
        x = x.transpose(0, 2, 3, 1).astype(self.dtype)  # [B, F, M, 1]: time is H, mel is W
        last = len(self.blocks) - 1
        for i, (block, k) in enumerate(zip(self.blocks, keys[1:], strict=True)):
            x = block(x, pool=cfg.pool if (i < last or cfg.pool_last) else None, train=train)
            x = dropout(x, cfg.dropout, k)
        return jnp.mean(x.astype(jnp.float32), axis=2)

    def _fc1(self, x, key=None):
        """relu(fc1(x)) with PANNs' dropout 0.5 on both sides when `key` is given."""
        k1, k2 = split(key, 2)
        x = dropout(x, 0.5, k1)
        return dropout(jax.nn.relu(self.fc1(x.astype(self.dtype)).astype(jnp.float32)), 0.5, k2)

    def _pool(self, x, key=None):
        """The head on a span: x [B, t, C] -> [B, C]."""
        if self.cfg.head == "max":
            return jnp.max(x, axis=1)
        return self._fc1(jnp.max(x, axis=1) + jnp.mean(x, axis=1), key)

    def __call__(self, mel, is_longer=None, *, train: bool = False, key=None) -> jax.Array:
        """mel [B, 1, F, M] f32 (is_longer unused: no fusion) -> [B, pooled_size] f32 (see module doc)."""
        if train and key is None:
            raise ValueError("Cnn(train=True) needs a PRNG key for SpecAugment and dropout")
        k_map, k_head = split(key if train else None, 2)
        x = self.time_map(mel, train=train, key=k_map)
        s = self.cfg.time_segments
        if s == 1:
            return self._pool(x, k_head)
        bounds = span_bounds(x.shape[1], s)
        keys = split(k_head, s)
        return jnp.concatenate(
            [self._pool(x[:, a:b], k) for a, b, k in zip(bounds[:-1], bounds[1:], keys, strict=True)], axis=-1
        )

    def outputs(self, mel) -> dict[str, jax.Array]:
        """LAION-CLAP's PANN output dict at inference: mel [B, 1, F, M] ->
        {"embedding": [B, C], "fine_grained_embedding": [B, T' * time_ratio, C], "time_map": [B, T', C]}."""
        x = self.time_map(mel)
        if self.cfg.head == "fc1":
            pad = jnp.pad(x, ((0, 0), (1, 1), (0, 0)), constant_values=-jnp.inf)
            zero = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
            win = lambda a, f: f(jnp.stack([a[:, :-2], a[:, 1:-1], a[:, 2:]]), axis=0)
            fine = self._fc1(win(pad, jnp.max) + win(zero, jnp.sum) / 3.0)
        else:
            fine = x
        fine = jnp.repeat(fine, self.time_ratio, axis=1)
        return {"embedding": self._pool(x), "fine_grained_embedding": fine, "time_map": x}
