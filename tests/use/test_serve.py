"""`clapcomp search serve`: the JSON API against `Searcher`, only indexed files readable (traversal
attempts refused), Range requests against the file's bytes, and the page in a real headless Chromium:
the query runs, the ranked list shows, the top file's <audio> loads (readyState; its player fetches with
Range, answered 206), driven through the DevTools protocol: the query is typed into the box and
submitted with Enter."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from clapcomp.use.search import Searcher, index_main
from clapcomp.use.serve import byte_range, make_server

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


def get(port: int, path: str, headers: dict | None = None, *, with_headers: bool = False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})  # sent as written: http.client does not normalise '..'
    response = conn.getresponse()
    out = response.status, response.read()
    return (*out, response.headers) if with_headers else out


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


def test_byte_range_forms():
    size = 1000
    assert byte_range(None, size) is None and byte_range("", size) is None
    assert byte_range("bytes=0-99", size) == (0, 99)
    assert byte_range("bytes=500-", size) == (500, 999)
    assert byte_range("bytes=990-5000", size) == (990, 999)  # clipped to the file
    assert byte_range("bytes=-10", size) == (990, 999)  # suffix: the last 10 bytes
    assert byte_range("bytes=-5000", size) == (0, 999)
    assert byte_range("bytes=999-999", size) == (999, 999)
    for ignored in ["bytes=0-1,5-9", "bytes=9-1", "bytes=-", "items=0-9", "bytes=a-b", "bytes=\u0661-"]:
        assert byte_range(ignored, size) is None, ignored  # served whole (200)
    for unsatisfiable in ["bytes=1000-", "bytes=1000-2000", "bytes=-0"]:
        with pytest.raises(ValueError):
            byte_range(unsatisfiable, size)
    with pytest.raises(ValueError):
        byte_range("bytes=0-", 0)


def test_audio_range_requests(served):
    searcher, port, _ = served
    path = "/audio/0"
    data = open(searcher.index.files[0]["path"], "rb").read()
    size = len(data)
    for header, (first, last) in [("bytes=0-1", (0, 1)), ("bytes=100-", (100, size - 1)), ("bytes=-44", (size - 44, size - 1)),
                                  ("bytes=10-99999999", (10, size - 1)), (f"bytes={size - 1}-", (size - 1, size - 1))]:  # fmt: skip
        status, body, headers = get(port, path, {"Range": header}, with_headers=True)
        assert status == 206 and body == data[first : last + 1], header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}" and headers["Content-Length"] == str(
            len(body)
        )
    status, body, headers = get(port, path, {"Range": f"bytes={size}-"}, with_headers=True)
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}" and data not in body
    status, body, headers = get(port, path, {"Range": "bytes=0-1,4-5"}, with_headers=True)  # several: whole file
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"


class _DevTools:
    """A minimal Chrome DevTools Protocol client over one WebSocket (RFC 6455 text frames, client-masked)."""

    def __init__(self, ws_url: str):
        url = urlsplit(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        head, self.buf = head.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n")[0].split()[1] == b"101", head
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "DevTools closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            n = int.from_bytes(self._read({126: 2, 127: 8}[n]), "big") if n >= 126 else n
            payload += self._read(n)
            if b0 & 0x80:  # FIN
                return json.loads(payload)

    def __call__(self, method: str, **params) -> dict:
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        size = len(data)
        head = bytes([0x81]) + (
            bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        )  # our messages stay under 64 KiB
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while (reply := self._message()).get("id") != self.next_id:
            pass  # events
        assert "error" not in reply, reply
        return reply["result"]

    def evaluate(self, expression: str):
        return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


READY = "document.readyState == 'complete' && document.getElementById('q') !== null"
ROWS = """JSON.stringify([...document.querySelectorAll('#results li')].map(li => [
  li.querySelector('.name').textContent, Number(li.querySelector('.score').textContent),
  li.querySelector('audio').getAttribute('src'), li.querySelector('audio').readyState]))"""


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_page_in_headless_chromium(served, tmp_path):
    searcher, port, answered = served
    profile = tmp_path / "chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*"]  # fmt: skip
    browser = subprocess.Popen(["chromium", *flags, "about:blank"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (profile / "DevToolsActivePort").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        devtools_port = int((profile / "DevToolsActivePort").read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=30).read())
        page = _DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page("Page.navigate", url=f"http://127.0.0.1:{port}/")
        while not page.evaluate(READY) and time.monotonic() < deadline:
            time.sleep(0.1)
        page("Emulation.setFocusEmulationEnabled", enabled=True)  # a headless page has no focused window
        page.evaluate("document.getElementById('q').focus()")
        page("Input.insertText", text=QUERY)  # typed into the query box
        page(
            "Input.dispatchKeyEvent",
            type="keyDown",
            key="Enter",
            code="Enter",
            windowsVirtualKeyCode=13,
            text="\r",
            unmodifiedText="\r",
        )
        page("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        rows = []
        while time.monotonic() < deadline and not (rows and rows[0][3] >= 1):  # HAVE_METADATA: the audio loaded
            time.sleep(0.2)
            rows = json.loads(page.evaluate(ROWS) or "[]")
        assert page.evaluate("location.search") == "?q=a+siren+wails"
    finally:
        browser.terminate()
        browser.wait(timeout=30)
    expected = searcher.text(QUERY, 10)
    assert [(name, score) for name, score, _, _ in rows] == [
        (h["file"].rsplit("/", 1)[1], round(h["score"], 4)) for h in expected
    ]
    assert rows[0][2] == f"/audio/{expected[0]['id']}" and rows[0][3] >= 1  # the top file's <audio> loaded
    assert (f"/audio/{expected[0]['id']}", 206) in answered  # Chromium's media player asks with Range: bytes=0-
