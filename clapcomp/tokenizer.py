"""Text -> token ids with the `tokenizers` library, from a checkpoint's `tokenizer.json`.

Every text is padded / truncated to exactly `max_length` tokens (77 by default, as LAION-CLAP
trains: `padding="max_length", truncation=True`), so the text tower sees one static shape. The
special tokens (`<s> ... </s>` for RoBERTa, `[CLS] ... [SEP]` for BERT) come from the file's own
post-processor; truncation keeps the closing special token, as HF tokenizers do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clapcomp import fs

_PAD_TOKENS = ("<pad>", "[PAD]")


class Tokenizer:
    """`Tokenizer(texts: list[str]) -> (input_ids [B, L] int32, attention_mask [B, L] int32)`, L = max_length."""

    def __init__(self, tokenizer, *, max_length: int = 77, source: str = "<in memory>"):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
        self.max_length = max_length
        self.source = source
        self.pad_id = _pad_id(tokenizer, source)
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()  # padded here, in numpy: the same rows as the library's right padding, less work
        self._tok = tokenizer

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 77) -> Tokenizer:
        """Load a `tokenizer.json` (the `tokenizers` library format)."""
        from tokenizers import Tokenizer as _HFTokenizer

        path = fs.as_path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {path}; clapcomp needs a `tokenizer.json` (tokenizers-library format). "
                "Write one with `transformers.AutoTokenizer.from_pretrained(src).save_pretrained(dir)` "
                "or pass `tokenizer=` explicitly."
            )
        return cls(_HFTokenizer.from_str(path.read_text()), max_length=max_length, source=str(path))

    @classmethod
    def from_dir(cls, directory: str | Path, max_length: int = 77) -> Tokenizer:
        """Load `<directory>/tokenizer.json`; a clear error names what the directory holds instead."""
        directory = fs.as_path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "no such directory"
            raise FileNotFoundError(
                f"missing tokenizer: {directory} has no tokenizer.json (found: {found}). Save the model's "
                "tokenizer there with `transformers.AutoTokenizer.from_pretrained(<hub id>).save_pretrained(dir)`, "
                "or pass `tokenizer=` (a clapcomp.Tokenizer or a path to a tokenizer.json) to clapcomp.load."
            )
        return cls.from_file(path, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("Tokenizer expects a list of strings, got a single str; wrap it: [text]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.max_length), np.int32), np.zeros((0, self.max_length), np.int32)
        ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.max_length), np.int32)
        for row, encoding in enumerate(self._tok.encode_batch_fast(texts)):  # no offsets computed
            tokens = encoding.ids  # at most max_length: truncated
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def _pad_id(tokenizer, source: str) -> int:
    """The pad id from the file's padding config, else the id of `<pad>` / `[PAD]`."""
    padding = json.loads(tokenizer.to_str()).get("padding") or {}
    if "pad_id" in padding and tokenizer.id_to_token(padding["pad_id"]) is not None:
        return int(padding["pad_id"])
    for token in _PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise ValueError(f"tokenizer {source} has no padding config and no {' / '.join(_PAD_TOKENS)} token")
