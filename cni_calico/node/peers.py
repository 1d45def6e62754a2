"""Which BGP sessions a node has: the full mesh, explicit BGPPeers, route reflector roles (pure).

Peerings are symmetric, as in Calico: when a BGPPeer makes node A peer with
node B (through peerSelector), B peers with A too, so both ends configure the
session. A route reflector (a node with routeReflectorClusterID) treats every
peer that is not a reflector of the same cluster as its client. A session to a
calico-node connects to that node's BGP port (its listenPort), unless the
BGPPeer's peerIP names a port; each explicit session carries the BGPPeer that
made it, whose options (password, filters, timers…) birdconf renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from cni_calico.node.model import Snapshot
from cni_calico.v3 import BGPPeer, Node, split_peer_ip

MESH, GLOBAL, NODE = "node-to-node mesh", "global", "node specific"
PREFIX = {MESH: "Mesh", GLOBAL: "Global", NODE: "Node"}


@dataclass(frozen=True)
class Peering:
    ip: str
    asn: int
    kind: str
    rr_client: bool = False
    port: int = 0  # the neighbour's BGP port (0: BIRD's 179)
    port_in_name: bool = False  # peerIP named the port: confd adds it to the protocol's name
    peer: BGPPeer | None = None  # the BGPPeer behind an explicit session; None for the mesh

    @property
    def name(self) -> str:
        base = f"{PREFIX[self.kind]}_{self.ip.replace('.', '_').replace(':', '_')}"
        return f"{base}_port_{self.port}" if self.port_in_name else base


def _selects(selector: str, labels: dict[str, str]) -> bool:
    from cni_calico.selector import matches

    return matches(selector or "all()", labels)


def _applies_to(peer: BGPPeer, node: Node) -> bool:
    if peer.node:
        return peer.node == node.name
    return _selects(peer.node_selector, node.labels)


def _address(node: Node, family: int) -> str:
    return node.ipv4 if family == 4 else node.ipv6


def peerings(snap: Snapshot, me: str, family: int = 4) -> list[Peering]:
    """The sessions of one address family: IPv6 routes travel on sessions between IPv6 addresses."""
    node = snap.nodes.get(me)
    if node is None or not _address(node, family):
        return []
    asn_of = {n.name: n.asn or snap.default_asn for n in snap.nodes.values()}
    by_ip = {_address(n, family): n for n in snap.nodes.values() if _address(n, family)}
    mine = _address(node, family)
    out: dict[str, Peering] = {}

    def add(ip: str, asn: int, kind: str, peer: BGPPeer | None = None, port: int = 0) -> None:
        if ip == mine or ip in out or (":" in ip) != (family == 6):
            return
        remote = by_ip.get(ip)
        client = bool(node.rr_cluster_id) and (remote is None or remote.rr_cluster_id != node.rr_cluster_id)
        # Without a port of its own, a session to a calico-node goes to the port that node listens on.
        node_port = snap.listen_port(remote.name) if remote is not None else 0
        out[ip] = Peering(ip, asn, kind, rr_client=client and remote is not None, port=port or node_port,
                          port_in_name=bool(port), peer=peer)

    if snap.mesh:
        for other in sorted(snap.nodes.values(), key=lambda n: n.name):
            if other.name != me and _address(other, family):
                add(_address(other, family), asn_of[other.name], MESH)
    for peer in sorted(snap.peers, key=lambda p: p.name):
        kind = NODE if peer.node or peer.node_selector else GLOBAL
        if _applies_to(peer, node):
            if peer.peer_ip:
                ip, port = split_peer_ip(peer.peer_ip)
                add(ip, peer.asn or snap.default_asn, kind, peer, port)
            if peer.peer_selector:
                for other in sorted(snap.nodes.values(), key=lambda n: n.name):
                    if other.name != me and _address(other, family) and _selects(peer.peer_selector, other.labels):
                        add(_address(other, family), asn_of[other.name], NODE, peer)
        # The reverse direction: I am selected as a peer by some node this BGPPeer applies to.
        if peer.peer_selector and _selects(peer.peer_selector, node.labels):
            for other in sorted(snap.nodes.values(), key=lambda n: n.name):
                if other.name != me and _address(other, family) and _applies_to(peer, other):
                    add(_address(other, family), asn_of[other.name], NODE, peer)
    return sorted(out.values(), key=lambda p: p.name)


def my_asn(snap: Snapshot, me: str) -> int:
    node = snap.nodes.get(me)
    return (node.asn if node and node.asn else None) or snap.default_asn
