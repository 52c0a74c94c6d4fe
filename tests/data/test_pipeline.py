"""The grain pipeline: batch content vs direct decoding/tokenising, determinism (seed, workers,
restore), process sharding, bad records at read time, global arrays on an 8-device CPU mesh."""

import os

import numpy as np
import pytest
from pipeline_records import CLIP, WORDS, K, L, N, P, word_tokenizer  # tests/pipeline_records.py
from pipeline_records import record as _record

from clapcomp.data import pipeline
from clapcomp.data.negatives import NegativeGenerator
from clapcomp.data.options import DataConfig
from clapcomp.data.pipeline import DeviceIterator, make_dataset
from clapcomp.data.reasons import READ_REASONS
from clapcomp.data.records import RecordSource, decode_flac, encode_record, write_records
from clapcomp.data.tower_cache import TowerCache, TowerCacheMiss, waveform_digest
from clapcomp.data.transform import RecordTransform


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    write_records(str(out), (_record(i) for i in range(N)), shard_size=5)
    return RecordSource(str(out))


def _ds(source, tok, *, tower_cache=None, process_index=0, process_count=1, **options):
    defaults = dict(
        seed=7,
        batch_size=4,
        clip_samples=CLIP,
        num_negatives=K,
        sample_rate=16000,
        num_epochs=1,
        generate_negatives=False,
    )
    return make_dataset(
        source,
        DataConfig(**{**defaults, **options}),
        tokenizer=tok,
        tower_cache=tower_cache,
        process_index=process_index,
        process_count=process_count,
    )


def _record_ids(batch):
    return [WORDS[t].removeprefix("r") for t in batch["input_ids"][:, 1]]


def _texts(tok, texts, width):
    ids = np.zeros((width, L), np.int32)
    mask = np.zeros((width, L), np.int32)
    if texts:
        ids[: len(texts)], mask[: len(texts)] = tok(texts)
    return ids, mask


def _decode_texts(ids):
    return [" ".join(WORDS[t] for t in row if t) for row in ids]


def test_batches_match_direct_decoding_and_tokenising(source, tok):
    batches = list(_ds(source, tok, num_positives=P))
    assert len(batches) == N // 4
    for batch in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "waveform": ((4, CLIP), "float32"),
            "lengths": ((4,), "int32"),
            "input_ids": ((4, L), "int32"),
            "attention_mask": ((4, L), "int32"),
            "neg_input_ids": ((4, K, L), "int32"),
            "neg_attention_mask": ((4, K, L), "int32"),
            "neg_mask": ((4, K), "bool"),
            "pos_input_ids": ((4, P, L), "int32"),
            "pos_attention_mask": ((4, P, L), "int32"),
            "pos_mask": ((4, P), "bool"),
            "_skips": ((4, len(READ_REASONS)), "int32"),
        }
        assert not batch["_skips"].any()
        for b, rid in enumerate(_record_ids(batch)):
            rec = _record(int(rid))
            full = decode_flac(source.example(int(rid))["audio"])
            n = min(len(full), CLIP)
            assert batch["lengths"][b] == n
            wave = batch["waveform"][b]
            start = int(np.argmin(np.abs(full - wave[0])))  # the ramp is monotonic
            np.testing.assert_array_equal(wave[:n], full[start : start + n])
            assert not wave[n:].any()
            assert _decode_texts(batch["input_ids"][b : b + 1])[0] in rec["captions"]
            ids, mask = tok([_decode_texts(batch["input_ids"][b : b + 1])[0]])
            np.testing.assert_array_equal(batch["attention_mask"][b], mask[0])
            for prefix, pool, width in (("neg", rec["negatives"], K), ("pos", rec["positives"], P)):
                valid = batch[f"{prefix}_mask"][b]
                assert valid.tolist() == [j < min(len(pool), width) for j in range(width)]
                picked = _decode_texts(batch[f"{prefix}_input_ids"][b][valid])
                assert len(set(picked)) == len(picked) and set(picked) <= set(pool)
                ref_ids, ref_mask = _texts(tok, picked, width)
                np.testing.assert_array_equal(batch[f"{prefix}_input_ids"][b], ref_ids)
                np.testing.assert_array_equal(batch[f"{prefix}_attention_mask"][b], ref_mask)


