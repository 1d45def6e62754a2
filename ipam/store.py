"""Blocks, affinities and handles in etcd: assignment and release, retried on conflicts.

Invariants: an address is held in exactly one block's `allocations`, and the
block and its handle change in the same guarded transaction, so no crash or
race leaves a block allocation without its handle (or the reverse) and no
two callers ever commit the same ordinal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.datastore import KV, Datastore, retry_on_conflict
from cni_calico.errors import ADDRESS_CONFLICT, INVALID_CONFIG, POOL_EXHAUSTED, CniError, ConflictError
from ipam.allocator import Block, block_cidrs, network
from ipam.pools import Pool, pool_from_resource

log = logging.getLogger(__name__)


@dataclass
class Assignment:
    ip: str  # bare address
    block: str  # the block's CIDR
    fresh: bool = False  # our commit made it (and wrote the caller's riders); False: a repeat ADD's


@dataclass
class Riders:
    """Writes that travel in the assignment's own transaction (the endpoint, its profile)."""

    puts: dict[str, dict] = field(default_factory=dict)
    create_if_absent: dict[str, dict] = field(default_factory=dict)


@dataclass
class Handle:
    handle_id: str
    blocks: dict[str, int] = field(default_factory=dict)
    mod_revision: int = 0  # 0: not in etcd yet

    def to_dict(self) -> dict:
        return {"handleID": self.handle_id, "block": self.blocks, "deleted": False}


