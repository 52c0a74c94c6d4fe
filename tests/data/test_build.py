"""`clapcomp data build`: every input format, the bad-input table, the error-rate stop, timeouts."""

import csv
import hashlib
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
import soundfile as sf

from clapcomp.data import build as build_mod
from clapcomp.data import items as items_mod
from clapcomp.data.build import BuildError, build, main
from clapcomp.data.items import BuildOptions
from clapcomp.data.records import RecordSource, decode_flac

SR = 16000


def sine(freq=440.0, seconds=0.25, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path, wave, sr=SR, fmt=None, subtype=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wave, sr, format=fmt, subtype=subtype)
    return path


def audio_bytes(wave, sr=SR, fmt="FLAC", subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def write_csv(path, rows, fields=("audio", "caption", "negatives", "positives")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def examples(out):
    src = RecordSource(str(out))
    return {e["key"]: e for e in (src.example(i) for i in range(len(src)))}


def test_manifest_csv_decodes_resamples_mixes_and_keeps_text(tmp_path):
    root = tmp_path / "in"
    stereo = np.stack([sine(300, sr=8000), -0.5 * sine(300, sr=8000)], axis=1)
    write_audio(str(root / "a" / "one.wav"), stereo, sr=8000)
    write_audio(str(root / "two.flac"), sine(1000, seconds=0.5))
    write_audio(str(root / "three.ogg"), sine(500, seconds=0.5), fmt="OGG", subtype="VORBIS")
    write_csv(
        root / "m.csv",
        [
            {"audio": "a/one.wav", "caption": "a tone", "negatives": '["a click"]', "positives": ""},
            {"audio": "two.flac", "caption": '["first", "second"]', "negatives": "", "positives": '["a high tone"]'},
            {"audio": "three.ogg", "caption": "  spaced   out  ", "negatives": "", "positives": ""},
        ],
    )
    stats = build(str(root / "m.csv"), str(tmp_path / "out"), sample_rate=SR, shard_size=2)
    assert (stats["seen"], stats["written"], stats["skipped"]) == (3, 3, 0)
    assert stats["shards"] == ["data-00000.array_record", "data-00001.array_record"]
    assert json.load(open(tmp_path / "out" / "stats.json"))["written"] == 3
    manifest = json.load(open(tmp_path / "out" / "sha256.json"))  # what a staged copy is checked against
    names = [*stats["shards"], "stats.json"]
    assert manifest["sha256"] == {n: hashlib.sha256((tmp_path / "out" / n).read_bytes()).hexdigest() for n in names}
    assert stats["total_duration_s"] == pytest.approx(0.25 + 0.5 + 0.5)
    ex = examples(tmp_path / "out")
    one = ex["a/one.wav"]
    assert (one["captions"], one["negatives"], one["positives"]) == (["a tone"], ["a click"], [])
    assert one["sample_rate"] == SR and one["num_samples"] == 4000
    # L = 0.5 sin, R = -0.25 sin: mono mix 0.125 sin, resampled 8 -> 16 kHz, vs the analytic sine.
    wave = decode_flac(one["audio"], one["num_samples"])
    ref = 0.125 * sine(300, sr=SR, amp=1.0)
    np.testing.assert_allclose(wave[200:-200], ref[200:-200], atol=2e-3)
    assert ex["two.flac"]["captions"] == ["first", "second"]
    assert ex["two.flac"]["positives"] == ["a high tone"]
    assert ex["three.ogg"]["captions"] == ["spaced out"]


def test_jsonl_manifest_and_compa_convention(tmp_path):
    write_audio(str(tmp_path / "x.wav"), sine())
    write_audio(str(tmp_path / "y.wav"), sine(880))
    with open(tmp_path / "m.jsonl", "w") as f:
        f.write(json.dumps({"audio": "x.wav", "caption": ["dog then cat"], "negatives": ["cat then dog"]}) + "\n")
        f.write("\n")
        f.write(json.dumps({"audio": "y.wav", "caption": "bird"}) + "\n")
    assert build(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), sample_rate=SR)["written"] == 2
    ex = examples(tmp_path / "out")
    assert ex["x.wav"]["negatives"] == ["cat then dog"] and ex["y.wav"]["captions"] == ["bird"]

    write_csv(
        tmp_path / "compa.csv",
        [{"audio": "x.wav", "caption": "dog then cat;cat then dog;dog and cat;cat"}],
        fields=("audio", "caption"),
    )
    build(str(tmp_path / "compa.csv"), str(tmp_path / "out2"), format="compa", sample_rate=SR)
    rec = examples(tmp_path / "out2")["x.wav"]
    assert rec["captions"] == ["dog then cat"]
    assert rec["negatives"] == ["cat then dog", "dog and cat", "cat"]


def _add(tar, name, data, **kw):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def test_webdataset_tar_in_memory_and_refuses_escaping_members(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000.tar", "w") as tar:
        _add(tar, "s/k1.flac", audio_bytes(sine()))
        _add(tar, "s/k1.json", json.dumps({"text": "a single caption"}).encode())
        _add(tar, "k2.wav", audio_bytes(sine(600), fmt="WAV"))
        _add(tar, "k2.json", json.dumps({"text": ["one", "two"]}).encode())
        _add(tar, "../evil.flac", audio_bytes(sine()))
        _add(tar, "/abs/evil.json", b"{}")
        _add(tar, "link.flac", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "k3.flac", audio_bytes(sine()))  # no caption json
    stats = build(str(shards), str(tmp_path / "out"), format="webdataset", sample_rate=SR)
    assert stats["written"] == 2
    assert stats["skipped_by_reason"] == {"unsafe_member": 3, "missing_caption": 1}
    ex = examples(tmp_path / "out")
    assert ex["000.tar/s/k1"]["captions"] == ["a single caption"]
    assert ex["000.tar/k2"]["captions"] == ["one", "two"]
    assert not (tmp_path / "evil.flac").exists() and not os.path.exists("/abs/evil.json")


def _bad_input_table(root):
    """(rows, expected skip counts, expected written keys): one row per bad-input case."""
    good = sine()
    write_audio(str(root / "good.wav"), good)
    write_audio(str(root / "eight.flac"), np.tile(good[:, None], (1, 8)) * np.linspace(0, 1, 8))
    (root / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(2000))
    wav = audio_bytes(sine(seconds=1.0), fmt="WAV")
    (root / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    flac = audio_bytes(np.random.default_rng(1).uniform(-0.5, 0.5, SR).astype(np.float32))
    (root / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "empty.wav").write_bytes(b"")
    write_audio(str(root / "silent.wav"), np.zeros(SR, np.float32))
    nan = good.copy()
    nan[7] = np.nan
    write_audio(str(root / "nan.wav"), nan, subtype="FLOAT")
    inf = good.copy()
    inf[9] = np.inf
    write_audio(str(root / "inf.wav"), inf, subtype="FLOAT")
    write_audio(str(root / "zero.wav"), np.zeros(0, np.float32))
    three_hours = bytearray(audio_bytes(good))  # FLAC STREAMINFO declaring 3 h of samples
    v = int.from_bytes(three_hours[18:26], "big")
    three_hours[18:26] = ((v >> 36 << 36) | (3 * 3600 * SR)).to_bytes(8, "big")
    (root / "three_hours.flac").write_bytes(bytes(three_hours))
    (root / "song.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))
    rate = bytearray(audio_bytes(good, fmt="WAV"))
    rate[24:28] = (1).to_bytes(4, "little")  # 1 Hz sample rate
    (root / "rate.wav").write_bytes(bytes(rate))
    write_audio(str(root / "many.wav"), np.zeros((100, 20), np.float32) + 0.1)
    (tmp_outside := root.parent / "outside.wav").write_bytes(audio_bytes(good, fmt="WAV"))
    rows = [
        ("good.wav", "a good clip", "", "good"),
        ("eight.flac", "eight channels mixed down", "", "good"),
        ("corrupt.flac", "c", "", "corrupt"),
        ("truncated.wav", "c", "", "truncated"),
        ("truncated.flac", "c", "", "truncated"),
        ("empty.wav", "c", "", "empty_file"),
        ("silent.wav", "c", "", "silent"),
        ("nan.wav", "c", "", "non_finite"),
        ("inf.wav", "c", "", "non_finite"),
        ("zero.wav", "c", "", "zero_length"),
        ("three_hours.flac", "c", "", "too_long"),
        ("song.m4a", "c", "", "unsupported_format"),
        ("rate.wav", "c", "", "bad_sample_rate"),
        ("many.wav", "c", "", "too_many_channels"),
        ("good.wav", "", "", "missing_caption"),
        ("good.wav", "   ", "", "missing_caption"),
        ("missing.wav", "c", "", "missing_file"),
        ("../outside.wav", "c", "", "path_escapes_root"),
        ("/etc/passwd", "c", "", "path_escapes_root"),
        ("good.wav", "c", "[not json", "bad_row"),
        ("good.wav", "x" * 3000, "", "caption_too_long"),
    ]
    with open(root / "m.csv", "wb") as f:
        f.write(b"audio,caption,negatives\n")
        for audio, cap, neg, _ in rows:
            f.write(f'{audio},"{cap}",{neg}\n'.encode())
        f.write(b'good.wav,"caf\xe9 latin-1 bytes",\n')  # non-UTF-8 text
    expected = {}
    for *_, reason in rows + [(None, None, None, "non_utf8_text")]:
        if reason != "good":
            expected[reason] = expected.get(reason, 0) + 1
    return expected, tmp_outside


def test_bad_input_table_each_reason_counted(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    expected, _ = _bad_input_table(root)
    stats = build(str(root / "m.csv"), str(tmp_path / "out"), sample_rate=SR)
    assert stats["skipped_by_reason"] == dict(sorted(expected.items()))
    assert stats["written"] == 2 and stats["seen"] == 2 + sum(expected.values())
    assert stats["stopped"] is None
    on_disk = json.load(open(tmp_path / "out" / "stats.json"))
    assert on_disk["skipped_by_reason"] == stats["skipped_by_reason"]
    assert set(on_disk["skipped_examples"]) == set(expected)
    assert on_disk["skipped_examples"]["missing_file"][0]["item"] == "m.csv:18"
    eight = examples(tmp_path / "out")["eight.flac"]
    mono = decode_flac(eight["audio"], eight["num_samples"])
    np.testing.assert_allclose(mono, sine() * np.linspace(0, 1, 8).mean(), atol=2.0**-14)


def test_allow_outside_root_flag(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    write_audio(str(tmp_path / "outside.wav"), sine())
    write_csv(root / "m.csv", [{"audio": "../outside.wav", "caption": "c"}], fields=("audio", "caption"))
    assert build(str(root / "m.csv"), str(tmp_path / "o1"), sample_rate=SR)["written"] == 0
    assert build(str(root / "m.csv"), str(tmp_path / "o2"), sample_rate=SR, allow_outside_root=True)["written"] == 1


def test_error_rate_stop_names_examples_and_keeps_shards(tmp_path):
    write_audio(str(tmp_path / "good.wav"), sine())
    rows = [{"audio": "good.wav", "caption": f"ok {i}"} for i in range(3)]
    rows += [{"audio": f"gone{i}.wav", "caption": "c"} for i in range(20)]
    write_csv(tmp_path / "m.csv", rows, fields=("audio", "caption"))
    with pytest.raises(BuildError) as e:
        build(
            str(tmp_path / "m.csv"),
            str(tmp_path / "out"),
            sample_rate=SR,
            shard_size=2,
            max_error_rate=0.3,
            min_items_for_rate=5,
        )
    msg = str(e.value)
    assert "stopped after 5 items" in msg and "missing_file: m.csv:5" in msg and "--max-error-rate" in msg
    src = RecordSource(str(tmp_path / "out"))
    assert sorted(src.example(i)["captions"][0] for i in range(len(src))) == ["ok 0", "ok 1", "ok 2"]
    assert json.load(open(tmp_path / "out" / "stats.json"))["stopped"] == msg


def test_per_item_timeout_skips_and_counts(tmp_path, monkeypatch):
    write_audio(str(tmp_path / "good.wav"), sine())
    write_csv(tmp_path / "m.csv", [{"audio": "good.wav", "caption": "c"}] * 2, fields=("audio", "caption"))
    monkeypatch.setattr(items_mod, "load_audio", lambda *a, **k: time.sleep(5))
    stats = build(str(tmp_path / "m.csv"), str(tmp_path / "out"), sample_rate=SR, timeout_s=0.05)
    assert stats["skipped_by_reason"] == {"timeout": 2}


def test_cli_main(tmp_path, capsys):
    write_audio(str(tmp_path / "good.wav"), sine())
    write_csv(tmp_path / "m.csv", [{"audio": "good.wav", "caption": "c"}], fields=("audio", "caption"))
    argv = ["--input", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--sample-rate", "16000"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 1
    assert main(argv) == 1  # shards exist already
    assert "empty directory" in capsys.readouterr().err
    write_csv(tmp_path / "bad.csv", [{"audio": "good.wav"}], fields=("audio",))
    assert main(["--input", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o2")]) == 1
    assert "needs 'audio' and 'caption' columns" in capsys.readouterr().err
    assert main(["--format", "tfds", "--out", str(tmp_path / "t")]) == 1
    assert "--tfds-name" in capsys.readouterr().err


def test_cli_defaults_are_build_defaults_and_flags_reach_build(tmp_path, monkeypatch, capsys):
    import collections
    import dataclasses

    calls = []

    def record(inputs, out_dir, options):
        calls.append((inputs, out_dir, dataclasses.asdict(options)))
        return collections.defaultdict(int)  # the stats main prints

    monkeypatch.setattr(build_mod, "build", record)
    main(["--out", "o"])
    main(["--input", "a.csv", "b.csv", "--out", "o", "--max-seconds", "30", "--timeout-s", "2", "--allow-outside-root"])
    defaults = {f.name: f.default for f in dataclasses.fields(BuildOptions)}
    assert calls[0] == ([], "o", defaults)
    assert calls[1] == (["a.csv", "b.csv"], "o", {**defaults, "max_seconds": 30.0, "timeout_s": 2.0,
                                                  "allow_outside_root": True})  # fmt: skip
    assert type(calls[1][2]["max_seconds"]) is float and type(calls[1][2]["timeout_s"]) is float
    # build's keywords are BuildOptions' fields over its defaults (or over given options); no other keyword
    with pytest.raises(TypeError, match="max_second"):
        build_mod.build([], str(tmp_path / "o"), max_second=3)


def test_fuzzed_files_never_crash_and_every_item_is_accounted_for(tmp_path):
    rng = np.random.default_rng(0)
    seeds = [
        audio_bytes(sine(300 + 10 * i, seconds=0.1), fmt=f, subtype=s)
        for i, (f, s) in enumerate([("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT"), ("OGG", "VORBIS")])
    ]
    rows = []
    for i in range(120):
        data = bytearray(seeds[i % 4])
        kind = i % 5
        if kind == 0:
            data = bytearray(rng.bytes(int(rng.integers(0, 3000))))
        elif kind == 1:
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:  # flip bytes in the header
            for j in rng.integers(0, min(64, len(data)), 4):
                data[j] = int(rng.integers(256))
        elif kind == 3:  # flip bytes anywhere
            for j in rng.integers(0, len(data), 16):
                data[j] = int(rng.integers(256))
        name = f"f{i}.{['wav', 'flac', 'ogg', 'mp3'][int(rng.integers(4))]}"
        (tmp_path / name).write_bytes(bytes(data))
        rows.append({"audio": name, "caption": ["", "ok", "x" * 5000, "a b"][i % 4]})
    write_csv(tmp_path / "m.csv", rows, fields=("audio", "caption"))
    stats = build(str(tmp_path / "m.csv"), str(tmp_path / "out"), sample_rate=SR, max_error_rate=1.0)
    assert stats["seen"] == 120 and stats["written"] + stats["skipped"] == 120
    assert "unexpected_error" not in stats["skipped_by_reason"]
    for rec in examples(tmp_path / "out").values():
        wave = decode_flac(rec["audio"], rec["num_samples"])
        assert rec["sample_rate"] == SR and np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_a_reader_failing_midway_is_counted_not_fatal(tmp_path, monkeypatch):
    write_audio(str(tmp_path / "good.wav"), sine())
    with open(tmp_path / "m.jsonl", "w") as f:
        f.write(json.dumps({"audio": "g\u0000.wav", "caption": "NUL in the path"}) + "\n")
        f.write(json.dumps({"audio": "good.wav", "caption": "ok"}) + "\n")
    real = items_mod.read_manifest

    def failing(path, **kw):
        yield from real(path, **kw)
        raise OSError("disk went away")

    monkeypatch.setattr(items_mod, "read_manifest", failing)
    stats = build(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), sample_rate=SR)
    assert stats["written"] == 1
    assert stats["skipped_by_reason"] == {"bad_row": 1, "unexpected_error": 1}
    assert "disk went away" in stats["skipped_examples"]["unexpected_error"][0]["detail"]


def test_contradictory_and_junk_negatives_are_counted_and_never_reach_a_record(tmp_path):
    root = tmp_path / "in"
    for i in range(7):
        write_audio(str(root / f"{i}.wav"), sine(300 + 100 * i))
    (root / "m.csv").write_text(
        "audio,caption,negatives,positives\n"
        '0.wav,A dog barks.,"[""a dog  barks"", ""a cat meows""]","[""a dog""]"\n'  # neg == caption: dropped
        '1.wav,a dog barks,"[""A DOG!""]","[""a dog""]"\n'  # neg == a positive: dropped
        "2.wav,a dog barks,dog; cat,\n"  # not a JSON list
        "3.wav,a dog barks,-7,\n"
        "4.wav,a dog barks,false,\n"
        "5.wav,a dog barks, then a cat meows,,\n"  # unquoted comma: extra field
        '6.wav,a bird sings,"[""a bird sings loudly""]",\n',  # clean row
        encoding="utf-8",
    )
    stats = build([str(root / "m.csv")], str(tmp_path / "out"), sample_rate=SR)
    assert stats["skipped_by_reason"] == {"bad_row": 4}
    details = " ".join(e["detail"] for e in stats["skipped_examples"]["bad_row"])
    assert (
        "'dog; cat'" in details
        and "'-7'" in details
        and "'false'" in details
        and "more field(s) than the header" in details
    )
    recs = examples(tmp_path / "out")
    assert sorted(recs) == ["0.wav", "1.wav", "6.wav"]
    assert recs["0.wav"]["negatives"] == ["a cat meows"] and recs["1.wav"]["negatives"] == []
    assert recs["6.wav"]["negatives"] == ["a bird sings loudly"]
    assert stats["negatives_dropped_equal_to_positive"] == 2
    assert stats["rows_with_negatives"] == 2 and stats["rows_with_positives"] == 2
    assert stats["negatives_per_row"] == {"0": 1, "1": 2}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["rows_with_negatives"] == 2


def test_jsonl_negatives_must_be_a_list_of_str(tmp_path):
    root = tmp_path / "in"
    write_audio(str(root / "a.wav"), sine())
    rows = [{"audio": "a.wav", "caption": "a tone", "negatives": v} for v in ("a click", -7, False, {"x": 1})]
    rows.append({"audio": "a.wav", "caption": "a tone", "negatives": ["a click"]})
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    stats = build([str(root / "m.jsonl")], str(tmp_path / "out"), sample_rate=SR)
    assert stats["skipped_by_reason"] == {"bad_row": 4} and stats["written"] == 1
    assert [r["negatives"] for r in examples(tmp_path / "out").values()] == [["a click"]]


def test_a_header_bomb_is_skipped_by_the_decode_budget(tmp_path):
    """The issue's FLAC: 8-channel 384 kHz audio whose header declares 600 s (6.9 GiB as float32)."""
    from test_decode import header_bomb  # tests/test_decode.py (pytest pythonpath = tests)

    (tmp_path / "bomb.flac").write_bytes(header_bomb())
    write_audio(str(tmp_path / "good.wav"), sine())
    write_csv(tmp_path / "m.csv", [{"audio": "bomb.flac", "caption": "b"}, {"audio": "good.wav", "caption": "g"}],
              fields=("audio", "caption"))  # fmt: skip
    stats = build(str(tmp_path / "m.csv"), str(tmp_path / "out"), sample_rate=SR)
    assert (stats["written"], stats["skipped_by_reason"]) == (1, {"decode_budget": 1})
    assert "6.9 GiB" in stats["skipped_examples"]["decode_budget"][0]["detail"]
    lifted = build(str(tmp_path / "m.csv"), str(tmp_path / "out2"), sample_rate=SR, max_decoded_samples=2**31)
    assert lifted["skipped_by_reason"] == {"truncated": 1}  # what main did: decode, then find it short


def test_a_second_build_into_a_folder_being_written_is_refused_naming_the_first(tmp_path, capsys):
    import os
    import socket

    from clapcomp import fs

    write_audio(str(tmp_path / "good.wav"), sine())
    write_csv(tmp_path / "m.csv", [{"audio": "good.wav", "caption": "c"}], fields=("audio", "caption"))
    out = tmp_path / "out"
    with fs.lock_folder(out, purpose="clapcomp data build"):  # the first build, still running
        assert main(["--input", str(tmp_path / "m.csv"), "--out", str(out), "--sample-rate", "16000"]) == 1
        err = capsys.readouterr().err
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in err and "one writer per folder" in err
        assert sorted(p.name for p in out.iterdir()) == [fs.LOCK_NAME]  # the refused build wrote nothing
    assert main(["--input", str(tmp_path / "m.csv"), "--out", str(out), "--sample-rate", "16000"]) == 0
    assert json.loads((out / "stats.json").read_text())["written"] == 1
    assert not (out / fs.LOCK_NAME).exists()  # released at the end


def test_out_that_is_an_input_manifest_is_refused(tmp_path, capsys):
    write_csv(tmp_path / "m.csv", [{"audio": "good.wav", "caption": "c"}], fields=("audio", "caption"))
    before = (tmp_path / "m.csv").read_bytes()
    assert main(["--input", str(tmp_path / "m.csv"), "--out", str(tmp_path / "m.csv")]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (tmp_path / "m.csv").read_bytes() == before


def test_a_build_into_a_gcs_folder_uploads_every_shard_and_nothing_lands_locally(tmp_path, gcs, monkeypatch):
    """`--out gs://...`: ArrayRecord writes local files only, so each shard is written to a temporary file and
    uploaded whole; the bucket then holds the same shards (byte for byte), stats counts and manifest as a
    local build of the same manifest, and no local folder named `gs:` appears."""
    from etils import epath

    monkeypatch.chdir(tmp_path)
    rows = []
    for i in range(5):
        write_audio(str(tmp_path / f"c{i}.wav"), sine(200 + 100 * i))
        rows.append(json.dumps({"audio": f"c{i}.wav", "caption": f"tone {i}"}))
    (tmp_path / "m.jsonl").write_text("\n".join(rows))
    url = f"gs://{gcs.bucket}/recs"
    local = build(str(tmp_path / "m.jsonl"), str(tmp_path / "local"), sample_rate=SR, shard_size=2)
    remote = build(str(tmp_path / "m.jsonl"), url, sample_rate=SR, shard_size=2)
    assert {k: v for k, v in remote.items() if k != "elapsed_s"} == {k: v for k, v in local.items() if k != "elapsed_s"}
    shards = sorted(p.name for p in (tmp_path / "local").glob("*.array_record"))
    assert len(shards) == 3 and sorted(p.name for p in epath.Path(url).iterdir()) == [
        *shards,
        "sha256.json",
        "stats.json",
    ]
    for name in shards:
        assert (epath.Path(url) / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    manifest = json.loads((epath.Path(url) / "sha256.json").read_text())["sha256"]
    assert all(manifest[n] == hashlib.sha256((tmp_path / "local" / n).read_bytes()).hexdigest() for n in shards)
    assert not (tmp_path / "gs:").exists()
