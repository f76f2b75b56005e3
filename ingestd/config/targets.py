"""The `targets:` section of the config: each target's kind, its own options (checked against the
kind's target class), the common settings, URLs that must be https (loopback excepted) and a
`ca_file` that must be a readable PEM file. Messages never echo a value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from types import MappingProxyType
from urllib.parse import urlsplit

from ingestd.config.conversion import parse_convert_to_pdf
from ingestd.config.keys import check_private_key
from ingestd.rules.parse import MIME, parse_size
from ingestd.targets import COMMON_KEYS, KINDS, CommonSettings, TargetSettings
from ingestd.yamlsource import MarkedDict, Report

PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
CA_FILE_MAX_BYTES = 16 * 1024 * 1024
URL_KEYS = ("base_url", "token_url")
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MIN_TIMEOUT_SECONDS = 8.0  # the EHRs can take several seconds to store a 20 MB document


def parse_targets(report: Report, node: MarkedDict) -> dict[str, TargetSettings]:
    if not node:
        report.error(node.mark, "targets must name at least one target")
    result: dict[str, TargetSettings] = {}
    for name in node:
        if not TARGET_NAME.fullmatch(name):
            report.error(
                node.key_mark(name),
                f"target name {name!r} may hold only letters, digits, '_', '.' and '-'",
            )
        target_node = report.mapping(node, name, f"targets.{name}")
        if target_node is None:
            if name in node and node[name] is None:
                report.error(node.value_mark(name), f"targets.{name} needs at least kind:")
            continue
        settings = _target(report, name, target_node)
        if settings is not None:
            result[name] = settings
    return result


def _target(report: Report, name: str, node: MarkedDict) -> TargetSettings | None:
    where = f"targets.{name}"
    kind_name = report.string(node, "kind", f"{where}.kind")
    if kind_name is None:
        if "kind" not in node:
            report.missing(node, where, "kind")
        report.keys(node, where, [*node])  # no kind: its options cannot be checked
        return None
    kind = KINDS.get(kind_name)
    if kind is None:
        known = ", ".join(sorted(KINDS))
        report.error(node.value_mark("kind"), f"{where}.kind must be one of {known}")
        return None
    option_keys = sorted(kind.required | kind.optional)
    report.keys(node, f"{where} (kind {kind_name})", [*COMMON_KEYS, *option_keys])
    for key in sorted(kind.required):
        if key not in node:
            report.missing(node, where, key)
    options: dict[str, str] = {}
    for key in option_keys:
        value = report.string(node, key, f"{where}.{key}")
        if value is None:
            continue
        if key in URL_KEYS and not _url_ok(report, node, key, f"{where}.{key}"):
            continue
        options[key] = value
    check_private_key(report, node, where, options)
    # A value only the service can read (`${credential:…}` offline) still counts as given.
    unread = {k: "${…}" for k in option_keys if k in node and node.value_mark(k) in report.unusable}
    for key, message in kind.validate_options({**unread, **options}).items():
        report.error(node.value_mark(key), f"{where}.{key}: {message}")
    concurrency = report.number(node, "concurrency", f"{where}.concurrency", integer=True)
    if concurrency is not None and concurrency < 1:
        report.error(node.value_mark("concurrency"), f"{where}.concurrency must be 1 or more")
    timeout = report.number(node, "timeout_seconds", f"{where}.timeout_seconds")
    if timeout is not None and timeout <= MIN_TIMEOUT_SECONDS:
        report.error(
            node.value_mark("timeout_seconds"),
            f"{where}.timeout_seconds must be more than {MIN_TIMEOUT_SECONDS:g}",
        )
    max_bytes = _max_bytes(report, node, where, kind.default_max_bytes)
    accept = _accept(report, node, where)
    ca_file = _ca_file(report, node, where)
    convert = parse_convert_to_pdf(report, node, where, accept or kind.default_accept)
    return TargetSettings(
        name=name,
        kind=kind_name,
        options=MappingProxyType(options),
        common=CommonSettings(
            concurrency=int(concurrency) if concurrency and concurrency >= 1 else 4,
            accept=accept,
            max_bytes=max_bytes,
            timeout_seconds=float(timeout) if timeout and timeout > MIN_TIMEOUT_SECONDS else 60.0,
            ca_file=ca_file,
            convert_to_pdf=convert,
        ),
    )


def _ca_file(report: Report, node: MarkedDict, where: str) -> str | None:
    """A PEM file of CA certificates to trust for this target (relative to the config file)."""
    text = report.string(node, "ca_file", f"{where}.ca_file")
    if text is None:
        return None
    at = node.value_mark("ca_file")
    base = os.path.dirname(os.path.abspath(report.file))
    path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))
    try:
        with open(path, "rb") as handle:
            head = handle.read(CA_FILE_MAX_BYTES)
    except IsADirectoryError:
        report.error(at, f"{where}.ca_file is a folder; name the PEM file of the CA certificate")
        return None
    except OSError as exc:
        report.error(at, f"{where}.ca_file cannot be read ({exc.strerror})")
        return None
    if PEM_CERTIFICATE not in head:
        report.error(
            at,
            f"{where}.ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "convert a DER file with `openssl x509 -inform der -in CA.cer -out CA.pem`",
        )
        return None
    return path


def _url_ok(report: Report, node: MarkedDict, key: str, where: str) -> bool:
    """https://, or http:// to a loopback host; reported without echoing the URL."""
    try:
        parts = urlsplit(node[key])
        host = parts.hostname or ""
    except ValueError:
        report.error(node.value_mark(key), f"{where} is not a valid URL")
        return False
    if parts.scheme not in ("https", "http") or not host:
        report.error(node.value_mark(key), f"{where} must be an https:// URL")
        return False
    if parts.scheme == "http" and not loopback(host):
        report.error(
            node.value_mark(key),
            f"{where} must use https:// (plain http:// is allowed only to a loopback host)",
        )
        return False
    return True


def loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _max_bytes(report: Report, node: MarkedDict, where: str, limit: int) -> int | None:
    if node.get("max_bytes") is None:
        return None
    at = node.value_mark("max_bytes")
    try:
        value = parse_size(node["max_bytes"])
    except ValueError as error:
        report.error(at, f"{where}.max_bytes: {error}")
        return None
    if value < 1 or value > limit:
        report.error(at, f"{where}.max_bytes may only lower the limit: between 1 and {limit}")
        return None
    return value


def _accept(report: Report, node: MarkedDict, where: str) -> frozenset[str] | None:
    items = report.strings(node, "accept", f"{where}.accept")
    if items is None:
        return None
    for mime in items:
        if not MIME.fullmatch(mime) or mime.endswith("/*"):
            report.error(
                node.value_mark("accept"),
                f"{where}.accept: {mime!r} is not a MIME type like application/pdf",
            )
    return frozenset(m.lower() for m in items)
