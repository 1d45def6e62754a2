"""The node's IPAM files: a per-node host lock around assignment, as Calico takes (parallel ADDs on
one node queue instead of retrying each other's etcd transactions into the ground), and the hint
naming the blocks the node's last assignments used (read in the same round trip as the pools)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

WAIT = 8.0  # seconds to queue for the lock; a healthy holder keeps it for milliseconds
HINTED_BLOCKS = 8


def node_file(node: str, suffix: str, directory: str) -> str:
    """`<run dir>/ipam-<node>.<suffix>`: the node's IPAM files beside calico-node's."""
    return os.path.join(directory, f"ipam-{node}.{suffix}")


@contextlib.contextmanager
def node_lock(node: str, directory: str) -> Iterator[None]:
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


def read_hint(node: str, directory: str) -> list[str]:
    """Blocks the node's last assignments used: only a hint (a listed block is read, not trusted)."""
    try:
        with open(node_file(node, "blocks", directory)) as f:
            hint = json.load(f)
    except (OSError, ValueError):
        return []
    return [c for c in hint if isinstance(c, str)][:HINTED_BLOCKS] if isinstance(hint, list) else []


def write_hint(node: str, directory: str, blocks: list[str]) -> None:
    path = node_file(node, "blocks", directory)
    try:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(blocks[-HINTED_BLOCKS:], f)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write the block hint %s: %s", path, exc)
