"""Pure block arithmetic: the allocation block record and its ordinals, no I/O.

A block is a CIDR of a pool, affine to one node. `allocations[i]` is the index
into `attributes` of whoever holds ordinal i (None: free); `unallocated` is
the free ordinals in the order they will be handed out. A release appends to
its end, so an address just freed is the last to be reused (Calico's FIFO).
Fields of the stored block this module does not use are kept (`other`) and
written back as read, so rewriting a block real Calico wrote loses nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_FIELDS = frozenset({"cidr", "affinity", "strictAffinity", "allocations", "unallocated", "attributes", "deleted"})


def network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr, strict=False)


def block_cidrs(pool_cidr: str, block_size: int):
    """Every block of a pool, in address order (a generator: a /8 pool has many)."""
    return (str(b) for b in network(pool_cidr).subnets(new_prefix=block_size))


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict] = field(default_factory=list)
    strict_affinity: bool = False
    other: dict = field(default_factory=dict)  # stored fields this module does not use, kept as read

    @classmethod
    def new(cls, cidr: str, node: str | None) -> Block:
        size = network(cidr).num_addresses
        return cls(
            cidr=cidr,
            affinity=f"host:{node}" if node else None,
            allocations=[None] * size,
            unallocated=list(range(size)),
        )

    @classmethod
    def from_dict(cls, data: dict) -> Block:
        return cls(
            cidr=data["cidr"],
            affinity=data.get("affinity"),
            allocations=list(data["allocations"]),
            unallocated=list(data["unallocated"]),
            attributes=list(data.get("attributes") or []),
            strict_affinity=bool(data.get("strictAffinity", False)),
            other={k: v for k, v in data.items() if k not in _FIELDS},
        )

    def to_dict(self) -> dict:
        return {
            "cidr": self.cidr,
            "affinity": self.affinity,
            "strictAffinity": self.strict_affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": self.attributes,
            "deleted": False,
            **self.other,
        }

    @property
    def node(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[5:]
        return None

    @property
    def free(self) -> int:
        return len(self.unallocated)

    def ip_at(self, ordinal: int) -> str:
        if not 0 <= ordinal < len(self.allocations):
            raise ValueError(f"ordinal {ordinal} is outside block {self.cidr}")
        return str(network(self.cidr).network_address + ordinal)

    def ordinal_of(self, ip: str) -> int:
        net = network(self.cidr)
        addr = ipaddress.ip_address(ip)
        if addr not in net:
            raise ValueError(f"{ip} is not in block {self.cidr}")
        return int(addr) - int(net.network_address)

    def assign(self, count: int, handle: str, attrs: dict) -> list[str]:
        """Takes `count` free ordinals from the front of the queue; [] if not enough room."""
        if count < 1 or count > len(self.unallocated):
            return []
        index = self._attribute_index(handle, attrs)
        taken = self.unallocated[:count]
        del self.unallocated[:count]
        for ordinal in taken:
            self.allocations[ordinal] = index
        return [self.ip_at(o) for o in taken]

    def assign_ip(self, ip: str, handle: str, attrs: dict) -> bool:
        """Takes one specific address; False when it is already held."""
        ordinal = self.ordinal_of(ip)
        if self.allocations[ordinal] is not None:
            return False
        self.allocations[ordinal] = self._attribute_index(handle, attrs)
        self.unallocated.remove(ordinal)
        return True

    def _attribute_index(self, handle: str, attrs: dict) -> int:
        self.attributes.append({"handle_id": handle, "secondary": attrs})
        return len(self.attributes) - 1

    def handle_of(self, ordinal: int) -> str | None:
        index = self.allocations[ordinal]
        return None if index is None else self.attributes[index].get("handle_id")

    def ips_for_handle(self, handle: str) -> list[str]:
        return [self.ip_at(o) for o in range(len(self.allocations)) if self.handle_of(o) == handle]

    def release_handle(self, handle: str) -> list[str]:
        """Frees every ordinal the handle holds; returns the addresses freed."""
        ordinals = [o for o in range(len(self.allocations)) if self.handle_of(o) == handle]
        return self._release(ordinals)

    def release_ips(self, ips: list[str]) -> list[str]:
        ordinals = dict.fromkeys(self.ordinal_of(ip) for ip in ips)  # each address once, in order
        return self._release([o for o in ordinals if self.allocations[o] is not None])

    def _release(self, ordinals: list[int]) -> list[str]:
        for ordinal in ordinals:
            self.allocations[ordinal] = None
            self.unallocated.append(ordinal)
        if ordinals:
            self._compact_attributes()
        return [self.ip_at(o) for o in ordinals]

    def _compact_attributes(self) -> None:
        """Drops attribute entries nobody points at and renumbers allocations."""
        used = sorted({i for i in self.allocations if i is not None})
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else remap[i] for i in self.allocations]

    def is_empty(self) -> bool:
        return all(a is None for a in self.allocations)
