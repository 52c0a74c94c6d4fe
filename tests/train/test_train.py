"""`train(config, workdir)` on 8 simulated CPU devices: the loss falls with each loss kind, and
non-finite steps are skipped, counted, and stop the run after the configured number in a row."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import loop

pytestmark = pytest.mark.slow  # every test trains: `make test-fast` skips them


def _losses(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["plain", "compa", "modular"])
def test_loss_falls(tmp_path, tiny, loss):
    config = tiny(loss)
    final = loop.train(config, tmp_path)
    rows = _losses(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, config.total_steps + 1))
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
    assert last < 0.8 * first, [round(r["loss"], 3) for r in rows]
    assert final["loss"] == rows[-1]["loss"] and sum(r["nonfinite"] for r in rows) == 0
    assert (tmp_path / "config.json").is_file() and list((tmp_path / "tb").iterdir())
    assert "samples_per_s" in final and final["tflops_per_device"] > 0


class _Poisoned:
    """The trainer's data iterator with NaN waveforms at the given (1-based) batch numbers."""

    def __init__(self, iterator, bad):
        self.iterator, self.bad, self.n = iterator, set(bad), 0
        self.grain_iterator = iterator.grain_iterator

    def __getattr__(self, name):  # skip counters etc. from the real iterator
        return getattr(self.iterator, name)

    def __next__(self):
        batch = next(self.iterator)
        self.n += 1
        return {**batch, "waveform": batch["waveform"] * jnp.nan} if self.n in self.bad else batch


def test_nonfinite_steps_skipped_counted_then_stop(tmp_path, tiny, helpers, monkeypatch):
    make = loop._data_iterator
    monkeypatch.setattr(loop, "_data_iterator", lambda *a: _Poisoned(make(*a), {3, 6, 7, 8, 9}))
    config = tiny("plain")  # the same program as test_loss_falls[plain]: compiled once
    config.ckpt_every, config.keep_checkpoints = 1, 20
    with pytest.raises(loop.NonFiniteError, match=r"3 steps in a row \(up to step 8\).*max_consecutive_nonfinite=3"):
        loop.train(config, tmp_path)

    rows = {r["step"]: r for r in _losses(tmp_path)}
    assert [rows[s]["nonfinite"] for s in range(1, 8)] == [0, 0, 1, 0, 0, 1, 1]
    assert [rows[s]["nonfinite_run"] for s in range(1, 8)] == [0, 0, 1, 0, 0, 1, 2]
    assert np.isfinite(rows[4]["loss"]) and not np.isfinite(rows[3]["loss"])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2, 3, 4, 5, 6, 7]  # nothing after the failing step

    state = {s: helpers.read_state(tmp_path, s) for s in (2, 3, 4, 5, 7)}
    helpers.assert_states_bitwise_equal(state[2].params, state[3].params)  # the NaN step changed nothing
    helpers.assert_states_bitwise_equal(state[2].opt_state, state[3].opt_state)
    helpers.assert_states_bitwise_equal(state[5].params, state[7].params)
    assert not np.array_equal(state[3].params["logit_scale"], state[4].params["logit_scale"])
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state[7].params))
    assert int(state[7].nonfinite_run) == 2 and ckpt_lib.read_config(tmp_path).max_consecutive_nonfinite == 3


