"""The per-record and per-batch steps: bugs tolerated and counted (transform and negative generator), int16
crops copied into their batch rows as they are read."""

import numpy as np
import pytest
from pipeline_records import CLIP, K, N, word_tokenizer  # tests/pipeline_records.py
from pipeline_records import record as _record

from clapcomp.data.options import DataConfig
from clapcomp.data.reasons import READ_REASONS
from clapcomp.data.records import RecordSource, encode_record, write_records
from clapcomp.data.transform import Collate, RecordTransform


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def test_an_unexpected_transform_error_is_logged_with_traceback_and_stops(tok, caplog, monkeypatch):
    """A bug reading records: the record is replaced, counted, logged; the third stops."""
    records = [encode_record(_record(i)) for i in range(N)]
    options = DataConfig(batch_size=1, clip_samples=CLIP, sample_rate=16000, num_negatives=K, max_unexpected=3)
    transform = RecordTransform(records, options, tokenizer=tok)
    monkeypatch.setattr("clapcomp.data.transform.parse_record", lambda *a, **k: {}[("bug in the transform")])
    with pytest.raises(RuntimeError, match="3 unexpected errors in the record transform.*KeyError.*a bug"):
        transform(records[0], np.random.default_rng(0))
    assert transform.unexpected == 3
    assert caplog.text.count("Traceback") == 3 and "bug in the transform" in caplog.text


def test_a_negative_generator_error_is_counted_logged_and_stops_at_the_limit(tok, caplog):
    """Generated per batch by `Collate`: the example keeps no negatives, counted as `unexpected_error`."""

    class Broken:
        def generate(self, caption, k):
            raise KeyError("bug in a custom negative generator")

    records = [encode_record({**_record(i), "negatives": []}) for i in range(N)]
    options = DataConfig(batch_size=1, clip_samples=CLIP, sample_rate=16000, num_negatives=K, max_unexpected=3)
    transform = RecordTransform(records, options, tokenizer=tok, negative_generator=Broken())
    rng = np.random.default_rng(0)
    for _ in range(2):
        example = transform(records[0], rng)
        assert not example["neg_mask"].any() and not example["neg_input_ids"].any()
        assert example["_skips"].tolist() == [reason == "unexpected_error" for reason in READ_REASONS]
    with pytest.raises(RuntimeError, match="3 unexpected errors in the negative generator.*KeyError.*a bug"):
        transform(records[0], rng)
    assert caplog.text.count("Traceback") == 3 and "bug in a custom negative generator" in caplog.text


# ----------------------------------------------------------------------------- weighted mixtures


def test_int16_rows_are_copied_into_the_batch_as_read_and_collate_copies_any_other_order(tok, tmp_path):
    """`batch_rows`: each read writes its crop (zero-tailed) into the next row of its thread's buffer; `Collate`
    returns that buffer when the examples are its rows in order, and copies them in any other case."""
    import pickle
    import threading

    write_records(str(tmp_path), (_record(i) for i in range(4)), audio_format="pcm16")
    src = RecordSource(str(tmp_path))
    options = DataConfig(
        seed=0, batch_size=2, clip_samples=CLIP, num_negatives=K, sample_rate=16000, pcm16_batches=True
    )
    transform = RecordTransform(src, options, tokenizer=tok, batch_rows=2)
    collate = Collate(options, tok)

    def expected(i):  # record i's int16 samples (shorter than the clip: no crop), zero-tailed
        row = np.zeros(CLIP, np.int16)
        samples = np.frombuffer(src.example(i)["audio"], "<i2")
        row[: samples.size] = samples
        return row

    a, b = (transform.read(src[i], np.random.default_rng(i)) for i in (0, 1))
    batch = collate([a, b])
    assert np.shares_memory(batch["waveform"], a["audio"]) and np.shares_memory(batch["waveform"], b["audio"])
    np.testing.assert_array_equal(batch["waveform"], [expected(0), expected(1)])
    c, d = (transform.read(src[i], np.random.default_rng(i)) for i in (2, 3))
    swapped = collate([d, c])  # not the buffer's order: copied
    assert not np.shares_memory(swapped["waveform"], c["audio"])
    np.testing.assert_array_equal(swapped["waveform"], [expected(3), expected(2)])
    other = []  # one example from another thread's buffer: copied
    thread = threading.Thread(target=lambda: other.append(transform.read(src[1], np.random.default_rng(1))))
    thread.start()
    thread.join()
    e = transform.read(src[0], np.random.default_rng(0))
    mixed = collate([e, other[0]])
    assert not np.shares_memory(mixed["waveform"], e["audio"])
    np.testing.assert_array_equal(mixed["waveform"], [expected(0), expected(1)])
    clone = pickle.loads(pickle.dumps(transform))  # for grain's worker processes: a fresh buffer per thread
    np.testing.assert_array_equal(collate([clone.read(src[i], np.random.default_rng(i)) for i in (2, 3)])["waveform"],
                                  [expected(2), expected(3)])  # fmt: skip
