"""Records on GCS (the local emulator): staged to local disk, checked against the build's manifest, reused on a
restart, and read by the pipeline bit for bit as the local folder they were uploaded from."""

import logging
import os
import threading
import time
import types

import numpy as np
import pytest
from etils import epath

from clapcomp import fs
from clapcomp.data import stage
from clapcomp.data.options import DataConfig, mixture
from clapcomp.data.pipeline import make_dataset
from clapcomp.data.records import RecordSource, write_records
from clapcomp.tokenizer import Tokenizer

N = 7  # records in 3 shards (3 + 3 + 1)


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    words = ["<pad>", "<unk>", "clip", "other", "neg", *[f"w{i}" for i in range(N)]]
    t = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(t, max_length=6)


def _records(folder, word, n=N):
    """A record folder as `clapcomp data build` leaves it: shards, stats.json, sha256.json."""
    rng = np.random.default_rng(len(word))
    examples = [
        {"key": f"{word}{i}", "audio": rng.uniform(-0.5, 0.5, 900 + 150 * i).astype(np.float32), "sample_rate": 16000,
         "captions": [f"{word} w{i}", f"w{i} {word}"], "negatives": [f"neg w{(i + 1) % n}"]}
        for i in range(n)
    ]  # fmt: skip
    write_records(str(folder), examples, shard_size=3, audio_format="pcm16")
    fs.write_json(folder / "stats.json", {"sample_rate": 16000, "written": n})
    fs.write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return _records(tmp_path_factory.mktemp("src") / "recs", "clip")


def _upload(folder, url):
    for p in sorted(folder.iterdir()):
        (epath.Path(url) / p.name).write_bytes(p.read_bytes())
    return url


def _batches(source, tok, n=3, **options):
    opts = dict(batch_size=4, clip_samples=1000, sample_rate=16000, num_negatives=1, seed=3, **options)
    it = iter(make_dataset(source, DataConfig(**opts), tokenizer=tok, process_index=0, process_count=1))
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


