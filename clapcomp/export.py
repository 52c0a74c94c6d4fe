"""Export a model for serving: `clapcomp export --model PATH --format hf|safetensors|stablehlo|onnx --out DIR`.

Formats (each a directory):

- `hf`: an HF transformers ClapModel dir: `config.json`, `model.safetensors`,
  `preprocessor_config.json` (`ClapFeatureExtractor` with clapcomp's front-end settings; truncation
  "fusion" or "rand_trunc" per the config), and when the model has a tokenizer, `tokenizer.json` +
  `tokenizer_config.json`, so `transformers.ClapModel.from_pretrained(DIR)` and
  `ClapProcessor.from_pretrained(DIR)` work offline. Note: HF crops clips longer than
  `clip_seconds` at random positions, clapcomp deterministically; clips up to one clip length give
  the same embeddings (<= 1e-4).
- `safetensors`: `model.safetensors` (every nnx Variable, keyed by its state path joined with "."),
  `clapcomp.json` (`{"format": "clapcomp-safetensors", "format_version": 1, "config": ClapConfig}`),
  `tokenizer.json`. `load_exported(dir)` and `clapcomp.load(dir)` read it back exactly.
- `stablehlo`: the safetensors files plus `audio_embed.stablehlo` and `text_embed.stablehlo`
  (`jax.export` serialisations, lowered for `--platforms`, default cpu,cuda,tpu) with a symbolic
  batch dimension `b`, `stablehlo.json` (shapes, sample rate, pad id) and
  `clapcomp_stablehlo_loader.py`, a standalone loader needing only jax + numpy (it parses
  model.safetensors itself). The parameters are NOT baked into the functions: both take the dict
  `{name: array}` of model.safetensors as their first argument, so the weights are stored once.
    audio: (params, waveform [b, S] f32 @ sample_rate zero-padded, lengths [b] i32) -> [b, D] f32,
           S = `--audio-samples` (default one clip); clips up to S samples get clapcomp's exact
           deterministic front end (repeat-pad, crop / fusion chunks).
    text:  (params, input_ids [b, L] i32, attention_mask [b, L] i32) -> [b, D] f32, L = max_length.
- `onnx`: `audio.onnx` (waveform [B, T] f32 -> [B, D], front end and fusion inside, T = `--audio-samples`),
  `text.onnx` (input_ids, attention_mask int64 [B, L] -> [B, D]), tokenizer.json, onnx.json; runs in
  onnxruntime without JAX. See `clapcomp.convert.onnx` (needs the `[onnx]` extra to export).
  stablehlo.json holds the sha256 of model.safetensors and of each function file; the loader checks them
  before deserialising. Deserialising runs compiled code, and importing the loader runs Python: load
  exports you made or trust, as with HF's `trust_remote_code`.

The CLI writes the export into a temporary sibling of `--out` and renames it into place at the end,
with `sha256.json` (every file's sha256 and size, checked by `clapcomp.load`). It refuses an `--out`
that is the model itself or a training workdir (always), and a non-empty one unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from clapcomp import fs
from clapcomp.convert.safetensors import FORMAT_VERSION, flat_params, save_safetensors, tensor_name, write_tokenizer

LOADER_NAME = "clapcomp_stablehlo_loader.py"


# ------------------------------------------------------------------------------------ hf
def save_hf(model, config, out: str | Path, tokenizer=None) -> list[Path]:
    """Write an HF ClapModel dir (see module doc); returns the files written."""
    from clapcomp.convert.hf import hf_tokenizer_config, save_hf_clap

    if not float(config.audio.clip_seconds).is_integer():
        raise ValueError(f"HF ClapFeatureExtractor needs whole-second clips; this model has clip_seconds="
                         f"{config.audio.clip_seconds}. Export as safetensors or stablehlo instead.")  # fmt: skip
    out = Path(save_hf_clap(model, config, out))
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre["processor_class"] = "ClapProcessor"
    fs.write_text(out / "preprocessor_config.json", json.dumps(pre, indent=2))
    files = [out / "config.json", out / "preprocessor_config.json", out / "model.safetensors"]
    written = write_tokenizer(tokenizer, out)
    if written:
        tok_cfg = hf_tokenizer_config(written[0], tokenizer.pad_id, config.text.max_length)
        fs.write_text(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2))
        files += [*written, out / "tokenizer_config.json"]
    return files


# ------------------------------------------------------------------------------------ stablehlo
def _embedding_functions(model):
    """(audio_fn, text_fn), each `fn(params: {name: array}, x, y) -> [b, D]`, closed over the graph only."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    variables = list(state.flat_state())  # structure only: every value is replaced by `params`

    def build(params):
        flat = {p: v.replace(params[tensor_name(p)]) for p, v in variables}
        return nnx.merge(graphdef, nnx.State.from_flat_path(flat))

    return (lambda params, w, n: build(params).embed_audio(w, n), lambda params, i, m: build(params).embed_tokens(i, m))


