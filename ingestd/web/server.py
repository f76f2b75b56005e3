"""The status page over HTTP: the standard library's threading server in a daemon thread, like
the metrics listener, with a handful of fixed routes.

    GET /            the overview (reloads itself every `refresh_seconds`)
    GET /style.css   GET /refresh.js
    POST /search     q=…: files whose name holds it (a POST: a name never goes in a URL)
    POST /retry      file=KEY&csrf=TOKEN: put that failed file back, as `ingestd retry` does

Every request passes the `Gate` first (HTTP Basic when a password is set; without one, only a
loopback `Host` is answered: see web/auth.py). Every response sends
`Cache-Control: no-store`, a Content-Security-Policy that allows only our own style sheet and
script, `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff` and
`Referrer-Policy: no-referrer`. The access log names the method, the route (one of the fixed
ones, else `other`), the status and the client address: never a query, a folder or a file.
An unexpected error answers 500 and is logged by its type alone (`status_page_error`): no
traceback, no message, for either may name a patient folder.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from ingestd.config.statuspage import StatusPageConfig
from ingestd.journal.interface import JournalUnavailable
from ingestd.observe.logs import event
from ingestd.web import pages
from ingestd.web.auth import Csrf, Gate, loopback_host, new_session
from ingestd.web.view import ViewCache

log = logging.getLogger("ingestd.status_page")

COOKIE = "ingestd_session"
MAX_FORM_BYTES = 4096
ROUTES = ("/", "/style.css", "/refresh.js", "/search", "/retry", "/favicon.ico")
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HTML = "text/html; charset=utf-8"


@dataclass
class Site:
    """What the handler needs: the settings, the gate, the cached view, and the retry itself
    (`ingestd retry`'s own function, given the failed file's receipt)."""

    settings: Callable[[], StatusPageConfig]
    gate: Gate
    views: ViewCache
    retry: Callable[[Path], None]
    csrf: Csrf


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception no handler caught: its type is logged, never the traceback or message
        (socketserver would print both to stderr, and they may hold a patient folder's name)."""
        exc = sys.exc_info()[1]
        level = logging.INFO if isinstance(exc, ConnectionError) else logging.ERROR
        event(log, level, "status_page_error", reason=type(exc).__name__)


