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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clapcomp.models import lora as lora_lib
from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import ClapConfig
from clapcomp.train import optim
from clapcomp.train.optim import path_name

FSDP_MIN_SIZE = 2**18  # 262,144 elements: RoBERTa-base's 768x768 and larger matrices
MAX_LOGIT_SCALE = float(np.log(100.0))
LORA_STREAM = 0x10A  # folded into the seed for the LoRA adapters' initial A


@struct.dataclass
class TrainState:
    """step [] int32; params / model_state: nested dicts of arrays; opt_state: optax state;
    nonfinite_run [] int32: how many steps in a row were skipped for a NaN/inf loss or gradient;
    ema: the exponential moving average of `params` (same tree; None without `config.ema_decay`)."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    nonfinite_run: jax.Array
    ema: Any = None


def model_config(config) -> ClapConfig:
    """The `ClapConfig` described by `config.model` (an ml_collections dict of its fields)."""
    return ClapConfig.from_dict(config.model.to_dict())


def split_model(model: ClapModel):
    """model -> (graphdef, params pure dict, model_state pure dict)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


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
        ema=None if abstract.ema is None else jax.tree_util.tree_map_with_path(for_param, abstract.ema),
    )


# ----------------------------------------------------------------------------- building


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's objects, built once (`setup`): the model config and graphdef, the optimizer and its
    schedule, and the TrainState as ShapeDtypeStructs with the mesh's shardings; the resolved parameter groups."""

    cfg: ClapConfig
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract: TrainState
    seed: int
    lr_groups: list  # [[path prefix, learning-rate multiplier], ...] (clapcomp.train.optim.groups)
    ema_decay: float = 0.0  # config.ema_decay: 0, no EMA of the weights
    lora: lora_lib.LoRAConfig = lora_lib.NO_LORA  # config.lora: rank 0, no adapters
    frozen: frozenset[str] = frozenset()  # the parameter paths of multiplier 0 (they never change)

    @property
    def shardings(self) -> TrainState:
        return jax.tree_util.tree_map(lambda x: x.sharding, self.abstract)


def setup(config, mesh: Mesh) -> Setup:
    """The objects `config` describes (model, optimizer + schedule, shardings on `mesh`), nothing allocated."""
    cfg, lora = model_config(config), lora_config(config)
    graphdef, params, model_state = abstract_model(cfg, lora)
    schedule = optim.learning_rate(config.optimizer.lr, config.optimizer.warmup_steps, config.total_steps)
    tx, mults = optim.from_config(config, params, schedule)
    ema_decay = optim.check_ema_decay(config.ema_decay)
    abstract = abstract_state(params, model_state, tx, mesh, config.fsdp_text, ema=ema_decay > 0)
    frozen = frozenset(name for name, m in mults.items() if m == 0)
    return Setup(cfg, graphdef, tx, schedule, abstract, config.seed, optim.groups(mults), ema_decay, lora, frozen)


def lora_config(config) -> lora_lib.LoRAConfig:
    """The `LoRAConfig` of `config.lora` (rank 0: none)."""
    if config.lora.rank < 0:
        raise ValueError(f"config.lora.rank = {config.lora.rank}: expected 0 (no LoRA) or a rank >= 1, e.g. 4")
    return lora_lib.LoRAConfig(int(config.lora.rank), float(config.lora.alpha), str(config.lora.targets))


def adapt(model: ClapModel, lora: lora_lib.LoRAConfig, seed: int) -> ClapModel:
    """`model` with `lora`'s adapters (B = 0: it computes what it computed), or `model` itself at rank 0.
    The adapters' A come from their own stream of `seed`, so adding them changes no other weight."""
    if lora.rank == 0:
        return model
    return lora_lib.wrap(model, lora, nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), LORA_STREAM)))


def _state_from(tx: optax.GradientTransformation, params, model_state, ema: bool) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        nonfinite_run=jnp.zeros((), jnp.int32),
        ema=jax.tree_util.tree_map(jnp.copy, params) if ema else None,  # the average starts at the initial weights
    )


def abstract_model(cfg: ClapConfig, lora: lora_lib.LoRAConfig = lora_lib.NO_LORA):
    """(graphdef, abstract params, abstract model_state) of a ClapModel of `cfg` with `lora`'s adapters,
    without allocating anything."""
    model = nnx.eval_shape(lambda: adapt(ClapModel(cfg, rngs=nnx.Rngs(0)), lora, 0))
    return split_model(model)


def abstract_state(params, model_state, tx: optax.GradientTransformation, mesh: Mesh, fsdp_text: bool, *,
                   ema: bool = False) -> TrainState:  # fmt: skip
    """The TrainState of abstract `params` / `model_state` (with an EMA of the params if `ema`) as
    `jax.ShapeDtypeStruct`s carrying `mesh`'s shardings."""
    abstract = jax.eval_shape(lambda p, m: _state_from(tx, p, m, ema), params, model_state)
    shardings = state_shardings(abstract, mesh, fsdp_text)
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def init_state(parts: Setup, model: ClapModel | None = None) -> TrainState:
    """The TrainState on `parts`' mesh: random weights from `parts.seed`, or `model`'s weights (a model of
    the same architecture, e.g. from `clapcomp.train.init.load_init_model`; dtype and front end stay
    `parts.cfg`'s). With `parts.lora`, the adapters are added to those weights (B = 0)."""
    shardings = parts.shardings
    if model is None:

        def create():
            model = adapt(ClapModel(parts.cfg, rngs=nnx.Rngs(parts.seed)), parts.lora, parts.seed)
            _, params, model_state = split_model(model)
            return _state_from(parts.tx, params, model_state, parts.ema_decay > 0)

        return jax.jit(create, out_shardings=shardings)()
    _, params, model_state = split_model(adapt(model, parts.lora, parts.seed))
    params = place(params, shardings.params)
    model_state = place(model_state, shardings.model_state)
    ema = parts.ema_decay > 0
    return jax.jit(lambda p, m: _state_from(parts.tx, p, m, ema), out_shardings=shardings)(params, model_state)


def place(tree, shardings):
    """Host (or single-device) arrays, identical on every process -> global arrays with `shardings`."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, tree, shardings)


def clamp_logit_scale(params):
    """LAION-CLAP clamps the logit scale to [0, ln 100] after every update."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
