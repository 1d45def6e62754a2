"""Encapsulation: the VXLAN device and the routes to other nodes' blocks through it, from etcd.

Upstream BIRD 2 cannot program tunnel routes, so calico-node does (as Felix
does): each remote block of a VXLAN pool is routed via the remote node's
tunnel address on `vxlan.calico`, with a permanent neighbour entry for that
address and an FDB entry sending its MAC to the remote node's IP. The plan is
computed purely (`plan_vxlan`, `plan_ipip`; one block: `vxlan_entry`, `ipip_entry`) and applied with
pyroute2.

Cost per change: after the first sync, a change of routing (cni_calico.node.model.RoutingChanges)
re-plans only the blocks it names (a block's affinity, or the blocks of a node whose record changed) and
writes only the routes that differ: a block claimed anywhere in a cluster of 20,000 blocks is one route
here, not 20,000. A pool, this node's own record or ipipEnabled / vxlanEnabled changing, a fresh
snapshot and the drift repair re-plan everything, and even then write only what the kernel lacks (one
route dump, then the missing or different routes).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
from dataclasses import dataclass, field

from cni_calico.datastore import Store
from cni_calico.node.config import NodeConfig
from cni_calico.node.model import RoutingChanges, Snapshot
from cni_calico.node.startup import update_node, write_file
from ipam.pools import selects

log = logging.getLogger(__name__)

VXLAN_DEVICE = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
IPIP_DEVICE = "tunl0"
IPIP_OVERHEAD = 20
ROUTE_PROTO = 80  # marks the routes calico-node owns, as Felix does
ONLINK = 4
NTF_SELF = 2
NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class TunnelRoute:
    dst: str  # a remote block
    via: str  # the remote tunnel address (VXLAN) or node address (IPIP)
    device: str


@dataclass
class Plan:
    routes: list[TunnelRoute] = field(default_factory=list)
    neighbours: dict[str, str] = field(default_factory=dict)  # tunnel address -> MAC
    fdb: dict[str, str] = field(default_factory=dict)  # MAC -> remote node IP


def tunnel_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for the node's VXLAN device."""
    digest = hashlib.sha1(f"vxlan:{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x66, *digest[:5]))


def _needs_tunnel(mode: str, my_cidr: str, remote_ip: str) -> bool:
    if mode == "Always":
        return True
    if mode == "CrossSubnet" and my_cidr:
        return ipaddress.ip_address(remote_ip) not in ipaddress.IPv4Interface(my_cidr).network
    return False


@dataclass(frozen=True)
class Entry:
    """One remote block's tunnel route, and for VXLAN the remote device's MAC and node address (its
    neighbour and FDB entries)."""

    route: TunnelRoute
    mac: str = ""
    node_ip: str = ""


def vxlan_entry(snap: Snapshot, me: str, my_cidr: str, cidr: str) -> Entry | None:
    """The block's route through vxlan.calico; None when it needs none (ours, not in a VXLAN pool,
    its node without a tunnel address, or CrossSubnet within our subnet)."""
    owner = snap.blocks.get(cidr)
    pool = snap.pool_of(cidr)
    remote = snap.nodes.get(owner) if owner else None
    if owner == me or pool is None or pool.vxlan_mode == "Never" or remote is None:
        return None
    if not (remote.vxlan_addr and remote.vxlan_mac and remote.ipv4):
        return None
    if not _needs_tunnel(pool.vxlan_mode, my_cidr, remote.ipv4):
        return None
    return Entry(TunnelRoute(cidr, remote.vxlan_addr, VXLAN_DEVICE), remote.vxlan_mac, remote.ipv4)


def ipip_entry(snap: Snapshot, me: str, my_cidr: str, cidr: str) -> Entry | None:
    """IPIP sends straight to the remote node's address over tunl0 (no neighbour/FDB state)."""
    owner = snap.blocks.get(cidr)
    pool = snap.pool_of(cidr)
    remote = snap.nodes.get(owner) if owner else None
    if owner == me or pool is None or pool.ipip_mode == "Never" or remote is None or not remote.ipv4:
        return None
    if not _needs_tunnel(pool.ipip_mode, my_cidr, remote.ipv4):
        return None
    return Entry(TunnelRoute(cidr, remote.ipv4, IPIP_DEVICE))


def _plan(entries: list[Entry]) -> Plan:
    plan = Plan()
    for entry in entries:
        plan.routes.append(entry.route)
        if entry.mac:
            plan.neighbours[entry.route.via] = entry.mac
            plan.fdb[entry.mac] = entry.node_ip
    return plan


def plan_vxlan(snap: Snapshot, me: str, my_cidr: str) -> Plan:
    return _plan([e for cidr in sorted(snap.blocks) if (e := vxlan_entry(snap, me, my_cidr, cidr))])


def plan_ipip(snap: Snapshot, me: str, my_cidr: str) -> Plan:
    return _plan([e for cidr in sorted(snap.blocks) if (e := ipip_entry(snap, me, my_cidr, cidr))])


def tunnel_mtu(uplink_mtu: int, snap: Snapshot) -> int:
    """Pods and tunnel devices leave room for the largest encapsulation in use."""
    overhead = 0
    for pool in snap.pools:
        if pool.vxlan_mode != "Never":
            overhead = max(overhead, VXLAN_OVERHEAD)
        if pool.ipip_mode != "Never":
            overhead = max(overhead, IPIP_OVERHEAD)
    return uplink_mtu - overhead


class Tunnels:
    """Applies the VXLAN and IPIP plans on this node. An IPIP pool that selects the node on a kernel
    without the ipip driver is a problem it reports (`problems`: the node is not ready)."""

    def __init__(self, ds: Store, cfg: NodeConfig, my_cidr: str) -> None:
        self.ds = ds
        self.cfg = cfg
        self.my_cidr = my_cidr
        self.programmed: dict[str, dict[str, Entry]] = {VXLAN_DEVICE: {}, IPIP_DEVICE: {}}  # device -> block ->
        self.neighbours: dict[str, str] = {}  # VXLAN: tunnel address -> MAC, as written
        self.fdb: dict[str, str] = {}  # VXLAN: MAC -> remote node address, as written
        self.basis: tuple | None = None  # what a whole plan rests on, as of the last sync
        self.rtnl = None  # cni_calico.netlink.Rtnl while a sync or drift check runs: the routes' socket
        self.problems: list[str] = []  # what this node cannot do for its pools (it is not ready)
        self.enabled: dict[str, bool | None] = {}  # FelixConfiguration ipipEnabled / vxlanEnabled (False: never)

    def sync(self, snap: Snapshot, changes: RoutingChanges | None = None) -> None:
        """Programs the snapshot: only `changes.blocks` when the rest is as the last sync left it, else
        (no `changes`, `changes.everything`, or what every block's plan rests on moved) every block."""
        from pyroute2 import IPRoute

        from cni_calico.netlink import Rtnl

        basis = (tuple(sorted(self.enabled.items())), snap.nodes.get(self.cfg.nodename),
                 tuple(sorted(snap.pools, key=lambda p: p.name)))
        blocks = None if changes is None or changes.everything or basis != self.basis else changes.blocks
        self.basis = basis
        with IPRoute() as ipr, Rtnl() as self.rtnl:
            uplink_mtu = self._uplink_mtu(ipr)
            self._write_mtu(tunnel_mtu(uplink_mtu, snap))
            self._sync_vxlan(ipr, snap, uplink_mtu, blocks)
            self._sync_ipip(ipr, snap, uplink_mtu, blocks)

    def _vxlan_pools(self, snap: Snapshot) -> list:
        if self.enabled.get("vxlan") is False:
            return []
        return [p for p in snap.pools if p.family == 4 and p.vxlan_mode != "Never" and not p.disabled]

    def _ipip_pools(self, snap: Snapshot) -> list:
        if self.enabled.get("ipip") is False:
            return []
        me = self.cfg.nodename
        labels = snap.nodes[me].labels if me in snap.nodes else {}
        return [p for p in snap.pools if p.family == 4 and p.ipip_mode != "Never" and not p.disabled
                and selects(p.node_selector, labels)]

    def drift(self, snap: Snapshot) -> list[str]:
        """What of the tunnel state this node programs is not in the kernel as programmed (a deleted
        device, a device down or without its address, a missing route, neighbour or FDB entry); `sync`
        puts it back."""
        from pyroute2 import IPRoute

        from cni_calico.netlink import Rtnl

        me = self.cfg.nodename
        node = snap.nodes.get(me)
        out: list[str] = []
        with IPRoute() as ipr, Rtnl() as self.rtnl:
            if node is not None and node.vxlan_addr and node.vxlan_mac and self._vxlan_pools(snap):
                out += self._device_drift(ipr, VXLAN_DEVICE, node.vxlan_addr, self._programmed_plan(VXLAN_DEVICE))
            if node is not None and node.ipip_addr and self._ipip_pools(snap) and not self.problems:
                out += self._device_drift(ipr, IPIP_DEVICE, node.ipip_addr, self._programmed_plan(IPIP_DEVICE))
        return out

    def _programmed_plan(self, device: str) -> Plan:
        """What the syncs have programmed through the device (the plan of the last snapshot)."""
        return _plan(list(self.programmed[device].values()))

    def _device_drift(self, ipr, device: str, address: str, plan: Plan) -> list[str]:
        import socket

        found = ipr.link_lookup(ifname=device)
        if not found:
            return [f"device {device}"]
        index, out = found[0], []
        if not ipr.get_links(index)[0]["flags"] & 1:  # IFF_UP
            out.append(f"{device} down")
        if address not in {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)}:
            out.append(f"{device} address {address}")
        routes = set(self.rtnl.route_table(socket.AF_INET, index, ROUTE_PROTO).items())
        out += [f"tunnel route {r.dst} via {r.via}" for r in plan.routes if (r.dst, r.via) not in routes]
        if plan.neighbours:
            neighbours = {(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                          for n in ipr.neigh("dump", ifindex=index, family=socket.AF_INET)}
            out += [f"neighbour {ip}" for ip, mac in plan.neighbours.items() if (ip, mac) not in neighbours]
        if plan.fdb:
            fdb = {(n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST"))
                   for n in ipr.fdb("dump", ifindex=index) if n["ifindex"] == index}
            out += [f"FDB entry {mac}" for mac, ip in plan.fdb.items() if (mac, ip) not in fdb]
        return out

    def _sync_vxlan(self, ipr, snap: Snapshot, uplink_mtu: int, blocks: set[str] | None) -> None:
        me = self.cfg.nodename
        pools = self._vxlan_pools(snap)
        if not pools:
            self._remove_device(ipr)
            self.programmed[VXLAN_DEVICE] = {}
            self.neighbours, self.fdb = {}, {}
            return
        node = snap.nodes[me]
        if not (node.vxlan_addr and node.vxlan_mac):
            addr = self._allocate_tunnel_address(pools, "vxlan-tunnel-addr")
            update_node(self.ds, me, {"ipv4VXLANTunnelAddr": addr, "vxlanTunnelMACAddr": tunnel_mac(me)})
            return  # the Node update moves etcd's revision: the next sync programs the rest
        index = self._ensure_device(ipr, node.vxlan_addr, node.vxlan_mac, uplink_mtu - VXLAN_OVERHEAD)
        self._apply(ipr, index, VXLAN_DEVICE, self._entries(vxlan_entry, snap, blocks), blocks is None)

    def _entries(self, entry, snap: Snapshot, blocks: set[str] | None) -> dict[str, Entry | None]:
        """The plan of `blocks` (None: of every block) by `entry` (vxlan_entry / ipip_entry)."""
        me = self.cfg.nodename
        return {cidr: entry(snap, me, self.my_cidr, cidr) for cidr in (snap.blocks if blocks is None else blocks)}

    def _sync_ipip(self, ipr, snap: Snapshot, uplink_mtu: int, blocks: set[str] | None) -> None:
        pools = self._ipip_pools(snap)
        problems: list[str] = []
        try:
            if not pools:
                found = ipr.link_lookup(ifname=IPIP_DEVICE)
                if found:  # tunl0 is the ipip module's own device: only our routes through it go
                    self._apply(ipr, found[0], IPIP_DEVICE, {}, True)
                self.programmed[IPIP_DEVICE] = {}
                return
            found = ipr.link_lookup(ifname=IPIP_DEVICE)
            if not found:
                try:
                    ipr.link("add", ifname=IPIP_DEVICE, kind="ipip")
                    found = ipr.link_lookup(ifname=IPIP_DEVICE)
                except Exception as exc:  # noqa: BLE001 - reported (not ready), the rest of the node goes on
                    names = ", ".join(f"{p.name} ({p.cidr})" for p in pools)
                    problems.append(f"IPIP pool {names} selects this node, but this kernel has no ipip driver "
                                    f"({exc}): that pool's traffic to other nodes is lost")
                    return
            self._program_ipip(ipr, snap, pools, found[0], uplink_mtu, blocks)
        finally:
            for problem in set(problems) - set(self.problems):
                log.error("not ready: %s", problem)
            if self.problems and not problems:
                log.info("ready again: %s resolved", "; ".join(self.problems))
            self.problems = problems

    def _program_ipip(self, ipr, snap: Snapshot, pools: list, index: int, uplink_mtu: int,
                      blocks: set[str] | None) -> None:
        me = self.cfg.nodename
        address = snap.nodes[me].ipip_addr
        if not address:
            address = self._allocate_tunnel_address(pools, "ipip-tunnel-addr")
            update_node(self.ds, me, bgp={"ipv4IPIPTunnelAddr": address})
        ipr.link("set", index=index, mtu=uplink_mtu - IPIP_OVERHEAD, state="up")
        if address not in {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}:
            ipr.addr("add", index=index, address=address, prefixlen=32)
        self._apply(ipr, index, IPIP_DEVICE, self._entries(ipip_entry, snap, blocks), blocks is None)

    # --- pieces -----------------------------------------------------------------------

    def _uplink_mtu(self, ipr) -> int:
        ip = self.my_cidr.split("/")[0]
        for addr in ipr.get_addr(family=2):
            if addr.get_attr("IFA_ADDRESS") == ip:
                return int(ipr.get_links(addr["index"])[0].get_attr("IFLA_MTU"))
        return 1500

    def _write_mtu(self, mtu: int) -> None:
        import os

        path = os.path.join(self.cfg.lib_dir, "mtu")
        try:
            with open(path) as f:
                if f.read().strip() == str(mtu):
                    return
        except OSError:
            pass
        write_file(path, str(mtu))

    def _allocate_tunnel_address(self, pools, kind: str) -> str:
        """An address from the node's own block for the tunnel device (handle `<kind>-<node>`)."""
        from ipam.assign import AssignArgs, auto_assign

        me = self.cfg.nodename
        # Calico's handle and attributes for a tunnel address (allocateip.go)
        kinds = {"vxlan-tunnel-addr": "vxlanTunnelAddress", "ipip-tunnel-addr": "ipipTunnelAddress"}
        args = AssignArgs(f"{kind}-{me}", me, self.cfg.run_dir, {"node": me, "type": kinds[kind]},
                          ipv4_pools=[p.cidr for p in pools if "Tunnel" in p.allowed_uses], use="Tunnel")
        got = auto_assign(self.ds, args).assignments[0]
        log.info("%s of %s: %s", kind, me, got.ip)
        return got.ip

    def _ensure_device(self, ipr, address: str, mac: str, mtu: int) -> int:
        found = ipr.link_lookup(ifname=VXLAN_DEVICE)
        if not found:
            ipr.link("add", ifname=VXLAN_DEVICE, kind="vxlan", vxlan_id=VXLAN_VNI,
                     vxlan_local=self.my_cidr.split("/")[0], vxlan_port=VXLAN_PORT, vxlan_learning=0,
                     address=mac, mtu=mtu)
            found = ipr.link_lookup(ifname=VXLAN_DEVICE)
            log.info("created %s (VNI %d, MTU %d)", VXLAN_DEVICE, VXLAN_VNI, mtu)
        index = found[0]
        ipr.link("set", index=index, mtu=mtu, state="up")
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
        if address not in have:
            ipr.addr("add", index=index, address=address, prefixlen=32)
        return index

    def _apply(self, ipr, index: int, device: str, entries: dict[str, Entry | None], whole: bool) -> None:
        """Writes the entries' routes (and VXLAN's neighbour and FDB entries) that differ from what was
        written; removes the routes of blocks whose entry is None. `whole`: `entries` is every block's
        plan, so the kernel's routes are read back and anything else of ours on the device goes (and
        what went missing from the kernel is written again)."""
        import socket

        from pyroute2.netlink.exceptions import NetlinkError

        programmed = self.programmed[device]
        if whole:
            kernel = self.rtnl.route_table(socket.AF_INET, index, ROUTE_PROTO)
            programmed = {dst: Entry(TunnelRoute(dst, via, device)) for dst, via in kernel.items()}
            entries = {**dict.fromkeys(programmed), **entries}
            if device == VXLAN_DEVICE:
                self.neighbours, self.fdb = {}, {}  # written again: they are few
        for dst in sorted(entries):
            entry = entries[dst]
            if entry is not None and entry.mac:
                if self.neighbours.get(entry.route.via) != entry.mac:
                    ipr.neigh("replace", dst=entry.route.via, lladdr=entry.mac, ifindex=index, state="permanent")
                    self.neighbours[entry.route.via] = entry.mac
                if self.fdb.get(entry.mac) != entry.node_ip:
                    # NTF_SELF: the VXLAN device's own table, as `bridge fdb replace … self permanent`.
                    ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=entry.node_ip, flags=NTF_SELF,
                            state=NUD_PERMANENT)
                    self.fdb[entry.mac] = entry.node_ip
            had = programmed.get(dst)
            if entry is None:
                if had is not None:
                    try:
                        self.rtnl.del_route(dst, index, ROUTE_PROTO)
                        log.info("removed tunnel route %s", dst)
                    except NetlinkError as exc:
                        if exc.code != errno.ESRCH:  # already gone: what we wanted
                            raise
                programmed.pop(dst, None)
            elif had is None or had.route != entry.route:
                route = entry.route
                self.rtnl.add_route(route.dst, index, route.via, replace=True, proto=ROUTE_PROTO, flags=ONLINK)
                programmed[dst] = entry
            else:
                programmed[dst] = entry
        self.programmed[device] = programmed

    def _remove_device(self, ipr) -> None:
        found = ipr.link_lookup(ifname=VXLAN_DEVICE)
        if found:
            ipr.link("del", index=found[0])
            log.info("removed %s: no VXLAN pool left", VXLAN_DEVICE)
