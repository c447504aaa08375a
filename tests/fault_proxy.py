"""A fault-injecting HTTP reverse proxy for an S3 endpoint, on 127.0.0.1.

``FaultProxy`` listens on a free port of 127.0.0.1 and forwards each request to the
upstream endpoint (SeaweedFS) byte for byte, the ``Host`` header included: clients sign
requests (SigV4) for the proxy's address, and SeaweedFS checks the signature against the
``Host`` it receives, so the signature still verifies. With probability ``rate`` per
request (from a seeded generator) it injects one fault instead of a plain answer:

``500``
    ``500 InternalError`` (S3's XML body), the request not forwarded;
``503``
    ``503 SlowDown`` (S3's XML body), the request not forwarded;
``reset``
    the connection reset (TCP RST) without an answer; a share ``reset_after`` of the
    time (seeded) after the request was forwarded and carried out, so that a retry
    repeats a write that happened;
``delay``
    the request carried out, its answer held for ``delay_s`` (longer than the client's
    read timeout), then the connection closed;
``cut``
    the request carried out, and its answer sent with its full ``Content-Length`` but
    only half of its body (half of its head when the body is empty), then closed.

``match(method, target, headers, body)``, when given, picks the requests that may be
faulted; ``max_faults`` caps how many are. ``counts`` tallies the requests and each
fault. Use it as a context manager::

    with FaultProxy(s3.endpoint_url, rate=0.05, seed=1) as proxy:
        opts = proxy.storage_options(s3.storage_options())
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

HOST = "127.0.0.1"
FAULTS = ("500", "503", "reset", "delay", "cut")
Match = Callable[[str, str, list[tuple[str, str]], bytes], bool]
_HEAD_LIMIT = 1 << 20  # request and response heads are small; a larger one is a bug here
_ERRORS = {
    "500": ("500 Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
}


class _Closed(Exception):
    """The client closed its connection (between requests, or mid-request)."""


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    pairs = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            pairs.append((name.strip(), value.strip()))
    return lines[0], pairs


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _head_bytes(first: str, headers: list[tuple[str, str]]) -> bytes:
    return ("\r\n".join([first, *(f"{k}: {v}" for k, v in headers)]) + "\r\n\r\n").encode(
        "latin-1")


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """An HTTP/1.1 chunked body: (raw bytes as sent, decoded payload)."""
    raw, data = bytearray(), bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                raw += trailer
                if trailer == b"\r\n":
                    return bytes(raw), bytes(data)
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        data += chunk[:-2]


class FaultProxy:
    """A reverse proxy to ``upstream`` (``http://host:port``) that injects faults."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        kinds: Sequence[str] = FAULTS,
        delay_s: float = 3.0,
        reset_after: float = 0.5,
        match: Match | None = None,
        max_faults: int | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the proxy forwards to http://host:port, not {upstream!r}")
        unknown = set(kinds) - set(FAULTS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds are some of {FAULTS}, not {sorted(kinds)}")
        self.upstream = (parts.hostname, parts.port)
        self.rate = rate
        self.kinds = tuple(kinds)
        self.delay_s = delay_s
        self.reset_after = reset_after
        self.match = match
        self.max_faults = max_faults
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- use ----------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("the proxy has not been started")
        return f"http://{HOST}:{self.port}"

    def storage_options(self, upstream_options: dict[str, Any]) -> dict[str, Any]:
        """``upstream_options`` (s3fs options for the upstream) aimed at the proxy."""
        opts = dict(upstream_options)
        opts["client_kwargs"] = {**opts.get("client_kwargs", {}),
                                 "endpoint_url": self.endpoint_url}
        return opts

    @property
    def faults(self) -> int:
        return sum(self.counts[k] for k in FAULTS)

    def start(self) -> Self:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, HOST, 0, limit=_HEAD_LIMIT))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as err:  # reported to start()'s caller
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fault-proxy")
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._loop = self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"FaultProxy({self.port or 'stopped'} -> {self.upstream[0]}:"
                f"{self.upstream[1]}, rate={self.rate}, {dict(self.counts)})")

    # -- serving ------------------------------------------------------------------

    def _draw(self, method: str, target: str, headers: list[tuple[str, str]],
              body: bytes) -> tuple[str | None, bool]:
        """The fault for this request (None: none), and for a reset whether the request
        is carried out first."""
        if (self.rate <= 0
                or (self.max_faults is not None and self.faults >= self.max_faults)
                or (self.match is not None and not self.match(method, target, headers, body))
                or self._rng.random() >= self.rate):
            return None, False
        return self._rng.choice(self.kinds), self._rng.random() < self.reset_after

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            while True:
                keep = await self._one(reader, writer)
                if not keep:
                    break
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            _reset(writer)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as err:
            raise _Closed from err
        first, headers = _headers(head)
        method, target = first.split(" ")[:2]
        if (_get(headers, "expect") or "").lower() == "100-continue":
            # Answer the client's wait ourselves; the upstream gets the body at once.
            headers = [(k, v) for k, v in headers if k.lower() != "expect"]
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if (_get(headers, "transfer-encoding") or "").lower() == "chunked":
            body, _ = await _read_chunked(reader)
        else:
            body = await reader.readexactly(int(_get(headers, "content-length") or 0))
        self.counts["requests"] += 1
        kind, carried_out = self._draw(method, target, headers, body)
        if kind is not None:
            self.counts[kind] += 1
        if kind in _ERRORS:
            await self._error(writer, kind, method, target)
            return True
        if kind == "reset" and not carried_out:
            _reset(writer)
            return False
        # The upstream closes after each answer: one fresh connection per request keeps
        # the framing simple (the header is not signed, so signatures still verify).
        upstream_head = _head_bytes(first, [(k, v) for k, v in headers
                                            if k.lower() not in ("connection", "keep-alive")]
                                    + [("Connection", "close")])
        status, answer_headers, answer = await self._forward(upstream_head + body, method)
        if kind == "reset":
            _reset(writer)
            return False
        answer_headers = [(k, v) for k, v in answer_headers
                          if k.lower() not in ("connection", "keep-alive", "transfer-encoding")]
        if method != "HEAD" and not (100 <= int(status.split(" ")[1]) < 200
                                     or status.split(" ")[1] in ("204", "304")):
            answer_headers = [(k, v) for k, v in answer_headers
                              if k.lower() != "content-length"]
            answer_headers.append(("Content-Length", str(len(answer))))
        out_head = _head_bytes(status, answer_headers)
        if kind == "delay":
            await asyncio.sleep(self.delay_s)
            with contextlib.suppress(ConnectionError):
                writer.write(out_head + answer)
                await writer.drain()
            return False
        if kind == "cut":
            writer.write(out_head + answer[: len(answer) // 2] if answer
                         else out_head[: len(out_head) // 2])
            await writer.drain()
            return False
        writer.write(out_head + answer)
        await writer.drain()
        return True

    async def _error(self, writer: asyncio.StreamWriter, kind: str, method: str,
                     target: str) -> None:
        status, code, message = _ERRORS[kind]
        n = self.counts["requests"]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><Resource>{target.split('?')[0]}</Resource>"
                f"<RequestId>fault-{n}</RequestId></Error>").encode()
        head = _head_bytes(f"HTTP/1.1 {status}", [
            ("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
            ("x-amz-request-id", f"fault-{n}")])
        writer.write(head if method == "HEAD" else head + body)
        await writer.drain()

    async def _forward(self, request: bytes, method: str
                       ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Send ``request`` upstream; its status line, headers and whole body."""
        reader, writer = await asyncio.open_connection(*self.upstream, limit=_HEAD_LIMIT)
        try:
            writer.write(request)
            await writer.drain()
            while True:
                status, headers = _headers(await reader.readuntil(b"\r\n\r\n"))
                code = int(status.split(" ")[1])
                if not 100 <= code < 200:
                    break
            if method == "HEAD" or code in (204, 304):
                body = b""
            elif (_get(headers, "transfer-encoding") or "").lower() == "chunked":
                _, body = await _read_chunked(reader)
            elif (length := _get(headers, "content-length")) is not None:
                body = await reader.readexactly(int(length))
            else:
                body = await reader.read()
            return status, headers, body
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
