"""Secret references in config values: `${ENV}`, `${file:PATH}`, `${credential:NAME}`.

Owns finding and resolving references in every string of the loaded config, and the warning for a
secret written inline in a config file that others can read. A problem names the reference, never
a value: neither the resolved secret nor the literal around it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping

from ingestd.yamlsource import Mark, MarkedDict, MarkedList, Report

REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*")
SECRET_KEYS = frozenset(
    {"client_secret", "api_key", "password", "passphrase", "token", "secret", "private_key"}
)
FORMS = "use ${ENV_NAME}, ${file:PATH} or ${credential:NAME}"
# A secret file is a few hundred bytes; the cap keeps a mistaken `${file:/dev/zero}` from hanging.
MAX_SECRET_BYTES = 64 * 1024


class UnresolvedReference(Exception):
    """A reference that cannot be resolved; the message names the reference only."""


class OutsideService(UnresolvedReference):
    """A `${credential:…}` read outside the service: only systemd provides those files."""


def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret (its value is never echoed, inline use warns)."""
    lowered = key.lower()
    return lowered in SECRET_KEYS or lowered.endswith(("_secret", "_password", "_token", "_key"))


def strip_one_newline(text: str) -> str:
    """Drop exactly one trailing line ending, as `echo secret > file` adds one."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_secret(path: str, reference: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise UnresolvedReference(f"{reference}: file not readable ({error.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnresolvedReference(f"{reference}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as error:
        raise UnresolvedReference(f"{reference}: file not readable ({error.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise UnresolvedReference(f"{reference}: file is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnresolvedReference(f"{reference}: file is not UTF-8 text") from None
    return strip_one_newline(text)


def resolve_reference(inner: str, env: Mapping[str, str]) -> str:
    """The value of one `${inner}`; raises UnresolvedReference naming the reference."""
    reference = "${" + inner + "}"
    kind, colon, rest = inner.partition(":")
    if not colon:
        if not ENV_NAME.fullmatch(inner):
            raise UnresolvedReference(f"{reference} is not a valid reference ({FORMS})")
        if inner not in env:
            raise UnresolvedReference(f"{reference} is not set")
        return env[inner]
    if kind == "file":
        if not rest:
            raise UnresolvedReference(f"{reference} names no file")
        return _read_secret(rest, reference)
    if kind == "credential":
        if not CREDENTIAL_NAME.fullmatch(rest) or rest in {".", ".."}:
            raise UnresolvedReference(f"{reference} is not a valid credential name")
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise OutsideService(
                f"{reference}: $CREDENTIALS_DIRECTORY is not set "
                "(systemd sets it for LoadCredential=)"
            )
        return _read_secret(os.path.join(directory, rest), reference)
    raise UnresolvedReference(f"{reference} is not a valid reference ({FORMS})")


def resolve(
    text: str, env: Mapping[str, str], *, in_service: bool = True
) -> tuple[str, list[str], list[str]]:
    """`text` with every reference replaced (`$$` is a literal `$`), the errors found, and the
    credentials that only the service can read (errors when `in_service`, else notes)."""
    errors: list[str] = []
    notes: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        try:
            return resolve_reference(match.group(1), env)
        except OutsideService as error:
            (errors if in_service else notes).append(str(error))
        except UnresolvedReference as error:
            errors.append(str(error))
        return ""

    return REFERENCE.sub(substitute, text), errors, notes


def has_literal(text: str) -> bool:
    """Whether `text` holds anything besides references (an inline secret, if under such a key)."""
    return bool(REFERENCE.sub("", text).strip())


def _resolve_item(
    value: object,
    at: Mark,
    key: str | None,
    env: Mapping[str, str],
    report: Report,
    exposed: bool,
    in_service: bool,
) -> object:
    if isinstance(value, (MarkedDict, MarkedList)):
        resolve_tree(value, env, report, exposed=exposed, in_service=in_service)
        return value
    if not isinstance(value, str):
        return value
    # A key file's path (`private_key: /etc/…/key.pem`) is not the secret itself.
    names_a_file = key == "private_key" and "-----BEGIN" not in value
    if (
        key is not None
        and exposed
        and is_secret_key(key)
        and has_literal(value)
        and not names_a_file
    ):
        report.warn(
            at,
            f"{key} is written inline in a config file that group or others can read; "
            f"{FORMS}, or chmod the file 600",
        )
    resolved, errors, notes = resolve(value, env, in_service=in_service)
    for error in errors:
        report.error(at, error)
    for note in notes:
        report.warn(at, f"{note}; `ingestd run` under systemd reads it, so it is not checked here")
    if errors or notes:
        report.unusable.add(at)
        return value
    return resolved


def resolve_tree(
    node: MarkedDict | MarkedList,
    env: Mapping[str, str],
    report: Report,
    *,
    exposed: bool,
    in_service: bool = True,
) -> None:
    """Resolve every reference in every string under `node`, in place; report each failure.

    `exposed`: the config file can be read by group or others, so inline secrets warn.
    `in_service`: False for offline commands (`check`, `explain`), where `${credential:…}`
    cannot be read without systemd and is only noted.
    """
    if isinstance(node, MarkedDict):
        for key, value in node.items():
            mark = node.value_mark(key)
            node[key] = _resolve_item(value, mark, key, env, report, exposed, in_service)
    else:
        for index, value in enumerate(node):
            mark = node.item_mark(index)
            node[index] = _resolve_item(value, mark, None, env, report, exposed, in_service)


def readable_by_others(path: str) -> bool:
    """Whether group or others may read the file (so an inline secret in it is exposed)."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
