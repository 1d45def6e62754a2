"""The only place where `/calico/...` etcd keys are built or taken apart."""

from __future__ import annotations

RESOURCES = "/calico/resources/v3/projectcalico.org"
IPAM = "/calico/ipam/v2"
NAMESPACED = frozenset({"networkpolicies", "workloadendpoints"})


def resource_dir(plural: str, namespace: str = "") -> str:
    if plural in NAMESPACED and namespace:
        return f"{RESOURCES}/{plural}/{namespace}/"
    return f"{RESOURCES}/{plural}/"


def resource(plural: str, name: str, namespace: str = "") -> str:
    return resource_dir(plural, namespace) + name


def block_dir(family: int) -> str:
    return f"{IPAM}/assignment/ipv{family}/block/"


def block(cidr: str) -> str:
    """`10.0.0.0/26` -> `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`."""
    family = 6 if ":" in cidr else 4
    return block_dir(family) + cidr.replace("/", "-")


def cidr_from_block_key(key: str) -> str:
    net, _, prefix = key.rsplit("/", 1)[-1].rpartition("-")
    return f"{net}/{prefix}"


def affinity_dir(node: str, family: int) -> str:
    return f"{IPAM}/host/{node}/ipv{family}/block/"


def affinity(node: str, cidr: str) -> str:
    family = 6 if ":" in cidr else 4
    return affinity_dir(node, family) + cidr.replace("/", "-")


def handle_dir() -> str:
    return f"{IPAM}/handle/"


def handle(handle_id: str) -> str:
    return handle_dir() + handle_id


def ipam_config() -> str:
    return f"{IPAM}/config"
