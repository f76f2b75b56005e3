"""systemd's notify protocol: one datagram to $NOTIFY_SOCKET (no library needed).

A leading `@` in the socket path names an abstract socket. Without $NOTIFY_SOCKET (not run by
systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send `KEY=VALUE` lines; True when a socket was there to send to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    payload = "\n".join(lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """MONOTONIC_USEC for RELOADING=1: CLOCK_MONOTONIC in microseconds."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval(default: float = 5.0) -> float:
    """How often to send WATCHDOG=1: half of systemd's WatchdogSec= ($WATCHDOG_USEC), at most
    `default`."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return default
    return min(default, usec / 2_000_000) if usec > 0 else default