def test_data_skip_counters_reach_metrics_and_survive_a_resume(tmp_path, tiny, tone_records):
    import shutil

    from array_record.python.array_record_module import ArrayRecordWriter

    records = tmp_path / "records"
    shutil.copytree(tone_records, records)
    bad = records / "data-99999.array_record"
    w = ArrayRecordWriter(str(bad), "group_size:1")
    for i in range(8):
        w.write(b"junk, not a record %d" % i)
    w.close()
    config = tiny("plain")
    config.data.train = str(records)
    config.total_steps, config.ckpt_every = 4, 4
    workdir = tmp_path / "run"
    loop.train(config, workdir)
    config.total_steps = 6  # a change a resume accepts (logged, recorded)
    loop.train(config, workdir)

    rows = {r["step"]: r for r in _losses(workdir)}
    counts = [rows[s]["data/skipped/bad_record"] for s in range(1, 7)]
    saved = json.loads(next((workdir / "checkpoints" / "4" / "skips").iterdir()).read_text())
    assert counts[3] > 0 and saved["bad_record"] == counts[3]  # checkpointed with the iterator
    assert counts == sorted(counts)  # cumulative across the resume, never reset
    assert all(rows[s]["data/skipped/corrupt"] == 0 for s in range(1, 7))
    events = [json.loads(line) for line in (workdir / "restore_log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "resumed" and events[-1]["changed"] == ["total_steps: 4 -> 6"]


def test_second_ctrl_c_exits_at_once_even_inside_a_blocking_call(tmp_path, helpers):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "guarded.py"
    script.write_text(
        "import os\n"
        "from clapcomp.train.loop import PreemptionGuard\n"
        "guard = PreemptionGuard()\n"
        "print('ready', flush=True)\n"
        "r, w = os.pipe()\n"
        "os.read(r, 1)  # blocks in C forever, as a long XLA compile or Orbax write would\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=helpers.train_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the first Ctrl-C only asks for a checkpoint after the step
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "Ctrl-C again to exit at once" in err and "second SIGINT: exiting now" in err


def test_weighted_mixture_counts_3_to_1_and_resumes_bitwise(tmp_path, tiny, tone_records, helpers):
    import shutil

    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(tone_records, a)
    helpers.write_tone_records(b, n=16, seed=1)
    config = tiny("plain")
    config.data.update(train=f"{a},{b}", weights="3,1", batch_size=64)
    config.total_steps, config.ckpt_every, config.log_every = 8, 4, 1  # 512 samples
    loop.train(config, tmp_path / "whole")
    # stopped after step 4's save: the same workdir without checkpoint 8 and the lines logged after step 4
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed", ignore=shutil.ignore_patterns("tb"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()[:4]
    (tmp_path / "resumed" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    loop.train(config, tmp_path / "resumed")  # resumes at step 4 with the mixture's position and counters

    whole, resumed = ({r["step"]: r for r in _losses(tmp_path / w)} for w in ("whole", "resumed"))
    for step in (1, 8):
        n_a, n_b = whole[step]["data/source/A/samples"], whole[step]["data/source/B/samples"]
        assert n_a + n_b == 64 * step and whole[step]["data/source/A/skipped"] == 0
    assert abs(n_a / (n_a + n_b) - 0.75) <= 0.075  # 3:1 within 10% after 512 samples
    for step in range(1, 9):
        assert {k: v for k, v in resumed[step].items() if k.startswith("data/") or k == "loss"} == {
            k: v for k, v in whole[step].items() if k.startswith("data/") or k == "loss"
        }
    helpers.assert_states_bitwise_equal(
        helpers.read_state(tmp_path / "whole", 8).params, helpers.read_state(tmp_path / "resumed", 8).params
    )


def test_a_mixture_source_at_another_sample_rate_is_refused_by_name(tmp_path, tiny, tone_records):
    from clapcomp.data.records import write_records

    other = tmp_path / "at16k"
    write_records(str(other), [dict(key="x", audio=np.zeros(16000, np.float32), sample_rate=16000, captions=["x"])])
    config = tiny("plain")
    config.data.train = f"{tone_records},{other}"
    with pytest.raises(ValueError, match=f"mixture source {other} holds audio at 16000 Hz but the model runs at 8000"):
        loop.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", ["plain", "compa"])
def test_accumulation_logs_the_loss_and_grad_norm_of_the_whole_batch(tmp_path, tone_records, compile_cache, helpers,
                                                                      loss):  # fmt: skip
    """`clapcomp train --config.accumulation_steps=4 --config.freeze=audio` (locked audio tower: no batch
    statistics in training mode) logs at step 1 the loss and grad_norm of the same run without accumulation."""
    rows = {}
    for a in (1, 4):
        r = helpers.run_train(tmp_path / f"a{a}", tone_records, "--config.data.batch_size=16", "--config.total_steps=1",
                              "--config.freeze=audio", f"--config.accumulation_steps={a}", cache=compile_cache,
                              devices=4, config=f"configs/tiny.py:{loss}")  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        rows[a] = _losses(tmp_path / f"a{a}")[0]
    assert json.loads((tmp_path / "a4" / "config.json").read_text())["accumulation_steps"] == 4
    assert rows[4]["step"] == rows[1]["step"] == 1
    assert rows[4]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert rows[4]["grad_norm"] == pytest.approx(rows[1]["grad_norm"], rel=1e-5)


def test_a_second_train_into_a_running_workdir_exits_at_once_naming_the_first(
    tmp_path, tone_records, compile_cache, helpers
):
    import subprocess

    workdir = tmp_path / "run"
    first = subprocess.Popen(
        helpers.train_cmd(workdir, tone_records, *helpers.REFERENCE),
        env=helpers.train_env(compile_cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in first.stderr:  # until the first run has started training
            if "starting at step 0" in line:
                break
        second = helpers.run_train(workdir, tone_records, *helpers.REFERENCE, cache=compile_cache, timeout=120)
        assert second.returncode == 1
        assert f"is being written by pid {first.pid}" in second.stderr and "one writer per folder" in second.stderr
        rest = first.stderr.read()
        assert first.wait(timeout=600) == 0, rest[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: each logged step once
    assert not (workdir / ".clapcomp.lock").exists()
