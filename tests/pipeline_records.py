"""What the data-pipeline tests share: a word-level tokenizer over a small vocabulary and records whose
ramps and captions say which record (and which crop) a batch row came from."""

import numpy as np

from clapcomp.tokenizer import Tokenizer

N, CLIP, L, K, P = 12, 4000, 8, 3, 2
WORDS = (
    ["<pad>", "<unk>"]
    + [f"r{i}" for i in range(N)]
    + [f"n{i}" for i in range(5)]
    + [
        "record",
        "first",
        "second",
        "neg",
        "pos",
        "a",
        "dog",
        "barks",
        "then",
        "man",
        "speaks",
        "followed",
        "by",
        "after",
    ]
)


def word_tokenizer():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    t = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(t, max_length=L)


def record(i):
    """Record i: a monotonic ramp of 2000 + 500 i samples (so any crop can be located)."""
    return {
        "key": f"k{i}",
        "audio": np.linspace(-0.9, 0.9, 2000 + 500 * i).astype(np.float32),
        "sample_rate": 16000,
        "captions": [f"record r{i} first", f"record r{i} second"],
        "negatives": [f"neg n{j}" for j in range(i % 5)],
        "positives": [f"pos n{j}" for j in range(i % 3)],
    }
