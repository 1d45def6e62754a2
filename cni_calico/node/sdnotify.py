"""systemd's readiness protocol (sd_notify), without libsystemd: one datagram to $NOTIFY_SOCKET.

With `Type=notify` systemd counts calico-node as started when it sends `READY=1`; a path starting
with `@` is an abstract socket. Without NOTIFY_SOCKET (not under systemd) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Sends `message` (e.g. "READY=1\\nSTATUS=…"); True when a socket took it."""
    path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        # Not fatal: systemd then times the start out and says so; the node itself works.
        log.warning("cannot notify systemd on NOTIFY_SOCKET=%s: %s", path, exc)
        return False
    return True
