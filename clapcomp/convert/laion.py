"""LAION-CLAP `.pt` checkpoints (as released, and as CompA fine-tuned them) -> clapcomp `ClapModel`.

A checkpoint is `{"state_dict": {...}, ...}` (keys maybe prefixed "module." by DistributedDataParallel)
or a bare state dict, read with `torch.load(weights_only=True)` (torch imported lazily; no arbitrary
unpickling). Its keys are renamed to HF `ClapModel` names by the tables below (the fused
`attn.qkv` projection is split into query / key / value) and the HF mapping of
`clapcomp.convert.hf` builds the model, so one set of tables defines our layout.

The config is read off the tensor shapes: fusion (`patch_embed.mel_conv2d` present), the absolute
position embedding (`absolute_pos_embed` present, LAION's `ape=True`; kept under that name), HTSAT
width / depths / heads / window (relative position tables) / spec size (shifted-window masks), text
width / layers / vocab, projection width. Not recoverable from shapes: the text tower's head count
(taken as hidden / 64, as RoBERTa-base has) and the audio front end (LAION's defaults, `AudioConfig()`;
pass `audio=` for a model trained with other settings).

Dropped on purpose (no role in embeddings): the torchlibrosa front-end tensors
(`spectrogram_extractor.*`, `logmel_extractor.*`; clapcomp computes the same log-mel itself), the
HTSAT classification heads (`tscam_conv.*`, `head.*`), the shifted-window masks `attn_mask` (derived),
and the unused `audio_transform` / `text_transform` MLPs. Any other key is an error that lists it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from clapcomp.audio import AudioConfig
from clapcomp.convert.weights import torch_load
from clapcomp.models.configs import ClapConfig, HTSATConfig, TextConfig

# LAION name (after "audio_branch." / "text_branch." etc.) -> HF ClapModel name. Regex rows, first match.
TOP_LEVEL = [
    (r"audio_branch\.", "audio_model.audio_encoder."),
    (r"text_branch\.", "text_model."),
    (r"(audio|text)_projection\.0\.", r"\1_projection.linear1."),
    (r"(audio|text)_projection\.2\.", r"\1_projection.linear2."),
    (r"logit_scale_([at])$", r"logit_scale_\1"),
]
# Inside HTSAT (names relative to audio_branch.): LAION's Swin block names -> HF's.
HTSAT_RENAMES = [
    (r"bn0\.", "batch_norm."),
    (r"(layers\.\d+\.blocks\.\d+)\.norm1\.", r"\1.layernorm_before."),
    (r"(layers\.\d+\.blocks\.\d+)\.norm2\.", r"\1.layernorm_after."),
    (r"(layers\.\d+\.blocks\.\d+)\.attn\.proj\.", r"\1.attention.output.dense."),
    (r"(layers\.\d+\.blocks\.\d+)\.attn\.relative_position_", r"\1.attention.self.relative_position_"),
    (r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."),
    (r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.", r"\1.output.dense."),
    (r"(patch_embed\.|layers\.\d+\.downsample\.|norm\.|absolute_pos_embed$)", r"\1"),  # same names in HF
]
QKV = re.compile(r"(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$")
DROPPED = re.compile(
    r"^(audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\.|audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$"
    r"|(audio|text)_transform\.)"
)


def read_laion_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict of a LAION-CLAP / CompA `.pt` as numpy (float32 / int), wrapper prefixes removed."""
    ckpt = torch_load(path)  # torch>=2.6, weights_only
    import torch

    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no state dict of tensors (top-level keys: {list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)})"
        )
    out = {}
    for key, value in state.items():
        while key.startswith("module."):  # DistributedDataParallel wrapper
            key = key[len("module.") :]
        out[key] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def laion_to_hf(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LAION-CLAP state dict -> HF `ClapModel` tensors; raises listing every key no table maps."""
    out, unmapped = {}, []
    for key, value in tensors.items():
        if DROPPED.match(key):
            continue
        hf = _rename(TOP_LEVEL, key)
        if hf is None:
            unmapped.append(key)
            continue
        if key.startswith("audio_branch."):
            inner = key[len("audio_branch.") :]
            qkv = QKV.match(inner)
            if qkv:
                block, kind = qkv.groups()
                for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0), strict=True):
                    out[f"audio_model.audio_encoder.{block}.attention.self.{name}.{kind}"] = part
                continue
            inner = _rename(HTSAT_RENAMES, inner)
            if inner is None:
                unmapped.append(key)
                continue
            hf = "audio_model.audio_encoder." + inner
        out[hf] = value
    if unmapped:
        raise ValueError(f"{len(unmapped)} LAION-CLAP tensors have no mapping: {sorted(unmapped)[:20]}; is this an "
                         "HTSAT + RoBERTa LAION-CLAP checkpoint? (PANN audio / other text towers are not supported)")  # fmt: skip
    return out


def _rename(rows, key: str) -> str | None:
    for pattern, repl in rows:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return None


def laion_config(tensors: dict[str, np.ndarray], *, audio: AudioConfig | None = None) -> ClapConfig:
    """Infer the `ClapConfig` of a LAION-CLAP state dict from its key names and shapes (see module doc)."""
    a, t = "audio_branch.", "text_branch."
    for need in (f"{a}patch_embed.proj.weight", f"{t}embeddings.word_embeddings.weight", "audio_projection.0.weight"):
        if need not in tensors:
            raise ValueError(f"not an HTSAT + RoBERTa LAION-CLAP state dict: no {need!r} "
                             f"(keys look like {sorted(tensors)[:5]})")  # fmt: skip
    if any(".mel_conv1d." in k for k in tensors):
        raise ValueError("this checkpoint uses 1-D feature fusion (mel_conv1d); clapcomp supports 'aff_2d' fusion only")
    fusion = f"{a}patch_embed.mel_conv2d.weight" in tensors
    proj = tensors[f"{a}patch_embed.proj.weight"]
    depths, heads, window = [], [], None
    while f"{a}layers.{len(depths)}.blocks.0.norm1.weight" in tensors:
        i = len(depths)
        depths.append(sum(1 for k in tensors if re.fullmatch(rf"{a}layers\.{i}\.blocks\.\d+\.norm1\.weight", k)))
        table = tensors[f"{a}layers.{i}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
        window = (math.isqrt(table.shape[0]) + 1) // 2
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[2])
    mlp_ratio = tensors[f"{a}layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    mask = tensors.get(f"{a}layers.0.blocks.1.attn_mask")  # [windows, N, N]: grid = window * sqrt(windows)
    spec_size = window * math.isqrt(mask.shape[0]) * patch if mask is not None else HTSATConfig.spec_size
    n_mels = int(tensors[f"{a}bn0.weight"].shape[0])
    htsat = HTSATConfig(n_mels=n_mels, spec_size=spec_size, patch_size=patch, patch_stride=patch, embed_dim=embed_dim,
                        depths=tuple(depths), num_heads=tuple(heads), window_size=window, mlp_ratio=mlp_ratio,
                        qkv_bias=f"{a}layers.0.blocks.0.attn.qkv.bias" in tensors, enable_fusion=fusion,
                        ape=f"{a}absolute_pos_embed" in tensors)  # fmt: skip
    words = tensors[f"{t}embeddings.word_embeddings.weight"]
    layers = 0
    while f"{t}encoder.layer.{layers}.attention.self.query.weight" in tensors:
        layers += 1
    text = TextConfig(
        vocab_size=int(words.shape[0]), hidden_size=int(words.shape[1]), num_layers=layers,
        num_heads=max(1, int(words.shape[1]) // 64), layer_norm_eps=1e-5,  # RoBERTa-base, as LAION loads it
        intermediate_size=int(tensors[f"{t}encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(tensors[f"{t}embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(tensors[f"{t}embeddings.token_type_embeddings.weight"].shape[0]),
    )  # fmt: skip
    audio = dataclasses.replace(audio or AudioConfig(), fusion=fusion, n_mels=n_mels)
    return ClapConfig(
        audio=audio, htsat=htsat, text=text, projection_dim=int(tensors["audio_projection.0.weight"].shape[0])
    )


def load_laion_clap(path: str | Path, *, audio: AudioConfig | None = None):
    """A LAION-CLAP / CompA `.pt` -> `(ClapConfig, ClapModel)`; `audio` overrides the front-end settings."""
    from flax import nnx

    from clapcomp.convert.hf import clap_from_hf_tensors
    from clapcomp.models.clap import ClapModel

    tensors = read_laion_checkpoint(path)
    cfg = laion_config(tensors, audio=audio)
    model = ClapModel(cfg, rngs=nnx.Rngs(0))
    clap_from_hf_tensors(model, laion_to_hf(tensors))
    return cfg, model
