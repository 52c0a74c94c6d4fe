"""Composition-aware hard-negative captions by deterministic rules.

Rules (each fires only where the caption has its structure and the result differs):
- order: events joined by temporal connectives are reordered. "A followed by B" -> "B followed
  by A" and "A preceded by B" (also "then", "and then", "after which": swap only); "A before B"
  -> "B before A" and "A after B"; "A after B" -> "B after A" and "A before B" (the same for
  "preceded by"); "A while B" -> "A before B", "B before A". With
  three or more events: each adjacent swap and the full reversal. Every segment must have at
  least two words (so "a bird sings before dawn" is left alone).
- attribute swap: two attributes of the same kind (loudness, pitch, duration, ...) on different
  sources trade places: "a loud dog and a quiet man" -> "a quiet dog and a loud man". Same
  words, different order.
- attribute flip: one attribute becomes its antonym: "a loud dog" -> "a quiet dog".
- event substitution: one event phrase from the vocabulary is replaced by another vocabulary
  phrase absent from the caption ("a dog followed by a car" -> "a cat followed by a car").
`a`/`an` are fixed after every edit. `NegativeGenerator.generate` interleaves the rules in that
priority (order, swap, flip, substitution) and is a pure function of (seed, caption, k).

The LLM backend and `clapcomp data negatives` (which writes negatives into a manifest): `clapcomp.data.llm_negatives`.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

_CONNECTIVE = re.compile(
    r"(\s*,?\s+\b(?:followed by|preceded by|and then|after which|then|before|after|while)\b,?\s+)", re.I
)
_SEQUENTIAL = {"followed by", "preceded by", "and then", "after which", "then", "before", "after"}
_FLIP_TIME = {"before": "after", "after": "before", "followed by": "preceded by", "preceded by": "followed by"}

ATTRIBUTE_KINDS = {
    "loudness": ("loud", "quiet", "soft", "faint"),
    "pitch": ("high-pitched", "low-pitched", "high", "low", "deep", "shrill"),
    "duration": ("short", "long", "brief", "prolonged"),
    "speed": ("fast", "slow", "rapid"),
    "distance": ("distant", "nearby"),
    "gender": ("male", "female"),
    "age": ("young", "old"),
    "size": ("big", "small", "large", "little"),
}
ANTONYMS = {
    "loud": "quiet", "quiet": "loud", "soft": "loud", "faint": "loud",
    "high-pitched": "low-pitched", "low-pitched": "high-pitched", "high": "low", "low": "high",
    "deep": "high-pitched", "shrill": "deep", "short": "long", "long": "short", "brief": "long",
    "fast": "slow", "slow": "fast", "rapid": "slow", "distant": "nearby", "nearby": "distant",
    "male": "female", "female": "male", "young": "old", "old": "young",
    "big": "small", "small": "big", "large": "small", "little": "big",
}  # fmt: skip
_KIND = {w: kind for kind, words in ATTRIBUTE_KINDS.items() for w in words}
DEFAULT_VOCABULARY = (
    "dog", "cat", "bird", "man", "woman", "child", "baby", "crowd", "car", "truck", "train",
    "engine", "siren", "bell", "horn", "door", "water", "rain", "wind", "music", "phone", "clock",
)  # fmt: skip
_WORD = re.compile(r"([A-Za-z]+(?:-[A-Za-z]+)*)")
_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")
_ARTICLE = re.compile(r"\b(an?|An?)\s+([A-Za-z])")
_FINAL_PUNCTUATION = re.compile(r"[.!?]+$")


def normalize(caption: str) -> str:
    """Case-, space- and final-punctuation-insensitive form used to compare captions."""
    return " ".join(caption.casefold().split()).rstrip(".!?;:, ")  # split(): the whitespace `\\s` matches


def clean_negatives(negatives: Sequence[str], positives: Sequence[str]) -> tuple[list[str], int]:
    """(`negatives` without those equal to a positive caption after `normalize`, how many dropped).

    A negative equal to the row's own caption would sit in its own softmax denominator: the
    contradictory supervision the CompA losses must never see."""
    same = {normalize(p) for p in positives}
    kept = [n for n in negatives if normalize(n) not in same]
    return kept, len(negatives) - len(kept)


def _article(m: re.Match) -> str:
    art, word = m.group(1), m.group(2)
    an = word[0].lower() in "aeiou"
    new = ("an" if an else "a") if art.islower() else ("An" if an else "A")
    return f"{new} {word}"


def _fix_articles(text: str) -> str:
    return _ARTICLE.sub(_article, text)


class _Caption:
    """Caption split into a lower-case-initial body plus its capitalisation and final punctuation."""

    def __init__(self, caption: str):
        text = caption.strip()
        m = _FINAL_PUNCTUATION.search(text)
        self.tail = m.group(0) if m else ""
        body = text[: len(text) - len(self.tail)].strip()
        first = body.split(" ", 1)[0] if body else ""
        self.upper = bool(body[:1].isupper()) and not (len(first) > 1 and first.isupper())
        self.body = body[:1].lower() + body[1:] if self.upper else body

    def finish(self, body: str) -> str:
        body = _fix_articles(" ".join(body.split()))
        return (body[:1].upper() + body[1:] if self.upper else body) + self.tail


def order_swaps(caption: str) -> list[str]:
    """Reorderings across temporal connectives (see module docstring)."""
    c = _Caption(caption)
    parts = _CONNECTIVE.split(c.body)
    segs, seps = parts[0::2], parts[1::2]
    conns = [sep.strip(" ,").lower() for sep in seps]
    if not conns or any(len(s.split()) < 2 for s in segs):
        return []

    def join(segs_, seps_):
        return "".join([segs_[0]] + [sep + s for sep, s in zip(seps_, segs_[1:], strict=True)])

    def with_word(j, word):  # separators with the j-th connective replaced by `word`
        return seps[:j] + [seps[j].replace(seps[j].strip(" ,"), word)] + seps[j + 1 :]

    out = []
    for j, cn in enumerate(conns):
        swapped = segs[:j] + [segs[j + 1], segs[j]] + segs[j + 2 :]
        if cn in _SEQUENTIAL:
            out.append(join(swapped, seps))
        if cn in _FLIP_TIME:
            out.append(join(segs, with_word(j, _FLIP_TIME[cn])))
        if cn == "while":
            out.append(join(segs, with_word(j, "before")))
            out.append(join(swapped, with_word(j, "before")))
    if len(segs) >= 3 and all(cn in _SEQUENTIAL for cn in conns):
        out.append(join(segs[::-1], seps))
    return _distinct(caption, [c.finish(b) for b in out])


def _words(caption: str) -> tuple[_Caption, list[str]]:
    c = _Caption(caption)
    return c, _WORD.split(c.body)  # words at odd indices, separators at even ones


def attribute_swaps(caption: str) -> list[str]:
    """Swap two different same-kind attributes separated by at least one other word."""
    c, toks = _words(caption)
    idx = [i for i in range(1, len(toks), 2) if toks[i].lower() in _KIND]
    out = []
    for a, i in enumerate(idx):
        for j in idx[a + 1 :]:
            wi, wj = toks[i].lower(), toks[j].lower()
            if _KIND[wi] == _KIND[wj] and wi != wj and j - i > 2:
                new = list(toks)
                new[i], new[j] = toks[j], toks[i]
                out.append(c.finish("".join(new)))
    return _distinct(caption, out)


def attribute_flips(caption: str) -> list[str]:
    """Replace one attribute by its antonym."""
    c, toks = _words(caption)
    out = []
    for i in range(1, len(toks), 2):
        if toks[i].lower() in ANTONYMS:
            new = list(toks)
            new[i] = ANTONYMS[toks[i].lower()]
            out.append(c.finish("".join(new)))
    return _distinct(caption, out)


def event_substitutions(
    caption: str, vocabulary: Sequence[str], rng: np.random.Generator, per_event: int = 2
) -> list[str]:
    """Replace one vocabulary phrase (longest match, whole words) by `per_event` random others."""
    c = _Caption(caption)
    pattern, words, single_words = _vocabulary_patterns(tuple(vocabulary))
    if pattern is None:
        return []
    matches = list(pattern.finditer(c.body))
    if single_words and c.body.isascii():  # one-word ASCII phrases: whole-word match = one of the body's words
        present = set(_ASCII_WORD.findall(c.body.lower()))
        pool = [p for p, _ in words if p not in present]
    else:
        present = {m.group(1).lower() for m in matches}
        pool = [p for p, word in words if p not in present and not word.search(c.body)]
    out = []
    for m in matches:
        if not pool:
            break
        for r in rng.choice(len(pool), size=min(per_event, len(pool)), replace=False):
            out.append(c.finish(c.body[: m.start()] + pool[int(r)] + c.body[m.end() :]))
    return _distinct(caption, out)


@functools.lru_cache(maxsize=16)
def _vocabulary_patterns(
    vocabulary: tuple[str, ...],
) -> tuple[re.Pattern | None, list[tuple[str, re.Pattern]], bool]:
    """A vocabulary's phrases (lower case, longest first) compiled once: (the longest-match alternation or None
    when empty, [(phrase, its whole-word pattern)], whether every phrase is one ASCII word)."""
    phrases = sorted({v.strip().lower() for v in vocabulary if v.strip()}, key=lambda v: (-len(v), v))
    if not phrases:
        return None, [], False
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")\b", re.I)
    single_words = all(_ASCII_WORD.fullmatch(p) for p in phrases)
    return pattern, [(p, re.compile(r"\b" + re.escape(p) + r"\b", re.I)) for p in phrases], single_words


def _distinct(caption: str, candidates: Iterable[str], limit: int | None = None) -> list[str]:
    """`candidates` in order without repeats or the caption (after `normalize`); the first `limit` of them."""
    seen, out = {normalize(caption)}, []
    for cand in candidates:
        if len(out) == limit:
            break
        key = normalize(cand)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


class _Draws:
    """numpy's `Generator.choice(n, size, replace=False)` and `Generator.permutation(n)` for a fresh PCG64
    generator, computed in Python from its raw 64-bit outputs (numpy 2.x's algorithms: Floyd's sample + a
    Lemire-bounded shuffle, and a masked-rejection shuffle; small n only): the same numbers as numpy
    (tests: `tests/data/test_negatives.py`), so negatives stay those of earlier versions. One
    `random_raw` call per 16 outputs instead of numpy's per-call lock, GIL release and argument handling,
    which cost more than the draws when the pipeline's threads contend (~9% of the CPU per pcm16 sample in
    `benchmarks/pipeline_throughput.py`)."""

    _U32 = 0xFFFFFFFF

    def __init__(self, generator: np.random.Generator):
        self._bits, self._raw, self._at, self._high = generator.bit_generator, [], 0, None

    def _next32(self) -> int:  # numpy's pcg64_next32: the low half of a 64-bit output, the high half kept
        if self._high is not None:
            value, self._high = self._high, None
            return value
        if self._at == len(self._raw):
            self._raw, self._at = self._bits.random_raw(16).tolist(), 0
        value = self._raw[self._at]
        self._at += 1
        self._high = value >> 32
        return value & self._U32

    def _lemire(self, high: int) -> int:  # numpy's random_bounded_uint64(0, high), high < 2**32 - 1
        if high == 0:
            return 0
        n = high + 1
        m = self._next32() * n
        if (m & self._U32) < n:
            threshold = (self._U32 - high) % n
            while (m & self._U32) < threshold:
                m = self._next32() * n
        return m >> 32

    def _interval(self, high: int) -> int:  # numpy's random_interval(high), high < 2**32
        if high == 0:
            return 0
        mask = (1 << high.bit_length()) - 1
        while (value := self._next32() & mask) > high:
            pass
        return value

    def permutation(self, n: int) -> list[int]:
        if n >= 1 << 32:
            raise ValueError(f"permutation of {n} items: not computed here")
        out = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self._interval(i)
            out[i], out[j] = out[j], out[i]
        return out

    def choice(self, n: int, size: int, replace: bool = False) -> list[int]:
        if replace or not 0 <= size <= n < 1 << 32 or not (n <= 10_000 or size <= n // 50):
            raise ValueError(f"choice of {size} of {n} (replace={replace}): numpy does not use Floyd's sample there")
        out, chosen = [], set()
        for j in range(n - size, n):
            value = self._lemire(j)
            if value in chosen:
                value = j
            chosen.add(value)
            out.append(value)
        for i in range(size - 1, 0, -1):
            j = self._lemire(i)
            out[i], out[j] = out[j], out[i]
        return out


class NegativeGenerator:
    """Rule-based negatives. `generate(caption, k)` depends only on (seed, vocabulary, caption, k)."""

    def __init__(self, seed: int = 0, vocabulary: Sequence[str] | None = None):
        self.seed = int(seed)
        self.vocabulary = tuple(DEFAULT_VOCABULARY if vocabulary is None else vocabulary)

    def candidates(self, caption: str) -> dict[str, list[str]]:
        """All rule outputs, per rule, each list shuffled with the caption's own generator."""
        rng = _Draws(np.random.default_rng([self.seed, zlib.crc32(caption.encode("utf-8"))]))
        rules = {
            "order": order_swaps(caption),
            "attribute_swap": attribute_swaps(caption),
            "attribute_flip": attribute_flips(caption),
            "substitution": event_substitutions(caption, self.vocabulary, rng),
        }
        # a permutation of 0 or 1 items draws nothing: skipped
        return {name: [c[i] for i in rng.permutation(len(c))] if len(c) > 1 else c for name, c in rules.items()}

    def generate(self, caption: str, k: int) -> list[str]:
        """At most k distinct negatives, none equal to the caption; rules interleaved by priority."""
        lists = list(self.candidates(caption).values())
        ranked = (x[rank] for rank in range(max(map(len, lists), default=0)) for x in lists if rank < len(x))
        return _distinct(caption, ranked, k)  # lazily: normalises no more candidates than it needs
