"""End to end: `transformers.ClapModel` (random weights) saved with save_pretrained -> `clapcomp.load`
-> embeddings from raw waveforms / texts / token ids vs HF (ClapFeatureExtractor + get_*_features);
determinism, bad input, the `clapcomp embed` command."""

from __future__ import annotations

import clap_reference as R  # tests/clap_reference.py (pytest pythonpath = tests)
import numpy as np
import pytest

import clapcomp
from clapcomp.inference import Clap, load, main

SECONDS = [3.0, 10.0, 17.0]


@pytest.fixture(scope="module", params=[False, True], ids=["unfused", "fused"])
def small(request, tmp_path_factory):
    fusion = request.param
    hf = R.hf_clap(R.SMALL_AUDIO, fusion=fusion, seed=7)
    return fusion, hf, clapcomp.load(R.save_hf_dir(hf, tmp_path_factory.mktemp("small")))


def test_audio_matches_hf_batch_3_and_1(small):
    fusion, hf, clap = small
    waves = R.clips(SECONDS, seed=11)
    ours = clap.embed_audio(waves, 48_000)
    assert ours.shape == (3, 24) and ours.dtype == np.float32
    assert np.abs(ours[0] - ours[2]).max() > 5e-3  # clips give distinct embeddings: the parity is not vacuous
    np.testing.assert_allclose(ours, R.hf_audio_embeddings(hf, waves, fusion=fusion), atol=1e-4, rtol=0)
    one = [waves[2] if fusion else waves[0]]
    np.testing.assert_allclose(
        clap.embed_audio(one, 48_000), R.hf_audio_embeddings(hf, one, fusion=fusion), atol=1e-4, rtol=0
    )


def test_text_and_tokens_match_hf(small):
    _, hf, clap = small
    ids, mask = clap.tokenizer(R.SENTENCES)
    assert ids.shape == (4, 77) and mask.sum(1).min() < 77  # padded
    expected = R.hf_text_embeddings(hf, ids, mask)
    np.testing.assert_allclose(clap.embed_text(R.SENTENCES), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(clap.embed_tokens(ids[:1], mask[:1]), expected[:1], atol=1e-4, rtol=0)


def test_deterministic_batched_or_one_by_one(small):
    _, _, clap = small
    waves = R.clips([3.0, 17.0, 12.5], seed=12)
    batched = clap.embed_audio(waves, 48_000)
    np.testing.assert_array_equal(clap.embed_audio(waves, 48_000), batched)
    alone = np.concatenate([clap.embed_audio([w], 48_000) for w in waves])
    np.testing.assert_allclose(alone, batched, atol=1e-5, rtol=0)
    texts = R.SENTENCES[:3]
    np.testing.assert_allclose(np.concatenate([clap.embed_text([t]) for t in texts]), clap.embed_text(texts), atol=1e-5)


def test_similarity_and_zero_shot(small):
    _, _, clap = small
    waves = R.clips([2.0, 4.0], seed=13)
    sims = clap.similarity(waves, R.SENTENCES, 48_000)
    np.testing.assert_allclose(sims, clap.embed_audio(waves, 48_000) @ clap.embed_text(R.SENTENCES).T, atol=1e-6)
    labels = ["dog", "rain", "car"]
    probs = clap.zero_shot(waves, labels, 48_000)
    logits = np.exp(float(clap.model.logit_scale.get_value())) * clap.similarity(
        waves, [f"This is a sound of {x}." for x in labels], 48_000
    ).astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)


@pytest.mark.slow  # full-size HTSAT-tiny
def test_htsat_tiny_fused_17s_matches_hf(tmp_path):
    hf = R.hf_clap(R.TINY_AUDIO, fusion=True, seed=8)
    clap = load(R.save_hf_dir(hf, tmp_path, tokenizer=False))
    waves = R.clips([17.0], seed=14)
    np.testing.assert_allclose(
        clap.embed_audio(waves, 48_000), R.hf_audio_embeddings(hf, waves, fusion=True), atol=1e-4, rtol=0
    )


def test_bad_input_is_named(small, tmp_path):
    _, _, clap = small
    good = R.clips([1.0], seed=0)[0]
    with pytest.raises(ValueError, match=r"shape \(1, 2, 48000\)"):
        clap.embed_audio(np.zeros((1, 2, 48_000), np.float32), 48_000)
    with pytest.raises(ValueError, match="clip 1 has NaN at sample 5"):
        clap.embed_audio([good, np.where(np.arange(100) == 5, np.nan, 0.0)], 48_000)
    with pytest.raises(ValueError, match="clip 0 has inf"):
        clap.embed_audio([np.full(10, np.inf)], 48_000)
    with pytest.raises(ValueError, match="clip 0 is empty"):
        clap.embed_audio([np.zeros(0, np.float32)], 48_000)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        clap.embed_tokens(np.zeros((2, 5), np.int32), np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 300\)"):
        clap.embed_tokens(np.full((1, 5), 300), np.ones((1, 5), np.int32))
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown model layout .*found \['weights.pt'\].*hf-clap"):
        load(tmp_path)
    no_tok = Clap.from_model(clap.model, clap.config)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        no_tok.embed_text(["a dog"])


def test_embed_command(small, tmp_path, capsys):
    import soundfile as sf

    _, _, clap = small
    waves = R.clips([2.0, 3.0], seed=15, rate=16_000)
    files = []
    for i, w in enumerate(waves):
        files.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(files[-1], w, 16_000, subtype="FLOAT")
    model_dir = tmp_path / "model"
    from clapcomp.convert.hf import save_hf_clap

    save_hf_clap(clap.model, clap.config, model_dir)
    tok = tmp_path / "tok.json"
    R.write_tokenizer(tok)
    out = tmp_path / "emb.npz"
    assert (
        main(
            [
                "--model",
                str(model_dir),
                "--tokenizer",
                str(tok),
                "--audio",
                *files,
                "--text",
                "a dog",
                "rain",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "clip0.wav" in printed and "[1] rain" in printed
    saved = np.load(out)
    np.testing.assert_allclose(saved["audio_embeddings"], clap.embed_audio(waves, 16_000), atol=1e-6)
    np.testing.assert_allclose(saved["similarity"], clap.similarity(waves, ["a dog", "rain"], 16_000), atol=1e-6)
