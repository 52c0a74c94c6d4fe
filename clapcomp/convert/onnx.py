"""ONNX export: `clapcomp export --format onnx --out DIR` writes

  audio.onnx    waveform [B, T] float32 @ sample_rate -> audio_embeds [B, D] float32 (unit rows). The
                log-mel front end and (fused models) the fusion chunks are inside the graph: each row is
                embedded as a clip of exactly T samples, the same vector `clapcomp.load(...).embed_audio`
                gives for that clip (deterministic crop / fusion chunks, no dropout). T = `audio_samples`
                (default one clip); pad or cut clips to T yourself, or export with the T you serve.
  text.onnx     input_ids, attention_mask int64 [B, L] -> text_embeds [B, D] float32 (unit rows), L =
                max_length (tokenizer.json pads / truncates to it).
  tokenizer.json, onnx.json  {"format": "clapcomp-onnx", sample_rate, audio_samples, clip_samples,
                max_length, pad_token_id, projection_dim, opset, inputs / outputs}.

B is dynamic. Converted with jax2onnx (JAX-native, no torch) from the model's own jaxpr, which this
module first rewrites (`_inline`) where jax2onnx 0.13 cannot follow:

- `fft` (the STFT's rfft): ONNX's DFT as jax2onnx emits it is rejected by onnxruntime, so the real FFT
  is two matmuls with a DFT matrix [n_fft, n_fft // 2 + 1] (cos and -sin, built in float64), whose
  `real` / `imag` are taken directly; equal to the FFT within float32 rounding (tests/convert/test_onnx.py).
- calls (`jit`, `custom_jvp_call`, ...) are inlined, so every primitive is converted at top level.
- jax2onnx hands JAX's symbolic batch dimension to onnx_ir, which calls int() on it (an error since
  jax 0.7); during conversion `_symbolic_dims` names it as an ONNX symbolic dim instead.
The audio front end itself is written without bitcasts (ONNX has none) and draws no random numbers at
inference, so the graph holds no random op.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from clapcomp import fs

FORMAT = "clapcomp-onnx"
OPSET = 23
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint")


def _rfft_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, -sin) [n, n // 2 + 1] float32: x @ cos = Re rfft(x), x @ -sin = Im rfft(x) (built in float64)."""
    angle = 2.0 * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n
    return np.cos(angle).astype(np.float32), (-np.sin(angle)).astype(np.float32)


def _inline(jaxpr, consts, *args):
    """Evaluate `jaxpr` primitive by primitive under the current trace, with calls inlined and a real FFT
    (consumed only through `real` / `imag`) replaced by DFT matmuls. Returns the outputs (a list)."""
    import jax
    import jax.numpy as jnp
    from jax.extend.core import ClosedJaxpr, Literal

    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        ins, name = [read(v) for v in eqn.invars], eqn.primitive.name
        if any(isinstance(x, _Spectrum) for x in ins) and name not in ("real", "imag"):
            raise NotImplementedError(f"ONNX export: an rfft result feeds `{name}`; only real / imag are supported")
        if name in _CALLS:
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner = inner if isinstance(inner, ClosedJaxpr) else ClosedJaxpr(inner, ())
            outs = _inline(inner.jaxpr, inner.consts, *ins)
        elif name == "fft":
            if eqn.params["fft_type"] != jax.lax.FftType.RFFT or len(eqn.params["fft_lengths"]) != 1:
                raise NotImplementedError(f"ONNX export supports a 1-D real FFT only, got {eqn.params}")
            cos, sin = _rfft_matrices(eqn.params["fft_lengths"][0])
            hi = jax.lax.Precision.HIGHEST
            outs = [_Spectrum(jnp.matmul(ins[0], cos, precision=hi), jnp.matmul(ins[0], sin, precision=hi))]
        elif name in ("real", "imag") and isinstance(ins[0], _Spectrum):
            outs = [ins[0].re if name == "real" else ins[0].im]
        else:
            outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


class _Spectrum:
    """A complex rfft result held as its real and imaginary parts (ONNX graphs here stay real)."""

    def __init__(self, re, im):
        self.re, self.im = re, im


@contextlib.contextmanager
def _symbolic_dims():
    """While converting: onnx_ir turns JAX symbolic dims (which refuse int()) into named ONNX dims."""
    import jax
    import onnx_ir._core as core

    original = core._maybe_convert_to_symbolic_dim

    symbolic = type(jax.export.symbolic_shape("B")[0])

    def convert(dim):
        return core.SymbolicDim(str(dim)) if isinstance(dim, symbolic) else original(dim)

    core._maybe_convert_to_symbolic_dim = convert
    try:
        yield
    finally:
        core._maybe_convert_to_symbolic_dim = original


