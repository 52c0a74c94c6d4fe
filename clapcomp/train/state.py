"""The train state: model parameters, BatchNorm statistics, optimizer state, and how they are sharded.

The NNX model is split once into a static `graphdef` and pure pytrees (nested dicts of arrays):
`TrainState.params` (`nnx.Param`s) and `TrainState.model_state` (everything else: HTSAT's
BatchNorm running statistics). The train step merges them back (`nnx.merge`) inside `jax.jit`.

Sharding (partition rules): everything is replicated, except, with `config.fsdp_text`, the 2-D
text-tower matrices of at least `FSDP_MIN_SIZE` elements, which are split over the `fsdp` mesh
axis along their largest dimension that divides evenly. Optimizer moments follow their parameter.
`abstract_state(config, mesh)` gives the same tree as `jax.ShapeDtypeStruct`s with the shardings
of the *current* mesh: Orbax restores into it, so a checkpoint written on 8 devices reads back on
4 or 1 (resharded on read).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import ClapConfig

FSDP_MIN_SIZE = 2**18  # 262,144 elements: RoBERTa-base's 768x768 and larger matrices
MAX_LOGIT_SCALE = float(np.log(100.0))
_NO_DECAY = re.compile(r"(norm|bias|logit_scale|^bn|\.bn\d*\.|embeddings?_?ln)", re.IGNORECASE)


@struct.dataclass
class TrainState:
    """step [] int32; params / model_state: nested dicts of arrays; opt_state: optax state;
    nonfinite_run [] int32: how many steps in a row were skipped for a NaN/inf loss or gradient."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    nonfinite_run: jax.Array


def model_config(config) -> ClapConfig:
    """The `ClapConfig` described by `config.model` (an ml_collections dict of its fields)."""
    return ClapConfig.from_dict(config.model.to_dict())


def split_model(model: ClapModel):
    """model -> (graphdef, params pure dict, model_state pure dict)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def path_name(path) -> str:
    """A key path -> "text_tower.layers.0.query.kernel"."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


# ----------------------------------------------------------------------------- optimizer


def learning_rate(config) -> optax.Schedule:
    """Linear warmup to `optimizer.lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    o = config.optimizer
    warmup = min(o.warmup_steps, max(config.total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(config.total_steps, warmup + 1), 0.0)


def make_optimizer(config, params) -> optax.GradientTransformation:
    """Global-norm clipping + Adam(W); no decay on norms, biases, the logit scale and 1-D tensors.
    `config.freeze` = "audio" | "text": that tower and its projection get zero updates; "audio_tower":
    the audio tower alone (LiT's locked tower; the train step also runs it in inference mode)."""
    o = config.optimizer
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and not _NO_DECAY.search(path_name(path)), params
    )
    tx = optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask),
    )
    if not config.freeze:
        return tx
    frozen = frozen_params(config.freeze)
    labels = {
        k: jax.tree_util.tree_map(lambda _, k=k: "frozen" if k in frozen else "train", v) for k, v in params.items()
    }
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


FREEZE = {"audio": ("audio_tower", "audio_projection"), "text": ("text_tower", "text_projection"),
          "audio_tower": ("audio_tower",)}  # fmt: skip


def frozen_params(freeze: str) -> tuple[str, ...]:
    """The top-level parameter groups `config.freeze` keeps fixed."""
    if freeze not in ("", *FREEZE):
        raise ValueError(f"config.freeze must be '' or one of {list(FREEZE)}, got {freeze!r}")
    return FREEZE.get(freeze, ())


def audio_tower_locked(freeze: str) -> bool:
    """Whether the train step runs the audio tower in inference mode: BatchNorm on its running
    statistics (left unchanged), no dropout or SpecAugment, no gradient through it."""
    return "audio_tower" in frozen_params(freeze)


# ----------------------------------------------------------------------------- sharding


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh, fsdp_text: bool) -> P:
    """The partition rule for one parameter (see module doc)."""
    n = mesh.shape["fsdp"]
    if not (fsdp_text and n > 1 and name.startswith("text_tower.") and len(shape) == 2):
        return P()
    if int(np.prod(shape)) < FSDP_MIN_SIZE:
        return P()
    for dim in sorted(range(2), key=lambda d: -shape[d]):
        if shape[dim] % n == 0:
            return P(*(("fsdp" if d == dim else None) for d in range(2)))
    return P()


def state_shardings(abstract: TrainState, mesh: Mesh, fsdp_text: bool) -> TrainState:
    """NamedShardings for every leaf of a TrainState; optimizer leaves follow their parameter
    (matched by the parameter's key path being a suffix of the optimizer leaf's path)."""
    specs = {}

    def for_param(path, x):
        specs[path_name(path)] = spec = param_spec(path_name(path), x.shape, mesh, fsdp_text)
        return NamedSharding(mesh, spec)

    def for_opt(path, x):
        parts = path_name(path).split(".")
        for i in range(len(parts)):
            spec = specs.get(".".join(parts[i:]))
            if spec is not None and len(spec) <= x.ndim:
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    rep = lambda x: NamedSharding(mesh, P())
    return TrainState(
        step=rep(abstract.step),
        params=jax.tree_util.tree_map_with_path(for_param, abstract.params),
        model_state=jax.tree_util.tree_map(rep, abstract.model_state),
        opt_state=jax.tree_util.tree_map_with_path(for_opt, abstract.opt_state),
        nonfinite_run=rep(abstract.nonfinite_run),
    )


# ----------------------------------------------------------------------------- building


def _state_from(config, params, model_state) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=make_optimizer(config, params).init(params),
        nonfinite_run=jnp.zeros((), jnp.int32),
    )


def abstract_model(config):
    """(graphdef, abstract params, abstract model_state) without allocating anything."""
    cfg = model_config(config)
    model = nnx.eval_shape(lambda: ClapModel(cfg, rngs=nnx.Rngs(0)))
    return split_model(model)


def abstract_state(config, mesh: Mesh) -> TrainState:
    """The TrainState as `jax.ShapeDtypeStruct`s carrying the current mesh's shardings."""
    _, params, model_state = abstract_model(config)
    abstract = jax.eval_shape(lambda p, m: _state_from(config, p, m), params, model_state)
    shardings = state_shardings(abstract, mesh, config.fsdp_text)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def init_state(config, mesh: Mesh, model: ClapModel | None = None):
    """(graphdef, TrainState on `mesh`): random weights from `config.seed`, or `model`'s weights
    (a model of the same architecture, e.g. from `clapcomp.train.init.load_init_model`)."""
    abstract = abstract_state(config, mesh)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, abstract)
    if model is None:
        cfg = model_config(config)

        def create():
            graphdef, params, model_state = split_model(ClapModel(cfg, rngs=nnx.Rngs(config.seed)))
            return _state_from(config, params, model_state)

        graphdef = abstract_model(config)[0]
        return graphdef, jax.jit(create, out_shardings=shardings)()
    graphdef = abstract_model(config)[0]  # dtype and front end from config.model, weights from `model`
    _, params, model_state = split_model(model)
    params = place(params, shardings.params)
    model_state = place(model_state, shardings.model_state)
    create = jax.jit(lambda p, m: _state_from(config, p, m), out_shardings=shardings)
    return graphdef, create(params, model_state)


def place(tree, shardings):
    """Host (or single-device) arrays, identical on every process -> global arrays with `shardings`."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree, shardings)


def clamp_logit_scale(params):
    """LAION-CLAP clamps the logit scale to [0, ln 100] after every update."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
