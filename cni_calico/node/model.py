"""What calico-node's routing needs from etcd (BIRD's config, tunnel routes): the cluster's nodes,
pools, peers, BGP configuration and block affinities, as one consistent snapshot (pure records +
one loader)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import Store
from cni_calico.v3 import DEFAULT_AS, BGPConfiguration, BGPPeer, IPPool, Node
from ipam.pools import parse_pools

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

    def local_blocks(self, node: str) -> list[str]:
        return sorted(cidr for cidr, owner in self.blocks.items() if owner == node)

    def pool_of(self, cidr: str) -> IPPool | None:
        return next((p for p in self.pools if p.contains(cidr)), None)


def load(ds: Store) -> Snapshot:
    revision = ds.revision()

    def listing(plural: str):
        return ds.list(keys.resource_dir(plural), revision=revision)

    nodes = {}
    for kv in listing("nodes"):
        node = Node.from_value(kv.value)
        nodes[node.name] = node
    default = BGPConfiguration("default")
    for kv in listing("bgpconfigurations"):
        config = BGPConfiguration.from_value(kv.value)
        if config.name == "default":
            default = config
    peers = [BGPPeer.from_value(kv.value) for kv in listing("bgppeers")]
    pools = parse_pools([(kv.key, kv.value) for kv in listing("ippools")])
    blocks = {}
    for kv in ds.list(keys.host_dir(), keys_only=True, revision=revision):
        affinity = keys.parse_affinity(kv.key)
        if affinity is not None:
            blocks[affinity[1]] = affinity[0]
    return Snapshot(revision, nodes, default.mesh, default.asn or DEFAULT_AS, peers, pools, blocks)
