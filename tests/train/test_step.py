"""`make_train_step`: built from objects (optimizer, schedule, loss), and the learning rate follows
the count of applied updates, so a skipped (NaN) step neither advances the schedule nor is logged
with a rate that was never applied. References: optax's own schedule and a hand-computed SGD update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
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
