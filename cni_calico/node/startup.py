"""What calico-node does once at start: register the Node, write the node name file, default pool."""

from __future__ import annotations

import logging
import os

from cni_calico import keys
from cni_calico.datastore import Store, Txn, transact
from cni_calico.node import identity
from cni_calico.node.config import NodeConfig
from cni_calico.v3 import (
    CALICO_VERSION,
    DEFAULT_POOL_NAMES,
    FELIX_DEFAULTS,
    FELIX_START_DEFAULT,
    FELIX_START_NODE,
    TIERS,
    Resource,
    new_resource,
    new_uid,
    pool_spec,
)

log = logging.getLogger(__name__)

MODES = {"always": "Always", "cross-subnet": "CrossSubnet"}


def register_node(ds: Store, cfg: NodeConfig, ipv4_cidr: str, ipv6_cidr: str = "") -> Resource:
    """Creates or updates our Node resource, keeping what operators set (labels, reflector ID) and
    every field we do not manage."""
    key = keys.resource("nodes", cfg.nodename)

    def attempt() -> tuple[Txn, Resource]:
        current = ds.get(key)
        node = Resource.from_value(current.value) if current else new_resource("Node", cfg.nodename, {})
        check_addresses(ds, cfg, node.spec.get("bgp") if current else None, ipv4_cidr, ipv6_cidr)
        labels = node.metadata.setdefault("labels", {})
        labels.update(cfg.labels)
        labels.setdefault("kubernetes.io/hostname", cfg.nodename)
        bgp = node.spec.setdefault("bgp", {})
        if ipv4_cidr:
            bgp["ipv4Address"] = ipv4_cidr
        if ipv6_cidr:
            bgp["ipv6Address"] = ipv6_cidr
        else:
            bgp.pop("ipv6Address", None)
        if cfg.as_number:
            bgp["asNumber"] = cfg.as_number
        if cfg.rr_cluster_id:
            bgp["routeReflectorClusterID"] = cfg.rr_cluster_id
        if cfg.k8s_node_ref:  # as Calico's startup: exactly one reference, to the Kubernetes Node
            node.spec["orchRefs"] = [{"nodeName": cfg.k8s_node_ref, "orchestrator": "k8s"}]
        return Txn().put(key, node.to_value(), current.mod_revision if current else 0), node

    node = transact(ds, attempt, f"registering node {cfg.nodename}")
    log.info("registered node %s with address %s", cfg.nodename, ipv4_cidr or "(none)")
    return node


def check_addresses(ds: Store, cfg: NodeConfig, registered: dict | None, ipv4_cidr: str, ipv6_cidr: str) -> None:
    """As Calico's start-up: when this node is new or its address changes, no other node may use
    that address (NodeConflict, unless DISABLE_NODE_IP_CHECK); a name registered from another address
    is taken over with a warning (Calico's rule: addresses may change, e.g. a new DHCP lease)."""
    old = registered if isinstance(registered, dict) else {}
    changed = identity.drifted(old, ipv4_cidr, ipv6_cidr)
    if registered is not None:
        for field, new in changed.items():
            if old.get(field):
                log.warning("node %s was registered with %s %s, now %s: this could happen if there are "
                            "multiple nodes with the same name", cfg.nodename, field, old[field], new)
    if (registered is not None and not changed) or cfg.disable_node_ip_check:
        return
    others = {}
    for kv in ds.list(keys.resource_dir("nodes")):
        parsed = keys.parse_resource(kv.key)
        if parsed is not None and isinstance(kv.value, dict):
            others[parsed.name] = (kv.value.get("spec") or {}).get("bgp")
    found = identity.conflicts(others, cfg.nodename, ipv4_cidr, ipv6_cidr)
    if found:
        raise identity.NodeConflict(" ".join(str(c) for c in found) +
                                    " Two nodes with one address would take each other's BGP sessions and routes; "
                                    "give this node its own address (IP/IP6) or name (NODENAME).")


def update_node(ds: Store, name: str, spec: dict | None = None, bgp: dict | None = None) -> bool:
    """Sets fields of a registered Node's spec (and spec.bgp), keeping the rest; False if it is gone."""
    key = keys.resource("nodes", name)

    def attempt() -> tuple[Txn, bool]:
        current = ds.get(key)
        if current is None:
            return Txn(), False
        node = Resource.from_value(current.value)
        node.spec.update(spec or {})
        node.spec.setdefault("bgp", {}).update(bgp or {})
        return Txn().put(key, node.to_value(), current.mod_revision), True

    return transact(ds, attempt, f"updating node {name}")