def save_stablehlo(model, config, out: str | Path, tokenizer=None, *, audio_samples: int | None = None,
                   platforms: tuple[str, ...] = ("cpu", "cuda", "tpu")) -> list[Path]:  # fmt: skip
    """Write the stablehlo export (see module doc); returns the files written."""
    import jax
    import jax.numpy as jnp

    out = Path(out)
    files = save_safetensors(model, config, out, tokenizer)
    samples = audio_samples or config.audio.clip_samples
    if samples < 1:
        raise ValueError(f"audio_samples must be >= 1, got {samples}")
    length = config.text.max_length
    params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params(model).items()}
    (b,) = jax.export.symbolic_shape("b")
    audio_fn, text_fn = _embedding_functions(model)
    specs = {
        "audio": (audio_fn, [("waveform", (b, samples), jnp.float32), ("lengths", (b,), jnp.int32)]),
        "text": (text_fn, [("input_ids", (b, length), jnp.int32), ("attention_mask", (b, length), jnp.int32)]),
    }
    manifest = {"format_version": FORMAT_VERSION, "params": "model.safetensors", "platforms": list(platforms),
                "sample_rate": config.audio.sample_rate, "audio_samples": samples, "max_length": length,
                "pad_token_id": config.text.pad_token_id, "projection_dim": config.projection_dim,
                "functions": {}}  # fmt: skip
    for kind, (fn, inputs) in specs.items():
        args = [jax.ShapeDtypeStruct(shape, dtype) for _, shape, dtype in inputs]
        exported = jax.export.export(jax.jit(fn), platforms=platforms)(params, *args)
        target = out / f"{kind}_embed.stablehlo"
        fs.write_bytes(target, exported.serialize())
        manifest["functions"][kind] = {
            "file": target.name,
            "sha256": fs.sha256_file(target),
            "inputs": [
                {"name": n, "shape": ["b" if d is b else d for d in s], "dtype": np.dtype(t).name} for n, s, t in inputs
            ],
            "output": {"shape": ["b", config.projection_dim], "dtype": "float32"},
        }
        files.append(target)
    manifest["params_sha256"] = fs.sha256_file(out / "model.safetensors")
    fs.write_text(out / "stablehlo.json", json.dumps(manifest, indent=2))
    fs.write_bytes(out / LOADER_NAME, Path(__file__).with_name("_stablehlo_loader.py").read_bytes())
    return files + [out / "stablehlo.json", out / LOADER_NAME]


# ------------------------------------------------------------------------------------ CLI
def _load_source(path: str, step: int | None = None, best: bool = False, raw_weights: bool = False):
    """Any model `clapcomp.load` reads (HF dir, clapcomp export, LAION .pt, ...) -> (model, config, tokenizer)."""
    from clapcomp.inference import load

    clap = load(path, step=step, best=best, raw_weights=raw_weights)
    return clap.model, clap.config, clap.tokenizer


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clapcomp export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model to export: any path clapcomp.load reads, or a LAION .pt")
    parser.add_argument("--format", required=True, choices=("hf", "safetensors", "stablehlo", "onnx"))
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--tokenizer", help="tokenizer.json to ship with the export (default: the model's)")
    parser.add_argument("--audio-samples", type=int, help="stablehlo / onnx: waveform length (default: one clip)")
    parser.add_argument("--platforms", default="cpu,cuda,tpu", help="stablehlo: comma-separated lowering platforms")
    parser.add_argument("--step", type=int, help="for a training workdir: this checkpoint step (default: the newest)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="for a training workdir with config.ema_decay: the trained weights, not their EMA")  # fmt: skip
    parser.add_argument("--best", action="store_true",
                        help="for a training workdir with config.keep_best: the best checkpoint, not the newest")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (never a training workdir)")
    args = parser.parse_args(argv)
    refusal = _refuse_out(fs.as_path(args.model), fs.as_path(args.out), args.overwrite)
    if refusal:
        parser.exit(2, f"clapcomp export: {refusal}; nothing was written\n")
    model, config, tokenizer = _load_source(args.model, args.step, args.best, args.raw_weights)
    if args.tokenizer:
        from clapcomp.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer, max_length=config.text.max_length)
    if tokenizer is None:
        print("note: the model has no tokenizer.json; the export will hold none (pass --tokenizer)", file=sys.stderr)
    with fs.atomic_dir(args.out, overwrite=args.overwrite, purpose="clapcomp export") as tmp:
        if args.format == "hf":
            files = save_hf(model, config, tmp, tokenizer)
        elif args.format == "safetensors":
            files = save_safetensors(model, config, tmp, tokenizer)
        elif args.format == "onnx":
            from clapcomp.convert.onnx import save_onnx

            files = save_onnx(model, config, tmp, tokenizer, audio_samples=args.audio_samples)
        else:
            platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
            files = save_stablehlo(model, config, tmp, tokenizer, audio_samples=args.audio_samples, platforms=platforms)
        fs.write_manifest(tmp)
        sizes = {f.name: (tmp / f.name).stat().st_size for f in [*files, tmp / fs.MANIFEST]}
    print(f"wrote {args.format} export to {args.out}:")
    for name, size in sizes.items():
        print(f"  {name:32s} {size:>14,d} bytes")
    return 0


def _refuse_out(model: Path, out: Path, overwrite: bool) -> str | None:
    """Why `--out` must not be written (None when it may): the model itself or a training workdir (holds
    checkpoints/: `clapcomp.load` would find the export, not the run), or non-empty without --overwrite."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; pass a folder"
    if (out / "checkpoints").exists():
        return f"--out {out} holds checkpoints/ (a training workdir); an export there would shadow the run: pass another folder"
    try:
        fs.refuse_inputs(out, [model], flag="--out")
    except ValueError as e:
        return str(e)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return f"--out {out} is not empty; pass a new folder, or --overwrite to replace its contents"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
