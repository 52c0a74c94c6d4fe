"""The train step, built once from objects (big_vision style) and jitted with the state donated:

    parts = state_lib.setup(config, mesh)                    graphdef, optimizer + schedule, shardings
    train_step = make_train_step(parts.graphdef, parts.tx, parts.schedule, loss_fn("compa"), mesh,
                                 seed=parts.seed, state_sharding=parts.shardings)    (or from_parts)
    state, metrics = train_step(state, batch)

No config is read inside the trace. Per step:
  key = fold_in(key(seed), step)             the same step always draws the same randomness, so a
                                             resumed run is bit-identical to an unbroken one
  audio  = embed_audio(waveform, lengths)    log-mel on device (an int16 waveform x 2**-15 first: `waveform`),
                                             random crop / SpecAugment / dropout
                                             (a locked audio tower, `lock_audio_tower`: inference mode,
                                             BatchNorm statistics unchanged, no gradient through it;
                                             or its cached outputs `audio_pooled` [B, P] -> projection)
  texts  = embed_tokens(captions), and the hard negatives [B, K, L] or modular positives
           [B, P, L] / negatives [B, Q, L], flattened to rows of the same text tower
  loss   = clapcomp.losses (plain | compa | modular), sharded over the mesh's batch axes
  (config.accumulation_steps A > 1: the same loss and gradient from A micro-batches, GradCache:
   towers run on N/A samples at a time, the loss on all N; `make_loss_and_grads`)
  grads -> tx (clip -> Adam(W) with `schedule`) -> logit_scale clamped to [0, ln 100]
If the loss or any gradient is NaN/inf, the update is dropped: parameters, optimizer state and
BatchNorm statistics stay as they were, `metrics["nonfinite"]` is 1 and `state.nonfinite_run`
counts the skipped steps in a row (the loop stops the run when it reaches the config's limit).
The learning rate follows the count of *applied* updates (the optimizer's own step count, which a
skipped step does not advance), and `metrics["learning_rate"]` is `schedule(that count)`: the rate
this step applied, or would have applied had it not been skipped.
No host synchronisation happens inside.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clapcomp import losses
from clapcomp.data.options import fields
from clapcomp.train import optim
from clapcomp.train import state as state_lib
from clapcomp.train.config import LOSSES
from clapcomp.train.distributed import BATCH

LossFn = Callable[..., jax.Array]  # (model, batch, key, mesh) -> [] float32


def batch_spec(loss: str, *, pooled: bool = False) -> dict[str, P]:
    """The batch fields the loss needs (parts of `clapcomp.data.options.FIELDS`), each sharded on dim 0 over all
    devices; `pooled`: the audio comes as a locked tower's cached outputs (`audio_pooled`), not waveforms."""
    parts = ["pooled"] if pooled else ["waveform", "length"]
    parts.append("caption")
    if loss in ("compa", "modular"):
        parts.append("negatives")
    if loss == "modular":
        parts.append("positives")
    return {f.name: BATCH for f in fields(*parts)}


def _embed_rows(model, ids, mask, key):
    """ids/mask [B, K, L] -> [B, K, D] embeddings through the text tower (train mode)."""
    b, k, length = ids.shape
    return model.embed_tokens(ids.reshape(b * k, length), mask.reshape(b * k, length), train=True, key=key).reshape(
        b, k, -1
    )


def waveform(batch) -> jax.Array:
    """The batch's waveform [B, S] f32. An int16 one (the trainer's: `DataConfig.pcm16_batches`) is converted
    here, on the device, as the host would: x * 2**-15 in float32 (exact: every int16 is a float32, 2**-15 a
    power of two), so the model sees the same floats, bit for bit."""
    wave = batch["waveform"]
    return wave.astype(jnp.float32) * jnp.float32(1.0 / 32768.0) if wave.dtype == jnp.int16 else wave


