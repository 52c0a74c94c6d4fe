"""`clapcomp.train.locked_tower`: a locked audio tower's outputs, cached once per clip, give the loss and
gradients of running the tower in the train step (the reference: the step's own waveform path; to 1e-6,
the float32 rounding of the tower's output in another batch), and the embeddings of `Clap` at
evaluation; a cache of another tower, a tower that trains, and clips longer than the window are
refused. A tiny CNN tower (configs/tiny.py with a 2-block CNN), four clips."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp import audio as audio_lib
from clapcomp.data.options import DataConfig
from clapcomp.data.pipeline import make_dataset
from clapcomp.data.records import RecordSource, write_records
from clapcomp.inference import Clap
from clapcomp.models.clap import ClapModel
from clapcomp.tokenizer import Tokenizer
from clapcomp.train import distributed, locked_tower
from clapcomp.train import state as state_lib
from clapcomp.train import step as step_lib


def _config(freeze="audio_tower"):
    """configs/tiny.py (1-s clips at 8 kHz) with a 2-block CNN tower keeping 2 time spans."""
    return load_config("tiny", "compa", "model.audio_tower=cnn", "model.cnn.n_mels=16", "model.cnn.channels=(4, 8)",
                       "model.cnn.head=max", "model.cnn.time_segments=2", f"freeze={freeze}")  # fmt: skip


def _clip(rng, n, rate=8000):
    t = np.arange(n) / rate
    return (0.4 * np.sin(2 * np.pi * rng.uniform(150, 1500) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, mesh, graphdef, state, records dir): four records of at most the 1-s window (one at
    16 kHz, resampled on read; one short, repeat-padded by the front end)."""
    config = _config()
    rng = np.random.default_rng(0)
    records = tmp_path_factory.mktemp("records")
    clips = [(8000, 8000), (8000, 3100), (16000, 15000), (8000, 6000)]
    write_records(str(records), [
        {"key": f"c{i}", "audio": _clip(rng, n, rate), "sample_rate": rate, "captions": [f"a sound number {i}"],
         "negatives": [f"a sound number {i + 1}", f"no sound {i}"]}
        for i, (rate, n) in enumerate(clips)
    ])  # fmt: skip
    config.data.train = str(records)
    mesh = distributed.make_mesh()
    parts = state_lib.setup(config, mesh)
    return config, mesh, parts.graphdef, state_lib.init_state(parts), records


def _batch(config, records, cache=None):
    """The pipeline's first batch of `records` (each of the four twice: 8 rows, one per device), with or
    without the tower cache."""
    audio = state_lib.model_config(config).audio
    options = DataConfig(seed=3, batch_size=8, clip_samples=audio.clip_samples, sample_rate=audio.sample_rate,
                         num_negatives=2, num_epochs=2)  # fmt: skip
    ds = make_dataset(RecordSource(str(records)), options, tokenizer=Tokenizer.from_file(config.tokenizer, max_length=16),
                      process_index=0, process_count=1, tower_cache=cache)  # fmt: skip
    batch = next(iter(ds))
    return {k: v for k, v in batch.items() if k in step_lib.batch_spec("compa", pooled=cache is not None)}


def _model(setup):
    _, _, graphdef, state, _ = setup
    return nnx.merge(graphdef, state.params, state.model_state)


