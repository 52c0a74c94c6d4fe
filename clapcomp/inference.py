"""Public inference API: `clapcomp.load(path)` -> `Clap` (embed audio / text, similarities, zero-shot),
and the `clapcomp embed` command.

Embeddings are deterministic: the front end takes the front crop / fixed fusion chunks (see
`clapcomp.audio`), no dropout, and the same clip gives the same vector batched or alone. Work is
jitted once per padded shape: batches are cut into chunks of at most `max_batch` and each chunk's
batch is padded up to a power of two (repeating its first row), audio lengths to whole clips
(`audio.prepare_waveforms`), texts to `max_length` tokens. `Clap(..., mesh=)` embeds data-parallel on
every device of the mesh (of every process): the weights replicated, each chunk padded further to a
multiple of the device count and split over all devices, the embeddings gathered back to every process.

`load(path)` recognises the layouts listed in `LAYOUTS` (HF ClapModel dir, clapcomp export, clapcomp
training workdir, LAION .pt). Texts need a `tokenizer.json`: `load` takes the one in the directory
(a training workdir holds a copy, checked against the sha256 its config.json pins), or the
`tokenizer=` argument (a `Tokenizer`, a tokenizer.json path or a dir holding one).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clapcomp import fs
from clapcomp.audio import prepare_waveforms
from clapcomp.decode import DecodeError, Limits, check_header, probe, read_audio
from clapcomp.models.configs import ClapConfig
from clapcomp.tokenizer import Tokenizer

DEFAULT_TEMPLATE = "This is a sound of {}."


@dataclasses.dataclass(frozen=True)
class Layout:
    """A loadable directory layout: `detect(path) -> bool`; `loader` "module:function" -> (ClapConfig, ClapModel)."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    loader: str


def _is_hf_clap(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "clap"


def _training_config(path: Path) -> dict | None:
    """A `clapcomp train` workdir's resolved config (config.json beside checkpoints/), else None."""
    config = path / "config.json"
    if not (path / "checkpoints").is_dir() or not config.is_file():
        return None
    d = json.loads(config.read_text())
    return d if "loss" in d and "model" in d else None


# Extension point: clapcomp exports and training checkpoints add a `Layout` row here (first match wins).
LAYOUTS: list[Layout] = [
    Layout("hf-clap", "HF transformers ClapModel dir (config.json with model_type 'clap' + weights)",
           _is_hf_clap, "clapcomp.convert.hf:load_hf_clap"),
    Layout("clapcomp-export", "`clapcomp export --format safetensors|stablehlo` dir (clapcomp.json + model.safetensors)",
           lambda p: importlib.import_module("clapcomp.convert.safetensors").is_exported(p), "clapcomp.convert.safetensors:load_exported"),
    Layout("clapcomp-workdir", "`clapcomp train --workdir` dir (config.json + checkpoints/; newest step or step=)",
           lambda p: _training_config(p) is not None, "clapcomp.train.checkpoint:load_model"),
    Layout("laion-pt", "LAION-CLAP / CompA checkpoint file (.pt / .pth / .ckpt)",
           lambda p: p.is_file() and p.suffix in (".pt", ".pth", ".ckpt"), "clapcomp.convert.laion:load_laion_clap"),
]  # fmt: skip


def load(
    path: str | Path,
    *,
    tokenizer: Tokenizer | str | Path | None = None,
    max_batch: int = 16,
    step: int | None = None,
    best: bool = False,
    raw_weights: bool = False,
) -> Clap:
    """Load a model directory for inference (see `LAYOUTS`); the tokenizer from `tokenizer` or `path`.
    For a training workdir: `step`, that checkpoint instead of the newest, or `best`, the best by the run's
    config.keep_best; the EMA of the weights when the run kept one (config.ema_decay), or the trained
    weights themselves with `raw_weights`. Which step and weights it loads is logged (clapcomp.train, INFO)."""
    path = fs.as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; clapcomp.load expects a model directory or a LAION .pt file")
    layout = next((lay for lay in LAYOUTS if lay.detect(path)), None)
    if layout is None:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
        known = "; ".join(f"{lay.name}: {lay.description}" for lay in LAYOUTS)
        raise ValueError(f"unknown model layout at {path} (found {found}); clapcomp.load understands: {known}")
    module, function = layout.loader.split(":")
    kwargs = ({} if step is None else {"step": step}) | {
        k: True for k, v in (("best", best), ("raw_weights", raw_weights)) if v
    }
    if kwargs and layout.name != "clapcomp-workdir":
        what = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"{what} selects from a training workdir's checkpoints; {path} is a {layout.name}")
    loader = getattr(importlib.import_module(module), function)
    if layout.name == "clapcomp-workdir":  # checkpoints: their own manifests, per step; Orbax reads gs://
        config, model = loader(path, **kwargs)
    else:
        with fs.local_copy(path) as local:  # gs://: downloaded first (the readers open local files)
            if local.is_dir():
                fs.verify_manifest(local)  # an export's sha256.json; fs.CorruptFile (a ValueError) names the file
            config, model = loader(local, **kwargs)
    return Clap(model, config, _tokenizer(tokenizer, path, config), max_batch=max_batch)