class StatusPageServer:
    def __init__(self, listen: tuple[str, int], site: Site) -> None:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        server_class = type("Server", (_Server,), {"address_family": family})
        self._server = server_class(listen, _handler(site))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long a stop waits for the loop to notice
            name="ingestd-status-page",
            daemon=True,
        )

    def start(self) -> StatusPageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    retrying = threading.Lock()  # one Retry at a time

    class Handler(BaseHTTPRequestHandler):
        route = "other"
        _cookie_header = ""
        _answered = False  # the status line is sent: too late for a 500
        server_version = "ingestd"
        sys_version = ""
        timeout = 30  # a client that stalls mid-request frees its thread

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            self.route = self.path.split("?", 1)[0]
            if self.route not in ROUTES:
                self.route = "other"
            self._cookie_header = ""
            self._answered = False
            try:
                self._answer(method)
            except Exception as exc:
                if self._answered or isinstance(exc, ConnectionError):
                    raise  # the server's handle_error logs its type
                # Its type only: a message or traceback may name a patient folder.
                event(log, logging.ERROR, "status_page_error", reason=type(exc).__name__)
                self.close_connection = True
                self._cookie_header = ""
                self._html(500, "Not shown", "The page could not be made; see the log.")

        def _answer(self, method: str) -> None:
            client = self.client_address[0]
            settings = site.settings()
            site.gate.use(settings.user, settings.password)  # a reload may have changed them
            if settings.password is None and not loopback_host(self.headers.get("Host")):
                event(log, logging.WARNING, "status_page_host_refused", client=client)
                self._text(
                    421,
                    "This page answers to http://127.0.0.1 or http://localhost only. Behind a "
                    "reverse proxy, let it send the upstream address as Host, or set a password.\n",
                )
                return
            verdict = site.gate.check(client, self.headers.get("Authorization"))
            if verdict.failed:
                event(log, logging.WARNING, "status_page_login_failed", client=client)
            if verdict.locked_for:
                if verdict.failed:
                    event(log, logging.WARNING, "status_page_locked_out", client=client)
                retry_after = {"Retry-After": str(int(verdict.locked_for) + 1)}
                self._text(429, "Too many failed logins: try again later.\n", retry_after)
            elif not verdict.allowed:
                challenge = {"WWW-Authenticate": 'Basic realm="ingestd status", charset="UTF-8"'}
                self._text(401, "This page needs the status page password.\n", challenge)
            else:
                self._dispatch(method)

        def _dispatch(self, method: str) -> None:
            route = (method if method != "HEAD" else "GET", self.route)
            if route == ("GET", "/"):
                page = pages.overview(
                    site.views.get(), site.csrf.token(self._session()), self._refresh()
                )
                self._send(200, page.encode(), HTML)
            elif route == ("GET", "/style.css"):
                self._send(200, pages.STYLE.encode(), "text/css; charset=utf-8")
            elif route == ("GET", "/refresh.js"):
                self._send(200, pages.SCRIPT.encode(), "text/javascript; charset=utf-8")
            elif route == ("POST", "/search"):
                self._search()
            elif route == ("POST", "/retry"):
                self._retry()
            elif self.route in ROUTES and self.route != "/favicon.ico":
                self._text(405, "Method not allowed.\n", {"Allow": "GET, HEAD, POST"})
            else:
                self._text(404, "Not found.\n")

        def _search(self) -> None:
            form = self._form()
            if form is None:
                return
            query = form.get("q", "")[:200]
            view = site.views.get()
            found = view.search(query)
            page = pages.results(view, query, found, site.csrf.token(self._session()))
            self._send(200, page.encode(), HTML)

        def _retry(self) -> None:
            form = self._form()
            if form is None:
                return
            if not site.csrf.valid(self._cookie(), form.get("csrf")):
                event(
                    log, logging.WARNING, "status_page_csrf_refused", client=self.client_address[0]
                )
                self._html(403, "Not sent", "The form was stale or not from this page: try again.")
                return
            item = site.views.get(fresh=True).failed_item(form.get("file", ""))
            if item is None or item.receipt is None:
                self._html(404, "Not found", "That file is no longer among the failed files.")
                return
            with retrying:  # a double click: the second waits, then finds it put back
                if os.path.lexists(item.receipt):
                    try:
                        site.retry(item.receipt)
                    except JournalUnavailable:
                        event(
                            log, logging.WARNING, "status_page_retry_failed",
                            reason="JournalUnavailable",
                        )  # fmt: skip
                        self._html(
                            503, "Not put back",
                            "The shared journal is not answering: try again in a minute.",
                        )  # fmt: skip
                        return
                    except (OSError, ValueError) as exc:
                        if os.path.lexists(item.receipt):
                            event(
                                log, logging.ERROR, "status_page_retry_failed",
                                reason=type(exc).__name__,
                            )  # fmt: skip
                            self._html(
                                500, "Not put back", "The file could not be put back; see the log."
                            )
                            return
                        # its receipt is gone: put back meanwhile (`ingestd retry`, say)
                site.views.forget()
            self._send(303, b"", "text/plain", {"Location": "/"})

        def _form(self) -> dict[str, str] | None:
            """The urlencoded body's fields (first value of each); None: answered already."""
            kind = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if kind != "application/x-www-form-urlencoded" or not 0 <= length <= MAX_FORM_BYTES:
                self.close_connection = True
                self._text(400, "Expected a small form.\n")
                return None
            body = self.rfile.read(length).decode("utf-8", "replace")
            fields = parse_qs(body, keep_blank_values=True, max_num_fields=10)
            return {name: values[0] for name, values in fields.items()}

        def _session(self) -> str:
            session = self._cookie()
            if session is None:
                session = new_session()
                secure = "; Secure" if self._behind_tls() else ""
                self._cookie_header = (
                    f"{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict{secure}"
                )
            return session

        def _cookie(self) -> str | None:
            try:
                morsel = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
            except CookieError:
                return None
            value = morsel.value if morsel is not None else ""
            return value if 20 <= len(value) <= 100 and value.isascii() else None

        def _behind_tls(self) -> bool:
            return self.headers.get("X-Forwarded-Proto", "").lower() == "https"

        def _refresh(self) -> float:
            return site.settings().refresh_seconds

        def _html(self, status: int, title: str, text: str) -> None:
            self._send(status, pages.notice(title, text).encode(), HTML)

        def _text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
            self._send(status, text.encode(), "text/plain; charset=utf-8", extra)

        def _send(
            self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None
        ) -> None:
            # Logged before answering: once the client has its answer, the line is there.
            level = logging.DEBUG if status < 400 and self.command != "POST" else logging.INFO
            event(
                log, level, "status_page_request", method=self.command, route=self.route,
                status=status, client=self.client_address[0],
            )  # fmt: skip
            self._answered = True
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            if self._cookie_header:
                self.send_header("Set-Cookie", self._cookie_header)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def end_headers(self) -> None:
            for name, value in HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line holds the path as sent: our own access log says less

    return Handler


def start_page(listen: tuple[str, int], site: Site) -> StatusPageServer | None:
    """Serve the page; an address that cannot be bound is logged, not fatal (like metrics)."""
    try:
        server = StatusPageServer(listen, site).start()
    except OSError as exc:
        event(log, logging.ERROR, "status_page_unavailable", port=listen[1], reason=exc.strerror)
        return None
    event(log, logging.INFO, "status_page_listening", address=f"{listen[0]}:{server.port}")
    return server
