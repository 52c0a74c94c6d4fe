"""The train state: model parameters, BatchNorm statistics, optimizer state, and how they are sharded.

The NNX model is split once into a static `graphdef` and pure pytrees (nested dicts of arrays):
`TrainState.params` (`nnx.Param`s) and `TrainState.model_state` (everything else: HTSAT's
BatchNorm running statistics). The train step merges them back (`nnx.merge`) inside `jax.jit`.

Sharding (partition rules): everything is replicated, except, with `config.fsdp_text`, the 2-D
text-tower matrices of at least `FSDP_MIN_SIZE` elements, which are split over the `fsdp` mesh
axis along their largest dimension that divides evenly. Optimizer moments follow their parameter.

    parts = setup(config, mesh)     the run's objects, built once from the config: ClapConfig, graphdef,
                                    optimizer + schedule, the abstract state with its shardings
    state = init_state(parts, model)   random weights from the seed, or `model`'s

`parts.abstract` is the TrainState as `jax.ShapeDtypeStruct`s with the shardings of the *current*
mesh: Orbax restores into it, so a checkpoint written on 8 devices reads back on 4 or 1 (resharded
on read). Every function here but `setup` and `model_config` takes objects, not the config.
"""

from __future__ import annotations

import dataclasses
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
from clapcomp.train.config import FREEZE

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


def learning_rate(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(params, schedule: optax.Schedule, *, grad_clip: float, b1: float, b2: float, eps: float,
                   weight_decay: float, freeze: str = "") -> optax.GradientTransformation:  # fmt: skip
    """Global-norm clipping + Adam(W) at `schedule`; no decay on norms, biases, the logit scale and 1-D
    tensors. `params`: the parameter tree (arrays or ShapeDtypeStructs). `freeze` = "audio" | "text":
    that tower and its projection get zero updates; "audio_tower": the audio tower alone (LiT's locked
    tower; the train step also runs it in inference mode)."""
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and not _NO_DECAY.search(path_name(path)), params
    )
    tx = optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )
    if not freeze:
        return tx
    frozen = frozen_params(freeze)
    labels = {
        k: jax.tree_util.tree_map(lambda _, k=k: "frozen" if k in frozen else "train", v) for k, v in params.items()
    }
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


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


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's objects, built once (`setup`): the model config and graphdef, the optimizer and its
    schedule, and the TrainState as ShapeDtypeStructs with the mesh's shardings."""

    cfg: ClapConfig
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract: TrainState
    seed: int

    @property
    def shardings(self) -> TrainState:
        return jax.tree_util.tree_map(lambda x: x.sharding, self.abstract)


def setup(config, mesh: Mesh) -> Setup:
    """The objects `config` describes (model, optimizer + schedule, shardings on `mesh`), nothing allocated."""
    cfg = model_config(config)
    graphdef, params, model_state = abstract_model(cfg)
    o = config.optimizer
    schedule = learning_rate(o.lr, o.warmup_steps, config.total_steps)
    tx = make_optimizer(params, schedule, grad_clip=o.grad_clip, b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay, freeze=config.freeze)  # fmt: skip
    return Setup(
        cfg, graphdef, tx, schedule, abstract_state(params, model_state, tx, mesh, config.fsdp_text), config.seed
    )


def _state_from(tx: optax.GradientTransformation, params, model_state) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        nonfinite_run=jnp.zeros((), jnp.int32),
    )


def abstract_model(cfg: ClapConfig):
    """(graphdef, abstract params, abstract model_state) of a ClapModel of `cfg`, without allocating anything."""
    model = nnx.eval_shape(lambda: ClapModel(cfg, rngs=nnx.Rngs(0)))
    return split_model(model)


def abstract_state(params, model_state, tx: optax.GradientTransformation, mesh: Mesh, fsdp_text: bool) -> TrainState:
    """The TrainState of abstract `params` / `model_state` as `jax.ShapeDtypeStruct`s carrying `mesh`'s shardings."""
    abstract = jax.eval_shape(lambda p, m: _state_from(tx, p, m), params, model_state)
    shardings = state_shardings(abstract, mesh, fsdp_text)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def init_state(parts: Setup, model: ClapModel | None = None) -> TrainState:
    """The TrainState on `parts`' mesh: random weights from `parts.seed`, or `model`'s weights (a model of
    the same architecture, e.g. from `clapcomp.train.init.load_init_model`; dtype and front end stay
    `parts.cfg`'s)."""
    shardings = parts.shardings
    if model is None:

        def create():
            _, params, model_state = split_model(ClapModel(parts.cfg, rngs=nnx.Rngs(parts.seed)))
            return _state_from(parts.tx, params, model_state)

        return jax.jit(create, out_shardings=shardings)()
    _, params, model_state = split_model(model)
    params = place(params, shardings.params)
    model_state = place(model_state, shardings.model_state)
    return jax.jit(lambda p, m: _state_from(parts.tx, p, m), out_shardings=shardings)(params, model_state)


def place(tree, shardings):
    """Host (or single-device) arrays, identical on every process -> global arrays with `shardings`."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree, shardings)


def clamp_logit_scale(params):
    """LAION-CLAP clamps the logit scale to [0, ln 100] after every update."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
