"""Calico IPAM over the datastore: reads, releases and the operator's clean-up, as units of work.

`IpamStore` is the library's face (as libcalico-go's ipam.Interface): it takes plain arguments,
returns plain records and knows nothing of CNI. Assignment lives in ipam.assign. Every change is a
`Txn` (cni_calico.datastore): `prepare_release` contributes to the caller's, the other writers
commit their own under the datastore's one retry policy.

Invariants: an address is held in exactly one block's `allocations`, and the block and its handle
change in the same guarded transaction, so no crash or race leaves a block allocation without its
handle (or the reverse) and no two callers ever commit the same ordinal. Fields of blocks and
handles this library does not use are written back as read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.datastore import KV, ConflictError, Store, Txn, retry_on_conflict, transact
from cni_calico.v3 import IPAMConfig, IPPool, Resource
from ipam.allocator import Block, network
from ipam.pools import parse_pools

log = logging.getLogger(__name__)

_HANDLE_FIELDS = frozenset({"block", "deleted"})
_HANDLE_DROPPED = frozenset({"handleID"})  # written by our earlier releases; Calico keeps the ID in the key


@dataclass
class Assignment:
    ip: str  # bare address
    block: str  # the block's CIDR

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def cidr(self) -> str:
        """The workload's own address: /32 or /128."""
        return f"{self.ip}/{32 if self.family == 4 else 128}"


@dataclass
class Handle:
    handle_id: str
    blocks: dict[str, int] = field(default_factory=dict)
    mod_revision: int = 0  # 0: not in etcd yet
    other: dict = field(default_factory=dict)  # stored fields this library does not use, kept as read

    @classmethod
    def from_kv(cls, kv: KV) -> Handle:
        return cls(keys.handle_id_of(kv.key), dict(kv.value.get("block") or {}), kv.mod_revision,
                   {k: v for k, v in kv.value.items() if k not in _HANDLE_FIELDS and k not in _HANDLE_DROPPED})

    def to_dict(self) -> dict:
        """As Calico's model.IPAMHandle: block CIDR -> count (keys sorted), deleted."""
        return {"block": dict(sorted(self.blocks.items())), "deleted": False, **self.other}

    def count(self, cidr: str, delta: int) -> None:
        self.blocks[cidr] = self.blocks.get(cidr, 0) + delta
        if self.blocks[cidr] <= 0:
            del self.blocks[cidr]


