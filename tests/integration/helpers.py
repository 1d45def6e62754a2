"""Assertions shared by the integration tests: what a node and etcd look like when nothing leaked; what
this kernel can do."""

from __future__ import annotations

from tests.lab import Etcd, Lab

HANDLES = "/calico/ipam/v2/handle/"
ENDPOINTS = "/calico/resources/v3/projectcalico.org/workloadendpoints/"
BLOCKS = "/calico/ipam/v2/assignment/ipv4/block/"


def allocated(etcd: Etcd) -> list[str]:
    """Every address some block still holds."""
    out = []
    for key in etcd.keys(BLOCKS):
        block = etcd.get_json(key)
        base = block["cidr"].split("/")[0]
        octets = [int(o) for o in base.split(".")]
        start = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
        for ordinal, holder in enumerate(block["allocations"]):
            if holder is not None:
                n = start + ordinal
                out.append(f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}")
    return out


def assert_nothing_left(lab: Lab, node: str, etcd: Etcd) -> None:
    assert [link for link in lab.links(node) if link.startswith("cali")] == []
    assert [r for r in lab.routes(node) if "cali" in r] == []
    assert etcd.keys(HANDLES) == []
    assert etcd.keys(ENDPOINTS) == []
    assert allocated(etcd) == []


def kernel_has_ipip(lab: Lab) -> bool:
    """Whether `ip link add … type ipip` works (in a throw-away namespace): these kernels often lack it."""
    ns = lab.netns("probe")
    try:
        return lab.in_ns(ns, "ip", "link", "add", "probe0", "type", "ipip").returncode == 0
    finally:
        lab.remove_netns(ns)