def convert(fn, specs: list, input_names: list[str], output_name: str, opset: int = OPSET):
    """fn(*arrays) -> one array, traced at `specs` (jax.ShapeDtypeStruct, symbolic dims allowed) -> onnx.ModelProto."""
    import jax

    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ImportError(f"the ONNX export needs jax2onnx ({e}); install it with: pip install 'clapcomp[onnx]'") from e
    closed = jax.make_jaxpr(fn)(*specs)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # jax2onnx logs every optional plugin it cannot import
    try:
        with _symbolic_dims():
            return to_onnx(
                lambda *xs: _inline(closed.jaxpr, closed.consts, *xs)[0],
                specs,
                opset=opset,
                input_names=input_names,
                output_names=[output_name],
                model_name=output_name,
            )
    finally:
        logging.getLogger().setLevel(level)


def _int64_inputs(model, names: list[str]) -> None:
    """Make int32 graph inputs `names` int64 (what ONNX tokenizer stacks produce), cast to int32 inside."""
    from onnx import TensorProto, helper

    graph = model.graph
    for name in names:
        inner = f"{name}_int32"
        for node in graph.node:
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.insert(0, helper.make_node("Cast", [name], [inner], to=TensorProto.INT32, name=f"{name}_cast"))
        (inp,) = [i for i in graph.input if i.name == name]
        inp.type.tensor_type.elem_type = TensorProto.INT64


def audio_graph(model, config, samples: int, opset: int = OPSET):
    """audio.onnx's graph: waveform [B, samples] f32 -> audio_embeds [B, D], every row a whole clip."""
    import jax
    import jax.numpy as jnp

    if samples <= config.audio.n_fft // 2:
        raise ValueError(f"audio_samples must be > n_fft // 2 = {config.audio.n_fft // 2}, got {samples}")

    def audio_fn(waveform):
        lengths = jnp.zeros_like(waveform[:, 0], jnp.int32) + waveform.shape[1]
        return model.embed_audio(waveform, lengths)

    (b,) = jax.export.symbolic_shape("B")
    return convert(audio_fn, [jax.ShapeDtypeStruct((b, samples), jnp.float32)], ["waveform"], "audio_embeds", opset)


def text_graph(model, config, opset: int = OPSET):
    """text.onnx's graph: input_ids, attention_mask int64 [B, max_length] -> text_embeds [B, D]."""
    import jax
    import jax.numpy as jnp

    (b,) = jax.export.symbolic_shape("B")
    spec = jax.ShapeDtypeStruct((b, config.text.max_length), jnp.int32)
    names = ["input_ids", "attention_mask"]
    graph = convert(model.embed_tokens, [spec, spec], names, "text_embeds", opset)
    _int64_inputs(graph, names)
    return graph


def save_onnx(model, config, out: str | Path, tokenizer=None, *, audio_samples: int | None = None,
              opset: int = OPSET) -> list[Path]:  # fmt: skip
    """Write audio.onnx, text.onnx, onnx.json (+ tokenizer.json) to `out` (see module doc); returns the files."""
    from clapcomp.convert.safetensors import write_tokenizer

    samples = audio_samples or config.audio.clip_samples
    audio, text = audio_graph(model, config, samples, opset), text_graph(model, config, opset)
    length = config.text.max_length
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "audio.onnx", out / "text.onnx"]
    fs.write_bytes(files[0], audio.SerializeToString())
    fs.write_bytes(files[1], text.SerializeToString())
    files += write_tokenizer(tokenizer, out)
    dim = config.projection_dim
    manifest = {
        "format": FORMAT, "opset": opset, "sample_rate": config.audio.sample_rate, "audio_samples": samples,
        "clip_samples": config.audio.clip_samples, "fusion": config.audio.fusion, "max_length": length,
        "pad_token_id": config.text.pad_token_id, "projection_dim": dim,
        "audio": {"file": "audio.onnx", "inputs": {"waveform": ["B", samples, "float32"]},
                  "outputs": {"audio_embeds": ["B", dim, "float32"]}},
        "text": {"file": "text.onnx", "inputs": {n: ["B", length, "int64"] for n in ("input_ids", "attention_mask")},
                 "outputs": {"text_embeds": ["B", dim, "float32"]}},
    }  # fmt: skip
    fs.write_bytes(out / "onnx.json", json.dumps(manifest, indent=2).encode())
    return files + [out / "onnx.json"]
