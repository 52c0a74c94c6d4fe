"""The clapcomp export format, written by `clapcomp export --format safetensors|stablehlo` and read by
`clapcomp.load`: a directory with

  model.safetensors   every nnx Variable of the model (Params and BatchNorm statistics), keyed by its
                      state path joined with "." (e.g. "text_tower.layers.0.query.kernel")
  clapcomp.json       {"format": "clapcomp-safetensors", "format_version": 1, "config": ClapConfig}
  tokenizer.json      the tokenizer's own file, when the model has one

`load_exported(dir)` reads it back exactly (every tensor's name and shape checked against the config).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clapcomp import fs

FORMAT = "clapcomp-safetensors"
FORMAT_VERSION = 1


def tensor_name(path: tuple) -> str:
    """A model state path -> its model.safetensors key, e.g. \"text_tower.layers.0.query.kernel\"."""
    return ".".join(map(str, path))


def flat_params(model) -> dict[str, np.ndarray]:
    """Every nnx Variable of `model` (Params and BatchNorm stats) as float32/int numpy, by state path."""
    from flax import nnx

    return {tensor_name(p): np.array(v.get_value(), order="C") for p, v in nnx.state(model).flat_state()}


def save_safetensors(model, config, out: str | Path, tokenizer=None) -> list[Path]:
    """Write model.safetensors + clapcomp.json (+ tokenizer.json); returns the files written."""
    from safetensors.numpy import save_file

    out = Path(out)
    with fs.atomic_path(out / "model.safetensors") as tmp:
        save_file(flat_params(model), str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    fs.write_text(out / "clapcomp.json", json.dumps(meta, indent=2))
    return [out / "model.safetensors", out / "clapcomp.json", *write_tokenizer(tokenizer, out)]


def is_exported(path: Path) -> bool:
    """`inference.load` layout test: a directory written by `save_safetensors` (or a stablehlo export)."""
    meta = fs.as_path(path) / "clapcomp.json"
    return meta.is_file() and json.loads(meta.read_text()).get("format") == FORMAT


def load_exported(path: str | Path):
    """A safetensors / stablehlo export dir -> `(ClapConfig, ClapModel)`; every tensor must match."""
    from flax import nnx
    from safetensors.numpy import load_file

    from clapcomp.models.clap import ClapModel
    from clapcomp.models.configs import ClapConfig

    path = Path(path)
    meta = json.loads((path / "clapcomp.json").read_text())
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}/clapcomp.json: format {meta.get('format')!r} v{meta.get('format_version')} is not "
                         f"{FORMAT!r} <= v{FORMAT_VERSION}; is it from a newer clapcomp?")  # fmt: skip
    config = ClapConfig.from_dict(meta["config"])
    tensors = load_file(str(path / "model.safetensors"))
    model = nnx.eval_shape(lambda: ClapModel(config, rngs=nnx.Rngs(0)))
    flat = dict(nnx.state(model).flat_state())
    names = {tensor_name(p): p for p in flat}
    missing, extra = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or extra:
        raise ValueError(f"{path}/model.safetensors does not match its clapcomp.json config: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}; re-export the model")  # fmt: skip
    for name, p in names.items():
        want = flat[p].get_value().shape
        if tensors[name].shape != tuple(want):
            raise ValueError(f"{path}/model.safetensors: {name} has shape {tensors[name].shape}, config says {want}")
        flat[p] = flat[p].replace(np.asarray(tensors[name]))
    nnx.update(model, nnx.State.from_flat_path(flat))
    return config, model


def write_tokenizer(tokenizer, out: Path) -> list[Path]:
    """Copy the tokenizer's own tokenizer.json (the source file, without clapcomp's padding settings)."""
    if tokenizer is None:
        return []
    src = fs.as_path(tokenizer.source)
    if not src.is_file():
        raise ValueError(f"the tokenizer was not read from a file ({tokenizer.source}); cannot copy its tokenizer.json")
    if not fs.same_path(src, out / "tokenizer.json"):
        fs.write_bytes(out / "tokenizer.json", src.read_bytes())
    return [out / "tokenizer.json"]