def ensure_initialized(ds: Store, cluster_type: str, nodename: str = "") -> Resource:
    """What Calico's start-up writes: ClusterInformation `default` (a new cluster GUID, calicoVersion,
    datastoreReady, the cluster type merged in), the three tiers, FelixConfiguration `default`
    (reportingInterval 0s, logSeverityScreen Info) and `node.<nodename>` (defaultEndpointToHostAction
    Return) and an empty BGPConfiguration `default`; each created where absent, an existing one only
    given the start-up's fields it lacks (so an operator's values are kept)."""
    key = keys.resource("clusterinformations", "default")

    def attempt() -> tuple[Txn, Resource]:
        current = ds.get(key)
        info = Resource.from_value(current.value) if current else new_resource("ClusterInformation", "default", {})
        spec = info.spec
        before = dict(spec)
        spec["clusterGUID"] = spec.get("clusterGUID") or new_uid().replace("-", "")
        spec["calicoVersion"] = CALICO_VERSION
        if spec.get("datastoreReady") is None:
            spec["datastoreReady"] = True
        types = [t for t in str(spec.get("clusterType") or "").split(",") if t]
        types += [t for t in cluster_type.split(",") if t and t not in types]
        if types:
            spec["clusterType"] = ",".join(types)
        txn = Txn()
        if spec != before or current is None:
            txn.put(key, info.to_value(), current.mod_revision if current else 0)
        for name, (order, action) in TIERS.items():
            tier = new_resource("Tier", name, {"order": order, "defaultAction": action})
            txn.put_if_absent(keys.resource("tiers", name), tier.to_value())
        _felix(ds, txn, "default", FELIX_START_DEFAULT)
        if nodename:
            _felix(ds, txn, f"node.{nodename}", FELIX_START_NODE)
        txn.put_if_absent(keys.resource("bgpconfigurations", "default"),
                          new_resource("BGPConfiguration", "default", {}).to_value())
        return txn, info

    return transact(ds, attempt, "initializing the datastore (ClusterInformation, tiers)")


def _felix(ds: Store, txn: Txn, name: str, fields: dict) -> None:
    """Adds to `txn` the FelixConfiguration `name` with `fields` where it lacks them (clientv3's
    defaults filled, as on any write); nothing when it has them all."""
    key = keys.resource("felixconfigurations", name)
    current = ds.get(key)
    felix = Resource.from_value(current.value) if current else new_resource("FelixConfiguration", name, {})
    missing = {k: v for k, v in fields.items() if felix.spec.get(k) in (None, "")}
    if current is not None and not missing:
        return
    felix.spec.update(missing)
    for k, v in FELIX_DEFAULTS.items():
        felix.spec.setdefault(k, v)
    txn.put(key, felix.to_value(), current.mod_revision if current else 0)


def write_file(path: str, text: str) -> None:
    """Atomically: the CNI plugin may read the file at any moment."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_default_pool(ds: Store, cfg: NodeConfig) -> str:
    """Creates `default-ipv4-ippool` unless NO_DEFAULT_POOLS or some IPv4 pool exists (and
    `default-ipv6-ippool` from CALICO_IPV6POOL_CIDR likewise); returns the IPv4 pool's name if made."""
    if cfg.no_default_pools:
        return ""
    from ipam.store import IpamStore

    existing = {p.family for p in IpamStore(ds).pools()}
    if cfg.pool6_cidr and 6 not in existing:
        _create_pool(ds, DEFAULT_POOL_NAMES[6], pool_spec(cfg.pool6_cidr, cfg.pool6_block_size))
    if 4 in existing:
        return ""
    spec = pool_spec(cfg.pool_cidr, cfg.pool_block_size, MODES.get(cfg.pool_ipip, "Never"),
                     MODES.get(cfg.pool_vxlan, "Never"), cfg.pool_nat_outgoing)
    if _create_pool(ds, DEFAULT_POOL_NAMES[4], spec):
        log.info("created the default pool %s", cfg.pool_cidr)
        return DEFAULT_POOL_NAMES[4]
    return ""


def _create_pool(ds: Store, name: str, spec: dict) -> bool:
    """Creates the pool unless one of that name exists (another node may be creating it too)."""
    key = keys.resource("ippools", name)
    return ds.commit(Txn().put(key, new_resource("IPPool", name, spec).to_value(), 0))