def test_epoch_sees_every_record_once_and_processes_split_it(source, tok):
    one = [r for b in _ds(source, tok) for r in _record_ids(b)]
    assert sorted(one, key=int) == [str(i) for i in range(N)]
    per_host = [
        [r for b in _ds(source, tok, process_index=p, process_count=2) for r in _record_ids(b)] for p in range(2)
    ]
    assert all(len(h) == N // 2 for h in per_host)
    assert not set(per_host[0]) & set(per_host[1])
    assert sorted(per_host[0] + per_host[1], key=int) == [str(i) for i in range(N)]
    with pytest.raises(ValueError, match="not divisible"):
        _ds(source, tok, batch_size=5, process_count=2)


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_same_seed_same_batches_other_seed_other_order(source, tok):
    _assert_same(list(_ds(source, tok, num_epochs=2)), list(_ds(source, tok, num_epochs=2)))
    ids = [_record_ids(b) for b in _ds(source, tok)]
    assert ids != [_record_ids(b) for b in _ds(source, tok, seed=8)]
    epochs = [_record_ids(b) for b in _ds(source, tok, num_epochs=2)]
    assert epochs[:3] == ids and epochs[3:] != ids  # each epoch reshuffles


@pytest.fixture
def absl_flags_parsed():
    """grain's worker processes read absl flags; an application parses them (pipeline never does)."""
    from absl import flags

    was = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    yield
    if not was:
        flags.FLAGS.unparse_flags()


def test_workers_need_parsed_absl_flags_and_leave_them_alone(source, tok):
    from absl import flags

    if flags.FLAGS.is_parsed():
        flags.FLAGS.unparse_flags()
    with pytest.raises(RuntimeError, match="absl flags"):
        _ds(source, tok, workers=2)
    assert not flags.FLAGS.is_parsed()


def test_worker_count_does_not_change_batches(source, tok, absl_flags_parsed):
    _assert_same(list(_ds(source, tok, num_epochs=2)), list(_ds(source, tok, num_epochs=2, workers=2)))


def test_restore_mid_epoch_gives_the_same_remaining_batches(source, tok):
    it = iter(_ds(source, tok, num_epochs=3))
    for _ in range(4):
        next(it)
    state = it.get_state()
    rest = list(it)
    fresh = iter(_ds(source, tok, num_epochs=3))
    fresh.set_state(state)
    _assert_same(list(fresh), rest)


def test_orbax_checkpoint_of_the_device_iterator(source, tok, tmp_path):
    import grain
    import jax
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    it = DeviceIterator(_ds(source, tok, num_epochs=None), mesh)
    for _ in range(2):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it.grain_iterator)))
        mngr.wait_until_finished()
        expected = [next(it) for _ in range(3)]
        restored = DeviceIterator(_ds(source, tok, num_epochs=None), mesh)
        mngr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored.grain_iterator)))
    _assert_same(
        [{k: np.asarray(v) for k, v in b.items()} for b in expected],
        [{k: np.asarray(v) for k, v in next(restored).items()} for _ in range(3)],
    )


def test_pcm16_records_give_the_same_batches_as_flac(source, tok, tmp_path):
    write_records(str(tmp_path), (_record(i) for i in range(N)), audio_format="pcm16")
    pcm = RecordSource(str(tmp_path))
    for a, b in zip(_ds(source, tok), _ds(pcm, tok), strict=True):
        assert _record_ids(a) == _record_ids(b)
        np.testing.assert_array_equal(a["lengths"], b["lengths"])
        # both store the same 16-bit samples (written as libsndfile writes them), read back scaled by 2**-15
        np.testing.assert_array_equal(a["waveform"], b["waveform"])