def test_staged_source_reads_bitwise_as_the_local_one_and_a_mixture_mixes_both(gcs, local, tok, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(stage.STAGE_DIR_ENV, str(tmp_path / "cache"))
    url = _upload(local, f"gs://{gcs.bucket}/data/recs")
    [(staged, weight)] = mixture(url)
    assert weight == 1.0 and staged.startswith(str(tmp_path / "cache" / gcs.bucket)) and staged.endswith("/recs")
    names = sorted(p.name for p in local.glob("*.array_record"))
    assert len(names) == 3 and sorted(p.name for p in epath.Path(staged).glob("*.array_record")) == names
    for name in [*names, "stats.json"]:
        assert (epath.Path(staged) / name).read_bytes() == (local / name).read_bytes()
    _assert_same(_batches(RecordSource(staged), tok, num_epochs=None), _batches(RecordSource(str(local)), tok,
                                                                                 num_epochs=None))  # fmt: skip
    assert mixture(url) == [(staged, 1.0)]  # staged once per process

    # a gs:// source beside a local one: the same mixture as both local
    other = _records(tmp_path / "src2" / "other", "other", n=4)
    (gcs_mix, _), (local_mix, _) = mixture(f"{url},{other}", "3,1")
    assert (gcs_mix, local_mix) == (staged, str(other))
    mixed = {"recs": RecordSource(gcs_mix), "other": RecordSource(local_mix)}
    reference = {"recs": RecordSource(str(local)), "other": RecordSource(str(other))}
    got = _batches(mixed, tok, n=4, weights=(3.0, 1.0))
    assert set(np.concatenate([b["_source"] for b in got]).tolist()) == {0, 1}
    _assert_same(got, _batches(reference, tok, n=4, weights=(3.0, 1.0)))
    assert not (tmp_path / "gs:").exists()


def test_restart_reuses_the_copy_and_a_corrupt_copy_is_fetched_again(gcs, local, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="clapcomp.data.stage")
    url = _upload(local, f"gs://{gcs.bucket}/recs")
    held = fs.lock_folder(stage.staged_folder(url, tmp_path), purpose="another process staging")
    monkeypatch.setattr(stage, "WAIT_S", 0.05)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(first=stage.stage(url, tmp_path)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not list(held.path.parent.glob("*.array_record"))  # waits for the holder
    held.release()
    waiter.join(60)
    first = result["first"]
    assert (first.fetched, first.reused) == (4, 0)  # 3 shards + stats.json
    assert first.bytes_fetched == sum((local / n).stat().st_size for n in os.listdir(first.path) if n[0] != ".")
    again = stage.stage(url, tmp_path)
    assert (again.path, again.fetched, again.reused, again.bytes_fetched) == (first.path, 0, 4, 0)

    staged = epath.Path(first.path)
    shards = sorted(staged.glob("*.array_record"))
    flipped = bytearray(shards[0].read_bytes())  # a bit flipped, same size
    flipped[100] ^= 1
    shards[0].write_bytes(bytes(flipped))
    shards[1].write_bytes(shards[1].read_bytes()[:50])  # a partial copy
    (staged / "data-00009.array_record").write_bytes(b"from an older build")
    monkeypatch.setattr(stage, "PROGRESS_S", 0.0)  # a progress line per file
    repaired = stage.stage(url, tmp_path)
    assert (repaired.fetched, repaired.reused) == (2, 2)
    assert sorted(p.name for p in staged.glob("*.array_record")) == sorted(p.name for p in local.glob("*.array_record"))
    for p in shards:
        assert p.read_bytes() == (local / p.name).read_bytes()
    assert sum("differs from the build's manifest" in r.message for r in caplog.records) == 2
    lines = [r.message for r in caplog.records if r.message.startswith(("staging gs://", "staged gs://"))]
    assert lines[-3:-1] == [
        f"staging {url}: 1 of 2 files fetched, 0.00 of 0.00 GB staged",
        f"staging {url}: 2 of 2 files fetched, 0.00 of 0.00 GB staged",
    ]
    assert f"staged {url} -> {first.path}: 4 files (2 fetched" in lines[-1] and "2 reused" in lines[-1]


def test_bad_buckets_are_clear_errors_naming_the_file(gcs, local, tmp_path, monkeypatch):
    bucket = epath.Path(f"gs://{gcs.bucket}")
    url = _upload(local, f"gs://{gcs.bucket}/recs")
    with monkeypatch.context() as m:
        m.setattr(stage.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
        with pytest.raises(OSError, match=r"staging gs://bkt/recs needs .* point \$CLAPCOMP_STAGE_DIR at a bigger"):
            stage.stage(url, tmp_path)
    (bucket / "recs" / "data-00001.array_record").unlink()
    with pytest.raises(FileNotFoundError, match=r"gs://bkt/recs/data-00001\.array_record is listed .* missing"):
        stage.stage(url, tmp_path)

    url = _upload(local, f"gs://{gcs.bucket}/bad")
    (bucket / "bad" / "data-00002.array_record").write_bytes(b"not the built bytes")
    with pytest.raises(fs.CorruptFile, match=r"gs://bkt/bad/data-00002\.array_record has 19 bytes .* upload it again"):
        stage.stage(url, tmp_path)
    assert not list((tmp_path / gcs.bucket).rglob("data-00002.array_record*"))  # nothing half-written kept

    url = _upload(local, f"gs://{gcs.bucket}/nomanifest")
    (bucket / "nomanifest" / fs.MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match=r"nomanifest/sha256\.json not found"):
        stage.stage(url, tmp_path)

    url = _upload(local, f"gs://{gcs.bucket}/extra")
    (bucket / "extra" / "data-00007.array_record").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"extra/data-00007\.array_record is not in the build's sha256\.json"):
        stage.stage(url, tmp_path)


def test_a_local_source_is_read_where_it_is_and_the_cache_keeps_the_basename(tmp_path, monkeypatch):
    assert stage.local_records("/data/recs") == "/data/recs"
    monkeypatch.setenv(stage.STAGE_DIR_ENV, str(tmp_path))
    folder = stage.staged_folder("gs://b/x/recs/", stage.stage_root())
    assert folder.parent.parent == tmp_path / "b" and folder.name == "recs"
    assert folder != stage.staged_folder("gs://b/y/recs", stage.stage_root())  # same basename, other URL
    with pytest.raises(ValueError, match="name a folder inside the bucket"):
        stage.staged_folder("gs://b", tmp_path)
