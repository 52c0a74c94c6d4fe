"""`clapcomp search serve`: the JSON API against `Searcher`, only indexed files readable (traversal
attempts refused), and the page in a real headless Chromium: the query runs, the ranked list shows, the
top file's <audio> is fetched by the browser."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser

import pytest

from clapcomp.use.search import Searcher, index_main
from clapcomp.use.serve import make_server

QUERY = "a siren wails"


@pytest.fixture
def served(clap, model_dir, library, tmp_path):
    """(searcher, port, requests [(path, status)] the server answered)."""
    (library / "broken.wav").unlink()
    assert index_main(["--model", str(model_dir), "--out", str(tmp_path / "idx"), str(library)]) == 0
    searcher = Searcher(tmp_path / "idx", clap=clap)
    server = make_server(searcher, "127.0.0.1", 0)
    answered = []

    class Logged(server.RequestHandlerClass):
        def log_request(self, code="-", size="-"):
            answered.append((self.path, int(code)))

    server.RequestHandlerClass = Logged
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield searcher, server.server_address[1], answered
    server.shutdown()
    server.server_close()
    thread.join()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)  # sent as written: http.client does not normalise '..'
    response = conn.getresponse()
    return response.status, response.read()


def test_api_and_only_indexed_files(served, library):
    searcher, port, _ = served
    status, body = get(port, "/api/search?q=a+siren+wails&k=3")
    results = json.loads(body)["results"]
    assert status == 200 and [(r["file"], r["score"]) for r in results] == [
        (h["file"], h["score"]) for h in searcher.text(QUERY, 3)
    ]
    top = results[0]
    status, body = get(port, f"/audio/{top['id']}")
    assert status == 200 and body == open(top["file"], "rb").read()
    (library / "secret.txt").write_text("private")
    for path in ["/audio/../../etc/passwd", "/audio/..%2f..%2fetc%2fpasswd", "/audio/4", "/audio/-1", "/audio/1.0", "/audio/%C2%B2",
                 "/audio/" + str(library / "secret.txt"), "/etc/passwd", "/static/search.html", "/audio/0/..%2f..%2fsecret.txt"]:  # fmt: skip
        status, body = get(port, path)
        assert status == 404 and b"private" not in body and b"root:" not in body, path
    assert get(port, "/api/search?q=")[0] == 400


class _Results(HTMLParser):
    """The page's result rows: [(name, score, audio src)]."""

    def __init__(self):
        super().__init__()
        self.rows, self._field = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "li":
            self.rows.append({})
        elif tag == "span" and self.rows:
            self._field = attrs.get("class")
        elif tag == "audio" and self.rows:
            self.rows[-1]["src"] = attrs.get("src")

    def handle_data(self, data):
        if self._field:
            self.rows[-1][self._field] = data
            self._field = None


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_page_in_headless_chromium(served, tmp_path):
    searcher, port, answered = served
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
    url = f"http://127.0.0.1:{port}/?q=a+siren+wails"  # what submitting the page's form loads
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    parser = _Results()
    parser.feed(dom)
    expected = searcher.text(QUERY, 10)
    assert re.search(r'<input[^>]*name="q"', dom)
    assert [(r["name"], float(r["score"])) for r in parser.rows] == [
        (h["file"].rsplit("/", 1)[1], round(h["score"], 4)) for h in expected
    ]
    assert parser.rows[0]["src"].split("#")[0] == f"/audio/{expected[0]['id']}"
    assert (f"/audio/{expected[0]['id']}", 200) in answered  # the browser fetched the top file's audio
