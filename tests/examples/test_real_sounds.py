"""examples/real_sounds/build_corpus.py: the reviewed label table, source grouping and the split."""

from collections import Counter
from pathlib import Path

import pytest
from repo_configs import load_script

ROOT = Path(__file__).resolve().parents[2] / "examples" / "real_sounds"


def _module():
    return load_script(ROOT / "build_corpus.py")


bc = _module()


def test_label_table_is_well_formed_and_free_of_reserved_packages():
    rows = bc.read_labels(ROOT / "labels.csv")
    assert not {r["package"] for r in rows} & bc.RESERVED
    keys = Counter((r["package"], r["pattern"]) for r in rows)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert 15 <= len({r["class"] for r in rows}) <= 30
    for r in rows:  # captions are noun phrases that compose: lower-case, no final punctuation
        assert r["caption"] == r["caption"].strip() and r["caption"][0].islower() and r["caption"][-1].isalpha()


def test_reserved_packages_are_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("package,pattern,class,caption\nwesnoth-1.16-data,*.ogg,x,a sound\n")
    with pytest.raises(ValueError, match="reserved"):
        bc.read_labels(tmp_path / "labels.csv")
    with pytest.raises(ValueError, match="reserved"):
        bc.fetch("0ad-data", tmp_path)


def test_label_of_first_match_and_unlabelled():
    labels = [
        {"package": "p", "pattern": "snd/Fire[0-9].wav", "class": "fire", "caption": "a fire burning"},
        {"package": "p", "pattern": "snd/*.wav", "class": "other", "caption": "a sound"},
    ]
    assert bc.label_of("p", "snd/Fire2.wav", labels)["class"] == "fire"
    assert bc.label_of("p", "snd/Fire10.wav", labels)["class"] == "other"  # one digit only
    assert bc.label_of("q", "snd/Fire2.wav", labels) is None
    assert bc.label_of("p", "snd/fire2.ogg", labels) is None


def test_source_groups_numbered_variants_only():
    assert bc.source_of("p", "a/Fire1.wav") == bc.source_of("p", "a/Fire3.wav") == "p:a/fire"
    assert bc.source_of("p", "a/Droplet_2.ogg") == "p:a/droplet"
    assert bc.source_of("p", "a/cow.ogg") != bc.source_of("p", "a/cow_white.ogg")
    assert bc.source_of("p", "a/Fire1.wav") != bc.source_of("p", "b/Fire1.wav") != bc.source_of("q", "a/Fire1.wav")
    assert bc.source_of("p", "a/1.ogg") == "p:a/1"


def test_split_by_source_keeps_sources_whole_stratified_and_seeded():
    clips = []
    for cls, n_sources in (("a", 10), ("b", 5), ("c", 3), ("d", 2), ("e", 1)):
        for s in range(n_sources):
            for v in range(1 + s % 3):  # numbered variants of one recording
                clips.append({"class": cls, "source": f"{cls}:{s}", "variant": v})
    split = bc.split_by_source(clips, 0.2, seed=0)
    assert set(split) == {c["source"] for c in clips}
    test = Counter(s.split(":")[0] for s, v in split.items() if v == "test")
    assert test == {"a": 2, "b": 1, "c": 1}  # round(0.2 n), >= 1 from 3 sources, none below 2
    assert split == bc.split_by_source(list(reversed(clips)), 0.2, seed=0)
    others = [bc.split_by_source(clips, 0.2, seed=s) for s in range(1, 6)]
    assert any(o != split for o in others)


def test_test_set_files_use_only_the_given_clips(tmp_path):
    import argparse
    import csv
    import json

    import numpy as np
    import soundfile as sf

    sr, clips = 8000, []
    (tmp_path / "events").mkdir()
    for i, cls in enumerate(["a", "b", "c"]):
        sf.write(tmp_path / "events" / f"{i}.flac", 0.3 * np.sin(np.arange(2000 + 1000 * i) * 0.05 * (i + 1)), sr)
        clips.append({"audio": f"events/{i}.flac", "caption": f"a sound {cls}", "class": cls})
    a = argparse.Namespace(seed=0, sample_rate=sr, count_seconds=0.2, n_order=4, n_attribute=4, n_retrieval=3)
    counts = bc.test_set(tmp_path, clips, a)
    assert counts["order_triplets"] == 1 and counts["attribute_categories"] == {"loudness": 2, "counting": 2}
    with (tmp_path / "test" / "order.csv").open() as f:
        order = list(csv.DictReader(f))
    with (tmp_path / "test" / "attribute.csv").open() as f:
        attribute = list(csv.DictReader(f))
    captions = {c["caption"] for c in clips}
    for r in order:
        x, y = r["pair_caption"].split(" followed by ")
        assert {x, y} <= captions and r["reversed_pair_caption"] == f"{y} followed by {x}"
        a_, b_ = (sf.read(tmp_path / "test" / r[k])[0] for k in ("pair_file", "reversed_pair_file"))
        assert a_.size == b_.size  # the same two clips, swapped
    assert [r["triplet_file"] != "-" for r in order] == [False, False, False, True]
    for r in attribute:
        pair, rev = (sf.read(tmp_path / "test" / r[k])[0] for k in ("pair_file", "reversed_pair_file"))
        assert pair.size == rev.size and not np.allclose(pair, rev)
        if r["category"] == "loudness":
            assert r["reversed_pair_caption"] == r["pair_caption"].replace("loud", "@").replace(
                "quiet", "loud"
            ).replace("@", "quiet")
        else:
            assert "followed by" in r["pair_caption"] and r["pair_caption"] != r["reversed_pair_caption"]
    rows = [json.loads(line) for line in (tmp_path / "test" / "retrieval.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["tree", "loudness", "counting"]
    assert all((tmp_path / "test" / r["audio"]).is_file() for r in rows)


def test_compare_refuses_an_unknown_override_before_running(tmp_path, capsys):
    """--set / --set3 go through clapcomp.train.config.load: an unknown key stops the script at once,
    naming the key, before the corpus is even looked at."""
    compare = load_script(ROOT / "compare.py")
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.py"
    base = ["--corpus", str(tmp_path), "--workdir", str(tmp_path / "w"), "--config", str(demo), "--steps", "2"]
    for flag in ("--set", "--set3"):
        with pytest.raises(SystemExit) as e:
            compare.main([*base, flag, "data.nonexistent_key=3"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "'data.nonexistent_key', which is no config field" in err, err
    with pytest.raises(SystemExit):
        compare.main([*base, "--set", "optimizer.lrr=1"])
    assert "the closest are optimizer.lr" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
