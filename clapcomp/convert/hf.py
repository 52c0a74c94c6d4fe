"""HF transformers `ClapModel` <-> clapcomp `ClapModel`: configs and weights, both directions.

Weights are mapped by tables: one row = (HF tensor name, path of the nnx Variable in our module,
transform). The same rows import (`rows_from_hf`) and export (`rows_to_hf`), so an exported
directory loads back into `transformers.ClapModel` unchanged. Transforms (`TO_OURS` / `TO_HF`):
"copy"; "linear" (torch `[out, in]` weight <-> flax `[in, out]` kernel); "conv" (torch OIHW <->
flax HWIO); "grid" (HTSAT's absolute position embedding, `[1, N, C]` <-> `[1, H, W, C]`).

HF `ClapModel` has two logit scales, `logit_scale_a` and `logit_scale_t`; LAION-CLAP's loss uses
`logit_scale_a` for both directions, so clapcomp imports `logit_scale_a` as its single
`logit_scale` (and ignores `logit_scale_t`); export writes the value to both.

Files: `model.safetensors` (or a sharded `model.safetensors.index.json`) first; `pytorch_model.bin`
only through `torch.load(weights_only=True)` (no arbitrary unpickling), with torch imported lazily.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp import fs
from clapcomp.audio import AudioConfig
from clapcomp.convert.weights import read_tensors
from clapcomp.models.configs import ClapConfig, HTSATConfig, TextConfig

# ---------------------------------------------------------------------------------------------
# Tables: row = (HF name below a prefix, path in the module's nnx state, transform)

TO_OURS = {"copy": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(2, 3, 1, 0),
           "grid": lambda a: a.reshape(1, math.isqrt(a.shape[1]), -1, a.shape[2])}  # fmt: skip
TO_HF = {"copy": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(3, 2, 0, 1),
         "grid": lambda a: a.reshape(1, -1, a.shape[-1])}  # fmt: skip


def linear_rows(hf: str, path: tuple) -> list[tuple]:
    return [(f"{hf}.weight", (*path, "kernel"), "linear"), (f"{hf}.bias", (*path, "bias"), "copy")]


def norm_rows(hf: str, path: tuple) -> list[tuple]:
    return [(f"{hf}.weight", (*path, "scale"), "copy"), (f"{hf}.bias", (*path, "bias"), "copy")]


def rows_from_hf(tensors: dict[str, np.ndarray], rows, flat: dict, prefix: str = "") -> dict:
    """HF tensors -> {state path: array} for the rows; `flat` (the module's flat state, abstract or
    not) gives each path's shape and dtype."""
    missing = [prefix + hf for hf, _, _ in rows if prefix + hf not in tensors]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} expected tensors, e.g. {missing[:5]}; does config.json match?")
    out = {}
    for hf, path, transform in rows:
        value = TO_OURS[transform](np.asarray(tensors[prefix + hf], np.float32))
        want = flat[path].get_value()
        if value.shape != want.shape:
            raise ValueError(
                f"{prefix + hf}: checkpoint shape {value.shape} (after {transform}) != model shape "
                f"{want.shape} at {'.'.join(map(str, path))}; config.json and weights disagree"
            )
        out[path] = jnp.asarray(value, want.dtype)
    return out


def rows_to_hf(flat: dict, rows, prefix: str = "") -> dict[str, np.ndarray]:
    """{state path: Variable or array} -> HF float32 tensors for the rows; inverse of `rows_from_hf`."""
    out = {}
    for hf, path, transform in rows:
        value = flat[path]
        value = np.asarray(value.get_value() if isinstance(value, nnx.Variable) else value, np.float32)
        out[prefix + hf] = np.ascontiguousarray(TO_HF[transform](value))
    return out


def _flat(module_or_state) -> dict:
    state = nnx.state(module_or_state) if isinstance(module_or_state, nnx.Module) else module_or_state
    return dict(nnx.to_flat_state(state))