def test_fused_mode_keeps_the_whole_clip_up_to_max_samples(source, tok):
    for batch in _ds(source, tok, fusion=True, max_samples=6000):
        assert batch["waveform"].shape == (4, 6000)
        for b, rid in enumerate(_record_ids(batch)):
            full = decode_flac(source.example(int(rid))["audio"])
            n = batch["lengths"][b]
            assert n == min(len(full), 6000)
            if len(full) <= 6000:
                np.testing.assert_array_equal(batch["waveform"][b, :n], full)


def test_tower_cache_rows_replace_the_waveforms(source, tok, tmp_path):
    """With a tower cache an example carries its decoded clip's row (`audio_pooled`) instead of the
    waveform, and the batches are otherwise those without it; a clip the cache lacks (here: records
    longer than the window, cropped at random) stops the pipeline instead of being replaced."""
    cache = TowerCache({"audio_tower": "test"})
    for i in range(N):
        cache.add(waveform_digest(decode_flac(source.example(i)["audio"])), np.full(3, i, np.float32))
    write_records(str(tmp_path), (_record(i) for i in range(4)))  # 2000..3500 samples <= CLIP
    short = RecordSource(str(tmp_path))
    plain, cached = (
        list(_ds(short, tok, batch_size=2)),
        list(_ds(short, tok, batch_size=2, tower_cache=cache)),
    )
    assert len(plain) == len(cached) == 2
    for a, b in zip(plain, cached, strict=True):
        assert set(a) - set(b) == {"waveform"} and set(b) - set(a) == {"audio_pooled"}
        for k in set(a) & set(b):
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(b["audio_pooled"], [[float(r)] * 3 for r in _record_ids(b)])
    with pytest.raises(TowerCacheMiss, match=r"record 'k\d+' \(4000 samples\) has no row"):
        list(_ds(source, tok, tower_cache=cache))


def test_generated_negatives_when_the_record_has_none(tmp_path, tok):
    caption = "a dog barks then a man speaks"
    write_records(
        str(tmp_path),
        [{"key": "x", "audio": np.full(3000, 0.1, np.float32), "sample_rate": 16000, "captions": [caption]}],
    )
    (batch,) = list(_ds(RecordSource(str(tmp_path)), tok, batch_size=1, generate_negatives=True))
    expected = NegativeGenerator(7).generate(caption, K)
    assert expected and caption not in expected
    ref_ids, _ = _texts(tok, expected, K)
    np.testing.assert_array_equal(batch["neg_input_ids"][0], ref_ids)
    assert batch["neg_mask"][0].tolist() == [j < len(expected) for j in range(K)]
    (plain,) = list(_ds(RecordSource(str(tmp_path)), tok, batch_size=1))
    assert not plain["neg_mask"].any() and not plain["neg_input_ids"].any()


def _bad_shard(path):
    from array_record.python.array_record_module import ArrayRecordWriter

    w = ArrayRecordWriter(str(path), "group_size:1")
    w.write(b"junk, not a record")
    w.write(
        encode_record(
            {"key": "c", "audio": b"fLaC garbage", "num_samples": 100, "sample_rate": 16000, "captions": ["x"]}
        )
    )
    w.write(encode_record({"key": "e", "audio": np.full(100, 0.1, np.float32), "sample_rate": 16000, "captions": []}))
    w.write(
        encode_record({"key": "t", "audio": b"x", "num_samples": 16000 * 3600, "sample_rate": 16000, "captions": ["x"]})
    )
    w.close()


def test_bad_records_are_replaced_and_counted(source, tok, tmp_path):
    _bad_shard(tmp_path / "bad.array_record")
    mixed = RecordSource(source.paths + [str(tmp_path / "bad.array_record")])
    assert len(mixed) == N + 4
    batches = list(_ds(mixed, tok, batch_size=2, num_epochs=3))
    assert len(batches) == 3 * (N + 4) // 2
    # Every output comes from a good record; each bad draw is counted by its reason.
    assert all(int(r) < N for b in batches for r in _record_ids(b))
    skips = dict(zip(READ_REASONS, sum(b["_skips"].sum(0) for b in batches).tolist(), strict=True))
    assert {r for r, n in skips.items() if n} == {"bad_record", "corrupt", "missing_caption", "too_long"}
    assert all(skips[r] >= 3 for r in ("bad_record", "corrupt", "missing_caption", "too_long"))