class IpamStore:
    def __init__(self, ds: Datastore) -> None:
        self.ds = ds
        self.conflicts = 0  # lost races, counted for the benchmarks and storm tests

    # --- reads -----------------------------------------------------------------

    def pools(self) -> list[Pool]:
        return self.parse_pools(self.ds.list(keys.resource_dir("ippools")))

    @staticmethod
    def parse_pools(kvs: list[KV]) -> list[Pool]:
        out = []
        for kv in kvs:
            try:
                out.append(pool_from_resource(kv.value))
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("ignoring malformed IPPool at %s: %s", kv.key, exc)
        return out

    def node_labels(self, node: str) -> dict[str, str]:
        kv = self.ds.get(keys.resource("nodes", node))
        return dict((kv.value.get("metadata") or {}).get("labels") or {}) if kv else {}

    def strict_affinity(self) -> bool:
        kv = self.ds.get(keys.ipam_config())
        return bool(kv and kv.value.get("strict_affinity"))

    def get_handle(self, handle_id: str) -> Handle | None:
        kv = self.ds.get(keys.handle(handle_id))
        if kv is None:
            return None
        return Handle(handle_id, dict(kv.value.get("block") or {}), kv.mod_revision)

    def get_block(self, cidr: str) -> tuple[Block, int] | None:
        kv = self.ds.get(keys.block(cidr))
        return None if kv is None else (Block.from_dict(kv.value), kv.mod_revision)

    def ips_by_handle(self, handle_id: str) -> list[Assignment]:
        handle = self.get_handle(handle_id)
        if handle is None:
            return []
        out = []
        for cidr in handle.blocks:
            got = self.get_block(cidr)
            if got:
                out += [Assignment(ip, cidr) for ip in got[0].ips_for_handle(handle_id)]
        return out

    def affine_blocks(self, node: str, family: int) -> list[str]:
        prefix = keys.affinity_dir(node, family)
        return [keys.cidr_from_block_key(kv.key) for kv in self.ds.list(prefix, keys_only=True)]

    # --- assignment -------------------------------------------------------------

    def auto_assign(
        self,
        handle_id: str,
        attrs: dict,
        node: str,
        pools: list[Pool],
        affinities: list[str] | None = None,
        riders: Callable[[str], Riders] | None = None,
        blocks: dict[str, tuple[Block, int]] | None = None,
    ) -> Assignment:
        """One address for the handle from the given pools (all of one family); idempotent per handle.

        `affinities`: the node's affine blocks when the caller already read them (saves a round
        trip on the first try). `riders(ip)`: writes to commit in the same transaction."""
        if not pools:
            raise CniError(POOL_EXHAUSTED, "no enabled IP pool to assign from (create one with calicoctl)")
        family = pools[0].family
        # Optimistic first try: the handle is new (its guard is "absent"); after a
        # lost race the handle is re-read, so a second family can join it.
        known: list[Handle] = [Handle(handle_id)]
        first_affine, first_read = affinities, blocks or {}  # `blocks`: some blocks already read, with revisions

        def once() -> Assignment:
            nonlocal first_affine, first_read
            affine = first_affine if first_affine is not None else self.affine_blocks(node, family)
            read = first_read
            first_affine, first_read = None, {}  # a retry reads afresh
            try:
                return self._assign_once(Handle(handle_id, dict(known[0].blocks), known[0].mod_revision),
                                         attrs, node, pools, family, affine, riders, read)
            except ConflictError:
                known[0] = self.get_handle(handle_id) or Handle(handle_id)
                raise

        return retry_on_conflict(once, f"assigning an address for {handle_id}")

    def _assign_once(
        self, handle: Handle, attrs: dict, node: str, pools: list[Pool], family: int, affine: list[str], riders,
        read: dict[str, tuple[Block, int]],
    ) -> Assignment:
        for cidr in affine:
            if not any(p.contains(cidr) for p in pools):
                continue
            got = read.get(cidr) or self.get_block(cidr)
            if got is None or got[0].free == 0:
                continue
            return self._commit_assign(got[0], got[1], handle, attrs, riders)
        claimed = self._claim_block(node, pools, family)
        if claimed is not None:
            return self._commit_assign(claimed, 0, handle, attrs, riders, new_affinity=node)
        if not self.strict_affinity():
            for block, rev in self._blocks_with_room(pools, family):
                log.info("borrowing an address from block %s (affine to %s)", block.cidr, block.node)
                return self._commit_assign(block, rev, handle, attrs, riders)
        names = ", ".join(f"{p.name} ({p.cidr})" for p in pools)
        raise CniError(POOL_EXHAUSTED, f"no free IPv{family} address: pool {names} is exhausted")

    def _commit_assign(
        self, block: Block, rev: int, handle: Handle, attrs: dict, riders, new_affinity: str = ""
    ) -> Assignment:
        (ip,) = block.assign(1, handle.handle_id, attrs)
        handle.blocks[block.cidr] = handle.blocks.get(block.cidr, 0) + 1
        handle_key = keys.handle(handle.handle_id)
        guards = {keys.block(block.cidr): rev, handle_key: handle.mod_revision}
        puts = {keys.block(block.cidr): block.to_dict(), handle_key: handle.to_dict()}
        if new_affinity:
            affinity_key = keys.affinity(new_affinity, block.cidr)
            guards[affinity_key] = 0
            puts[affinity_key] = {"state": "confirmed", "deleted": False}
        extra = riders(ip) if riders else Riders()
        if self.ds.commit(guards, {**extra.puts, **puts}, create_if_absent=extra.create_if_absent):
            return Assignment(ip, block.cidr, fresh=True)
        # Lost a race, or this handle already holds an address (a repeated ADD).
        existing = self.ips_by_handle(handle.handle_id)
        family_existing = [a for a in existing if network(a.block).version == network(block.cidr).version]
        if family_existing:
            return family_existing[0]
        self.conflicts += 1
        raise ConflictError(block.cidr)

    def _claim_block(self, node: str, pools: list[Pool], family: int) -> Block | None:
        """A fresh block from the first pool with an unused block CIDR (not yet in etcd)."""
        taken = {keys.cidr_from_block_key(kv.key) for kv in self.ds.list(keys.block_dir(family), keys_only=True)}
        for pool in pools:
            for cidr in block_cidrs(pool.cidr, max(pool.block_size, network(pool.cidr).prefixlen)):
                if cidr not in taken:
                    log.info("claiming block %s of pool %s for node %s", cidr, pool.name, node)
                    return Block.new(cidr, node)
        return None

    def _blocks_with_room(self, pools: list[Pool], family: int) -> list[tuple[Block, int]]:
        out = []
        for kv in self.ds.list(keys.block_dir(family)):
            block = Block.from_dict(kv.value)
            if block.free and not block.strict_affinity and any(p.contains(block.cidr) for p in pools):
                out.append((block, kv.mod_revision))
        return out

    def assign_ip(self, handle_id: str, attrs: dict, node: str, ip: str, pools: list[Pool]) -> Assignment:
        """A requested address: it must lie in a pool and be free (or already be this handle's)."""
        pool = next((p for p in pools if network(ip).subnet_of(network(p.cidr))), None)  # type: ignore[arg-type]
        if pool is None:
            raise CniError(INVALID_CONFIG, f"requested address {ip} is outside every usable pool")
        block_cidr = str(network(f"{ip}/{pool.block_size}"))

        def once() -> Assignment:
            got = self.get_block(block_cidr)
            block, rev = got if got else (Block.new(block_cidr, node), 0)
            holder = block.handle_of(block.ordinal_of(ip))
            if holder == handle_id:
                return Assignment(ip, block_cidr)
            if holder is not None:
                raise CniError(ADDRESS_CONFLICT, f"requested address {ip} is already in use")
            handle = self.get_handle(handle_id) or Handle(handle_id)
            block.assign_ip(ip, handle_id, attrs)
            handle.blocks[block_cidr] = handle.blocks.get(block_cidr, 0) + 1
            guards = {keys.block(block_cidr): rev, keys.handle(handle_id): handle.mod_revision}
            puts = {keys.block(block_cidr): block.to_dict(), keys.handle(handle_id): handle.to_dict()}
            if rev == 0:
                guards[keys.affinity(node, block_cidr)] = 0
                puts[keys.affinity(node, block_cidr)] = {"state": "confirmed", "deleted": False}
            if not self.ds.commit(guards, puts):
                self.conflicts += 1
                raise ConflictError(block_cidr)
            return Assignment(ip, block_cidr)

        return retry_on_conflict(once, f"assigning {ip} to {handle_id}")

    # --- release ----------------------------------------------------------------

    def release_by_handle(
        self, handle_id: str, known: Handle | None = None, also_delete: dict[str, int] | None = None
    ) -> tuple[list[str], bool]:
        """Frees everything the handle holds and deletes it; ([], False) when it is already gone.

        `known`: the handle as the caller just read it (saves a round trip on the first try).
        `also_delete`: keys (with their mod revisions) deleted in the final transaction, such as
        the endpoint; the bool says whether they went (a lost guard leaves them to the caller)."""
        first = [known, also_delete or {}]

        def once() -> tuple[list[str], bool]:
            handle, extra = first
            first[0], first[1] = None, {}  # a retry reads afresh and leaves the riders to the caller
            return self._release_once(handle_id, handle, extra)

        return retry_on_conflict(once, f"releasing {handle_id}")

    def _release_once(self, handle_id: str, handle: Handle | None, extra: dict[str, int]) -> tuple[list[str], bool]:
        handle = handle or self.get_handle(handle_id)
        if handle is None:
            return [], False
        freed: list[str] = []
        cidrs = list(handle.blocks)
        for i, cidr in enumerate(cidrs):
            got = self.get_block(cidr)
            handle_key = keys.handle(handle_id)
            last = i == len(cidrs) - 1
            guards = {handle_key: handle.mod_revision}
            puts: dict[str, dict] = {}
            if got is not None:
                block, rev = got
                freed += block.release_handle(handle_id)
                guards[keys.block(cidr)] = rev
                puts[keys.block(cidr)] = block.to_dict()
            del handle.blocks[cidr]
            if last:
                ok = self.ds.commit({**guards, **extra}, puts, deletes=[handle_key, *extra])
            else:
                puts[handle_key] = handle.to_dict()
                ok = self.ds.commit(guards, puts)
            if not ok:
                self.conflicts += 1
                raise ConflictError(cidr)
            if not last:
                handle = self.get_handle(handle_id) or Handle(handle_id)
        if not cidrs:
            self.ds.commit({keys.handle(handle_id): handle.mod_revision}, deletes=[keys.handle(handle_id)])
            return freed, False
        return freed, bool(extra)

    def release_ips(self, ips: list[str]) -> list[str]:
        """Frees addresses regardless of handle (operator clean-up); fixes the handles' counts."""
        freed: list[str] = []
        for ip in ips:
            freed += retry_on_conflict(lambda ip=ip: self._release_ip_once(ip), f"releasing {ip}")
        return freed

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
            freed = block.release_ips([ip])
            guards: dict[str, int] = {kv.key: kv.mod_revision}
            puts: dict[str, dict] = {kv.key: block.to_dict()}
            deletes: list[str] = []
            handle = self.get_handle(holder)
            if handle is not None:
                guards[keys.handle(holder)] = handle.mod_revision
                handle.blocks[block.cidr] = handle.blocks.get(block.cidr, 1) - 1
                if handle.blocks[block.cidr] <= 0:
                    del handle.blocks[block.cidr]
                if handle.blocks:
                    puts[keys.handle(holder)] = handle.to_dict()
                else:
                    deletes.append(keys.handle(holder))
            if not self.ds.commit(guards, puts, deletes):
                self.conflicts += 1
                raise ConflictError(block.cidr)
            return freed
        return []

    # --- operator clean-up (calicoctl): added for issue 5, existing methods unchanged --------

    def blocks(self) -> list[tuple[Block, int]]:
        """Every block of both families, with its mod revision."""
        return [(Block.from_dict(kv.value), kv.mod_revision) for f in (4, 6) for kv in self.ds.list(keys.block_dir(f))]

    def handles(self) -> list[Handle]:
        prefix = keys.handle_dir()
        return [Handle(kv.key[len(prefix):], dict(kv.value.get("block") or {}), kv.mod_revision)
                for kv in self.ds.list(prefix)]

    def affinities(self, node: str | None = None) -> list[tuple[str, str]]:
        """(node, block CIDR) of every block affinity, or of one node's."""
        root = f"{keys.IPAM}/host/"
        out = []
        for kv in self.ds.list(root + (f"{node}/" if node else ""), keys_only=True):
            parts = kv.key[len(root):].split("/")  # <node>/ipv4/block/<cidr>
            if len(parts) == 4 and parts[2] == "block":
                out.append((parts[0], keys.cidr_from_block_key(kv.key)))
        return out

    def release_affinity(self, node: str, cidr: str) -> str:
        """Drops the node's claim on a block: "deleted" (it was empty, block gone too), "unaffine"
        (it still holds addresses: they stay valid, the block now belongs to no node), "" (nothing to do)."""
        return retry_on_conflict(lambda: self._release_affinity_once(node, cidr), f"releasing {node}'s {cidr}")

    def _release_affinity_once(self, node: str, cidr: str) -> str:
        aff_key = keys.affinity(node, cidr)
        aff = self.ds.get(aff_key)
        got = self.get_block(cidr)
        guards: dict[str, int] = {}
        puts: dict[str, dict] = {}
        deletes: list[str] = []
        outcome = "released" if aff else ""
        if aff is not None:
            guards[aff_key] = aff.mod_revision
            deletes.append(aff_key)
        if got is not None and got[0].node in (node, None):
            block, rev = got
            guards[keys.block(cidr)] = rev
            if block.is_empty():
                deletes.append(keys.block(cidr))
                outcome = "deleted"
            elif block.affinity is not None:
                block.affinity = None
                puts[keys.block(cidr)] = block.to_dict()
                outcome = "unaffine"
        if not guards or (not puts and not deletes):
            return outcome
        if not self.ds.commit(guards, puts, deletes):
            self.conflicts += 1
            raise ConflictError(cidr)
        return outcome

    def release_ip_of_handle(self, ip: str, handle_id: str) -> bool:
        """Frees `ip` only while `handle_id` still holds it (checked in the same guarded transaction)."""
        return bool(retry_on_conflict(lambda: self._release_ip_once(ip, handle_id), f"releasing {ip}"))

    def delete_handle(self, handle_id: str, mod_revision: int) -> bool:
        """Deletes a handle record that is still at `mod_revision` (a leaked, empty handle)."""
        return self.ds.commit({keys.handle(handle_id): mod_revision}, deletes=[keys.handle(handle_id)])


def block_of(kv: KV) -> Block:
    return Block.from_dict(kv.value)
