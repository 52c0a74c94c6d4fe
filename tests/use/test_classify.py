"""`clapcomp classify` against references computed without clapcomp.use: prompt ensembles in NumPy
float64 from per-template text embeddings, `Clap.zero_shot` on the files read by hand, windows cut by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from clapcomp.use.classify import SOUND_TEMPLATES, main

LABELS = ["dog", "rain", "siren", "whistle"]


def test_label_embeddings_are_the_normalised_mean_of_normalised_templates(clap):
    templates = ["a sound of {}.", "{} can be heard", "the {label} again"]
    ours = clap.label_embeddings(LABELS[:2], templates)
    for row, label in zip(ours, LABELS[:2], strict=True):
        texts = [t.replace("{label}", "{}").format(label) for t in templates]
        emb = np.stack([clap.embed_text([t])[0] for t in texts]).astype(np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        mean = emb.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # labels give distinct embeddings: the check is not vacuous


def test_json_equals_zero_shot_and_skips_unreadable(clap, model_dir, library, capsys):
    rc = main(["--model", str(model_dir), "--labels", *LABELS, "--top-k", "4", "--json", str(library)])
    out, err = capsys.readouterr()
    assert rc == 1 and "broken.wav" in err and "1 of 5 files could not be read" in err
    results = {r["file"]: r for r in json.loads(out)}
    assert len(results) == 4 and not any(f.endswith("notes.txt") for f in results)
    for name in ("whistle.wav", "sub/noise.flac", "sub/siren.wav"):
        x, rate = sf.read(str(library / name), dtype="float32")
        expected = clap.zero_shot([x], LABELS, rate, templates=SOUND_TEMPLATES)[0]
        got = results[str((library / name).resolve())]["labels"]
        assert [g["label"] for g in got] == [LABELS[i] for i in np.argsort(-expected)]
        np.testing.assert_allclose([g["score"] for g in got], np.sort(expected)[::-1], atol=2e-5)


def test_windows_and_csv(clap, model_dir, library, tmp_path, reference_windows, capsys):
    long = library / "long" / "chord.wav"
    out = tmp_path / "labels.csv"
    rc = main(
        [
            "--model",
            str(model_dir),
            "--labels",
            *LABELS,
            "--top-k",
            "2",
            "--windows",
            "--batch",
            "3",
            "--csv",
            str(out),
            str(long),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    offsets, emb = reference_windows(clap, long)
    assert len(offsets) >= 3  # the recording spans several clips
    probs = clap.label_probabilities(emb, clap.label_embeddings(LABELS, SOUND_TEMPLATES))
    for offset, p in [
        ("", probs.mean(axis=0)),
        *((str(round(float(t), 3)), q) for t, q in zip(offsets, probs, strict=True)),
    ]:
        got = [r for r in rows if r["offset"] == offset]
        assert [r["label"] for r in got] == [LABELS[i] for i in np.argsort(-p)[:2]], offset
        np.testing.assert_allclose([float(r["score"]) for r in got], np.sort(p)[::-1][:2], atol=2e-5)
    assert main(["--model", str(model_dir), "--labels", *LABELS, "--max-seconds", "2", "--json", str(long)]) == 1
    assert "too_long" in capsys.readouterr().err  # refused from the header, before decoding


def test_multi_label_thresholds_the_cosine(clap, model_dir, library, capsys):
    path = library / "whistle.wav"
    x, rate = sf.read(str(path), dtype="float32")
    cos = clap.embed_audio([x], rate)[0] @ clap.label_embeddings(LABELS, SOUND_TEMPLATES).T
    threshold = float(np.median(cos))
    rc = main(["--model", str(model_dir), "--labels", *LABELS, "--multi-label", "--threshold", str(threshold), "--json", str(path)])  # fmt: skip
    (result,) = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [g["label"] for g in result["labels"]] == [LABELS[i] for i in np.argsort(-cos) if cos[i] >= threshold]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labels", "dog", "rain", "dog"], "['dog'] appear more than once"),
        (["--labels", "dog", "--templates-file", "TEMPLATES"], "hold no '{}'"),
        (["--labels", "dog", "rain", "--probe", "x"], None),  # argparse: not allowed together
    ],
)
def test_bad_labels_are_named_and_nothing_is_written(model_dir, library, tmp_path, capsys, args, message):
    (tmp_path / "TEMPLATES").write_text("a sound\n")
    args = [a.replace("TEMPLATES", str(tmp_path / "TEMPLATES")) for a in args]
    out = tmp_path / "keep.csv"
    out.write_text("old")
    if message is None:
        with pytest.raises(SystemExit):
            main(["--model", str(model_dir), *args, "--csv", str(out), str(library)])
    else:
        assert main(["--model", str(model_dir), *args, "--csv", str(out), str(library)]) == 2
        assert message in capsys.readouterr().err
    assert out.read_text() == "old"


def test_labels_end_at_double_dash(model_dir, library, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--labels", "dog", "rain", str(library / "whistle.wav")])
    assert "end the labels with --" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--labels", "dog", "rain", "--", str(library / "whistle.wav")]) == 0
    assert capsys.readouterr().out.startswith(str((library / "whistle.wav").resolve()))


def test_empty_folder_is_named(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(model_dir), "--labels", "dog", "--json", str(tmp_path / "empty")]) == 2
    assert "no audio files under" in capsys.readouterr().err
