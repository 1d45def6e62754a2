"""What calico-node needs from etcd, read as one consistent snapshot (pure records + one loader)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.datastore import Datastore
from ipam.pools import Pool, pool_from_resource

log = logging.getLogger(__name__)

DEFAULT_AS = 64512


@dataclass
class NodeInfo:
    name: str
    ipv4: str = ""  # bare address
    ipv4_cidr: str = ""  # address/len, as registered
    ipv6: str = ""
    ipv6_cidr: str = ""
    asn: int | None = None
    rr_cluster_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    vxlan_addr: str = ""
    vxlan_mac: str = ""


@dataclass
class PeerInfo:
    name: str
    node: str = ""
    peer_ip: str = ""
    asn: int | None = None
    node_selector: str = ""
    peer_selector: str = ""


@dataclass
class Snapshot:
    revision: int
    nodes: dict[str, NodeInfo]
    mesh: bool
    default_asn: int
    peers: list[PeerInfo]
    pools: list[Pool]
    blocks: dict[str, str]  # block CIDR -> node it is affine to

    def local_blocks(self, node: str) -> list[str]:
        return sorted(cidr for cidr, owner in self.blocks.items() if owner == node)

    def pool_of(self, cidr: str) -> Pool | None:
        return next((p for p in self.pools if p.contains(cidr)), None)


def node_from_resource(resource: dict) -> NodeInfo:
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    bgp = spec.get("bgp") or {}
    cidr = bgp.get("ipv4Address") or ""
    cidr6 = bgp.get("ipv6Address") or ""
    asn = bgp.get("asNumber")
    return NodeInfo(
        name=meta.get("name", ""),
        ipv4=cidr.split("/")[0],
        ipv4_cidr=cidr,
        ipv6=cidr6.split("/")[0],
        ipv6_cidr=cidr6,
        asn=int(asn) if asn else None,
        rr_cluster_id=bgp.get("routeReflectorClusterID") or "",
        labels=dict(meta.get("labels") or {}),
        vxlan_addr=spec.get("ipv4VXLANTunnelAddr") or "",
        vxlan_mac=spec.get("vxlanTunnelMACAddr") or "",
    )


def peer_from_resource(resource: dict) -> PeerInfo:
    spec = resource.get("spec") or {}
    asn = spec.get("asNumber")
    return PeerInfo(
        name=(resource.get("metadata") or {}).get("name", ""),
        node=spec.get("node") or "",
        peer_ip=spec.get("peerIP") or "",
        asn=int(asn) if asn else None,
        node_selector=spec.get("nodeSelector") or "",
        peer_selector=spec.get("peerSelector") or "",
    )


def load(ds: Datastore) -> Snapshot:
    revision = ds.revision()

    def listing(plural: str):
        return ds.list(keys.resource_dir(plural), revision=revision)

    nodes = {}
    for kv in listing("nodes"):
        info = node_from_resource(kv.value)
        nodes[info.name] = info
    mesh, default_asn = True, DEFAULT_AS
    for kv in listing("bgpconfigurations"):
        if kv.value.get("metadata", {}).get("name") == "default":
            spec = kv.value.get("spec") or {}
            mesh = spec.get("nodeToNodeMeshEnabled", True) is not False
            default_asn = int(spec.get("asNumber") or DEFAULT_AS)
    peers = [peer_from_resource(kv.value) for kv in listing("bgppeers")]
    pools = []
    for kv in listing("ippools"):
        try:
            pools.append(pool_from_resource(kv.value))
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("ignoring malformed IPPool %s: %s", kv.key, exc)
    blocks = {}
    for kv in ds.list(f"{keys.IPAM}/host/", keys_only=True, revision=revision):
        # /calico/ipam/v2/host/<node>/ipv4/block/<cidr>
        parts = kv.key.split("/")
        if len(parts) == 9 and parts[7] == "block":
            blocks[keys.cidr_from_block_key(kv.key)] = parts[5]
    return Snapshot(revision, nodes, mesh, default_asn, peers, pools, blocks)
