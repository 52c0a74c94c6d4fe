"""Zero-shot top-1 and mAP against hand-computed values and a sort-based AP reference."""

import numpy as np
import pytest
import soundfile as sf

from clapcomp.evaluate import zeroshot

D = 3


class FakeEmbedder:
    """Audio embedding = its first D samples (normalised); text embedding from a dict."""

    def __init__(self, text_vectors):
        self.text_vectors = text_vectors
        self.texts_seen = []

    def embed_audio(self, audio, sample_rate):
        v = np.stack([a[:D] for a in audio]).astype(np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts):
        self.texts_seen += texts
        v = np.array([self.text_vectors[t] for t in texts], np.float64)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_zero_shot_metrics_hand_computed():
    sim = np.array(
        [
            [0.9, 0.1, 0.7],  # label 0: correct
            [0.05, 0.5, 0.1],  # label 0: wrong
            [0.2, 0.6, 0.6],  # label 1: tie between 1 and 2 -> wrong
            [0.1, 0.2, 0.7],  # label 2: correct
        ]
    )
    m = zeroshot.zero_shot_metrics(sim, np.array([0, 0, 1, 2]))
    assert m["top1"] == pytest.approx(50.0)
    # AP class 0: column [.9, .05, .2, .1] -> relevant at 0 and 3 -> (1 + 2/4)/2 = 0.75
    # AP class 1: column [.1, .5, .6, .2] -> relevant at 0 -> 1
    # AP class 2: column [.7, .1, .6, .7] -> relevant 0.7 tied by audio 0 -> at 1 -> 0.5
    assert m["mAP"] == pytest.approx(100 * (0.75 + 1 + 0.5) / 3)
    assert m["per_class_top1"] == [50.0, 0.0, 100.0]
    assert (m["n_audio"], m["n_classes"]) == (4, 3)


def reference_ap(scores, relevant):
    """AP by sorting (score descending, irrelevant first on ties) and averaging precision at hits."""
    order = np.lexsort((relevant, -scores))
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return precision[hits].mean()


def test_map_matches_sort_reference_with_ties():
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 5, size=(60, 4)).astype(float)  # many ties
    labels = rng.integers(0, 4, size=60)
    m = zeroshot.zero_shot_metrics(sim, labels)
    ref = np.mean([reference_ap(sim[:, c], labels == c) for c in range(4)])
    assert m["mAP"] == pytest.approx(100 * ref)
    others = np.where(np.eye(4, dtype=bool)[labels], -np.inf, sim)
    assert m["top1"] == pytest.approx(100 * np.mean(sim[np.arange(60), labels] > others.max(1)))


def test_prompts_and_bad_inputs():
    assert zeroshot.prompts(["dog", "chirping_birds"]) == [
        "This is a sound of dog.",
        "This is a sound of chirping birds.",
    ]
    with pytest.raises(ValueError, match="must contain"):
        zeroshot.prompts(["dog"], "a sound")
    with pytest.raises(ValueError, match="labels must be"):
        zeroshot.zero_shot_metrics(np.zeros((2, 2)), np.array([0, 5]))


def test_evaluate_zeroshot_csv(tmp_path):
    e1, e2, e3 = np.eye(3)
    for name, vec in {"d.wav": e1, "c.wav": e2 + 0.1 * e1, "r.wav": e1 + 0.2 * e3}.items():
        wave = np.zeros(64, np.float32)
        wave[:D] = vec
        sf.write(tmp_path / name, wave, 48000, subtype="FLOAT")
    (tmp_path / "esc.csv").write_text("audio,label\nd.wav,dog\nc.wav,cat\nr.wav,rain\n")
    vectors = {"A dog.": e1, "A cat.": e2, "A rain.": e3}
    embedder = FakeEmbedder(vectors)
    res = zeroshot.evaluate_zeroshot(embedder, tmp_path / "esc.csv", template="A {label}.")
    # rain audio e1 + 0.2 e3 is closest to "dog": 2 of 3 correct
    assert res["classes"] == ["cat", "dog", "rain"] and embedder.texts_seen == ["A cat.", "A dog.", "A rain."]
    assert res["top1"] == pytest.approx(200 / 3)
    assert res["per_class_top1"] == {"cat": 100.0, "dog": 100.0, "rain": 0.0}
    # AP: cat column -> c at 0 (1); dog column: d 1.0, r .98 -> d at 0 (1); rain column: r highest (1)
    assert res["mAP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not in class_names"):
        zeroshot.evaluate_zeroshot(embedder, tmp_path / "esc.csv", template="A {label}.", class_names=["dog"])
    (tmp_path / "bad.csv").write_text("file,label\nd.wav,dog\n")
    with pytest.raises(ValueError, match="audio,label"):
        zeroshot.evaluate_zeroshot(embedder, tmp_path / "bad.csv")
