"""`clapcomp search serve --index IDX [--host 127.0.0.1] [--port 8765]`: a local search page.

Routes (the standard library's `ThreadingHTTPServer`; nothing else is served):
  GET /                        the page (static/search.html): a query box; `/?q=...` runs the query
  GET /api/search?q=TEXT&k=K   {"query", "results": [{"id", "name", "file", "score", "offset"}]}, best first
  GET /audio/<id>              the bytes of indexed file number <id> (an integer < the number of indexed files)
A file is reachable only by its number in the index, so no other path on the machine can be read through
the page. Bound to 127.0.0.1 by default: `--host 0.0.0.0` shares your library with the network.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import shutil
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from clapcomp.use.search import Searcher

PAGE = Path(__file__).with_name("static") / "search.html"
MAX_K = 100


def make_server(searcher: Searcher, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server over `searcher` (port 0: any free port; `server.server_address` says which)."""
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "clapcomp-search"

        def log_message(self, format, *args):  # quiet: one line per request is noise for a local page
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

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
                size = path.stat().st_size
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                shutil.copyfileobj(f, self.wfile)

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
