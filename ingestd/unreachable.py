"""Which errors mean "this folder is not reachable": a share that died (a FUSE process killed, a
server rebooting, a cable pulled) answers ENOTCONN, EIO, ESTALE, EHOSTDOWN, ETIMEDOUT, ENODEV …;
none of them says anything about the file asked for, so the folder is paused rather than the file
judged."""

from __future__ import annotations

import errno

# Errors that describe the folder (its mount, its server, the network), never the file.
UNAVAILABLE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOTCONN", "EIO", "ESTALE", "EHOSTDOWN", "EHOSTUNREACH", "ETIMEDOUT", "ENODEV",
        "ENETDOWN", "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ECONNREFUSED",
        "ENOMEDIUM", "EREMOTEIO", "ECOMM", "ENOLINK", "EREMCHG", "ESHUTDOWN",
    )
    if hasattr(errno, name)
)  # fmt: skip


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means the folder (its share) is not reachable right now."""
    return isinstance(exc, OSError) and exc.errno in UNAVAILABLE_ERRNOS


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
