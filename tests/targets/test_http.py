"""The targets' session reads proxies and the CA bundle from the environment as requests would,
once per host, and never takes credentials from ~/.netrc."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ingestd.sandbox import Sandbox
from ingestd.targets.transport import EnvironmentOnceSession, make_session

ENVIRONMENTS = [
    {},
    {"https_proxy": "http://proxy.clinic.lan:3128"},
    {"http_proxy": "http://p1:8080", "https_proxy": "http://p2:8443", "no_proxy": "ehr.example"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example,10.0.0.0/8"},
    {"https_proxy": "http://p:1", "no_proxy": "*"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/clinic-ca.pem"},
    {"CURL_CA_BUNDLE": "/etc/ssl/curl-ca.pem", "https_proxy": "http://p:1"},
]
URLS = [
    "https://api.leyr.example/emrs/x/documents",
    "https://ehr.example/odata/Documents",
    "http://10.1.2.3:8080/token",
    "http://127.0.0.1:5000/emrs/x",
]
PROXY_VARIABLES = (
    "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)  # fmt: skip


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the variables set (Debian's package build sets http_proxy and no_proxy)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_environment_is_read_as_requests_reads_it(
    no_proxy_settings: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch = no_proxy_settings
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ours = EnvironmentOnceSession()
    theirs = requests.Session()  # trust_env=True: reads the environment on every request
    for url in URLS:
        for verify in (None, True, False, "/explicit.pem"):
            assert ours.merge_environment_settings(
                url, {}, False, verify, None
            ) == theirs.merge_environment_settings(url, {}, False, verify, None), (url, verify)


def test_the_environment_is_read_once_per_host(no_proxy_settings: pytest.MonkeyPatch) -> None:
    monkeypatch = no_proxy_settings
    monkeypatch.setenv("https_proxy", "http://first:1")
    session = EnvironmentOnceSession()
    first = session.merge_environment_settings(URLS[0], {}, False, None, None)
    monkeypatch.setenv("https_proxy", "http://second:2")
    assert session.merge_environment_settings(URLS[0], {}, False, None, None) == first
    assert session.merge_environment_settings(URLS[1], {}, False, None, None)["proxies"] == {
        "https": "http://second:2"
    }


def test_a_netrc_entry_never_replaces_the_targets_credentials(
    tmp_path: Path, no_proxy_settings: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    monkeypatch = no_proxy_settings
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login stranger password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    sent = make_session(1).get(
        f"{sandbox.url}/nowhere", headers={"Authorization": "Bearer ours"}, timeout=5
    )
    assert sent.request.headers["Authorization"] == "Bearer ours"
    plain = requests.Session().get(
        f"{sandbox.url}/nowhere", headers={"Authorization": "Bearer ours"}, timeout=5
    )
    assert plain.request.headers["Authorization"] != "Bearer ours"  # what requests alone does
