"""Text towers vs HF transformers (random weights, padded token ids) and the MiniLM checkpoint vs
sentence-transformers; tokenizer vs HF's fast tokenizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from clapcomp.convert.hf import import_rows, text_config_from_hf, text_rows
from clapcomp.models.text import TextEncoder

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every float parameter ~ N(0, 0.5) so that LayerNorm gains / biases matter too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def padded_ids(rng: np.random.Generator, lengths: list[int], width: int, vocab: int, pad: int, bos: int, eos: int):
    ids = np.full((len(lengths), width), pad, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, vocab, n)
        ids[i, 0], ids[i, n - 1] = bos, eos
        mask[i, :n] = 1
    return ids, mask


def ours_from_torch(hf_model: torch.nn.Module, cfg) -> TextEncoder:
    tower = TextEncoder(cfg, rngs=nnx.Rngs(0))
    tensors = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    import_rows(tensors, tower, text_rows(cfg))
    return tower


def test_roberta_tower_matches_hf_clap_text_model():
    from transformers import ClapTextConfig, ClapTextModel

    hf_cfg = ClapTextConfig(**TINY)
    hf = ClapTextModel(hf_cfg).eval()
    randomise(hf, 0)
    cfg = text_config_from_hf(hf_cfg.to_dict())
    tower = ours_from_torch(hf, cfg)
    ids, mask = padded_ids(np.random.default_rng(0), [12, 5, 2], 12, 99, pad=1, bos=0, eos=2)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output.numpy()
    ours = np.asarray(jax.jit(lambda i, m: tower(i, m))(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    assert ours.shape == (3, 32)
    assert np.abs(ref).mean() > 0.1  # outputs are not saturated / degenerate
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_roberta_position_ids_follow_padding_idx():
    cfg = text_config_from_hf(TINY)
    tower = TextEncoder(cfg, rngs=nnx.Rngs(0))
    ids = jnp.array([[0, 7, 8, 2, 1, 1], [0, 2, 1, 1, 1, 1]])
    expected = np.array([[2, 3, 4, 5, 1, 1], [2, 3, 1, 1, 1, 1]])  # pad_token_id = 1: real tokens from 2
    np.testing.assert_array_equal(np.asarray(tower.position_ids(ids)), expected)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_bert_tower_matches_hf_bert_model(pooling):
    from transformers import BertConfig, BertModel

    hf_cfg = BertConfig(**TINY, type_vocab_size=2, pad_token_id=0)
    hf = BertModel(hf_cfg).eval()
    randomise(hf, 1)
    cfg = text_config_from_hf(hf_cfg.to_dict(), family="bert", pooling=pooling)
    tower = ours_from_torch(hf, cfg)
    ids, mask = padded_ids(np.random.default_rng(1), [9, 4, 3], 9, 99, pad=0, bos=1, eos=2)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    h = out.last_hidden_state.numpy()
    m = mask[..., None].astype(np.float64)
    ref = {"mean": (h * m).sum(1) / m.sum(1), "cls": h[:, 0], "pooler": out.pooler_output.numpy()}[pooling]
    ours = np.asarray(tower(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_dropout_only_in_training_and_keyed():
    cfg = text_config_from_hf(TINY)
    tower = TextEncoder(cfg, rngs=nnx.Rngs(0))
    ids, mask = padded_ids(np.random.default_rng(2), [6, 3], 6, 99, pad=1, bos=0, eos=2)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    k = jax.random.key(0)
    eval_out = tower(ids, mask)
    np.testing.assert_array_equal(np.asarray(tower(ids, mask, key=k)), np.asarray(eval_out))
    a, b = tower(ids, mask, train=True, key=k), tower(ids, mask, train=True, key=k)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(eval_out)).max() > 1e-3
    with pytest.raises(ValueError, match="needs a PRNG"):
        tower(ids, mask, train=True)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    cfg = text_config_from_hf(TINY)
    f32 = TextEncoder(cfg, rngs=nnx.Rngs(3))
    bf16 = TextEncoder(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    ids, mask = padded_ids(np.random.default_rng(3), [7, 4], 7, 99, pad=1, bos=0, eos=2)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    out = bf16(ids, mask)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(f32(ids, mask)), atol=5e-2)


def test_bad_shapes_are_refused():
    tower = TextEncoder(text_config_from_hf(TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        tower(jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="position table"):
        tower(jnp.zeros((1, 60), jnp.int32), jnp.ones((1, 60), jnp.int32))