def test_cached_outputs_give_the_loss_and_gradients_of_the_locked_tower(setup, tmp_path):
    config, mesh, graphdef, state, records = setup
    cache = locked_tower.write_cache(records, tmp_path / "cache", _model(setup), batch_size=2)
    stats = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert len(cache) == stats["count"] == 4 and stats["width"] == 16 and stats["num_records"] == 4
    loaded = locked_tower.load(str(cache.path), config.freeze)
    locked_tower.check(loaded, state_lib.model_config(config), state.params, state.model_state)
    waves, pooled = _batch(config, records), _batch(config, records, cache)
    assert waves["waveform"].shape == (8, 8000) and pooled["audio_pooled"].shape == (8, 16)

    loss = step_lib.loss_fn("compa", lock_audio_tower=True)
    key = jax.random.key(5)

    def value_and_grads(batch):  # jitted: eager op-by-op dispatch of the backward pass is slow
        fn = lambda p, b: loss(nnx.merge(graphdef, p, state.model_state), b, key, mesh)
        return jax.jit(jax.value_and_grad(fn))(state.params, batch)

    # the cached rows are the tower's output in the step up to float32 rounding (a few ulp: another batch)
    mel, is_longer = audio_lib.features(waves["waveform"], waves["lengths"], _model(setup).cfg.audio)
    in_step = np.asarray(_model(setup).audio_tower(mel, is_longer, train=False))
    np.testing.assert_allclose(pooled["audio_pooled"], in_step, atol=5e-7 * np.abs(in_step).max(), rtol=0)

    (lw, gw), (lp, gp) = value_and_grads(waves), value_and_grads(pooled)
    assert abs(float(lw) - float(lp)) <= 1e-6
    moved = 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gw), jax.tree_util.tree_leaves(gp), strict=True):
        a, b = np.asarray(a), np.asarray(b)  # 1e-6, relative to the leaf's largest entry where that exceeds 1
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, np.abs(a).max()), jax.tree_util.keystr(path)
        moved += bool(np.abs(a).max() > 1e-4)
    assert moved > 4  # the projections and the text tower get real gradients, so the comparison can fail
    assert not any(np.asarray(g).any() for g in jax.tree_util.tree_leaves(gw["audio_tower"]))


def _with_cache(config, path):
    c = config.copy_and_resolve_references()
    c.data.tower_cache = str(path)
    return c


