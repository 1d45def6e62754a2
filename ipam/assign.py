"""Address assignment as a unit of work: `Assigner.prepare` reads, chooses addresses and contributes
the block, handle and affinity writes to the caller's `Txn`; the caller adds its own writes (the
endpoint) and commits once (cni_calico.datastore.transact re-runs `prepare` after a lost race).

The common path is one read (pools, the node's affinities, the handle, and the blocks the node's
last assignments used, named by a hint file) and the caller's one commit. A new block is claimed
as Calico claims it: its affinity is first written `pending` (a commit of its own), then the block
is created and the affinity `confirmed` in the caller's commit; a claim that loses the block to
another node deletes its pending affinity, one that never got its block is resumed, and one whose
commit fails for good is taken back when the Assigner closes. Both families of a
dual-stack request go in that one transaction: all or nothing. A handle that already holds an
address of a family (a repeated ADD) keeps it: the same addresses come back.

A caller's `Precondition` (the CNI plugin's: the datastore is not locked) is read in that same first
read, checked before anything is written, and guarded in the commit: it costs no round trip, and a
change of it between the read and the commit makes the attempt run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.datastore import KV, ConflictError, Store, Txn, transact
from cni_calico.v3 import IPAMConfig, IPPool
from ipam.allocator import Block, block_cidrs, network
from ipam.errors import AddressInUse, InvalidRequest, PoolExhausted
from ipam.lock import node_lock, read_hint, write_hint
from ipam.pools import parse_pools, select_pools, selects_by_label
from ipam.store import Assignment, Handle, IpamStore

log = logging.getLogger(__name__)

AFFINITY_CONFIRMED = {"state": "confirmed", "deleted": False}  # Calico's model.BlockAffinity
AFFINITY_PENDING = {"state": "pending", "deleted": False}


@dataclass
class AssignArgs:
    """What one workload (or tunnel device) asks of IPAM, as libcalico-go's AutoAssignArgs."""

    handle_id: str
    node: str
    run_dir: str  # where the node's IPAM lock and block hint live (calico-node's run dir)
    attrs: dict[str, str] = field(default_factory=dict)  # stored with each allocation
    num_ipv4: int = 1  # 0 or 1
    num_ipv6: int = 0  # 0 or 1
    ipv4_pools: list[str] = field(default_factory=list)  # names or CIDRs; []: every enabled pool selecting the node
    ipv6_pools: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)  # exact addresses: these and no others (at most one per family)
    use: str = "Workload"  # what the addresses are for: a pool must allow it (IPPool allowedUses)
    namespace_labels: dict[str, str] | None = None  # the pod's namespace's labels, when known (namespaceSelector)

    def families(self) -> list[int]:
        exact = {network(ip).version for ip in self.ips}
        if exact:
            return sorted(exact)
        for n in (self.num_ipv4, self.num_ipv6):
            if n not in (0, 1):
                raise InvalidRequest(f"IPAM assigns 0 or 1 address per family, not {n}")
        return [f for f, n in ((4, self.num_ipv4), (6, self.num_ipv6)) if n]


@dataclass(frozen=True)
class Precondition:
    """A key the caller's assignment depends on; `check` gets its value (None: absent) and raises to
    refuse the assignment."""

    key: str
    check: Callable[[dict | None], None]


@dataclass
class Claim:
    """The outcome of one `prepare`: the addresses, in family order, and the blocks they came from."""

    assignments: list[Assignment]

    @property
    def cidrs(self) -> list[str]:
        return [a.cidr for a in self.assignments]


