"""Wakes the policy component when a ``cali`` interface appears, rather than at the agent's next etcd poll.

The CNI plugin writes a pod's WorkloadEndpoint before it creates the pod's veth, so when the kernel
reports the new link etcd already knows the endpoint, and its chains can be programmed while the ADD is
still finishing. Until they are, the dispatch chains drop the interface's traffic (as Felix does).

What holds: this module only listens (RTMGRP_LINK in calico-node's own namespace) and calls back; it
never changes a link. Each interface name triggers at most one callback per ``MIN_INTERVAL``. If
netlink fails the watcher logs it and stops: the agent's polling still programs every endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0


class LinkWatcher:
    def __init__(self, on_new_link: Callable[[str], None], prefix: str = "cali") -> None:
        self.on_new_link, self.prefix = on_new_link, prefix
        self._last: dict[str, float] = {}

    def start(self) -> None:
        threading.Thread(target=self._run, name="policy-links", daemon=True).start()

    def _run(self) -> None:
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.rtnl import RTMGRP_LINK

            with IPRoute() as ipr:
                ipr.bind(groups=RTMGRP_LINK)
                while True:
                    for msg in ipr.get():
                        if msg.get("event") == "RTM_NEWLINK":
                            self._seen(msg.get_attr("IFLA_IFNAME") or "")
        except Exception:  # noqa: BLE001 - an optional accelerator: polling still does the job
            log.exception("link watcher stopped; new endpoints are programmed at the next etcd poll")

    def _seen(self, name: str) -> None:
        now = time.monotonic()
        if not name.startswith(self.prefix) or now - self._last.get(name, -MIN_INTERVAL) < MIN_INTERVAL:
            return
        self._last[name] = now
        if len(self._last) > 4096:
            self._last = {n: t for n, t in self._last.items() if now - t < MIN_INTERVAL}
        try:
            self.on_new_link(name)
        except Exception as exc:  # noqa: BLE001 - the agent's next sync retries
            log.debug("policy sync for new link %s failed: %s", name, exc)
