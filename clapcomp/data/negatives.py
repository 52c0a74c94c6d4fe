"""Composition-aware hard-negative captions: deterministic rules, and an optional LLM endpoint.

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

LLM backend (`LLMNegatives`): an OpenAI-compatible `/chat/completions` URL over https (http only
with `--allow-http`), through httpx (the `data` extra), which drops the key on a redirect to another
origin; the API key read from an environment variable at call time (never logged, cached or
written), replies cached in a JSON file keyed by caption, retries on 429/5xx/network errors after
`Retry-After` or an exponential backoff, `--llm-timeout` per reply. A malformed reply fails that
row (counted ``llm_failed``, rules fill in); three 401/403s in a row stop the command (exit 2).

CLI: `clapcomp data negatives --manifest in.jsonl --out out.jsonl [--k 3]
[--llm-url URL --llm-model M]` writes a `negatives` list into every row (rules without an LLM,
and as the fallback when the LLM fails or returns fewer than k usable captions).
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clapcomp import fs

log = logging.getLogger(__name__)

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


def _distinct(caption: str, candidates: list[str]) -> list[str]:
    seen, out = {normalize(caption)}, []
    for cand in candidates:
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
        seen, out = {normalize(caption)}, []
        for rank in range(max((len(x) for x in lists), default=0)):
            for cand in (x[rank] for x in lists if rank < len(x)):
                if len(out) == k:
                    return out
                key = normalize(cand)
                if key not in seen:
                    seen.add(key)
                    out.append(cand)
        return out


# ---------------------------------------------------------------------------------------------
# LLM backend

PROMPT = (
    "You write hard negative captions for training an audio-text model to understand composition. "
    "Given a caption of a sound scene, write {k} different captions that reuse mostly the same words "
    "but describe a different scene: swap the temporal order of events, swap attributes (loud/quiet, "
    "high/low, ...) between sound sources, or replace one sound event with another. Each must be "
    "grammatical and plausible. Reply with a JSON list of {k} strings and nothing else."
)


class LLMAuthError(Exception):
    """`AUTH_FAILURES_TO_STOP` 401/403 replies in a row: the key or the account is wrong; the command stops."""


AUTH_FAILURES_TO_STOP = 3
MAX_RETRY_AFTER_S = 600.0


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` header (seconds, or an HTTP date) -> seconds to wait, or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class LLMNegatives:
    """Negatives from an OpenAI-compatible chat-completions endpoint, with a JSON cache.

    The client (httpx, imported when a request is made) requires https unless `allow_http`, also
    for every redirect; httpx drops `Authorization` when a redirect leaves the URL's origin. 429 /
    5xx / network errors are retried after `Retry-After` (capped at `MAX_RETRY_AFTER_S`) or an
    exponential backoff; other 4xx and malformed replies (not JSON, no ``choices``) fail that caption
    (`RuntimeError`, counted ``llm_failed``); `AUTH_FAILURES_TO_STOP` 401/403s in a row raise
    `LLMAuthError`. The key is read from the environment per request and never stored or logged.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "CLAPCOMP_LLM_API_KEY",
        cache_path: str | Path | None = None,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 60.0,
        allow_http: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in (("https", "http") if allow_http else ("https",)):
            raise ValueError(
                f"LLM endpoint {url!r} is not https: the API key would travel in clear text. "
                "Use https://, or pass --allow-http (allow_http=True) for an endpoint on your own machine or network"
            )
        self.url, self.model, self.api_key_env, self.allow_http = url, model, api_key_env, allow_http
        self.retries, self.backoff, self.timeout, self.sleep = retries, backoff, timeout, sleep
        self.auth_failures = 0
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, list[str]] = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError:
                raise ValueError(f"LLM cache {self.cache_path} is not valid JSON; delete it to start afresh") from None

    def _check_scheme(self, request) -> None:  # httpx request hook: the first request and every redirect
        if request.url.scheme != "https" and not self.allow_http:
            raise RuntimeError(f"LLM endpoint {self.url} redirected to a non-https URL ({request.url.scheme}://...)")

    def _request(self, caption: str, k: int) -> str:
        import httpx

        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [{"role": "system", "content": PROMPT.format(k=k)}, {"role": "user", "content": caption}],
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        with httpx.Client(
            timeout=self.timeout, follow_redirects=True, max_redirects=5, event_hooks={"request": [self._check_scheme]}
        ) as client:
            for attempt in range(self.retries + 1):
                wait = None
                try:
                    resp = client.post(self.url, json=body, headers=headers)
                except httpx.TimeoutException:
                    problem = f"no reply within --llm-timeout {self.timeout:g} s"
                except httpx.TooManyRedirects:
                    raise RuntimeError(f"LLM endpoint {self.url}: too many redirects") from None
                except httpx.TransportError as e:
                    problem = type(e).__name__
                else:
                    if resp.status_code in (401, 403):
                        self.auth_failures += 1
                        if self.auth_failures >= AUTH_FAILURES_TO_STOP:
                            raise LLMAuthError(
                                f"LLM endpoint {self.url} refused {self.auth_failures} requests in a row "
                                f"(HTTP {resp.status_code}); check the key in ${self.api_key_env} and the account"
                            )
                    else:
                        self.auth_failures = 0
                    if resp.status_code == 200:
                        return self._content(resp)
                    if resp.status_code != 429 and resp.status_code < 500:
                        raise RuntimeError(
                            f"LLM endpoint {self.url} answered HTTP {resp.status_code}; check the URL, the model "
                            f"name {self.model!r} and the key in ${self.api_key_env}"
                        )
                    problem, wait = f"HTTP {resp.status_code}", _retry_after(resp.headers.get("Retry-After"))
                if attempt == self.retries:
                    raise RuntimeError(f"LLM endpoint {self.url} failed {attempt + 1} times (last: {problem})")
                delay = min(wait, MAX_RETRY_AFTER_S) if wait is not None else self.backoff * 2**attempt
                log.warning("LLM endpoint %s: %s; retry %d in %.1fs", self.url, problem, attempt + 1, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _content(self, resp) -> str:
        """The reply's first message text; RuntimeError (that caption fails) if the reply is malformed."""
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            kind = resp.headers.get("Content-Type", "no Content-Type")
            raise RuntimeError(
                f"LLM endpoint {self.url} sent a malformed reply ({kind}, {len(resp.content)} bytes, "
                "not chat-completions JSON with choices[0].message.content)"
            ) from None
        if not isinstance(content, str):
            raise RuntimeError(f"LLM endpoint {self.url} sent a reply whose message content is not text")
        return content

    def generate(self, caption: str, k: int) -> list[str]:
        """Up to k distinct negatives (never the caption). Raises RuntimeError if the endpoint fails.

        The cache maps caption -> {"k": k asked for, "negatives": usable replies}; a caption is asked
        again only for a larger k."""
        entry = self.cache.get(caption)
        if entry is None or entry["k"] < k:
            text = self._request(caption, k)
            m = re.search(r"\[.*\]", text, re.S)
            try:
                items = json.loads(m.group(0)) if m else []
            except json.JSONDecodeError:
                items = []
            clean = _distinct(caption, [s.strip() for s in items if isinstance(s, str) and s.strip()])
            entry = self.cache[caption] = {"k": k, "negatives": clean}
            if self.cache_path:
                fs.write_text(self.cache_path, json.dumps(self.cache, indent=1, ensure_ascii=False))
        return entry["negatives"][:k]


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str]) -> int:
    try:  # raised out of the output's `with`, so an interrupted output is not kept as if complete
        return _negatives(argv)
    except LLMAuthError as e:
        print(f"clapcomp data negatives: {e}; stopped", file=sys.stderr)
        return 2


