"""Rematerialisation (gradient checkpointing) of a tower's blocks: `HTSATConfig.remat` / `TextConfig.remat`.

  "none"                              keep every activation for the backward pass (fastest, most memory)
  "dots_saveable"                     keep matmul outputs, recompute the rest (layer norms, GELU, softmax)
  "dots_with_no_batch_dims_saveable"  keep matmul outputs without batch dimensions: the projections
                                      (qkv, out, MLP) but not the attention scores / context (QK^T, AV)
  "nothing_saveable"                  keep only each block's input; recompute the block in the backward
                                      pass (least memory, ~1 extra forward of the tower)
The forward values and the gradients are the same with every policy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

POLICIES = {
    "none": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def blockwise(call: Callable, policy: str, field: str) -> Callable:
    """`call(block, *args)` rematerialised with `policy` (one of POLICIES; `field` names the config
    field in the error), or `call` itself for "none"."""
    if policy not in POLICIES:
        raise ValueError(f"{field}={policy!r} is not a remat policy; use one of {sorted(POLICIES)}")
    if policy == "none":
        return call
    return nnx.remat(call, policy=POLICIES[policy])
