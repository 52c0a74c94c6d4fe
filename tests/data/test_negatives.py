"""Rule negatives (structure, words kept, determinism) and the LLM backend against a local server."""

import json
import logging
import threading
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
            "--llm-key-env", "MY_KEY", "--llm-cache", str(cache), "--llm-backoff", "0.01"]  # fmt: skip
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
    llm = N.LLMNegatives(url, "m", retries=2, backoff=0.5, sleep=delays.append)
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
    assert N.main(["--manifest", str(manifest), "--out", str(out), "--llm-url", url, "--llm-model", "m"]) == 0
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
