"""Rule negatives (structure, words kept, determinism) and the LLM backend against a local server."""

import datetime
import email.utils
import json
import logging
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import numpy as np
import pytest

from clapcomp.data import negatives as N

CONNECTIVE_WORDS = {"followed", "preceded", "by", "and", "then", "before", "after", "which", "while"}


def words(s):
    return [w.strip(".,!?").lower() for w in s.split()]


CAPTIONS = [
    "A dog barks, followed by a man speaking.",
    "a loud dog and a quiet man",
    "A car passes before a horn honks",
    "a whistle followed by a buzz and then a hiss",
    "People talk while a dog barks",
    "a short beep and a long whistle",
    "Rain falls on a roof",
    "a high-pitched siren and a low-pitched engine",
    "an old man speaks after a young woman laughs",
    "silence",
    "",
]


def test_negatives_are_distinct_bounded_and_never_the_caption():
    gen = N.NegativeGenerator(seed=0)
    for cap in CAPTIONS:
        for k in (1, 3, 8):
            negs = gen.generate(cap, k)
            assert len(negs) <= k
            assert len({N.normalize(n) for n in negs}) == len(negs)
            assert all(N.normalize(n) != N.normalize(cap) for n in negs)
    assert gen.generate("a loud dog and a quiet man", 1) == ["a quiet dog and a loud man"]  # priority


def test_order_swaps_hand_checked():
    assert N.order_swaps("A dog barks, followed by a man speaking.") == [
        "A man speaking, followed by a dog barks.", "A dog barks, preceded by a man speaking."]  # fmt: skip
    assert set(N.order_swaps("a hiss preceded by a chord")) == {
        "a chord preceded by a hiss",
        "a hiss followed by a chord",
    }
    assert set(N.order_swaps("A car passes before a horn honks")) == {
        "A horn honks before a car passes", "A car passes after a horn honks"}  # fmt: skip
    assert set(N.order_swaps("an old man speaks after a young woman laughs")) == {
        "a young woman laughs after an old man speaks", "an old man speaks before a young woman laughs"}  # fmt: skip
    assert set(N.order_swaps("People talk while a dog barks")) == {
        "People talk before a dog barks", "A dog barks before people talk"}  # fmt: skip
    assert set(N.order_swaps("a whistle followed by a buzz and then a hiss")) == {
        "a buzz followed by a whistle and then a hiss", "a whistle preceded by a buzz and then a hiss",
        "a whistle followed by a hiss and then a buzz", "a hiss followed by a buzz and then a whistle"}  # fmt: skip


def test_order_swaps_keep_the_same_events():
    for cap in CAPTIONS:
        for neg in N.order_swaps(cap):
            events = Counter(w for w in words(cap) if w not in CONNECTIVE_WORDS)
            assert Counter(w for w in words(neg) if w not in CONNECTIVE_WORDS) == events
            assert words(neg) != words(cap)


def test_attribute_swaps_keep_the_same_words_in_another_order():
    assert N.attribute_swaps("a loud dog and a quiet man") == ["a quiet dog and a loud man"]
    assert N.attribute_swaps("An old dog and a young owl.") == ["A young dog and an old owl."]  # a/an fixed
    found = 0
    for cap in CAPTIONS:
        for neg in N.attribute_swaps(cap):
            found += 1
            assert Counter(words(neg)) == Counter(words(cap)) and words(neg) != words(cap)
    assert found == 4  # loud/quiet, short/long, high-/low-pitched, old/young


def test_rules_do_not_fire_without_their_structure():
    assert N.order_swaps("a dog barks loudly") == []
    assert N.order_swaps("a bird sings before dawn") == []  # one-word segment: not two events
    assert N.order_swaps("then a dog barks") == []
    assert N.attribute_swaps("a loud dog barks") == []
    assert N.attribute_swaps("a loud dog and a long whistle") == []  # different kinds
    assert N.attribute_swaps("a loud dog and a loud man") == []  # same value
    assert N.attribute_flips("a dog barks") == []
    assert N.event_substitutions("a violin plays", ["dog", "cat"], np.random.default_rng(0)) == []
    assert N.NegativeGenerator(0, vocabulary=[]).generate("a violin plays", 5) == []


