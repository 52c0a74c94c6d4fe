"""LoRA (clapcomp.models.lora): which projections are wrapped, the adapted layer and its merge against
NumPy float64 (W + alpha / rank * A @ B), and the merged model's embeddings against the adapted model's."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clapcomp.models import lora
from clapcomp.models.clap import ClapModel
from clapcomp.models.configs import AudioConfig, ClapConfig, HTSATConfig, TextConfig

CFG = ClapConfig(
    audio=AudioConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, f_max=4000.0, clip_seconds=1.0),
    htsat=HTSATConfig(n_mels=16, spec_size=64, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4),
    text=TextConfig(vocab_size=300, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                    max_position_embeddings=40, max_length=16),
    projection_dim=8,
)  # fmt: skip
TEXT_PROJ = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
AUDIO_PROJ = ("query", "key", "value", "out", "fc1", "fc2")


def _adapted(rank=2, alpha=6.0, targets=lora.DEFAULT_TARGETS, seed=0):
    """A random ClapModel of CFG with adapters whose B is random too (as after training)."""
    model = lora.wrap(ClapModel(CFG, rngs=nnx.Rngs(seed)), lora.LoRAConfig(rank, alpha, targets), nnx.Rngs(seed + 1))
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, lora.Adapted):
            node.lora_b[...] = jnp.asarray(rng.normal(0, 0.2, node.lora_b[...].shape), jnp.float32)
    return model


def _names(model):
    return {".".join(map(str, p)) for p, n in nnx.iter_graph(model) if isinstance(n, lora.Adapted)}


def test_default_targets_are_the_attention_and_mlp_projections():
    model = _adapted()
    want = {f"text_tower.layers.{i}.{p}" for i in range(2) for p in TEXT_PROJ}
    want |= {f"audio_tower.stages.{s}.blocks.0.{p}" for s in range(2) for p in AUDIO_PROJ}
    assert _names(model) == want  # not the patch merging, the pooler, the projection heads
    only_text_query = _adapted(targets=r"^text_tower\..*\.query$")
    assert _names(only_text_query) == {"text_tower.layers.0.query", "text_tower.layers.1.query"}


def test_new_adapters_leave_the_model_unchanged_and_share_its_weights():
    base = ClapModel(CFG, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(5, 300, (2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    want = np.asarray(base.embed_tokens(ids, mask))
    kernel = base.text_tower.layers[0].query.kernel
    model = lora.wrap(base, lora.LoRAConfig(4, 8.0), nnx.Rngs(1))
    assert model.text_tower.layers[0].query.base_module.kernel is kernel  # shared, not copied
    assert np.abs(np.asarray(model.text_tower.layers[0].query.lora_a[...])).max() > 0
    np.testing.assert_array_equal(np.asarray(model.embed_tokens(ids, mask)), want)  # B = 0


def test_adapted_layer_and_its_merge_equal_the_float64_formula():
    model = _adapted(rank=3, alpha=6.0)
    layer = model.text_tower.layers[1].ffn_in
    w, b = np.asarray(layer.base_module.kernel[...], np.float64), np.asarray(layer.base_module.bias[...], np.float64)
    a, bb = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
    x = np.random.default_rng(1).standard_normal((5, 16))
    merged_w = w + (6.0 / 3) * a @ bb
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x, jnp.float32))), x @ merged_w + b, rtol=1e-5, atol=1e-5)
    lora.merge(model)
    plain = model.text_tower.layers[1].ffn_in
    assert type(plain) is nnx.Linear
    np.testing.assert_allclose(np.asarray(plain.kernel[...], np.float64), merged_w, rtol=1e-6, atol=1e-7)


def test_merged_model_embeds_like_the_adapted_one_with_a_plain_parameter_tree():
    model = _adapted()
    rng = np.random.default_rng(2)
    audio = jnp.asarray(0.1 * rng.standard_normal((2, CFG.audio.clip_samples)), jnp.float32)
    lengths = jnp.asarray([CFG.audio.clip_samples, CFG.audio.clip_samples // 2], jnp.int32)
    ids = rng.integers(5, 300, (3, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < np.array([[16], [9], [4]])).astype(np.int32)
    want_a, want_t = np.asarray(model.embed_audio(audio, lengths)), np.asarray(model.embed_tokens(ids, mask))
    lora.merge(model)
    np.testing.assert_allclose(np.asarray(model.embed_audio(audio, lengths)), want_a, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.embed_tokens(ids, mask)), want_t, atol=1e-5)
    plain = jax_paths(nnx.state(ClapModel(CFG, rngs=nnx.Rngs(0)), nnx.Param))
    assert jax_paths(nnx.state(model, nnx.Param)) == plain  # what HF / safetensors export read


def jax_paths(state):
    return sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(state))


@pytest.mark.parametrize(
    "rank, targets, message",
    [(0, lora.DEFAULT_TARGETS, "rank >= 1"), (2, "nothing_matches_this", "matches no projection"),
     (2, "(", "no regular expression")],
)  # fmt: skip
def test_bad_settings_say_what_to_fix(rank, targets, message):
    with pytest.raises(ValueError, match=message):
        lora.wrap(ClapModel(CFG, rngs=nnx.Rngs(0)), lora.LoRAConfig(rank, 1.0, targets), nnx.Rngs(1))