def import_rows(tensors: dict[str, np.ndarray], module: nnx.Module, rows, prefix: str = "") -> set[str]:
    """Copy `tensors[prefix + hf_name]` into the module's Variables; returns the names consumed."""
    nnx.update(module, nnx.from_flat_state(rows_from_hf(tensors, rows, _flat(module), prefix)))
    return {prefix + hf for hf, _, _ in rows}


def export_rows(module: nnx.Module, rows, prefix: str = "") -> dict[str, np.ndarray]:
    return rows_to_hf(_flat(module), rows, prefix)


# ---------------------------------------------------------------------------------------------
# Text tower (RoBERTa / BERT-family; the same names in HF ClapTextModel, RobertaModel, BertModel)


def text_rows(cfg: TextConfig, *, with_pooler: bool | None = None) -> list[tuple]:
    """Rows for a `TextEncoder`. HF names are relative to the text model (no `text_model.`)."""
    rows = [
        ("embeddings.word_embeddings.weight", ("word_embeddings", "embedding"), "copy"),
        ("embeddings.position_embeddings.weight", ("position_embeddings", "embedding"), "copy"),
        ("embeddings.token_type_embeddings.weight", ("token_type_embeddings", "embedding"), "copy"),
        *norm_rows("embeddings.LayerNorm", ("embed_norm",)),
    ]
    for i in range(cfg.num_layers):
        hf, us = f"encoder.layer.{i}", ("layers", i)
        rows += linear_rows(f"{hf}.attention.self.query", (*us, "query"))
        rows += linear_rows(f"{hf}.attention.self.key", (*us, "key"))
        rows += linear_rows(f"{hf}.attention.self.value", (*us, "value"))
        rows += linear_rows(f"{hf}.attention.output.dense", (*us, "attn_out"))
        rows += norm_rows(f"{hf}.attention.output.LayerNorm", (*us, "attn_norm"))
        rows += linear_rows(f"{hf}.intermediate.dense", (*us, "ffn_in"))
        rows += linear_rows(f"{hf}.output.dense", (*us, "ffn_out"))
        rows += norm_rows(f"{hf}.output.LayerNorm", (*us, "ffn_norm"))
    if cfg.pooling == "pooler" if with_pooler is None else with_pooler:
        rows += linear_rows("pooler.dense", ("pooler",))
    return rows


# Persistent HF buffers that carry no learned state.
TEXT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

HF_TEXT_DEFAULTS = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
    "layer_norm_eps": 1e-12, "pad_token_id": 1,
}  # fmt: skip


def text_config_from_hf(d: dict, *, family: str = "roberta", pooling: str = "pooler") -> TextConfig:
    """HF `ClapTextConfig` / `RobertaConfig` / `BertConfig` dict -> `TextConfig`."""
    t = {**HF_TEXT_DEFAULTS, **{k: v for k, v in d.items() if v is not None}}
    if t.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"only absolute position embeddings are supported, got {t['position_embedding_type']!r}")
    return TextConfig(
        family=family,
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        num_layers=t["num_hidden_layers"],
        num_heads=t["num_attention_heads"],
        intermediate_size=t["intermediate_size"],
        hidden_act=t["hidden_act"],
        max_position_embeddings=t["max_position_embeddings"],
        type_vocab_size=t["type_vocab_size"],
        layer_norm_eps=t["layer_norm_eps"],
        pad_token_id=t["pad_token_id"],
        dropout=float(t["hidden_dropout_prob"]),
        attn_dropout=float(t["attention_probs_dropout_prob"]),
        pooling=pooling,
    )