def _negatives(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clapcomp data negatives", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, type=Path, help="JSONL rows with a `caption` (str or list)")
    ap.add_argument("--out", required=True, type=Path, help="JSONL written with a `negatives` list per row")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocabulary", type=Path, help="text file, one event phrase per line (for substitution)")
    ap.add_argument("--overwrite", action="store_true", help="replace negatives a row already has")
    ap.add_argument("--llm-url", help="OpenAI-compatible chat-completions URL")
    ap.add_argument("--llm-model")
    ap.add_argument("--llm-key-env", default="CLAPCOMP_LLM_API_KEY", help="env variable holding the API key")
    ap.add_argument("--llm-cache", type=Path, help="JSON cache (default: <out>.llm_cache.json)")
    ap.add_argument("--llm-retries", type=int, default=4, help="retries after a 429/5xx/network error")
    ap.add_argument("--llm-backoff", type=float, default=1.0, help="first retry delay in s (doubles each time)")
    ap.add_argument("--llm-timeout", type=float, default=60.0, help="seconds to wait for one LLM reply")
    ap.add_argument("--allow-http", action="store_true", help="accept an http:// --llm-url (the key travels in clear)")
    args = ap.parse_args(argv)
    if args.llm_url and not args.llm_model:
        ap.error("--llm-url needs --llm-model")
    if args.manifest.suffix != ".jsonl":
        ap.error(f"--manifest must be a .jsonl file, got {args.manifest}")
    cache = args.llm_cache or args.out.with_name(args.out.name + ".llm_cache.json")
    try:  # before anything is opened: `--out m.jsonl --manifest m.jsonl` used to truncate the input to 0 bytes
        fs.refuse_inputs(args.out, [args.manifest, args.vocabulary, cache if args.llm_url else None])
        if args.llm_url:
            fs.refuse_inputs(cache, [args.manifest, args.vocabulary], flag="--llm-cache")
    except ValueError as e:
        ap.error(str(e))
    vocab = None
    if args.vocabulary:
        vocab = [line.strip() for line in args.vocabulary.read_text().splitlines() if line.strip()]
    rules = NegativeGenerator(args.seed, vocab)
    llm = None
    if args.llm_url:
        try:
            llm = LLMNegatives(
                args.llm_url, args.llm_model, api_key_env=args.llm_key_env, cache_path=cache,
                retries=args.llm_retries, backoff=args.llm_backoff, timeout=args.llm_timeout,
                allow_http=args.allow_http,
            )  # fmt: skip
        except ValueError as e:
            ap.error(str(e))
    counts = {
        "rows": 0,
        "written": 0,
        "kept": 0,
        "missing_caption": 0,
        "bad_row": 0,
        "llm_failed": 0,
        "negatives_dropped_equal_to_positive": 0,
    }
    with args.manifest.open() as fin, fs.atomic_file(args.out, "w") as fout:  # --out appears whole, or not at all
        for line in fin:
            if not line.strip():
                continue
            counts["rows"] += 1
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # copied through unchanged: nothing is lost
                counts["bad_row"] += 1
                fout.write(line if line.endswith("\n") else line + "\n")
                continue
            captions = row.get("caption") if isinstance(row.get("caption"), list) else [row.get("caption")]
            cap = captions[0] if captions else None
            same = [c for c in captions + list(row.get("positives") or []) if isinstance(c, str)]
            if row.get("negatives") and not args.overwrite:
                counts["kept"] += 1
                if isinstance(row["negatives"], list) and all(isinstance(n, str) for n in row["negatives"]):
                    row["negatives"], dropped = clean_negatives(row["negatives"], same)
                    counts["negatives_dropped_equal_to_positive"] += dropped
            elif not isinstance(cap, str) or not cap.strip():
                counts["missing_caption"] += 1
            else:
                negs = []
                if llm is not None:
                    try:
                        negs = llm.generate(cap, args.k)
                    except RuntimeError as e:
                        counts["llm_failed"] += 1
                        log.warning("%s; using rules for %r", e, cap)
                negs, dropped = clean_negatives(_distinct(cap, negs + rules.generate(cap, args.k)), same)
                row["negatives"] = negs[: args.k]
                counts["negatives_dropped_equal_to_positive"] += dropped
                counts["written"] += 1
            fout.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps(counts))
    return 0
