"""The record schema: byte layout (no pickle), FLAC round trip, atomic shards, grain source."""

import glob
import io
import json
import os
import pickle
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from clapcomp.data import records
from clapcomp.data.reasons import BadData
from clapcomp.data.records import (
    MAGIC,
    RecordSource,
    ShardWriter,
    call_with_timeout,
    decode_flac,
    encode_record,
    parse_record,
    write_records,
)


def _example(i, n=1600, sr=16000):
    t = np.arange(n) / sr
    return {
        "key": f"clip{i}",
        "audio": (0.5 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32),
        "sample_rate": sr,
        "captions": [f"caption {i}", "ünïcode ✓"],
        "negatives": [f"neg {i}"],
        "positives": [],
    }


def test_record_layout_is_magic_json_header_and_flac():
    ex = _example(3)
    data = encode_record(ex)
    # Independent parse with struct + json + soundfile: no pickle anywhere.
    assert data[:8] == MAGIC
    (size,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12 : 12 + size].decode("utf-8"))
    assert header == {
        "key": "clip3",
        "sample_rate": 16000,
        "num_samples": 1600,
        "audio_format": "flac",
        "captions": ["caption 3", "ünïcode ✓"],
        "negatives": ["neg 3"],
        "positives": [],
    }
    info = sf.info(io.BytesIO(data[12 + size :]))
    assert (info.format, info.subtype, info.channels, info.samplerate, info.frames) == (
        "FLAC",
        "PCM_16",
        1,
        16000,
        1600,
    )


def test_flac_round_trip_is_16_bit_exact():
    ex = _example(1)
    rec = parse_record(encode_record(ex))
    wave = decode_flac(rec["audio"], rec["num_samples"])
    assert wave.dtype == np.float32 and wave.shape == (1600,)
    # 16-bit quantisation: error at most one step of 2**-15.
    np.testing.assert_allclose(wave, ex["audio"], atol=2.0**-15)


def test_bad_bytes_raise_record_error_with_reason():
    with pytest.raises(BadData) as e:
        parse_record(b"junk")
    assert e.value.reason == "bad_record"
    bad_header = MAGIC + struct.pack("<I", 5) + b"{nope"
    with pytest.raises(BadData, match="bad_record"):
        parse_record(bad_header)
    rec = parse_record(encode_record({**_example(0), "audio": b"not flac", "num_samples": 10}))
    with pytest.raises(BadData) as e:
        decode_flac(rec["audio"], 10)
    assert e.value.reason == "corrupt"
    good = parse_record(encode_record(_example(0)))
    with pytest.raises(BadData) as e:
        decode_flac(good["audio"], 9999)
    assert e.value.reason == "truncated"
    # FLAC bytes declaring more audio than the record's num_samples: refused from the FLAC header,
    # before a sample is decoded (the record header alone would let a bomb through)
    with pytest.raises(BadData, match=r"decode_budget: 1600 frames x 1 channels") as e:
        decode_flac(good["audio"], 10)
    assert e.value.reason == "truncated"


def test_write_records_shards_and_source(tmp_path):
    stats = write_records(str(tmp_path), (_example(i) for i in range(7)), shard_size=3)
    assert stats["num_records"] == 7
    assert [os.path.basename(p) for p in stats["shards"]] == [
        "data-00000.array_record",
        "data-00001.array_record",
        "data-00002.array_record",
    ]
    source = RecordSource(str(tmp_path))
    assert len(source) == 7
    assert [source.example(i)["key"] for i in range(7)] == [f"clip{i}" for i in range(7)]
    assert isinstance(source[0], bytes)
    clone = pickle.loads(pickle.dumps(source))  # grain workers receive the source pickled
    assert clone[5] == source[5]
    assert len(RecordSource(stats["shards"][:2])) == 6


def test_shard_writer_keeps_finished_records_when_the_producer_dies(tmp_path):
    def producer():
        for i in range(5):
            yield _example(i)
        raise KeyboardInterrupt  # the build dies mid-way

    with pytest.raises(KeyboardInterrupt):
        write_records(str(tmp_path), producer(), shard_size=2)
    assert not glob.glob(str(tmp_path / "*.tmp"))
    source = RecordSource(str(tmp_path))
    assert [source.example(i)["key"] for i in range(len(source))] == [f"clip{i}" for i in range(5)]


