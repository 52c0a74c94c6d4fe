"""`make_train_step`: built from objects (optimizer, schedule, loss), and the learning rate follows
the count of applied updates, so a skipped (NaN) step neither advances the schedule nor is logged
with a rate that was never applied. References: optax's own schedule and a hand-computed SGD update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp.train import distributed
from clapcomp.train import state as state_lib
from clapcomp.train import step as step_lib


def _batch(cfg, n, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, (n, cfg.text.max_length), dtype=np.int32)
    return dict(waveform=0.1 * rng.standard_normal((n, cfg.audio.clip_samples), dtype=np.float32),
                lengths=np.full(n, cfg.audio.clip_samples, np.int32), input_ids=ids, attention_mask=np.ones_like(ids))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    config = load_config("tiny")
    mesh = distributed.make_mesh()
    parts = state_lib.setup(config, mesh)
    return config, mesh, parts, state_lib.init_state(parts)


def test_nan_step_does_not_advance_the_schedule(setup):
    """Steps: good, NaN (skipped), good. With SGD(schedule) the third step's update must be exactly
    -schedule(1) * grad: the rate of the skipped step's count, not schedule(2)."""
    config, mesh, parts, state = setup
    graphdef, schedule = parts.graphdef, parts.schedule
    tx = optax.sgd(schedule)
    replicated = NamedSharding(mesh, P())  # mesh fsdp = 1: every leaf is replicated
    state = jax.tree_util.tree_map(lambda x: x.copy(), state)  # the step donates its input
    state = state.replace(opt_state=jax.device_put(tx.init(state.params), replicated))
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    loss_fn = step_lib.loss_fn("plain")
    step = step_lib.make_train_step(graphdef, tx, schedule, loss_fn, mesh, seed=config.seed, state_sharding=shardings)
    cfg = parts.cfg
    good, later = _batch(cfg, 8, 0), _batch(cfg, 8, 1)
    bad = {**good, "waveform": good["waveform"] * np.nan}

    s1, m0 = step(state, good)
    before = jax.tree_util.tree_map(np.asarray, s1)
    s2, m1 = step(s1, bad)
    assert int(m1["nonfinite"]) == 1 and int(s2.step) == 2
    key = jax.random.fold_in(jax.random.key(config.seed), 2)  # the step's own randomness
    model_state = jax.tree_util.tree_map(jnp.asarray, before.model_state)
    grads = jax.jit(jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, model_state), later, key, mesh)))(
        jax.tree_util.tree_map(jnp.asarray, before.params)
    )
    s3, m2 = step(s2, later)
    assert int(m2["nonfinite"]) == 0

    lrs = [float(m["learning_rate"]) for m in (m0, m1, m2)]
    assert lrs == pytest.approx([float(schedule(0)), float(schedule(1)), float(schedule(1))], rel=1e-6)
    assert float(schedule(1)) != float(schedule(2))  # warm-up: the two candidates differ
    w = "text_projection"
    for path, new in jax.tree_util.tree_leaves_with_path(s3.params[w]):
        old = _at(before.params[w], path)
        g = np.asarray(_at(grads[w], path))
        np.testing.assert_allclose(
            np.asarray(new) - old, -float(schedule(1)) * g, rtol=1e-3, atol=1e-7
        )  # float32 ulps of new - old
    assert int(step_lib.applied_updates(s3.opt_state)) == 2


def _at(tree, path):
    for k in path:
        tree = tree[getattr(k, "key", getattr(k, "idx", None))]
    return tree


def test_config_step_logs_the_adamw_rate_it_applies(setup):
    """The step `from_parts` builds from the config's objects (clip + AdamW + warm-up/cosine): the logged
    rate is optax's schedule at the optimizer's count, and a skipped step leaves that count unchanged."""
    config, mesh, parts, state = setup
    step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze)
    good = _batch(parts.cfg, 8, 0)
    state = jax.tree_util.tree_map(lambda x: x.copy(), state)  # the step donates its input
    expected = optax.warmup_cosine_decay_schedule(
        0.0, config.optimizer.lr, config.optimizer.warmup_steps, config.total_steps, 0.0
    )
    rates = []
    for batch in (good, {**good, "waveform": good["waveform"] * np.inf}, good):
        state, m = step(state, batch)
        rates.append(float(m["learning_rate"]))
    assert rates == pytest.approx([float(expected(0)), float(expected(1)), float(expected(1))], rel=1e-6)
    assert int(state.step) == 3 and int(step_lib.applied_updates(state.opt_state)) == 2


def test_an_int16_batch_gives_the_loss_of_its_float32_waveform(setup):
    """The trainer's batches carry int16 waveforms (`DataConfig.pcm16_batches`); the step's loss converts them on
    the device. The train-mode loss (random crop, SpecAugment, dropout from the same key) on the int16 batch and
    on x / 2**15 (NumPy float64, exact) as float32: bit for bit the same."""
    config, mesh, parts, state = setup
    fn = step_lib.loss_fn(config.loss)
    loss = jax.jit(lambda p, m, batch: fn(nnx.merge(parts.graphdef, p, m), batch, jax.random.key(1), mesh))
    batch = _batch(parts.cfg, 8, 2)
    pcm = np.random.default_rng(4).integers(-32768, 32768, batch["waveform"].shape).astype(np.int16)
    pcm[0, :2] = [-32768, 32767]
    floats = (pcm.astype(np.float64) / 32768).astype(np.float32)
    got, expected = (np.asarray(loss(state.params, state.model_state, {**batch, "waveform": w})) for w in (pcm, floats))
    assert np.isfinite(expected) and got.tobytes() == expected.tobytes()


