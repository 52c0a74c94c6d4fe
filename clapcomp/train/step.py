"""The train step: a pure function (graphdef, state, batch) -> (state, metrics), jitted with the
state donated.

Per step:
  key = fold_in(key(seed), step)             the same step always draws the same randomness, so a
                                             resumed run is bit-identical to an unbroken one
  audio  = embed_audio(waveform, lengths)    log-mel on device, random crop / SpecAugment / dropout
  texts  = embed_tokens(captions), and the hard negatives [B, K, L] or modular positives
           [B, P, L] / negatives [B, Q, L], flattened to rows of the same text tower
  loss   = clapcomp.losses (plain | compa | modular), sharded over the mesh's batch axes
  grads -> clip -> Adam(W) -> logit_scale clamped to [0, ln 100]
If the loss or any gradient is NaN/inf, the update is dropped: parameters, optimizer state and
BatchNorm statistics stay as they were, `metrics["nonfinite"]` is 1 and `state.nonfinite_run`
counts the skipped steps in a row (the loop stops the run when it reaches the config's limit).
No host synchronisation happens inside.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clapcomp import losses
from clapcomp.train import state as state_lib
from clapcomp.train.distributed import BATCH

LOSSES = ("plain", "compa", "modular")


def batch_spec(loss: str) -> dict[str, P]:
    """The batch keys the loss needs (the pipeline's names), each sharded on dim 0 over all devices."""
    keys = ["waveform", "lengths", "input_ids", "attention_mask"]
    if loss in ("compa", "modular"):
        keys += ["neg_input_ids", "neg_attention_mask", "neg_mask"]
    if loss == "modular":
        keys += ["pos_input_ids", "pos_attention_mask", "pos_mask"]
    return {k: BATCH for k in keys}


def _embed_rows(model, ids, mask, key):
    """ids/mask [B, K, L] -> [B, K, D] embeddings through the text tower (train mode)."""
    b, k, length = ids.shape
    return model.embed_tokens(ids.reshape(b * k, length), mask.reshape(b * k, length), train=True, key=key).reshape(b, k, -1)


def compute_loss(model, batch, key, *, loss: str, mesh: Mesh | None):
    """The configured contrastive loss of `model` on `batch` (train mode, randomness from `key`)."""
    k_audio, k_text, k_neg, k_pos = jax.random.split(key, 4)
    audio = model.embed_audio(batch["waveform"], batch["lengths"], train=True, key=k_audio)
    text = model.embed_tokens(batch["input_ids"], batch["attention_mask"], train=True, key=k_text)
    scale = jnp.exp(model.logit_scale[...])
    if loss == "plain":
        return losses.contrastive_loss(audio, text, scale, mesh=mesh)
    negatives = _embed_rows(model, batch["neg_input_ids"], batch["neg_attention_mask"], k_neg)
    if loss == "compa":
        return losses.contrastive_loss(audio, text, scale, negatives, batch["neg_mask"], mesh=mesh)
    extra = _embed_rows(model, batch["pos_input_ids"], batch["pos_attention_mask"], k_pos)
    positives = jnp.concatenate([text[:, None], extra], axis=1)  # the main caption is positive 0
    positive_mask = jnp.concatenate([jnp.ones_like(batch["pos_mask"][:, :1]), batch["pos_mask"]], axis=1)
    return losses.modular_loss(audio, positives, positive_mask, negatives, batch["neg_mask"], scale, mesh=mesh)


def train_step(graphdef, state: state_lib.TrainState, batch: dict, *, config, mesh: Mesh | None):
    """One optimizer step; see the module doc. Returns (new state, metrics of scalars)."""
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    tx = state_lib.make_optimizer(config, state.params)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.model_state)
        value = compute_loss(model, batch, key, loss=config.loss, mesh=mesh)
        return value, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = state_lib.clamp_logit_scale(optax.apply_updates(state.params, updates))

    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    keep = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    new_state = state_lib.TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        model_state=keep(model_state, state.model_state),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
    )
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": state_lib.learning_rate(config)(state.step),
        "logit_scale": jnp.exp(new_state.params["logit_scale"]),
        "nonfinite": (~finite).astype(jnp.int32),
        "nonfinite_run": new_state.nonfinite_run,
    }
    return new_state, metrics


def jit_train_step(graphdef, config, mesh: Mesh, abstract: state_lib.TrainState):
    """`train_step` jitted for `mesh`: state donated, in/out shardings pinned to the state's own."""
    if config.loss not in LOSSES:
        raise ValueError(f"config.loss must be one of {LOSSES}, got {config.loss!r}")
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, abstract)
    batch = {k: NamedSharding(mesh, spec) for k, spec in batch_spec(config.loss).items()}
    step = functools.partial(train_step, graphdef, config=config, mesh=mesh)
    return jax.jit(step, in_shardings=(shardings, batch), out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
