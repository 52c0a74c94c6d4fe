"""The loop does not wait on the host: metrics are read one step late, the stop rule still stops the
run with nothing saved past the limit, every save sees the data position of the batches the saved
state consumed, and multi-process preemption polls gather only every `preempt_check_every` steps."""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clapcomp.train import checkpoint as ckpt_lib
from clapcomp.train import loop


@pytest.fixture
def tiny(tiny):
    """The tiny plain config (tests/train/conftest.py)."""
    return tiny("plain")


class _Counting:
    """The trainer's data iterator, counting batches and turning the given (1-based) ones to NaN."""

    def __init__(self, iterator, bad=()):
        self.iterator, self.bad, self.n = iterator, set(bad), 0
        self.grain_iterator = iterator.grain_iterator

    def __getattr__(self, name):
        return getattr(self.iterator, name)

    def __next__(self):
        batch = next(self.iterator)
        self.n += 1
        return {**batch, "waveform": batch["waveform"] * jnp.nan} if self.n in self.bad else batch


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_each_save_holds_the_data_position_of_the_batches_its_state_consumed(tmp_path, tiny, monkeypatch):
    iterators, seen, args = [], {}, []
    make = loop._data_iterator
    monkeypatch.setattr(
        loop, "_data_iterator", lambda *a: args.extend(a) or iterators.append(_Counting(make(*a))) or iterators[-1]
    )
    save = ckpt_lib.Checkpointer.save

    def recording_save(self, step, state, grain_iterator, **kw):
        seen[step] = (iterators[-1].n, int(state.step), grain_iterator.get_state())
        return save(self, step, state, grain_iterator, **kw)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", recording_save)
    tiny.total_steps, tiny.ckpt_every = 6, 3
    loop.train(tiny, tmp_path)

    assert sorted(seen) == [3, 6] and iterators[-1].n == 6  # no batch is read past the last step
    for step, (pulled, state_step, _) in seen.items():
        assert pulled == state_step == step  # the batch of the next step is read only after the save
    fresh = make(*args).grain_iterator  # an independent replay: 3 batches in, grain is where save 3 was
    for _ in range(3):
        next(fresh)
    assert fresh.get_state() == seen[3][2] != seen[6][2]
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 7))  # every step logged once, in order


@pytest.mark.slow
def test_stop_rule_one_step_late_saves_nothing_past_the_limit(tmp_path, tiny, helpers, monkeypatch):
    make = loop._data_iterator
    monkeypatch.setattr(loop, "_data_iterator", lambda *a: _Counting(make(*a), {5, 6, 7}))
    tiny.total_steps, tiny.ckpt_every, tiny.keep_checkpoints = 12, 4, 10
    with pytest.raises(loop.NonFiniteError, match=r"3 steps in a row \(up to step 7\).*max_consecutive_nonfinite=3"):
        loop.train(tiny, tmp_path)

    rows = {r["step"]: r for r in _rows(tmp_path)}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]  # step 8 was dispatched, never logged
    assert [rows[s]["nonfinite_run"] for s in (4, 5, 6)] == [0, 1, 2]
    assert _saved(tmp_path) == [4]  # step 8 would have saved: the stop came first
    state = helpers.read_state(tmp_path, 4)
    assert int(state.nonfinite_run) == 0 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


@pytest.mark.slow
def test_a_stop_on_a_save_step_is_caught_before_its_save(tmp_path, tiny, monkeypatch):
    make = loop._data_iterator
    monkeypatch.setattr(loop, "_data_iterator", lambda *a: _Counting(make(*a), {2, 3, 4}))
    tiny.total_steps, tiny.ckpt_every, tiny.keep_checkpoints = 8, 4, 10
    with pytest.raises(loop.NonFiniteError, match=r"up to step 4\)"):
        loop.train(tiny, tmp_path)
    assert not (tmp_path / "checkpoints").is_dir() or _saved(tmp_path) == []


class _Gather:
    def __init__(self):
        self.calls = []

    def __call__(self, x, **kw):
        self.calls.append(bool(x))
        return np.stack([np.asarray(x), np.asarray(False)])  # the other process saw no signal


def test_multi_process_preemption_gathers_only_every_n_steps(monkeypatch):
    gather = _Gather()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(loop.multihost_utils, "process_allgather", gather)
    guard = loop.PreemptionGuard(every=4)
    try:
        asked = [s for s in range(1, 13) if guard.requested(s)]
        assert asked == [] and len(gather.calls) == 3  # steps 4, 8, 12 only
        guard.flag = True  # a signal arrived at step 13: the stop waits for the next shared step
        asked = [s for s in range(13, 21) if guard.requested(s)]
        assert asked == [16, 20] and gather.calls[-2:] == [True, True]
    finally:
        guard.restore()


