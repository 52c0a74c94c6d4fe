"""`clapcomp data negatives`: composition-aware negatives written into a manifest, by the rules or an LLM endpoint.

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
import json
import logging
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from clapcomp import fs
from clapcomp.data.negatives import NegativeGenerator, _distinct, clean_negatives

log = logging.getLogger(__name__)


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
