"""The token rule of targets/oauth2.py: a refused token earns one new token and one resend; a
refused replacement means the credentials are wrong — also for requests still under way."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import requests

from ingestd.targets.base import TargetError
from ingestd.targets.oauth2 import TokenSource


class _Issuer:
    """A stand-in token endpoint handing out t1, t2, t3, …"""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)

    def post(self, url: str, **_: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.url = url
        response._content = json.dumps({"access_token": f"t{next(self.numbers)}"}).encode()
        return response


def _source() -> TokenSource:
    return TokenSource(
        _Issuer(),  # type: ignore[arg-type]
        token_url="https://auth.example.test/token",
        client_id="c",
        client_secret="s",
        client_auth="body",
    )


def test_a_request_sent_with_an_earlier_condemned_replacement_does_not_go_round_again() -> None:
    """Several uploads at once with wrong credentials: t1 refused (one resend each, with t2);
    t2 refused condemns it; a later upload fetches t3, refused: condemned too. A request that
    was sent with t2 and comes back only now must stop, not fetch a fourth token."""
    tokens = _source()
    first, _ = tokens.get()
    assert first == "t1"
    assert tokens.refused("t1") is False  # a token refused: one new token, one resend
    second, fresh = tokens.get()
    assert (second, fresh) == ("t2", True)
    assert tokens.refused("t2") is True  # the replacement refused: the credentials are wrong
    third, _ = tokens.get()  # a probe later, or another upload
    assert tokens.refused(third) is True
    assert tokens.refused("t2") is True  # the late answer to a request sent with t2


def test_an_accepted_token_forgets_what_was_condemned() -> None:
    tokens = _source()
    tokens.refused(tokens.get()[0])
    tokens.refused(tokens.get()[0])
    good, _ = tokens.get()
    tokens.accepted(good)
    assert tokens.refused(good) is False  # a 401 after an accepted token is a first one again


class _Echoing:
    """A token endpoint that quotes the credentials it was sent in its error."""

    def __init__(self, status: int) -> None:
        self.status = status

    def post(self, url: str, data: dict[str, str], **_: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = self.status
        response.url = url
        response.headers["Content-Type"] = "application/json"
        quoted = f"client {data.get('client_id')} with secret {data.get('client_secret')} refused"
        response._content = json.dumps(
            {"error": "invalid_client", "error_description": quoted}
        ).encode()
        return response


@pytest.mark.parametrize("status", [400, 503])
def test_a_token_error_quoting_the_credentials_never_repeats_them(status: int) -> None:
    source = TokenSource(
        _Echoing(status),  # type: ignore[arg-type]
        token_url="https://auth.example.test/token",
        client_id="clinic-client-7",
        client_secret="s3cret-Value-9",
        client_auth="body",
    )
    with pytest.raises(TargetError) as raised:
        source.get()
    assert "s3cret-Value-9" not in raised.value.message
    assert "clinic-client-7" not in raised.value.message
