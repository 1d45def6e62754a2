"""calico-node's composition root: start-up, then keep BIRD, tunnel routes, outgoing NAT and policy
rules in step with etcd.

One snapshot of etcd, then a watch (cni_calico.node.syncer): each change goes to the view that wants
it, the routing view (nodes, pools, peers, BGP configuration, affinities: BIRD's config and the
tunnel routes) or the policy component (endpoints, profiles, policies: chains and ipsets), and
after each batch of changes only the views that changed are programmed. Every refresh interval
the policy and NAT rules, the tunnel devices and routes and the blocks' blackholes in the kernel are
checked and what someone else changed is put back (and logged). When etcd is
away the node keeps the last good configuration (routing goes on) and resyncs when etcd answers.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time

from cni_calico import datastore_lock, keys
from cni_calico.datastore import Datastore, DatastoreError
from cni_calico.logsetup import LEVELS
from cni_calico.node import birdconf, startup
from cni_calico.node.bird import Bird, BirdError
from cni_calico.node.config import DEFAULT_REFRESH, NodeConfig
from cni_calico.node.health import NodeHealth
from cni_calico.node.identity import RestoreGuard, drifted
from cni_calico.node.model import Routing
from cni_calico.node.secrets import SecretReader
from cni_calico.node.syncer import Syncer
from cni_calico.v3 import DEFAULT_ENDPOINT_TO_HOST, FelixConfiguration

log = logging.getLogger(__name__)

TICK = 1.0  # the longest the loop waits for etcd before it looks after BIRD and the CNI server
RETRY = 1.0
START_TIMEOUT = 60.0


class Agent:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.ds = Datastore(cfg.etcd, rpc_timeout=2.0, deadline=3.0)
        self.bird = Bird(cfg.run_dir) if cfg.backend == "bird" else None
        self.stop_event = threading.Event()
        self.ipv4_cidr = ""
        self.ipv6_cidr = ""
        self.etcd_ok = True
        self.tunnels = None
        self.cni_server = None
        self.policy = None  # cni_calico.policy.sync.PolicySync, made in start()
        self.routing = Routing()
        self.routing_dirty = True
        self.secrets = SecretReader(cfg.secrets_dir)  # BGP passwords (secretKeyRef) from files
        self.passwords: dict = {}  # SecretRef -> password, as last rendered
        self.secret_refs: set = set()  # the secrets the rendered sessions need
        self.felix: dict[str, FelixConfiguration] = {}  # default and node.<me>, as read
        self.felix_stale = False  # a snapshot came since self.felix was last applied
        self.refresh_interval = cfg.refresh_interval
        self.nat_address = ""  # FelixConfiguration natOutgoingAddress ("" masquerades)
        self.encapsulation: dict[str, bool | None] = {}  # FelixConfiguration ipipEnabled / vxlanEnabled
        self._blackholes_wanted: set[str] = set()  # local blocks at the last drift check
        self.exporter = None  # cni_calico.node.metrics.Exporter
        self.metrics_felix: tuple[bool | None, int | None] = (None, None)  # FelixConfiguration's enabled, port
        self._deltas: dict[str, object] = {}  # running totals -> counter increments
        self.nat: dict = {}  # IP version -> cni_calico.policy.natout.NatDataplane, made in start()
        self.health = NodeHealth(cfg)
        self.identity_fix: dict[str, str] = {}  # spec.bgp fields to put back on our Node (someone changed them)
        self.identity_guard = RestoreGuard()
        self.identity_problem = ""  # set while another calico-node seems to use our name
        self.failsafe = None  # cni_calico.policy.hostep.Failsafe in force, made in start()
        self.locked = False  # ClusterInformation datastoreReady false: follow etcd, program nothing
        self.to_host = ""  # DefaultEndpointToHostAction in force (Drop, Accept, Return), set in start()
        self.syncer = Syncer(self.ds, self.reset, self.update)

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
        self.health.start()
        self.ipv4_cidr = self.resolve_address()
        self.ipv6_cidr = self.resolve_address6()
        log.info("node %s, address %s %s, backend %s", self.cfg.nodename, self.ipv4_cidr or "none",
                 self.ipv6_cidr, self.cfg.backend)
        self._enable_forwarding()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                startup.register_node(self.ds, self.cfg, self.ipv4_cidr, self.ipv6_cidr)
                startup.ensure_initialized(self.ds, self.cfg.cluster_type, self.cfg.nodename)
                startup.ensure_default_pool(self.ds, self.cfg)
                break
            except DatastoreError as exc:
                if time.monotonic() > deadline or self.stop_event.is_set():
                    raise
                log.warning("waiting for etcd: %s", exc.msg)
                self.stop_event.wait(1.0)
        startup.write_file(self.cfg.nodename_file, self.cfg.nodename)
        from cni_calico.node import metrics

        metrics.prepare(self.cfg.run_dir)  # before the CNI server starts: it records there too
        self.exporter = metrics.Exporter(self._ipam_figures)
        from cni_calico.node.tunnels import Tunnels

        self.tunnels = Tunnels(self.ds, self.cfg, self.ipv4_cidr)
        if self.cfg.cni_server:
            from cni_calico.node.cni_process import CniServerProcess

            self.cni_server = CniServerProcess(self.cfg.run_dir)
            self.cni_server.start()
        from cni_calico.policy.iptables import ipv6_available
        from cni_calico.policy.natout import NatDataplane
        from cni_calico.policy.sync import PolicySync

        self.nat = {v: NatDataplane(version=v) for v in ((4, 6) if ipv6_available() else (4,))}
        self.policy = PolicySync(self.cfg.nodename)
        self._apply_failsafe(None, None)
        self._apply_endpoint_to_host(None)
        self.syncer.resync()
        self.sync_once(0.0)
        self._apply_metrics_settings()

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

    def reset(self) -> None:
        """A fresh snapshot follows: start the views again (the kernel keeps its state until the flush)."""
        self.routing = Routing()
        self.routing_dirty = True
        self.felix = {}
        self.felix_stale = True  # applied again once the snapshot is in (see _apply_felix)
        self.locked = False  # the snapshot says it again if it is so
        if self.policy is not None:
            self.policy.reset()
        if self.exporter is not None:
            from cni_calico.node import metrics

            metrics.metrics().resyncs.inc()

    def update(self, key: str, value: dict | None) -> None:
        """One change from etcd, to whichever view wants it (endpoint changes never reach routing)."""
        if self.policy is not None and self.policy.wants(key):
            self.policy.update(key, value)
        elif Routing.wants(key):
            if key == keys.resource("nodes", self.cfg.nodename) and value is not None:
                self.identity_fix = drifted((value.get("spec") or {}).get("bgp"), self.ipv4_cidr, self.ipv6_cidr)
                if not self.identity_fix and self.identity_problem:
                    log.info("node %s carries its own addresses again", self.cfg.nodename)
                    self.identity_problem = ""
            self.routing_dirty = self.routing.update(key, value) or self.routing_dirty
        else:
            parsed = keys.parse_resource(key)
            if parsed is not None and parsed.plural == "felixconfigurations":
                self._felix_update(parsed.name, value)
            elif key == datastore_lock.KEY:
                self._lock_update(value)

    def _lock_update(self, value: dict | None) -> None:
        """The datastore lock (calicoctl datastore migrate lock): while it holds, the kernel keeps what
        it has and nothing is programmed; changes are still followed and applied when it lifts (Felix
        restarts and waits for the flag instead)."""
        locked = datastore_lock.locked(value)
        if locked != self.locked:
            if locked:
                log.warning("datastore locked (ClusterInformation datastoreReady false): programming nothing "
                            "until it is unlocked")
            else:
                log.info("datastore unlocked: programming again")
            self.locked = locked

    def _felix_update(self, name: str, value: dict | None) -> None:
        """FelixConfiguration `default` and `node.<me>` (which wins field by field), applied at once
        unless the environment set the same thing."""
        if name not in ("default", f"node.{self.cfg.nodename}"):
            return
        if value is None:
            self.felix.pop(name, None)
        else:
            self.felix[name] = FelixConfiguration.from_value(value)
        self._apply_felix()

    def _apply_felix(self) -> None:
        """What `self.felix` says, applied (also after a fresh snapshot: one deleted meanwhile sends
        no update, and its fields fall back to the other's or the defaults)."""
        self.felix_stale = False
        chosen = [self.felix.get(f"node.{self.cfg.nodename}"), self.felix.get("default")]

        def pick(attr: str):
            return next((getattr(c, attr) for c in chosen if c is not None and getattr(c, attr) is not None), None)

        if not self.cfg.refresh_from_env:
            refresh = pick("refresh_interval") or DEFAULT_REFRESH
            if refresh != self.refresh_interval:
                log.info("policy drift check every %g s (FelixConfiguration iptablesRefreshInterval)", refresh)
                self.refresh_interval = refresh
        for kind in ("ipip", "vxlan"):
            enabled = pick(f"{kind}_enabled")
            if enabled != self.encapsulation.get(kind):
                log.info("%s %s (FelixConfiguration %sEnabled)", kind.upper(),
                         "never programmed" if enabled is False else "programmed where a pool needs it", kind)
                self.encapsulation[kind] = enabled
                self.routing_dirty = True
        nat = pick("nat_outgoing_address") or ""
        if nat != self.nat_address:
            log.info("outgoing NAT to %s (FelixConfiguration natOutgoingAddress)", nat or "the node's address")
            self.nat_address = nat
            self.routing_dirty = True
        self.metrics_felix = (pick("metrics_enabled"), pick("metrics_port"))
        self.health.configure(pick("health_enabled"), pick("health_host"), pick("health_port"))
        self._apply_metrics_settings()
        self._apply_failsafe(pick("failsafe_inbound"), pick("failsafe_outbound"))
        self._apply_endpoint_to_host(pick("endpoint_to_host"))
        if not self.cfg.log_level_from_env:
            level = LEVELS.get((pick("log_severity") or self.cfg.log_level).lower(), logging.INFO)
            if logging.getLogger().level != level:
                logging.getLogger().setLevel(level)
                log.warning("log level %s (FelixConfiguration logSeverityScreen)", logging.getLevelName(level))

    def _apply_failsafe(self, inbound, outbound) -> None:
        """The failsafe ports: the environment's, else FelixConfiguration's, else Felix's defaults."""
        from cni_calico.policy.hostep import Failsafe

        default = Failsafe()
        failsafe = Failsafe(next(v for v in (self.cfg.failsafe_inbound, inbound, default.inbound) if v is not None),
                            next(v for v in (self.cfg.failsafe_outbound, outbound, default.outbound) if v is not None))
        if failsafe != self.failsafe and self.policy is not None:
            if self.failsafe is not None or failsafe != default:
                log.info("failsafe ports: inbound %s, outbound %s", ",".join(p.text() for p in failsafe.inbound) or
                         "none", ",".join(p.text() for p in failsafe.outbound) or "none")
            self.failsafe = failsafe
            self.policy.set_failsafe(failsafe)

    def _apply_endpoint_to_host(self, action: str | None) -> None:
        """DefaultEndpointToHostAction: the environment's, else FelixConfiguration's, else Drop (Felix's)."""
        to_host = self.cfg.endpoint_to_host or action or DEFAULT_ENDPOINT_TO_HOST
        if to_host != self.to_host and self.policy is not None:
            if self.to_host or to_host != DEFAULT_ENDPOINT_TO_HOST:
                log.info("workload to host traffic: %s after the workload's egress policy (%s)", to_host,
                         "FELIX_DEFAULTENDPOINTTOHOSTACTION" if self.cfg.endpoint_to_host else
                         "FelixConfiguration defaultEndpointToHostAction" if action else "Felix's default")
            self.to_host = to_host
            self.policy.set_endpoint_to_host(to_host)

    def sync_once(self, timeout: float = 0.0) -> int:
        """Takes the changes etcd sends within `timeout` and programs them; returns how many came."""
        came = self.syncer.poll(timeout)
        if self.felix_stale:
            self._apply_felix()
        if self.locked:
            return came
        if self.identity_fix:
            self._restore_identity()
        if self.routing_dirty:
            self.routing_dirty = False
            self._apply_routing()
            self._report_readiness()
        if self.policy is not None:
            if self.policy.wants_addresses:  # host endpoints named by expectedIPs follow the addresses
                from cni_calico.node.autodetect import interface_addresses

                self.policy.set_interface_addresses(interface_addresses())
            try:
                changed = self.policy.flush()
            except Exception:
                self._record_policy(failed=True)
                raise
            self._record_policy(changed=changed)
        return came

    def _apply_routing(self) -> None:
        self.routing.revision = self.syncer.revision
        snap = self.routing.snapshot()
        changes = self.routing.take_changes()
        self._apply_nat(snap.pools)
        if self.policy is not None:  # host endpoint policy lets the pools' tunnels between nodes through
            from cni_calico.policy.hostep import Tunnels

            pools = [p for p in snap.pools if not p.disabled]
            self.policy.set_tunnels(Tunnels(any(p.vxlan_mode != "Never" for p in pools),
                                            any(p.ipip_mode != "Never" for p in pools),
                                            tuple(sorted(n.ipv4 for n in snap.nodes.values() if n.ipv4))))
        me = self.cfg.nodename
        if me not in snap.nodes:
            log.warning("node %s is no longer registered: withdrawing its routes", me)
            if self.bird:
                self.bird.stop(graceful=False)
                self.bird.config = ""
            return
        if self.bird and snap.nodes[me].ipv4:
            subnet = str(ipaddress.IPv4Interface(self.ipv4_cidr).network) if self.ipv4_cidr else ""
            self.secret_refs = birdconf.secret_refs(snap, me)
            self.passwords = self.secrets.read(self.secret_refs)
            self.bird.apply(birdconf.render(snap, me, subnet, self.passwords))
        if self.tunnels is not None:
            self.tunnels.enabled = dict(self.encapsulation)
            self.tunnels.sync(snap, changes)

    def _repair_routes(self) -> list[str]:
        """The drift check of routing: the tunnel state calico-node programs and the blackholes of its
        blocks (BIRD's, which BIRD also restores at its kernel scan) put back, each repair logged."""
        snap = self.routing.snapshot()
        node = snap.nodes.get(self.cfg.nodename)
        if node is None:
            return []
        repaired: list[str] = []
        if self.tunnels is not None:
            self.tunnels.enabled = dict(self.encapsulation)
            drift = self.tunnels.drift(snap)
            if drift:
                self.tunnels.sync(snap)
                repaired += drift
        if self.bird and self.bird.config and node.ipv4:
            from cni_calico.node import blackholes

            blocks = [b for b in snap.local_blocks(self.cfg.nodename) if ":" not in b or node.ipv6]
            # A block new since the last check is BIRD's to install first (its config was just loaded).
            settled, self._blackholes_wanted = [b for b in blocks if b in self._blackholes_wanted], set(blocks)
            gone = blackholes.missing(settled)
            if gone:
                blackholes.restore(gone)
                repaired += [f"blackhole {b}" for b in gone]
        for what in repaired:
            log.warning("route drift repaired: %s was not as programmed", what)
        return repaired

    # --- metrics ----------------------------------------------------------------------------

    def _apply_metrics_settings(self) -> None:
        """The exporter as the environment, else FelixConfiguration, says (off, port 9091 by default)."""
        if self.exporter is None:
            return
        from cni_calico.node.metrics import DEFAULT_PORT

        cfg, (enabled, port) = self.cfg, self.metrics_felix
        on = cfg.metrics_enabled if cfg.metrics_enabled is not None else bool(enabled)
        self.exporter.apply(on, cfg.metrics_host, cfg.metrics_port or port or DEFAULT_PORT)

    def _count(self, name: str, total: int) -> int:
        from cni_calico.node.metrics import Delta

        delta = self._deltas.setdefault(name, Delta())
        return delta.take(total)  # type: ignore[attr-defined]

    def _record_policy(self, changed: bool = False, failed: bool = False) -> None:
        """Felix's dataplane figures after a policy flush (or a failed one)."""
        if self.exporter is None or self.policy is None:
            return
        from cni_calico.node import metrics
        from cni_calico.policy.model import Policy

        m = metrics.metrics()
        if failed:
            m.restore_errors.inc()
        elif changed and self.policy.last_timings:
            m.apply_time.observe(self.policy.last_timings.get("apply", 0.0))
        calc = self.policy.calc
        m.local_endpoints.set(len(calc.local))
        m.local_policies.set(len({source.key for bodies in calc.jumps.values() for _, source in bodies.values()
                                  if isinstance(source, Policy)}))
        m.ipset_calls.inc(self._count("ipset", sum(d.set_calls for d in self.policy.dataplanes)))
        m.restore_calls.inc(self._count("restore", sum(d.writes for d in self.policy.dataplanes)))
        m.round_trips.labels("calico-node").inc(self._count("etcd", self.ds.round_trips))

    def _ipam_figures(self) -> tuple[dict[str, int], dict[str, int]]:
        """This node's blocks and its endpoints' addresses per pool (at scrape time, from the views)."""
        me = self.cfg.nodename
        for _ in range(3):  # the loop may change the views while a scrape reads them
            try:
                pools = list(self.routing.pools.values())
                mine = [cidr for cidr, owner in list(self.routing.blocks.items()) if owner == me]
                calc = self.policy.calc if self.policy is not None else None
                addresses = [a for key in list(calc.local.values()) for a in calc.endpoints[key].addresses] \
                    if calc is not None else []
                break
            except (RuntimeError, KeyError):
                continue
        else:
            return {}, {}
        blocks = {p.name: sum(1 for b in mine if p.contains(b)) for p in pools}
        in_use = {p.name: sum(1 for a in addresses if p.contains(a)) for p in pools}
        return blocks, in_use

    def _restore_identity(self) -> None:
        """Our Node was edited to carry other addresses: put ours back (BGP peers find us by them)."""
        fix, self.identity_fix = self.identity_fix, {}
        if not self.identity_guard.allow(time.monotonic()):
            if not self.identity_problem:
                self.identity_problem = (f"the registration of node {self.cfg.nodename} keeps changing away from "
                                         "this node's address: is another calico-node running with this NODENAME?")
                log.error("%s; no longer putting it back", self.identity_problem)
            return
        log.warning("node %s's registration was changed in etcd: putting back its own %s", self.cfg.nodename,
                    ", ".join(f"{k} {v}" for k, v in fix.items()))
        try:
            startup.update_node(self.ds, self.cfg.nodename, bgp=fix)
        except DatastoreError:
            self.identity_fix = fix  # tried again after the next change or loop turn
            raise

    def _report_readiness(self) -> None:
        """Heartbeat, sync state and what this node cannot do, for the probes, the health endpoint
        and `calicoctl node status` (written when it changes, else once a HEARTBEAT)."""
        problems = list(self.tunnels.problems) if self.tunnels is not None else []
        problems += [self.identity_problem] if self.identity_problem else []
        problems += [f"datastore locked: {datastore_lock.NOT_READY}"] if self.locked else []
        self.health.report(problems, self.etcd_ok and self.syncer.following)

    def _apply_nat(self, pools: list, repair: bool = False) -> None:
        """Outgoing NAT follows the pools (a failure is logged and retried at the next change or check)."""
        from cni_calico.policy.iptables import PolicyError
        from cni_calico.policy.natout import plan

        for version, dataplane in self.nat.items():
            wanted = plan(pools, version, self.nat_address)
            try:
                if repair and dataplane.applied is not None:
                    dataplane.repair(wanted)
                else:
                    dataplane.apply(wanted)
            except PolicyError as exc:
                log.error("outgoing NAT (IPv%d) not programmed: %s", version, exc)

    def run(self) -> None:
        last_repair = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.sync_once(min(TICK, self.refresh_interval))
                if not self.etcd_ok:
                    log.info("etcd is back; in sync at revision %d", self.syncer.revision)
                self.etcd_ok = True
                if self.policy is not None and time.monotonic() >= last_repair + self.refresh_interval \
                        and not self.locked:
                    last_repair = time.monotonic()
                    self.policy.repair()
                    self._apply_nat(list(self.routing.pools.values()), repair=True)
                    self._repair_routes()
            except DatastoreError as exc:
                if self.etcd_ok:
                    log.warning("etcd unavailable, keeping the last configuration: %s", exc.msg)
                self.etcd_ok = False
                self.stop_event.wait(RETRY)
            except BirdError as exc:
                log.error("%s", exc)
            except Exception:  # noqa: BLE001 - one bad update must not take the node's routing down
                log.exception("sync failed; reading a fresh snapshot")
                self.syncer.invalidate()
                self.stop_event.wait(RETRY)
            self._report_readiness()
            if self.cni_server is not None:
                self.cni_server.ensure_running()
            if self.bird:
                # A password file written, changed or removed since the last render: render again.
                if self.secret_refs and self.secrets.read(self.secret_refs) != self.passwords:
                    self.routing_dirty = True
                try:
                    self.bird.ensure_running()
                except BirdError as exc:
                    log.error("%s", exc)

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        if self.cni_server is not None:
            self.cni_server.stop()  # first: requests in flight finish while etcd and the rules are still ours
        # Policy rules stay programmed: a restart must not open a gap (`calico-node --cleanup` removes them).
        # Brought up to date first, so a stopped node still admits every endpoint etcd knows of.
        if self.policy is not None and self.etcd_ok:
            try:
                self.sync_once(0.0)
            except Exception as exc:  # noqa: BLE001 - stopping goes on; the rules stay as they were
                log.warning("final policy sync failed, rules left as they were: %s", exc)
        self.syncer.close()
        if self.exporter is not None:
            self.exporter.stop()
        self.health.stop()  # a stopped node is neither live nor ready
        if self.bird:
            self.bird.stop(graceful=True)
        self.ds.close()
