"""Two CPU processes (4 devices each, gloo collectives, coordinator on 127.0.0.1) train one model
on an 8-device global mesh, stop together on SIGTERM with a checkpoint, and resume to the end."""

import json
import signal
import socket
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow  # multi-process / end-to-end: `make test-fast` skips it

OVERRIDES = ("--config.total_steps=10", "--config.ckpt_every=5")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(helpers, workdir, records, cache, *extra, sigterm_after_step=None, expect_rc=0):
    port = _free_port()
    procs = [
        subprocess.Popen(
            helpers.train_cmd(
                workdir,
                records,
                *OVERRIDES,
                *extra,
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=helpers.train_env(cache, devices=4),
            cwd=helpers.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        if sigterm_after_step is not None:
            metrics, end = workdir / "metrics.jsonl", time.monotonic() + 600
            while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= sigterm_after_step):
                assert all(p.poll() is None for p in procs) and time.monotonic() < end
                time.sleep(0.02)
            for p in procs:  # as a cluster scheduler preempting the job signals every task
                p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert (p.returncode == 0) == (expect_rc == 0), err[-3000:]
    return outs


def test_two_processes_train_preempt_resume(tmp_path, tone_records, tone_benchmark, compile_cache, helpers):
    """... and, at the end, evaluate on all 8 devices of both processes (sharded evaluation): the numbers of
    the same checkpoint evaluated on one device in this process."""
    from clapcomp import load
    from clapcomp.evaluate.run import EVALUATORS, headline

    workdir = tmp_path / "run"
    first = _launch(helpers, workdir, tone_records, compile_cache, sigterm_after_step=2)
    assert "on 8 devices (2 processes)" in first[0][1]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    stopped = saved[-1]
    assert 2 <= stopped < 10  # both processes agreed on the step to save at
    data = workdir / "checkpoints" / str(stopped) / "data"
    assert sorted(p.name for p in data.glob("process_*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]

    evaluators = f"--config.evaluators=[{{'name': 'retrieval', 'kwargs': {{'data': '{tone_benchmark}'}}}}]"
    second = _launch(helpers, workdir, tone_records, compile_cache, evaluators, "--config.eval_every=10")
    assert f"resuming at step {stopped} of 10" in second[0][1]
    assert (workdir / "checkpoints" / "10" / "state").is_dir()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    *trained, evaluated = rows  # the evaluation at step 10 is the last row
    assert [r["step"] for r in trained] == list(range(1, 11))  # written by process 0 only, no step twice
    assert evaluated.pop("step") == 10
    one_device = headline(EVALUATORS["retrieval"](load(workdir), data=str(tone_benchmark)))
    assert evaluated == pytest.approx({f"eval/retrieval/{k}": v for k, v in one_device.items()}, abs=1e-5)
    assert len(set(evaluated.values())) > 1  # not a constant: the ranks of a trained model
    assert "step 10/10" in second[0][0] and "step 10/10" not in second[1][0]  # only process 0 reports


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_to_two_processes_is_refused_untouched_or_restored_params_only(
    tmp_path, tone_records, compile_cache, helpers
):
    workdir = tmp_path / "run"
    r = helpers.run_train(workdir, tone_records, *OVERRIDES, "--config.total_steps=5", cache=compile_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    before = _snapshot(workdir)

    refused = _launch(helpers, workdir, tone_records, compile_cache, expect_rc=1)
    assert "data-iterator position of 1 process(es), this run has 2" in refused[0][1]
    assert "--restore=params_only" in refused[0][1]
    assert _snapshot(workdir) == before  # no checkpoint file, no config.json byte changed

    resumed = _launch(helpers, workdir, tone_records, compile_cache, "--restore=params_only")
    assert "resuming at step 5 of 10" in resumed[0][1] and "data iterator restarted" in resumed[0][1]
    assert (workdir / "checkpoints" / "10" / "state").is_dir()
    events = [json.loads(line) for line in (workdir / "restore_log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "resumed" and events[-1]["restore"] == "params_only"
