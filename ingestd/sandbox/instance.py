"""The `Sandbox` object: start and stop a sandbox, inspect and steer it, and `serve_forever`.

This is the Python API other code uses; the HTTP side lives in server.py and the routes.
"""

from __future__ import annotations

import base64
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType, TracebackType

from ingestd.sandbox import control, fhir, fhir_token, leyr, nymbl, oauth
from ingestd.sandbox.credentials import SANDBOX_CREDENTIALS
from ingestd.sandbox.faults import Fault, FaultQueue
from ingestd.sandbox.fhir_state import FhirState
from ingestd.sandbox.server import SandboxServer
from ingestd.sandbox.store import RequestRecord, Store, StoredDocument
from ingestd.sandbox.wire import Context


class Sandbox:
    """A local stand-in for the Leyr, Nymbl and FHIR R4 document APIs, with fault injection.

    `known_patients`: None means every syntactically valid patient id exists; otherwise only
    these ids do (any written form: `abc_1`, `emr_id:abc_1`, `12345`) and others get 404.
    `proxy_body_limit`: like a reverse proxy in front of the EHR with a lower body limit (nginx's
    client_max_body_size), a larger request body is refused with 413 before it is read.
    `tls`: serve https with this server-side context (its certificate chain loaded).
    `fhir_conditional_create`: False makes the FHIR server one without conditional create.
    `fhir_patients`: identifiers (`system|value`) that several FHIR Patients share, with their ids.
    `fhir_clock_ahead_seconds`: the FHIR token endpoint's clock runs ahead (assertions expire).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_seconds: float = 0.0,
        token_ttl_seconds: float = 3600,
        known_patients: Iterable[str] | None = None,
        token_client_auth: Iterable[str] = ("basic", "body"),
        proxy_body_limit: int | None = None,
        tls: ssl.SSLContext | None = None,
        fhir_conditional_create: bool = True,
        fhir_patients: Mapping[str, Sequence[str]] | None = None,
        fhir_clock_ahead_seconds: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._context = Context(
            store=Store(),
            faults=FaultQueue(),
            known_patients=None if known_patients is None else frozenset(known_patients),
            token_ttl_seconds=token_ttl_seconds,
            latency_seconds=latency_seconds,
            token_client_auth=frozenset(token_client_auth),
            proxy_body_limit=proxy_body_limit,
            fhir=FhirState(
                fhir_conditional_create, dict(fhir_patients or {}), fhir_clock_ahead_seconds
            ),
        )
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        server = SandboxServer((self.host, self.port), self._context)
        if self._tls is not None:
            # A client that refuses our certificate fails its handshake in accept(), an OSError
            # socketserver drops; the next connection is served as usual.
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "http" if self._tls is None else "https"
        self._context.url = f"{scheme}://{host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ingestd-sandbox-{self.port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self._context.url:
            raise RuntimeError("the sandbox is not started")
        return self._context.url

    @property
    def leyr_base_url(self) -> str:
        return self.url + leyr.PREFIX

    @property
    def nymbl_base_url(self) -> str:
        return self.url + nymbl.PREFIX

    @property
    def nymbl_token_url(self) -> str:
        return self.url + oauth.PATH

    @property
    def fhir_base_url(self) -> str:
        return self.url + fhir.PREFIX

    @property
    def fhir_token_url(self) -> str:
        return self.url + fhir_token.PATH

    def fhir_binaries(self) -> int:
        """How many Binaries the FHIR server holds."""
        return self._context.fhir.binaries()

    def documents(self, api: str | None = None) -> list[StoredDocument]:
        return self._context.store.documents(api)

    def requests(self, api: str | None = None) -> list[RequestRecord]:
        return self._context.store.requests(api)

    def delete_document(self, doc_id: str) -> None:
        """The EHR's own users deleted this document."""
        control.tamper(self._context.store, {"id": doc_id, "action": "delete"})

    def change_content(self, doc_id: str, content: bytes) -> None:
        """The EHR now holds other bytes under this document id."""
        encoded = base64.b64encode(content).decode("ascii")
        control.tamper(self._context.store, {"id": doc_id, "action": "content", "content": encoded})

    def move_document(self, doc_id: str, patient_id: str) -> None:
        """The document was re-filed under another patient."""
        request = {"id": doc_id, "action": "move", "patient_id": patient_id}
        control.tamper(self._context.store, request)

    def add_fault(self, fault: Fault) -> None:
        self._context.faults.add(fault)

    def clear_faults(self) -> None:
        self._context.faults.clear()

    def reset(self) -> None:
        self._context.store.reset()
        self._context.fhir.reset()
        self._context.faults.clear()

    def describe(self) -> str:
        """Where the sandbox listens and the credentials to use, for `ingestd sandbox` to print."""
        leyr_creds, nymbl_creds = SANDBOX_CREDENTIALS["leyr"], SANDBOX_CREDENTIALS["nymbl"]
        lines = [
            f"ingestd sandbox: stand-in Leyr and Nymbl document APIs on {self.url}",
            "(test credentials only; documents are kept in memory and lost on exit)",
            "",
            "Leyr",
            f"  base_url       {self.leyr_base_url}",
            f"  emr            {leyr_creds['emr']}",
            f"  care_unit_id   {leyr_creds['care_unit_id']}",
            f"  client_id      {leyr_creds['client_id']}",
            f"  client_secret  {leyr_creds['client_secret']}",
            "Nymbl",
            f"  base_url       {self.nymbl_base_url}",
            f"  token_url      {self.nymbl_token_url}",
            f"  api_key        {nymbl_creds['api_key']}",
            f"  client_id      {nymbl_creds['client_id']}",
            f"  client_secret  {nymbl_creds['client_secret']}",
            "FHIR R4",
            f"  base_url       {self.fhir_base_url}",
            f"  token_url      {self.fhir_token_url}",
            f"  client_id      {SANDBOX_CREDENTIALS['fhir']['client_id']}",
            f"  client_secret  {SANDBOX_CREDENTIALS['fhir']['client_secret']}",
            f"  bearer_token   {SANDBOX_CREDENTIALS['fhir']['bearer_token']}",
            "Control",
            f"  {self.url}{control.PREFIX}/documents  /requests  /faults  /reset  /tamper",
        ]
        if self._context.latency_seconds > 0:
            lines.append(f"Latency: {self._context.latency_seconds:g} s added to every upload")
        return "\n".join(lines)


def serve_forever(
    host: str,
    port: int,
    latency_seconds: float = 0.0,
    *,
    announce: Callable[[str], object] | None = None,
) -> None:
    """Serve until KeyboardInterrupt or SIGTERM; `announce` gets `describe()` once listening.

    The CLI passes `print` as `announce`: this module never prints.
    """

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    sandbox = Sandbox(host=host, port=port, latency_seconds=latency_seconds)
    try:
        sandbox.start()
        if announce is not None:
            announce(sandbox.describe())
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
