"""The CLAP dual encoder: audio tower + text tower + projection MLPs + a learnable logit scale.

The audio tower is HTSAT (`cfg.audio_tower="htsat"`, the default) or a PANNs-style CNN ("cnn",
`models/cnn.py`); both map mel [B, C, F, M] to the pooled vector the audio projection takes.

Embeddings are `projection(tower(x))`, L2-normalised, float32, as HF `ClapModel.get_*_features`.
One `logit_scale` (LAION-CLAP's `logit_scale_a`, which its loss uses for both directions).
`cfg.dtype="bfloat16"` runs the towers' matmuls in bf16; parameters always stay float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from clapcomp import audio
from clapcomp.models.cnn import Cnn
from clapcomp.models.configs import ClapConfig
from clapcomp.models.htsat import HTSAT
from clapcomp.models.layers import split
from clapcomp.models.text import TextEncoder

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg: ClapConfig):
    if cfg.dtype not in DTYPES:
        raise ValueError(f"ClapConfig.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    return DTYPES[cfg.dtype]


def l2_normalize(x: jax.Array) -> jax.Array:
    """[B, D] -> [B, D] float32 unit rows: x / max(|x|, 1e-12), as torch `F.normalize`.

    Written with rsqrt of the clamped squared norm so an all-zero row (e.g. a padded, masked hard
    negative) has the finite gradient torch gives there (1/1e-12 times the incoming gradient) instead
    of the NaN that d|x| gives at 0; masked rows get a zero incoming gradient from the loss."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class Projection(nnx.Module):
    """Linear(in -> D) -> ReLU -> Linear(D -> D): `[B, in] -> [B, D]` float32."""

    def __init__(self, in_features: int, dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(in_features, dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.linear2 = nnx.Linear(dim, dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.relu(self.linear1(x))).astype(jnp.float32)


def _audio_tower(cfg: ClapConfig, dtype, rngs: nnx.Rngs) -> tuple[HTSAT | Cnn, int]:
    """The tower `cfg.audio_tower` names, checked against the front end, and its pooled width."""
    if cfg.audio_tower == "htsat":
        if cfg.audio.fusion != cfg.htsat.enable_fusion:
            raise ValueError(
                f"AudioConfig.fusion={cfg.audio.fusion} but HTSATConfig.enable_fusion={cfg.htsat.enable_fusion}; "
                "the front end and the audio tower must agree"
            )
        if cfg.audio.n_mels != cfg.htsat.n_mels:
            raise ValueError(f"AudioConfig.n_mels={cfg.audio.n_mels} != HTSATConfig.n_mels={cfg.htsat.n_mels}")
        return HTSAT(cfg.htsat, dtype=dtype, rngs=rngs), cfg.htsat.pooled_size
    if cfg.audio_tower == "cnn":
        if cfg.audio.fusion:
            raise ValueError("the CNN audio tower takes one mel channel: set AudioConfig.fusion=False")
        if cfg.audio.n_mels != cfg.cnn.n_mels:
            raise ValueError(f"AudioConfig.n_mels={cfg.audio.n_mels} != CnnConfig.n_mels={cfg.cnn.n_mels}")
        return Cnn(cfg.cnn, dtype=dtype, rngs=rngs), cfg.cnn.pooled_size
    raise ValueError(f"ClapConfig.audio_tower must be 'htsat' or 'cnn', got {cfg.audio_tower!r}")


class ClapModel(nnx.Module):
    """Towers + heads. `embed_*` return `[B, projection_dim]` float32 L2-normalised embeddings."""

    def __init__(self, cfg: ClapConfig, *, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg)
        self.cfg = cfg
        self.audio_tower, pooled_size = _audio_tower(cfg, dtype, rngs)
        self.text_tower = TextEncoder(cfg.text, dtype=dtype, rngs=rngs)
        self.audio_projection = Projection(pooled_size, cfg.projection_dim, dtype=dtype, rngs=rngs)
        self.text_projection = Projection(cfg.text.hidden_size, cfg.projection_dim, dtype=dtype, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, jnp.float32))

    def embed_mel(self, mel, is_longer, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """mel [B, C, F, M] f32, is_longer [B] bool -> [B, D] f32 unit rows."""
        return self.embed_pooled(self.audio_tower(mel, is_longer, train=train, key=key))

    def embed_pooled(self, pooled) -> jax.Array:
        """The audio tower's output [B, P] f32 -> [B, D] f32 unit rows (the audio projection, normalised)."""
        return l2_normalize(self.audio_projection(pooled))

    def pool_audio(self, waveform, lengths, *, key: jax.Array | None = None) -> jax.Array:
        """waveform [B, S] f32, lengths [B] int32 -> the audio tower's output [B, P] f32 in inference mode
        (no augmentation; `key=None`: the deterministic crop / chunks, else the random crop it draws):
        `embed_audio` at inference is `embed_pooled(pool_audio(...))`."""
        mel, is_longer = audio.features(waveform, lengths, self.cfg.audio, key=key)
        return self.audio_tower(mel, is_longer, train=False)

    def embed_audio(self, waveform, lengths, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """waveform [B, S] f32 @ cfg.audio.sample_rate (zero-padded), lengths [B] int32 -> [B, D] f32.

        `key=None` gives the deterministic inference crop / fusion chunks; with `train=True` the key
        drives the random crop, SpecAugment, dropout and drop-path.
        """
        if train and key is None:
            raise ValueError("embed_audio(train=True) needs a PRNG `key`")
        crop_key, tower_key = split(key, 2)
        mel, is_longer = audio.features(waveform, lengths, self.cfg.audio, key=crop_key if train else None)
        return self.embed_mel(mel, is_longer, train=train, key=tower_key)

    def embed_tokens(self, input_ids, attention_mask, *, train: bool = False, key: jax.Array | None = None):
        """input_ids [B, L] int32, attention_mask [B, L] int32 -> [B, D] f32 unit rows."""
        pooled = self.text_tower(input_ids, attention_mask, train=train, key=key)
        return l2_normalize(self.text_projection(pooled))

    def replace_text_tower(self, tower: TextEncoder, *, rngs: nnx.Rngs) -> None:
        """Swap in another text tower (e.g. MiniLM from `convert.sentence`) with a fresh-width head.

        The text projection is rebuilt from `rngs` when the hidden size changes (its weights are then
        new: train them). `self.cfg` is updated so exports describe the new tower.
        """
        old = self.cfg.text.hidden_size
        self.text_tower = tower
        self.cfg = dataclasses.replace(self.cfg, text=tower.cfg)
        if tower.cfg.hidden_size != old:
            self.text_projection = Projection(
                tower.cfg.hidden_size, self.cfg.projection_dim, dtype=compute_dtype(self.cfg), rngs=rngs
            )
