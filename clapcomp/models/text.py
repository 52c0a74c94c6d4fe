"""Text towers: RoBERTa (LAION-CLAP / HF `ClapTextModel`) and BERT-family (BERT, MiniLM) encoders.

Both are the same post-LayerNorm transformer; they differ in how position ids are made and how a
sentence vector is pooled:

- `family="roberta"`: position ids count the non-padding tokens starting at `pad_token_id + 1`
  (fairseq / HF `create_position_ids_from_input_ids`); padding tokens get position `pad_token_id`.
- `family="bert"`: position ids are `0 .. L-1`.
- token type ids are always 0 (CLAP and sentence encoders embed single sentences).
- `pooling="pooler"`: tanh(dense(h[:, 0])) (HF pooler output, what CLAP projects);
  `"mean"`: mean of the hidden states over the attention mask (sentence-transformers MiniLM);
  `"cls"`: h[:, 0].

Parameters are float32; matmuls run in `dtype` (float32 or bfloat16); softmax, LayerNorm statistics
and pooling accumulate in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clapcomp.models import remat
from clapcomp.models.configs import TextConfig
from clapcomp.models.layers import dropout, split

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}
_POOLINGS = ("pooler", "mean", "cls")


class _Layer(nnx.Module):
    """One post-LN transformer block: self-attention + residual + LN, FFN + residual + LN."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        h, f = cfg.hidden_size, cfg.intermediate_size
        if h % cfg.num_heads:
            raise ValueError(f"text hidden_size {h} is not a multiple of num_heads {cfg.num_heads}")
        lin = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        ln = lambda: nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)
        self.query, self.key, self.value, self.attn_out = lin(h, h), lin(h, h), lin(h, h), lin(h, h)
        self.attn_norm = ln()
        self.ffn_in, self.ffn_out = lin(h, f), lin(f, h)
        self.ffn_norm = ln()
        self.num_heads = cfg.num_heads
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.dropout, self.attn_dropout = cfg.dropout, cfg.attn_dropout
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array, key: jax.Array | None) -> jax.Array:
        """x [B, L, H] f32, mask [B, L] bool (True = real token) -> [B, L, H] f32."""
        b, seq, h = x.shape
        k_probs, k_attn, k_ffn = split(key, 3)
        heads = lambda t: t.reshape(b, seq, self.num_heads, h // self.num_heads)
        xc = x.astype(self.dtype)
        q, k, v = heads(self.query(xc)), heads(self.key(xc)), heads(self.value(xc))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores * (h // self.num_heads) ** -0.5
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = dropout(jax.nn.softmax(scores, axis=-1), self.attn_dropout, k_probs)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v).reshape(b, seq, h)
        attn = dropout(self.attn_out(ctx).astype(jnp.float32), self.dropout, k_attn)
        x = self.attn_norm(x + attn)
        y = self.ffn_out(self.act(self.ffn_in(x.astype(self.dtype))))
        y = dropout(y.astype(jnp.float32), self.dropout, k_ffn)
        return self.ffn_norm(x + y)


class TextEncoder(nnx.Module):
    """RoBERTa / BERT-family sentence encoder.

    `__call__(input_ids [B, L] int32, attention_mask [B, L] int32, *, train=False, key=None)
    -> [B, hidden_size] float32`, pooled per `cfg.pooling`. `train=True` applies dropout with
    randomness drawn from `key` only (required then).
    """

    def __init__(self, cfg: TextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.family not in ("roberta", "bert"):
            raise ValueError(f"TextConfig.family must be 'roberta' or 'bert', got {cfg.family!r}")
        if cfg.pooling not in _POOLINGS:
            raise ValueError(f"TextConfig.pooling must be one of {_POOLINGS}, got {cfg.pooling!r}")
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"TextConfig.hidden_act {cfg.hidden_act!r} unsupported; use one of {sorted(_ACTIVATIONS)}")
        self.cfg = cfg
        h = cfg.hidden_size
        init = nnx.initializers.normal(0.02)
        emb = lambda n: nnx.Embed(n, h, embedding_init=init, param_dtype=jnp.float32, rngs=rngs)
        self.word_embeddings = emb(cfg.vocab_size)
        self.position_embeddings = emb(cfg.max_position_embeddings)
        self.token_type_embeddings = emb(cfg.type_vocab_size)
        self.embed_norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)
        self.layers = nnx.List([_Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = (
            nnx.Linear(h, h, dtype=dtype, param_dtype=jnp.float32, rngs=rngs) if cfg.pooling == "pooler" else None
        )
        self.dtype = dtype

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """[B, L] int32 position ids (RoBERTa: from non-pad tokens; BERT: 0..L-1)."""
        if self.cfg.family == "roberta":
            real = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(real, axis=1) * real + self.cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)

    def __call__(self, input_ids, attention_mask, *, train: bool = False, key: jax.Array | None = None):
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {input_ids.shape} and {attention_mask.shape}"
            )
        if input_ids.shape[1] > self.cfg.max_position_embeddings - (
            self.cfg.pad_token_id + 1 if self.cfg.family == "roberta" else 0
        ):
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds the text tower's position table")
        if train and key is None:
            raise ValueError("TextEncoder(train=True) needs a PRNG `key` for dropout")
        key = key if train else None
        pos = self.position_ids(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(jnp.zeros_like(input_ids))
            + self.position_embeddings(pos)
        )
        k_embed, *k_layers = split(key, len(self.layers) + 1)
        x = dropout(self.embed_norm(x), self.cfg.dropout, k_embed)
        mask = attention_mask.astype(bool)
        call = remat.blockwise(lambda layer, x, mask, k: layer(x, mask, k), self.cfg.remat, "text.remat")
        for layer, k in zip(self.layers, k_layers, strict=True):
            x = call(layer, x, mask, k)
        return self._pool(x, mask)

    def _pool(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, L, H] f32, mask [B, L] bool -> [B, H] f32."""
        if self.cfg.pooling == "mean":
            m = mask.astype(jnp.float32)[..., None]
            return (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
        first = x[:, 0]
        if self.cfg.pooling == "cls":
            return first
        return jnp.tanh(self.pooler(first.astype(self.dtype)).astype(jnp.float32))
