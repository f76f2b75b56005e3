"""`HttpTarget`: what every EHR target shares — the common settings, one session, the local
refusals, and single requests that never follow redirects. A kind's class attributes are all
the registry knows of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

import requests

from ingestd.targets.base import (
    Fetched,
    Refusal,
    Upload,
)
from ingestd.targets.bodies import StreamingBody
from ingestd.targets.refusals import local_refusal
from ingestd.targets.settings import CommonSettings, TargetSettings
from ingestd.targets.transport import make_session, timeouts, transport_errors

DEFAULTS = CommonSettings()


class HttpTarget:
    """What every EHR target shares. A kind's class attributes are all the registry knows of it;
    its own config options (`required`, `optional`) are its constructor's keywords."""

    kind: str
    required: ClassVar[frozenset[str]]
    optional: ClassVar[frozenset[str]]
    default_accept: ClassVar[frozenset[str]]
    default_max_bytes: ClassVar[int]

    def __init__(self, name: str, common: CommonSettings = DEFAULTS) -> None:
        self.name = name
        accept, max_bytes = common.accept, common.max_bytes
        self.accept = self.default_accept if accept is None else frozenset(accept)
        self.max_bytes = self.default_max_bytes if max_bytes is None else max_bytes
        self.timeout_seconds = common.timeout_seconds
        self._session = make_session(common.concurrency)
        if common.ca_file is not None:
            # Every request of the target, its token requests included, trusts this file.
            self._session.verify = common.ca_file

    @classmethod
    def from_settings(cls, cfg: TargetSettings) -> Self:
        """The target `cfg` describes; the registry has checked its options against the kind's."""
        return cls(cfg.name, cfg.common, **cfg.options)

    @staticmethod
    def validate_patient_id(patient_id: str) -> str | None:
        """An error message (never quoting the id) or None when this kind takes the id."""
        raise NotImplementedError

    @staticmethod
    def validate_options(options: Mapping[str, str]) -> dict[str, str]:
        """Problems with option values, by option key; messages never quote the value."""
        return {}

    def send(self, upload: Upload) -> str:
        raise NotImplementedError

    def find(self, upload: Upload) -> str | None:
        raise NotImplementedError

    def fetch(self, document_id: str, patient_id: str) -> Fetched | None:
        raise NotImplementedError

    def refusal(self, upload: Upload) -> Refusal | None:
        return local_refusal(
            upload, self.name, self.max_bytes, self.accept, self.validate_patient_id
        )

    def close(self) -> None:
        self._session.close()

    def _post(
        self, url: str, body: StreamingBody, what: str, headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        """One POST of a streaming body; its TargetError says `what` failed."""
        with transport_errors(what, self.timeout_seconds):
            return self._session.post(
                url,
                data=body,  # type: ignore[arg-type, unused-ignore]  # a sized reader; requests streams it
                headers={**(headers or {}), "Content-Type": body.content_type},
                timeout=timeouts(self.timeout_seconds),
                # Never followed: a redirect could carry our credential headers to another host.
                allow_redirects=False,
            )

    def _get_once(
        self, url: str, what: str, headers: Mapping[str, str] | None = None, *, stream: bool = False
    ) -> requests.Response:
        """One GET; its TargetError says `what` failed."""
        with transport_errors(what, self.timeout_seconds):
            return self._session.get(
                url,
                headers=headers,
                timeout=timeouts(self.timeout_seconds),
                allow_redirects=False,
                stream=stream,
            )