def _tokenizer(tokenizer, path: Path, config: ClapConfig) -> Tokenizer | None:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer is None and not path.is_dir():
        return None  # a checkpoint file (LAION .pt) carries no tokenizer: pass tokenizer=
    training = _training_config(path) if tokenizer is None else None
    if training and (path / "tokenizer.json").is_file() and training.get("tokenizer_sha256"):
        digest = hashlib.sha256((path / "tokenizer.json").read_bytes()).hexdigest()
        if digest != training["tokenizer_sha256"]:
            raise ValueError(f"{path}/tokenizer.json has sha256 {digest}, but the run was trained with "
                             f"{training['tokenizer_sha256']} (config.json tokenizer_sha256); restore its tokenizer.json")  # fmt: skip
    elif training and training.get("tokenizer") and not (path / "tokenizer.json").is_file():
        tokenizer = training["tokenizer"]  # a workdir from before workdirs held their tokenizer
    source = fs.as_path(tokenizer) if tokenizer is not None else path
    if source.is_file():
        return Tokenizer.from_file(source, max_length=config.text.max_length)
    if tokenizer is None and not (path / "tokenizer.json").is_file():
        return None  # embed_text explains; audio still works
    return Tokenizer.from_dir(source, max_length=config.text.max_length)


def _bucket(n: int, max_batch: int) -> int:
    return min(max_batch, 1 << max(n - 1, 0).bit_length())


