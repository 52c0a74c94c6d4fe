"""`clapcomp search serve --index IDX [--host 127.0.0.1] [--port 8765]`: a local search page.

Routes (the standard library's `ThreadingHTTPServer`; nothing else is served):
  GET /                        the page (static/search.html): a query box; `/?q=...` runs the query
  GET /api/search?q=TEXT&k=K   {"query", "results": [{"id", "name", "file", "score", "offset"}]}, best first
  GET /audio/<id>              the bytes of indexed file number <id> (an integer < the number of indexed files);
                               `Range: bytes=a-b` (or `a-`, `-n`: how browsers seek) -> 206 with that span,
                               416 when it starts past the end; other Range forms get the whole file (200)
A file is reachable only by its number in the index, so no other path on the machine can be read through
the page. Bound to 127.0.0.1 by default: `--host 0.0.0.0` shares your library with the network.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from clapcomp.use.search import Searcher

PAGE = Path(__file__).with_name("static") / "search.html"
MAX_K = 100
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_COPY_CHUNK = 1 << 16


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A `Range` header against a file of `size` bytes -> the (first, last) byte offsets it asks for
    (inclusive, clipped to the file), or None to send the whole file (no header, a form this server does
    not serve such as several ranges, or a malformed one: RFC 9110 lets a server ignore Range).
    Raises ValueError when the range is unsatisfiable (starts at or past the end; an empty suffix)."""
    match = _RANGE.fullmatch((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # bytes=-n: the last n bytes
        if int(last) == 0 or size == 0:
            raise ValueError(f"suffix range {header!r} of a {size}-byte file is empty")
        return max(size - int(last), 0), size - 1
    if last and int(last) < int(first):
        return None  # syntactically invalid (last < first): ignored
    if int(first) >= size:
        raise ValueError(f"range {header!r} starts past the end of a {size}-byte file")
    return int(first), min(int(last), size - 1) if last else size - 1


def make_server(searcher: Searcher, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server over `searcher` (port 0: any free port; `server.server_address` says which)."""
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "clapcomp-search"

        def log_message(self, format, *args):  # quiet: one line per request is noise for a local page
            pass

        def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status: int = HTTPStatus.OK, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json", headers)

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/":
                return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if url.path == "/api/search":
                return self._search(parse_qs(url.query))
            head, _, tail = url.path.rpartition("/")
            if head == "/audio" and tail.isascii() and tail.isdigit() and int(tail) < len(searcher.index.files):
                return self._audio(Path(searcher.index.files[int(tail)]["path"]))
            return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

        def _search(self, query: dict) -> None:
            text = query.get("q", [""])[0].strip()
            try:
                k = min(MAX_K, max(1, int(query.get("k", ["10"])[0])))
            except ValueError:
                return self._json({"error": "k must be an integer"}, HTTPStatus.BAD_REQUEST)
            if not text:
                return self._json({"error": "empty query: pass ?q=TEXT"}, HTTPStatus.BAD_REQUEST)
            hits = searcher.text(text, k)
            results = [{"id": h["id"], "name": Path(h["file"]).name, "file": h["file"], "score": h["score"],
                        "offset": h["offset"]} for h in hits]  # fmt: skip
            self._json({"query": text, "results": results})

        def _audio(self, path: Path) -> None:
            try:
                f = path.open("rb")
            except OSError:
                return self._json({"error": "the indexed file is gone; re-run search index"}, HTTPStatus.GONE)
            with f:
                size = os.fstat(f.fileno()).st_size
                try:
                    span = byte_range(self.headers.get("Range"), size)
                except ValueError as e:
                    status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
                    return self._json({"error": str(e)}, status, {"Content-Range": f"bytes */{size}"})
                first, last = span or (0, size - 1)
                self.send_response(HTTPStatus.OK if span is None else HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                if span is not None:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.send_header("Content-Length", str(last - first + 1))
                self.end_headers()
                f.seek(first)
                left = last - first + 1
                while left > 0 and (chunk := f.read(min(left, _COPY_CHUNK))):
                    self.wfile.write(chunk)
                    left -= len(chunk)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clapcomp search serve", description="a local search page over an index")
    p.add_argument("--index", required=True, help="index folder written by `clapcomp search index`")
    p.add_argument("--model", help="model directory (default: the one that built the index; must be the same)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    args = p.parse_args(argv)
    try:
        searcher = Searcher(args.index, args.model)
    except (ValueError, FileNotFoundError) as e:
        print(f"clapcomp search serve: error: {e}", file=sys.stderr)
        return 2
    server = make_server(searcher, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {len(searcher.index.files)} files from {args.index} on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
