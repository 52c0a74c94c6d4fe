"""HF ClapModel dir <-> clapcomp: config mapping, safetensors and pytorch_model.bin import, export
that transformers loads back bit-identically, and clear errors for layouts that do not fit."""

from __future__ import annotations

import json

import clap_reference as R  # tests/clap_reference.py (pytest pythonpath = tests)
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from clapcomp.convert.hf import clap_to_hf_tensors, config_from_hf, hf_config_from_clap, load_hf_clap, save_hf_clap


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = R.hf_clap(R.SMALL_AUDIO, fusion=True, seed=5)
    return hf, R.save_hf_dir(hf, tmp_path_factory.mktemp("hf"), tokenizer=False)


def test_config_mapping(hf_dir):
    _, d = hf_dir
    cfg = config_from_hf(json.loads((d / "config.json").read_text()))
    assert cfg.audio.fusion and cfg.htsat.enable_fusion
    assert cfg.htsat.depths == (1, 2) and cfg.htsat.embed_dim == 8 and cfg.htsat.hidden_size == 16
    assert (cfg.text.num_layers, cfg.text.hidden_size, cfg.text.vocab_size) == (2, 32, 300)
    assert cfg.projection_dim == 24 and cfg.audio.f_min == 50.0  # LAION front end without a preprocessor config
    assert config_from_hf(hf_config_from_clap(cfg)) == cfg
    with pytest.raises(ValueError, match=r"model_type 'bert'.*'clap'"):
        config_from_hf({"model_type": "bert"})


def test_export_round_trips_through_transformers(hf_dir, tmp_path):
    from transformers import ClapModel as HFClapModel

    hf, d = hf_dir
    cfg, model = load_hf_clap(d)
    out = save_hf_clap(model, cfg, tmp_path / "export")
    back = HFClapModel.from_pretrained(str(out)).eval()
    want, got = hf.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    assert set(clap_to_hf_tensors(model, cfg)) == set(load_file(str(d / "model.safetensors")))


def test_pytorch_bin_loads_like_safetensors(hf_dir, tmp_path):
    hf, d = hf_dir
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    _, a = load_hf_clap(d)
    _, b = load_hf_clap(tmp_path)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_layouts_are_named(hf_dir, tmp_path):
    _, d = hf_dir
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_hf_clap(tmp_path)
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    (tmp_path / "weights.ckpt").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"expected one of \['model.safetensors'.*found \['config.json', 'weights.ckpt'\]"
    ):
        load_hf_clap(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    save_file({**tensors, "extra_head.weight": np.zeros(3, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no place in the model.*extra_head\.weight"):
        load_hf_clap(tmp_path)
    bad = dict(tensors)
    bad["text_projection.linear1.weight"] = np.zeros((24, 31), np.float32)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"text_projection.linear1.weight: checkpoint shape \(31, 24\)"):
        load_hf_clap(tmp_path)
    del bad["text_model.pooler.dense.bias"]
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match=r"text_model\.pooler\.dense\.bias"):
        load_hf_clap(tmp_path)


def test_tokenizer_config_of_another_model_type_loads_as_the_file_says(tmp_path):
    """Neither WordPiece nor RoBERTa's BPE (here a WordLevel vocab): the generic fast class, same ids as ours."""
    from tokenizers import Tokenizer as T
    from tokenizers import models, pre_tokenizers
    from transformers import AutoTokenizer

    from clapcomp.convert.hf import hf_tokenizer_config
    from clapcomp.tokenizer import Tokenizer

    vocab = {"<pad>": 0, "<unk>": 1, "a": 2, "dog": 3, "barks": 4}
    tok = T(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = Tokenizer.from_file(tmp_path / "tokenizer.json", max_length=8)
    cfg = hf_tokenizer_config(tmp_path / "tokenizer.json", ours.pad_id, 8)
    assert (cfg["tokenizer_class"], cfg["pad_token"]) == ("PreTrainedTokenizerFast", "<pad>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["a dog barks", "dog cat"]
    ref = hf(texts, padding="max_length", max_length=8, return_tensors="np")
    np.testing.assert_array_equal(ours(texts)[0], ref["input_ids"])
    assert "token_type_ids" not in ref
