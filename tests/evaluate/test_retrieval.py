"""Multi-caption retrieval metrics against hand-computed values and an argsort reference."""

import json

import numpy as np
import pytest
import soundfile as sf

from clapcomp.evaluate import retrieval

D = 3


class FakeEmbedder:
    """Audio embedding = its first D samples (normalised); text embedding from a dict."""

    def __init__(self, text_vectors):
        self.text_vectors = text_vectors

    def embed_audio(self, audio, sample_rate):
        v = np.stack([a[:D] for a in audio]).astype(np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts):
        v = np.array([self.text_vectors[t] for t in texts], np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_relevant_positions_ties_go_against_the_query():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5])
    relevant = np.array([True, False, True, False, False])
    # relevant 0.5, 0.5; irrelevant 0.9 and 0.5 (tie) rank above both: positions 2 and 3
    np.testing.assert_array_equal(retrieval.relevant_positions(scores, relevant), [2, 3])
    assert retrieval.average_precision([2, 3], 2) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # AP@10 keeps only positions < 10 but still divides by all relevant items
    assert retrieval.average_precision([3, 14], 2, cutoff=10) == pytest.approx((1 / 4) / 2)


def test_retrieval_metrics_hand_computed():
    sim = np.array(
        [
            [0.9, 0.1, 0.5, 0.3, 0.2],
            [0.4, 0.6, 0.7, 0.8, 0.1],
            [0.2, 0.3, 0.7, 0.1, 0.5],
        ]
    )
    owner = np.array([0, 0, 1, 1, 2])
    m = retrieval.retrieval_metrics(sim, owner)
    # t2a positions: t0 0, t1 2, t2 1 (ties a2 at 0.7), t3 0, t4 0
    t2a = m["text_to_audio"]
    assert t2a["R@1"] == pytest.approx(60.0) and t2a["R@5"] == 100.0 and t2a["R@10"] == 100.0
    assert t2a["mAP@10"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 2 + 1 + 1) / 5)
    assert t2a["mean_rank"] == pytest.approx(1.6) and t2a["median_rank"] == 1.0
    # a2t: a0 captions at 0 and 4 -> AP (1 + 2/5)/2 = 0.7; a1 at 0, 1 -> 1; a2 at 1 -> 1/2
    a2t = m["audio_to_text"]
    assert a2t["R@1"] == pytest.approx(200 / 3) and a2t["R@5"] == 100.0
    assert a2t["mAP@10"] == pytest.approx(100 * (0.7 + 1 + 0.5) / 3)
    assert a2t["mean_rank"] == pytest.approx(4 / 3) and a2t["median_rank"] == 1.0
    assert (m["n_audio"], m["n_text"]) == (3, 5)


