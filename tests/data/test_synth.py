"""Synthetic dataset: event signatures, determinism, benchmark format, held-apart renderings."""

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapcomp.data import compose, synth
from clapcomp.data.negatives import normalize

SR = 16_000
KW = dict(n_train=24, n_order=8, n_attribute=12, n_retrieval=4, sample_rate=SR, clip_seconds=3.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    return out, synth.synthesize(out, seed=7, **KW)


def files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(data, tmp_path):
    out, summary = data
    assert synth.main(["--out", str(tmp_path / "b"), "--seed", "7", "--n-train", "24", "--n-order", "8",
                       "--n-attribute", "12", "--n-retrieval", "4", "--sample-rate", str(SR),
                       "--clip-seconds", "3"]) == 0  # fmt: skip
    a, b = files(out), files(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert len([k for k in a if k.endswith(".flac")]) == 24 + 4 + 2 * 8 + 8 // 4 + 2 * 12
    synth.synthesize(tmp_path / "c", seed=8, **KW)
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != a["train.jsonl"]
    assert summary["counts"]["order_triplets"] == 2 and summary["sample_rate"] == SR


def test_event_classes_have_their_signatures():
    for name in synth.EVENTS:
        x = synth.render_event(name, {}, 3, SR)
        assert np.all(np.isfinite(x)) and 0.9 * SR <= x.size <= 1.3 * SR
        assert 10 ** (-4.01 / 20) * 0.1 <= np.sqrt(np.mean(x**2)) <= 0.1 * 1.0001  # RMS 0.1 x gain (-4..0 dB)

    def peak_hz(x):
        return np.argmax(np.abs(np.fft.rfft(x))) * SR / x.size

    assert 1400 <= peak_hz(synth.render_event("whistle", {"pitch": "high-pitched"}, 1, SR)) <= 2400
    assert 180 <= peak_hz(synth.render_event("whistle", {"pitch": "low-pitched"}, 1, SR)) <= 320
    loud = synth.render_event("buzz", {"loudness": "loud"}, 1, SR)
    quiet = synth.render_event("buzz", {"loudness": "quiet"}, 1, SR)  # same seed: same draws, other gain
    assert loud.size == quiet.size
    np.testing.assert_allclose(20 * np.log10(np.sqrt(np.mean(loud**2)) / np.sqrt(np.mean(quiet**2))), 15, atol=1.01)
    assert synth.render_event("hiss", {"duration": "short"}, 1, SR).size <= 0.6 * SR
    assert synth.render_event("hiss", {"duration": "long"}, 1, SR).size >= 1.6 * SR
    for name, band in (("rumble", (0, 250)), ("hiss", (4000, 7000))):
        x = synth.render_event(name, {}, 1, SR)
        spec, f = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(x.size, 1 / SR)
        outside = (f < band[0] - 50) | (f > band[1] + 50)
        assert spec[outside].sum() < 1e-3 * spec.sum()  # > 30 dB down outside the band
    first, last = (np.abs(np.fft.rfft(h)) for h in np.array_split(synth.render_event("rising chirp", {}, 1, SR), 2))
    assert np.argmax(last) > np.argmax(first)
    with pytest.raises(ValueError, match="tonal"):
        synth.render_event("hiss", {"pitch": "high-pitched"}, 1, SR)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_benchmark_files_and_captions(data):
    out, _ = data
    order, attribute = read_csv(out / "order.csv"), read_csv(out / "attribute.csv")
    assert list(order[0]) == list(synth.ORDER_COLUMNS) and list(attribute[0]) == list(synth.ORDER_COLUMNS[:4])
    assert len(order) == 8 and len(attribute) == 12
    assert sum(r["triplet_file"] != "-" for r in order) == 2 and sum(r["triplet_caption"] == "-" for r in order) == 6
    for r in order:
        x, y = r["pair_caption"].split(" followed by ")
        assert r["reversed_pair_caption"] == f"{y} followed by {x}"
        if r["triplet_file"] != "-":
            assert r["triplet_caption"] == f"{x} with {y}"
    for r in attribute:
        assert Counter(r["pair_caption"].split()) == Counter(r["reversed_pair_caption"].split())
        assert r["pair_caption"] != r["reversed_pair_caption"] and " and " in r["pair_caption"]
    for r in order + attribute:
        for key in ("pair_file", "reversed_pair_file", "triplet_file"):
            if r.get(key, "-") != "-":
                info = sf.info(out / r[key])
                assert info.samplerate == SR and info.frames == 3 * SR
        assert (out / r["pair_file"]).read_bytes() != (out / r["reversed_pair_file"]).read_bytes()
    retrieval = [json.loads(line) for line in (out / "retrieval.jsonl").read_text().splitlines()]
    assert len(retrieval) == 4 and all((out / r["audio"]).is_file() and r["caption"] for r in retrieval)


def test_benchmark_audio_is_rendered_from_the_recorded_seeds(data):
    """Re-render every benchmark clip from renderings.jsonl: order pair = X then Y, reversed = Y then X,
    triplet = X * Y; attribute pair = X(A1) and Y(A2) started together, reversed = the attributes traded."""
    out, _ = data
    recs = {r["file"]: r for r in map(json.loads, (out / "renderings.jsonl").read_text().splitlines())}
    scale = 3.0 / synth.FILL_SECONDS

    def check(file, audio):
        got, _ = sf.read(out / file)
        placed = synth._Maker(7, "order", SR, 3.0).place(audio, recs[file]["place"])  # depends on the seed only
        np.testing.assert_allclose(got, placed, atol=1 / 32768)

    for r in read_csv(out / "order.csv"):
        (x, _, sx), (y, _, sy) = recs[r["pair_file"]]["events"]
        assert r["pair_caption"] == f"a {x} followed by a {y}"
        ex, ey = synth.render_event(x, {}, sx, SR, scale), synth.render_event(y, {}, sy, SR, scale)
        for key, audio in (("pair_file", compose.concat_audio(ex, ey)), ("reversed_pair_file", compose.concat_audio(ey, ex)),
                           ("triplet_file", compose.overlay_audio(ex, ey))):  # fmt: skip
            if r[key] != "-":
                check(r[key], audio)
    for r in read_csv(out / "attribute.csv"):
        pair, rev = recs[r["pair_file"]]["events"], recs[r["reversed_pair_file"]]["events"]
        (x, ax, sx), (y, ay, sy) = pair
        assert rev == [[x, ay, sx], [y, ax, sy]] and ax != ay  # same renderings, attributes traded
        (_, a1), (_, a2) = *ax.items(), *ay.items()
        assert r["pair_caption"] == f"a {a1} {x} and a {a2} {y}"
        for file, (bx, by) in ((r["pair_file"], (ax, ay)), (r["reversed_pair_file"], (ay, ax))):
            ex, ey = synth.render_event(x, bx, sx, SR, scale), synth.render_event(y, by, sy, SR, scale)
            together = np.zeros(max(ex.size, ey.size))
            together[: ex.size] += ex
            together[: ey.size] += ey
            check(file, compose.peak_normalize(together))
    quiet = synth.render_event("whistle", {"loudness": "quiet"}, 3, SR)
    loud = synth.render_event("whistle", {"loudness": "loud"}, 3, SR)
    assert 14 < 20 * np.log10(np.sqrt(np.mean(loud**2) / np.mean(quiet**2))) < 16


def test_held_apart_renderings(data):
    out, _ = data
    recs = [json.loads(line) for line in (out / "renderings.jsonl").read_text().splitlines()]
    seeds = {}
    for r in recs:
        seeds.setdefault(r["split"], set()).update(s for _, _, s in r["events"])
    assert set(seeds) == {"train", "order", "attribute", "retrieval"}
    for split in ("order", "attribute", "retrieval"):
        assert not seeds["train"] & seeds[split]
    digest = {s: set() for s in seeds}
    for r in recs:
        x, _ = sf.read(out / r["file"], dtype="int16")
        digest[r["split"]].add(hashlib.sha256(x.tobytes()).hexdigest())
    for split in ("order", "attribute", "retrieval"):
        assert not digest["train"] & digest[split]


def test_training_manifest_negatives_and_positives(data):
    out, _ = data
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(set(r) == {"audio", "caption", "positives", "negatives"} for r in rows)
    kinds = Counter()
    for r in rows:
        assert (out / r["audio"]).is_file() and sf.info(out / r["audio"]).frames == 3 * SR
        assert r["negatives"] and len(r["negatives"]) <= 4
        assert all(normalize(n) != normalize(r["caption"]) and n not in r["positives"] for n in r["negatives"])
        if any(w in r["caption"] for w in (" followed by ", " then ")):
            x, y = r["positives"]  # order clip: positives in time order; first negative swaps them
            swapped = r["caption"].replace(x, "\0").replace(y, x).replace("\0", y)
            assert r["negatives"][0] == swapped and sorted(r["caption"].split()) == sorted(swapped.split())
            assert r["caption"].startswith(x) and r["caption"].endswith(y)  # named in time order
            kinds["order"] += 1
        if " and a " in r["caption"]:  # attribute clip: first negative swaps the attributes
            neg = r["negatives"][0]
            assert Counter(neg.split()) == Counter(r["caption"].split()) and neg != r["caption"]
            assert r["positives"] == r["caption"].split(" and ")
            kinds["attribute"] += 1
    assert kinds["order"] >= 3 and kinds["attribute"] >= 3


def test_mix_selects_clip_types(tmp_path):
    synth.synthesize(tmp_path, n_train=6, n_order=0, n_attribute=0, n_retrieval=0, sample_rate=SR,
                     clip_seconds=2.5, mix={"attribute": 1.0})  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(" and a " in r["caption"] for r in rows)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mix"):
        synth.synthesize(tmp_path, mix={"chords": 1.0})
    with pytest.raises(ValueError, match="sample_rate"):
        synth.synthesize(tmp_path, sample_rate=8000)
    with pytest.raises(ValueError, match="clip_seconds"):
        synth.synthesize(tmp_path, clip_seconds=20)


def test_rerun_replaces_an_earlier_dataset_and_an_interrupted_one_leaves_it_intact(data, tmp_path, monkeypatch):
    out, _ = data
    small = dict(KW, n_train=2, n_order=0, n_attribute=0, n_retrieval=0)
    target = tmp_path / "d"
    synth.synthesize(target, seed=7, **small)
    before = files(target)
    calls = []

    def dies_on_the_second_clip(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write", dies_on_the_second_clip)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(target, seed=8, **small)
    assert files(target) == before  # the previous dataset, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder or lock left
    monkeypatch.undo()
    synth.synthesize(target, seed=8, **small)  # an earlier dataset is replaced whole
    assert files(target)["train.jsonl"] != before["train.jsonl"]


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files this command did not write"):
        synth.synthesize(tmp_path, n_train=1, n_order=0, n_attribute=0, n_retrieval=0, sample_rate=SR)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