def test_attribute_flip_and_event_substitution():
    assert set(N.attribute_flips("a loud dog and a quiet man")) == {
        "a quiet dog and a quiet man",
        "a loud dog and a loud man",
    }
    vocab = ["rising chirp", "chirp", "buzz", "hiss"]
    subs = N.event_substitutions("a rising chirp followed by a buzz", vocab, np.random.default_rng(0))
    # longest match wins; "chirp" is already present inside "rising chirp", so only "hiss" is new
    assert set(subs) == {"a hiss followed by a buzz", "a rising chirp followed by a hiss"}
    assert N.event_substitutions("a dog and an owl", ["owl", "dog"], np.random.default_rng(0)) == []  # none new
    assert N.event_substitutions("a dog and an owl", ["owl", "eagle"], np.random.default_rng(0)) == [
        "a dog and an eagle"
    ]
    assert N.event_substitutions("a dog barks", ["dog", "eagle"], np.random.default_rng(0)) == ["an eagle barks"]


def _substitutions_by_the_rule(caption, vocabulary, rng, per_event=2):
    """The substitution rule written plainly: one whole-word search per phrase for the pool (phrases absent from the
    caption), the longest-match alternation for the events, the caption's case and articles restored."""
    import re

    c = N._Caption(caption)
    phrases = sorted({v.strip().lower() for v in vocabulary if v.strip()}, key=lambda v: (-len(v), v))
    pool = [p for p in phrases if not re.search(r"\b" + re.escape(p) + r"\b", c.body, re.I)]
    out = []
    for m in re.finditer(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b", c.body, re.I):
        for r in rng.choice(len(pool), size=min(per_event, len(pool)), replace=False) if pool else []:
            out.append(c.finish(c.body[: m.start()] + pool[int(r)] + c.body[m.end() :]))
    return N._distinct(caption, out)


@pytest.mark.parametrize(
    "vocabulary",
    [N.DEFAULT_VOCABULARY, ("Dog", "owl", "car_horn", "x2"), ("car horn", "horn", "dog"), ("café", "dog", "ſiren")],
)
def test_event_substitutions_equal_the_rule_written_plainly(vocabulary):
    """One-word ASCII vocabularies on ASCII captions take a word-set shortcut for the pool; others the searches."""
    captions = [
        *CAPTIONS,
        "a Dog-like owl then a DOG",
        "a car_horn and x2 dogs",
        "the car horn, a horn",
        "a café siren",
    ]
    captions += ["a ſiren before a dog", "an owl\u00a0and a car", "a dog's bark then a cat's meow"]
    for i, caption in enumerate(captions):
        got = N.event_substitutions(caption, vocabulary, np.random.default_rng(i))
        assert got == _substitutions_by_the_rule(caption, vocabulary, np.random.default_rng(i)), caption


def test_draws_are_numpys_choice_and_permutation():
    """`_Draws` computes numpy's own choice (Floyd's sample, then a Lemire shuffle) and permutation (a
    masked-rejection shuffle) from the raw outputs: the same numbers, call after call, as the Generator."""
    plan = np.random.default_rng(123)
    for seed in range(1500):
        numpy_rng = np.random.default_rng([seed, 77])
        draws = N._Draws(np.random.default_rng([seed, 77]))
        for _ in range(int(plan.integers(1, 8))):
            n = int(plan.integers(0, 70))
            if plan.random() < 0.5:
                k = int(plan.integers(0, n + 1))
                assert draws.choice(n, size=k, replace=False) == numpy_rng.choice(n, size=k, replace=False).tolist()
            else:
                assert draws.permutation(n) == numpy_rng.permutation(n).tolist()
    big = np.random.default_rng(5)
    assert N._Draws(np.random.default_rng(5)).choice(50_000, size=2) == big.choice(50_000, 2, replace=False).tolist()
    with pytest.raises(ValueError, match="Floyd"):
        N._Draws(np.random.default_rng(5)).choice(50_000, size=5_000)


def test_deterministic_per_seed_and_independent_of_call_order():
    a, b = N.NegativeGenerator(seed=5), N.NegativeGenerator(seed=5)
    forward = [a.generate(c, 4) for c in CAPTIONS]
    backward = [b.generate(c, 4) for c in reversed(CAPTIONS)][::-1]
    assert forward == backward
    others = [N.NegativeGenerator(seed=s).generate("a dog barks followed by a cat meows", 4) for s in range(6)]
    assert len({tuple(o) for o in others}) > 1  # substitutions depend on the seed


# ---------------------------------------------------------------------------------------------
# LLM backend

SECRET = "sk-test-SECRET-7f3a"


class _Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list] = []  # shared by the handler instances (one per request); each test subclasses
    fail_first: int = 0
    status: int = 500

    def do_POST(self):
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls.requests.append({"auth": self.headers.get("Authorization"), "body": body})
        assert len(cls.requests) <= 20, "too many requests"
        if len(cls.requests) <= cls.fail_first:
            self.send_response(cls.status)
            self.end_headers()
            return
        caption = body["messages"][-1]["content"]
        content = json.dumps([f"{caption} reversed", caption, "an invented scene", "an invented scene"])
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Sure:\n" + content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"requests": [], "fail_first": 1, "status": 500})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/v1/chat/completions"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_llm_retry_cache_and_key_never_leaks(server, tmp_path, monkeypatch, caplog, capsys):
    handler, url = server
    monkeypatch.setenv("MY_KEY", SECRET)
    manifest = tmp_path / "in.jsonl"
    rows = [{"audio": "a.flac", "caption": "a dog barks"}, {"audio": "b.flac", "caption": ["a cat meows", "x"]},
            {"audio": "c.flac", "caption": "old", "negatives": ["kept"]}]  # fmt: skip
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.json"
    argv = ["--manifest", str(manifest), "--out", str(out), "--k", "3", "--llm-url", url, "--llm-model", "m",
            "--llm-key-env", "MY_KEY", "--llm-cache", str(cache), "--llm-backoff", "0.01", "--allow-http"]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        assert N.main(argv) == 0
    # 1 failed (HTTP 500) + 1 retry for the first caption, 1 for the second; the third kept its negatives
    assert len(handler.requests) == 3
    assert all(r["auth"] == f"Bearer {SECRET}" for r in handler.requests)
    assert handler.requests[0]["body"]["model"] == "m"
    assert "HTTP 500" in caplog.text
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0]["negatives"][:2] == ["a dog barks reversed", "an invented scene"]  # caption and dup dropped
    assert len(got[0]["negatives"]) == 3  # topped up by a rule negative
    assert got[1]["negatives"][0] == "a cat meows reversed"
    assert got[2]["negatives"] == ["kept"]
    assert json.loads(cache.read_text())["a dog barks"] == {
        "k": 3,
        "negatives": ["a dog barks reversed", "an invented scene"],
    }

    assert N.main(argv) == 0  # second run: answered from the cache
    assert len(handler.requests) == 3
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err, out.read_text(), cache.read_text()):
        assert SECRET not in text


