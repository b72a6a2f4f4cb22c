"""A loopback photo server: a real HTTP server on 127.0.0.1 that serves a folder of photos, for tests and benchmarks.

``GET /photos/<relative path>`` answers a file under ``root`` (after ``latency_ms``, the stand-in for a CDN's round
trip). Failure routes, so that every way a photo URL goes wrong can be tested against a real socket:

- ``/status/<code>``: that status code; ``/flaky/<n>/<path>``: 500 the first ``n`` times, then the photo;
- ``/loop``: a redirect to itself; ``/html``: a 200 web page; ``/reset``: the socket closed without an answer;
- ``/huge``: a 2 GB ``Content-Length``, then zeros until the client leaves (``/huge?nolength=1``: no length);
- ``/hang``: the request read, then nothing for 60 s.

Run it alone as ``python -m benchmarks.photo_server --root examples/fashion-products/images --latency_ms 20``;
``--engine aiohttp`` serves the photos alone (no failure routes) on an asyncio server, which costs a fraction of the
CPU per photo of ``http.server``'s thread per connection: the benchmarks' CDN stand-in, since a CDN's CPU is not on
the machine that runs the job.
"""

from __future__ import annotations

import argparse
import contextlib
import mimetypes
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

HUGE_BYTES = 2 * 2**30
HANG_S = 60.0
ZEROS = bytes(64 * 2**10)


class _Server(ThreadingHTTPServer):
    """The HTTP server plus the shared state its handlers read: root, latency, counters, the stop signal."""

    daemon_threads = False  # handler threads are joined on close: none is left serving after ``stop``
    block_on_close = True
    # A batch opens dozens of connections at once; socketserver's backlog of 5 drops the rest of the SYNs, which the
    # client resends after 1 s, 3 s... (a CDN accepts them all).
    request_queue_size = 1024

    def __init__(self, root: Path, latency_s: float, hits: Counter[str], lock: threading.Lock) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.latency_s = latency_s
        self.stopping = threading.Event()
        self.lock = lock
        self.hits = hits
        self.connections: set[socket.socket] = set()
        self.name = f"photo-server-{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive like a CDN, every answer with its length (or closing the socket)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms wait on a delayed ACK
    server: _Server

    def setup(self) -> None:
        super().setup()
        threading.current_thread().name = f"{self.server.name}-request"  # says which server a thread serves
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the client or ``/reset`` already closed the socket

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests and benchmarks count requests instead of printing them."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            self.server.hits[path] += 1
        if self.server.latency_s and self.server.stopping.wait(self.server.latency_s):
            return
        parts = path.strip("/").split("/")
        routes = {"photos": self._photo, "status": self._status, "flaky": self._flaky, "loop": self._loop}
        routes |= {"html": self._html, "reset": self._reset, "huge": self._huge, "hang": self._hang}
        route = routes.get(parts[0])
        if route is None:
            self._answer(404, b"no such route", "text/plain")
        else:
            route(parts[1:])

    def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _photo(self, parts: list[str]) -> None:
        file = (self.server.root / "/".join(parts)).resolve()
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self._answer(404, b"not found", "text/plain")
            return
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._answer(200, file.read_bytes(), content_type)

    def _status(self, parts: list[str]) -> None:
        code = int(parts[0]) if parts and parts[0].isdigit() else 400
        self._answer(code, f"status {code}".encode(), "text/plain")

    def _flaky(self, parts: list[str]) -> None:
        failures = int(parts[0]) if parts and parts[0].isdigit() else 1
        with self.server.lock:
            seen = self.server.hits[urlsplit(self.path).path]
        if seen <= failures:
            self._answer(500, b"flaky", "text/plain")
        else:
            self._photo(parts[1:])

    def _loop(self, parts: list[str]) -> None:
        self._answer(302, b"", "text/plain", {"Location": "/loop"})

    def _html(self, parts: list[str]) -> None:
        self._answer(200, b"<!doctype html><html><body><h1>Not a photo</h1></body></html>", "text/html")

    def _reset(self, parts: list[str]) -> None:
        # SO_LINGER 0: close() sends a TCP reset, the way a crashed proxy drops a connection
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _huge(self, parts: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if "nolength" in urlsplit(self.path).query:
            self.close_connection = True  # the body ends when the socket closes
        else:
            self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        sent = 0
        try:
            while sent < HUGE_BYTES and not self.server.stopping.is_set():
                self.wfile.write(ZEROS)
                sent += len(ZEROS)
        except OSError:
            pass  # the client left, as it should once it has read its limit
        self.close_connection = True

    def _hang(self, parts: list[str]) -> None:
        self.server.stopping.wait(HANG_S)
        self.close_connection = True


class PhotoServer:
    """A loopback HTTP server serving ``root`` at ``/photos/<relative path>``, in a thread; a context manager.

    Attributes:
        url: ``http://127.0.0.1:<port>`` once started.
        requests: requests answered (or refused) so far, every route counted.
        hits: requests per path (``/photos/a.jpg``: 2).
    """

    def __init__(self, root: Path | str, latency_ms: float = 0) -> None:
        self.root = Path(root)
        self.latency_ms = latency_ms
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server's base URL."""
        if self._server is None:
            raise RuntimeError("the photo server is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def hits(self) -> Counter[str]:
        """Requests per path (still readable after ``stop``)."""
        with self._lock:
            return Counter(self._hits)

    @property
    def requests(self) -> int:
        """Requests received so far."""
        return sum(self.hits.values())

    def start(self) -> PhotoServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        self._server = _Server(self.root, self.latency_ms / 1000, self._hits, self._lock)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self._server.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake hanging handlers, cut open connections, join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        with server.lock:
            connections = list(server.connections)
        for connection in connections:  # idle keep-alive handlers block in a read: cut it
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> PhotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_async(root: Path, latency_ms: float) -> None:
    """Serve ``root`` at ``/photos/<relative path>`` on an aiohttp server (each answer after ``latency_ms``), printing
    its URL, until killed."""
    import asyncio

    from aiohttp import web

    root = root.resolve()

    async def photo(request: web.Request) -> web.Response:
        path = (root / unquote(request.match_info["path"])).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        await asyncio.sleep(latency_ms / 1000)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.Response(body=path.read_bytes(), content_type=kind)

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/photos/{path:.+}", photo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    """Serve a folder of photos on 127.0.0.1 until killed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_server", description=main.__doc__)
    parser.add_argument("--root", required=True, type=Path, help="folder served at /photos/<relative path>")
    parser.add_argument("--latency_ms", type=float, default=0.0, help="added before every answer (default 0)")
    parser.add_argument("--engine", choices=("threads", "aiohttp"), default="threads",
                        help="threads: http.server with every failure route (default); aiohttp: photos only, "
                        "less CPU per photo")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a folder")
    if args.engine == "aiohttp":
        with contextlib.suppress(KeyboardInterrupt):
            serve_async(args.root, args.latency_ms)
        return
    server = PhotoServer(args.root, args.latency_ms).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
