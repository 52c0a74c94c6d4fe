"""`clapcomp data build --runner beam` (2 DirectRunner processes) against the one-process build of the same
manifest of good clips, corrupt and truncated files, bad rows and contradictory negatives: the same record
set and the same stats.json counts; the folder lock both runners take. Needs the `beam` extra (in the test
environment; skipped without apache_beam)."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("apache_beam")

from clapcomp import fs
from clapcomp.data import beam as beam_mod
from clapcomp.data.build import build, main
from clapcomp.data.records import parse_record, shard_paths

SR = 16000
COUNTED = ("seen", "written", "skipped", "skipped_by_reason", "rows_with_negatives", "rows_with_positives",
           "negatives_per_row", "negatives_dropped_equal_to_positive")  # fmt: skip


def _manifest(root):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):  # good clips of different lengths and rates, some with (partly contradictory) negatives
        rate = SR if i % 3 else 22050
        sf.write(root / f"good{i}.flac", 0.3 * rng.standard_normal(rate // 4 + 97 * i), rate, subtype="PCM_16")
        negatives = [] if i % 2 else [f"clip {i} then silence", f"clip {i}"]  # the second equals the caption
        rows.append({"audio": f"good{i}.flac", "caption": f"clip {i}", "negatives": negatives})
    (root / "corrupt.flac").write_bytes(b"fLaC" + bytes(200))
    sf.write(root / "short.wav", 0.3 * rng.standard_normal(4000), SR)
    (root / "truncated.wav").write_bytes((root / "short.wav").read_bytes()[:3000])
    rows += [
        {"audio": "corrupt.flac", "caption": "c"},
        {"audio": "truncated.wav", "caption": "t"},
        {"audio": "missing.wav", "caption": "m"},
        {"audio": "good0.flac", "caption": ""},
        {"audio": "good1.flac", "caption": "n", "negatives": "not a list"},
        {"audio": "../outside.wav", "caption": "o"},
    ]
    (root / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:14]) + "\n")
    (root / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[14:]) + "\n{not json\n")
    return root  # two manifests


def _records(out):
    from array_record.python.array_record_module import ArrayRecordReader

    recs = []
    for path in shard_paths(str(out)):
        reader = ArrayRecordReader(path)
        recs += [parse_record(r) for r in reader.read_all()]
        reader.close()
    return sorted((r["key"], tuple(r["captions"]), tuple(r["negatives"]), tuple(r["positives"]), r["sample_rate"],
                   r["num_samples"], r["audio"]) for r in recs)  # fmt: skip


@pytest.mark.slow  # two Beam worker processes (~10-20 s here)
def test_beam_build_with_two_workers_equals_the_local_build_and_holds_the_folder_lock(tmp_path, monkeypatch):
    root = tmp_path / "in"
    root.mkdir()
    common = ["--input", str(_manifest(root)), "--format", "manifest", "--sample-rate", str(SR)]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0

    refused = []

    def finish(out_dir, *a, **kw):  # the pipeline has run, stats.json is next: the folder is still locked
        with pytest.raises(fs.LockHeld, match="--runner beam"):
            build(str(root / "a.jsonl"), out_dir, sample_rate=SR)
        refused.append(out_dir)
        return real_finish(out_dir, *a, **kw)

    real_finish = beam_mod.finish
    monkeypatch.setattr(beam_mod, "finish", finish)
    beam_out = tmp_path / "beam"
    assert main([*common, "--out", str(beam_out), "--runner", "beam", "--workers", "2", "--num-shards", "3"]) == 0
    assert refused == [str(beam_out)] and not (beam_out / fs.LOCK_NAME).exists()  # released at the end
    local, beam = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("local", "beam"))
    assert {k: local[k] for k in COUNTED} == {k: beam[k] for k in COUNTED}
    assert local["written"] == 24 and local["negatives_dropped_equal_to_positive"] == 12
    assert set(local["skipped_by_reason"]) >= {"corrupt", "truncated", "missing_file", "missing_caption", "bad_row"}
    assert beam["total_duration_s"] == pytest.approx(local["total_duration_s"], rel=1e-12)
    assert len(beam["shards"]) == 3 and beam["runner"] == "beam"
    assert _records(tmp_path / "local") == _records(tmp_path / "beam")


def test_beam_build_refuses_a_second_writer_of_the_folder(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "caption": "a"}) + "\n")
    out = tmp_path / "out"
    with fs.lock_folder(out, purpose="another build"):  # a writer already at work in the folder
        assert main(["--input", str(tmp_path / "m.jsonl"), "--out", str(out), "--runner", "beam"]) == 1
    err = capsys.readouterr().err
    assert "one writer per folder" in err and "another build" in err
    assert os.listdir(out) == []  # refused before the pipeline started: nothing written, the lock released
