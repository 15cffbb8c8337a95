"""A loopback HTTP/1.1 proxy that makes a local S3 server behave like a network.

It sits between the clients (obstore, s3fs/botocore, anndata through either) and the moto
server, on real sockets, and adds what object storage adds: a round trip per request
(``rtt``), a bandwidth shared by every connection (``bandwidth``), and failures on a schedule
(``fail``): S3's ``503 Slow Down`` and ``500 InternalError``, a connection dropped without an
answer, a response cut off mid-body. It counts requests by kind (GET, HEAD, PUT, POST, LIST,
DELETE, multipart uploads) and the bytes each way, which is what a provider bills.

It parses HTTP only as far as request and response boundaries on keep-alive connections
need: heads up to the blank line, bodies by Content-Length or chunked encoding.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

SLICE = 64 * 1024
KINDS = ("GET", "HEAD", "PUT", "POST", "LIST", "DELETE")


@dataclass
class _Failure:
    kind: str  # "503", "500", "drop" or "cut"
    times: int
    method: str | None
    path_contains: str | None
    every: int
    seen: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.times <= 0:
            return False
        if self.method and method != self.method:
            return False
        if self.path_contains and self.path_contains not in target:
            return False
        self.seen += 1
        if self.seen % self.every:
            return False
        self.times -= 1
        return True


class _Closed(Exception):
    """The peer closed the connection."""


class _Reader:
    """Buffered reads from a socket: lines, exact counts, or until close."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(SLICE)
        if not data:
            return False
        self.buffer += data
        return True

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise _Closed
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise _Closed
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise _Closed
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def rest(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def _body(reader: _Reader, fields: dict[str, str]) -> bytes | None:
    """The body as framed (chunked bodies verbatim); None when it runs until close."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = reader.line()
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = reader.line()
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts)
            parts.append(reader.exactly(size + 2))
    if "content-length" in fields:
        return reader.exactly(int(fields["content-length"]))
    return None


class NetProxy:
    """``with NetProxy(host, port, rtt=0.02, bandwidth=200e6) as proxy: ... proxy.url``"""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        rtt: float = 0.0,
        bandwidth: float | None = None,
    ):
        self.upstream = (upstream_host, upstream_port)
        self.rtt, self.bandwidth = rtt, bandwidth
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._link_free_at = 0.0  # the shared link's clock: when its next byte may go
        self._failures: list[_Failure] = []
        self._counts: dict[str, int] = {}
        self.injected = 0
        self._sockets: set[socket.socket] = set()
        self._running = False
        self.reset_counts()

    # -- control ------------------------------------------------------------------------

    def start(self) -> NetProxy:
        self._running = True
        threading.Thread(target=self._accept, daemon=True, name="netproxy-accept").start()
        return self

    def stop(self) -> None:
        self._running = False
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)
            self._sockets.clear()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(
        self,
        kind: str,
        *,
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        every: int = 1,
    ) -> None:
        """The next ``times`` matching requests (every ``every``-th one) fail with ``kind``:
        ``503``, ``500``, ``drop`` (no answer, connection closed) or ``cut`` (half a body)."""
        if kind not in ("503", "500", "drop", "cut"):
            raise ValueError(f"failure kind {kind!r}: 503, 500, drop or cut")
        with self._lock:
            self._failures.append(_Failure(kind, times, method, path_contains, max(1, every)))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys((*KINDS, "multipart_uploads", "bytes_up", "bytes_down"), 0)

    def reset(self) -> None:
        """No latency, no bandwidth limit, no failures, counts at zero."""
        self.rtt, self.bandwidth = 0.0, None
        self.clear_failures()
        self.reset_counts()
        self.injected = 0

    # -- the link -----------------------------------------------------------------------

    def _send(self, sock: socket.socket, data: bytes, direction: str) -> None:
        """Send through the shared link: each slice waits for its turn at ``bandwidth``."""
        if direction:
            with self._lock:
                self._counts[direction] += len(data)
        for start in range(0, len(data), SLICE):
            piece = data[start : start + SLICE]
            rate = self.bandwidth
            if rate:
                with self._lock:
                    now = time.monotonic()
                    begin = max(now, self._link_free_at)
                    self._link_free_at = begin + len(piece) / rate
                    wait = self._link_free_at - now
                if wait > 0:
                    time.sleep(wait)
            sock.sendall(piece)

    def _count(self, method: str, target: str) -> str:
        path, _, query = target.partition("?")
        object_key = urlsplit(path).path.strip("/").partition("/")[2]
        params = {item.partition("=")[0] for item in query.split("&") if item}
        if method == "GET" and (not object_key or params & {"list-type", "prefix", "delimiter"}):
            kind = "LIST"
        elif method == "POST" and "delete" in params:
            kind = "DELETE"
        else:
            kind = method if method in KINDS else "GET"
        with self._lock:
            self._counts[kind] += 1
            if method == "POST" and "uploads" in params:
                self._counts["multipart_uploads"] += 1
        return kind

    def _failure_for(self, method: str, target: str) -> str | None:
        with self._lock:
            for failure in self._failures:
                if failure.matches(method, target):
                    self.injected += 1
                    return failure.kind
        return None

    # -- connections --------------------------------------------------------------------

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        reader = _Reader(client)
        try:
            while self._running:
                try:
                    head = reader.head()
                except _Closed:
                    return
                request_line, fields = _headers(head)
                method, target = request_line.split(" ")[:2]
                if fields.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(
                        line
                        for line in head.split(b"\r\n")
                        if not line.lower().startswith(b"expect:")
                    )
                body = _body(reader, fields) or b""
                self._count(method, target)
                failure = self._failure_for(method, target)
                if failure == "drop":
                    return
                if failure in ("503", "500"):
                    time.sleep(self.rtt)
                    self._send(client, _error_response(failure), "")
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    with self._lock:
                        self._sockets.add(upstream)
                upstream.sendall(head)
                if body:
                    self._send(upstream, body, "bytes_up")
                if not self._relay_response(upstream, client, method, failure == "cut"):
                    _close(upstream)
                    with self._lock:
                        self._sockets.discard(upstream)
                    upstream = None
                    if failure == "cut":
                        return
        except OSError:
            return
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)
            with self._lock:
                self._sockets.discard(client)
                if upstream is not None:
                    self._sockets.discard(upstream)

    def _relay_response(
        self, upstream: socket.socket, client: socket.socket, method: str, cut: bool
    ) -> bool:
        """One response upstream -> client after a round trip; False when the upstream
        connection cannot be reused (or the response was cut)."""
        reader = _Reader(upstream)
        while True:
            head = reader.head()
            status_line, fields = _headers(head)
            status = int(status_line.split(" ")[1])
            if status >= 200:
                break
            client.sendall(head)  # an interim response (100 Continue)
        no_body = method == "HEAD" or status in (204, 304)
        body = b"" if no_body else _body(reader, fields)
        reusable = body is not None and fields.get("connection", "").lower() != "close"
        if body is None:
            body = reader.rest()
        time.sleep(self.rtt)
        client.sendall(head)
        if cut:
            self._send(client, body[: len(body) // 2], "bytes_down")
            return False
        self._send(client, body, "bytes_down")
        return reusable


def _error_response(status: str) -> bytes:
    code, reason, message = {
        "503": ("SlowDown", "Slow Down", "Please reduce your request rate."),
        "500": ("InternalError", "Internal Server Error", "We encountered an internal error."),
    }[status]
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _serve_in_child(connection, upstream_host: str, upstream_port: int) -> None:
    """A NetProxy in a process of its own, driven over ``connection``: (name, *args) calls
    its methods, ("set", attr, value) sets rtt or bandwidth."""
    proxy = NetProxy(upstream_host, upstream_port).start()
    connection.send(proxy.url)
    while True:
        name, *args = connection.recv()
        if name == "stop":
            proxy.stop()
            connection.send(None)
            return
        if name == "set":
            setattr(proxy, args[0], args[1])
            connection.send(None)
        else:
            connection.send(getattr(proxy, name)(*args))


class ProxyProcess:
    """NetProxy's link controls (rtt, bandwidth, counts, reset) with the proxy in a child
    process: benchmarks on a two-core machine then do not share the client's GIL with a
    Python proxy relaying every byte, as a real network is not in the client's process."""

    def __init__(self, upstream_host: str, upstream_port: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve_in_child, args=(child, upstream_host, upstream_port), daemon=True
        )
        self._process.start()
        self.url: str = self._connection.recv()

    def _call(self, name: str, *args: object) -> object:
        self._connection.send((name, *args))
        return self._connection.recv()

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("rtt", "bandwidth"):
            self._call("set", name, value)
        else:
            super().__setattr__(name, value)

    def counts(self) -> dict[str, int]:
        return self._call("counts")  # type: ignore[return-value]

    def reset_counts(self) -> None:
        self._call("reset_counts")

    def reset(self) -> None:
        self._call("reset")

    def stop(self) -> None:
        self._call("stop")
        self._process.join(10)