def test_unfinished_shard_is_invisible_to_readers(tmp_path):
    writer = ShardWriter(str(tmp_path), shard_size=2)
    for i in range(3):
        writer.write(_example(i))
    # A hard kill now leaves shard 0 complete and shard 1 as a .tmp file only.
    assert sorted(os.listdir(tmp_path)) == ["data-00000.array_record", "data-00001.array_record.tmp"]
    assert len(RecordSource(str(tmp_path))) == 2
    writer.close()
    assert len(RecordSource(str(tmp_path))) == 3


def test_refuses_to_mix_with_existing_shards(tmp_path):
    write_records(str(tmp_path), [_example(0)])
    with pytest.raises(FileExistsError, match="empty directory"):
        write_records(str(tmp_path), [_example(1)])


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="clapcomp data build"):
        RecordSource(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        RecordSource([str(tmp_path / "nope.array_record")])
    with pytest.raises(ValueError, match=r"gs://b/recs is a URL: read it through its staged local copy"):
        RecordSource("gs://b/recs")  # never handed to ArrayRecord, whose open hangs on gs://


def test_call_with_timeout():
    assert call_with_timeout(lambda a: a + 1, 5.0, 1) == 2
    assert call_with_timeout(lambda a: a + 1, None, 1) == 2
    with pytest.raises(BadData) as e:
        call_with_timeout(time.sleep, 0.05, 2.0)
    assert e.value.reason == "timeout"
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(lambda: 1 / 0, 5.0)


def test_text_fields_must_be_lists():
    with pytest.raises(TypeError, match="list of str"):
        encode_record({**_example(0), "captions": "a str"})
    assert records.TEXT_FIELDS == ("captions", "negatives", "positives")


def test_pcm16_records_decode_as_libsndfile_16_bit_audio_and_detect_truncation(tmp_path):
    """The reference is libsndfile: a pcm16 record holds the samples soundfile writes to a 16-bit FLAC file
    (x * 2**15, rounded half to even, clipped), so pcm16 and flac records decode alike and audio that came
    from a 16-bit file round-trips exactly."""
    rng = np.random.default_rng(0)
    from_16_bit = np.arange(-32768, 32768) / 32768.0
    ties = (np.arange(-32768, 32767) + 0.5) / 32768.0
    audio = np.concatenate([from_16_bit, ties, rng.uniform(-1.5, 1.5, 20_000), [1.0, -1.0, 2.0, -2.0]])
    ex = {**_example(2), "audio": audio.astype(np.float32)}
    write_records(str(tmp_path), [ex], audio_format="pcm16")
    rec = RecordSource(str(tmp_path)).example(0)
    assert rec["audio_format"] == "pcm16" and len(rec["audio"]) == 2 * len(audio)
    flac = io.BytesIO()
    sf.write(flac, ex["audio"], 16000, format="FLAC", subtype="PCM_16")
    reference = sf.read(io.BytesIO(flac.getvalue()), dtype="float32")[0]
    decoded = records.decode_audio(rec)
    np.testing.assert_array_equal(decoded, reference)
    np.testing.assert_array_equal(decoded[: len(from_16_bit)], from_16_bit.astype(np.float32))
    with pytest.raises(BadData) as e:
        records.decode_audio({**rec, "audio": rec["audio"][:-2]})
    assert e.value.reason == "truncated"
    with pytest.raises(ValueError, match="audio_format"):
        write_records(str(tmp_path / "x"), [ex], audio_format="mp3")


@pytest.mark.parametrize(
    "change",
    [
        {"key": 3},
        {"audio_format": "mp3"},
        {"sample_rate": -1},
        {"sample_rate": 10**9},
        {"sample_rate": "16000"},
        {"num_samples": -5},
        {"num_samples": 1.5},
        {"captions": "a str"},
        {"negatives": [1, 2]},
        {"positives": None},
    ],
)
def test_malformed_headers_are_bad_records(change):
    good = encode_record(_example(0))
    (size,) = struct.unpack("<I", good[8:12])
    header = {**json.loads(good[12 : 12 + size]), **change}
    head = json.dumps(header).encode()
    with pytest.raises(BadData) as e:
        parse_record(MAGIC + struct.pack("<I", len(head)) + head + good[12 + size :])
    assert e.value.reason == "bad_record"
    for junk in (MAGIC + struct.pack("<I", 2) + b"[]", MAGIC + struct.pack("<I", 4) + b"\xff\xfe{}"):
        with pytest.raises(BadData):
            parse_record(junk)
