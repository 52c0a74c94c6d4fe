"""A training workdir on gs:// (the local GCS emulator, tests/gcs_emulator.py): `clapcomp train --workdir
gs://bkt/run --config.data.train=gs://bkt/recs` leaves checkpoints, config.json, tokenizer.json, metrics.jsonl and TensorBoard events in the
bucket, resumes from them, and `clapcomp.load` / `clapcomp export` read it; nothing is written to a local
folder named `gs:`; two processes preempted with SIGTERM resume from the bucket bitwise equal to an
unbroken run. References: the objects listed with google-cloud-storage, the same workdir downloaded and
loaded from local disk, the unbroken run on local disk."""

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # training runs in subprocesses
# as tests/train/test_multiprocess.py: the same compiled programs (the test run's compilation cache)
OVERRIDES = ("--config.total_steps=10", "--config.ckpt_every=5")


def _objects(prefix: str) -> dict:
    """{name below prefix: bytes}, listed independently with google-cloud-storage."""
    from google.cloud import storage

    bucket, _, name = prefix[len("gs://") :].partition("/")
    return {
        b.name[len(name) + 1 :]: b.download_as_bytes()
        for b in storage.Client().bucket(bucket).list_blobs(prefix=name + "/")
    }


def _records_in_the_bucket(gcs, tone_records, tmp_path) -> tuple[str, dict]:
    """The tone records uploaded with their sha256.json (as `clapcomp data build --out gs://...` leaves
    them) -> (their gs:// URL, the environment staging them under tmp_path, clapcomp/data/stage.py)."""
    from clapcomp import fs

    records = f"gs://{gcs.bucket}/recs"
    with fs.atomic_dir(records) as tmp:
        shutil.copytree(tone_records, tmp, dirs_exist_ok=True)
        fs.write_manifest(tmp)
    return records, {**gcs.env, "CLAPCOMP_STAGE_DIR": str(tmp_path / "staged")}


def test_train_resume_load_and_export_with_a_gs_workdir(gcs, tmp_path, tone_records, compile_cache, helpers):
    import clapcomp
    from clapcomp import export, fs

    run = f"gs://{gcs.bucket}/run"
    records, gcs_env = _records_in_the_bucket(gcs, tone_records, tmp_path)
    env = {**helpers.train_env(compile_cache, devices=1), **gcs_env}
    for steps in (4, 6):  # the same command with total_steps=6 resumes from the bucket
        cmd = helpers.train_cmd(run, records, f"--config.total_steps={steps}", "--config.ckpt_every=2")
        r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 4 of 6" in r.stderr
    objects = _objects(run)
    assert {"config.json", "tokenizer.json", "metrics.jsonl", "restore_log.jsonl"} <= objects.keys()
    assert {n.split("/")[1] for n in objects if n.startswith("checkpoints/")} == {"2", "4", "6"}
    assert {"checkpoints/6/sha256.json", "checkpoints/6/state/_METADATA"} <= objects.keys()
    assert len([n for n in objects if n.startswith("tb/events.out.tfevents.")]) == 2  # one file per run
    assert fs.verify_manifest(f"{run}/checkpoints/6")
    steps = [json.loads(line)["step"] for line in objects["metrics.jsonl"].decode().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run's lines after the first run's, none lost
    assert json.loads(objects["config.json"])["total_steps"] == 6
    assert not (tmp_path / "gs:").exists() and not (helpers.REPO / "gs:").exists()

    texts = ["a low tone", "a high tone"]
    audio = [np.sin(np.linspace(0, 400, 8000)).astype(np.float32)]
    remote = clapcomp.load(run)
    with fs.local_copy(run) as local:  # the reference: the same objects, read from local disk
        reference = clapcomp.load(local)
        np.testing.assert_array_equal(remote.embed_text(texts), reference.embed_text(texts))
        np.testing.assert_array_equal(remote.embed_audio(audio, 8000), reference.embed_audio(audio, 8000))

    out = f"gs://{gcs.bucket}/export"
    assert export.main(["--model", run, "--format", "safetensors", "--out", out]) == 0
    assert {"model.safetensors", "clapcomp.json", "tokenizer.json", fs.MANIFEST} == _objects(out).keys()
    exported = clapcomp.load(out)
    np.testing.assert_allclose(exported.embed_text(texts), remote.embed_text(texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported.embed_audio(audio, 8000), remote.embed_audio(audio, 8000), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "gs:").exists() and not (helpers.REPO / "gs:").exists()


def _launch(helpers, workdir, records, cache, env, *, sigterm_after_step=None):
    """2 processes (4 CPU devices each, gloo) of `clapcomp train`; SIGTERM to both once metrics.jsonl
    (in the bucket, read with google-cloud-storage) has `sigterm_after_step` lines. Returns their stderr."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = (*OVERRIDES, f"--coordinator=127.0.0.1:{port}")
    procs = [
        subprocess.Popen(
            helpers.train_cmd(workdir, records, *overrides, "--num_processes=2", f"--process_id={i}"),
            env={**helpers.train_env(cache, devices=4), **env},
            cwd=helpers.REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        if sigterm_after_step is not None:
            end = time.monotonic() + 600
            while len(_metrics_lines(str(workdir))) < sigterm_after_step:
                assert all(p.poll() is None for p in procs) and time.monotonic() < end
                time.sleep(0.5)
            for p in procs:  # as a pod's maintenance event signals every worker
                p.send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return errs


def _metrics_lines(workdir: str) -> list[str]:
    if not workdir.startswith("gs://"):
        path = Path(workdir, "metrics.jsonl")
        return path.read_text().splitlines() if path.is_file() else []
    return _objects(workdir).get("metrics.jsonl", b"").decode().splitlines()


def test_two_processes_preempted_on_gs_resume_bitwise_equal_to_an_unbroken_run(
    gcs, tmp_path, tone_records, compile_cache, helpers
):
    from clapcomp import fs

    run = f"gs://{gcs.bucket}/run"
    records, gcs_env = _records_in_the_bucket(gcs, tone_records, tmp_path)
    first = _launch(helpers, run, records, compile_cache, gcs_env, sigterm_after_step=2)
    assert "on 8 devices (2 processes)" in first[0]
    stopped = max(int(n.split("/")[1]) for n in _objects(run) if n.startswith("checkpoints/"))
    assert 2 <= stopped < 10  # both processes agreed on the step to save at
    second = _launch(helpers, run, records, compile_cache, gcs_env)
    assert f"resuming at step {stopped} of 10" in second[0]
    steps = [json.loads(line)["step"] for line in _metrics_lines(run)]
    assert steps == list(range(1, 11))  # process 0 only, each step once, the first run's lines kept

    reference = tmp_path / "reference"  # the same 2-process run, unbroken, on local disk
    _launch(helpers, reference, tone_records, compile_cache, {})
    with fs.local_copy(run) as local:
        helpers.assert_states_bitwise_equal(helpers.read_state(reference, 10), helpers.read_state(local, 10))
    assert not (helpers.REPO / "gs:").exists()
