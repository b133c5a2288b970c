"""A real HTTP server on 127.0.0.1 for tests, serving a directory, with failure switches.

with serve_directory(tmp_path) as server:
    server.fail["/a.bin"] = 500          # answer that path with HTTP 500
    server.truncate["/a.bin"] = 1000     # promise the full length, send 1000 bytes, close
    server.announce["/a.bin"] = 10**10   # claim this Content-Length (None: none), send the file
    urllib.request.urlopen(server.url("a.bin"))
    assert server.requests["/a.bin"] == 1
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LocalServer:
    """The running server's address, switches and request counter (keyed by URL path)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.base_url = f"http://127.0.0.1:{port}"
        self.fail: dict[str, int] = {}
        self.truncate: dict[str, int] = {}
        self.announce: dict[str, int | None] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def _count(self, path: str) -> None:
        with self._lock:
            self.requests[path] += 1


class _Handler(SimpleHTTPRequestHandler):
    state: LocalServer  # set on the per-server subclass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path
        self.state._count(path)
        if path in self.state.fail:
            self.send_error(self.state.fail[path])
        elif path in self.state.truncate:
            self._send_truncated(path, self.state.truncate[path])
        elif path in self.state.announce:
            self._send_announced(path, self.state.announce[path])
        else:
            try:
                super().do_GET()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (a refused download): not a server error

    def _send_truncated(self, path: str, keep: int) -> None:
        body = (self.state.root / path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:keep])
        self.wfile.flush()
        self.close_connection = True  # the socket closes with the body short

    def _send_announced(self, path: str, length: int | None) -> None:
        body = (self.state.root / path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should have
        self.close_connection = True  # without a length, the end of the body is the close

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike) -> Iterator[LocalServer]:
    """Serve `root` on 127.0.0.1 (a free port) in a background thread for the with-block."""
    root = Path(root)
    handler = type("Handler", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    server.daemon_threads = True
    handler.state = LocalServer(root, server.server_address[1])
    # A short poll interval so that shutdown() at the end of each test returns at once.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield handler.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
