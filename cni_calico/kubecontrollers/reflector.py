"""List + watch one Kubernetes collection forever, as client-go's reflector does.

- Start (and after every 410 Gone): list the whole collection and hand it to the handler's
  `resync`, which reconciles (a restart, a missed deletion, a compacted watch: all end here).
- Then watch from the list's resourceVersion with bookmarks; every event goes to `event`, and each
  event's (or bookmark's) resourceVersion is where the next watch resumes, so a watch the server
  ends (timeoutSeconds) or a broken connection costs no relist.
- Failures reconnect with exponential back-off (0.2 s doubling to 30 s), reset by a good list/watch.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Protocol

from cni_calico.kube import KubeError
from cni_calico.kubecontrollers.client import Gone, KubeApi, WatchEvent

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 30.0


class Handler(Protocol):
    def resync(self, items: list[dict]) -> None: ...
    def event(self, event: WatchEvent) -> None: ...


@dataclass
class Reflector:
    api: KubeApi
    path: str  # e.g. /apis/networking.k8s.io/v1/networkpolicies
    handler: Handler
    stop: threading.Event = field(default_factory=threading.Event)
    watch_seconds: int = 300
    synced: threading.Event = field(default_factory=threading.Event)
    lists: int = 0  # how many times it listed (the tests read it: a 410 must cost exactly one)

    def run(self) -> None:
        version, backoff = "", BACKOFF_FIRST
        while not self.stop.is_set():
            try:
                if not version:
                    items, version = self.api.list(self.path)
                    self.lists += 1
                    log.info("listed %s: %d items at resourceVersion %s", self.path, len(items), version)
                    self.handler.resync(items)
                    self.synced.set()
                    backoff = BACKOFF_FIRST
                # Spread the watches' ends, as client-go does, so they do not all reconnect at once.
                seconds = random.randint(self.watch_seconds, self.watch_seconds * 2 - 1)
                for event in self.api.watch(self.path, version, timeout_seconds=seconds):
                    if self.stop.is_set():
                        return
                    if event.type != "BOOKMARK":
                        self.handler.event(event)
                    version = event.resource_version or version
                    backoff = BACKOFF_FIRST
            except Gone as exc:
                log.info("watch of %s at resourceVersion %s expired (%s): listing again", self.path, version, exc)
                version = ""
            except KubeError as exc:
                log.warning("%s: %s; retrying in %.1f s", self.path, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a handler's bug must not end the controller: log it, relist later
                log.exception("%s: handler failed; listing again in %.1f s", self.path, backoff)
                version = ""
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"reflector {self.path}", daemon=True)
        thread.start()
        return thread