def _embed_audio(model, batch, key, lock_audio_tower: bool):
    """[B, D] audio embeddings in train mode; a locked tower runs as at inference (LiT), under
    stop_gradient, on the random crop: only the projection after it trains. A batch with
    `audio_pooled` [B, P] (the locked tower's outputs, cached: clapcomp.train.locked_tower) skips the
    tower: the same embeddings for clips that fit the clip window (their crop is the whole clip)."""
    if "audio_pooled" in batch:
        if not lock_audio_tower:
            raise ValueError(
                "the batch carries audio_pooled (a locked audio tower's cached outputs, config.data.tower_cache) "
                "but this run trains its audio tower; set config.freeze='audio_tower' or drop config.data.tower_cache"
            )
        return model.embed_pooled(batch["audio_pooled"])
    if not lock_audio_tower:
        return model.embed_audio(waveform(batch), batch["lengths"], train=True, key=key)
    pooled = model.pool_audio(waveform(batch), batch["lengths"], key=key)
    return model.embed_pooled(jax.lax.stop_gradient(pooled))


@dataclasses.dataclass(frozen=True)
class Loss:
    """The train loss `name` ("plain" | "compa" | "modular") in its two halves, so the step can cache the
    embeddings between them (GradCache): `embed` runs the towers, `on_embeddings` the contrastive loss on
    all of them at once; calling it is the two in a row, (model, batch, key, mesh) -> [] float32.
    `lock_audio_tower`: the audio tower runs in inference mode (see `_embed_audio`)."""

    name: str
    lock_audio_tower: bool = False

    def embed(self, model, batch, key) -> dict[str, jax.Array]:
        """The batch's embeddings (train mode, randomness from `key`): audio / text [B, D], negatives [B, K, D]
        (compa, modular), positives [B, P, D] (modular)."""
        k_audio, k_text, k_neg, k_pos = jax.random.split(key, 4)
        out = {
            "audio": _embed_audio(model, batch, k_audio, self.lock_audio_tower),
            "text": model.embed_tokens(batch["input_ids"], batch["attention_mask"], train=True, key=k_text),
        }
        if self.name != "plain":
            out["negatives"] = _embed_rows(model, batch["neg_input_ids"], batch["neg_attention_mask"], k_neg)
        if self.name == "modular":
            out["positives"] = _embed_rows(model, batch["pos_input_ids"], batch["pos_attention_mask"], k_pos)
        return out

    def on_embeddings(self, emb: dict[str, jax.Array], log_scale: jax.Array, batch, mesh: Mesh | None) -> jax.Array:
        """The loss of `embed`'s output with logit scale exp(`log_scale`), sharded over `mesh`'s batch axes."""
        audio, text, scale = emb["audio"], emb["text"], jnp.exp(log_scale)
        if self.name == "plain":
            return losses.contrastive_loss(audio, text, scale, mesh=mesh)
        if self.name == "compa":
            return losses.contrastive_loss(audio, text, scale, emb["negatives"], batch["neg_mask"], mesh=mesh)
        positives = jnp.concatenate([text[:, None], emb["positives"]], axis=1)  # the main caption is positive 0
        positive_mask = jnp.concatenate([jnp.ones_like(batch["pos_mask"][:, :1]), batch["pos_mask"]], axis=1)
        return losses.modular_loss(audio, positives, positive_mask, emb["negatives"], batch["neg_mask"], scale,
                                   mesh=mesh)  # fmt: skip

    def __call__(self, model, batch, key, mesh: Mesh | None) -> jax.Array:
        return self.on_embeddings(self.embed(model, batch, key), model.logit_scale[...], batch, mesh)


def loss_fn(name: str, *, lock_audio_tower: bool = False) -> Loss:
    """The train loss `name` ("plain" | "compa" | "modular") as a `Loss`: (model, batch, key, mesh) -> scalar;
    `lock_audio_tower`: the audio tower runs in inference mode (see `_embed_audio`)."""
    if name not in LOSSES:
        raise ValueError(f"config.loss must be one of {LOSSES}, got {name!r}")
    return Loss(name, lock_audio_tower)


