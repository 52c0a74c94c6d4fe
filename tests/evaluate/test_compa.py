"""CompA Winoground scores against hand-computed cases, a loop reference, and chance levels."""

import itertools

import numpy as np
import pytest
import soundfile as sf

from clapcomp.evaluate import compa

D = 3


class FakeEmbedder:
    """Audio embedding = its first D samples (normalised); text embedding from a dict. Records calls."""

    def __init__(self, text_vectors):
        self.text_vectors = text_vectors
        self.audio_calls = []

    def embed_audio(self, audio, sample_rate):
        self.audio_calls.append((sample_rate, len(audio)))
        v = np.stack([a[:D] for a in audio]).astype(np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts):
        v = np.array([self.text_vectors[t] for t in texts], np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_clip(path, vec, rate=48000, stereo=False):
    wave = np.zeros(400, np.float32)
    wave[:D] = vec
    data = np.stack([2 * wave, np.zeros_like(wave)], 1) if stereo else wave  # stereo mean = wave
    sf.write(path, data, rate, subtype="FLOAT")


def loop_reference(sim):
    """Direct transcription of the definitions, one comparison at a time."""
    out = {"text": [], "audio": [], "group": []}
    for s in sim:
        n = len(s)
        text = all(s[j][j] > s[i][j] for j in range(n) for i in range(n) if i != j)
        audio = all(s[i][i] > s[i][j] for i in range(n) for j in range(n) if i != j)
        out["text"].append(text)
        out["audio"].append(audio)
        out["group"].append(text and audio)
    return {k: np.array(v) for k, v in out.items()}


def test_pair_scores_hand_computed_with_ties():
    sim = np.array(
        [
            [[0.9, 0.1], [0.2, 0.8]],  # all pass
            [[0.9, 0.95], [0.2, 0.99]],  # text only: both audios prefer own caption; caption 0 prefers audio 1
            [[0.9, 0.1], [0.95, 0.99]],  # audio only: audio 0 prefers caption 1
            [[0.5, 0.5], [0.2, 0.8]],  # tie s(C0,A0) = s(C0,A1): audio fails, text passes
            [[0.5, 0.5], [0.5, 0.5]],  # constant model: everything fails
        ]
    )
    got = compa.winoground_scores(sim)
    np.testing.assert_array_equal(got["text"], [True, True, False, True, False])
    np.testing.assert_array_equal(got["audio"], [True, False, True, False, False])
    np.testing.assert_array_equal(got["group"], [True, False, False, False, False])
    s = compa.summarize(got, 2)
    assert s["text"] == pytest.approx(60.0) and s["audio"] == pytest.approx(40.0) and s["group"] == pytest.approx(20.0)
    assert s["counts"] == {"text": 3, "audio": 2, "group": 1} and s["n"] == 5
    assert s["chance"] == pytest.approx({"text": 25.0, "audio": 25.0, "group": 100 / 6})


def test_triplet_scores_hand_computed():
    good = np.eye(3) + 0.1
    text_fail = good.copy()
    text_fail[0, 2] = 1.2  # beats both diagonals it meets: audio 2 prefers caption 0, caption 0 prefers audio 2
    only_text_fail = good.copy()
    only_text_fail[0, 2] = 1.2
    only_text_fail[0, 0] = 1.3  # caption 0 back on its own audio; audio 2 still prefers caption 0
    tie = good.copy()
    tie[2, 1] = tie[1, 1]  # ties s(C1,A1) (text fails) and s(C2,A2) (audio fails)
    got = compa.winoground_scores(np.stack([good, text_fail, only_text_fail, tie]))
    np.testing.assert_array_equal(got["text"], [True, False, False, False])
    np.testing.assert_array_equal(got["audio"], [True, False, True, False])
    np.testing.assert_array_equal(got["group"], [True, False, False, False])


@pytest.mark.parametrize("n", [2, 3])
def test_matches_loop_reference_on_random_integer_sims(n):
    sim = np.random.default_rng(n).integers(0, 3, size=(500, n, n)).astype(float)  # many ties
    got, ref = compa.winoground_scores(sim), loop_reference(sim)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


@pytest.mark.parametrize("n", [2, 3])
def test_chance_levels_exact_and_monte_carlo(n):
    # exact: every rank order of the n x n entries is equally likely under iid continuous scores
    perms = np.array(list(itertools.permutations(range(n * n))), float).reshape(-1, n, n)
    exact = compa.summarize(compa.winoground_scores(perms), n)
    mc = compa.summarize(compa.winoground_scores(np.random.default_rng(0).normal(size=(200_000, n, n))), n)
    for k in ("text", "audio", "group"):
        assert exact[k] == pytest.approx(compa.CHANCE[n][k], abs=1e-9)
        assert mc[k] == pytest.approx(compa.CHANCE[n][k], abs=0.4)


def test_connective_and_swapped_words():
    assert compa.connective("A dog barks followed by a bell") == "followed by"
    assert compa.connective("A man speaks and then a door closes") == "and then"
    assert compa.connective("Before the bell rings, a dog barks while it rains") == "before"
    assert compa.connective("Wind with birds") == "with"
    assert compa.connective("Thunder") == "other"
    assert compa.swapped_words("A loud dog and a quiet cat", "A quiet dog and a loud cat") == "loud/quiet"
    assert compa.swapped_words("A dog barks then a bell", "A bell then a dog barks") == "other"


def make_benchmark(tmp_path):
    e1, e2, e3 = np.eye(3)
    clips = {
        "a0.wav": e1,
        "a1.wav": e2,
        "b0.wav": e1,
        "b1.wav": e2,
        "c0.wav": e1,
        "c1.wav": e2,
        "c2.wav": e1 + 0.1 * e3,
    }
    (tmp_path / "audio").mkdir()
    for name, vec in clips.items():
        write_clip(tmp_path / "audio" / name, vec, rate=16000 if name == "c2.wav" else 48000, stereo=name == "b1.wav")
    texts = {
        "A dog barks followed by a bell rings": e1,
        "A bell rings followed by a dog barks": e2,
        "A siren wails before a man speaks": e1 + e2,
        "A man speaks before a siren wails": e1 + e2,
        "A loud dog and a quiet cat": e1,
        "A quiet dog and a loud cat": e2,
        "A dog barks while a cat meows": e3,
    }
    csv = tmp_path / "order.csv"
    csv.write_text(
        "pair_caption,reversed_pair_caption,pair_file,reversed_pair_file,triplet_caption,triplet_file\n"
        "A dog barks followed by a bell rings,A bell rings followed by a dog barks,audio/a0.wav,audio/a1.wav,-,-\n"
        "A siren wails before a man speaks,A man speaks before a siren wails,audio/b0.wav,audio/b1.wav,,\n"
        "A loud dog and a quiet cat,A quiet dog and a loud cat,audio/c0.wav,audio/c1.wav,"
        "A dog barks while a cat meows,audio/c2.wav\n"
    )
    return csv, FakeEmbedder(texts)


def test_evaluate_compa_end_to_end(tmp_path):
    csv, embedder = make_benchmark(tmp_path)
    res = compa.evaluate_compa(embedder, csv, batch_size=4)
    # row 1 all pass; row 2 captions embed identically (ties) -> all fail; row 3 pair passes
    assert res["n_rows"] == 3
    assert res["pairs"]["counts"] == {"text": 2, "audio": 2, "group": 2}
    assert res["pairs"]["group"] == pytest.approx(200 / 3)
    # triplet: audio 2 = e1 + 0.1 e3 is closer to caption 0 (e1) than to its own (e3): text fails;
    # every caption still prefers its own audio (caption 2 scores 0.0995 vs 0, 0)
    three = res["triplets"]["three_way"]
    assert three["n"] == 1 and (three["text"], three["audio"], three["group"]) == (0.0, 100.0, 0.0)
    assert three["chance"]["group"] == pytest.approx(100 / 60)
    assert res["triplets"]["pairs"]["group"] == 100.0
    conn = res["breakdown"]["connective"]
    assert conn["followed by"]["group"] == 100.0 and conn["before"]["group"] == 0.0 and conn["and"]["n"] == 1
    assert res["breakdown"]["swapped_words"]["loud/quiet"] == {"n": 1, "text": 100.0, "audio": 100.0, "group": 100.0}
    sample = np.array(res["sample"]["sim"])
    assert sample.shape == (7, 7) and res["sample"]["audio"][0] == "a0.wav"
    assert sample[0, 0] == pytest.approx(1.0) and sample[0, 1] == pytest.approx(0.0, abs=1e-7)
    # files grouped by sample rate (one 16 kHz clip), batches of at most 4
    assert sorted(embedder.audio_calls) == [(16000, 1), (48000, 2), (48000, 4)]


def test_category_column_overrides_connective(tmp_path):
    csv, embedder = make_benchmark(tmp_path)
    lines = csv.read_text().splitlines()
    cats = ["category", "x", "y", "x"]
    csv.write_text("\n".join(f"{line},{c}" for line, c in zip(lines, cats, strict=True)) + "\n")
    res = compa.evaluate_compa(embedder, csv)
    assert res["breakdown"]["category"] == {
        "x": {"n": 2, "text": 100.0, "audio": 100.0, "group": 100.0},
        "y": {"n": 1, "text": 0.0, "audio": 0.0, "group": 0.0},
    }


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("pair_caption,reversed_pair_caption,pair_file\na,b,x.wav\n")
    with pytest.raises(ValueError, match="lacks"):
        compa.read_compa_csv(bad)
    bad.write_text(
        "pair_caption,reversed_pair_caption,pair_file,reversed_pair_file,triplet_caption,triplet_file\n"
        "a,b,x.wav,y.wav,c,-\n"
    )
    with pytest.raises(ValueError, match="only one of triplet"):
        compa.read_compa_csv(bad)
    bad.write_text("pair_caption,reversed_pair_caption,pair_file,reversed_pair_file\na,b,x.wav,y.wav\n")
    with pytest.raises(FileNotFoundError, match=r"x\.wav"):
        compa.evaluate_compa(FakeEmbedder({}), bad)
    with pytest.raises(ValueError, match="NaN"):
        compa.winoground_scores(np.full((1, 2, 2), np.nan))
