"""A per-node host lock around IPAM, as Calico takes: parallel ADDs on one node queue
instead of retrying each other's etcd transactions into the ground."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)


def run_dir() -> str:
    return os.environ.get("CALICO_RUN_DIR", "/var/run/calico")


@contextlib.contextmanager
def node_lock(node: str, directory: str | None = None) -> Iterator[None]:
    path = os.path.join(directory or run_dir(), f"ipam-{node}.lock")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        # Correctness never depends on the lock (etcd transactions do); go on without it.
        log.warning("IPAM lock %s unavailable (%s); continuing without it", path, exc)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock; a killed process drops it too