def test_stuck_decoding_times_out_then_stops_with_a_clear_error(source, tok, monkeypatch):
    import time

    monkeypatch.setattr("clapcomp.data.transform.decode_flac", lambda *a: time.sleep(5))  # FLAC at the model rate
    with pytest.raises(RuntimeError, match=r"bad records in a row.*'timeout': 17"):
        next(iter(_ds(source, tok, decode_timeout_s=0.01)))


def test_device_iterator_places_global_arrays_on_the_mesh(source, tok):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    ref = next(iter(_ds(source, tok, batch_size=8, num_positives=P)))
    for shape, axes in (((8,), ("data",)), ((4, 2), ("data", "fsdp"))):
        mesh = Mesh(np.array(jax.devices()).reshape(shape), axes)
        it = DeviceIterator(_ds(source, tok, batch_size=8, num_positives=P), mesh, batch_axes=axes)
        batch = next(it)
        assert set(batch) == set(ref) - {"_skips"}
        for k, v in batch.items():
            assert isinstance(v, jax.Array) and v.shape == ref[k].shape and v.dtype == ref[k].dtype
            assert v.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(axes)), v.ndim)
            assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1
            np.testing.assert_array_equal(np.asarray(v), ref[k])
        assert it.metrics == {"examples": 8, "skipped": dict.fromkeys(READ_REASONS, 0)}


def test_device_iterator_stops_past_the_error_rate(tok, tmp_path):
    import jax
    from jax.sharding import Mesh

    write_records(str(tmp_path / "good"), [_record(0)])
    _bad_shard(tmp_path / "bad.array_record")
    src = RecordSource([str(tmp_path / "good" / "data-00000.array_record"), str(tmp_path / "bad.array_record")])
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    it = DeviceIterator(_ds(src, tok, batch_size=1, num_epochs=None), mesh, max_error_rate=0.5, min_examples_for_rate=4)
    with pytest.raises(RuntimeError, match="max_error_rate=0.5"):
        for _ in range(20):
            next(it)


def test_fuzzed_records_are_decoded_or_counted_never_fatal(source, tok):
    good = [source[i] for i in range(N)]
    options = DataConfig(batch_size=1, clip_samples=CLIP, sample_rate=16000, num_negatives=K)
    transform = RecordTransform(good, options, tokenizer=tok)
    rng = np.random.default_rng(0)
    skipped = 0
    for i in range(100):
        rec = bytearray(good[i % N])
        cut = int(rng.integers(len(rec)))
        if i % 3 == 0:
            rec = rec[:cut]  # truncated record
        else:  # random bytes in the header (i % 3 == 1) or anywhere
            hi = 200 if i % 3 == 1 else len(rec)
            for j in rng.integers(0, min(hi, len(rec)), 4):
                rec[j] = int(rng.integers(256))
        out = transform(bytes(rec), np.random.default_rng(i))
        assert out["waveform"].shape == (CLIP,) and out["input_ids"].shape == (L,)
        skipped += int(out["_skips"].sum())
    assert skipped > 50  # most mutations are caught (some flip bytes a decoder cannot notice)


