"""Contrastive losses of CLAP and CompA, exact on one device and sharded over a mesh.

Notation: N audios in the *global* batch, D-dim L2-normalised embeddings, s = exp(logit_scale)
(``scale``, already exponentiated), a_i the audio embeddings, t_j the main (positive) captions.
All logits are s * <x, y>; lse = log-sum-exp.

1. Plain CLAP loss (``contrastive_loss`` without hard negatives)::

       a2t_i = lse_j(s a_i.t_j) - s a_i.t_i           j over the N captions
       t2a_j = lse_i(s a_i.t_j) - s a_j.t_j           i over the N audios
       loss  = (mean_i a2t_i + mean_j t2a_j) / 2

2. CompA loss with composition-aware hard negatives h_ik, k < K, valid where m_ik
   (``contrastive_loss`` with ``hard_negatives``)::

       a2t_i = lse( {s a_i.t_j : j < N} u {s a_i.h_ik : m_ik} ) - s a_i.t_i
       t2a_j = as in 1. (hard negatives are never queries and never seen by other audios)
       loss  = (mean_i a2t_i + mean_j t2a_j) / 2

   With K = 0 or every m_ik False this is exactly loss 1.

3. Modular loss of CompA stage 3 (``modular_loss``). Audio i has positives p_ip, p < P, valid
   where u_ip, **p_i0 being its main caption** (so t_i = p_i0, visible to every audio; u_i0 is
   taken as True whatever the mask says), extra positives p_ip (p >= 1, seen by audio i only) and
   negatives n_iq valid where v_iq (seen by audio i only)::

       Z_i   = lse( {s a_i.p_j0 : j < N} u {s a_i.p_ip : p >= 1, u_ip} u {s a_i.n_iq : v_iq} )
       a2t_i = mean_{p : u_ip} (Z_i - s a_i.p_ip)          mean over audio i's own valid positives
       t2a   = mean_{(i, p) : u_ip} (lse_j(s a_j.p_ip) - s a_i.p_ip)
                                                          every valid positive is a query over the
                                                          N audios, labelled with its owner i
       loss  = (mean_i a2t_i + t2a) / 2

   a2t averages per-audio means (each audio weighs 1/N); t2a averages over all valid queries
   (each query weighs 1 / sum u). With P = 1 this is loss 2 with n as the hard negatives.

Masking: excluded entries are set to -inf *after* the embeddings of masked rows are zeroed (the
double-`where` trick), so a masked entry contributes exp(-inf) = 0 to the sum and gets exactly
zero gradient, even if its embedding holds garbage (NaN padding). Every softmax row always keeps
its N main captions/audios, so no lse is ever taken over an all -inf row.
Note for readers of the released CompA code: it "masks" by *multiplying* logits with -1e5, which
turns a negative similarity into a huge positive logit instead of removing it, and rebuilds the
mask in a Python loop every step; its modular loss also uses only the local device's features.
This module implements the intended exclusion (masked = not in the softmax) over the global batch.

Numerics: logits are accumulated and reduced in float32 whatever the embedding dtype (bf16 in,
float32 logits and lse), so s = 100 with bf16 embeddings stays finite and accurate.

Sharding (how the path is selected): ``mesh=None`` runs the plain jnp formulas on the global
arrays; this is exact on one device and also valid inside `jax.jit` with sharded inputs (XLA then
decides the communication). Passing ``mesh`` (a `jax.sharding.Mesh`) selects the explicit
`jax.shard_map` implementation, batch dim 0 sharded over ``batch_axes`` (default: the mesh axes
named "data" and/or "fsdp"; other axes, e.g. "model", hold replicas). Per device with n = N / d
local rows it

- all-gathers only the audio embeddings [n, D] -> [N, D] and main captions [n, D] -> [N, D];
- keeps hard negatives, extra positives and negatives on the device owning their audio;
- computes its own rows' a2t (local audio x gathered captions + own negatives: [n, N + K]) and its
  own queries' t2a (local captions/positives x gathered audio: [n, N] or [n, P, N]);
- sums the per-row terms and combines them with `psum`.

No device ever holds an N x N(K + 1) logit matrix. Gradients flow back through `all_gather` (its
transpose is a reduce-scatter), as LAION-CLAP's "gather with grad".
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

DEFAULT_BATCH_AXES = ("data", "fsdp")


def contrastive_loss(
    audio_emb: jax.Array,
    text_emb: jax.Array,
    scale: jax.Array | float,
    hard_negatives: jax.Array | None = None,
    hard_negative_mask: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
    batch_axes: str | Sequence[str] | None = None,
) -> jax.Array:
    """Symmetric CLAP loss (eq. 1), or CompA's hard-negative loss (eq. 2) when negatives are given.

    Args:
      audio_emb: [N, D] audio embeddings (row i pairs with caption i).
      text_emb: [N, D] main caption embeddings.
      scale: scalar exp(logit_scale).
      hard_negatives: optional [N, K, D]; row i is seen only by audio i's a2t softmax.
      hard_negative_mask: optional [N, K] bool, True = valid (default: all valid).
      mesh: optional mesh; selects the shard_map implementation (see module docstring).
      batch_axes: mesh axes sharding dim 0 (default: those of "data"/"fsdp" present).
    Returns:
      scalar float32 loss.
    """
    n, d = _check_2d("audio_emb", audio_emb)
    if text_emb.shape != (n, d):
        raise ValueError(f"text_emb must have shape {(n, d)} like audio_emb, got {text_emb.shape}")
    args = [audio_emb, text_emb]
    if hard_negatives is None:
        if hard_negative_mask is not None:
            raise ValueError("hard_negative_mask was given without hard_negatives")
    else:
        if hard_negatives.ndim != 3 or hard_negatives.shape[::2] != (n, d):
            raise ValueError(f"hard_negatives must have shape [N={n}, K, D={d}], got {hard_negatives.shape}")
        if hard_negative_mask is None:
            hard_negative_mask = jnp.ones(hard_negatives.shape[:2], bool)
        _check_mask("hard_negative_mask", hard_negative_mask, hard_negatives.shape[:2])
        if hard_negatives.shape[1] > 0:
            args += [hard_negatives, hard_negative_mask]
    scale = jnp.asarray(scale, jnp.float32)

    if mesh is None:
        a2t, t2a = _contrastive_sums(*args[:2], *args, scale=scale)
        return (a2t + t2a) / (2 * n)

    axes = _resolve_batch_axes(mesh, batch_axes, n)

    def per_device(scale, a, t, *negs):
        a_all = jax.lax.all_gather(a, axes, tiled=True)
        t_all = jax.lax.all_gather(t, axes, tiled=True)
        a2t, t2a = _contrastive_sums(a_all, t_all, a, t, *negs, scale=scale)
        return jax.lax.psum(a2t + t2a, axes) / (2 * n)

    in_specs = (P(),) + (P(axes),) * len(args)
    return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=P())(scale, *args)


def modular_loss(
    audio_emb: jax.Array,
    positives: jax.Array,
    positive_mask: jax.Array,
    negatives: jax.Array,
    negative_mask: jax.Array,
    scale: jax.Array | float,
    *,
    mesh: Mesh | None = None,
    batch_axes: str | Sequence[str] | None = None,
) -> jax.Array:
    """CompA stage-3 modular multi-positive loss (eq. 3 of the module docstring).

    Args:
      audio_emb: [N, D] audio embeddings.
      positives: [N, P, D], P >= 1. ``positives[:, 0]`` IS the main caption (shared with every
        audio); ``positives[:, 1:]`` are the extra positives (own audio only). A data pipeline
        that yields extra positives alone must prepend the main caption embedding.
      positive_mask: [N, P] bool, True = valid; column 0 is always treated as valid.
      negatives: [N, Q, D] (Q may be 0), seen by the own audio only.
      negative_mask: [N, Q] bool, True = valid.
      scale: scalar exp(logit_scale).
      mesh, batch_axes: as for `contrastive_loss`.
    Returns:
      scalar float32 loss.
    """
    n, d = _check_2d("audio_emb", audio_emb)
    if positives.ndim != 3 or positives.shape[::2] != (n, d) or positives.shape[1] < 1:
        raise ValueError(
            f"positives must have shape [N={n}, P>=1, D={d}] with the main caption at index 0, got {positives.shape}"
        )
    if negatives.ndim != 3 or negatives.shape[::2] != (n, d):
        raise ValueError(f"negatives must have shape [N={n}, Q, D={d}], got {negatives.shape}")
    _check_mask("positive_mask", positive_mask, positives.shape[:2])
    _check_mask("negative_mask", negative_mask, negatives.shape[:2])
    args = (audio_emb, positives, positive_mask, negatives, negative_mask)
    scale = jnp.asarray(scale, jnp.float32)

    if mesh is None:
        a2t, t2a, queries = _modular_sums(audio_emb, positives[:, 0], *args, scale=scale)
        return (a2t / n + t2a / queries) / 2

    axes = _resolve_batch_axes(mesh, batch_axes, n)

    def per_device(scale, a, pos, *rest):
        a_all = jax.lax.all_gather(a, axes, tiled=True)
        main_all = jax.lax.all_gather(pos[:, 0], axes, tiled=True)
        sums = _modular_sums(a_all, main_all, a, pos, *rest, scale=scale)
        a2t, t2a, queries = jax.lax.psum(sums, axes)
        return (a2t / n + t2a / queries) / 2

    in_specs = (P(),) + (P(axes),) * len(args)
    return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=P())(scale, *args)


# ----------------------------------------------------------------------------- per-row terms


def _contrastive_sums(a_all, t_all, a, t, hard=None, hard_mask=None, *, scale):
    """Sums of a2t over the rows of ``a`` and of t2a over the queries ``t``.

    a_all, t_all: [N, D] every audio / main caption; a, t: [n, D] the rows this call owns;
    hard: [n, K, D] their hard negatives, hard_mask [n, K]. Returns two float32 scalars.
    """
    positive = scale * jnp.einsum("nd,nd->n", a, t, preferred_element_type=jnp.float32)
    a2t_logits = scale * _dot(a, t_all)  # [n, N]
    if hard is not None:
        hard_logits = _masked_logits(a, hard, hard_mask, scale)  # [n, K]
        a2t_logits = jnp.concatenate([a2t_logits, hard_logits], axis=1)
    a2t = jax.nn.logsumexp(a2t_logits, axis=1) - positive
    t2a = jax.nn.logsumexp(scale * _dot(t, a_all), axis=1) - positive  # [n] over the N audios
    return a2t.sum(), t2a.sum()


def _modular_sums(a_all, main_all, a, pos, pos_mask, neg, neg_mask, *, scale):
    """Sums of per-audio a2t means, of t2a over valid queries, and the number of valid queries.

    a_all, main_all: [N, D]; a: [n, D]; pos: [n, P, D] (index 0 = main caption), pos_mask [n, P];
    neg: [n, Q, D], neg_mask [n, Q]. Returns three float32 scalars.
    """
    pos_mask = jnp.asarray(pos_mask).at[:, 0].set(True)  # the main caption always exists
    pos = jnp.where(pos_mask[..., None], pos, jnp.zeros((), pos.dtype))
    pos_logits = scale * jnp.einsum("nd,npd->np", a, pos, preferred_element_type=jnp.float32)
    extra = jnp.where(pos_mask[:, 1:], pos_logits[:, 1:], -jnp.inf)  # [n, P - 1]
    denom = jnp.concatenate(
        [scale * _dot(a, main_all), extra, _masked_logits(a, neg, neg_mask, scale)], axis=1
    )  # [n, N + P - 1 + Q]
    a2t_terms = jax.nn.logsumexp(denom, axis=1, keepdims=True) - pos_logits  # [n, P]
    valid = pos_mask.sum(axis=1).astype(jnp.float32)  # [n], >= 1
    a2t = (jnp.where(pos_mask, a2t_terms, 0.0).sum(axis=1) / valid).sum()
    query_logits = scale * jnp.einsum("npd,md->npm", pos, a_all, preferred_element_type=jnp.float32)
    t2a_terms = jax.nn.logsumexp(query_logits, axis=2) - pos_logits  # [n, P] over the N audios
    t2a = jnp.where(pos_mask, t2a_terms, 0.0).sum()
    return a2t, t2a, valid.sum()


def _dot(x, y):
    """[n, D] x [m, D] -> [n, m] float32 inner products."""
    return jnp.einsum("nd,md->nm", x, y, preferred_element_type=jnp.float32)


def _masked_logits(a, others, mask, scale):
    """Logits of each audio a [n, D] vs its own others [n, K, D]; -inf where mask [n, K] is False.

    Masked embeddings are zeroed before the product (double where), so they get exactly zero
    gradient and NaN/inf padding cannot leak into the loss or the gradients of ``a``.
    """
    others = jnp.where(mask[..., None], others, jnp.zeros((), others.dtype))
    logits = scale * jnp.einsum("nd,nkd->nk", a, others, preferred_element_type=jnp.float32)
    return jnp.where(mask, logits, -jnp.inf)


# ----------------------------------------------------------------------------- validation


def _resolve_batch_axes(mesh: Mesh, batch_axes, n: int) -> tuple[str, ...]:
    if batch_axes is None:
        axes = tuple(ax for ax in mesh.axis_names if ax in DEFAULT_BATCH_AXES)
        if not axes:
            raise ValueError(
                f"mesh axes {mesh.axis_names} contain none of {DEFAULT_BATCH_AXES}; "
                "pass batch_axes=<the axes that shard the batch>"
            )
    else:
        axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
        unknown = [ax for ax in axes if ax not in mesh.axis_names]
        if unknown:
            raise ValueError(f"batch_axes {unknown} are not axes of the mesh {mesh.axis_names}")
    shards = 1
    for ax in axes:
        shards *= mesh.shape[ax]
    if n % shards:
        raise ValueError(
            f"global batch N={n} is not divisible by the {shards} batch shards of "
            f"mesh axes {axes}; use a batch size that is a multiple of {shards}"
        )
    return axes


def _check_2d(name, x):
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    return x.shape


def _check_mask(name, mask, shape):
    if mask.shape != tuple(shape) or mask.dtype != jnp.bool_:
        raise ValueError(f"{name} must be a bool array of shape {tuple(shape)}, got {mask.dtype} {mask.shape}")
