"""The only place where `/calico/...` etcd keys are built or taken apart (pure)."""

from __future__ import annotations

from dataclasses import dataclass

RESOURCES = "/calico/resources/v3/projectcalico.org"
IPAM = "/calico/ipam/v2"
NAMESPACED = frozenset({"networkpolicies", "workloadendpoints", "networksets"})


def resource_dir(plural: str, namespace: str = "") -> str:
    if plural in NAMESPACED and namespace:
        return f"{RESOURCES}/{plural}/{namespace}/"
    return f"{RESOURCES}/{plural}/"


def resource(plural: str, name: str, namespace: str = "") -> str:
    return resource_dir(plural, namespace) + name


@dataclass(frozen=True)
class ResourceKey:
    plural: str
    name: str
    namespace: str = ""


def parse_resource(key: str) -> ResourceKey | None:
    """`…/<plural>/<name>` or, for namespaced kinds, `…/<plural>/<namespace>/<name>`; None otherwise."""
    if not key.startswith(RESOURCES + "/"):
        return None
    parts = key[len(RESOURCES) + 1:].split("/")
    if len(parts) == 3 and parts[0] in NAMESPACED and all(parts):
        return ResourceKey(parts[0], parts[2], parts[1])
    if len(parts) == 2 and parts[0] not in NAMESPACED and all(parts):
        return ResourceKey(parts[0], parts[1])
    return None


def _cidr_segment(cidr: str) -> str:
    return cidr.replace("/", "-")


def _family(cidr: str) -> int:
    return 6 if ":" in cidr else 4


def block_dir(family: int) -> str:
    return f"{IPAM}/assignment/ipv{family}/block/"


def block(cidr: str) -> str:
    """`10.0.0.0/26` -> `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`."""
    return block_dir(_family(cidr)) + _cidr_segment(cidr)


def cidr_from_block_key(key: str) -> str:
    """The block's CIDR from a block or affinity key (its last segment, `10.0.0.0-26`)."""
    net, _, prefix = key.rsplit("/", 1)[-1].rpartition("-")
    return f"{net}/{prefix}"


def host_dir(node: str = "") -> str:
    """Every node's affinities (`…/host/`), or one node's (`…/host/<node>/`)."""
    return f"{IPAM}/host/{node}/" if node else f"{IPAM}/host/"


def affinity_dir(node: str, family: int) -> str:
    return f"{host_dir(node)}ipv{family}/block/"


def affinity(node: str, cidr: str) -> str:
    return affinity_dir(node, _family(cidr)) + _cidr_segment(cidr)


def parse_affinity(key: str) -> tuple[str, str] | None:
    """(node, block CIDR) of `…/host/<node>/ipv4/block/<cidr>`; None for any other key."""
    root = host_dir()
    if not key.startswith(root):
        return None
    parts = key[len(root):].split("/")
    if len(parts) != 4 or parts[1] not in ("ipv4", "ipv6") or parts[2] != "block" or not parts[0]:
        return None
    return parts[0], cidr_from_block_key(key)


def handle_dir() -> str:
    return f"{IPAM}/handle/"


def handle(handle_id: str) -> str:
    return handle_dir() + handle_id


def handle_id_of(key: str) -> str:
    """The handle ID of a handle key."""
    return key[len(handle_dir()):] if key.startswith(handle_dir()) else ""


def ipam_config() -> str:
    return f"{IPAM}/config"
