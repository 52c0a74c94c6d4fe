"""LoRA (Hu et al. 2021) on the towers' projections with flax's `nnx.LoRA`, and merging it away.

    model = wrap(model, LoRAConfig(rank=4, alpha=8), rngs)   the matching tower `nnx.Linear`s -> `Adapted`
    model = merge(model)                                     every `Adapted` -> a plain `nnx.Linear` (in place)

An adapted projection computes `base(x) + scale * (x @ A @ B)`, scale = alpha / rank, A [in, rank]
(He-uniform), B [rank, out] (zeros: the adapted model starts equal to its base). Its parameters are
"<module path>.base_module.{kernel,bias}" and "<module path>.{lora_a,lora_b}" (`is_adapter`); `merge`
writes W + scale * A @ B (float32) into the kernel, so the merged model has the plain `ClapModel`'s
parameter tree and anything reading a plain model (HF, StableHLO, ONNX, safetensors) reads it.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
from flax import nnx

TOWERS = ("audio_tower", "text_tower")
# The attention (query, key, value, output) and MLP projections of the text layers and HTSAT's Swin blocks.
DEFAULT_TARGETS = r"\.(layers|blocks)\.\d+\.(query|key|value|attn_out|out|ffn_in|ffn_out|fc1|fc2)$"
HEADS = ("audio_projection", "text_projection", "logit_scale")
ADAPTER_PARAMS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank: the adapters' rank (0: no LoRA); alpha: scale = alpha / rank; targets: a regex searched in
    the module path of every tower `nnx.Linear` ("text_tower.layers.0.query")."""

    rank: int = 0
    alpha: float = 1.0
    targets: str = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


NO_LORA = LoRAConfig()


class Adapted(nnx.LoRA):
    """`nnx.LoRA` around an `nnx.Linear`, with LoRA's scale: x [..., in] -> base(x) + scale * x A B [..., out]."""

    def __init__(self, base: nnx.Linear, rank: int, scale: float, *, rngs: nnx.Rngs):
        super().__init__(base.in_features, rank, base.out_features, base_module=base, dtype=base.dtype,
                         param_dtype=base.param_dtype, rngs=rngs)  # fmt: skip
        self.scale = float(scale)

    def __call__(self, x):
        xc, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        return self.base_module(x) + (xc @ a @ b) * jnp.asarray(self.scale, xc.dtype)


def _name(path) -> str:
    return ".".join(str(k) for k in path)


def _set(model: nnx.Module, path, module: nnx.Module) -> None:
    parent = model
    for k in path[:-1]:
        parent = parent[k] if isinstance(k, int) else getattr(parent, k)
    setattr(parent, path[-1], module)


def targets(model: nnx.Module, pattern: str) -> list[tuple]:
    """The paths of the tower `nnx.Linear`s whose module path ("text_tower.layers.0.query") `pattern` searches."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"config.lora.targets: {pattern!r} is no regular expression ({e})") from None
    return [
        path
        for path, node in nnx.iter_graph(model)
        if type(node) is nnx.Linear and path and path[0] in TOWERS and rx.search(_name(path))
    ]


def wrap(model: nnx.Module, lora: LoRAConfig, rngs: nnx.Rngs) -> nnx.Module:
    """`model` (in place, and returned) with every target projection (`targets`) wrapped in `Adapted`; the
    base weights are shared, not copied. A pattern matching nothing is an error."""
    if lora.rank < 1:
        raise ValueError(f"config.lora.rank = {lora.rank}: expected a rank >= 1 (0 turns LoRA off)")
    paths = targets(model, lora.targets)
    if not paths:
        raise ValueError(f"config.lora.targets = {lora.targets!r} matches no projection of the towers; "
                         f"the default is {DEFAULT_TARGETS!r}")  # fmt: skip
    for path in paths:
        base = model
        for k in path:
            base = base[k] if isinstance(k, int) else getattr(base, k)
        _set(model, path, Adapted(base, lora.rank, lora.scale, rngs=rngs))
    return model


def merge(model: nnx.Module) -> nnx.Module:
    """`model` (in place, and returned) with every `Adapted` replaced by its base `nnx.Linear`, whose
    kernel becomes W + scale * A @ B (computed in float32, stored in the kernel's dtype)."""
    adapted = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, Adapted)]
    for path, node in adapted:
        base = node.base_module
        delta = jnp.asarray(node.lora_a[...], jnp.float32) @ jnp.asarray(node.lora_b[...], jnp.float32)
        kernel = jnp.asarray(base.kernel[...], jnp.float32) + node.scale * delta
        base.kernel[...] = kernel.astype(base.kernel[...].dtype)
        _set(model, path, base)
    return model


def is_adapter(name: str) -> bool:
    """Whether the parameter path "text_tower.layers.0.query.lora_a" is an adapter matrix."""
    return name.rsplit(".", 1)[-1] in ADAPTER_PARAMS


def is_head(name: str) -> bool:
    """Whether the parameter path belongs to the projection heads or the logit scale."""
    return name.split(".", 1)[0] in HEADS
