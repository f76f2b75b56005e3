"""HTTP plumbing: the threaded server, routing, reading bodies, applying faults, answering.

One `Context` (store, faults, settings) is shared by every connection; a request is routed from
its method and path before its body is read, so an oversized upload is refused unread. Nothing is
logged: request lines carry patient ids.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer

from ingestd.sandbox import control, fhir, fhir_token, leyr, nymbl, oauth
from ingestd.sandbox.faults import Fault
from ingestd.sandbox.store import RequestRecord
from ingestd.sandbox.wire import (
    Abort,
    Context,
    Request,
    Response,
    Route,
    error,
    not_found,
)

# An idle keep-alive connection is closed after this long, so its thread does not live forever.
_IDLE_TIMEOUT = 120.0
# After refusing a body unread, keep swallowing what the client still sends (never storing it) so
# it gets to read the answer instead of a reset connection, as nginx's lingering close does.
_LINGER_SECONDS = 10.0
_LINGER_IDLE = 2.0
_CHUNK_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_MAX_LINE = 8192


class _TooLarge(Exception):
    pass


class _BadFraming(Exception):
    pass


class _Incomplete(Exception):
    pass


def _body_limit(ctx: Context, chosen: Route) -> int:
    if ctx.proxy_body_limit is None or chosen.api == "control":
        return chosen.max_body
    return min(chosen.max_body, ctx.proxy_body_limit)


def route(method: str, path: str) -> Route:
    if path == oauth.PATH:
        return oauth.route(method)
    if path == fhir_token.PATH:
        return fhir_token.route(method)
    if path.startswith(fhir.PREFIX + "/"):
        return fhir.route(method, path[len(fhir.PREFIX) :])
    if path.startswith(leyr.PREFIX + "/"):
        return leyr.route(method, path[len(leyr.PREFIX) :])
    if path.startswith(nymbl.PREFIX + "/"):
        return nymbl.route(method, path[len(nymbl.PREFIX) :])
    if path.startswith(control.PREFIX + "/"):
        return control.route(method, path[len(control.PREFIX) :])
    return not_found("control")


def _fault_response(fault: Fault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
    return error(fault.status, "sandbox_fault", "fault injected by the sandbox", headers)


@dataclass(frozen=True)
class _Answer:
    response: Response | None  # None: close the connection without answering
    body_unread: bool = False  # close after answering, lingering for what the client still sends


class _Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    server_version = "ingestd-sandbox"
    timeout = _IDLE_TIMEOUT
    # Headers and body go out in two writes; Nagle plus delayed ACK would stall each answer.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self._continued = False
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing: request lines carry patient ids."""

    def handle_expect_100(self) -> bool:
        # Deferred: 100 Continue goes out only when the body is actually wanted (_read_body).
        self._continued = False
        return True

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        ctx = self.server.context
        path, _, query = self.path.partition("?")
        chosen = route(self.command, path)
        answer = self._answer(ctx, chosen, path, query)
        if chosen.api == "fhir" and answer.response is not None:
            answer = _Answer(fhir.as_outcome(answer.response), answer.body_unread)
        status = 0 if answer.response is None else answer.response.status
        # Recorded before answering, so a client that has its answer also finds it in the log.
        ctx.store.record(
            RequestRecord(chosen.api, self.command, chosen.kind, status, chosen.patient_id)
        )
        if answer.response is None:
            self.close_connection = True
            return
        try:
            self._send(answer.response, close=answer.body_unread)
            if answer.body_unread:
                self._linger()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, ctx: Context, chosen: Route, path: str, query: str) -> _Answer:
        fault = None if chosen.api == "control" else ctx.faults.take(chosen.api, chosen.kind)
        if fault is not None and fault.action == "delay":
            time.sleep(fault.delay_seconds)
            fault = None
        try:
            request = Request(
                self.command, path, query, self.headers, self._read_body(_body_limit(ctx, chosen))
            )
        except _TooLarge:
            if fault is not None and fault.action != "status":
                return _Answer(None)
            refusal = (
                _fault_response(fault)
                if fault is not None
                else error(413, "payload_too_large", "request body is too large")
            )
            return _Answer(refusal, body_unread=True)
        except _BadFraming as exc:
            return _Answer(error(400, "bad_request", str(exc)), body_unread=True)
        except _Incomplete:
            return _Answer(None)
        if fault is not None and fault.action == "status":
            return _Answer(_fault_response(fault))
        if fault is not None and fault.action == "drop":
            return _Answer(None)
        try:
            response = chosen.handler(ctx, request)
        except Abort as abort:
            response = abort.response
        if fault is not None and fault.action == "revoke":
            ctx.store.revoke_tokens()
            fault = None
        if fault is not None:  # commit_drop: the work is done, the client never hears of it
            return _Answer(None)
        if chosen.kind == "upload" and ctx.latency_seconds > 0:
            time.sleep(ctx.latency_seconds)
        return _Answer(response)

    def _continue(self) -> None:
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and self.request_version == "HTTP/1.1" and not self._continued:
            self._continued = True
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_body(self, limit: int) -> bytes:
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            if lengths:
                raise _BadFraming("both Transfer-Encoding and Content-Length")
            codings = [c.strip().lower() for c in ",".join(encodings).split(",")]
            if codings != ["chunked"]:
                raise _BadFraming("unsupported Transfer-Encoding")
            self._continue()
            return self._read_chunked(limit)
        if not lengths:
            return b""
        text = lengths[0].strip()
        if len(set(lengths)) != 1 or not text.isascii() or not text.isdigit():
            raise _BadFraming("invalid Content-Length")
        length = int(text)
        if length > limit:
            raise _TooLarge
        if length == 0:
            return b""
        self._continue()
        body = self.rfile.read(length)
        if len(body) != length:
            raise _Incomplete
        return body

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise _Incomplete if len(line) < _MAX_LINE else _BadFraming("chunk line too long")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE_LINE.fullmatch(size_text):
                raise _BadFraming("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise _TooLarge
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _Incomplete
            if self.rfile.read(2) != b"\r\n":
                raise _BadFraming("chunk not followed by CRLF")
            chunks.append(chunk)
        for _ in range(100):  # trailer fields, ignored
            line = self.rfile.readline(_MAX_LINE)
            if not line:
                raise _Incomplete
            if line in (b"\r\n", b"\n"):
                return b"".join(chunks)
        raise _BadFraming("too many trailer fields")

    def _send(self, response: Response, close: bool) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        # RFC 9110 forbids a Content-Length (and a body) on 204 and 304.
        if response.status not in (204, 304):
            if response.content_type is not None:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        if close or self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if response.status not in (204, 304) and response.body:
            self.wfile.write(response.body)

    def _linger(self) -> None:
        sock = self.connection
        deadline = time.monotonic() + _LINGER_SECONDS
        buffer = bytearray(64 * 1024)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(_LINGER_IDLE)
            while time.monotonic() < deadline and sock.recv_into(buffer):
                pass


class SandboxServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server with keep-alive; `close_connections` ends kept-alive ones."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], context: Context) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.context = context
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine without DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that dies mid-request (kill -9 in the crash tests) resets its connection:
        # expected here, and not worth a traceback on stderr. Anything else is still shown.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake every handler blocked on a kept-alive connection, so none answers after stop."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