class Assigner:
    """One assignment for one handle. Use as a context manager: it holds the node's IPAM lock, so no
    other assignment of this node moves the blocks between `prepare`'s read and the commit."""

    def __init__(self, ds: Store, args: AssignArgs, preconditions: tuple[Precondition, ...] = ()) -> None:
        self.ds, self.args = ds, args
        self.preconditions = preconditions
        self.store = IpamStore(ds)
        self.families = args.families()
        if not self.families:
            raise InvalidRequest("IPAM was asked for no address: both families are off")
        self._lock = node_lock(args.node, args.run_dir)
        self._hinted: list[str] = []
        self._seen: set[str] = set()  # hinted blocks that still exist
        self.attempts = 0  # prepare calls: one more than the races lost
        self.config = IPAMConfig()  # as the last prepare read it
        self.reserved = None  # ip -> whether an IPReservation holds it (None: there are none)
        self._resumable: dict[str, int] = {}  # cidr -> mod revision of our pending affinity with no block
        self._pending: set[str] = set()  # affinity keys this Assigner wrote pending, not yet confirmed

    def __enter__(self) -> Assigner:
        self._lock.__enter__()
        self._hinted = read_hint(self.args.node, self.args.run_dir)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._take_back_pending()
        finally:
            self._lock.__exit__(*exc)

    def _take_back_pending(self) -> None:
        """The claims whose commit never came (an error, or the caller gave up): their pending
        affinities go, so a failed ADD leaves nothing behind."""
        from cni_calico.datastore import Failure

        for key in sorted(self._pending):
            try:
                kv = self.ds.get(key)
                if kv is not None and (kv.value or {}).get("state") == "pending":
                    self.ds.commit(Txn().delete(key, kv.mod_revision))
            except Failure as exc:
                log.warning("could not take back the pending block affinity %s: %s", key, exc)
        self._pending.clear()

    def prepare(self, txn: Txn) -> Claim:
        """One attempt: reads, chooses, and contributes the writes to `txn` (nothing is written)."""
        self.attempts += 1
        args = self.args
        handle_key = keys.handle(args.handle_id)
        pools_dir, reservations_dir = keys.resource_dir("ippools"), keys.resource_dir("ipreservations")
        prefixes = [pools_dir, reservations_dir] + [keys.affinity_dir(args.node, f) for f in self.families]
        config_key = keys.ipam_config()
        wanted = [handle_key, config_key, *(keys.block(c) for c in self._hinted)]
        read = self.ds.multi_get(wanted + [p.key for p in self.preconditions if p.key not in wanted], prefixes)
        for condition in self.preconditions:
            kv = read[condition.key][0] if read[condition.key] else None
            condition.check(kv.value if kv else None)
            txn.guard(condition.key, kv.mod_revision if kv else 0)
        self.config = IPAMConfig.from_value(read[config_key][0].value if read[config_key] else None)
        blocks = {c: (Block.from_dict(kvs[0].value), kvs[0].mod_revision)
                  for c in self._hinted if (kvs := read[keys.block(c)])}
        self._seen = set(blocks)
        pools = parse_pools([(kv.key, kv.value) for kv in read[pools_dir]])
        self.reserved = reservations([kv.value for kv in read[reservations_dir]])
        labels = self.store.node_labels(args.node) if selects_by_label(pools) else {}
        handle = Handle.from_kv(read[handle_key][0]) if read[handle_key] else Handle(args.handle_id)
        txn.guard(handle_key, handle.mod_revision)
        held = self._held(handle, blocks)
        changed: dict[str, tuple[Block, int, bool]] = {}  # cidr -> (block, mod revision, newly claimed)
        self._resumable = {}
        out: list[Assignment] = []
        for family in self.families:
            if family in held:
                out.append(held[family])
                continue
            requested = args.ipv4_pools if family == 4 else args.ipv6_pools
            chosen = select_pools(pools, requested, family, labels, args.use, args.namespace_labels)
            exact = [ip for ip in args.ips if network(ip).version == family]
            if exact:
                got = self._assign_exact(exact[0], chosen, blocks, changed)
            else:
                affinities = read[keys.affinity_dir(args.node, family)]
                got = self._assign_auto(chosen, family, affinities, blocks, changed, txn)
            handle.count(got.block, 1)
            out.append(got)
        claims = [cidr for cidr, (_, _, new) in changed.items() if new]
        self._write_pending([c for c in claims if c not in self._resumable])
        for cidr, (block, rev, new) in changed.items():
            txn.put(keys.block(cidr), block.updated(), rev)
            if new:  # the block is created only if absent: then the claim is ours and confirmed with it
                txn.put(keys.affinity(args.node, cidr), AFFINITY_CONFIRMED, self._resumable.get(cidr))
        if changed:
            txn.put(handle_key, handle.to_dict())
        return Claim(out)

    def _write_pending(self, cidrs: list[str]) -> None:
        """Calico's first step of a claim: the affinity, `pending`, in a commit of its own (all the
        new blocks of this assignment in one). Lost to a concurrent writer: the attempt starts over."""
        if not cidrs:
            return
        txn = Txn()
        for cidr in cidrs:
            txn.put(keys.affinity(self.args.node, cidr), AFFINITY_PENDING, 0)
        if not self.ds.commit(txn):
            raise ConflictError(f"claiming block(s) {', '.join(cidrs)} for node {self.args.node}")
        self._pending.update(txn.puts)

    def committed(self, claim: Claim) -> None:
        """After the caller's commit: the blocks used become the hint for the node's next ADDs."""
        self._pending.clear()
        log.debug("assigned %s to %s (%d conflicts)", claim.cidrs, self.args.handle_id, self.attempts - 1)
        used = {a.block for a in claim.assignments}
        if used and not used <= self._seen:
            write_hint(self.args.node, self.args.run_dir, sorted(used | self._seen))

    # --- pieces ----------------------------------------------------------------------

    def _held(self, handle: Handle, blocks: dict[str, tuple[Block, int]]) -> dict[int, Assignment]:
        """What a handle already in etcd holds, per family (a repeated ADD gets the same addresses)."""
        if not handle.mod_revision or not handle.blocks:
            return {}
        missing = [c for c in handle.blocks if c not in blocks]
        blocks.update(self.store.get_blocks(missing))
        out: dict[int, Assignment] = {}
        for cidr in handle.blocks:
            if cidr in blocks:
                for ip in blocks[cidr][0].ips_for_handle(handle.handle_id):
                    out.setdefault(network(ip).version, Assignment(ip, cidr))
        return out

    def _block(self, cidr: str, blocks: dict[str, tuple[Block, int]],
               changed: dict[str, tuple[Block, int, bool]]) -> tuple[Block, int, bool] | None:
        if cidr in changed:
            return changed[cidr]
        if cidr not in blocks:
            got = self.store.get_block(cidr)
            if got is None:
                return None
            blocks[cidr] = got
        return (*blocks[cidr], False)

    def _take(self, entry: tuple[Block, int, bool], changed: dict, ip: str = "") -> Assignment:
        block = entry[0]
        if ip:
            block.assign_ip(ip, self.args.handle_id, self.args.attrs)
        else:
            (ip,) = block.assign(1, self.args.handle_id, self.args.attrs, self.reserved)
        changed[block.cidr] = entry
        return Assignment(ip, block.cidr)

    def _assign_auto(self, pools: list[IPPool], family: int, affinities: list[KV], blocks: dict,
                     changed: dict, txn: Txn) -> Assignment:
        if not pools:
            raise PoolExhausted(f"no enabled IP pool to assign an IPv{family} address from (create one with calicoctl)")
        config, owned = self.config, 0
        for kv in affinities:
            cidr, state = keys.cidr_from_block_key(kv.key), (kv.value or {}).get("state") or "confirmed"
            if state == "pendingDeletion":
                continue  # being released by its node
            owned += 1
            if not any(p.contains(cidr) for p in pools):
                continue
            entry = self._block(cidr, blocks, changed)
            if entry is None:  # a claim that stopped before its block: resumed when a block is needed
                self._resumable[cidr] = kv.mod_revision
                continue
            if entry[0].node != self.args.node:
                if state == "pending":  # another node created the block first: our claim is void
                    txn.delete(kv.key, kv.mod_revision)
                continue
            if state == "pending":  # Calico's claim stopped after creating the block: finish it
                txn.put(kv.key, AFFINITY_CONFIRMED, kv.mod_revision)
            if config.ip_cooldown_seconds and entry[0].collect(config.ip_cooldown_seconds):
                changed[cidr] = entry  # addresses whose cooldown ended are free again
            if entry[0].free_for(self.reserved):
                return self._take(entry, changed)
        limit = config.max_blocks
        resumable = any(network(c).version == family for c in self._resumable)
        if config.auto_allocate_blocks and (owned < limit or resumable):
            claimed = self._claim_block(pools, family)
            if claimed is not None:
                return self._take((claimed, 0, True), changed)
        if not config.strict_affinity:
            for kv in self.ds.list(keys.block_dir(family)):
                block = Block.from_dict(kv.value)
                if config.ip_cooldown_seconds:
                    block.collect(config.ip_cooldown_seconds)
                if block.free_for(self.reserved) and any(p.contains(block.cidr) for p in pools):
                    log.info("borrowing an address from block %s (affine to %s)", block.cidr, block.node)
                    return self._take((block, kv.mod_revision, False), changed)
        if owned >= limit:
            raise PoolExhausted(f"Need to allocate an IPAM block but could not - limit of {limit} blocks reached "
                                f"for this node (IPv{family})")
        names = ", ".join(f"{p.name} ({p.cidr})" for p in pools)
        raise PoolExhausted(f"no free IPv{family} address: pool {names} is exhausted")

    def _claim_block(self, pools: list[IPPool], family: int) -> Block | None:
        """A fresh block: the one a stopped claim of ours left pending, else the first pool's first
        block CIDR not yet in etcd."""
        for cidr in self._resumable:
            block = Block.new(cidr, self.args.node)
            if network(cidr).version == family and block.free_for(self.reserved):
                log.info("resuming the claim of block %s for node %s", cidr, self.args.node)
                return block
        taken = {keys.cidr_from_block_key(kv.key) for kv in self.ds.list(keys.block_dir(family), keys_only=True)}
        for pool in pools:
            for cidr in block_cidrs(pool.cidr, max(pool.block_size, network(pool.cidr).prefixlen)):
                if cidr not in taken:
                    block = Block.new(cidr, self.args.node)
                    if not block.free_for(self.reserved):
                        continue  # every address of it is reserved (IPReservation)
                    log.info("claiming block %s of pool %s for node %s", cidr, pool.name, self.args.node)
                    return block
        return None

    def _assign_exact(self, ip: str, pools: list[IPPool], blocks: dict, changed: dict) -> Assignment:
        """A requested address: it must lie in a usable pool and be free (or already be this handle's)."""
        pool = next((p for p in pools if p.contains(ip)), None)
        if pool is None:
            raise InvalidRequest(f"requested address {ip} is outside every usable pool")
        cidr = str(network(f"{ip}/{pool.block_size}"))
        entry = self._block(cidr, blocks, changed)
        if entry is None:
            entry = (Block.new(cidr, self.args.node), 0, True)
            stopped = self.ds.get(keys.affinity(self.args.node, cidr))  # a claim of ours that never got its block
            if stopped is not None:
                self._resumable[cidr] = stopped.mod_revision
        block, ordinal = entry[0], entry[0].ordinal_of(ip)
        if self.config.ip_cooldown_seconds and block.collect(self.config.ip_cooldown_seconds):
            changed[cidr] = entry
        if block.cooling(ordinal):
            raise AddressInUse(f"requested address {ip} was released at {block.cooling(ordinal)} and is cooling down "
                               f"(ipCooldownSeconds {self.config.ip_cooldown_seconds})")
        if block.allocations[ordinal] is not None:
            raise AddressInUse(f"requested address {ip} is already in use")
        return self._take(entry, changed, ip)


def reservations(values: list[dict]):
    """`ip -> bool`: whether an IPReservation's reservedCIDRs hold the address (None when none do)."""
    nets = []
    for value in values:
        for cidr in ((value.get("spec") or {}).get("reservedCIDRs") or []):
            try:
                nets.append(network(str(cidr)))
            except ValueError:
                log.warning("ignoring IPReservation %s entry %r: not a CIDR", (value.get("metadata") or {}).get("name"),
                            cidr)
    if not nets:
        return None
    import ipaddress

    return lambda ip: any(ipaddress.ip_address(ip) in net for net in nets)


def auto_assign(ds: Store, args: AssignArgs) -> Claim:
    """Assigns and commits on its own (a caller with nothing to add to the transaction)."""
    with Assigner(ds, args) as assigner:

        def attempt() -> tuple[Txn, Claim]:
            txn = Txn()
            return txn, assigner.prepare(txn)

        claim = transact(ds, attempt, f"assigning an address for {args.handle_id}")
        assigner.committed(claim)
        return claim
