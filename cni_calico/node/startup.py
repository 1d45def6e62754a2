"""What calico-node does once at start: register the Node, write the node name file, default pool."""

from __future__ import annotations

import datetime
import logging
import os

from cni_calico import keys
from cni_calico.datastore import Datastore
from cni_calico.node.config import NodeConfig

log = logging.getLogger(__name__)

API = "projectcalico.org/v3"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_node(ds: Datastore, cfg: NodeConfig, ipv4_cidr: str, ipv6_cidr: str = "",
                  extra_spec: dict | None = None) -> dict:
    """Creates or updates our Node resource, keeping what operators set (labels, reflector ID)."""
    key = keys.resource("nodes", cfg.nodename)
    while True:
        current = ds.get(key)
        node = current.value if current else {
            "kind": "Node", "apiVersion": API,
            "metadata": {"name": cfg.nodename, "creationTimestamp": _now()}, "spec": {},
        }
        meta = node.setdefault("metadata", {})
        labels = meta.setdefault("labels", {})
        labels.update(cfg.labels)
        labels.setdefault("kubernetes.io/hostname", cfg.nodename)
        spec = node.setdefault("spec", {})
        bgp = spec.setdefault("bgp", {})
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
        spec.update(extra_spec or {})
        if ds.commit({key: current.mod_revision if current else 0}, {key: node}):
            log.info("registered node %s with address %s", cfg.nodename, ipv4_cidr or "(none)")
            return node


def write_file(path: str, text: str) -> None:
    """Atomically: the CNI plugin may read the file at any moment."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_default_pool(ds: Datastore, cfg: NodeConfig) -> str:
    """Creates `default-ipv4-ippool` unless NO_DEFAULT_POOLS or some IPv4 pool exists (and
    `default-ipv6-ippool` from CALICO_IPV6POOL_CIDR likewise)."""
    if cfg.no_default_pools:
        return ""
    existing = ds.list(keys.resource_dir("ippools"))
    if cfg.pool6_cidr and not any(":" in (kv.value.get("spec") or {}).get("cidr", "") for kv in existing):
        name6 = "default-ipv6-ippool"
        pool6 = {"kind": "IPPool", "apiVersion": API, "metadata": {"name": name6, "creationTimestamp": _now()},
                 "spec": {"cidr": cfg.pool6_cidr, "blockSize": cfg.pool6_block_size, "ipipMode": "Never",
                          "vxlanMode": "Never", "natOutgoing": False, "nodeSelector": "all()"}}
        ds.commit({keys.resource("ippools", name6): 0}, {keys.resource("ippools", name6): pool6})
    if any(":" not in (kv.value.get("spec") or {}).get("cidr", ":") for kv in existing):
        return ""
    name = "default-ipv4-ippool"
    pool = {
        "kind": "IPPool", "apiVersion": API,
        "metadata": {"name": name, "creationTimestamp": _now()},
        "spec": {
            "cidr": cfg.pool_cidr,
            "blockSize": cfg.pool_block_size,
            "ipipMode": {"always": "Always", "cross-subnet": "CrossSubnet"}.get(cfg.pool_ipip, "Never"),
            "vxlanMode": {"always": "Always", "cross-subnet": "CrossSubnet"}.get(cfg.pool_vxlan, "Never"),
            "natOutgoing": cfg.pool_nat_outgoing,
            "nodeSelector": "all()",
        },
    }
    if ds.commit({keys.resource("ippools", name): 0}, {keys.resource("ippools", name): pool}):
        log.info("created the default pool %s", cfg.pool_cidr)
        return name
    return ""
