"""A fault-injecting HTTP proxy for S3 tests: a threaded server on 127.0.0.1 that forwards each
request to an upstream S3 endpoint (the moto server) unless a rule says to break it.

    proxy = FaultProxy(upstream="http://127.0.0.1:5000").start()
    proxy.add(Fault.slow_down(), method="PUT", path=r"/processed/.*manifest", times=1)
    ... point a client at proxy.url (AWS_ENDPOINT_URL_S3=proxy.url) ...
    assert proxy.injected("slow_down") == 1

Faults: a 503 `SlowDown` (S3's throttling answer, retried by botocore), a 403 `AccessDenied`
(permanent, never retried), a 501 `NotImplemented` (an S3-compatible server without a feature,
e.g. LocalStack's answer to a conditional DELETE), a bare 404 with no error body (what some
S3-compatible servers send for a missing key), a connection reset in the middle of the request
body, and a delay before forwarding. A rule matches on method, a regular expression searched in
the request path (`/<bucket>/<key>?<query>`, path-style as botocore uses it for an IP endpoint)
and optionally a header the request carries (`header="If-Match"`), and fires for the first
`times` matching requests (None: every one). Every request is logged, so a test can prove its
faults were actually hit.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Fault:
    kind: str  # slow_down | access_denied | not_implemented | bare_404 | reset | delay
    seconds: float = 0.0

    @classmethod
    def slow_down(cls) -> Fault:
        return cls("slow_down")

    @classmethod
    def access_denied(cls) -> Fault:
        return cls("access_denied")

    @classmethod
    def not_implemented(cls) -> Fault:
        """501 NotImplemented with S3's XML error body: the server has no such feature."""
        return cls("not_implemented")

    @classmethod
    def bare_404(cls) -> Fault:
        """404 Not Found with an empty body: no `NoSuchKey` code for the client to read."""
        return cls("bare_404")

    @classmethod
    def reset(cls) -> Fault:
        """Read half the request body, then close the socket with RST."""
        return cls("reset")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait, then forward the request normally."""
        return cls("delay", seconds)


@dataclass
class Rule:
    fault: Fault
    method: str | None
    path: re.Pattern
    times: int | None
    header: str | None = None
    fired: int = 0

    def matches(self, method: str, path: str, headers) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.header is not None and self.header not in headers:
            return False
        return (self.method is None or self.method == method) and bool(self.path.search(path))


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # URL-decoded
    fault: str | None
    status: int | None  # what the client got; None for a reset


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    log: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- control ----------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        header: str | None = None,
    ) -> Rule:
        rule = Rule(fault, method, re.compile(path), times, header)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.log if s.fault is not None and (kind is None or s.fault == kind))

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        pattern = re.compile(path)
        with self._lock:
            return [s for s in self.log if (method is None or s.method == method) and pattern.search(s.path)]

    # -- used by the handler thread ---------------------------------------------------------------

    def _choose(self, method: str, path: str, headers) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.fired += 1
                    return rule.fault
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.log.append(seen)


_ERRORS = {  # fault → what S3 (or an S3-compatible server) answers
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
    "not_implemented": (501, "NotImplemented", "A header you provided implies functionality that is not implemented"),
}


def _s3_error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>faultproxy</RequestId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` is answered for us
    owner: FaultProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        method, path = self.command, unquote(self.path)
        fault = self.owner._choose(method, path, self.headers)
        if fault is not None and fault.kind == "reset":
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(max(1, length // 2))
            self.owner._record(Seen(method, path, "reset", None))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        body = self._read_body()
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "bare_404":
            self.owner._record(Seen(method, path, fault.kind, 404))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault is not None and fault.kind in _ERRORS:
            status, code, message = _ERRORS[fault.kind]
            self.owner._record(Seen(method, path, fault.kind, status))
            payload = _s3_error(code, message) if method != "HEAD" else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "expect"}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.owner._upstream, timeout=60)
        try:
            upstream.request(method, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            response_headers = response.getheaders()
        finally:
            upstream.close()
        self.owner._record(Seen(method, path, fault.kind if fault else None, response.status))
        self.send_response(response.status, response.reason)
        for name, value in response_headers:
            if name.lower() not in _HOP_BY_HOP and not (name.lower() == "content-length" and method != "HEAD"):
                self.send_header(name, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)