def applied_updates(opt_state) -> jax.Array:
    """[] int32: how many updates the optimizer has applied (its learning-rate schedule's count)."""
    counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    counts = [v for path, v in counts if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
    if len(counts) != 1:
        raise ValueError(
            f"the optimizer must apply its learning rate through one schedule (optax.scale_by_schedule, as "
            f"optax.adamw(schedule) does); found {len(counts)} schedule counts in its state"
        )
    return counts[0]


def _split(x: jax.Array, a: int) -> jax.Array:
    """[N, ...] -> [A, N/A, ...]: micro-batch j holds rows j, j+A, j+2A, ..., so each device's contiguous
    shard of the batch gives every micro-batch its own N/(A x devices) rows and nothing moves between devices."""
    return jnp.moveaxis(x.reshape(x.shape[0] // a, a, *x.shape[1:]), 1, 0)


def _merge(x: jax.Array) -> jax.Array:
    """[A, N/A, ...] -> [N, ...], the inverse of `_split`: the rows back in batch order."""
    return jnp.moveaxis(x, 0, 1).reshape(-1, *x.shape[2:])


def make_loss_and_grads(graphdef, loss_fn: LossFn, mesh: Mesh, accumulation_steps: int = 1):
    """`(params, model_state, batch, key) -> (loss, model_state, grads)` of `loss_fn` on the global batch.

    accumulation_steps A = 1: one `jax.value_and_grad` through towers and loss. A > 1 (GradCache, Gao et
    al. 2021; `loss_fn` must be a `Loss`): the batch is split into A micro-batches of N/A (`_split`);
    pass 1 embeds them one by one in a `lax.scan` with no gradient, so no activations are kept; the loss
    and its gradient w.r.t. the N embeddings (and the logit scale) are computed on the whole batch at once,
    sharded as at A = 1; pass 2 re-embeds each micro-batch with the same key (same dropout / crops /
    SpecAugment) and model state and pulls its rows of the embedding gradient back through the towers
    (`jax.vjp`), summing the parameter gradients. With no randomness and no batch statistics in training
    mode this is the A = 1 gradient up to float32 rounding, for activations of N/A samples instead of N;
    BatchNorm in training mode sees each micro-batch's own statistics (its running averages are updated
    A times, in micro-batch order).
    """
    a = accumulation_steps
    if a < 1:
        raise ValueError(f"config.accumulation_steps must be >= 1, got {a}")

    def embed(params, model_state, batch, key, fn):
        model = nnx.merge(graphdef, params, model_state)
        return fn(model, batch, key), nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def whole(params, model_state, batch, key):
        (loss, model_state), grads = jax.value_and_grad(
            lambda p: embed(p, model_state, batch, key, lambda m, b, k: loss_fn(m, b, k, mesh)), has_aux=True
        )(params)
        return loss, model_state, grads

    if a == 1:
        return whole
    if not isinstance(loss_fn, Loss):
        raise ValueError("accumulation_steps > 1 needs the loss as a clapcomp.train.step.Loss (embed + on_embeddings)")

    def accumulated(params, model_state, batch, key):
        n = jax.tree_util.tree_leaves(batch)[0].shape[0]
        if n % (a * mesh.size):
            raise ValueError(
                f"the global batch of {n} does not split into accumulation_steps={a} micro-batches over the "
                f"{mesh.size} devices; set config.data.batch_size to a multiple of {a * mesh.size}"
            )
        split = lambda x: jax.lax.with_sharding_constraint(_split(x, a), NamedSharding(mesh, P(None, *BATCH)))
        micro, keys = jax.tree_util.tree_map(split, batch), jax.random.split(key, a)

        def forward(state, xs):
            emb, state = embed(params, state, *xs, loss_fn.embed)
            return state, emb

        new_model_state, emb = jax.lax.scan(forward, model_state, (micro, keys))
        emb = jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(_merge(x), NamedSharding(mesh, BATCH)), emb
        )
        loss, (emb_grads, scale_grad) = jax.value_and_grad(loss_fn.on_embeddings, argnums=(0, 1))(
            emb, params["logit_scale"], batch, mesh
        )

        def backward(carry, xs):
            state, total = carry
            mb, k, cotangent = xs
            _, pull, state = jax.vjp(lambda p: embed(p, state, mb, k, loss_fn.embed), params, has_aux=True)
            return (state, jax.tree_util.tree_map(jnp.add, total, pull(cotangent)[0])), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        cotangents = jax.tree_util.tree_map(split, emb_grads)
        (_, grads), _ = jax.lax.scan(backward, (model_state, zeros), (micro, keys, cotangents))
        grads = {**grads, "logit_scale": grads["logit_scale"] + scale_grad}
        return loss, new_model_state, grads

    return accumulated


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule, loss_fn: LossFn,
                    mesh: Mesh, *, seed: int, state_sharding: state_lib.TrainState,
                    ema_decay: float = 0.0, frozen: frozenset[str] = frozenset(),
                    accumulation_steps: int = 1):  # fmt: skip
    """The jitted `train_step(state, batch) -> (state, metrics)` of the module doc, for `mesh`.

    `tx` must apply `schedule` (e.g. `optax.adamw(schedule)`); `state_sharding` is the TrainState's
    NamedShardings (e.g. `state_lib.Setup.shardings`): state in and out keep them, the state is
    donated, every batch array is split on dim 0 over all devices. Metrics are replicated scalars.
    With `state.ema` (config.ema_decay = `ema_decay`), each applied update also advances the EMA of the weights
    but of the `frozen` parameter paths (`state_lib.Setup.frozen`), whose EMA stays their weights.
    `accumulation_steps`: the gradient of the whole batch from that many micro-batches (`make_loss_and_grads`).
    """
    loss_and_grads = make_loss_and_grads(graphdef, loss_fn, mesh, accumulation_steps)

    def train_step(state: state_lib.TrainState, batch: dict):
        key = jax.random.fold_in(jax.random.key(seed), state.step)

        loss, model_state, grads = loss_and_grads(state.params, state.model_state, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = state_lib.clamp_logit_scale(optax.apply_updates(state.params, updates))

        leaves = jax.tree_util.tree_leaves(grads)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
        keep = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
        new_state = state_lib.TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            model_state=keep(model_state, state.model_state),
            opt_state=keep(opt_state, state.opt_state),
            nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
            ema=keep(optim.ema_update(state.ema, params, ema_decay, frozen), state.ema),
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(applied_updates(state.opt_state)),
            "logit_scale": jnp.exp(new_state.params["logit_scale"]),
            "nonfinite": (~finite).astype(jnp.int32),
            "nonfinite_run": new_state.nonfinite_run,
        }
        return new_state, metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, in_shardings=(state_sharding, NamedSharding(mesh, BATCH)),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)  # fmt: skip


def from_parts(parts: state_lib.Setup, mesh: Mesh, *, loss: str, freeze: str = "", accumulation_steps: int = 1):
    """`make_train_step` of a run's objects (`state_lib.setup`) with the loss `loss` (config.loss), the
    audio tower locked when `freeze` (config.freeze) says so and `accumulation_steps` (config.accumulation_steps)."""
    fn = loss_fn(loss, lock_audio_tower=optim.audio_tower_locked(freeze))
    return make_train_step(parts.graphdef, parts.tx, parts.schedule, fn, mesh, seed=parts.seed,
                           state_sharding=parts.shardings, ema_decay=parts.ema_decay, frozen=parts.frozen,
                           accumulation_steps=accumulation_steps)  # fmt: skip
