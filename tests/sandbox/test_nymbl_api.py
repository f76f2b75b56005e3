"""The sandbox's Nymbl API over real loopback sockets: OAuth2 token, documents, OData, multipart."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from ingestd.sandbox import SANDBOX_CREDENTIALS, Sandbox
from ingestd.sandbox.multipart import MultipartError, filename_from, parse, parse_params
from tests.conftest import wait_for

from . import assert_holds, created

CREDS = SANDBOX_CREDENTIALS["nymbl"]
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MiB = 1024 * 1024
FORM = {
    "grant_type": "client_credentials",
    "client_id": CREDS["client_id"],
    "client_secret": CREDS["client_secret"],
}


def token(sb: Sandbox) -> str:
    response = requests.post(sb.nymbl_token_url, data=FORM, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def auth(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sb)}", "x-api-key": CREDS["api_key"]}


def docs_url(sb: Sandbox, pid: str = "12345") -> str:
    return f"{sb.nymbl_base_url}/Patients({pid})/Documents"


def upload(
    sb: Sandbox,
    pid: str = "12345",
    file: tuple[str, bytes, str] | None = ("referral.pdf", PDF, "application/pdf"),
    headers: dict[str, str] | None = None,
    **data: str,
) -> requests.Response:
    files = {"file": file} if file is not None else {"other": ("x.txt", b"x", "text/plain")}
    return requests.post(
        docs_url(sb, pid),
        headers=headers if headers is not None else auth(sb),
        files=files,
        data=data,
        timeout=30,
    )


def raw_upload(sb: Sandbox, disposition: bytes, content: bytes = PDF) -> requests.Response:
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: application/pdf\r\n\r\n"
        + content
        + b"\r\n--XyZ--\r\n"
    )
    headers = {**auth(sb), "Content-Type": "multipart/form-data; boundary=XyZ"}
    return requests.post(docs_url(sb), headers=headers, data=body, timeout=10)


# --- token endpoint ---------------------------------------------------------------------------


def test_token_with_form_credentials(sb: Sandbox) -> None:
    response = requests.post(sb.nymbl_token_url, data=FORM, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"


def test_token_with_http_basic(sb: Sandbox) -> None:
    response = requests.post(
        sb.nymbl_token_url,
        data={"grant_type": "client_credentials"},
        auth=(CREDS["client_id"], CREDS["client_secret"]),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["access_token"] != token(sb)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"grant_type": "client_credentials"}},
        {"data": {**FORM, "client_secret": "wrong"}},
        {"data": {**FORM, "client_id": "wrong"}},
        {"data": {"grant_type": "client_credentials"}, "auth": (CREDS["client_id"], "wrong")},
        {
            "data": {"grant_type": "client_credentials"},
            "headers": {"Authorization": "Basic !!!"},
        },
    ],
)
def test_token_refuses_bad_client_credentials(sb: Sandbox, kwargs: dict[str, Any]) -> None:
    response = requests.post(sb.nymbl_token_url, timeout=10, **kwargs)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_token_refuses_two_authentication_methods(sb: Sandbox) -> None:
    basic = (CREDS["client_id"], CREDS["client_secret"])
    response = requests.post(sb.nymbl_token_url, data=FORM, auth=basic, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_token_refuses_other_grants(sb: Sandbox) -> None:
    for grant in ("password", "authorization_code", ""):
        response = requests.post(sb.nymbl_token_url, data={**FORM, "grant_type": grant}, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"
    missing = {k: v for k, v in FORM.items() if k != "grant_type"}
    response = requests.post(sb.nymbl_token_url, data=missing, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_token_needs_a_form_body(sb: Sandbox) -> None:
    assert requests.post(sb.nymbl_token_url, json=FORM, timeout=10).status_code == 400
    assert requests.get(sb.nymbl_token_url, timeout=10).status_code == 405


# --- authentication of document requests -----------------------------------------------------


def test_document_requests_need_token_and_api_key(sb: Sandbox) -> None:
    good = auth(sb)
    variants: list[dict[str, str]] = [
        {},
        {"x-api-key": CREDS["api_key"]},
        {"Authorization": good["Authorization"]},
        {**good, "x-api-key": "wrong"},
        {**good, "Authorization": "Bearer not-a-token"},
        {**good, "Authorization": "Basic " + base64.b64encode(b"a:b").decode()},
    ]
    for headers in variants:
        assert upload(sb, headers=headers).status_code == 401
        assert requests.get(docs_url(sb), headers=headers, timeout=10).status_code == 401
    assert sb.documents() == []
    assert upload(sb, headers=good).status_code == 201


def test_expired_token_is_refused() -> None:
    with Sandbox(token_ttl_seconds=1) as sb:
        response = requests.post(sb.nymbl_token_url, data=FORM, timeout=10)
        assert response.json()["expires_in"] == 1
        headers = {
            "Authorization": f"Bearer {response.json()['access_token']}",
            "x-api-key": CREDS["api_key"],
        }
        assert requests.get(docs_url(sb), headers=headers, timeout=10).status_code == 200

        def expired() -> bool:
            status = requests.get(docs_url(sb), headers=headers, timeout=10).status_code
            assert status in (200, 401)
            return status == 401

        wait_for(expired, timeout=5, interval=0.05)
        fresh = {**headers, "Authorization": f"Bearer {token(sb)}"}
        assert requests.get(docs_url(sb), headers=fresh, timeout=10).status_code == 200


# --- documents --------------------------------------------------------------------------------


def test_upload_answers_the_documented_object(sb: Sandbox) -> None:
    response = upload(sb, document_type="Referral", description="Referral from Dr. Smith")
    body, doc_id, _ = created(response, "doc-", "uploaded_at")
    assert body == {
        "patient_id": "12345",
        "file_name": "referral.pdf",
        "content_type": "application/pdf",
        "file_size_bytes": len(PDF),
        "document_type": "Referral",
        "description": "Referral from Dr. Smith",
        "uploaded_by_id": "sandbox-client",
    }
    [doc] = sb.documents("nymbl")
    assert doc.id == doc_id
    assert doc.patient_id == "12345"
    assert doc.name == "referral.pdf"
    assert doc.title == "Referral from Dr. Smith"
    assert doc.doc_type == "Referral"
    assert doc.mime == "application/pdf"
    assert_holds(doc, PDF)
    assert doc.fields == {"document_type": "Referral", "description": "Referral from Dr. Smith"}
    assert sb.documents("leyr") == []


def test_upload_without_optional_fields(sb: Sandbox) -> None:
    body = upload(sb).json()
    assert body["document_type"] is None
    assert body["description"] is None
    assert sb.documents()[0].fields == {}


def test_get_value_list_and_delete(sb: Sandbox) -> None:
    headers = auth(sb)
    first = upload(sb, headers=headers).json()["id"]
    second = upload(sb, file=("card.png", PNG, "image/png"), headers=headers).json()["id"]
    upload(sb, pid="999", headers=headers)

    meta = requests.get(f"{docs_url(sb)}({second})", headers=headers, timeout=10)
    assert meta.status_code == 200
    assert meta.json()["file_name"] == "card.png"
    assert "content" not in meta.json()

    for suffix in ("$value", "%24value"):
        value = requests.get(f"{docs_url(sb)}({second})/{suffix}", headers=headers, timeout=10)
        assert value.status_code == 200
        assert value.content == PNG
        assert value.headers["Content-Type"] == "image/png"
        assert value.headers["Content-Length"] == str(len(PNG))

    quoted = requests.get(f"{docs_url(sb)}('{first}')", headers=headers, timeout=10)
    assert quoted.status_code == 200

    listing = requests.get(docs_url(sb), headers=headers, timeout=10)
    assert listing.status_code == 200
    body = listing.json()
    assert body["@odata.context"] == f"{sb.nymbl_base_url}/$metadata#Documents"
    assert "@odata.count" not in body
    assert [item["id"] for item in body["value"]] == [first, second]

    gone = requests.delete(f"{docs_url(sb)}({first})", headers=headers, timeout=10)
    assert gone.status_code == 204
    assert requests.get(f"{docs_url(sb)}({first})", headers=headers, timeout=10).status_code == 404
    missing = requests.get(f"{docs_url(sb)}({first})/$value", headers=headers, timeout=10)
    assert missing.status_code == 404
    listing = requests.get(docs_url(sb), headers=headers, timeout=10).json()["value"]
    assert [item["id"] for item in listing] == [second]
    other = requests.get(f"{docs_url(sb, '999')}({second})", headers=headers, timeout=10)
    assert other.status_code == 404


@pytest.mark.parametrize("pid", ["abc", "12a", "-1", "", "'12345'", "1.5"])
def test_non_numeric_patient_is_400(sb: Sandbox, pid: str) -> None:
    assert upload(sb, pid=pid).status_code == 400
    assert requests.get(docs_url(sb, pid), headers=auth(sb), timeout=10).status_code == 400


def test_unknown_patient_is_404() -> None:
    with Sandbox(known_patients={"12345"}) as sb:
        headers = auth(sb)
        doc_id = upload(sb, headers=headers).json()["id"]
        assert upload(sb, pid="54321", headers=headers).status_code == 404
        assert requests.get(docs_url(sb, "54321"), headers=headers, timeout=10).status_code == 404
        one = f"{docs_url(sb, '54321')}({doc_id})"
        assert requests.get(one, headers=headers, timeout=10).status_code == 404
        assert requests.get(one + "/$value", headers=headers, timeout=10).status_code == 404
        assert requests.delete(one, headers=headers, timeout=10).status_code == 404
        assert len(sb.documents()) == 1


def test_unknown_paths_and_methods(sb: Sandbox) -> None:
    headers = auth(sb)
    for path in ("/Patients(1)", "/Patients(1)/Notes", "/Patients(1)/Documents(x)/raw", "/x"):
        response = requests.get(sb.nymbl_base_url + path, headers=headers, timeout=10)
        assert response.status_code == 404
    assert requests.put(docs_url(sb), headers=headers, timeout=10).status_code == 405


# --- strict upload validation -----------------------------------------------------------------


def test_upload_must_be_multipart(sb: Sandbox) -> None:
    headers = auth(sb)
    as_json = requests.post(docs_url(sb), headers=headers, json={"file": "x"}, timeout=10)
    assert as_json.status_code == 415
    no_boundary = {**headers, "Content-Type": "multipart/form-data"}
    assert (
        requests.post(docs_url(sb), headers=no_boundary, data=b"x", timeout=10).status_code == 400
    )


def test_missing_file_is_400(sb: Sandbox) -> None:
    assert upload(sb, file=None, document_type="Referral").status_code == 400
    as_text = requests.post(
        docs_url(sb), headers=auth(sb), files={"file": (None, b"x")}, timeout=10
    )
    assert as_text.status_code == 400
    assert sb.documents() == []


@pytest.mark.parametrize("mime", ["image/gif", "text/plain", "application/octet-stream", ""])
def test_unsupported_file_type_is_400(sb: Sandbox, mime: str) -> None:
    response = upload(sb, file=("x.gif", b"GIF89a", mime))
    assert response.status_code == 400
    assert response.json()["message"] == "unsupported file type"
    assert sb.documents() == []


def test_each_listed_type_is_accepted(sb: Sandbox) -> None:
    types = ["application/pdf", "image/png", "image/jpeg", "image/tiff", DOCX]
    for mime in types:
        assert upload(sb, file=("f", b"data", mime)).status_code == 201
    assert [doc.mime for doc in sb.documents()] == types


def test_empty_file_is_400(sb: Sandbox) -> None:
    assert upload(sb, file=("empty.pdf", b"", "application/pdf")).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary here",
        b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nunterminated',
        b"--XyZ\r\nContent-Type: application/pdf\r\n\r\nx\r\n--XyZ--\r\n",
        b'--XyZ\r\nContent-Disposition: attachment; name="file"\r\n\r\nx\r\n--XyZ--\r\n',
    ],
)
def test_malformed_multipart_is_400(sb: Sandbox, body: bytes) -> None:
    headers = {**auth(sb), "Content-Type": "multipart/form-data; boundary=XyZ"}
    assert requests.post(docs_url(sb), headers=headers, data=body, timeout=10).status_code == 400


def test_25_mib_is_accepted_and_one_byte_more_is_413(sb: Sandbox) -> None:
    headers = auth(sb)
    ok = upload(sb, file=("big.pdf", b"\0" * (25 * MiB), "application/pdf"), headers=headers)
    assert ok.status_code == 201
    over = upload(sb, file=("big.pdf", b"\0" * (25 * MiB + 1), "application/pdf"), headers=headers)
    assert over.status_code == 413
    assert len(sb.documents()) == 1


def test_clearly_oversized_upload_is_refused_by_content_length(sb: Sandbox) -> None:
    response = upload(sb, file=("big.pdf", b"\0" * (27 * MiB), "application/pdf"))
    assert response.status_code == 413
    assert response.headers["Connection"] == "close"
    assert sb.requests("nymbl")[-1].status == 413


# --- file names -------------------------------------------------------------------------------

NAMES = ["Remiss från Åsa Öberg.pdf", "検査結果.pdf", 'quote "and" more.pdf', "emoji 😀.pdf"]


@pytest.mark.parametrize("name", NAMES)
def test_non_ascii_filename_html5_style(sb: Sandbox, name: str) -> None:
    response = upload(sb, file=(name, PDF, "application/pdf"))  # urllib3 2 writes raw UTF-8
    assert response.status_code == 201
    assert response.json()["file_name"] == name
    assert sb.documents()[0].name == name


@pytest.mark.parametrize("name", NAMES)
def test_non_ascii_filename_rfc2231(sb: Sandbox, name: str) -> None:
    from urllib.parse import quote

    encoded = quote(name, safe="").encode("ascii")
    response = raw_upload(sb, b"filename*=utf-8''" + encoded)
    assert response.status_code == 201, response.text
    assert sb.documents()[0].name == name


def test_filename_star_wins_over_filename(sb: Sandbox) -> None:
    response = raw_upload(
        sb, b"filename=\"fallback.pdf\"; filename*=UTF-8'sv'r%C3%A4ksm%C3%B6rg%C3%A5s.pdf"
    )
    assert response.status_code == 201
    assert response.json()["file_name"] == "räksmörgås.pdf"


def test_html5_escapes_in_filename_are_undone(sb: Sandbox) -> None:
    raw = "a%22b%0D%0Ac å %2541.pdf".encode()
    response = raw_upload(sb, b'filename="' + raw + b'"')
    assert response.status_code == 201
    assert response.json()["file_name"] == 'a"b\r\nc å %2541.pdf'  # only the three escapes


def test_multipart_helpers() -> None:
    assert parse_params('multipart/form-data; boundary="a b"; charset=utf-8') == (
        "multipart/form-data",
        {"boundary": "a b", "charset": "utf-8"},
    )
    assert parse_params('form-data; name="x\\"y"')[1] == {"name": 'x"y'}
    assert filename_from({"filename": "C:\\dir\\a.pdf"}) == "C:\\dir\\a.pdf"
    assert filename_from({"filename*": "iso-8859-1''%E5.pdf"}) == "å.pdf"
    assert filename_from({}) is None
    with pytest.raises(MultipartError):
        filename_from({"filename*": "utf-8''%FF.pdf"})
    with pytest.raises(MultipartError):
        parse_params('form-data; name="unterminated')
    body = b'preamble\r\n--b\r\nContent-Disposition: form-data; name="t"\r\n\r\nv\r\n--b--\r\nepi'
    [part] = parse(body, "b")
    assert (part.name, part.filename, part.content_type, part.data) == ("t", None, None, b"v")


# --- OData --------------------------------------------------------------------------------------


@pytest.fixture
def catalogue(sb: Sandbox) -> dict[str, str]:
    """Five documents for one patient; returns the auth headers."""
    headers = auth(sb)
    rows = [
        ("a.pdf", b"1", "application/pdf", "Referral"),
        ("b.png", b"22", "image/png", "Insurance"),
        ("c.pdf", b"333", "application/pdf", "Referral"),
        ("it's.pdf", b"4444", "application/pdf", "Lab"),
        ("e.tif", b"55555", "image/tiff", "Referral"),
    ]
    for name, content, mime, doc_type in rows:
        response = upload(sb, file=(name, content, mime), headers=headers, document_type=doc_type)
        assert response.status_code == 201
    upload(sb, pid="777", headers=headers, document_type="Referral")
    return headers


def names(sb: Sandbox, headers: dict[str, str], params: Any) -> list[str]:
    response = requests.get(docs_url(sb), headers=headers, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return [item["file_name"] for item in response.json()["value"]]


def test_odata_top_skip_count(sb: Sandbox, catalogue: dict[str, str]) -> None:
    assert names(sb, catalogue, {"$top": "2"}) == ["a.pdf", "b.png"]
    assert names(sb, catalogue, {"$skip": "3"}) == ["it's.pdf", "e.tif"]
    assert names(sb, catalogue, {"$skip": "1", "$top": "2"}) == ["b.png", "c.pdf"]
    assert names(sb, catalogue, {"$top": "0"}) == []
    response = requests.get(
        docs_url(sb), headers=catalogue, params={"$count": "true", "$top": "1"}, timeout=10
    )
    body = response.json()
    assert body["@odata.count"] == 5
    assert len(body["value"]) == 1
    assert list(body) == ["@odata.context", "@odata.count", "value"]


def test_odata_filter(sb: Sandbox, catalogue: dict[str, str]) -> None:
    referral = {"$filter": "document_type eq 'Referral'"}
    assert names(sb, catalogue, referral) == ["a.pdf", "c.pdf", "e.tif"]
    both = {"$filter": "document_type eq 'Referral' and content_type eq 'application/pdf'"}
    assert names(sb, catalogue, both) == ["a.pdf", "c.pdf"]
    assert names(sb, catalogue, {"$filter": "file_name eq 'it''s.pdf'"}) == ["it's.pdf"]
    assert names(sb, catalogue, {"$filter": "file_size_bytes eq 2"}) == ["b.png"]
    assert names(sb, catalogue, {"$filter": "document_type eq 'Nothing'"}) == []
    response = requests.get(
        docs_url(sb),
        headers=catalogue,
        params={"$filter": "document_type eq 'Referral'", "$count": "true", "$top": "1"},
        timeout=10,
    )
    assert response.json()["@odata.count"] == 3
    assert [item["file_name"] for item in response.json()["value"]] == ["a.pdf"]


def test_odata_percent_encoded_query(sb: Sandbox, catalogue: dict[str, str]) -> None:
    query = "%24filter=file_name%20eq%20%27b.png%27&%24count=true&%24select=id&%24orderby=id"
    response = requests.get(f"{docs_url(sb)}?{query}", headers=catalogue, timeout=10)
    assert response.status_code == 200
    assert response.json()["@odata.count"] == 1
    assert response.json()["value"][0]["file_name"] == "b.png"


@pytest.mark.parametrize(
    "params",
    [
        {"$filter": "document_type ne 'Referral'"},
        {"$filter": "document_type eq 'Referral' or file_size_bytes eq 1"},
        {"$filter": "uploaded_at eq '2026-01-01'"},
        {"$filter": "file_size_bytes eq '1'"},
        {"$filter": "document_type eq 1"},
        {"$filter": "document_type eq 'unterminated"},
        {"$filter": "contains(file_name, 'a')"},
        {"$filter": ""},
        {"$top": "-1"},
        {"$top": "x"},
        {"$skip": "1.5"},
        {"$count": "yes"},
        {"$expand": "x"},
    ],
)
def test_odata_unsupported_is_400(
    sb: Sandbox, catalogue: dict[str, str], params: dict[str, str]
) -> None:
    response = requests.get(docs_url(sb), headers=catalogue, params=params, timeout=10)
    assert response.status_code == 400