def test_single_process_reads_its_flag_every_step_and_bad_interval_is_refused():
    guard = loop.PreemptionGuard(every=10)
    try:
        assert not guard.requested(3)
        guard.flag = True
        assert guard.requested(3)  # no collective to wait for
    finally:
        guard.restore()
    with pytest.raises(ValueError, match="preempt_check_every must be >= 1, got 0"):
        loop.PreemptionGuard(every=0)


@pytest.mark.slow
def test_keep_best_keeps_the_best_evaluated_step_and_load_reads_it(tmp_path, tiny, tone_benchmark, helpers):
    """Evaluated every step, checkpointing only at the end (keep 1): the kept steps are the last and the
    one with the highest t2a mAP@10 in metrics.jsonl (of equal scores the newest, as Orbax's stable sort
    keeps); clapcomp.load(workdir, best=True) holds that step's weights."""
    from flax import nnx

    from clapcomp import load

    key = "eval/tones/t2a_mAP@10"
    tiny.total_steps, tiny.ckpt_every, tiny.keep_checkpoints, tiny.eval_every = 5, 100, 1, 1
    tiny.evaluators = [dict(name="retrieval", label="tones", kwargs=dict(data=str(tone_benchmark)))]
    tiny.keep_best = key
    workdir = tmp_path / "run"
    loop.train(tiny, workdir)
    scores = {r["step"]: r[key] for r in _rows(workdir) if key in r}
    assert sorted(scores) == [1, 2, 3, 4, 5]
    best = max(s for s in scores if scores[s] == max(scores.values()))
    assert _saved(workdir) == sorted({5, best})
    got = nnx.to_pure_dict(nnx.state(load(workdir, best=True).model, nnx.Param))
    helpers.assert_states_bitwise_equal(
        jax.tree_util.tree_map(np.asarray, got), helpers.read_state(workdir, best).params
    )
    tiny.keep_best = "eval/nope/x"
    with pytest.raises(ValueError, match=r"keep_best='eval/nope/x': expected 'eval/<label>/<metric>'"):
        loop.train(tiny, tmp_path / "refused")
    tiny.keep_best, tiny.eval_every, tiny.total_steps = "", 0, 2  # 0: the evaluators run at the end only
    loop.train(tiny, tmp_path / "at_end")
    assert [r["step"] for r in _rows(tmp_path / "at_end") if key in r] == [2]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_held_workdir_is_refused_before_anything_is_read_or_written(tmp_path, tiny):
    import os
    import socket

    from clapcomp import fs

    with fs.lock_folder(tmp_path, purpose="clapcomp train", run_id="first-run"):
        with pytest.raises(fs.LockHeld, match=rf"pid {os.getpid()} on host {socket.gethostname()} \(run first-run"):
            loop.train(tiny, tmp_path)
        assert list(_files(tmp_path)) == [fs.LOCK_NAME]


def test_a_fresh_run_refuses_another_runs_files_unless_told_to_reuse_the_folder(tmp_path, tiny, monkeypatch):
    from clapcomp import fs

    (tmp_path / "tokenizer.json").write_text('{"another": "tokenizer"}')
    (tmp_path / "config.json").write_text(json.dumps({"loss": "compa", "total_steps": 1}))
    before = _files(tmp_path)
    with pytest.raises(ckpt_lib.ForeignWorkdir, match=r"holds no checkpoint but a config.json of another run .*"
                       r"and a tokenizer.json with sha256 .*--workdir-reuse"):  # fmt: skip
        loop.train(tiny, tmp_path)
    assert _files(tmp_path) == before  # nothing read from it, nothing written, the lock released

    monkeypatch.setattr(loop, "_run", lambda *args, **kwargs: {})  # the run set up (tokenizer read), no steps
    loop.train(tiny, tmp_path, workdir_reuse=True)
    run_tokenizer = open(tiny.tokenizer, "rb").read()
    assert (tmp_path / "tokenizer.json").read_bytes() == run_tokenizer  # the run's own replaced the folder's
    assert (
        json.loads((tmp_path / "config.json").read_text())["tokenizer_sha256"]
        == hashlib.sha256(run_tokenizer).hexdigest()
    )
    assert not (tmp_path / fs.LOCK_NAME).exists()
