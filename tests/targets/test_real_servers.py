"""ingestd's real Nymbl target against server software we did not write.

Werkzeug's form parser (a Flask app on werkzeug.serving) with Authlib's AuthorizationServer for
tokens; python-multipart under Starlette on uvicorn; busboy (multer's parser) on Node's http
server, installed with npm into build/ the first time. Each stand-in implements just the
endpoints ingestd uses (token, upload, list, `$value`) as shared/api/nymbl-documents.txt
describes them, and reads uploads with the real library. They show that file names arrive as
they are on disk, that a late answer (stored, but answered after the client's timeout) is found
by the look-up instead of being sent again, and that client secrets with special characters are
accepted over HTTP Basic and as form fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import yaml

from ingestd.config import targets as config_module
from ingestd.config.load import load_config
from ingestd.daemon.loop import Daemon
from ingestd.delivery.retrying import Delivered, deliver
from ingestd.sandbox import odata
from ingestd.targets.base import PermanentError
from ingestd.targets.nymbl import NymblTarget
from ingestd.targets.settings import CommonSettings
from tests.conftest import Tree, wait_for

from .conftest import HARD_FILE_NAMES, UploadFactory, pdf_bytes

CLIENT_ID = "ingestd-test"
# The node stand-in's; also one of the secrets Authlib's clients have.
CLIENT_SECRET = "not a secret: +%:åäö"
API_KEY = "test-api-key"
NODE_SCRIPT = Path(__file__).with_name("nymbl_busboy.js")
NODE_PACKAGES = Path(__file__).resolve().parents[2] / "build" / "test-node"
BUSBOY = "busboy@1"

NAMES = [*HARD_FILE_NAMES, "plain.pdf"]
# Secrets with what form and percent encodings treat specially.
SECRETS = ["with space", "plus+sign", "per%25cent%", "colon:inside", "åäö €", CLIENT_SECRET]
_DOCUMENTS = re.compile(r"/Patients\(([0-9]+)\)/Documents")
_VALUE = re.compile(r"/Patients\(([0-9]+)\)/Documents\(([^)]+)\)/\$value")


# --- what every Python stand-in shares: its documents, its tokens, late answers --------------


@dataclass
class Stored:
    patient_id: str
    file_name: str
    content_type: str
    content: bytes
    fields: dict[str, str]
    id: str = ""
    uploaded_at: str = ""

    def metadata(self) -> dict[str, object]:
        return {
            "id": self.id,
            "patient_id": self.patient_id,
            "file_name": self.file_name,
            "content_type": self.content_type,
            "file_size_bytes": len(self.content),
            "document_type": self.fields.get("document_type"),
            "description": self.fields.get("description"),
            "uploaded_at": self.uploaded_at,
        }


@dataclass
class Store:
    docs: list[Stored] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    late_count: int = 0
    late_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, doc: Stored) -> tuple[dict[str, object], float]:
        """Store `doc`; the metadata to answer with, and how long to wait before answering."""
        with self.lock:
            doc.id = f"doc-{len(self.docs) + 1}"
            doc.uploaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.docs.append(doc)
            delay = 0.0
            if self.late_count:
                self.late_count -= 1
                delay = self.late_seconds
            return doc.metadata(), delay

    def listing(self, patient_id: str, query: str) -> tuple[int, dict[str, object]]:
        try:
            parsed = odata.parse_query(query)
        except odata.ODataError:
            return 400, {"error": "unsupported query"}
        with self.lock:
            mine = [d.metadata() for d in self.docs if d.patient_id == patient_id]
        page, _ = parsed.apply(mine)
        return 200, {"value": page}

    def content(self, patient_id: str, doc_id: str) -> Stored | None:
        with self.lock:
            for doc in self.docs:
                if (doc.patient_id, doc.id) == (patient_id, doc_id):
                    return doc
        return None

    def authorised(self, headers: Any) -> bool:
        scheme, _, value = (headers.get("Authorization") or "").partition(" ")
        return scheme == "Bearer" and value in self.tokens and headers.get("x-api-key") == API_KEY

    def answer_late(self, count: int, seconds: float) -> None:
        with self.lock:
            self.late_count, self.late_seconds = count, seconds


@dataclass
class Stack:
    """One running stand-in: where it is and how to look at what it stored."""

    name: str
    base_url: str
    token_url: str
    documents: Callable[[], list[dict[str, Any]]]  # metadata + sha256 of every stored document
    answer_late: Callable[[int, float], None]

    def target(self, timeout: float = 10.0, **options: str) -> NymblTarget:
        settings: dict[str, Any] = {
            "base_url": self.base_url,
            "api_key": API_KEY,
            "token_url": self.token_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            **options,
        }
        return NymblTarget(self.name, CommonSettings(timeout_seconds=timeout), **settings)


def _python_documents(store: Store) -> Callable[[], list[dict[str, Any]]]:
    def documents() -> list[dict[str, Any]]:
        with store.lock:
            return [
                {**d.metadata(), "sha256": hashlib.sha256(d.content).hexdigest()}
                for d in store.docs
            ]

    return documents


# --- Werkzeug (Flask) with Authlib's AuthorizationServer -------------------------------------


@dataclass(frozen=True)
class OAuthClient:
    """An Authlib client model: one client id, one secret, one way to authenticate."""

    client_id: str
    secret: str
    method: str  # client_secret_basic | client_secret_post

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.method

    def check_token_endpoint_auth_method(self, method: str) -> bool:  # Authlib before 1.0
        return method == self.method

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


def oauth_clients() -> dict[str, OAuthClient]:
    clients = {CLIENT_ID: OAuthClient(CLIENT_ID, CLIENT_SECRET, "client_secret_basic")}
    for n, secret in enumerate(SECRETS):
        for method in ("client_secret_basic", "client_secret_post"):
            client = OAuthClient(f"{method}-{n}", secret, method)
            clients[client.client_id] = client
    return clients


def flask_app(store: Store) -> Any:
    flask = pytest.importorskip("flask", reason="Flask (Werkzeug's form parser) not installed")
    flask_oauth2 = pytest.importorskip(
        "authlib.integrations.flask_oauth2", reason="Authlib not installed"
    )
    from authlib.oauth2.rfc6749 import grants

    class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
            "client_secret_basic",
            "client_secret_post",
        ]

    app = flask.Flask("nymbl-werkzeug")
    clients = oauth_clients()
    server = flask_oauth2.AuthorizationServer(
        app,
        query_client=clients.get,
        save_token=lambda token, request: store.tokens.add(token["access_token"]),
    )
    server.register_grant(ClientCredentials)

    @app.post("/oauth/token")
    def token() -> Any:
        return server.create_token_response()

    @app.post("/plain/token")
    def plain_token() -> Any:
        """A token endpoint that reads Basic as RFC 7617 has it, decoding nothing more (as
        older Authlib did): Werkzeug's own parse of the Authorization header."""
        auth = flask.request.authorization
        if auth is None or (auth.username, auth.password) != (CLIENT_ID, CLIENT_SECRET):
            return flask.jsonify(error="invalid_client"), 401
        store.tokens.add(issued := os.urandom(8).hex())
        return flask.jsonify(access_token=issued, token_type="Bearer", expires_in=3600)

    @app.route("/<path:rest>", methods=["GET", "POST"])
    def nymbl(rest: str) -> Any:
        request = flask.request
        if not store.authorised(request.headers):
            return flask.jsonify(error="unauthorized"), 401
        path = "/" + rest
        if (match := _DOCUMENTS.fullmatch(path)) and request.method == "POST":
            upload = request.files.get("file")
            if upload is None or not upload.filename:
                return flask.jsonify(error="missing required field: file"), 400
            doc = Stored(
                match.group(1),
                upload.filename,
                upload.mimetype,
                upload.read(),
                {k: request.form[k] for k in request.form},
            )
            metadata, delay = store.add(doc)
            time.sleep(delay)  # a slow EHR: stored, answered after the client gave up
            return flask.jsonify(metadata), 201
        if match:
            status, body = store.listing(match.group(1), request.query_string.decode())
            return flask.jsonify(body), status
        if (match := _VALUE.fullmatch(path)) and (found := store.content(*match.groups())):
            return flask.Response(found.content, 200, mimetype=found.content_type)
        return flask.jsonify(error="not found"), 404

    return app