def test_a_cache_of_another_tower_or_for_a_training_tower_is_refused(setup, tmp_path):
    config, mesh, graphdef, state, records = setup
    cache = locked_tower.write_cache(records, tmp_path / "cache", _model(setup))
    with pytest.raises(
        ValueError, match=r"trains its audio tower \(config.freeze=''\); set config.freeze='audio_tower'"
    ):
        locked_tower.load(str(cache.path), freeze="")
    other = state_lib.init_state(state_lib.setup(_seed(config, 1), mesh))
    with pytest.raises(ValueError, match=r"another audio tower .*weights_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        locked_tower.check(cache, state_lib.model_config(config), other.params, other.model_state)
    wider = state_lib.model_config(load_config("tiny", "compa", "model.audio_tower=cnn", "model.cnn.n_mels=16",
                                               "model.cnn.channels=(4, 8)", "model.cnn.head=max"))  # fmt: skip
    with pytest.raises(ValueError, match=r"tower_config.time_segments: 2 -> 1"):
        locked_tower.check(cache, wider, state.params, state.model_state)
    unlocked = step_lib.loss_fn("compa", lock_audio_tower=False)
    with pytest.raises(ValueError, match="carries audio_pooled .* trains its audio tower"):
        unlocked(_model(setup), _batch(config, records, cache), jax.random.key(0), mesh)


def _seed(config, seed):
    c = config.copy_and_resolve_references()
    c.seed = seed
    return c


def test_records_longer_than_the_window_are_refused(setup, tmp_path):
    write_records(str(tmp_path / "long"), [{"key": "long one", "audio": np.zeros(8001, np.float32),
                                            "sample_rate": 8000, "captions": ["silence"]}])  # fmt: skip
    with pytest.raises(ValueError, match=r"record 'long one' .* 8001 samples at 8000 Hz, more than the clip window"):
        locked_tower.write_cache(tmp_path / "long", tmp_path / "cache", _model(setup))


def test_cached_clap_embeds_as_clap_and_runs_the_tower_once_per_clip(setup):
    config, *_ = setup
    model = _model(setup)
    cfg = state_lib.model_config(config)
    rng = np.random.default_rng(1)
    clips = [_clip(rng, 8000), _clip(rng, 2500), _clip(rng, 12000)]  # 1.5 s: the front 1 s is the window
    audio = [*clips, clips[1].copy()]  # a clip twice
    reference = Clap.from_model(model, cfg, max_batch=2).embed_audio(audio, 8000)
    caches = {}
    cached = locked_tower.CachedClap(model, cfg, caches=caches, max_batch=2)
    np.testing.assert_allclose(cached.embed_audio(audio, 8000), reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cached.embed_audio(audio[::-1], 8000), reference[::-1], atol=1e-6, rtol=0)
    assert cached.computed == 3 and len(caches) == 1  # three distinct clips, once each

    # another model with the same tower and its own projection: only the projection runs
    other = ClapModel(cfg, rngs=nnx.Rngs(7))
    nnx.update(other.audio_tower, nnx.state(model.audio_tower))
    again = locked_tower.CachedClap(other, cfg, caches=caches, max_batch=2)
    want = Clap.from_model(other, cfg, max_batch=2).embed_audio(audio, 16000)
    assert not np.allclose(want, Clap.from_model(model, cfg, max_batch=2).embed_audio(audio, 16000), atol=1e-3)
    np.testing.assert_allclose(again.embed_audio(audio, 16000), want, atol=1e-6, rtol=0)
    assert again.computed == 3 and len(caches) == 1  # 16 kHz input: resampled, three new clips for the same tower
    np.testing.assert_allclose(again.embed_audio(audio, 8000), Clap.from_model(other, cfg).embed_audio(audio, 8000),
                               atol=1e-6, rtol=0)  # fmt: skip
    assert again.computed == 3  # the 8 kHz clips were cached by the first model

    fresh = locked_tower.CachedClap(ClapModel(cfg, rngs=nnx.Rngs(8)), cfg, caches=caches)
    fresh.embed_audio(audio, 8000)
    assert fresh.computed == 3 and len(caches) == 2  # another tower: its own cache


@pytest.mark.slow
def test_the_trainer_trains_from_the_cache_as_from_the_waveforms(setup, tmp_path):
    """Two 2-step runs of the trainer from the same initialisation: the logged losses agree. The cache
    comes from `cache_for_config` (the run's initial tower, as the trainer builds it), written once."""
    from clapcomp.train import loop

    config, *_, records = setup
    config = config.copy_and_resolve_references()
    config.total_steps, config.ckpt_every = 2, 2
    path = locked_tower.cache_for_config(config, records, tmp_path / "caches")
    written = (path / "stats.json").stat().st_mtime_ns
    assert locked_tower.cache_for_config(config, records, tmp_path / "caches") == path
    assert (path / "stats.json").stat().st_mtime_ns == written  # found, not written again
    loop.train(config, tmp_path / "waves")
    loop.train(_with_cache(config, path), tmp_path / "cached")
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("waves", "cached")]  # fmt: skip
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5, rtol=0)


def test_one_writer_per_cache_folder_and_a_failed_write_keeps_the_previous_cache(setup, tmp_path):
    from clapcomp import fs

    records, out = setup[4], tmp_path / "cache"
    with pytest.raises(ValueError, match="would overwrite the input"):
        locked_tower.write_cache(records, records, _model(setup))
    first = locked_tower.write_cache(records, out, _model(setup))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first.path == out and sorted(before) == ["digests.txt", "pooled.npy", "stats.json"]
    with fs.Lock(tmp_path / ".cache.lock", purpose="clapcomp tower-cache"):  # another writer, still running
        with pytest.raises(fs.LockHeld, match="clapcomp tower-cache.*one writer per folder"):
            locked_tower.write_cache(records, out, _model(setup))
    write_records(str(tmp_path / "long"), [{"key": "long", "audio": np.zeros(8001, np.float32), "sample_rate": 8000,
                                            "captions": ["silence"]}])  # fmt: skip
    with pytest.raises(ValueError, match="more than the clip window"):
        locked_tower.write_cache(tmp_path / "long", out, _model(setup))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "long"]  # no temporary folder or lock left
    again = locked_tower.write_cache(records, out, _model(setup))  # an earlier cache is replaced whole
    np.testing.assert_array_equal(np.stack(again.rows), np.stack(first.rows))
