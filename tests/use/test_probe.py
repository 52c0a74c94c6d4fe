"""`clapcomp probe` and `classify --probe` against scikit-learn fit independently on `clapcomp.load`
embeddings of the files, accuracy / mAP by hand (NumPy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression

from clapcomp.use import classify, probe

EVENTS = ["whistle", "noise burst", "siren"]


@pytest.fixture
def splits(tmp_path, write_clip):
    """train.csv (4 clips per event), test.csv (2 per event), one window each; paths relative to the CSVs."""
    for split, n in (("train", 4), ("test", 2)):
        rows = ["audio,label"]
        for e in EVENTS:
            for i in range(n):
                name = f"{split}/{e.replace(' ', '_')}{i}.wav"
                write_clip(tmp_path / name, e, 100 * len(split) + 10 * EVENTS.index(e) + i, scale=0.7)  # < 1 clip
                rows.append(f"{name},{e}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _embed(clap, folder, split):
    files, labels = probe.read_split(folder / f"{split}.csv")
    emb = np.concatenate([clap.embed_audio([sf.read(str(f), dtype="float32")[0]], 48_000) for f in files])
    return files, emb, labels


def _average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    return float(np.sum(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)) / hits.sum())


def test_probe_matches_sklearn_and_classify_uses_it(clap, model_dir, splits, capsys):
    out = splits / "probe"
    args = ["--model", str(model_dir), "--train", str(splits / "train.csv"), "--test", str(splits / "test.csv")]
    assert probe.main([*args, "--out", str(out), "--c", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "probe.json").read_text())

    _, x_train, y_train = _embed(clap, splits, "train")
    test_files, x_test, y_test = _embed(clap, splits, "test")
    labels = sorted(EVENTS)
    clf = LogisticRegression(C=10, tol=1e-8, max_iter=10_000).fit(
        x_train.astype(np.float64), [labels.index(y) for y in y_train]
    )
    expected = clf.predict_proba(x_test.astype(np.float64))
    truth = np.array([labels.index(y) for y in y_test])
    accuracy = float((expected.argmax(1) == truth).mean())
    m_ap = float(np.mean([_average_precision(expected[:, c], truth == c) for c in range(3)]))
    assert meta["labels"] == labels
    assert meta["test"]["accuracy"] == pytest.approx(accuracy) and meta["test"]["mAP"] == pytest.approx(m_ap, abs=1e-6)
    assert printed["accuracy"] == pytest.approx(accuracy, abs=1e-4)

    loaded = probe.Probe.load(out, clap)
    np.testing.assert_allclose(loaded.probabilities(x_test), expected, atol=1e-4)
    assert classify.main(["--model", str(model_dir), "--probe", str(out), "--top-k", "3", "--json", *map(str, test_files)]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    for r, p in zip(results, expected, strict=True):
        assert [x["label"] for x in r["labels"]] == [labels[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([x["score"] for x in r["labels"]], np.sort(p)[::-1], atol=1e-4)


def test_two_classes_give_sklearn_probabilities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = ["b" if v > 0 else "a" for v in x[:, 0] + 0.5 * rng.normal(size=40)]
    labels, w, b = probe.fit(x, y)
    expected = LogisticRegression(tol=1e-8, max_iter=10_000).fit(x, [labels.index(v) for v in y]).predict_proba(x)
    np.testing.assert_allclose(probe.Probe(labels, w, b, {}).probabilities(x), expected, atol=1e-6)


def test_refusals(clap, model_dir, other_model_dir, splits, capsys):
    args = ["--model", str(model_dir), "--train", str(splits / "train.csv"), "--out", str(splits / "probe")]
    (splits / "extra.csv").write_text("audio,label\ntest/whistle0.wav,dog\n")
    assert probe.main([*args, "--test", str(splits / "extra.csv")]) == 2
    assert "labels the training split lacks: ['dog']" in capsys.readouterr().err and not (splits / "probe").exists()
    assert probe.main([*args, "--test", str(splits / "test.csv")]) == 0
    capsys.readouterr()
    assert classify.main(["--model", str(other_model_dir), "--probe", str(splits / "probe"), str(splits / "test")]) == 2
    assert "was fit on another model" in capsys.readouterr().err
