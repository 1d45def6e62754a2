"""Pure block arithmetic: Calico's allocation block record and its ordinals, no I/O.

A block is a CIDR of a pool, affine to one node. `allocations[i]` is the index into
`attributes` of whoever holds ordinal i (None: free); `unallocated` is the free ordinals in the
order they will be handed out. A release appends to its end, so an address just freed is the last
to be reused (Calico's FIFO).

As libcalico-go's AllocationBlock (model/block.go, ipam_block.go), field for field:
`sequenceNumber` starts at the creation time in nanoseconds and goes up by one with every write
of the block (`updated()`), `sequenceNumberForAllocation` records it per ordinal when the ordinal
is handed out, `affinity_claim_time` is when the node claimed it; a fresh block has no
attributes (null). A released ordinal first points at a cooldown attribute `{"releasedAt": …}`
and is freed by `collect` once the IPAM configuration's ipCooldownSeconds have passed (at once
with the default 0). Fields we do not use are kept (`other`) and written back as read.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from cni_calico.v3 import parse_timestamp, timestamp

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_FIELDS = frozenset({"cidr", "affinity", "affinity_claim_time", "allocations", "unallocated", "attributes",
                     "sequenceNumber", "sequenceNumberForAllocation", "deleted"})
_DROPPED = frozenset({"strictAffinity"})  # written by our earlier releases; no Calico field


def network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr, strict=False)


def block_cidrs(pool_cidr: str, block_size: int):
    """Every block of a pool, in address order (a generator: a /8 pool has many)."""
    return (str(b) for b in network(pool_cidr).subnets(new_prefix=block_size))


def attribute(handle: str, secondary: dict[str, str]) -> dict:
    """An allocation attribute as Calico writes it (empty fields left out, the map's keys sorted)."""
    out: dict = {}
    if handle:
        out["handle_id"] = handle
    if secondary:
        out["secondary"] = dict(sorted(secondary.items()))
    return out


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict] | None = None  # None: never written (a fresh block stores null)
    sequence: int = 0
    sequence_for: dict[str, int] = field(default_factory=dict)  # ordinal (decimal) -> sequence when handed out
    claim_time: str | None = None
    other: dict = field(default_factory=dict)  # stored fields this module does not use, kept as read

    @classmethod
    def new(cls, cidr: str, node: str | None) -> Block:
        size = network(cidr).num_addresses
        return cls(
            cidr=cidr,
            affinity=f"host:{node}" if node else None,
            allocations=[None] * size,
            unallocated=list(range(size)),
            sequence=time.time_ns(),
            claim_time=timestamp() if node else None,
        )

    @classmethod
    def from_dict(cls, data: dict) -> Block:
        attributes = data.get("attributes")
        return cls(
            cidr=data["cidr"],
            affinity=data.get("affinity"),
            allocations=list(data["allocations"]),
            unallocated=list(data["unallocated"]),
            attributes=None if attributes is None else list(attributes),
            sequence=int(data.get("sequenceNumber") or 0),
            sequence_for={str(k): int(v) for k, v in (data.get("sequenceNumberForAllocation") or {}).items()},
            claim_time=data.get("affinity_claim_time"),
            other={k: v for k, v in data.items() if k not in _FIELDS and k not in _DROPPED},
        )

    def to_dict(self) -> dict:
        """The stored value, in Calico's field order."""
        out: dict = {"cidr": self.cidr, "affinity": self.affinity}
        if self.claim_time:
            out["affinity_claim_time"] = self.claim_time
        out.update({
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": self.attributes,
            "sequenceNumber": self.sequence,
            "sequenceNumberForAllocation": dict(sorted(self.sequence_for.items())),
            "deleted": False,
        })
        return {**out, **self.other}

    def updated(self) -> dict:
        """The value of the next write of this block: every write advances the sequence number."""
        self.sequence += 1
        return self.to_dict()

    @property
    def node(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[5:]
        return None

    @property
    def free(self) -> int:
        return len(self.unallocated)

    def free_for(self, reserved=None) -> int:
        """Free addresses that no IPReservation holds."""
        return self.free if reserved is None else sum(not reserved(self.ip_at(o)) for o in self.unallocated)

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

    def assign(self, count: int, handle: str, attrs: dict, reserved=None) -> list[str]:
        """Takes `count` free ordinals from the front of the queue, passing over (and keeping in place)
        addresses `reserved(ip)` says an IPReservation holds; [] if not enough room."""
        usable = [o for o in self.unallocated if reserved is None or not reserved(self.ip_at(o))]
        if count < 1 or count > len(usable):
            return []
        index = self._attribute_index(attribute(handle, attrs))
        taken = usable[:count]
        chosen = set(taken)
        self.unallocated = [o for o in self.unallocated if o not in chosen]
        for ordinal in taken:
            self.allocations[ordinal] = index
            self.sequence_for[str(ordinal)] = self.sequence
        return [self.ip_at(o) for o in taken]

    def assign_ip(self, ip: str, handle: str, attrs: dict) -> bool:
        """Takes one specific address; False when it is already held (or cooling down)."""
        ordinal = self.ordinal_of(ip)
        if self.allocations[ordinal] is not None:
            return False
        self.allocations[ordinal] = self._attribute_index(attribute(handle, attrs))
        self.unallocated.remove(ordinal)
        self.sequence_for[str(ordinal)] = self.sequence
        return True

    def _attribute_index(self, attr: dict) -> int:
        """An identical attribute is shared (as Calico's findOrAddAttribute), else one is appended."""
        if self.attributes is None:
            self.attributes = []
        for i, existing in enumerate(self.attributes):
            if existing == attr:
                return i
        self.attributes.append(attr)
        return len(self.attributes) - 1

    def _attr(self, ordinal: int) -> dict:
        index = self.allocations[ordinal]
        return {} if index is None or not self.attributes or index >= len(self.attributes) else self.attributes[index]

    def handle_of(self, ordinal: int) -> str | None:
        index = self.allocations[ordinal]
        return None if index is None else self._attr(ordinal).get("handle_id")

    def cooling(self, ordinal: int) -> str:
        """When the ordinal was released, if it is still cooling down; "" otherwise."""
        return str(self._attr(ordinal).get("releasedAt") or "") if self.allocations[ordinal] is not None else ""

    def ips_for_handle(self, handle: str) -> list[str]:
        return [self.ip_at(o) for o in range(len(self.allocations)) if self.handle_of(o) == handle]

    def release_handle(self, handle: str, cooldown: float = 0) -> list[str]:
        """Releases every ordinal the handle holds; returns the addresses released."""
        ordinals = [o for o in range(len(self.allocations)) if self.handle_of(o) == handle]
        return self._release(ordinals, cooldown)

    def release_ips(self, ips: list[str], cooldown: float = 0) -> list[str]:
        ordinals = dict.fromkeys(self.ordinal_of(ip) for ip in ips)  # each address once, in order
        held = [o for o in ordinals if self.handle_of(o) is not None]
        for o in held:
            self.sequence_for[str(o)] = self.sequence
        return self._release(held, cooldown)

    def _release(self, ordinals: list[int], cooldown: float) -> list[str]:
        """The ordinals point at one cooldown attribute, then whatever has cooled down is freed."""
        if not ordinals:
            return []
        index = len(self.attributes or [])
        self.attributes = [*(self.attributes or []), {"releasedAt": timestamp()}]
        for ordinal in ordinals:
            self.allocations[ordinal] = index
        self.collect(cooldown)
        return [self.ip_at(o) for o in ordinals]

    def collect(self, cooldown: float, now: float | None = None) -> bool:
        """Frees the ordinals whose cooldown has passed (ipCooldownSeconds; 0: at once) and drops the
        attributes nobody points at any more (Calico's garbageCollect). True if anything changed."""
        now = time.time() if now is None else now
        freed = False
        for ordinal in range(len(self.allocations)):
            released = self.cooling(ordinal)
            if released and (cooldown <= 0 or parse_timestamp(released) + cooldown <= now):
                self.allocations[ordinal] = None
                self.unallocated.append(ordinal)
                self.sequence_for.pop(str(ordinal), None)
                freed = True
        if self.attributes is not None:
            used = sorted({i for i in self.allocations if i is not None})
            if len(used) != len(self.attributes):
                remap = {old: new for new, old in enumerate(used)}
                self.attributes = [self.attributes[i] for i in used]
                self.allocations = [None if i is None else remap[i] for i in self.allocations]
                freed = True
        return freed

    def is_empty(self) -> bool:
        """No address held, none cooling down."""
        return all(a is None for a in self.allocations)