def text_config_to_hf(cfg: TextConfig) -> dict:
    if cfg.family != "roberta" or cfg.pooling != "pooler":
        raise ValueError(
            f"HF ClapModel has a RoBERTa text tower with pooler output; this model's text tower is "
            f"family={cfg.family!r}, pooling={cfg.pooling!r} and cannot be exported as an HF ClapModel"
        )
    return {
        "model_type": "clap_text_model", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": cfg.hidden_act,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_token_id,
        "bos_token_id": 0, "eos_token_id": 2,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# HTSAT audio tower. HF buffers with no learned state: `*.relative_position_index` (derived from
# window_size; checked on import, rebuilt on export) and BatchNorm `*.num_batches_tracked` (not
# tracked by clapcomp; exported as 0).

HF_AUDIO_DEFAULTS = {
    "window_size": 8, "num_mel_bins": 64, "spec_size": 256, "hidden_act": "gelu", "patch_size": 4,
    "patch_stride": [4, 4], "hidden_size": 768, "depths": [2, 2, 6, 2], "num_attention_heads": [4, 8, 16, 32],
    "enable_fusion": False, "hidden_dropout_prob": 0.1, "fusion_type": None, "patch_embed_input_channels": 1,
    "flatten_patch_embeds": True, "patch_embeds_hidden_size": 96, "enable_patch_layer_norm": True,
    "drop_path_rate": 0.0, "attention_probs_dropout_prob": 0.0, "qkv_bias": True, "mlp_ratio": 4.0,
    "aff_block_r": 4, "layer_norm_eps": 1e-5,
}  # fmt: skip


def _square(value, name: str) -> int:
    values = [value] * 2 if isinstance(value, int) else list(value)
    if len(set(values)) != 1:
        raise ValueError(f"audio_config.{name}={value!r}: clapcomp's HTSAT supports square patches only")
    return int(values[0])


def htsat_config_from_hf(d: dict) -> HTSATConfig:
    """HF `ClapAudioConfig` dict (config.json `audio_config`) -> `HTSATConfig`; refuses what HTSAT lacks."""
    a = {**HF_AUDIO_DEFAULTS, **{k: v for k, v in d.items() if v is not None}}
    fixed = {"hidden_act": "gelu", "patch_embed_input_channels": 1, "flatten_patch_embeds": True,
             "enable_patch_layer_norm": True}  # fmt: skip
    for key, want in fixed.items():
        if a[key] != want:
            raise ValueError(f"audio_config.{key}={a[key]!r} is not supported (LAION-CLAP HTSAT uses {want!r})")
    if a["enable_fusion"] and a.get("fusion_type") not in (None, "aff_2d"):
        raise ValueError(f"audio_config.fusion_type={a['fusion_type']!r} unsupported; only 'aff_2d' fusion is")
    cfg = HTSATConfig(
        n_mels=int(a["num_mel_bins"]), spec_size=int(a["spec_size"]),
        patch_size=_square(a["patch_size"], "patch_size"), patch_stride=_square(a["patch_stride"], "patch_stride"),
        embed_dim=int(a["patch_embeds_hidden_size"]), depths=tuple(a["depths"]),
        num_heads=tuple(a["num_attention_heads"]), window_size=int(a["window_size"]),
        mlp_ratio=float(a["mlp_ratio"]), qkv_bias=bool(a["qkv_bias"]), drop_rate=float(a["hidden_dropout_prob"]),
        attn_drop_rate=float(a["attention_probs_dropout_prob"]), drop_path_rate=float(a["drop_path_rate"]),
        layer_norm_eps=float(a["layer_norm_eps"]), enable_fusion=bool(a["enable_fusion"]),
        aff_block_r=int(a["aff_block_r"]),
    )  # fmt: skip
    if int(a["hidden_size"]) != cfg.hidden_size:
        raise ValueError(
            f"audio_config.hidden_size={a['hidden_size']} but the HTSAT output width is patch_embeds_hidden_size * "
            f"2**(len(depths)-1) = {cfg.hidden_size}; fix config.json"
        )
    return cfg


def _conv_rows(hf: str, path: tuple) -> list[tuple]:
    return [(f"{hf}.weight", (*path, "kernel"), "conv"), (f"{hf}.bias", (*path, "bias"), "copy")]


def _batchnorm_rows(hf: str, path: tuple) -> list[tuple]:
    return norm_rows(hf, path) + [
        (f"{hf}.running_mean", (*path, "mean"), "copy"),
        (f"{hf}.running_var", (*path, "var"), "copy"),
    ]


def htsat_rows(cfg: HTSATConfig) -> list[tuple]:
    """The HTSAT table; HF names relative to `audio_encoder.` (ClapAudioModel) / `audio_model.audio_encoder.`."""
    rows = _batchnorm_rows("batch_norm", ("bn0",))
    rows += _conv_rows("patch_embed.proj", ("patch_embed", "proj"))
    rows += norm_rows("patch_embed.norm", ("patch_embed", "norm"))
    if cfg.ape:  # LAION-CLAP's name; HF's ClapAudioModel has no such weight (hf_config_from_clap refuses it)
        rows.append(("absolute_pos_embed", ("absolute_pos_embed",), "grid"))
    if cfg.enable_fusion:
        rows += _conv_rows("patch_embed.mel_conv2d", ("patch_embed", "mel_conv"))
        for branch, (c1, b1, c2, b2) in (("local", (0, 1, 3, 4)), ("global", (1, 2, 4, 5))):
            hf, us = f"patch_embed.fusion_model.{branch}_att", ("patch_embed", "aff")
            for conv, bn, n in ((c1, b1, 1), (c2, b2, 2)):
                rows += _conv_rows(f"{hf}.{conv}", (*us, f"{branch}_conv{n}"))
                rows += _batchnorm_rows(f"{hf}.{bn}", (*us, f"{branch}_bn{n}"))
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            hf, us = f"layers.{i}.blocks.{j}", ("stages", i, "blocks", j)
            rows += norm_rows(f"{hf}.layernorm_before", (*us, "norm1"))
            rows.append((f"{hf}.attention.self.relative_position_bias_table", (*us, "rel_bias"), "copy"))
            for name in ("query", "key", "value"):
                rows += linear_rows(f"{hf}.attention.self.{name}", (*us, name))[: 2 if cfg.qkv_bias else 1]
            rows += linear_rows(f"{hf}.attention.output.dense", (*us, "out"))
            rows += norm_rows(f"{hf}.layernorm_after", (*us, "norm2"))
            rows += linear_rows(f"{hf}.intermediate.dense", (*us, "fc1"))
            rows += linear_rows(f"{hf}.output.dense", (*us, "fc2"))
        if i < len(cfg.depths) - 1:
            us = ("stages", i, "downsample")
            rows.append((f"layers.{i}.downsample.reduction.weight", (*us, "reduction", "kernel"), "linear"))
            rows += norm_rows(f"layers.{i}.downsample.norm", (*us, "norm"))
    return rows + norm_rows("norm", ("norm",))


def _htsat_buffers(cfg: HTSATConfig) -> dict[str, np.ndarray]:
    """HF's non-learned HTSAT buffers, as a fresh HF model holds them."""
    from clapcomp.models.htsat import relative_position_index

    out = {}
    for hf, _, _ in htsat_rows(cfg):
        if hf.endswith(".running_mean"):
            out[hf.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
        elif hf.endswith(".relative_position_bias_table"):
            index = relative_position_index(cfg.window_size).astype(np.int64)
            out[hf.replace("_bias_table", "_index")] = index
    return out


def htsat_from_hf(tensors: dict[str, np.ndarray], cfg: HTSATConfig, prefix: str = "") -> nnx.State:
    """HF HTSAT tensors -> an `nnx.State` for `nnx.update(htsat, state)` (every Param and BatchStat).

    `prefix`: "audio_model.audio_encoder." for a ClapModel state dict, "audio_encoder." for a
    ClapAudioModel one. Every tensor under `prefix` must be used (or be a documented buffer).
    """
    from clapcomp.models.htsat import HTSAT

    abstract = _flat(nnx.eval_shape(lambda: HTSAT(cfg, rngs=nnx.Rngs(0))))
    rows, buffers = htsat_rows(cfg), _htsat_buffers(cfg)
    assert {path for _, path, _ in rows} == set(abstract), "htsat_rows out of sync with HTSAT"
    flat = rows_from_hf(tensors, rows, abstract, prefix)
    known = {hf for hf, _, _ in rows} | set(buffers)
    unused = sorted(k for k in tensors if k.startswith(prefix) and k[len(prefix) :] not in known)
    if unused:
        raise ValueError(
            f"{len(unused)} HTSAT tensors have no place in the model, e.g. {unused[:5]}; does config.json match?"
        )
    for hf, want in buffers.items():
        got = tensors.get(prefix + hf) if hf.endswith("relative_position_index") else None
        if got is not None and not np.array_equal(np.asarray(got), want):
            raise ValueError(f"{prefix + hf} is not the Swin index for window_size {cfg.window_size}")
    return nnx.from_flat_state(flat)


def htsat_to_hf(state, cfg: HTSATConfig, prefix: str = "") -> dict[str, np.ndarray]:
    """`nnx.state(htsat)` (or the HTSAT module) -> HF tensors incl. buffers; inverse of `htsat_from_hf`."""
    out = rows_to_hf(_flat(state), htsat_rows(cfg), prefix)
    out |= {prefix + hf: value for hf, value in _htsat_buffers(cfg).items()}
    return out


# ---------------------------------------------------------------------------------------------
# Whole model

PROJECTION_ROWS = linear_rows("linear1", ("linear1",)) + linear_rows("linear2", ("linear2",))
AUDIO_PREFIX = "audio_model.audio_encoder."


def audio_config_from_hf(preprocessor: dict | None, *, fusion: bool) -> AudioConfig:
    """`preprocessor_config.json` (ClapFeatureExtractor) -> `AudioConfig`; LAION defaults without one.

    HF's own `ClapFeatureExtractor()` default `frequency_min` is 0, but LAION-CLAP and the released
    `laion/clap-htsat-*` preprocessor configs use 50 Hz: a directory without a preprocessor config
    gets LAION's front end (`AudioConfig()` defaults).
    """
    p = preprocessor or {}
    base = AudioConfig()
    return AudioConfig(
        sample_rate=int(p.get("sampling_rate", base.sample_rate)),
        n_fft=int(p.get("fft_window_size", base.n_fft)),
        hop_length=int(p.get("hop_length", base.hop_length)),
        n_mels=int(p.get("feature_size", base.n_mels)),
        f_min=float(p.get("frequency_min", base.f_min)),
        f_max=float(p.get("frequency_max", base.f_max)),
        clip_seconds=float(p.get("max_length_s", base.clip_seconds)),
        fusion=fusion,
        padding=str(p.get("padding", base.padding)),
    )


def preprocessor_config_from_clap(cfg: ClapConfig) -> dict:
    """The `preprocessor_config.json` of an exported dir (HF `ClapFeatureExtractor` fields)."""
    a = cfg.audio
    return {
        "feature_extractor_type": "ClapFeatureExtractor", "feature_size": a.n_mels,
        "sampling_rate": a.sample_rate, "hop_length": a.hop_length,
        # HF pads to an int number of seconds
        "max_length_s": int(a.clip_seconds) if float(a.clip_seconds).is_integer() else a.clip_seconds,
        "fft_window_size": a.n_fft, "frequency_min": a.f_min, "frequency_max": a.f_max,
        "padding_value": 0.0, "return_attention_mask": False, "padding": a.padding,
        "truncation": "fusion" if a.fusion else "rand_trunc",
    }  # fmt: skip


def config_from_hf(d: dict, preprocessor: dict | None = None) -> ClapConfig:
    """HF `ClapConfig` dict (config.json) [+ preprocessor_config.json dict] -> `ClapConfig`."""
    if d.get("model_type") != "clap":
        raise ValueError(f"config.json has model_type {d.get('model_type')!r}; an HF ClapModel has 'clap'")
    if d.get("projection_hidden_act", "relu") != "relu":
        raise ValueError(f"projection_hidden_act {d['projection_hidden_act']!r} unsupported (CLAP uses relu)")
    htsat = htsat_config_from_hf(d.get("audio_config") or {})
    return ClapConfig(
        audio=audio_config_from_hf(preprocessor, fusion=htsat.enable_fusion),
        htsat=htsat,
        text=text_config_from_hf(d.get("text_config") or {}),
        projection_dim=int(d.get("projection_dim", 512)),
        logit_scale_init=math.log(d.get("logit_scale_init_value", 1 / 0.07)),
    )


def hf_config_from_clap(cfg: ClapConfig) -> dict:
    """`ClapConfig` -> an HF `ClapConfig` dict (config.json), inverse of `config_from_hf`."""
    if cfg.audio_tower != "htsat":
        raise ValueError(f"HF ClapModel holds an HTSAT audio tower only; this model's is {cfg.audio_tower!r}: export "
                         "it as safetensors or stablehlo instead")  # fmt: skip
    h = cfg.htsat
    if h.ape or h.time_segments != 1:
        raise ValueError(f"HF ClapAudioModel has no absolute position embedding and pools over the whole clip; this "
                         f"model has ape={h.ape}, time_segments={h.time_segments}: export it as safetensors or "
                         "stablehlo instead")  # fmt: skip
    audio = {
        "model_type": "clap_audio_model", "window_size": h.window_size, "num_mel_bins": h.n_mels,
        "spec_size": h.spec_size, "patch_size": h.patch_size, "patch_stride": [h.patch_stride] * 2,
        "hidden_size": h.hidden_size, "depths": list(h.depths), "num_attention_heads": list(h.num_heads),
        "enable_fusion": h.enable_fusion, "fusion_type": "aff_2d" if h.enable_fusion else None,
        "patch_embeds_hidden_size": h.embed_dim, "hidden_dropout_prob": h.drop_rate,
        "attention_probs_dropout_prob": h.attn_drop_rate, "drop_path_rate": h.drop_path_rate,
        "qkv_bias": h.qkv_bias, "mlp_ratio": h.mlp_ratio, "aff_block_r": h.aff_block_r,
        "layer_norm_eps": h.layer_norm_eps, "num_hidden_layers": len(h.depths),
    }  # fmt: skip
    return {
        "model_type": "clap",
        "architectures": ["ClapModel"],
        "text_config": text_config_to_hf(cfg.text),
        "audio_config": audio,
        "projection_dim": cfg.projection_dim,
        "projection_hidden_act": "relu",
        "logit_scale_init_value": math.exp(cfg.logit_scale_init),
    }


def load_hf_clap(path: str | Path):
    """An HF `ClapModel` directory -> `(ClapConfig, ClapModel)` (float32 parameters)."""
    from clapcomp.models.clap import ClapModel

    path = Path(path)
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such directory"
        raise FileNotFoundError(f"{path} is not an HF ClapModel dir: no config.json (found {found})")
    config = json.loads((path / "config.json").read_text())
    pre = path / "preprocessor_config.json"
    cfg = config_from_hf(config, json.loads(pre.read_text()) if pre.is_file() else None)
    tensors = read_tensors(path)
    model = nnx.eval_shape(lambda: ClapModel(cfg, rngs=nnx.Rngs(0)))  # no random init: every value is loaded
    clap_from_hf_tensors(model, tensors)
    require_all_set(model, path)
    return cfg, model


def require_all_set(module: nnx.Module, source) -> None:
    """Raise unless every Variable of `module` (built by `nnx.eval_shape`, then filled) holds an array."""
    unset = [
        ".".join(map(str, p))
        for p, v in nnx.to_flat_state(nnx.state(module))
        if not isinstance(v.get_value(), jax.Array)
    ]
    if unset:
        raise ValueError(f"{source}: the checkpoint left {len(unset)} model variables unset, e.g. {unset[:5]}")


def clap_from_hf_tensors(model, tensors: dict[str, np.ndarray]) -> None:
    """Fill a `ClapModel` from HF ClapModel tensors; every learned HF tensor must be used."""
    used = import_rows(tensors, model.text_tower, text_rows(model.cfg.text), "text_model.")
    used |= import_rows(tensors, model.text_projection, PROJECTION_ROWS, "text_projection.")
    used |= import_rows(tensors, model.audio_projection, PROJECTION_ROWS, "audio_projection.")
    if "logit_scale_a" not in tensors:
        raise KeyError("checkpoint lacks logit_scale_a (HF ClapModel's audio-side logit scale)")
    model.logit_scale.set_value(jnp.asarray(tensors["logit_scale_a"], jnp.float32).reshape(()))
    used |= {"logit_scale_a", "logit_scale_t"} | {f"text_model.{b}" for b in TEXT_BUFFERS}
    nnx.update(model.audio_tower, htsat_from_hf(tensors, model.cfg.htsat, prefix=AUDIO_PREFIX))  # checks its own keys
    unused = sorted(k for k in tensors if k not in used and not k.startswith(AUDIO_PREFIX))
    if unused:
        raise ValueError(
            f"{len(unused)} checkpoint tensors have no place in the model, e.g. {unused[:5]}; "
            "is this an HF ClapModel checkpoint with a matching config.json?"
        )


def clap_to_hf_tensors(model, cfg: ClapConfig) -> dict[str, np.ndarray]:
    """`ClapModel` -> HF ClapModel state dict (numpy), incl. HF's persistent buffers."""
    text_config_to_hf(cfg.text)  # refuses towers HF cannot hold
    out = export_rows(model.text_tower, text_rows(cfg.text), "text_model.")
    out |= export_rows(model.text_projection, PROJECTION_ROWS, "text_projection.")
    out |= export_rows(model.audio_projection, PROJECTION_ROWS, "audio_projection.")
    scale = np.asarray(model.logit_scale.get_value(), np.float32).reshape(())
    out["logit_scale_a"], out["logit_scale_t"] = scale, scale.copy()
    n = cfg.text.max_position_embeddings
    out["text_model.embeddings.position_ids"] = np.arange(n, dtype=np.int64)[None]
    out["text_model.embeddings.token_type_ids"] = np.zeros((1, n), np.int64)
    out |= htsat_to_hf(model.audio_tower, cfg.htsat, prefix=AUDIO_PREFIX)
    return out


_ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                     "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}  # fmt: skip
_BERT_SPECIALS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]",
                  "mask_token": "[MASK]"}  # fmt: skip


