"""A tiny random model exported as safetensors (+ a byte-level BPE tokenizer), a second one with other
weights, and a small library of synthetic clips (clapcomp.data.synth): short clips at 48 and 44.1 kHz,
one recording of several clip lengths, an undecodable .wav and a non-audio file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

import clapcomp
from clapcomp.convert.safetensors import save_safetensors
from clapcomp.data.synth import render_event
from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import AudioConfig, ClapConfig, HTSATConfig, TextConfig
from clapcomp.tokenizer import Tokenizer

WORDS = ["a dog barks", "rain on a roof", "a whistle", "a siren wails", "noise", "a door slams, then a dog barks"]
CONFIG = ClapConfig(
    audio=AudioConfig(clip_seconds=1),
    htsat=HTSATConfig(spec_size=128, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=4),
    text=TextConfig(
        vocab_size=300,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        max_length=16,
    ),
    projection_dim=8,
)


def _tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as T
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(WORDS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>"]))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(path))
    return Tokenizer.from_file(path, max_length=16)


def _export(out: Path, seed: int) -> Path:
    model = ClapModel(CONFIG, rngs=nnx.Rngs(seed))
    save_safetensors(model, CONFIG, out, _tokenizer(out.parent / f"tok{seed}.json"))
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("model") / "tiny", seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("other") / "tiny", seed=1)


@pytest.fixture(scope="session")
def clap(model_dir):
    return clapcomp.load(model_dir)


@pytest.fixture(scope="session")
def write_clip():
    return _write_clip


def _write_clip(path: Path, event: str, seed: int, rate: int = 48_000, scale: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), render_event(event, {}, seed, rate, scale).astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.fixture
def library(tmp_path) -> Path:
    """lib/: whistle.wav (48 kHz), sub/noise.flac (44.1 kHz), sub/siren.wav (48 kHz), long/chord.wav
    (~3.3 s: 4 windows of 1 s), broken.wav (not audio), notes.txt (skipped: not an audio suffix)."""
    lib = tmp_path / "lib"
    _write_clip(lib / "whistle.wav", "whistle", 1)
    _write_clip(lib / "sub" / "siren.wav", "siren", 2)
    path = lib / "sub" / "noise.flac"
    sf.write(str(path), render_event("noise burst", {}, 3, 44_100), 44_100, subtype="PCM_16")
    _write_clip(lib / "long" / "chord.wav", "chord", 4, scale=3.0)
    (lib / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    (lib / "notes.txt").write_text("not audio")
    return lib


@pytest.fixture(scope="session")
def reference_windows():
    return _reference_windows


def _reference_windows(clap, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent of clapcomp.use: the file read with soundfile, resampled with soxr, cut into 1-s windows
    by hand (the last kept when >= 1/4 clip) -> (offsets [W] s, embeddings [W, D])."""
    import soxr

    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != 48_000:
        x = soxr.resample(x.astype(np.float64), rate, 48_000).astype(np.float32)
    starts = [s for s in range(0, x.size, 48_000) if s == 0 or x.size - s >= 12_000]
    return np.array(starts) / 48_000, clap.embed_audio([x[s : s + 48_000] for s in starts], 48_000)
