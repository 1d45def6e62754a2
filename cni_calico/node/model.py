"""What calico-node's routing needs from etcd (BIRD's config, tunnel routes): the cluster's nodes,
pools, peers, BGP filters, BGP configurations (`default` and `node.<name>`) and block affinities
(pure). `Routing` keeps them up to date change by change, and says what changed (`take_changes`) so
that the tunnel routes follow block by block; `Snapshot` is the view that birdconf, peers and tunnels
render from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.v3 import DEFAULT_AS, BGPConfiguration, BGPFilter, BGPPeer, IPPool, Node

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    revision: int
    nodes: dict[str, Node]
    mesh: bool
    default_asn: int
    peers: list[BGPPeer]
    pools: list[IPPool]
    blocks: dict[str, str]  # block CIDR -> node it is affine to
    config: BGPConfiguration = field(default_factory=lambda: BGPConfiguration("default"))
    node_configs: dict[str, BGPConfiguration] = field(default_factory=dict)  # node name -> node.<name>
    filters: dict[str, BGPFilter] = field(default_factory=dict)

    def listen_port(self, node: str) -> int:
        """The node's BGP port: its node.<name> BGPConfiguration's, else the cluster's (0: BIRD's 179)."""
        own = self.node_configs.get(node)
        return (own.listen_port if own else 0) or self.config.listen_port

    def log_severity(self, node: str) -> str:
        own = self.node_configs.get(node)
        return (own.log_severity if own else "") or self.config.log_severity

    def prefix_advertisements(self, node: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Node-specific prefixAdvertisements replace the cluster's, as confd takes the node's key first."""
        own = self.node_configs.get(node)
        return own.prefix_advertisements if own and own.prefix_advertisements else self.config.prefix_advertisements

    def local_blocks(self, node: str) -> list[str]:
        return sorted(cidr for cidr, owner in self.blocks.items() if owner == node)

    def pool_of(self, cidr: str) -> IPPool | None:
        return next((p for p in self.pools if p.contains(cidr)), None)


@dataclass
class RoutingChanges:
    """What changed since the last `Routing.take_changes`: the blocks whose affinity came, went or moved,
    with every block of a node whose record changed (its addresses route them); the nodes that changed;
    `everything` when a pool changed or the view started again (every block must be looked at)."""

    blocks: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    everything: bool = False


class Routing:
    """The routing view, kept up to date by watched changes: `update` says whether routing changed."""

    PLURALS = ("nodes", "ippools", "bgppeers", "bgpconfigurations", "bgpfilters")

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.pools: dict[str, IPPool] = {}
        self.peers: dict[str, BGPPeer] = {}
        self.config = BGPConfiguration("default")
        self.node_configs: dict[str, BGPConfiguration] = {}
        self.filters: dict[str, BGPFilter] = {}
        self.blocks: dict[str, str] = {}
        self.owned: dict[str, set[str]] = {}  # node -> the blocks affine to it
        self.revision = 0
        self.changes = RoutingChanges(everything=True)

    def take_changes(self) -> RoutingChanges:
        changes, self.changes = self.changes, RoutingChanges()
        for node in changes.nodes:
            changes.blocks |= self.owned.get(node, set())
        return changes

    @classmethod
    def wants(cls, key: str) -> bool:
        parsed = keys.parse_resource(key)
        return (parsed is not None and parsed.plural in cls.PLURALS) or keys.parse_affinity(key) is not None

    def update(self, key: str, value: dict | None) -> bool:
        affinity = keys.parse_affinity(key)
        if affinity is not None:
            node, cidr = affinity
            old = self.blocks.get(cidr)
            if old == node and value is not None:
                return False
            if old is not None:
                self.owned[old].discard(cidr)
                if not self.owned[old]:
                    del self.owned[old]
            if value is None:
                if old is None:
                    return False
                del self.blocks[cidr]
            else:
                self.blocks[cidr] = node
                self.owned.setdefault(node, set()).add(cidr)
            self.changes.blocks.add(cidr)
            return True
        parsed = keys.parse_resource(key)
        if parsed is None or parsed.plural not in self.PLURALS:
            return False
        kind, table = {"nodes": (Node, self.nodes), "ippools": (IPPool, self.pools), "bgppeers": (BGPPeer, self.peers),
                       "bgpfilters": (BGPFilter, self.filters),
                       "bgpconfigurations": (BGPConfiguration, None)}[parsed.plural]
        record = None
        if value is not None:
            try:
                record = kind.from_value(value)
            except (KeyError, ValueError, TypeError) as exc:  # as if absent: a value no Calico tool writes
                log.warning("ignoring malformed %s %s: %s", parsed.plural, parsed.name, exc)
        if table is not None:
            changed = _put(table, parsed.name, record)
            if changed and table is self.nodes:
                self.changes.nodes.add(parsed.name)
            elif changed and table is self.pools:
                self.changes.everything = True
            return changed
        if parsed.name.startswith("node."):
            return _put(self.node_configs, parsed.name.removeprefix("node."), record)
        if parsed.name != "default":
            return False  # Calico reads only `default` and `node.<name>`
        old, self.config = self.config, record or BGPConfiguration("default")
        return old != self.config

    def snapshot(self) -> Snapshot:
        return Snapshot(self.revision, dict(self.nodes), self.config.mesh, self.config.asn or DEFAULT_AS,
                        list(self.peers.values()), list(self.pools.values()), dict(self.blocks), self.config,
                        dict(self.node_configs), dict(self.filters))


def _put(table: dict, name: str, record) -> bool:
    if record is None:
        return table.pop(name, None) is not None
    changed = table.get(name) != record
    table[name] = record
    return changed
