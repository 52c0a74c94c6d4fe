"""The optimizer: learning-rate schedule, AdamW, and parameter groups (per-parameter LR multipliers).

Every parameter gets one learning-rate multiplier (`multipliers`), the product of:

- `config.optimizer.lr_mults`: [(regex, mult), ...] searched in the parameter path
  ("text_tower.layers.3.query.kernel"); the first match wins, no match is 1 (big_vision's lr_mults);
- `config.optimizer.layer_decay`: {"audio": d, "text": d} layer-wise decay per tower (BEiT / open_clip):
  with L blocks, the tower's input side (embeddings, patch embedding, the mel BatchNorm) is layer 0,
  block i (0-based, HTSAT's blocks counted across stages, a stage's patch merging with its last block)
  is layer i + 1, and what follows the blocks (final norm, pooler, CNN fc1) is layer L + 1; layer l's
  multiplier is d ** (L + 1 - l). 1 (the default): no decay;
- `config.unlock_last`: {"audio": N, "text": M}: only the last N blocks of the tower, and what follows
  them, train; its input side and earlier blocks get 0. -1 (the default): the whole tower trains;
- `config.freeze`: the towers / projections it names get 0 (`clapcomp.train.config.FREEZE`);
- `config.lora.rank` > 0: every parameter but the LoRA adapters (and, with `config.lora.train_heads`,
  the projection heads and the logit scale) gets 0 (`clapcomp.models.lora`).

A multiplier of 0 is a frozen group: `optax.multi_transform` gives it `optax.set_to_zero()`, so its
parameters stay bit-identical and it keeps no Adam moments. The others share one clip + AdamW chain
(the global-norm clip over the trained parameters, one schedule), whose update is then scaled per
parameter: multiplier m trains at m x the schedule's rate, weight decay included (as a per-group lr).
`groups(params, mults)` condenses the per-parameter multipliers into the shortest path prefixes
("text_tower.layers.0": 0.81); the trainer logs them at start and records them in config.json
(`config.lr_groups`).
"""

from __future__ import annotations

import re

import jax
import optax

from clapcomp.models import lora as lora_lib
from clapcomp.train.config import FREEZE

_NO_DECAY = re.compile(r"(norm|bias|logit_scale|^bn|\.bn\d*\.|embeddings?_?ln)", re.IGNORECASE)
TOWERS = {"audio": "audio_tower", "text": "text_tower"}
# Inside a tower: a block's index, and the parameters before the first block (its input side).
_BLOCK = re.compile(r"^(?:(?:layers|blocks)\.(\d+)|stages\.(\d+)\.(?:blocks\.(\d+)|downsample))\.")
_INPUT = re.compile(r"^(bn0|patch_embed|absolute_pos_embed|word_embeddings|position_embeddings|token_type_embeddings"
                    r"|embed_norm)\.")  # fmt: skip