class Clap:
    """A model ready for inference. `.config`, `.model`, `.tokenizer`; all outputs are NumPy float32.

    `max_batch`: rows per jitted call. `mesh` (a `jax.sharding.Mesh` of Auto axes, e.g. the trainer's): each call's rows
    are split over all its devices, so give `max_batch` as rows per device x `mesh.size`; without one, the
    model runs where its arrays are (one device)."""

    def __init__(self, model, config: ClapConfig, tokenizer: Tokenizer | None = None, *, max_batch: int = 16,
                 mesh: jax.sharding.Mesh | None = None):  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.config, self.tokenizer, self.max_batch = model, config, tokenizer, max_batch
        if mesh is not None and any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
            raise ValueError(f"Clap needs a mesh of AxisType.Auto axes (as clapcomp.train's), got {mesh.axis_types}: "
                             "jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,) * n)")  # fmt: skip
        self.mesh = mesh
        self._graphdef, self._fns = None, {}

    def _jitted(self, method: str):
        """(jitted fn(state, *arrays), current state); rebuilt only if the model's structure changed. With a
        mesh, the state is replicated over it and the output too (every process reads the whole result)."""
        graphdef, state = nnx.split(self.model)
        if graphdef != self._graphdef:  # GraphDefs compare by value (they may hold unhashable lists)
            self._graphdef, self._fns = graphdef, {}
        replicated = None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        if method not in self._fns:
            self._fns[method] = jax.jit(lambda st, *xs: getattr(nnx.merge(graphdef, st), method)(*xs),
                                        **({} if replicated is None else {"out_shardings": replicated}))  # fmt: skip
        return self._fns[method], state if replicated is None else jax.device_put(state, replicated)

    @classmethod
    def from_model(cls, model, config: ClapConfig, tokenizer: Tokenizer | None = None, **kwargs) -> Clap:
        """Wrap an in-memory `ClapModel` (e.g. the trainer's); it reads the model's current parameters."""
        return cls(model, config, tokenizer, **kwargs)

    def _run(self, method: str, *arrays: np.ndarray) -> np.ndarray:
        """model.<method>(*chunk) over batch chunks of <= max_batch rows, padded to a power of two (and to a
        multiple of the mesh's devices, split over them)."""
        fn, state = self._jitted(method)
        devices = 1 if self.mesh is None else self.mesh.size
        n, out = len(arrays[0]), []
        for start in range(0, n, self.max_batch):
            chunk = [a[start : start + self.max_batch] for a in arrays]
            rows = len(chunk[0])
            pad = -(-_bucket(rows, self.max_batch) // devices) * devices - rows
            chunk = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in chunk]
            emb = fn(state, *map(self._put_rows, chunk))  # with a mesh: replicated, whole in every process
            out.append(np.asarray(emb if self.mesh is None else emb.addressable_data(0))[:rows])
        return np.concatenate(out).astype(np.float32)

    def _put_rows(self, rows: np.ndarray) -> jax.Array:
        """A chunk [B, ...] (the same in every process) as one array, its rows split over the mesh's devices."""
        if self.mesh is None:
            return jnp.asarray(rows)
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names))
        return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])

    def embed_audio(self, audio: np.ndarray | Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """audio [B, T] float or a list of 1-D float arrays at `sample_rate` Hz -> [B, D] unit rows."""
        waveform, lengths = prepare_waveforms(audio, sample_rate, self.config.audio)
        return self._run("embed_audio", waveform, lengths)

    def embed_tokens(self, input_ids, attention_mask) -> np.ndarray:
        """input_ids [B, L] int, attention_mask [B, L] 0/1 -> [B, D] unit rows."""
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [B, L]; got {ids.shape} and {mask.shape}")
        if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(mask.dtype, np.integer)):
            raise ValueError(f"input_ids / attention_mask must be integer arrays, got {ids.dtype} / {mask.dtype}")
        vocab = self.config.text.vocab_size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}); got range [{ids.min()}, {ids.max()}]")
        if ids.shape[0] == 0:
            return np.zeros((0, self.config.projection_dim), np.float32)
        return self._run("embed_tokens", ids.astype(np.int32), mask.astype(np.int32))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """texts -> [B, D] unit rows (tokenised to `max_length` tokens)."""
        if self.tokenizer is None:
            raise FileNotFoundError(
                "this model has no tokenizer: its directory holds no tokenizer.json. Pass one to "
                "clapcomp.load(path, tokenizer=...) (a tokenizer.json path or dir), or use embed_tokens."
            )
        return self.embed_tokens(*self.tokenizer(texts))

    def similarity(self, audio, texts: list[str], sample_rate: int) -> np.ndarray:
        """Cosine similarities [B_audio, B_text]."""
        return self.embed_audio(audio, sample_rate) @ self.embed_text(texts).T

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> np.ndarray:
        """Prompt ensemble: labels [n_labels] -> [n_labels, D] unit rows, each the normalised mean of the
        normalised embeddings of its templates (open_clip / big_vision). A template holds `{}` or `{label}`
        where the label goes."""
        labels, templates = list(labels), list(templates)
        if not labels or not templates:
            raise ValueError(f"need at least one label and one template, got {len(labels)} and {len(templates)}")
        if len(set(labels)) != len(labels):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(f"labels must be distinct; {dupes} appear more than once: remove the duplicates")
        bad = [t for t in templates if "{}" not in t and "{label}" not in t]
        if bad:
            raise ValueError(f"templates {bad} hold no '{{}}' (or '{{label}}') where the label goes; add one")
        texts = [t.replace("{label}", "{}").replace("{}", label) for label in labels for t in templates]
        emb = self.embed_text(texts).astype(np.float64).reshape(len(labels), len(templates), -1).mean(axis=1)
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def label_probabilities(self, audio_embeddings: np.ndarray, label_embeddings: np.ndarray) -> np.ndarray:
        """audio [B, D], labels [n_labels, D] unit rows -> [B, n_labels]: softmax over labels of
        exp(logit_scale) * cosine."""
        logits = float(np.exp(self.model.logit_scale.get_value())) * (audio_embeddings @ label_embeddings.T)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        return probs / probs.sum(axis=1, keepdims=True)

    def zero_shot(self, audio, labels: list[str], sample_rate: int, templates: Sequence[str] = (DEFAULT_TEMPLATE,)):
        """Class probabilities [B, n_labels] for audio [B, T] (or a list of 1-D clips) with prompt ensembles
        (`label_embeddings`); `clapcomp classify` computes the same numbers."""
        return self.label_probabilities(self.embed_audio(audio, sample_rate), self.label_embeddings(labels, templates))


