"""One address, one node: the checks Calico's start-up makes on a node's BGP addresses
(node/pkg/lifecycle/startup/startup.go, checkConflictingNodes), and what calico-node puts back when
its own Node's addresses are changed under it.

Addresses are compared without their prefix length, as Calico does (`ParseCIDROrIP`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


class NodeConflict(Exception):
    """Another registered node uses this node's address: calico-node must not start (it would
    take that node's BGP sessions and routes)."""


@dataclass(frozen=True)
class Conflict:
    node: str  # the other node's name
    version: int
    address: str  # without prefix length

    def __str__(self) -> str:
        return f"Calico node '{self.node}' is already using the IPv{self.version} address {self.address}."


def address_of(cidr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of `10.0.0.1/24` or `10.0.0.1`; None when empty or not an address."""
    if not cidr:
        return None
    try:
        return ipaddress.ip_interface(str(cidr)).ip
    except ValueError:
        return None


def conflicts(others: dict[str, dict], me: str, ipv4: str, ipv6: str) -> list[Conflict]:
    """Nodes other than `me` (name -> their spec.bgp) that use `ipv4` or `ipv6`."""
    mine = {4: address_of(ipv4), 6: address_of(ipv6)}
    found = []
    for name, bgp in sorted(others.items()):
        if name == me or not isinstance(bgp, dict):
            continue
        for version, attr in ((4, "ipv4Address"), (6, "ipv6Address")):
            theirs = address_of(bgp.get(attr))
            if mine[version] is not None and theirs == mine[version]:
                found.append(Conflict(name, version, str(theirs)))
    return found


def drifted(bgp: dict | None, ipv4: str, ipv6: str) -> dict[str, str]:
    """The spec.bgp fields to put back so that the registered Node carries this node's addresses
    again ({} when it does); an address calico-node does not have is left alone."""
    bgp = bgp if isinstance(bgp, dict) else {}
    out = {}
    if ipv4 and bgp.get("ipv4Address") != ipv4:
        out["ipv4Address"] = ipv4
    if ipv6 and bgp.get("ipv6Address") != ipv6:
        out["ipv6Address"] = ipv6
    return out


@dataclass
class RestoreGuard:
    """Two calico-nodes running with one NODENAME would put their own addresses back in turn, for
    ever: after `limit` restores within `window` seconds calico-node stops and says so instead."""

    window: float = 60.0
    limit: int = 3
    times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < self.window]
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True
