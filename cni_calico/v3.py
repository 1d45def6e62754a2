"""Calico's v3 data model: the one writer of the resource envelope, the typed records the product
reads from it, and Calico's defaults and constants, each defined once (pure, no I/O).

What holds:

- `Resource.to_value()` is the only place a stored resource's envelope (kind, apiVersion, metadata,
  spec) is written; `Resource.from_value` keeps every field it does not know (top-level and inside
  metadata and spec), so a read-modify-write never loses what another tool (real Calico) wrote.
- `new_resource` gives a new resource Calico's metadata (uid, creationTimestamp); `resourceVersion`
  is never stored (it is the key's mod revision).
- The typed records (`IPPool`, `Node`, `BGPPeer`, `BGPConfiguration`) are read views: parsing a
  value never raises on fields it does not use, and raises ValueError/KeyError/TypeError only for a
  value it cannot use at all (e.g. an IPPool without a CIDR).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

API_GROUP = "projectcalico.org"
API_VERSION = f"{API_GROUP}/v3"
TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"  # metadata.creationTimestamp and IPAM's timestamps

DEFAULT_AS = 64512
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
ENCAP_MODES = ("Always", "CrossSubnet", "Never")
ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")
ALL = "all()"  # the selector that selects everything (a pool's default nodeSelector)
DEFAULT_POOL_NAMES = {4: "default-ipv4-ippool", 6: "default-ipv6-ippool"}

# Policy rules (Profile, NetworkPolicy, GlobalNetworkPolicy): the one schema, shared by calicoctl's
# validator (cni_calico.ctl.kinds.rules) and calico-node's parser (cni_calico.policy.model).
RULE_ACTIONS = ("Allow", "Deny", "Pass", "Log")
RULE_PROTOCOLS = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
PORT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP", "UDPLite", 6, 17, 132, 136})
ICMP_PROTOCOL_VERSION = {"ICMP": 4, 1: 4, "ICMPv6": 6, 58: 6}
RULE_FIELDS = frozenset({"action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source",
                         "destination", "metadata"})
ENTITY_FIELDS = frozenset({"nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts"})
ICMP_FIELDS = frozenset({"type", "code"})

ENVELOPE = ("kind", "apiVersion", "metadata", "spec")

# IPAMConfig `default`, stored at keys.ipam_config(): the v3 field -> the stored field, and defaults.
IPAM_CONFIG_FIELDS = {"strictAffinity": "strict_affinity", "autoAllocateBlocks": "auto_allocate_blocks",
                      "maxBlocksPerHost": "max_blocks_per_host"}
IPAM_CONFIG_DEFAULTS = {"strict_affinity": False, "auto_allocate_blocks": True, "max_blocks_per_host": 0}


def timestamp(when: datetime.datetime | None = None) -> str:
    return (when or datetime.datetime.now(datetime.UTC)).strftime(TIMESTAMP)


def new_uid() -> str:
    import uuid

    return str(uuid.uuid4())


@dataclass
class Resource:
    """One stored v3 resource, lossless: `other` keeps top-level fields beside the envelope."""

    kind: str
    metadata: dict
    spec: dict
    other: dict = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: dict, kind: str = "") -> Resource:
        other = {k: v for k, v in value.items() if k not in ENVELOPE}
        metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
        spec = value.get("spec") if isinstance(value.get("spec"), dict) else {}
        return cls(str(value.get("kind") or kind), dict(metadata), dict(spec), other)

    def to_value(self) -> dict:
        """The stored JSON: the envelope, then whatever else was read with it."""
        metadata = {k: v for k, v in self.metadata.items() if k != "resourceVersion" and v not in (None, "", {})}
        return {"kind": self.kind, "apiVersion": API_VERSION, "metadata": metadata, "spec": self.spec, **self.other}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def labels(self) -> dict[str, str]:
        labels = self.metadata.get("labels")
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    @property
    def annotations(self) -> dict[str, str]:
        notes = self.metadata.get("annotations")
        return {str(k): str(v) for k, v in notes.items()} if isinstance(notes, dict) else {}


def new_resource(kind: str, name: str, spec: dict, namespace: str = "", labels: dict | None = None,
                 annotations: dict | None = None, created: str = "") -> Resource:
    """A resource about to be created: Calico's uid and creationTimestamp, never a resourceVersion."""
    metadata: dict = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["uid"] = new_uid()
    metadata["creationTimestamp"] = created or timestamp()
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return Resource(kind, metadata, spec)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def _true(value: object) -> bool:
    return value in (True, "true", "True")


