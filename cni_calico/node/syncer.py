"""calico-node's view of etcd: one snapshot, then a watch (no polling).

`resync` reads everything calico-node needs (every v3 resource and every block affinity) at one
revision and hands it over as updates after a reset; `poll` then follows one etcd watch from the
next revision and hands over each change as it comes. At rest the only traffic is the watch
stream and its keep-alive.

What holds when the watch breaks:

- it ends cleanly or its stream fails and a new watch starts at once on the same member: the new
  watch resumes from the last revision processed (nothing missed, nothing repeated);
- etcd compacted the revisions the watch needed, etcd was unreachable (an outage, a restart), or the
  new watch had to go to another member: a fresh snapshot and a reset, which ends in exactly the
  state a start from scratch would give;
- while etcd is away, nothing is reset: the node keeps its last state, and `poll` raises
  DatastoreError (the agent logs it once) until a resync succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cni_calico import keys
from cni_calico.datastore import Compacted, Datastore, DatastoreError, Watch, WatchLost

log = logging.getLogger(__name__)

PREFIXES = [keys.host_dir(), keys.RESOURCES + "/"]


class Syncer:
    def __init__(self, ds: Datastore, reset: Callable[[], None], update: Callable[[str, dict | None], None]) -> None:
        self.ds, self.reset, self.update = ds, reset, update
        self.watch: Watch | None = None
        self.revision = 0  # everything up to here has been handed over
        self.resyncs = 0  # snapshots taken (start-up included)
        self.resumes = 0  # watches resumed without a snapshot
        self.events = 0
        self._need_snapshot = True
        self._url = ""

    @staticmethod
    def wanted(key: str) -> bool:
        return any(key.startswith(p) for p in PREFIXES)

    def resync(self) -> None:
        """A fresh snapshot, handed over after a reset, then a watch from the next revision."""
        started = time.monotonic()
        self._cancel()
        revision = self.ds.revision()
        self.reset()
        count = 0
        for prefix in PREFIXES:
            for kv in self.ds.pages(prefix, revision=revision):
                self.update(kv.key, kv.value)
                count += 1
        self.revision = revision
        self.resyncs += 1
        self._need_snapshot = False
        log.info("snapshot of etcd at revision %d: %d keys in %.2f s", revision, count, time.monotonic() - started)
        self._start_watch()

    def _start_watch(self) -> None:
        self.watch = self.ds.watch(PREFIXES, self.revision + 1)
        if self._url and self.watch.url != self._url:
            log.info("etcd watch moved from %s to %s", self._url, self.watch.url)
        self._url = self.watch.url

    def _cancel(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None

    def poll(self, timeout: float) -> int:
        """Hands over the changes that come within `timeout` (all that are queued, once the first
        came); returns how many. Raises DatastoreError while etcd cannot be followed."""
        if self._need_snapshot or self.watch is None:
            self._recover()
        assert self.watch is not None
        try:
            events = self.watch.get(timeout)
        except Compacted as exc:
            log.warning("etcd compacted the revisions after %d (%s): reading a fresh snapshot", self.revision, exc)
            self._need_snapshot = True
            self._cancel()
            return 0
        except WatchLost as exc:
            log.warning("etcd watch lost at revision %d: %s", self.revision, exc)
            self._cancel()
            return 0
        for event in events or ():
            if self.wanted(event.key):
                self.update(event.key, event.value)
        self.revision = max(self.revision, self.watch.revision)
        self.events += len(events or ())
        return len(events or ())

    def _recover(self) -> None:
        """Resumes the watch from the last revision where that is exact, else takes a snapshot."""
        if not self._need_snapshot:
            url = self._url
            try:
                self._start_watch()
            except Compacted:
                self._need_snapshot = True
            except WatchLost as exc:
                # Unreachable: an outage or a restart. Keep the last state; read afresh once back.
                self._need_snapshot = True
                raise DatastoreError("etcd unreachable", str(exc)) from None
            else:
                if self.watch is not None and self.watch.url == url:
                    self.resumes += 1
                    log.info("etcd watch resumed from revision %d", self.revision + 1)
                    return
                log.info("etcd watch now on another member: reading a fresh snapshot")
                self._need_snapshot = True
        self.resync()

    @property
    def following(self) -> bool:
        """What was handed over is etcd's current state as far as the watch knows (no snapshot owed)."""
        return not self._need_snapshot

    def invalidate(self) -> None:
        """The next poll starts from a fresh snapshot (after a failure to apply a change)."""
        self._need_snapshot = True
        self._cancel()

    def close(self) -> None:
        self._cancel()
