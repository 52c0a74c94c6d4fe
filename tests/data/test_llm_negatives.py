"""The LLM backend (a local OpenAI-compatible server: retries, cache, the key never leaks, auth failures stop)
and `clapcomp data negatives` (counts, malformed rows kept, negatives equal to a positive dropped, outputs
written whole)."""

import datetime
import email.utils
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from clapcomp.data import llm_negatives as N
from clapcomp.data.negatives import NegativeGenerator, normalize

FOUR_CAPTIONS = [
    "A dog barks, followed by a man speaking.",
    "a loud dog and a quiet man",
    "A car passes before a horn honks",
    "a whistle followed by a buzz and then a hiss",
]

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
    assert json.loads(lines[0])["negatives"] == NegativeGenerator(0).generate(
        "a dog barks followed by a door closes", 2
    )
    assert json.loads(capsys.readouterr().out)["bad_row"] == 2


def test_cli_drops_negatives_equal_to_any_positive_caption(tmp_path, capsys):
    manifest = tmp_path / "in.jsonl"
    first, second = "a dog barks followed by a door closes", "a door closes followed by a dog barks"
    assert second in NegativeGenerator(0).generate(first, 3)  # the order rule would produce the 2nd caption
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
    assert got[0]["negatives"] and all(normalize(n) not in (first, second) for n in got[0]["negatives"])
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
        "".join(json.dumps({"audio": f"{i}.wav", "caption": c}) + "\n" for i, c in enumerate(FOUR_CAPTIONS))
    )
    out.write_text("the previous output\n")
    calls = []

    def dies_on_the_third_row(self, caption, k):
        calls.append(caption)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return ["x"]

    monkeypatch.setattr(NegativeGenerator, "generate", dies_on_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        N.main(["--manifest", str(manifest), "--out", str(out)])
    assert out.read_text() == "the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left