def reference_5_captions(sim):
    """XinhaoMei/audio-text_retrieval a2t / t2a transcription (argsort; valid without ties)."""
    n_audio = sim.shape[0]
    t2a_ranks = np.array([np.where(np.argsort(-sim[:, t]) == t // 5)[0][0] for t in range(5 * n_audio)])
    a2t_best, a2t_map = [], []
    for a in range(n_audio):
        order = np.argsort(-sim[a])
        ranks = np.sort([np.where(order == t)[0][0] for t in range(5 * a, 5 * a + 5)])
        a2t_best.append(ranks[0])
        kept = ranks[ranks < 10] + 1
        a2t_map.append(np.sum(np.arange(1, len(kept) + 1) / kept) / 5)
    return {
        "t2a_R@1": 100 * np.mean(t2a_ranks < 1),
        "t2a_R@10": 100 * np.mean(t2a_ranks < 10),
        "t2a_mAP@10": 100 * np.mean(np.where(t2a_ranks < 10, 1 / (t2a_ranks + 1), 0)),
        "a2t_R@5": 100 * np.mean(np.array(a2t_best) < 5),
        "a2t_mAP@10": 100 * np.mean(a2t_map),
    }


def test_matches_argsort_reference_on_random_embeddings():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(40, 8))
    text = np.repeat(audio, 5, axis=0) + 1.5 * rng.normal(size=(200, 8))
    sim = retrieval.cosine(audio, text)
    m = retrieval.retrieval_metrics(sim, np.repeat(np.arange(40), 5))
    ref = reference_5_captions(sim)
    assert m["text_to_audio"]["R@1"] == pytest.approx(ref["t2a_R@1"])
    assert m["text_to_audio"]["R@10"] == pytest.approx(ref["t2a_R@10"])
    assert m["text_to_audio"]["mAP@10"] == pytest.approx(ref["t2a_mAP@10"])
    assert m["audio_to_text"]["R@5"] == pytest.approx(ref["a2t_R@5"])
    assert m["audio_to_text"]["mAP@10"] == pytest.approx(ref["a2t_mAP@10"])
    assert 0 < m["audio_to_text"]["mAP@10"] < 100  # a non-trivial case


def test_bad_inputs():
    with pytest.raises(ValueError, match="no caption"):
        retrieval.retrieval_metrics(np.zeros((2, 2)), np.array([0, 0]))
    with pytest.raises(ValueError, match="text_owner"):
        retrieval.retrieval_metrics(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval.retrieval_metrics(np.array([[np.inf]]), np.array([0]))


def write_corpus(tmp_path):
    e1, e2, e3 = np.eye(3)
    for name, vec in {"x.wav": e1, "y.wav": e2, "z.wav": e3}.items():
        wave = np.zeros(100, np.float32)
        wave[:D] = vec
        sf.write(tmp_path / name, wave, 44100, subtype="FLOAT")
    return FakeEmbedder({"c0": e1, "c1": e2, "c2": e2, "c3": e3})


@pytest.mark.parametrize("fmt", ["csv_rows", "csv_json_list", "jsonl"])
def test_evaluate_retrieval_files(tmp_path, fmt):
    embedder = write_corpus(tmp_path)
    if fmt == "csv_rows":
        path = tmp_path / "caps.csv"
        path.write_text("audio,caption\nx.wav,c0\ny.wav,c2\nx.wav,c1\nz.wav,c3\n")
    elif fmt == "csv_json_list":
        path = tmp_path / "caps.csv"
        path.write_text('audio,caption\nx.wav,"[""c0"", ""c1""]"\ny.wav,c2\nz.wav,c3\n')
    else:
        path = tmp_path / "caps.jsonl"
        path.write_text(
            "\n".join(
                json.dumps(r)
                for r in [
                    {"audio": "x.wav", "caption": ["c0", "c1"]},
                    {"audio": "y.wav", "caption": "c2"},
                    {"audio": "z.wav", "caption": ["c3"]},
                ]
            )
            + "\n"
        )
    res = retrieval.evaluate_retrieval(embedder, path)
    # c1 (describes x) embeds like y: t2a positions 0, 2, 0, 0.
    # a2t: x -> c0 at 0, c1 behind c2, c3 at 3; y -> c2 ties the irrelevant c1, so at 1; z -> 0
    assert res["benchmark"] == "retrieval" and (res["n_audio"], res["n_text"]) == (3, 4)
    assert res["text_to_audio"]["R@1"] == pytest.approx(75.0)
    assert res["text_to_audio"]["mAP@10"] == pytest.approx(100 * (1 + 1 / 3 + 1 + 1) / 4)
    assert res["audio_to_text"]["R@1"] == pytest.approx(200 / 3)
    assert res["audio_to_text"]["mAP@10"] == pytest.approx(100 * ((1 + 2 / 4) / 2 + 1 / 2 + 1) / 3)


def test_read_captions_names_the_missing_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("file,text\na.wav,hi\n")
    with pytest.raises(ValueError, match="needs an `audio` path"):
        retrieval.read_captions(tmp_path / "bad.csv")
