"""Composer: audio arithmetic on hand-built clips, parsing, captions, positives and negatives."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapcomp.data import compose
from clapcomp.data.compose import Event, Op, parse


def ref_concat(a, b):
    """Independent float64 reference: explicit loop over the crossfade, then peak 0.5."""
    a, b = list(map(float, a)), list(map(float, b))
    c = int(round(0.1 * min(len(a), len(b))))
    out = a[: len(a) - c]
    for i in range(c):
        w = (i + 0.5) / c
        out.append(a[len(a) - c + i] * (1 - w) + b[i] * w)
    out += b[c:]
    out = np.array(out)
    return out * 0.5 / np.abs(out).max()


def test_concat_constants_hand_computed():
    out = compose.concat_audio(np.ones(100), 2 * np.ones(50))
    # crossfade 5 samples (10% of 50): weights of b 0.1 0.3 0.5 0.7 0.9; length 145; peak 2 -> x0.25
    expected = np.concatenate([np.ones(95), [1.1, 1.3, 1.5, 1.7, 1.9], 2 * np.ones(45)]) * 0.25
    assert out.shape == (145,)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert np.abs(out).max() == pytest.approx(0.5)


def test_concat_ramps_and_lengths():
    a, b = np.arange(1.0, 21.0), -np.arange(1.0, 31.0)
    out = compose.concat_audio(a, b)
    assert out.shape == (20 + 30 - 2,)  # crossfade round(0.1 * 20) = 2
    np.testing.assert_allclose(out, ref_concat(a, b), atol=1e-12)
    # seam by hand: a[18:20] = 19, 20; b[0:2] = -1, -2; weights 0.25, 0.75; peak |-30| -> x(0.5/30)
    np.testing.assert_allclose(out[18:20], np.array([19 * 0.75 - 0.25, 20 * 0.25 - 2 * 0.75]) / 60, atol=1e-12)
    for la, lb in [(7, 3), (3, 7), (1000, 999), (4, 4), (1, 1)]:
        x, y = np.linspace(-1, 1, la), np.cos(np.arange(lb))
        out = compose.concat_audio(x, y)
        assert out.size == la + lb - int(round(0.1 * min(la, lb)))
        np.testing.assert_allclose(out, ref_concat(x, y), atol=1e-12)


def test_overlay_tiles_balances_and_normalises():
    a = 3 * np.ones(10)  # RMS 3
    b = np.array([0.5, -0.5, 0.5, -0.5])  # RMS 0.5, tiled to 10
    out = compose.overlay_audio(a, b)
    assert out.shape == (10,)
    np.testing.assert_allclose(out, np.tile([0.5, 0.0], 5), atol=1e-12)  # (1 + [1,-1,..]) * 0.25
    raw = compose.overlay_audio(a, b, balance=False)  # 3 + tiled b = 3.5, 2.5, ...; peak 3.5
    np.testing.assert_allclose(raw, np.tile([3.5, 2.5], 5) * 0.5 / 3.5, atol=1e-12)
    ramp = compose.overlay_audio(np.zeros(7), np.array([1.0, 2.0, 3.0]))  # silent operand left alone
    np.testing.assert_allclose(ramp, np.array([1, 2, 3, 1, 2, 3, 1]) / 6, atol=1e-12)
    assert compose.overlay_audio(np.ones(3), np.ones(11)).shape == (11,)


def test_render_nested_tree_matches_step_by_step_reference():
    rng = np.random.default_rng(0)
    clips = {k: rng.standard_normal(n) for k, n in zip("ABC", (50, 80, 30), strict=True)}
    out = compose.render_audio(parse("(A + B) * C"), clips)
    ab = ref_concat(clips["A"], clips["B"])
    c = np.resize(clips["C"], ab.size)
    ref = ab / np.sqrt(np.mean(ab**2)) + c / np.sqrt(np.mean(c**2))
    ref = ref * 0.5 / np.abs(ref).max()
    assert out.dtype == np.float32 and out.shape == (50 + 80 - 5,)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    with pytest.raises(KeyError, match="no clip named 'D'"):
        compose.render_audio(parse("A + D"), clips)


def test_parse_precedence_roundtrip_and_errors():
    A, B, C = Event("A"), Event("B"), Event("C")
    assert parse("A + B * C") == Op("+", A, Op("*", B, C))
    assert parse("(A + B) * C") == Op("*", Op("+", A, B), C)
    assert parse("A + B + C") == Op("+", Op("+", A, B), C)
    assert parse("A * (B + C)") == Op("*", A, Op("+", B, C))
    for text in ["A + B * C", "(A + B) * C", "A + (B + C)", "A * (B * C)", "(A * B) + (C + A)"]:
        tree = parse(text)
        assert parse(str(tree)) == tree
    assert compose.leaves(parse("(A + B) * C")) == ["A", "B", "C"]
    for bad in ["", "A +", "A $ B", "(A + B", "A B", "A + )"]:
        with pytest.raises(ValueError, match="expression"):
            parse(bad)


LABELS = {"A": "a dog barking", "B": "a man speaking", "C": "rain"}


def test_hand_worked_example():
    ex = compose.example(parse("(A + B) * C"), LABELS)
    assert ex["caption"] == "a dog barking followed by a man speaking, with rain"
    assert ex["positives"] == ["a dog barking followed by a man speaking", "a dog barking", "a man speaking", "rain"]
    assert ex["negatives"] == [
        "a man speaking followed by a dog barking, with rain",  # operand swap of +
        "a dog barking followed by a man speaking, followed by rain",  # * -> + at the root
        "a dog barking with a man speaking, with rain",  # + -> * inside
    ]
    ex = compose.example(parse("A * B"), LABELS)
    assert ex == {"caption": "a dog barking with a man speaking", "positives": ["a dog barking", "a man speaking"],
                  "negatives": ["a dog barking followed by a man speaking"]}  # fmt: skip


def test_template_connectives_name_the_later_event_first():
    words = dict(concat_words=("{b} after {a}",), overlay_words=("with",))
    ex = compose.example(parse("A + B"), LABELS, **words)
    assert ex["caption"] == "a man speaking after a dog barking"
    assert ex["negatives"] == ["a dog barking after a man speaking", "a dog barking with a man speaking"]
    ex = compose.example(parse("(A + B) * C"), LABELS, **words)
    assert ex["caption"] == "a man speaking after a dog barking, with rain"
    assert (
        compose.example(parse("A * B + C"), LABELS, **words)["caption"]
        == "rain after a dog barking with a man speaking"
    )
    with pytest.raises(ValueError, match="template"):
        compose.example(parse("A + B"), LABELS, concat_words=("{a} after",))


def test_negatives_keep_connective_choices_and_caps():
    for seed in range(20):
        ex = compose.example(parse("A + B + C"), LABELS, np.random.default_rng(seed))
        order_swaps = [
            n
            for n in ex["negatives"]
            if Counter(n.replace(",", "").split()) == Counter(ex["caption"].replace(",", "").split())
        ]
        assert len(order_swaps) == 2  # one per `+`, only operands moved, same connectives
        assert all(n != ex["caption"] and n not in ex["positives"] for n in ex["negatives"])
        assert len(set(ex["negatives"])) == len(ex["negatives"])
    names = "ABCDEFG"
    ex = compose.example(parse(" + ".join(names)), {k: f"event {k}" for k in names})
    op_swaps, order_swaps = compose.negative_trees(parse(" + ".join(names)))
    assert len(op_swaps) == 6 and len(order_swaps) == 6
    assert len(ex["negatives"]) == 10  # at most 5 of each kind
    same = compose.example(parse("A + B"), {"A": "a beep", "B": "a beep"})
    assert same["negatives"] == ["a beep with a beep"]  # the operand swap equals the caption: dropped


def test_cli_writes_audio_and_manifest(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "ev").mkdir()
    rows = ["audio,label"]
    for i, (sr, ch) in enumerate([(16000, 1), (22050, 2), (8000, 1)]):
        sf.write(tmp_path / "ev" / f"{i}.wav", 0.3 * rng.standard_normal((sr // 2, ch)), sr)
        rows.append(f"ev/{i}.wav,sound {i}")
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    for out in ("o1", "o2"):
        assert compose.main(["--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / out), "--n", "6",
                             "--seed", "3", "--sample-rate", "16000"]) == 0  # fmt: skip
    text = (tmp_path / "o1" / "manifest.jsonl").read_text()
    assert text == (tmp_path / "o2" / "manifest.jsonl").read_text()
    for line in text.splitlines():
        row = json.loads(line)
        assert set(row) == {"audio", "kind", "caption", "positives", "negatives"} and row["kind"] == "tree"
        info = sf.info(tmp_path / "o1" / row["audio"])
        assert info.samplerate == 16000 and info.channels == 1
        x, _ = sf.read(tmp_path / "o1" / row["audio"])
        assert np.abs(x).max() == pytest.approx(0.5, abs=1e-3)
        assert "sound" in row["caption"] and row["positives"] and row["caption"] not in row["negatives"]
    (tmp_path / "bad.csv").write_text("audio,label\nmissing.wav,x\n")
    with pytest.raises(ValueError, match="missing file"):
        compose.main(["--events", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o3")])
    # event clips are held to --max-seconds from their header (0.5-s clips, a 0.4-s cap)
    with pytest.raises(ValueError, match=r"row 2: .*0\.wav: too_long: 0\.5 s > 0\.4 s.*--max-seconds"):
        compose.main(["--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / "o4"), "--max-seconds", "0.4"])
    assert not (tmp_path / "o4").exists()


def test_with_attribute_fixes_articles():
    assert compose.with_attribute("a dog barking", "loud") == "a loud dog barking"
    assert compose.with_attribute("an owl hooting", "quiet") == "a quiet owl hooting"
    assert compose.with_attribute("a cow mooing", "early") == "an early cow mooing"
    assert compose.with_attribute("footsteps on gravel", "loud") == "loud footsteps on gravel"
    assert compose.with_attribute("the wind", "loud") == "the loud wind"


def test_loudness_audio_hand_computed():
    a, b = 2.0 * np.ones(4), np.array([1.0, -1.0])  # RMS 2 and 1
    out = compose.loudness_audio(a, b, 0.0, -20.0)
    # a -> 1, b -> 0.1 * [1, -1] then zero-padded: [1.1, 0.9, 1, 1]; peak 1.1 -> 0.5
    np.testing.assert_allclose(out, np.array([1.1, 0.9, 1.0, 1.0]) * 0.5 / 1.1, atol=1e-12)
    rng = np.random.default_rng(0)
    x, y = 3.0 * rng.standard_normal(4000), 0.01 * rng.standard_normal(4000)
    raw = compose.loudness_audio(x, y, 0.0, -15.0, peak=None)  # the quiet part is 15 dB below
    quiet = raw - x / np.sqrt(np.mean(x**2))
    assert 20 * np.log10(np.sqrt(np.mean(quiet**2))) == pytest.approx(-15.0, abs=1e-9)


def test_loudness_example_first_negative_is_the_rule_swap():
    from clapcomp.data.negatives import attribute_swaps

    ex = compose.loudness_example("a dog barking", "an owl hooting", loud_first=False)
    assert ex["caption"] == "a quiet dog barking and a loud owl hooting"
    assert ex["positives"] == ["a quiet dog barking", "a loud owl hooting"]
    assert ex["negatives"] == ["a loud dog barking and a quiet owl hooting", "a loud dog barking and a loud owl hooting",
                               "a quiet dog barking and a quiet owl hooting"]  # fmt: skip
    assert attribute_swaps(ex["caption"]) == ex["negatives"][:1]


def test_repeat_counting_and_trim_hand_computed():
    np.testing.assert_array_equal(compose.repeat_audio(np.array([1.0, 2.0]), 3, 1), [1, 2, 0, 1, 2, 0, 1, 2])
    out = compose.counting_audio([np.array([1.0, 2.0]), np.array([-3.0])], [2, 1], gap=1)
    np.testing.assert_allclose(out, np.array([1, 2, 0, 1, 2, 0, -3]) * 0.5 / 3, atol=1e-12)
    with pytest.raises(ValueError, match="count must be >= 1"):
        compose.repeat_audio(np.ones(3), 0, 1)
    np.testing.assert_allclose(compose.trim(np.ones(6), 4, 2), [1, 1, 0.75, 0.25])
    np.testing.assert_array_equal(compose.trim(np.ones(3), 4, 2), np.ones(3))


def test_counting_example_negatives():
    ex = compose.counting_example(["a dog barking", "a bell ringing"], [2, 3])
    assert ex["caption"] == "a dog barking twice followed by a bell ringing three times"
    assert ex["positives"] == ["a dog barking twice", "a bell ringing three times"]
    assert ex["negatives"] == [
        "a dog barking three times followed by a bell ringing twice",
        "a dog barking three times followed by a bell ringing three times",
        "a dog barking once followed by a bell ringing three times",
        "a dog barking twice followed by a bell ringing four times",
        "a dog barking twice followed by a bell ringing twice",
    ]
    one = compose.counting_example(["a door knock"], [4])
    assert one == {"caption": "a door knock four times", "positives": [], "negatives": ["a door knock three times"]}
    with pytest.raises(ValueError, match="counts must be in"):
        compose.counting_example(["a door knock"], [5])


def test_cli_loudness_and_counting(tmp_path):
    sr = 8000
    rows = ["audio,label"]
    for i, n in enumerate([4000, 12000, 2000]):
        sf.write(tmp_path / f"{i}.wav", 0.2 * np.sin(np.arange(n) * (0.1 + 0.1 * i)), sr)
        rows.append(f"{i}.wav,a sound {i}")
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    assert compose.main(["--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / "o"), "--n", "40", "--seed", "1",
                         "--sample-rate", str(sr), "--kinds", "loudness,counting", "--count-seconds", "1.0"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"loudness", "counting"}
    lengths = {f"a sound {i}": min(n, sr) for i, n in enumerate([4000, 12000, 2000])}  # counting cuts to 1 s
    words = {w: c for c, w in compose.COUNT_WORDS.items()}
    for r in rows:
        x, _ = sf.read(tmp_path / "o" / r["audio"])
        assert r["negatives"] and r["caption"] not in r["negatives"]
        if r["kind"] == "counting":  # the length follows from the caption: clips, repeats and 0.25-s gaps
            parts = [p.rsplit(" ", 1) if not p.endswith("times") else p.rsplit(" ", 2)[:1] + [p.rsplit(" ", 2)[1] + " times"]
                     for p in r["caption"].split(" followed by ")]  # fmt: skip
            counts = [(ph, words[w]) for ph, w in parts]
            expected = sum(lengths[ph] * c for ph, c in counts) + (sum(c for _, c in counts) - 1) * sr // 4
            assert x.size == expected, r["caption"]
        else:
            assert " and " in r["caption"] and ("loud" in r["caption"] and "quiet" in r["caption"])
    with pytest.raises(SystemExit):
        compose.main(["--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / "p"), "--kinds", "volume"])


def test_attribute_compositions_pair_different_labels():
    rng = np.random.default_rng(0)
    clips = [np.ones(800), np.ones(900), np.ones(700)]
    labels = ["a cow mooing", "a cow mooing", "a bell ringing"]
    for _ in range(20):
        for kind in ("loudness", "counting"):
            _, ex = compose.compose_one(kind, clips, labels, rng, sample_rate=1000, count_seconds=0.5)
            if " and " in ex["caption"] or " followed by " in ex["caption"]:
                assert "cow" in ex["caption"] and "bell" in ex["caption"], ex["caption"]
    with pytest.raises(ValueError, match="two different labels"):
        compose.compose_one("loudness", clips[:2], labels[:2], rng, sample_rate=1000)


def test_cli_refuses_the_events_folder_keeps_foreign_folders_and_survives_interruption(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    (tmp_path / "ev").mkdir()
    for i in range(2):
        sf.write(tmp_path / "ev" / f"{i}.wav", 0.3 * rng.standard_normal(4000), 8000)
    (tmp_path / "ev" / "events.csv").write_text("audio,label\n0.wav,sound 0\n1.wav,sound 1\n")
    events = str(tmp_path / "ev" / "events.csv")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()}
    with pytest.raises(SystemExit):  # --out the events' own folder: refused before anything is read
        compose.main(["--events", events, "--out", str(tmp_path / "ev"), "--n", "2"])
    assert "would overwrite the input" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="did not write"):
        compose.main(["--events", events, "--out", str(tmp_path / "mine"), "--n", "2", "--sample-rate", "8000"])
    out = tmp_path / "o"
    assert compose.main(["--events", events, "--out", str(out), "--n", "3", "--sample-rate", "8000"]) == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = compose.compose_one
    calls = []

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compose, "compose_one", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        compose.main(["--events", events, "--out", str(out), "--n", "3", "--seed", "9", "--sample-rate", "8000"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "mine", "o"]  # no temporary folder or lock left
    monkeypatch.undo()
    assert (
        compose.main(["--events", events, "--out", str(out), "--n", "3", "--seed", "9", "--sample-rate", "8000"]) == 0
    )
    assert (out / "manifest.jsonl").read_bytes() != first[Path("manifest.jsonl")]  # an earlier output is replaced