def test_llm_client_errors(server, tmp_path, monkeypatch):
    handler, url = server
    monkeypatch.delenv("CLAPCOMP_LLM_API_KEY", raising=False)
    handler.fail_first, handler.status = 100, 503
    delays = []
    llm = N.LLMNegatives(url, "m", retries=2, backoff=0.5, sleep=delays.append, allow_http=True)
    with pytest.raises(RuntimeError, match="failed 3 times"):
        llm.generate("a dog barks", 2)
    assert delays == [0.5, 1.0] and len(handler.requests) == 3
    assert handler.requests[0]["auth"] is None  # no key in the environment: no header
    handler.status = 401
    with pytest.raises(RuntimeError, match="HTTP 401"):
        llm.generate("a dog barks", 2)
    assert len(handler.requests) == 4  # client errors are not retried
    manifest, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    manifest.write_text(json.dumps({"audio": "a", "caption": "a loud dog and a quiet man"}) + "\n")
    argv = ["--manifest", str(manifest), "--out", str(out), "--llm-url", url, "--llm-model", "m", "--allow-http"]
    assert N.main(argv) == 0
    assert json.loads(out.read_text())["negatives"][0] == "a quiet dog and a loud man"  # fell back to rules


def test_cli_counts_and_keeps_malformed_rows(tmp_path, capsys):
    manifest = tmp_path / "in.jsonl"
    bad = "{not json\n", '{"caption": ' + "[" * 5000 + "\n"
    manifest.write_text('{"audio": "a.wav", "caption": "a dog barks followed by a door closes"}\n' + "".join(bad))
    out = tmp_path / "out.jsonl"
    assert N.main(["--manifest", str(manifest), "--out", str(out), "--k", "2"]) == 0
    lines = out.read_text().splitlines(keepends=True)
    assert lines[1:] == list(bad)  # malformed rows copied through unchanged
    assert json.loads(lines[0])["negatives"] == N.NegativeGenerator(0).generate(
        "a dog barks followed by a door closes", 2
    )
    assert json.loads(capsys.readouterr().out)["bad_row"] == 2


