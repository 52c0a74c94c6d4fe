"""tfds builders on tiny fake manual_dirs: prepared as ArrayRecord, read back, no TensorFlow."""

import csv
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from clapcomp.data import tfds_builders as tb
from clapcomp.data.build import build
from clapcomp.data.records import RecordSource

SR = 16000


def _wav(path, freq):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(SR // 10) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    with open(path, "rb") as f:
        return f.read()


def _csv(path, fields, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)


def _prepare(builder_cls, manual_dir, data_dir):
    builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _rows(source):
    return [source[i] for i in range(len(source))]


def test_audiocaps(tmp_path):
    m = tmp_path / "m"
    _csv(
        m / "train.csv",
        ["audiocap_id", "youtube_id", "start_time", "caption"],
        [[1, "yt1", 30, "a dog barks"], [2, "yt2", 0, "rain falls"], [3, "yt1", 30, "barking dog"]],
    )
    _csv(m / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], [[9, "yt3", 0, "wind"]])
    a1 = _wav(str(m / "audio/train/yt1.wav"), 440)
    a3 = _wav(str(m / "audio/test/yt3.flac"), 220)
    builder = _prepare(tb.AudioCaps, m, tmp_path / "d")
    assert set(builder.info.splits) == {"train", "test"}
    train = sorted(_rows(builder.as_data_source(split="train")), key=lambda r: r["filename"])
    assert [(r["filename"], sorted(r["captions"])) for r in train] == [
        (b"yt1.wav", [b"a dog barks", b"barking dog"]),
        (b"yt2.wav", [b"rain falls"]),
    ]
    assert train[0]["audio"] == a1 and train[1]["audio"] == b""  # yt2 missing from manual_dir
    (test,) = _rows(builder.as_data_source(split="test"))
    assert test["audio"] == a3 and test["filename"] == b"yt3.flac"
    assert "tensorflow" not in sys.modules


def test_clotho(tmp_path):
    m = tmp_path / "m"
    caps = [f"caption_{i}" for i in range(1, 6)]
    _csv(m / "clotho_captions_development.csv", ["file_name"] + caps, [["x.wav"] + [f"x says {i}" for i in range(5)]])
    _csv(m / "clotho_captions_evaluation.csv", ["file_name"] + caps, [["y.wav"] + ["y"] * 5])
    ax = _wav(str(m / "development/x.wav"), 500)
    _wav(str(m / "evaluation/y.wav"), 600)
    builder = _prepare(tb.Clotho, m, tmp_path / "d")
    assert set(builder.info.splits) == {"train", "test"}
    (x,) = _rows(builder.as_data_source(split="train"))
    assert x["audio"] == ax and x["captions"] == [f"x says {i}".encode() for i in range(5)]
    assert "tensorflow" not in sys.modules


def test_esc50(tmp_path):
    m = tmp_path / "m"
    _csv(
        m / "meta/esc50.csv",
        ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
        [["1-100-A-0.wav", 1, 0, "dog", True, 100, "A"], ["2-200-A-10.wav", 2, 10, "rain", False, 200, "A"]],
    )
    a = _wav(str(m / "audio/1-100-A-0.wav"), 300)
    _wav(str(m / "audio/2-200-A-10.wav"), 350)
    builder = _prepare(tb.Esc50, m, tmp_path / "d")
    rows = sorted(_rows(builder.as_data_source(split="train")), key=lambda r: r["fold"])
    assert [(r["category"], r["target"], r["fold"]) for r in rows] == [(b"dog", 0, 1), (b"rain", 10, 2)]
    assert rows[0]["audio"] == a
    ((item, cand),) = builder.to_candidates(rows[0])
    assert cand["captions"] == ["This is a sound of dog."] and cand["audio"] == a
    assert "tensorflow" not in sys.modules


def _compa_dir(m, triplets):
    fields = ["pair_caption", "reversed_pair_caption", "pair_file", "reversed_pair_file"]
    rows = [
        ["dog then cat", "cat then dog", "p0.wav", "r0.wav"],
        ["loud dog quiet man", "quiet dog loud man", "audio/p1.wav", "missing.wav"],
    ]
    if triplets:
        fields += ["triplet_caption", "triplet_file"]
        rows = [rows[0] + ["dog with cat", "t0.wav"], rows[1] + ["-", "-"]]
    _csv(m / ("compa_order.csv" if triplets else "compa_attribute.csv"), fields, rows)
    for name, f in (("p0.wav", 100), ("r0.wav", 200), ("t0.wav", 300)):
        _wav(str(m / name), f)
    _wav(str(m / "audio/p1.wav"), 400)


@pytest.mark.parametrize("cls,triplets", [(tb.CompaOrder, True), (tb.CompaAttribute, False)])
def test_compa_benchmarks(tmp_path, cls, triplets):
    m = tmp_path / "m"
    _compa_dir(m, triplets)
    builder = _prepare(cls, m, tmp_path / "d")
    rows = _rows(builder.as_data_source(split="test"))
    assert [(r["pair_caption"], r["reversed_pair_caption"]) for r in rows] == [
        (b"dog then cat", b"cat then dog"),
        (b"loud dog quiet man", b"quiet dog loud man"),
    ]
    assert rows[0]["pair_audio"] == open(m / "p0.wav", "rb").read()
    assert rows[1]["pair_audio"] == open(m / "audio/p1.wav", "rb").read()
    assert rows[1]["reversed_pair_audio"] == b""
    if triplets:
        assert rows[0]["triplet_caption"] == b"dog with cat" and rows[0]["triplet_audio"]
        assert rows[1]["triplet_file"] == b"" and rows[1]["triplet_audio"] == b""
    else:
        assert "triplet_audio" not in rows[0]
    assert "tensorflow" not in sys.modules


def test_build_from_tfds_pairs_captions_as_negatives(tmp_path):
    m = tmp_path / "m"
    _compa_dir(m, triplets=True)
    stats = build(
        None,
        str(tmp_path / "out"),
        format="tfds",
        tfds_name="compa_order",
        manual_dir=str(m),
        tfds_split="test",
        sample_rate=SR,
    )
    assert stats["written"] == 4 and stats["skipped_by_reason"] == {"missing_file": 1}
    src = RecordSource(str(tmp_path / "out"))
    got = {e["key"]: (e["captions"], e["negatives"]) for e in map(src.example, range(len(src)))}
    assert got == {
        "compa_order/p0.wav": (["dog then cat"], ["cat then dog"]),
        "compa_order/r0.wav": (["cat then dog"], ["dog then cat"]),
        "compa_order/t0.wav": (["dog with cat"], []),
        "compa_order/audio/p1.wav": (["loud dog quiet man"], ["quiet dog loud man"]),
    }
    with pytest.raises(ValueError, match="no split"):
        list(tb.iter_candidates("compa_order", str(m), split="train", data_dir=str(tmp_path / "d2")))
    with pytest.raises(ValueError, match="unknown tfds dataset"):
        tb.prepare("nope", str(m), str(tmp_path / "d3"))
    assert "tensorflow" not in sys.modules
