"""A training workdir on gs:// (the local GCS emulator, tests/gcs_emulator.py): `clapcomp train --workdir
gs://bkt/run` leaves checkpoints, config.json, tokenizer.json, metrics.jsonl and TensorBoard events in the
bucket, resumes from them, and `clapcomp.load` / `clapcomp export` read it; nothing is written to a local
folder named `gs:`. References: the objects listed with google-cloud-storage, and the same workdir
downloaded and loaded from local disk."""

import json
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two training runs in subprocesses


def _objects(prefix: str) -> dict:
    """{name below prefix: bytes}, listed independently with google-cloud-storage."""
    from google.cloud import storage

    bucket, _, name = prefix[len("gs://") :].partition("/")
    return {
        b.name[len(name) + 1 :]: b.download_as_bytes()
        for b in storage.Client().bucket(bucket).list_blobs(prefix=name + "/")
    }


def test_train_resume_load_and_export_with_a_gs_workdir(gcs, tmp_path, tone_records, compile_cache, helpers):
    import clapcomp
    from clapcomp import export, fs

    run = f"gs://{gcs.bucket}/run"
    env = {**helpers.train_env(compile_cache, devices=1), **gcs.env}
    for steps in (4, 6):  # the same command with total_steps=6 resumes from the bucket
        cmd = helpers.train_cmd(run, tone_records, f"--config.total_steps={steps}", "--config.ckpt_every=2")
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