def test_cli_drops_negatives_equal_to_any_positive_caption(tmp_path, capsys):
    manifest = tmp_path / "in.jsonl"
    first, second = "a dog barks followed by a door closes", "a door closes followed by a dog barks"
    assert second in N.NegativeGenerator(0).generate(first, 3)  # the order rule would produce the 2nd caption
    rows = [
        {"audio": "a.wav", "caption": [first, second]},
        {
            "audio": "b.wav",
            "caption": "a dog barks",
            "positives": ["a dog"],
            "negatives": ["A dog  barks.", "A DOG", "a cat"],
        },
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert N.main(["--manifest", str(manifest), "--out", str(out), "--k", "3"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0]["negatives"] and all(N.normalize(n) not in (first, second) for n in got[0]["negatives"])
    assert got[1]["negatives"] == ["a cat"]
    assert json.loads(capsys.readouterr().out)["negatives_dropped_equal_to_positive"] == 3


# ---------------------------------------------------------------------------------------------
# the HTTP client: https, redirects, Retry-After, timeouts, malformed replies, auth failures


class _Scripted(BaseHTTPRequestHandler):
    """Answers request i with script[i] = (status, headers, body bytes) (the last entry repeats); records
    each request's method, path and Authorization header. Body None: a valid chat-completions reply."""

    script: ClassVar[list] = []
    seen: ClassVar[list] = []
    delay: float = 0.0

    def _answer(self):
        cls = type(self)
        if self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))
        cls.seen.append((self.command, self.path, self.headers.get("Authorization")))
        assert len(cls.seen) <= 20, "too many requests"
        status, headers, body = cls.script[min(len(cls.seen), len(cls.script)) - 1]
        if body is None:
            content = json.dumps(["a cat barks", "a dog meows"])
            body = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        time.sleep(cls.delay)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(script, delay=0) -> (handler class, http://127.0.0.1:PORT); every server is shut down after the test."""
    running = []

    def start(script, delay=0.0):
        handler = type("S", (_Scripted,), {"script": script, "seen": [], "delay": delay})
        httpd = HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        running.append((httpd, thread))
        return handler, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _run(tmp_path, url, captions, *extra):
    manifest, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    manifest.write_text("".join(json.dumps({"audio": "a.wav", "caption": c}) + "\n" for c in captions))
    argv = ["--manifest", str(manifest), "--out", str(out), "--llm-url", url, "--llm-model", "m",
            "--llm-key-env", "MY_KEY", "--llm-backoff", "0", *extra]  # fmt: skip
    return N.main(argv), out


def test_http_is_refused_unless_allowed(monkeypatch, tmp_path, capsys):
    with pytest.raises(ValueError, match="not https.*--allow-http"):
        N.LLMNegatives("http://127.0.0.1:9/v1/chat/completions", "m")
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "http://127.0.0.1:9/v1/chat/completions", ["a dog barks"])
    assert e.value.code == 2 and "not https" in capsys.readouterr().err
    N.LLMNegatives("https://example.invalid/v1/chat/completions", "m")  # https needs no flag


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_another_origin_does_not_carry_the_key(serve, monkeypatch, status):
    monkeypatch.setenv("MY_KEY", SECRET)
    other, other_url = serve([(200, {"Content-Type": "application/json"}, None)])
    first, url = serve([(status, {"Location": other_url + "/elsewhere"}, b"")])
    llm = N.LLMNegatives(url + "/v1/chat/completions", "m", api_key_env="MY_KEY", allow_http=True, retries=0)
    assert llm.generate("a dog barks", 2) == ["a cat barks", "a dog meows"]
    assert first.seen == [("POST", "/v1/chat/completions", f"Bearer {SECRET}")]
    method = "GET" if status == 302 else "POST"  # 302 turns a POST into a GET (as browsers do); 307 keeps it
    assert other.seen == [(method, "/elsewhere", None)]  # another port is another origin: no key