def path_name(path) -> str:
    """A key path -> "text_tower.layers.0.query.kernel"."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def learning_rate(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), 0.0)


def frozen_params(freeze: str) -> tuple[str, ...]:
    """The top-level parameter groups `config.freeze` keeps fixed."""
    if freeze not in ("", *FREEZE):
        raise ValueError(f"config.freeze must be '' or one of {list(FREEZE)}, got {freeze!r}")
    return FREEZE.get(freeze, ())


def audio_tower_locked(freeze: str) -> bool:
    """Whether the train step runs the audio tower in inference mode: BatchNorm on its running
    statistics (left unchanged), no dropout or SpecAugment, no gradient through it."""
    return "audio_tower" in frozen_params(freeze)


def layer_ids(names: list[str], tower: str) -> tuple[dict[str, int], int]:
    """The layer id (module doc) of each name under `tower` ("text_tower"), and the block count L."""
    rel = {n: n[len(tower) + 1 :] for n in names if n.startswith(tower + ".")}
    keys = {}  # name -> (stage or layer, block in the stage; None: the stage's patch merging)
    for n, r in rel.items():
        if m := _BLOCK.match(r):
            keys[n] = (int(m[1]), 0) if m[1] is not None else (int(m[2]), None if m[3] is None else int(m[3]))
    last = {}
    for s, b in keys.values():
        if b is not None:
            last[s] = max(last.get(s, b), b)
    keys = {n: (s, last[s] if b is None else b) for n, (s, b) in keys.items()}
    order = {k: i for i, k in enumerate(sorted(set(keys.values())))}
    n_blocks = len(order)
    ids = {n: order[keys[n]] + 1 if n in keys else 0 if _INPUT.match(r) else n_blocks + 1 for n, r in rel.items()}
    return ids, n_blocks


def multipliers(params, *, lr_mults=(), layer_decay=None, unlock_last=None, freeze: str = "",
                lora_heads: bool | None = None) -> dict[str, float]:  # fmt: skip
    """{parameter path: learning-rate multiplier} (module doc). `params`: the parameter tree (arrays or
    ShapeDtypeStructs); `lr_mults`: [(regex, mult), ...]; `layer_decay` / `unlock_last`: {"audio": ..,
    "text": ..} (missing: 1 / -1); `lora_heads`: None without LoRA, else whether the heads train."""
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    rules = []
    for rule in lr_mults:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"config.optimizer.lr_mults: {rule!r} is not a (regex, multiplier) pair; e.g. "
                             "--config.optimizer.lr_mults=\"[('^text_tower\\.', 0.1)]\"")  # fmt: skip
        try:
            rules.append((re.compile(rule[0]), float(rule[1])))
        except re.error as e:
            raise ValueError(f"config.optimizer.lr_mults: {rule[0]!r} is no regular expression ({e})") from None
    frozen = frozen_params(freeze)
    out = {}
    for n in names:
        out[n] = 0.0 if n.split(".")[0] in frozen else next((m for r, m in rules if r.search(n)), 1.0)
    for key in set(layer_decay or {}) | set(unlock_last or {}):
        if key not in TOWERS:
            raise ValueError(f"layer_decay / unlock_last: unknown tower {key!r}; the towers are {list(TOWERS)}")
    for key, tower in TOWERS.items():
        decay = float((layer_decay or {}).get(key, 1.0))
        last = int((unlock_last or {}).get(key, -1))
        if decay == 1.0 and last < 0:
            continue
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"config.optimizer.layer_decay.{key} = {decay}: expected 0 < decay <= 1 (1: no decay)")
        ids, n_blocks = layer_ids(names, tower)
        if last > n_blocks:
            raise ValueError(f"config.unlock_last.{key} = {last}, but the {key} tower has {n_blocks} blocks")
        for n, layer in ids.items():
            out[n] *= decay ** (n_blocks + 1 - layer)
            if last >= 0 and layer <= n_blocks - last:
                out[n] = 0.0
    if lora_heads is not None:
        for n in names:
            if not (lora_lib.is_adapter(n) or (lora_heads and lora_lib.is_head(n))):
                out[n] = 0.0
    return out


def groups(mults: dict[str, float]) -> list[list]:
    """Per-parameter multipliers -> [[path prefix, mult], ...]: the shortest dotted prefixes whose
    parameters all share one multiplier, in path order."""
    out = []

    def visit(prefix: str, names: list[str]) -> None:
        if len({mults[n] for n in names}) == 1:
            out.append([prefix, mults[names[0]]])
            return
        children: dict[str, list[str]] = {}
        depth = prefix.count(".") + 1 if prefix else 0
        for n in names:
            children.setdefault(".".join(n.split(".")[: depth + 1]), []).append(n)
        for child, under in children.items():
            visit(child, under)

    visit("", sorted(mults))
    return out


def make_optimizer(params, schedule: optax.Schedule, mults: dict[str, float], *, grad_clip: float, b1: float,
                   b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:  # fmt: skip
    """Global-norm clipping + Adam(W) at `schedule` over the parameters with a nonzero multiplier (`mults`,
    from `multipliers`), their updates scaled by it; `optax.set_to_zero()` for the others. No decay on
    norms, biases, the logit scale and 1-D tensors. `params`: the parameter tree (arrays or ShapeDtypeStructs).
    With every multiplier 1 (or 0), the optimizer state has the layout it had before parameter groups."""
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and not _NO_DECAY.search(path_name(path)), params
    )
    tx = optax.chain(
        optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )
    if any(m not in (0.0, 1.0) for m in mults.values()):
        scale = lambda updates, _: jax.tree_util.tree_map_with_path(lambda p, u: u * mults[path_name(p)], updates)
        tx = optax.chain(tx, optax.stateless(scale))
    if all(m != 0.0 for m in mults.values()):
        return tx
    labels = jax.tree_util.tree_map_with_path(lambda p, _: "frozen" if mults[path_name(p)] == 0 else "train", params)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def check_ema_decay(decay: float) -> float:
    """`config.ema_decay`, checked: 0 (no EMA) or in (0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.ema_decay = {decay}: expected 0 (no EMA) or 0 < decay < 1, e.g. 0.999")
    return float(decay)


def ema_update(ema, params, decay: float, frozen: frozenset[str] = frozenset()):
    """One step of the exponential moving average of the weights: decay * ema + (1 - decay) * params
    (None stays None: no EMA). The leaves named in `frozen` (multiplier 0, e.g. LoRA's base weights) never
    change, so their EMA is kept as it is, bit-identical to the weights (averaging w with itself drifts by ulps
    wherever each operation is rounded on its own)."""
    if ema is None:
        return None
    return jax.tree_util.tree_map_with_path(
        lambda path, e, p: e if path_name(path) in frozen else decay * e + (1.0 - decay) * p, ema, params
    )


def from_config(config, params, schedule: optax.Schedule) -> tuple[optax.GradientTransformation, dict[str, float]]:
    """(the optimizer, the per-parameter multipliers) that `config` describes for `params`."""
    o = config.optimizer
    mults = multipliers(params, lr_mults=o.lr_mults, layer_decay=dict(o.layer_decay),
                        unlock_last=dict(config.unlock_last), freeze=config.freeze,
                        lora_heads=config.lora.train_heads if config.lora.rank > 0 else None)  # fmt: skip
    tx = make_optimizer(params, schedule, mults, grad_clip=o.grad_clip, b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay)  # fmt: skip
    return tx, mults