class IpamStore:
    def __init__(self, ds: Store) -> None:
        self.ds = ds

    # --- reads -----------------------------------------------------------------

    def pools(self) -> list[IPPool]:
        return parse_pools([(kv.key, kv.value) for kv in self.ds.list(keys.resource_dir("ippools"))])

    def node_labels(self, node: str) -> dict[str, str]:
        kv = self.ds.get(keys.resource("nodes", node))
        return Resource.from_value(kv.value).labels if kv else {}

    def config(self) -> IPAMConfig:
        kv = self.ds.get(keys.ipam_config())
        return IPAMConfig.from_value(kv.value if kv else None)

    def get_handle(self, handle_id: str) -> Handle | None:
        kv = self.ds.get(keys.handle(handle_id))
        return None if kv is None else Handle.from_kv(kv)

    def get_block(self, cidr: str) -> tuple[Block, int] | None:
        kv = self.ds.get(keys.block(cidr))
        return None if kv is None else (Block.from_dict(kv.value), kv.mod_revision)

    def get_blocks(self, cidrs: list[str]) -> dict[str, tuple[Block, int]]:
        """Several blocks in one round trip; absent ones are left out."""
        if not cidrs:
            return {}
        read = self.ds.multi_get([keys.block(c) for c in cidrs])
        return {c: (Block.from_dict(kvs[0].value), kvs[0].mod_revision)
                for c in cidrs if (kvs := read[keys.block(c)])}

    def ips_of(self, handle: Handle) -> list[Assignment]:
        out = []
        for cidr, (block, _) in self.get_blocks(list(handle.blocks)).items():
            out += [Assignment(ip, cidr) for ip in block.ips_for_handle(handle.handle_id)]
        return out

    def ips_by_handle(self, handle_id: str) -> list[Assignment]:
        handle = self.get_handle(handle_id)
        return [] if handle is None else self.ips_of(handle)

    def blocks(self) -> list[tuple[Block, int]]:
        """Every block of both families, with its mod revision."""
        return [(Block.from_dict(kv.value), kv.mod_revision) for f in (4, 6) for kv in self.ds.list(keys.block_dir(f))]

    def handles(self) -> list[Handle]:
        return [Handle.from_kv(kv) for kv in self.ds.list(keys.handle_dir())]

    def affinities(self, node: str | None = None) -> list[tuple[str, str]]:
        """(node, block CIDR) of every block affinity, or of one node's."""
        found = (keys.parse_affinity(kv.key) for kv in self.ds.list(keys.host_dir(node or ""), keys_only=True))
        return [a for a in found if a is not None]

    # --- release ----------------------------------------------------------------

    def prepare_release(self, handle: Handle, txn: Txn, config: IPAMConfig | None = None) -> list[str]:
        """Contributes the release of everything `handle` holds, and the handle's deletion, to `txn`
        (guarded by the blocks' and the handle's mod revisions). One read: the handle's blocks.
        `config`: the IPAM configuration as the caller read it (its cooldown); else it is read.
        A block left empty and affine to no node goes, as Calico's release does."""
        config = config or self.config()
        freed: list[str] = []
        for cidr, (block, rev) in self.get_blocks(list(handle.blocks)).items():
            got = block.release_handle(handle.handle_id, config.ip_cooldown_seconds)
            if got:
                freed += got
                if block.is_empty() and block.affinity is None:
                    txn.delete(keys.block(cidr), rev)
                else:
                    txn.put(keys.block(cidr), block.updated(), rev)
        txn.delete(keys.handle(handle.handle_id), handle.mod_revision)
        return freed

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Frees everything the handle holds and deletes it; [] when it is already gone."""

        def attempt() -> tuple[Txn, list[str]]:
            txn = Txn()
            handle = self.get_handle(handle_id)
            return txn, ([] if handle is None else self.prepare_release(handle, txn, config))

        config = self.config()

        return transact(self.ds, attempt, f"releasing {handle_id}")

    def release_ips(self, ips: list[str]) -> list[str]:
        """Frees addresses regardless of handle (operator clean-up); fixes the handles' counts."""
        freed: list[str] = []
        for ip in ips:
            freed += retry_on_conflict(lambda ip=ip: self._release_ip_once(ip), f"releasing {ip}")
        return freed

    def release_ip_of_handle(self, ip: str, handle_id: str) -> bool:
        """Frees `ip` only while `handle_id` still holds it (checked in the same guarded transaction)."""
        return bool(retry_on_conflict(lambda: self._release_ip_once(ip, handle_id), f"releasing {ip}"))

    def _release_ip_once(self, ip: str, only_if_held_by: str | None = None) -> list[str]:
        """Frees one address and fixes its handle's count, in one guarded transaction; with
        `only_if_held_by`, only while that handle still holds it."""
        for kv in self.ds.list(keys.block_dir(network(ip).version)):
            block = Block.from_dict(kv.value)
            if not network(ip).subnet_of(network(block.cidr)):  # type: ignore[arg-type]
                continue
            holder = block.handle_of(block.ordinal_of(ip))
            if holder is None or (only_if_held_by is not None and holder != only_if_held_by):
                return []
            freed = block.release_ips([ip], self.config().ip_cooldown_seconds)
            txn = Txn().put(kv.key, block.updated(), kv.mod_revision)
            handle = self.get_handle(holder)
            if handle is not None:
                handle.count(block.cidr, -1)
                if handle.blocks:
                    txn.put(keys.handle(holder), handle.to_dict(), handle.mod_revision)
                else:
                    txn.delete(keys.handle(holder), handle.mod_revision)
            if not self.ds.commit(txn):
                raise ConflictError(block.cidr)
            return freed
        return []

    # --- operator clean-up (calicoctl) --------------------------------------------------

    def release_affinity(self, node: str, cidr: str) -> str:
        """Drops the node's claim on a block: "deleted" (it was empty, block gone too), "unaffine"
        (it still holds addresses: they stay valid, the block now belongs to no node), "released"
        (the claim alone went), "" (nothing to do)."""
        return retry_on_conflict(lambda: self._release_affinity_once(node, cidr), f"releasing {node}'s {cidr}")

    def _release_affinity_once(self, node: str, cidr: str) -> str:
        aff_key = keys.affinity(node, cidr)
        aff = self.ds.get(aff_key)
        got = self.get_block(cidr)
        txn = Txn()
        outcome = "released" if aff else ""
        if aff is not None:
            txn.delete(aff_key, aff.mod_revision)
        if got is not None and got[0].node in (node, None):
            block, rev = got
            if block.is_empty():
                txn.delete(keys.block(cidr), rev)
                outcome = "deleted"
            elif block.affinity is not None:
                block.affinity, block.claim_time = None, None
                txn.put(keys.block(cidr), block.updated(), rev)
                outcome = "unaffine"
        if not txn:
            return outcome
        if not self.ds.commit(txn):
            raise ConflictError(cidr)
        return outcome

    def delete_handle(self, handle_id: str, mod_revision: int) -> bool:
        """Deletes a handle record that is still at `mod_revision` (a leaked, empty handle)."""
        return self.ds.commit(Txn().delete(keys.handle(handle_id), mod_revision))