@pytest.fixture(scope="module")
def werkzeug_stack() -> Iterator[tuple[Stack, Store]]:
    serving = pytest.importorskip("werkzeug.serving", reason="Werkzeug not installed")
    store = Store()
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http, on loopback only
    app = flask_app(store)
    server = serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield (
            Stack(
                "werkzeug",
                url,
                f"{url}/oauth/token",
                _python_documents(store),
                store.answer_late,
            ),
            store,
        )
    finally:
        server.shutdown()
        thread.join(10)
        mp.undo()


# --- python-multipart under Starlette, served by uvicorn -------------------------------------


def starlette_app(store: Store) -> Any:
    pytest.importorskip("python_multipart", reason="python-multipart not installed")
    applications = pytest.importorskip("starlette.applications", reason="Starlette not installed")
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def token(request: Request) -> Response:
        # Tokens are not what this stand-in is about: Authlib has its own tests below.
        form = await request.form()
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return JSONResponse({"error": "invalid_client"}, 401)
        store.tokens.add(issued := os.urandom(8).hex())
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": 3600})

    async def nymbl(request: Request) -> Response:
        if not store.authorised(request.headers):
            return JSONResponse({"error": "unauthorized"}, 401)
        path = request.url.path
        if (match := _DOCUMENTS.fullmatch(path)) and request.method == "POST":
            form = await request.form()
            upload = form.get("file")
            if isinstance(upload, str) or upload is None or not upload.filename:
                return JSONResponse({"error": "missing required field: file"}, 400)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            doc = Stored(
                match.group(1),
                upload.filename,
                upload.content_type or "",
                await upload.read(),
                fields,
            )
            metadata, delay = store.add(doc)
            await asyncio.sleep(delay)  # a slow EHR: stored, answered after the client gave up
            return JSONResponse(metadata, 201)
        if match:
            status, body = store.listing(match.group(1), request.url.query)
            return JSONResponse(body, status)
        if (match := _VALUE.fullmatch(path)) and (found := store.content(*match.groups())):
            return Response(found.content, 200, media_type=found.content_type)
        return JSONResponse({"error": "not found"}, 404)

    return applications.Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/{rest:path}", nymbl, methods=["GET", "POST"]),
        ]
    )


