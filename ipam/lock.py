"""A per-node host lock around IPAM, as Calico takes: parallel ADDs on one node queue
instead of retrying each other's etcd transactions into the ground."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

WAIT = 8.0  # seconds to queue for the lock; a healthy holder keeps it for milliseconds


def run_dir() -> str:
    return os.environ.get("CALICO_RUN_DIR", "/var/run/calico")


def node_file(node: str, suffix: str, directory: str | None = None) -> str:
    """`<run dir>/ipam-<node>.<suffix>`: the node's IPAM files beside calico-node's."""
    return os.path.join(directory or run_dir(), f"ipam-{node}.{suffix}")


@contextlib.contextmanager
def node_lock(node: str, directory: str | None = None) -> Iterator[None]:
    path = node_file(node, "lock", directory)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        # Correctness never depends on the lock (etcd transactions do); go on without it.
        log.warning("IPAM lock %s unavailable (%s); continuing without it", path, exc)
        yield
        return
    try:
        if not _acquire(fd, WAIT):
            # The holder is stuck (etcd unreachable: its calls take their whole deadline). Waiting
            # behind it would add its deadline to ours; the guarded transactions keep us correct.
            log.warning("IPAM lock %s still held after %.0f s; continuing without it", path, WAIT)
        yield
    finally:
        os.close(fd)  # closing drops the flock; a killed process drops it too


def _acquire(fd: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
