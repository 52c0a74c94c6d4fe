"""ONNX export against its independent reader, onnxruntime: embeddings equal to `clapcomp.load`'s (<= 1e-4)
for unfused and fused models at 48 and 32 kHz, any batch size, and run in a process without JAX."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_export import TEXTS, random_model, roberta_style_tokenizer, tiny_config

import clapcomp
from clapcomp import export
from clapcomp.convert import onnx as onnx_export
from clapcomp.convert.safetensors import save_safetensors

ort = pytest.importorskip("onnxruntime")


def test_rfft_matrices_equal_numpy_fft():
    n = 1024
    cos, sin = onnx_export._rfft_matrices(n)
    x = np.random.default_rng(0).standard_normal((50, n)).astype(np.float32)
    ref = np.fft.rfft(x.astype(np.float64), axis=-1)  # float64 reference
    scale = np.abs(ref).max()
    np.testing.assert_allclose(x @ cos, ref.real, atol=1e-5 * scale)
    np.testing.assert_allclose(x @ sin, ref.imag, atol=1e-5 * scale)


def _config(fusion: bool, rate: int):
    cfg = tiny_config(fusion)
    if rate == 48_000:
        return cfg
    return dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, sample_rate=rate, hop_length=rate // 100))


# (fusion, rate, T in clips): shorter than a clip (repeat-pad), longer (front crop / fusion chunks)
CASES = [(False, 48_000, 1.3), (True, 48_000, 2.5), (False, 32_000, 0.6), (True, 32_000, 1.5)]


@pytest.mark.parametrize("fusion,rate,clips", CASES)
def test_audio_graph_matches_clapcomp_load(tmp_path, fusion, rate, clips):
    cfg = _config(fusion, rate)
    save_safetensors(random_model(cfg, seed=5), cfg, tmp_path / "st")
    clap = clapcomp.load(tmp_path / "st")  # the reference: what a user of clapcomp gets
    samples = int(clips * cfg.audio.clip_samples)
    graph = onnx_export.audio_graph(clap.model, clap.config, samples)
    session = ort.InferenceSession(graph.SerializeToString())
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("waveform", "tensor(float)", samples)
    assert (out.name, out.shape[1]) == ("audio_embeds", cfg.projection_dim)
    rng = np.random.default_rng(int(clips * 10))
    waveform = (0.1 * rng.standard_normal((3, samples))).astype(np.float32)
    waveform[1] *= np.linspace(0.0, 3.0, samples, dtype=np.float32)  # rows differ in level over time
    ref = clap.embed_audio(waveform, rate)
    np.testing.assert_allclose(session.run(None, {"waveform": waveform})[0], ref, atol=1e-4)
    np.testing.assert_allclose(session.run(None, {"waveform": waveform[2:]})[0], ref[2:], atol=1e-4)  # dynamic B


FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
    d = sys.argv[1]
    meta = json.load(open(f"{d}/onnx.json"))
    tok = Tokenizer.from_file(f"{d}/tokenizer.json")
    tok.enable_truncation(max_length=meta["max_length"])
    tok.enable_padding(length=meta["max_length"], pad_id=meta["pad_token_id"])
    enc = tok.encode_batch(json.loads(sys.argv[2]))
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    text = ort.InferenceSession(f"{d}/text.onnx").run(None, {"input_ids": ids, "attention_mask": mask})[0]
    waveform = np.load(sys.argv[3])
    audio = ort.InferenceSession(f"{d}/audio.onnx").run(None, {"waveform": waveform})[0]
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "clapcomp", "torch"))
    assert not leaked, leaked
    np.savez(sys.argv[4], text=text, audio=audio)
    """
)


@pytest.mark.slow  # a CLI export (two graphs) and a fresh Python process
def test_cli_export_runs_in_onnxruntime_without_jax(tmp_path):
    cfg = tiny_config(True)
    tok = roberta_style_tokenizer(tmp_path / "tok.json")
    save_safetensors(random_model(cfg, seed=7), cfg, tmp_path / "st", tok)
    samples = 2 * cfg.audio.clip_samples
    argv = ["--model", str(tmp_path / "st"), "--format", "onnx", "--out", str(tmp_path / "onnx")]
    assert export.main([*argv, "--audio-samples", str(samples)]) == 0
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert (meta["sample_rate"], meta["audio_samples"], meta["opset"]) == (48_000, samples, onnx_export.OPSET)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [  # sha256.json: the export's manifest
        "audio.onnx", "onnx.json", "sha256.json", "text.onnx", "tokenizer.json"
    ]  # fmt: skip
    waveform = (0.1 * np.random.default_rng(3).standard_normal((2, samples))).astype(np.float32)
    np.save(tmp_path / "w.npy", waveform)
    script = [sys.executable, "-c", FRESH, str(tmp_path / "onnx"), json.dumps(TEXTS), str(tmp_path / "w.npy")]
    subprocess.run([*script, str(tmp_path / "out.npz")], check=True, timeout=120)
    got = np.load(tmp_path / "out.npz")
    clap = clapcomp.load(tmp_path / "st")
    np.testing.assert_allclose(got["text"], clap.embed_text(TEXTS), atol=1e-4)
    np.testing.assert_allclose(got["audio"], clap.embed_audio(waveform, 48_000), atol=1e-4)


def test_too_short_audio_samples_is_refused(tmp_path):
    cfg = tiny_config(False)
    with pytest.raises(ValueError, match="audio_samples must be > n_fft // 2 = 512, got 100"):
        onnx_export.save_onnx(random_model(cfg), cfg, tmp_path / "x", audio_samples=100)
    assert not (tmp_path / "x").exists()