@pytest.fixture(scope="module")
def other_source(tmp_path_factory):
    """A second source: 5 records whose captions ("a dog barks") no record of `source` has."""
    out = tmp_path_factory.mktemp("other")
    records = [{**_record(i), "key": f"o{i}", "captions": [f"a dog barks r{i}"]} for i in range(5)]
    write_records(str(out), records, shard_size=5)
    return RecordSource(str(out))


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_mixture_draws_by_weight_from_each_shuffled_repeated_source(source, other_source, tok):
    mix = {"a": source, "b": other_source}
    batches = _take(_ds(mix, tok, num_epochs=None, weights=(3.0, 1.0)), 24)  # 96 examples
    which = np.concatenate([b["_source"] for b in batches])
    first_word = np.concatenate([b["input_ids"][:, 0] for b in batches])
    assert set(first_word[which == 0]) == {WORDS.index("record")}  # each example comes from its own source
    assert set(first_word[which == 1]) == {WORDS.index("a")}
    assert abs(np.mean(which == 0) - 0.75) <= 0.075  # 3:1 within 10%
    second_word = np.concatenate([b["input_ids"][:, 1] for b in batches])
    a_ids = np.array([int(WORDS[t].removeprefix("r")) for t in second_word[which == 0]])
    assert sorted(a_ids[:N]) == list(range(N)) and sorted(a_ids[N : 2 * N]) == list(range(N))  # epochs
    assert a_ids[:N].tolist() != a_ids[N : 2 * N].tolist()  # reshuffled each epoch
    again = _take(_ds(mix, tok, num_epochs=None, weights=(3.0, 1.0)), 24)
    _assert_same(batches, again)  # deterministic


def test_mixture_restores_mid_stream_and_one_source_is_todays_pipeline(source, other_source, tok):
    mix = {"a": source, "b": other_source}
    it = iter(_ds(mix, tok, num_epochs=None, weights=(2.0, 1.0)))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = iter(_ds(mix, tok, num_epochs=None, weights=(2.0, 1.0)))
    fresh.set_state(state)
    _assert_same(expected, [next(fresh) for _ in range(4)])
    # a one-source dict, with or without a weight, is the plain source: the same batches, no _source field
    _assert_same(list(_ds(source, tok, num_epochs=2)), list(_ds({"a": source}, tok, num_epochs=2, weights=(3.0,))))


def test_device_iterator_counts_samples_and_skips_per_source(source, other_source, tok, tmp_path):
    import jax
    from array_record.python.array_record_module import ArrayRecordWriter
    from jax.sharding import Mesh

    bad_dir = tmp_path / "bad"
    write_records(str(bad_dir), (_record(i) for i in range(3)), shard_size=5)
    w = ArrayRecordWriter(str(bad_dir / "data-99999.array_record"), "group_size:1")
    for i in range(3):
        w.write(b"junk %d" % i)
    w.close()
    mix = {"a": other_source, "bad": RecordSource(str(bad_dir))}
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    ds = _ds(mix, tok, num_epochs=None, weights=(1.0, 1.0))
    it = DeviceIterator(ds, mesh, source_names=("a", "bad"), max_error_rate=1.0)
    batches = [next(it) for _ in range(6)]
    assert all("_source" not in b for b in batches)
    ref = _take(ds, 6)  # the same batches, with their _source / _skips fields
    which, skips = np.concatenate([b["_source"] for b in ref]), np.concatenate([b["_skips"] for b in ref])
    totals = it.source_totals()
    assert totals["source/a/samples"] == np.sum(which == 0) == 12 and totals["source/bad/samples"] == 12
    assert totals["source/a/skipped"] == 0
    assert totals["source/bad/skipped"] == skips[which == 1].sum() == it.skip_totals()["bad_record"] > 0
    it.restore_skips({"bad_record": 2, "source/bad/skipped": 2, "source/a/samples": 100})
    assert (
        it.source_totals()["source/a/samples"] == 112
        and it.source_totals()["source/bad/skipped"] == totals["source/bad/skipped"] + 2
    )


# ----------------------------------------------------------------------------- what the model sees


def test_int16_batches_refuse_records_at_another_rate(tok, tmp_path):
    """int16 batches carry the records' own samples: a record that would need resampling is a bad record."""
    write_records(str(tmp_path), (dict(_record(i), sample_rate=8000) for i in range(4)), audio_format="pcm16")
    with pytest.raises(RuntimeError, match=r"bad records in a row.*'bad_record': 17"):
        next(iter(_ds(RecordSource(str(tmp_path)), tok, pcm16_batches=True)))


