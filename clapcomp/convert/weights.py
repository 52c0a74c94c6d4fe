"""Reading HF-style weight directories as NumPy tensors, safely.

`model.safetensors` (or a sharded `model.safetensors.index.json`) first; `pytorch_model.bin` only
through `torch_load`: `torch.load(weights_only=True)` (tensors only, no arbitrary unpickling), torch
imported lazily, and only from torch 2.6 (`weights_only=True` could still run code before it:
CVE-2025-32434). Every `.pt` / `.bin` clapcomp reads goes through `torch_load`.
"""

from __future__ import annotations

import json
import re
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


MIN_TORCH = (2, 6)


def torch_load(path: str | Path, safe_globals=()):
    """`torch.load(path, weights_only=True)` on CPU, refused before anything is read when torch is older
    than 2.6 (CVE-2025-32434); `safe_globals`: classes the pickle may name (torch's allow-list)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch checkpoint; reading it needs torch>=2.6 (pip install 'torch>=2.6')"
        ) from e
    found = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if found is None or tuple(map(int, found.groups())) < MIN_TORCH:
        raise ImportError(
            f"reading {path} needs torch>=2.6, found {torch.__version__}: before 2.6, torch.load(weights_only=True) "
            "can still run code from a crafted file (CVE-2025-32434). Upgrade: pip install 'torch>=2.6'"
        )
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code objects
        raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {e}. clapcomp only reads "
                         "checkpoints made of plain tensors; re-save it as {'state_dict': model.state_dict()}") from e  # fmt: skip


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    state = torch_load(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}
