"""`config.freeze` (clapcomp.train.optim.make_optimizer + the train step): a frozen group's
parameters and a locked audio tower's BatchNorm statistics come out of a real train step bitwise
unchanged, while what trains moves; the unfrozen run is the control that shows the check can fail."""

import jax
import numpy as np
import pytest
from repo_configs import load_config  # tests/repo_configs.py

from clapcomp.train import distributed, optim
from clapcomp.train import state as state_lib
from clapcomp.train import step as step_lib


def _cnn_config(freeze):
    """configs/tiny.py with a 2-block CNN audio tower (BatchNorm on the mel bins and in every block)."""
    return load_config(
        "tiny",
        None,
        "model.audio_tower=cnn",
        "model.cnn.n_mels=16",
        "model.cnn.channels=(4, 8)",
        "model.cnn.head=max",
        "model.cnn.dropout=0.0",
        "model.cnn.spec_augment=false",
        "optimizer.warmup_steps=0",
        f"freeze={freeze}",
    )  # fmt: skip  (warmup 0: the first step updates)


def _batch(cfg, n=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, (n, cfg.text.max_length), dtype=np.int32)
    return dict(waveform=0.1 * rng.standard_normal((n, cfg.audio.clip_samples), dtype=np.float32),
                lengths=np.full(n, cfg.audio.clip_samples, np.int32), input_ids=ids, attention_mask=np.ones_like(ids))  # fmt: skip


def _one_step(freeze):
    """(state before, state after) of one train step, as numpy."""
    config = _cnn_config(freeze)
    mesh = distributed.make_mesh()
    parts = state_lib.setup(config, mesh)
    state = state_lib.init_state(parts)
    before = jax.tree_util.tree_map(np.array, state)
    train_step = step_lib.from_parts(parts, mesh, loss=config.loss, freeze=config.freeze)
    after, metrics = train_step(state, _batch(parts.cfg))
    assert int(metrics["nonfinite"]) == 0
    return before, jax.tree_util.tree_map(np.array, after)


def _same(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(x.tobytes() == y.tobytes() for x, y in zip(la, lb, strict=True))


def _all_moved(a, b) -> bool:
    return all(
        x.tobytes() != y.tobytes()
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def unfrozen():
    return _one_step("")


def test_locked_audio_tower_keeps_params_and_batchnorm_stats_while_its_projection_trains(unfrozen):
    before, after = _one_step("audio_tower")
    assert jax.tree_util.tree_leaves(before.model_state["audio_tower"])  # the tower has BatchNorm statistics
    assert _same(before.params["audio_tower"], after.params["audio_tower"])
    assert _same(before.model_state, after.model_state)
    for group in ("audio_projection", "text_projection", "logit_scale"):
        assert _all_moved(before.params[group], after.params[group]), group
    assert not _same(before.params["text_tower"], after.params["text_tower"])
    # control: the same step unfrozen moves the tower and its BatchNorm statistics
    before, after = unfrozen
    assert _all_moved(before.params["audio_tower"], after.params["audio_tower"])
    assert _all_moved(before.model_state["audio_tower"], after.model_state["audio_tower"])


def test_frozen_audio_side_keeps_its_projection_too():
    before, after = _one_step("audio")
    for group in ("audio_tower", "audio_projection"):
        assert _same(before.params[group], after.params[group]), group
    assert _same(before.model_state, after.model_state)
    assert _all_moved(before.params["text_projection"], after.params["text_projection"])


def test_locked_tower_embeds_as_at_inference():
    """The loss's audio embedding with a locked tower is the inference embedding (no crop: full clips)."""
    from flax import nnx

    from clapcomp.models.clap import ClapModel

    cfg = state_lib.model_config(_cnn_config("audio_tower"))
    model = ClapModel(cfg, rngs=nnx.Rngs(0))
    batch = _batch(cfg)
    locked = step_lib._embed_audio(model, batch, jax.random.key(1), lock_audio_tower=True)
    reference = model.embed_audio(batch["waveform"], batch["lengths"])
    np.testing.assert_array_equal(np.asarray(locked), np.asarray(reference))


def test_unknown_freeze_names_the_choices():
    with pytest.raises(
        ValueError, match=r"config.freeze must be '' or one of \['audio', 'text', 'audio_tower'\], got 'cnn'"
    ):
        optim.frozen_params("cnn")
