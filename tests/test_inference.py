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


def test_mesh_embeds_on_8_devices_like_one(small):
    """Clap(mesh=) over 8 devices (data 4 x fsdp 2, as the trainer's evaluators use it): the rows of each
    call split over the devices, padded to a multiple of 8 (3 clips; 11 texts in calls of 8 + 3), the same
    embeddings as the one-device path of `clapcomp.load`."""
    import jax

    _, _, clap = small
    from clapcomp.train.distributed import make_mesh

    mesh = make_mesh(4, 2)
    sharded = Clap(clap.model, clap.config, clap.tokenizer, max_batch=8, mesh=mesh)
    waves = R.clips(SECONDS, seed=16)  # the lengths test_audio_matches_hf_batch_3_and_1 compiled on one device
    ours = sharded.embed_audio(waves, 48_000)
    assert ours.shape == (3, 24) and np.abs(ours[0] - ours[1]).max() > 5e-3
    np.testing.assert_allclose(ours, clap.embed_audio(waves, 48_000), atol=1e-5, rtol=0)
    texts = [f"{s} {i}" for i, s in enumerate(R.SENTENCES * 3)][:11]
    np.testing.assert_allclose(sharded.embed_text(texts), clap.embed_text(texts), atol=1e-5, rtol=0)
    fn, state = sharded._jitted("embed_audio")
    assert {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(state)} == {8}  # weights replicated
    assert sharded._put_rows(np.zeros((8, 3), np.float32)).sharding.shard_shape((8, 3)) == (1, 3)
    with pytest.raises(ValueError, match="AxisType.Auto"):
        Clap(clap.model, clap.config, mesh=jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,)))


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
    write_long_flac(tmp_path / "long.flac")  # refused from its header, before anything is embedded
    assert main(["--model", str(model_dir), "--audio", files[0], str(tmp_path / "long.flac")]) == 1
    assert "clapcomp embed: cannot read audio file" in capsys.readouterr().err
    saved = np.load(out)
    np.testing.assert_allclose(saved["audio_embeddings"], clap.embed_audio(waves, 16_000), atol=1e-6)
    np.testing.assert_allclose(saved["similarity"], clap.similarity(waves, ["a dog", "rain"], 16_000), atol=1e-6)


def test_read_audio_file_mixes_to_mono_and_names_problems(tmp_path):
    import soundfile as sf

    from clapcomp.decode import Limits
    from clapcomp.inference import read_audio_file

    stereo = np.stack([np.full(50, 0.5, np.float32), np.full(50, -0.1, np.float32)], 1)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="FLOAT")
    wave, rate = read_audio_file(tmp_path / "s.wav")
    assert rate == 22050 and wave.shape == (50,) and np.allclose(wave, 0.2)
    with pytest.raises(FileNotFoundError, match=r"nope\.wav.*fix the path"):
        read_audio_file(tmp_path / "nope.wav")
    with pytest.raises(ValueError, match=r"s\.wav.*too_long.*cut the file into clips"):
        read_audio_file(tmp_path / "s.wav", Limits(max_seconds=0.001))


class Recording:
    """A Clap that records the padded batch shapes it is asked to embed."""

    def __init__(self, clap):
        self.clap, self.config, self.batches = clap, clap.config, []

    def embed_audio(self, waves, rate):
        from clapcomp.audio import prepare_waveforms

        self.batches.append((rate, prepare_waveforms(waves, rate, self.config.audio)[0].shape))
        return self.clap.embed_audio(waves, rate)


def test_embed_audio_files_batches_by_length_and_equals_one_by_one(small, tmp_path):
    import soundfile as sf

    from clapcomp.inference import embed_audio_files

    fusion, _, clap = small
    files = []
    for i, w in enumerate(R.clips([2.0, 12.0, 3.0, 4.0], seed=21)):
        files.append(tmp_path / f"c{i}.wav")
        sf.write(files[-1], np.stack([w, 0.5 * w], 1), 48_000, subtype="FLOAT")
    for i, w in enumerate(R.clips([2.0, 12.0], seed=22, rate=16_000)):
        files.append(tmp_path / f"low{i}.wav")
        sf.write(files[-1], w, 16_000, subtype="FLOAT")
    rec = Recording(clap)
    got = embed_audio_files(rec, files, batch_size=8)
    # reference: each file read whole by soundfile (channel mean) and embedded alone
    alone = np.concatenate(
        [
            clap.embed_audio([sf.read(f, dtype="float32", always_2d=True)[0].mean(1)], sf.info(f).samplerate)
            for f in files
        ]
    )
    np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
    clip = clap.config.audio.clip_samples
    if fusion:  # the whole 12-s files are read: each batched alone (2 clips); the short 48 kHz files share one
        expected = [(16_000, (1, clip)), (16_000, (1, 2 * clip)), (48_000, (1, 2 * clip)), (48_000, (3, clip))]
    else:  # only the front clip is decoded (at 16 kHz + 0.1 s to resample it): one 48 kHz batch of 4
        expected = [(16_000, (1, clip)), (16_000, (1, 2 * clip)), (48_000, (4, clip))]
    assert sorted(rec.batches) == expected


def test_long_files_are_refused_by_their_header_before_any_decoding(tmp_path, monkeypatch):
    import soundfile as sf

    import clapcomp.inference as inference

    sf.write(tmp_path / "short.wav", R.clips([1.0], seed=23)[0], 48_000)
    write_long_flac(tmp_path / "long.flac")
    monkeypatch.setattr(inference, "read_audio", lambda *a, **k: pytest.fail("decoded before the headers were checked"))
    with pytest.raises(ValueError, match=r"long\.flac.*too_long \(700\.0 s > 600 s\).*--max-seconds"):
        inference.embed_audio_files(object(), [tmp_path / "short.wav", tmp_path / "long.flac"])


def write_long_flac(path):
    """700 s of 8 kHz audio: over the 600-s default of eval / embed."""
    import soundfile as sf

    with sf.SoundFile(path, "w", 8_000, 1, format="FLAC") as f:
        for _ in range(7):
            f.write(np.full(800_000, 0.1, np.float32))
