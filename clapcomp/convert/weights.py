"""Reading HF-style weight directories as NumPy tensors, safely.

`model.safetensors` (or a sharded `model.safetensors.index.json`) first; `pytorch_model.bin` only
through `torch.load(weights_only=True)` (tensors only, no arbitrary unpickling), torch imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF-style weights dir as float32/int numpy arrays (safetensors first)."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        return _read_safetensors(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").is_file():
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        out = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(_read_safetensors(directory / shard))
        return out
    if (directory / "pytorch_model.bin").is_file():
        return _read_torch_bin(directory / "pytorch_model.bin")
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "no such directory"
    raise FileNotFoundError(f"no weights in {directory}: expected one of {list(WEIGHT_FILES)}, found {found}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="flax") as f:  # flax/jax arrays also hold bfloat16
        for name in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            value = f.get_tensor(name)
            floating = np.issubdtype(value.dtype, np.floating) or value.dtype == jnp.bfloat16
            out[name] = np.asarray(value.astype(jnp.float32) if floating else value)
    return out


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install torch) or a model.safetensors"
        ) from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