def main(argv: list[str]) -> int:
    """`clapcomp embed --model DIR --audio a.wav ... --text "..." ... [--out emb.npz]`."""
    parser = argparse.ArgumentParser(prog="clapcomp embed", description="embed audio files and texts")
    parser.add_argument("--model", required=True, help="model directory (HF ClapModel dir, ...)")
    parser.add_argument("--audio", nargs="*", default=[], help="audio files (any format soundfile reads)")
    parser.add_argument("--text", nargs="*", default=[], help="texts to embed")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    parser.add_argument("--out", help="write audio/text embeddings and similarities to this .npz")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio files (header check)")
    args = parser.parse_args(argv)
    if not args.audio and not args.text:
        parser.error("give at least one --audio file or --text")
    clap = load(args.model, tokenizer=args.tokenizer)
    audio_emb = np.zeros((0, clap.config.projection_dim), np.float32)
    if args.audio:
        try:
            audio_emb = embed_audio_files(
                clap, args.audio, batch_size=clap.max_batch, limits=Limits(max_seconds=args.max_seconds)
            )
        except (ValueError, FileNotFoundError) as e:  # a file refused by its header, or unreadable
            print(f"clapcomp embed: {e}", file=sys.stderr)
            return 1
    text_emb = clap.embed_text(args.text) if args.text else np.zeros((0, clap.config.projection_dim), np.float32)
    sims = audio_emb @ text_emb.T
    if args.audio and args.text:
        print("cosine similarity (rows: audio, columns: texts)")
        for j, text in enumerate(args.text):
            print(f"  [{j}] {text}")
        print(f"{'':40s}" + "".join(f"{f'[{j}]':>9s}" for j in range(len(args.text))))
        for name, row in zip(args.audio, sims, strict=True):
            print(f"{Path(name).name[:40]:40s}" + "".join(f"{v:9.4f}" for v in row))
    if args.out:
        with fs.atomic_file(args.out, "wb") as f:  # np.savez to a path would also append ".npz"
            np.savez(f, audio_embeddings=audio_emb, text_embeddings=text_emb, similarity=sims,
                     audio_files=np.asarray(args.audio, dtype=str), texts=np.asarray(args.text, dtype=str))  # fmt: skip
        print(f"wrote {args.out}")
    return 0


RESAMPLE_MARGIN_S = 0.1  # audio decoded past an unfused model's clip, so resampling its end needs no padding
_HINTS = {
    "too_long": "the command reads at most --max-seconds of audio: cut the file into clips{clip} or raise --max-seconds",
    "decode_budget": "cut the file into clips{clip} or mix it down",
}


def read_audio_file(path: str | Path, limits: Limits | None = None, *, target_rate: int | None = None):
    """An audio file -> (mono float32 [T] (channel mean), its sample rate), decoded within `limits`
    (`clapcomp.decode`: the header is checked before decoding). FileNotFoundError / ValueError
    name the file, what was wrong and what to do."""
    try:
        return read_audio(path, limits, target_rate=target_rate)
    except DecodeError as e:
        raise _user_error(path, e, None) from None


def _user_error(path, e: DecodeError, clip_s: float | None) -> Exception:
    if e.reason == "missing_file":
        return FileNotFoundError(f"audio file {str(path)!r} does not exist; fix the path")
    clip = f" (the model embeds {clip_s:g}-s clips)" if clip_s else ""
    hint = _HINTS.get(e.reason, "fix the file or drop it").format(clip=clip)
    return ValueError(f"cannot read audio file {str(path)!r}: {e.reason} ({e.detail}); {hint}")


def embed_audio_files(embedder, paths: Sequence, *, batch_size: int = 16, limits: Limits | None = None) -> np.ndarray:
    """Embed audio files [N] -> [N, D] float32 through `embedder.embed_audio` (a `Clap` or alike).

    Every file's header is checked against `limits` before any file is decoded (a long file is refused
    with a message, not read). An unfused model (without `peak_normalize`) embeds a long file's front
    clip, so only that window is decoded (plus `RESAMPLE_MARGIN_S` when resampling); a fused model
    reads the whole file. Files are batched by sample rate and decoded length in whole model clips
    (`embedder.config.audio`; 10 s for an embedder without one), so a batch is padded to its own
    longest file: a long file never pads short ones. Files are decoded one batch at a time.
    """
    limits = limits or Limits()
    audio_cfg = getattr(getattr(embedder, "config", None), "audio", None)
    target = audio_cfg.sample_rate if audio_cfg is not None else None
    clip_s = audio_cfg.clip_samples / audio_cfg.sample_rate if audio_cfg is not None else 10.0
    front_only = audio_cfg is not None and not audio_cfg.fusion and not audio_cfg.peak_normalize
    paths = [Path(p) for p in paths]
    groups: dict[tuple[int, int], list[int]] = {}
    window: list[int | None] = []
    for i, p in enumerate(paths):
        try:
            h = probe(p)
            check_header(h, limits, target)
        except DecodeError as e:
            raise _user_error(p, e, clip_s) from None
        margin = RESAMPLE_MARGIN_S if h.sample_rate != target else 0.0
        window.append(math.ceil((clip_s + margin) * h.sample_rate) if front_only else None)
        frames = min(h.frames, window[-1] or h.frames)
        groups.setdefault((h.sample_rate, -(-frames // max(1, round(clip_s * h.sample_rate)))), []).append(i)
    out: list = [None] * len(paths)
    for (rate, _), idx in sorted(groups.items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            waves = []
            for i in chunk:
                try:
                    waves.append(read_audio(paths[i], limits, target_rate=target, first_frames=window[i])[0])
                except DecodeError as e:
                    raise _user_error(paths[i], e, clip_s) from None
            for i, row in zip(chunk, np.asarray(embedder.embed_audio(waves, rate), np.float32), strict=True):
                out[i] = row
    return np.stack(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
