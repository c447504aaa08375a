"""A minimal S3 endpoint that *ignores* conditional writes (``If-None-Match`` /
``If-Match``), as some S3-compatible servers do: PUT, GET, HEAD and DELETE of objects
in memory, over real HTTP, so s3fs and botocore talk to it as to any endpoint."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and "Expect: 100-continue", as clients use
    objects: dict[str, bytes]

    def log_message(self, *_args: Any) -> None:  # quiet
        pass

    def _key(self) -> str:
        return self.path.split("?", 1)[0]

    def _head(self, status: int, body: bytes = b"", etag: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", formatdate(usegmt=True))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()

    def _missing(self, with_body: bool) -> None:
        body = b"<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
        self._head(404, body)
        if with_body:
            self.wfile.write(body)

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.objects[self._key()] = data  # conditions ignored: the point of this stub
        self._head(200, etag=f'"{hashlib.md5(data).hexdigest()}"')

    def do_GET(self) -> None:
        data = self.objects.get(self._key())
        if data is None:
            return self._missing(True)
        self._head(200, data, f'"{hashlib.md5(data).hexdigest()}"')
        self.wfile.write(data)
        return None

    def do_HEAD(self) -> None:
        data = self.objects.get(self._key())
        if data is None:
            return self._missing(False)
        self._head(200, data, f'"{hashlib.md5(data).hexdigest()}"')
        return None

    def do_DELETE(self) -> None:
        self.objects.pop(self._key(), None)
        self._head(204)


@contextmanager
def ignoring_conditions_endpoint() -> Iterator[dict[str, Any]]:
    """Storage options of a running stub endpoint (bucket ``b``)."""
    handler = type("Handler", (_Handler,), {"objects": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"key": "stub", "secret": "stub", "skip_instance_cache": True,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{server.server_port}",
                                 "region_name": "us-east-1"}}
    finally:
        server.shutdown()
        server.server_close()