def test_retry_after_is_honoured_in_seconds_and_as_a_date(serve):
    later = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30))
    handler, url = serve([(429, {"Retry-After": "7"}, b""), (503, {"Retry-After": later}, b""), (200, {}, None)])
    delays = []
    llm = N.LLMNegatives(url, "m", allow_http=True, retries=3, backoff=0.5, sleep=delays.append)
    assert llm.generate("a dog barks", 2) == ["a cat barks", "a dog meows"]
    assert len(handler.seen) == 3 and delays[0] == 7.0 and 27.0 <= delays[1] <= 30.0
    assert N._retry_after("not a date") is None and N._retry_after("-5") == 0.0
    huge, huge_url = serve([(429, {"Retry-After": "86400"}, b""), (200, {}, None)])
    N.LLMNegatives(huge_url, "m", allow_http=True, sleep=delays.append).generate("a dog barks", 2)
    assert delays[2:] == [N.MAX_RETRY_AFTER_S] and len(huge.seen) == 2  # a day's wait is capped


def test_malformed_replies_and_timeouts_are_counted_per_row(serve, tmp_path, capsys):
    html = (200, {"Content-Type": "text/html"}, b"<html>login page</html>")
    no_choices = (200, {"Content-Type": "application/json"}, b'{"error": "quota"}')
    null_content = (200, {"Content-Type": "application/json"}, b'{"choices": [{"message": {"content": null}}]}')
    _, url = serve([html, no_choices, null_content, (200, {}, None)])
    code, out = _run(tmp_path, url, ["a dog barks", "a loud dog and a quiet man", "rain", "a car passes"],
                     "--allow-http", "--llm-retries", "0")  # fmt: skip
    counts = json.loads(capsys.readouterr().out)
    assert code == 0 and counts["llm_failed"] == 3 and counts["written"] == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1]["negatives"][0] == "a quiet dog and a loud man"  # that row fell back to the rules
    assert rows[3]["negatives"][:2] == ["a cat barks", "a dog meows"]  # the good reply is used
    slow, slow_url = serve([(200, {}, None)], delay=1.0)
    llm = N.LLMNegatives(slow_url, "m", allow_http=True, retries=0, timeout=0.1)
    with pytest.raises(RuntimeError, match=r"no reply within --llm-timeout 0.1 s"):
        llm.generate("a dog barks", 2)


def test_three_auth_failures_in_a_row_stop_with_exit_2(serve, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("MY_KEY", SECRET)
    denied = (401, {}, b"")
    # 401, 401, ok (resets the count), 401, 403, 401 -> stops at the sixth row, not the third
    handler, url = serve([denied, denied, (200, {}, None), denied, (403, {}, b""), denied, (200, {}, None)])
    captions = [f"a dog barks {i} times" for i in range(8)]
    with caplog.at_level(logging.DEBUG):
        code, _ = _run(tmp_path, url, captions, "--allow-http")
    err = capsys.readouterr().err
    assert code == 2 and len(handler.seen) == 6  # client errors are not retried; rows 7-8 never asked
    assert "refused 3 requests in a row (HTTP 401)" in err and "$MY_KEY" in err
    assert SECRET not in err + caplog.text


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_cli_refuses_an_output_that_is_the_input_before_opening_it(tmp_path, capsys, spelling):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "caption": "a dog barks followed by a door closes"}\n')
    before = manifest.read_bytes()
    out = {"same": manifest, "dotted": tmp_path / "sub" / ".." / "m.jsonl", "symlink": tmp_path / "link.jsonl"}[
        spelling
    ]
    if spelling == "symlink":
        out.symlink_to(manifest)
    with pytest.raises(SystemExit) as exit_info:
        N.main(["--manifest", str(manifest), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert manifest.read_bytes() == before  # was truncated to 0 bytes before the check


def test_cli_interrupted_leaves_the_previous_output_intact(tmp_path, monkeypatch):
    manifest, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    manifest.write_text(
        "".join(json.dumps({"audio": f"{i}.wav", "caption": c}) + "\n" for i, c in enumerate(CAPTIONS[:4]))
    )
    out.write_text("the previous output\n")
    calls = []

    def dies_on_the_third_row(self, caption, k):
        calls.append(caption)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return ["x"]

    monkeypatch.setattr(N.NegativeGenerator, "generate", dies_on_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        N.main(["--manifest", str(manifest), "--out", str(out)])
    assert out.read_text() == "the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left
