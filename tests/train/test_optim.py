"""Parameter groups (clapcomp.train.optim): the layer ids and multipliers against a hand-written table,
each group's update against a separate optax AdamW at its own learning rate, a frozen group bit-identical
after real train steps with no Adam moments, and one resume with groups bit-identical to a straight run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp.train import distributed, optim
from clapcomp.train import state as state_lib
from clapcomp.train import step as step_lib


def _params(*overrides):
    """The abstract parameter tree of configs/tiny.py with `overrides`, HTSAT depths (2, 2), 3 text layers."""
    config = load_config("tiny", None, "model.htsat.depths=(2, 2)", "model.text.num_layers=3", *overrides)
    return config, state_lib.abstract_model(state_lib.model_config(config))[1]


# Hand-assigned layer ids (BEiT: input side 0, block i -> i + 1, after the blocks L + 1), by path prefix.
AUDIO_IDS = {"bn0": 0, "patch_embed": 0, "stages.0.blocks.0": 1, "stages.0.blocks.1": 2, "stages.0.downsample": 2,
             "stages.1.blocks.0": 3, "stages.1.blocks.1": 4, "norm": 5}  # fmt: skip
TEXT_IDS = {"word_embeddings": 0, "position_embeddings": 0, "token_type_embeddings": 0, "embed_norm": 0,
            "layers.0": 1, "layers.1": 2, "layers.2": 3}  # fmt: skip


def _expected_id(name, tower, table):
    rel = name[len(tower) + 1 :]
    (match,) = [i for prefix, i in table.items() if rel.startswith(prefix + ".")]
    return match


def test_layer_decay_and_unlock_last_follow_the_formula():
    _, params = _params()
    mults = optim.multipliers(params, lr_mults=[("^logit_scale$", 0.5), ("^text_projection\\.", 3.0)],
                              layer_decay={"audio": 0.8, "text": 0.6}, unlock_last={"text": 2})  # fmt: skip
    names = [state_lib.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert {n.split(".")[0] for n in names} >= {"audio_tower", "text_tower"}
    for n in names:
        if n.startswith("audio_tower."):
            want = 0.8 ** (4 + 1 - _expected_id(n, "audio_tower", AUDIO_IDS))
        elif n.startswith("text_tower."):
            layer = _expected_id(n, "text_tower", TEXT_IDS)
            want = 0.0 if layer <= 3 - 2 else 0.6 ** (3 + 1 - layer)  # unlock_last 2: layers.1, layers.2 train
        else:
            want = {"logit_scale": 0.5, "text_projection": 3.0}.get(n.split(".")[0], 1.0)
        assert mults[n] == pytest.approx(want, rel=1e-12), n
    groups = dict(optim.groups(mults))
    assert groups["text_tower.layers.0"] == 0.0 and groups["audio_tower.stages.0.downsample"] == pytest.approx(0.8**3)
    assert groups["audio_projection"] == 1.0


def test_freeze_is_a_zero_group_that_lr_mults_cannot_reopen():
    _, params = _params()
    mults = optim.multipliers(params, lr_mults=[(".", 2.0)], freeze="audio")
    for n, m in mults.items():
        assert m == (0.0 if n.startswith(("audio_tower.", "audio_projection.")) else 2.0), n


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr_mults=[("(", 1.0)]), "is no regular expression"),
        (dict(lr_mults=["text_tower"]), "is not a \\(regex, multiplier\\) pair"),
        (dict(layer_decay={"vision": 0.5}), "unknown tower 'vision'"),
        (dict(layer_decay={"text": 1.5}), "expected 0 < decay <= 1"),
        (dict(unlock_last={"text": 4}), "the text tower has 3 blocks"),
    ],
)
def test_bad_group_settings_say_what_to_fix(kwargs, message):
    _, params = _params()
    with pytest.raises(ValueError, match=message):
        optim.multipliers(params, **kwargs)


def test_each_group_updates_as_its_own_adamw_at_its_rate():
    """The grouped optimizer (no clip) against one optax.adamw per parameter at lr x its multiplier."""
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)},
              "b": {"kernel": rng.standard_normal((4, 2)).astype(np.float32), "bias": np.ones(2, np.float32)},
              "c": np.float32(0.3)}  # fmt: skip
    mults = {"a.kernel": 0.25, "b.kernel": 1.0, "b.bias": 3.0, "c": 0.0}
    schedule = optim.learning_rate(0.1, 2, 10)
    tx = optim.make_optimizer(params, schedule, mults, grad_clip=0.0, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)
    state, p = tx.init(params), params
    refs = {}
    for name, m in mults.items():
        leaf = params[name] if "." not in name else params[name.split(".")[0]][name.split(".")[1]]
        decays = np.ndim(leaf) >= 2
        ref_tx = optax.adamw(
            lambda s, m=m: m * schedule(s), b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1 if decays else 0.0
        )
        refs[name] = [ref_tx, ref_tx.init(leaf), leaf]
    for step in range(4):
        grads = jax.tree_util.tree_map(lambda x, step=step: np.cos(np.asarray(x) * (step + 1)), p)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        for ref in refs.values():
            g = np.cos(np.asarray(ref[2]) * (step + 1))
            u, ref[1] = ref[0].update(g, ref[1], ref[2])
            ref[2] = optax.apply_updates(ref[2], u)
    flat = {state_lib.path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(p)}
    for name, (_, _, want) in refs.items():
        np.testing.assert_allclose(flat[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
    assert flat["c"] == params["c"]


def _batch(cfg, n=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, (n, cfg.text.max_length), dtype=np.int32)
    return dict(waveform=0.1 * rng.standard_normal((n, cfg.audio.clip_samples), dtype=np.float32),
                lengths=np.full(n, cfg.audio.clip_samples, np.int32), input_ids=ids, attention_mask=np.ones_like(ids))  # fmt: skip


@pytest.fixture(scope="module")
def grouped_run():
    """(Setup, [params before, after step 1, 2, 3] as numpy, the final state) of three real train steps of
    configs/tiny.py with frozen and decayed groups and an EMA of the weights."""
    config = load_config("tiny", None, "optimizer.warmup_steps=0", "unlock_last.audio=1", "ema_decay=0.9",
                         "optimizer.lr_mults=[('^logit_scale$', 0)]", "optimizer.layer_decay.text=0.5")  # fmt: skip
    mesh = distributed.make_mesh()
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts)
    history = [jax.tree_util.tree_map(np.array, state.params)]
    train_step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze)
    for seed in range(3):  # from the second step on, Adam moments of a frozen group would move it
        state, metrics = train_step(state, _batch(parts.cfg, seed=seed))
        assert int(metrics["nonfinite"]) == 0
        history.append(jax.tree_util.tree_map(np.array, state.params))
    return parts, history, state


def test_frozen_groups_stay_bit_identical_and_keep_no_moments(grouped_run):
    parts, history, state = grouped_run
    before, after = history[0], history[-1]
    frozen = {prefix for prefix, m in parts.lr_groups if m == 0}
    assert frozen == {"audio_tower.bn0", "audio_tower.patch_embed", "audio_tower.stages.0", "logit_scale"}
    n_frozen = n_trained = 0
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(after), strict=True):
        name = state_lib.path_name(path)
        if any(name == f or name.startswith(f + ".") for f in frozen):
            assert x.tobytes() == y.tobytes(), name
            n_frozen += 1
        else:
            assert x.tobytes() != y.tobytes(), name
            n_trained += 1
    mu = [s.mu for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
          if hasattr(s, "mu")]  # fmt: skip
    assert n_frozen and len(mu) == 1 and len(jax.tree_util.tree_leaves(mu[0])) == n_trained
    # the step skips the frozen leaves in the EMA (test_ema_update_keeps_frozen_leaves_bit_identical)
    names = [state_lib.path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(before)]
    assert parts.frozen == {n for n in names if any(n == f or n.startswith(f + ".") for f in frozen)}
    for name, x, ema in zip(
        names, jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.ema), strict=True
    ):
        assert name not in parts.frozen or np.asarray(ema).tobytes() == x.tobytes(), name


def test_ema_equals_a_numpy_running_average_of_the_steps_params(grouped_run):
    _, history, state = grouped_run
    want = jax.tree_util.tree_map(lambda x: x.astype(np.float64), history[0])  # the average starts at the init
    for params in history[1:]:
        want = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p.astype(np.float64), want, params)
    got = jax.tree_util.tree_map(np.asarray, state.ema)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=state_lib.path_name(path))
    kernel = history[-1]["text_projection"]["linear1"]["kernel"]  # control: the EMA is not the weights
    assert np.abs(state.ema["text_projection"]["linear1"]["kernel"] - kernel).max() > 1e-4


def test_ema_update_keeps_frozen_leaves_bit_identical():
    """Frozen leaves (multiplier 0) are not averaged: decay * w + (1 - decay) * w rounded op by op (as here,
    eagerly, or on a backend that does not fuse it into one multiply-add) drifts from w by ulps. The others
    follow a float64 running average."""
    rng = np.random.default_rng(0)
    base, adapter = (rng.standard_normal(1000).astype(np.float32) for _ in range(2))
    params = {"base": jnp.asarray(base), "adapter": jnp.asarray(adapter + 1)}
    ema = {"base": jnp.asarray(base), "adapter": jnp.asarray(adapter)}
    averaged, want = ema, adapter.astype(np.float64)
    for _ in range(3):
        ema = optim.ema_update(ema, params, 0.9, frozen=frozenset({"base"}))
        averaged = optim.ema_update(averaged, params, 0.9)
        want = 0.9 * want + 0.1 * (adapter + 1).astype(np.float64)
    assert np.asarray(ema["base"]).tobytes() == base.tobytes()
    assert np.asarray(averaged["base"]).tobytes() != base.tobytes()  # control: averaging w with itself drifts
    np.testing.assert_allclose(np.asarray(ema["adapter"]), want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # trains twice
def test_resume_with_groups_is_bitwise_identical_and_groups_are_recorded(tmp_path, tiny, helpers):
    from flax import nnx

    from clapcomp import load

    config = tiny("plain")
    config.unlock_last.audio, config.optimizer.layer_decay.text = 1, 0.5
    config.optimizer.lr_mults = [("^audio_projection\\.", 0.25)]
    config.ema_decay = 0.9
    config.total_steps, config.ckpt_every = 4, 2
    final, resumed_final = helpers.straight_and_resumed(config, tmp_path)  # resumed after step 2's checkpoint
    assert final.ema is not None  # the EMA is checkpointed and part of the bitwise comparison
    helpers.assert_states_bitwise_equal(final, resumed_final)
    resumed = tmp_path / "resumed"
    for raw_weights, want in ((False, final.ema), (True, final.params)):  # load: the EMA unless told otherwise
        model = load(resumed, raw_weights=raw_weights).model
        got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        helpers.assert_states_bitwise_equal(jax.tree_util.tree_map(np.asarray, got), want)
    recorded = dict(map(tuple, json.loads((resumed / "config.json").read_text())["lr_groups"]))
    assert recorded["audio_projection"] == 0.25 and recorded["audio_tower.stages.0"] == 0.0
    assert recorded["text_tower.layers"] == 0.5 and recorded["text_tower.embed_norm"] == 0.25
