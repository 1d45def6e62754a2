"""calico-node's composition root: start-up, then keep BIRD, tunnel routes and policy rules in step with etcd.

The loop asks etcd for its revision a few times a second and rebuilds the
node's view only when it moved. When etcd is away the node keeps the last
good configuration (routing goes on) and resyncs as soon as etcd answers.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time

from cni_calico.datastore import Datastore, DatastoreError
from cni_calico.node import birdconf, model, startup
from cni_calico.node.bird import Bird, BirdError
from cni_calico.node.config import NodeConfig

log = logging.getLogger(__name__)

POLL = 0.2
START_TIMEOUT = 60.0


class Agent:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.ds = Datastore(cfg.etcd, rpc_timeout=2.0, deadline=3.0)
        self.bird = Bird(cfg.run_dir) if cfg.backend == "bird" else None
        self.stop_event = threading.Event()
        self.ipv4_cidr = ""
        self.ipv6_cidr = ""
        self.last_revision: int | None = None
        self.etcd_ok = True
        self.tunnels = None
        self.cni_server = None
        self.policy = None  # cni_calico.policy.sync.PolicySync, made in start()

    # --- start ------------------------------------------------------------------------

    def resolve_address(self) -> str:
        if self.cfg.ip == "none":
            return ""
        if self.cfg.ip != "autodetect":
            iface = ipaddress.IPv4Interface(self.cfg.ip)
            if iface.network.prefixlen == 32 and "/" not in self.cfg.ip:
                # Calico looks the prefix up on the interface that holds the address.
                return self._with_prefix(str(iface.ip))
            return str(iface)
        from cni_calico.node.autodetect import detect

        return detect(self.cfg.ip_autodetection, 4)

    @staticmethod
    def _with_prefix(ip: str) -> str:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for addr in ipr.get_addr(family=2):
                if addr.get_attr("IFA_ADDRESS") == ip:
                    return f"{ip}/{addr['prefixlen']}"
        return f"{ip}/32"

    def resolve_address6(self) -> str:
        if self.cfg.ip6 == "none":
            return ""
        if self.cfg.ip6 != "autodetect":
            return str(ipaddress.IPv6Interface(self.cfg.ip6))
        from cni_calico.node.autodetect import detect

        return detect(self.cfg.ip6_autodetection, 6)

    def start(self) -> None:
        os.makedirs(self.cfg.run_dir, exist_ok=True)
        os.makedirs(self.cfg.lib_dir, exist_ok=True)
        self.ipv4_cidr = self.resolve_address()
        self.ipv6_cidr = self.resolve_address6()
        log.info("node %s, address %s %s, backend %s", self.cfg.nodename, self.ipv4_cidr or "none",
                 self.ipv6_cidr, self.cfg.backend)
        self._enable_forwarding()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                startup.register_node(self.ds, self.cfg, self.ipv4_cidr, self.ipv6_cidr)
                startup.ensure_default_pool(self.ds, self.cfg)
                break
            except DatastoreError as exc:
                if time.monotonic() > deadline or self.stop_event.is_set():
                    raise
                log.warning("waiting for etcd: %s", exc.msg)
                self.stop_event.wait(1.0)
        startup.write_file(self.cfg.nodename_file, self.cfg.nodename)
        from cni_calico.node.tunnels import Tunnels

        self.tunnels = Tunnels(self.ds, self.cfg, self.ipv4_cidr)
        if self.cfg.cni_server:
            from cni_calico.node.cni_process import CniServerProcess

            self.cni_server = CniServerProcess(self.cfg.run_dir)
            self.cni_server.start()
        from cni_calico.policy.sync import PolicySync

        self.policy = PolicySync(self.ds, self.cfg.nodename)
        self.policy.watch_links()

    def _enable_forwarding(self) -> None:
        """A vRouter forwards: IPv4 always, IPv6 when the node has an IPv6 address (as Felix does)."""
        settings = ["net/ipv4/ip_forward=1"] + (["net/ipv6/conf/all/forwarding=1"] if self.ipv6_cidr else [])
        from cni_calico.dataplane import write_sysctl

        for setting in settings:
            try:
                write_sysctl(setting)
            except OSError as exc:
                log.warning("cannot set %s: %s", setting, exc)

    # --- the loop ---------------------------------------------------------------------

    def sync_once(self) -> bool:
        """Rebuilds BIRD's config and the tunnel routes if etcd moved; True when it did."""
        revision = self.ds.revision()
        if revision == self.last_revision:
            return False
        snap = model.load(self.ds)
        me = self.cfg.nodename
        if me not in snap.nodes:
            log.warning("node %s is no longer registered: withdrawing its routes", me)
            if self.bird:
                self.bird.stop(graceful=False)
                self.bird.config = ""
            self.last_revision = revision
            return True
        if self.bird and snap.nodes[me].ipv4:
            subnet = str(ipaddress.IPv4Interface(self.ipv4_cidr).network) if self.ipv4_cidr else ""
            self.bird.apply(birdconf.render(snap, me, subnet))
        if self.tunnels is not None:
            self.tunnels.sync(snap)
        if self.policy is not None:
            self.policy.sync()
        self.last_revision = revision
        return True

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sync_once()
                if not self.etcd_ok:
                    log.info("etcd is back; resynced")
                self.etcd_ok = True
            except DatastoreError as exc:
                if self.etcd_ok:
                    log.warning("etcd unavailable, keeping the last configuration: %s", exc.msg)
                self.etcd_ok = False
            except BirdError as exc:
                log.error("%s", exc)
            except Exception:  # noqa: BLE001 - one bad sync must not take the node's routing down
                log.exception("sync failed; retrying")
                self.last_revision = None
                self.stop_event.wait(1.0)
            if self.cni_server is not None:
                self.cni_server.ensure_running()
            if self.bird:
                try:
                    self.bird.ensure_running()
                except BirdError as exc:
                    log.error("%s", exc)
            self.stop_event.wait(POLL)

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        if self.cni_server is not None:
            self.cni_server.stop()  # first: requests in flight finish while etcd and the rules are still ours
        # Policy rules stay programmed: a restart must not open a gap (`calico-node --cleanup` removes them).
        # Brought up to date first, so a stopped node still admits every endpoint etcd knows of.
        if self.policy is not None and self.etcd_ok:
            try:
                self.policy.sync()
            except Exception as exc:  # noqa: BLE001 - stopping goes on; the rules stay as they were
                log.warning("final policy sync failed, rules left as they were: %s", exc)
        if self.bird:
            self.bird.stop(graceful=True)
        self.ds.close()