@pytest.fixture(scope="module")
def starlette_stack() -> Iterator[tuple[Stack, Store]]:
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn not installed")
    store = Store()
    app = starlette_app(store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20)
    url = f"http://127.0.0.1:{port}"
    try:
        yield (
            Stack(
                "python-multipart",
                url,
                f"{url}/oauth/token",
                _python_documents(store),
                store.answer_late,
            ),
            store,
        )
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# --- busboy under Node -----------------------------------------------------------------------


def busboy_installed() -> Path:
    """build/test-node/node_modules with busboy, installed once (under a lock: test workers run
    in parallel); skips the test where Node or npm is missing or the install fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("busboy tests need node and npm, which are not installed")
    NODE_PACKAGES.mkdir(parents=True, exist_ok=True)
    with open(NODE_PACKAGES / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (NODE_PACKAGES / "node_modules" / "busboy" / "package.json").exists():
            _npm_install(npm)
    return NODE_PACKAGES / "node_modules"


def _npm_install(npm: str) -> None:
    # Few retries: offline (a package build points the proxy variables nowhere) it gives up soon.
    command = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", "."]
    command += ["--fetch-retries=1", "--fetch-retry-mintimeout=1000"]
    command += ["--fetch-retry-maxtimeout=5000", BUSBOY]
    try:
        done = subprocess.run(
            command, cwd=NODE_PACKAGES, capture_output=True, timeout=180, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {BUSBOY} did not finish within 180 s (offline?)")
    if done.returncode != 0:
        first = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        pytest.skip(f"npm install {BUSBOY} failed (offline?): {' '.join(first)}")


@contextlib.contextmanager
def node_stack(preserve_path: bool) -> Iterator[Stack]:
    modules = busboy_installed()
    if not NODE_SCRIPT.exists():
        pytest.skip(f"{NODE_SCRIPT.name} is not beside the tests")
    proc = subprocess.Popen(
        ["node", str(NODE_SCRIPT), json.dumps({"preservePath": preserve_path})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # the script prints it once listening
        url = f"http://127.0.0.1:{port}"

        def documents() -> list[dict[str, Any]]:
            answer: list[dict[str, Any]] = requests.get(f"{url}/_test/documents", timeout=10).json()
            return answer

        def answer_late(count: int, seconds: float) -> None:
            late = {"count": count, "ms": int(seconds * 1000)}
            requests.post(f"{url}/_test/late", data=json.dumps(late), timeout=10)

        name = "busboy" + (" (preservePath)" if preserve_path else "")
        yield Stack(name, url, f"{url}/oauth/token", documents, answer_late)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


@pytest.fixture(scope="module")
def busboy_stack() -> Iterator[Stack]:
    with node_stack(preserve_path=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def busboy_default_stack() -> Iterator[Stack]:
    with node_stack(preserve_path=False) as stack:
        yield stack


@pytest.fixture(params=["werkzeug", "python-multipart", "busboy"])
def stack(request: pytest.FixtureRequest) -> Stack:
    if request.param == "busboy":
        found: Stack = request.getfixturevalue("busboy_stack")
        return found
    pair: tuple[Stack, Store] = request.getfixturevalue(
        "werkzeug_stack" if request.param == "werkzeug" else "starlette_stack"
    )
    return pair[0]


# --- the tests -------------------------------------------------------------------------------


def _patient(stack: Stack, base: int) -> str:
    """A patient of its own per test, so tests sharing a module-scoped server do not meet."""
    return str(base + len(stack.documents()))


def _mine(stack: Stack, patient_id: str) -> list[dict[str, Any]]:
    return [d for d in stack.documents() if d["patient_id"] == patient_id]


def test_file_names_arrive_as_they_are_on_disk(stack: Stack, make_upload: UploadFactory) -> None:
    """`"` once arrived as `%22` (python-multipart), a `\\` vanished (Werkzeug), and a name
    ending in `\\` swallowed its closing quote: no file part, HTTP 400, a good document
    rejected. Non-ASCII arrived garbled in busboy, which reads `filename` as Latin-1."""
    target = stack.target()
    patient = _patient(stack, 1000)
    try:
        for n, name in enumerate(NAMES):
            target.send(make_upload(pdf_bytes(300, seed=n), patient_id=patient, file_name=name))
    finally:
        target.close()
    assert [d["file_name"] for d in _mine(stack, patient)] == NAMES


def test_busboy_by_default_keeps_what_follows_the_last_backslash(
    busboy_default_stack: Stack, make_upload: UploadFactory
) -> None:
    """busboy (and so multer) without preservePath takes a name's last path component, `/` or
    `\\` alike, whatever was sent: the documented limit. A name ending in `\\` so arrives
    with no name at all, which this stand-in refuses as the guide says (400, missing file)."""
    stack = busboy_default_stack
    target = stack.target()
    patient = _patient(stack, 2000)
    names = [name for name in NAMES if not name.endswith("\\")]
    try:
        for n, name in enumerate(names):
            target.send(make_upload(pdf_bytes(300, seed=n), patient_id=patient, file_name=name))
        with pytest.raises(PermanentError) as refused:
            target.send(make_upload(patient_id=patient, file_name="ends in a backslash\\"))
    finally:
        target.close()
    assert refused.value.http_status == 400
    expected = [name.rpartition("\\")[2] for name in names]
    assert [d["file_name"] for d in _mine(stack, patient)] == expected


def test_a_late_answer_is_found_by_content_and_not_sent_again(
    stack: Stack, make_upload: UploadFactory
) -> None:
    """The server stores the document but answers after the client's read timeout: the
    look-up that follows finds it by size and SHA-256, whatever name the server kept."""
    target = stack.target(timeout=0.5)
    patient = _patient(stack, 3000)
    data = pdf_bytes(50_000, seed=7)
    up = make_upload(data, patient_id=patient, file_name='Sent "late"\\ åäö.pdf')
    stack.answer_late(1, 1.5)
    try:
        delivered = deliver(target, up, sleep=lambda seconds: None)
    finally:
        target.close()
    assert isinstance(delivered, Delivered)
    assert delivered.found_existing
    assert delivered.attempts == 1
    [doc] = _mine(stack, patient)
    assert (doc["id"], doc["sha256"]) == (delivered.document_id, hashlib.sha256(data).hexdigest())


def test_a_late_answer_from_a_server_that_renames_is_found_too(
    busboy_default_stack: Stack, make_upload: UploadFactory
) -> None:
    """busboy by default stores `kopia.pdf` for `scan\\kopia.pdf`: a look-up by name found
    nothing and sent the document again, two copies in the patient's record."""
    stack = busboy_default_stack
    target = stack.target(timeout=0.5)
    patient = _patient(stack, 4000)
    up = make_upload(pdf_bytes(20_000, seed=8), patient_id=patient, file_name="scan\\kopia.pdf")
    stack.answer_late(1, 1.5)
    try:
        delivered = deliver(target, up, sleep=lambda seconds: None)
    finally:
        target.close()
    assert isinstance(delivered, Delivered)
    assert delivered.found_existing
    assert delivered.attempts == 1
    assert [d["file_name"] for d in _mine(stack, patient)] == ["kopia.pdf"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    ("method", "token_auth"),
    [
        ("client_secret_basic", "basic"),
        ("client_secret_basic", "auto"),
        ("client_secret_post", "body"),
        ("client_secret_post", "auto"),
    ],
)
def test_authlib_accepts_secrets_with_special_characters(
    werkzeug_stack: tuple[Stack, Store],
    make_upload: UploadFactory,
    secret: str,
    method: str,
    token_auth: str,
) -> None:
    """A space written as `+` in HTTP Basic was read as a literal `+` by Authlib:
    invalid_client, and with `token_auth: auto` the form-field fallback was refused by a
    Basic-only client, so the target paused."""
    stack, _ = werkzeug_stack
    client_id = f"{method}-{SECRETS.index(secret)}"
    target = stack.target(client_id=client_id, client_secret=secret, token_auth=token_auth)
    try:
        doc_id = target.send(make_upload(patient_id="77"))
    finally:
        target.close()
    assert doc_id