def hf_tokenizer_config(tokenizer_json: str | Path, pad_id: int, max_length: int) -> dict:
    """tokenizer_config.json for a shipped tokenizer.json: the transformers class its model is.

    A WordPiece file is a BERT tokenizer ([CLS] ... [SEP]), a BPE with RoBERTa's <s> a RoBERTa tokenizer;
    any other file loads as the generic `PreTrainedTokenizerFast`. The class matters: transformers rebuilds a
    slow-style class's vocabulary (a RobertaTokenizer over a WordPiece vocab appends <s>, </s>, <pad> as new
    ids past the embedding table: IndexError in the pipeline), and its special tokens drive the padding.
    `model_input_names` leaves out BERT's token_type_ids, which ClapModel does not take.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    vocab = tok.get_vocab(with_added_tokens=True)
    kind = json.loads(Path(tokenizer_json).read_text()).get("model", {}).get("type")
    if kind == "WordPiece":
        name, specials = "BertTokenizer", _BERT_SPECIALS
    elif kind == "BPE" and "<s>" in vocab:
        name, specials = "RobertaTokenizer", _ROBERTA_SPECIALS
    else:
        name, specials = "PreTrainedTokenizerFast", {"pad_token": tok.id_to_token(pad_id)}
    specials = {k: v for k, v in specials.items() if v in vocab}
    return {"tokenizer_class": name, "processor_class": "ClapProcessor", "model_max_length": max_length,
            "model_input_names": ["input_ids", "attention_mask"], **specials}  # fmt: skip


def save_hf_clap(model, cfg: ClapConfig, directory: str | Path) -> Path:
    """Write config.json, preprocessor_config.json and model.safetensors loadable by transformers."""
    from safetensors.numpy import save_file

    hf_config = hf_config_from_clap(cfg)  # refuses what HF cannot hold before anything is written
    directory = Path(directory)
    fs.write_text(directory / "config.json", json.dumps(hf_config, indent=2))
    fs.write_text(directory / "preprocessor_config.json", json.dumps(preprocessor_config_from_clap(cfg), indent=2))
    with fs.atomic_path(directory / "model.safetensors") as tmp:
        save_file(clap_to_hf_tensors(model, cfg), str(tmp), metadata={"format": "pt"})
    return directory
