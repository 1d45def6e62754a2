"""calico-node's side of its health: the heartbeat and readiness file (cni_calico.node.readiness),
the HTTP endpoint (cni_calico.node.health_http) and systemd's READY=1 (cni_calico.node.sdnotify).

The agent calls `report` from every loop turn; the file is rewritten when what it says changes, or
once a HEARTBEAT, so a probe can tell a turning loop from a stuck or dead one.
"""

from __future__ import annotations

import logging
import time

from cni_calico.node import readiness, sdnotify
from cni_calico.node.config import NodeConfig
from cni_calico.node.readiness import State

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between rewrites of an unchanged readiness file


class NodeHealth:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.state: State | None = None  # last written; None until the first report
        self.reported: tuple[list[str], bool] | None = None
        self.written_at = 0.0
        self.notified = False
        self.server = None  # cni_calico.node.health_http.HealthServer while the endpoint is enabled
        self.serving: tuple[str, int] = ("", 0)  # its host and port

    def start(self) -> None:
        self.configure(None, None, None)

    def configure(self, enabled: bool | None, host: str | None, port: int | None) -> None:
        """The endpoint as FelixConfiguration's healthEnabled / healthHost / healthPort say (None: not
        set there), where the FELIX_HEALTH* variables do not say otherwise (the environment wins, as
        Felix's); a change moves or stops the server."""
        cfg = self.cfg

        def pick(var: str, env_value, felix_value):
            return env_value if var in cfg.health_set or felix_value is None else felix_value

        wanted = (pick("FELIX_HEALTHHOST", cfg.health_host, host), pick("FELIX_HEALTHPORT", cfg.health_port, port))
        on = pick("FELIX_HEALTHENABLED", cfg.health_enabled, enabled)
        if self.server is not None and (not on or wanted != self.serving):
            self.server.stop()
            self.server = None
        if not on or self.server is not None:
            return
        from cni_calico.node.health_http import HealthServer

        self.serving = wanted
        try:
            self.server = HealthServer(*wanted, lambda: self.state).start()
        except OSError as exc:
            # The endpoint is for probes; the node's routing must not depend on a free port.
            log.error("health endpoint not served on %s:%d: %s", *wanted, exc)

    def report(self, problems: list[str], in_sync: bool) -> None:
        now = time.monotonic()
        if (problems, in_sync) == self.reported and now - self.written_at < HEARTBEAT:
            return
        if self.reported is None or (problems, in_sync) != self.reported:
            what = "in sync with etcd" if in_sync else "not in sync with etcd"
            log.info("health: %s%s", what, "".join(f"; not ready: {p}" for p in problems))
        self.state = readiness.write(self.cfg.run_dir, problems, in_sync)
        self.reported, self.written_at = (list(problems), in_sync), now
        if in_sync and not self.notified:
            # READY=1 once the dataplane first holds what etcd says. Not held back for a problem such as
            # an IPIP pool this kernel cannot serve: systemd would kill and restart a node whose other
            # pools work; that problem is what the readiness probe and STATUS= say instead.
            status = "; ".join(problems) or "in sync with etcd"
            sdnotify.notify(f"READY=1\nSTATUS={status}")
            self.notified = True  # once: a later loss of sync is the probes' business, not systemd's

    def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        if self.server is not None:
            self.server.stop()
        if self.reported is not None:
            readiness.clear(self.cfg.run_dir)