# --- IPPool ----------------------------------------------------------------------------------------


@dataclass
class IPPool:
    name: str
    cidr: str
    block_size: int
    disabled: bool = False
    node_selector: str = ALL
    ipip_mode: str = "Never"  # Always | CrossSubnet | Never
    vxlan_mode: str = "Never"
    nat_outgoing: bool = False
    disable_bgp_export: bool = False
    allowed_uses: tuple[str, ...] = ("Workload", "Tunnel")

    @property
    def family(self) -> int:
        return _network(self.cidr).version

    def contains(self, cidr: str) -> bool:
        inner, outer = _network(cidr), _network(self.cidr)
        return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]

    @classmethod
    def from_value(cls, value: dict) -> IPPool:
        res = Resource.from_value(value, "IPPool")
        if not res.name:
            raise ValueError("an IPPool without metadata.name")
        spec = res.spec
        cidr = str(_network(spec["cidr"]))
        uses = spec.get("allowedUses")
        return cls(
            name=res.name,
            cidr=cidr,
            block_size=int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE[_network(cidr).version]),
            disabled=_true(spec.get("disabled")),
            node_selector=str(spec.get("nodeSelector") or ALL),
            ipip_mode=str(spec.get("ipipMode") or "Never"),
            vxlan_mode=str(spec.get("vxlanMode") or "Never"),
            nat_outgoing=_true(spec.get("natOutgoing")),
            disable_bgp_export=_true(spec.get("disableBGPExport")),
            allowed_uses=tuple(str(u) for u in uses) if isinstance(uses, list) and uses else ("Workload", "Tunnel"),
        )


def pool_spec(cidr: str, block_size: int, ipip_mode: str = "Never", vxlan_mode: str = "Never",
              nat_outgoing: bool = False, node_selector: str = ALL) -> dict:
    """The spec of a pool calico-node creates, with every field Calico fills in."""
    return {"cidr": cidr, "blockSize": block_size, "ipipMode": ipip_mode, "vxlanMode": vxlan_mode,
            "natOutgoing": nat_outgoing, "nodeSelector": node_selector}


# --- Node ------------------------------------------------------------------------------------------


@dataclass
class Node:
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
    ipip_addr: str = ""

    @classmethod
    def from_value(cls, value: dict) -> Node:
        res = Resource.from_value(value, "Node")
        bgp = res.spec.get("bgp") if isinstance(res.spec.get("bgp"), dict) else {}
        cidr, cidr6 = str(bgp.get("ipv4Address") or ""), str(bgp.get("ipv6Address") or "")
        asn = bgp.get("asNumber")
        return cls(
            name=res.name,
            ipv4=cidr.split("/")[0],
            ipv4_cidr=cidr,
            ipv6=cidr6.split("/")[0],
            ipv6_cidr=cidr6,
            asn=int(asn) if asn else None,
            rr_cluster_id=str(bgp.get("routeReflectorClusterID") or ""),
            labels=res.labels,
            vxlan_addr=str(res.spec.get("ipv4VXLANTunnelAddr") or ""),
            vxlan_mac=str(res.spec.get("vxlanTunnelMACAddr") or ""),
            ipip_addr=str(bgp.get("ipv4IPIPTunnelAddr") or ""),
        )


# --- BGP -------------------------------------------------------------------------------------------


@dataclass
class BGPPeer:
    name: str
    node: str = ""
    peer_ip: str = ""
    asn: int | None = None
    node_selector: str = ""
    peer_selector: str = ""

    @classmethod
    def from_value(cls, value: dict) -> BGPPeer:
        res = Resource.from_value(value, "BGPPeer")
        asn = res.spec.get("asNumber")
        return cls(
            name=res.name,
            node=str(res.spec.get("node") or ""),
            peer_ip=str(res.spec.get("peerIP") or ""),
            asn=int(asn) if asn else None,
            node_selector=str(res.spec.get("nodeSelector") or ""),
            peer_selector=str(res.spec.get("peerSelector") or ""),
        )


@dataclass
class BGPConfiguration:
    name: str
    mesh: bool = True
    asn: int = DEFAULT_AS

    @classmethod
    def from_value(cls, value: dict) -> BGPConfiguration:
        res = Resource.from_value(value, "BGPConfiguration")
        return cls(res.name, res.spec.get("nodeToNodeMeshEnabled", True) is not False,
                   int(res.spec.get("asNumber") or DEFAULT_AS))