def test_a_server_reading_basic_without_decoding_gets_the_secret_as_it_is(
    werkzeug_stack: tuple[Stack, Store], make_upload: UploadFactory
) -> None:
    """RFC 6749's form-encoded Basic first; when refused, RFC 7617's plain Basic."""
    stack, _ = werkzeug_stack
    plain = dataclasses.replace(stack, token_url=f"{stack.base_url}/plain/token")
    for token_auth in ("basic", "auto"):
        target = plain.target(token_auth=token_auth)
        try:
            assert target.send(make_upload(patient_id="78"))
        finally:
            target.close()


def test_the_daemon_files_one_receipt_with_attempts_1_after_a_late_answer(
    werkzeug_stack: tuple[Stack, Store],
    tree: Tree,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole path: `ingestd once`, in this process so that the upload's read timeout can
    be shorter than the config allows (8 s) and the test stays short."""
    stack, store = werkzeug_stack
    monkeypatch.setattr(config_module, "MIN_TIMEOUT_SECONDS", 0.1)
    patient = _patient(stack, 5000)
    name = 'Remiss "Dr. O\'Brien" \\ 50%.pdf'
    data = pdf_bytes(30_000, seed=9)
    tree.drop(f"{patient}/{name}", data)
    path = tree.root / "ingestd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "paths": {
                    "inbox": str(tree.inbox),
                    "done": str(tree.done),
                    "failed": str(tree.failed),
                    "state": str(tree.state),
                },
                "targets": {
                    "nymbl": {
                        "kind": "nymbl",
                        "base_url": stack.base_url,
                        "token_url": stack.token_url,
                        "api_key": API_KEY,
                        "client_id": "client_secret_basic-0",
                        "client_secret": SECRETS[0],
                        "timeout_seconds": 0.5,
                    }
                },
                "watch": {"settle_seconds": 0.1},
                "rules": [
                    {
                        "name": "all",
                        "set": {"title": "{stem}", "type": "Referral", "target": "nymbl"},
                    }
                ],
            }
        )
    )
    path.chmod(0o600)
    store.answer_late(1, 1.5)
    summary = Daemon(load_config(path), once=True).run()
    assert (summary.done, summary.failed, summary.waiting) == (1, 0, 0)
    [receipt] = tree.receipts("done")
    assert receipt["attempts"] == 1
    [doc] = _mine(stack, patient)
    assert doc["file_name"] == name
    assert (receipt["document_id"], receipt["sha256"]) == (doc["id"], doc["sha256"])