def _reference_example(record, rng, *, tok, clip, k, p, generator):
    """The per-record algorithm of 2026-12-07 (c4af60a): decode the whole clip to float32 (x / 32768 for
    pcm16), crop, copy into a zero buffer, tokenise caption + negatives + positives of this record alone."""
    import io

    import soundfile as sf
    import soxr

    from clapcomp.data.records import parse_record

    rec = parse_record(record)
    if rec["audio_format"] == "pcm16":
        wave = np.frombuffer(rec["audio"], "<i2").astype(np.float32) / 32768.0
    else:
        wave = sf.read(io.BytesIO(rec["audio"]), dtype="float32")[0]
    if rec["sample_rate"] != 16000:
        wave = soxr.resample(wave, rec["sample_rate"], 16000).astype(np.float32)
    if wave.shape[0] > clip:
        start = int(rng.integers(wave.shape[0] - clip + 1))
        wave = wave[start : start + clip]
    out = {"waveform": np.zeros(clip, np.float32), "lengths": np.int32(wave.shape[0])}
    out["waveform"][: wave.shape[0]] = wave
    caption = rec["captions"][int(rng.integers(len(rec["captions"])))]

    def pick(texts, n):
        return list(texts) if len(texts) <= n else [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]

    negatives = pick(rec["negatives"], k) or generator.generate(caption, k)
    positives = pick(rec["positives"], p)
    out["input_ids"], out["attention_mask"] = (x[0] for x in tok([caption]))
    for prefix, texts, width in (("neg", negatives, k), ("pos", positives, p)):
        out[f"{prefix}_input_ids"], out[f"{prefix}_attention_mask"] = _texts(tok, texts, width)
        out[f"{prefix}_mask"] = np.arange(width) < len(texts)
    return out


@pytest.mark.parametrize(
    "audio_format, rate, pcm16_batches",
    [("pcm16", 16000, False), ("flac", 16000, False), ("pcm16", 8000, False), ("pcm16", 16000, True),
     ("flac", 16000, True)],
)  # fmt: skip
def test_batches_are_bitwise_those_of_the_per_record_algorithm(tok, tmp_path, audio_format, rate, pcm16_batches):
    """With `pcm16_batches` the batch's waveform is int16 and the model's float32 is what the train step
    computes from it on the device (`clapcomp.train.step.waveform`, jitted): that is compared."""
    import grain
    import jax

    from clapcomp.train import step as step_lib

    rng = np.random.default_rng(3)
    records = [
        {**_record(i), "audio": rng.uniform(-1, 1, 1500 + 700 * i).astype(np.float32), "sample_rate": rate}
        for i in range(N)
    ]
    for r in records[::2]:
        r["negatives"] = []  # generated
    write_records(str(tmp_path), records, shard_size=5, audio_format=audio_format)
    src = RecordSource(str(tmp_path))
    options = dict(seed=5, batch_size=4, num_epochs=2, num_positives=P, generate_negatives=True)
    got = list(_ds(src, tok, pcm16_batches=pcm16_batches, **options))
    if pcm16_batches:
        on_device = jax.jit(step_lib.waveform)
        assert all(b["waveform"].dtype == np.int16 for b in got)
        got = [{**b, "waveform": np.asarray(on_device(b))} for b in got]
    generator = NegativeGenerator(5)

    def reference(record, r):
        return _reference_example(record, r, tok=tok, clip=CLIP, k=K, p=P, generator=generator)

    ref = grain.MapDataset.source(src).seed(5).shuffle().repeat(2).random_map(reference).batch(4, drop_remainder=True)
    expected = list(ref.to_iter_dataset())
    assert len(got) == len(expected) == 2 * N // 4
    for g, e in zip(got, expected, strict=True):
        assert set(g) - {"_skips"} == set(e)
        for key in e:
            assert g[key].dtype == e[key].dtype and g[key].shape == e[key].shape, key
            assert g[key].tobytes() == e[key].tobytes(), key
    assert any((b["lengths"] < CLIP).any() for b in got) and any((b["lengths"] == CLIP).any() for b in got)


def test_serial_tokenizers_sets_the_default_and_leaves_a_users_choice(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    pipeline.serial_tokenizers()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    pipeline.serial_tokenizers()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