def test_unknown_loss_and_schedule_free_optimizer_are_refused(setup):
    with pytest.raises(ValueError, match=r"config.loss must be one of .*'plian'"):
        step_lib.loss_fn("plian")
    with pytest.raises(ValueError, match="one schedule"):
        step_lib.applied_updates(optax.adam(1e-3).init({"w": np.zeros(3)}))


@pytest.mark.parametrize(
    "loss, pooled, keys",
    [
        ("plain", False, ["waveform", "lengths", "input_ids", "attention_mask"]),
        ("compa", False, ["waveform", "lengths", "input_ids", "attention_mask",
                          "neg_input_ids", "neg_attention_mask", "neg_mask"]),
        ("modular", False, ["waveform", "lengths", "input_ids", "attention_mask", "neg_input_ids",
                            "neg_attention_mask", "neg_mask", "pos_input_ids", "pos_attention_mask", "pos_mask"]),
        ("compa", True, ["audio_pooled", "input_ids", "attention_mask",
                         "neg_input_ids", "neg_attention_mask", "neg_mask"]),
    ],
)  # fmt: skip
def test_batch_spec_names_the_pipeline_fields_each_loss_needs(loss, pooled, keys):
    spec = step_lib.batch_spec(loss, pooled=pooled)
    assert list(spec) == keys and set(spec.values()) == {distributed.BATCH}


def _full_batch(cfg, n, seed):
    """Every field any loss reads: K = 2 negatives (the second one padding), P = 2 positives."""
    rng = np.random.default_rng(seed)
    ids = lambda *shape: rng.integers(1000, 2000, (*shape, cfg.text.max_length), dtype=np.int32)
    neg_ids, pos_ids = ids(n, 2), ids(n, 2)
    return {**_batch(cfg, n, seed), "neg_input_ids": neg_ids, "neg_attention_mask": np.ones_like(neg_ids),
            "neg_mask": np.tile([True, False], (n, 1)), "pos_input_ids": pos_ids,
            "pos_attention_mask": np.ones_like(pos_ids), "pos_mask": np.ones((n, 2), bool)}  # fmt: skip


def _loss_and_grads(config, mesh, accumulation_steps, batch, pooled: bool):
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts)
    key = jax.random.key(3)
    if pooled:  # a locked tower's cached outputs instead of waveforms (clapcomp.train.locked_tower)
        model = nnx.merge(parts.graphdef, state.params, state.model_state)
        width = jax.eval_shape(lambda w, n: model.pool_audio(w, n, key=key), batch["waveform"], batch["lengths"])
        batch = {**batch, "audio_pooled": np.random.default_rng(5).standard_normal(width.shape, np.float32)}
    fn = step_lib.loss_fn(config.loss, lock_audio_tower=True)
    batch = {k: batch[k] for k in step_lib.batch_spec(config.loss, pooled=pooled)}
    step = step_lib.make_loss_and_grads(parts.graphdef, fn, mesh, accumulation_steps)
    return jax.jit(step)(state.params, state.model_state, batch, key)


@pytest.mark.parametrize(
    "loss, devices, pooled, overrides",
    [
        ("plain", 1, False, ("model.text.remat=nothing_saveable",)),
        ("compa", 1, True, ()),
        ("modular", 1, False, ("lora.rank=4",)),
        pytest.param("plain", 8, False, (), marks=pytest.mark.slow),
        pytest.param("compa", 8, False, ("mesh.fsdp=2", "fsdp_text=true"), marks=pytest.mark.slow),
        pytest.param("modular", 8, False, (), marks=pytest.mark.slow),
    ],
)
def test_accumulated_gradient_equals_the_whole_batch_gradient(loss, devices, pooled, overrides):
    """GradCache with A = 4 micro-batches against the A = 1 step on the same 32 samples: with the audio tower
    locked (no batch statistics in training mode) and dropout off, the same loss, the same gradient (global
    norm of the difference <= 1e-5 of the gradient's) and the same model state. Covers text remat, a batch of
    cached tower outputs (pooled), LoRA adapters, and an FSDP-sharded text tower."""
    config = load_config("tiny", loss, "freeze=audio_tower", *overrides)
    mesh = jax.make_mesh((devices // config.mesh.fsdp, config.mesh.fsdp), distributed.AXES,
                         devices=jax.devices()[:devices], axis_types=(AxisType.Auto,) * 2)  # fmt: skip
    batch = _full_batch(state_lib.model_config(config), 32, 0)
    loss1, state1, grads1 = _loss_and_grads(config, mesh, 1, batch, pooled)
    loss4, state4, grads4 = _loss_and_grads(config, mesh, 4, batch, pooled)
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-5)
    diff = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), grads4, grads1)
    assert float(optax.tree.norm(diff)) <= 1e-5 * float(optax.tree.norm(grads1))
    assert float(optax.tree.norm(grads1["text_tower"])) > 0  # the text tower is trained: its gradient is compared
    for a, b in zip(jax.tree_util.tree_leaves(state4), jax.tree_util.tree_leaves(state1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_accumulation_refuses_a_batch_it_cannot_split(setup):
    config, mesh, parts, state = setup
    step = step_lib.make_loss_and_grads(parts.graphdef, step_lib.loss_fn("plain"), mesh, 3)
    with pytest.raises(ValueError, match=r"global batch of 8 .* accumulation_steps=3 .* multiple of 24"):
        step(state.params, state.model_state, _batch(parts.cfg, 8, 0), jax.random.key(0))
