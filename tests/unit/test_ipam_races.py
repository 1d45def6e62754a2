"""IPAM's races on the in-memory datastore double (tests/memstore.py): lost commits are retried,
two nodes never share a block or an address, a repeated assignment changes nothing, and the
unit of work is all or nothing. Integration suites cover the same on real etcd."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_calico import keys
from cni_calico.datastore import TooManyConflicts, Txn, transact
from cni_calico.v3 import IPAMConfig, IPPool, new_resource, pool_spec
from ipam.allocator import Block
from ipam.assign import AssignArgs, Assigner, auto_assign
from ipam.errors import AddressInUse, InvalidRequest, PoolExhausted
from ipam.store import IpamStore
from tests.memstore import MemStore


def pooled(*pools: tuple[str, str, int]) -> MemStore:
    store = MemStore()
    for name, cidr, size in pools:
        store.put(keys.resource("ippools", name), new_resource("IPPool", name, pool_spec(cidr, size)).to_value())
    return store


def args(handle: str, node: str, run_dir, **kw) -> AssignArgs:
    return AssignArgs(handle, node, str(run_dir), {"node": node}, **kw)


def check_invariants(store: MemStore) -> dict[str, set[str]]:
    """Every allocation's handle exists and counts it; no address is held twice. Returns handle -> ips."""
    ipam = IpamStore(store)
    held: dict[str, set[str]] = {}
    counted: dict[str, dict[str, int]] = {}
    for block, _ in ipam.blocks():
        assert sorted(block.unallocated + [i for i, a in enumerate(block.allocations) if a is not None]) == \
            list(range(len(block.allocations))), f"block {block.cidr}: an ordinal is lost or doubled"
        for ordinal in range(len(block.allocations)):
            handle = block.handle_of(ordinal)
            if handle is not None:
                ip = block.ip_at(ordinal)
                assert all(ip not in ips for ips in held.values()), f"{ip} held twice"
                held.setdefault(handle, set()).add(ip)
                counted.setdefault(handle, {}).setdefault(block.cidr, 0)
                counted[handle][block.cidr] += 1
    handles = {h.handle_id: h.blocks for h in ipam.handles()}
    assert handles == counted, "handle records and block allocations disagree"
    return held


def test_a_commit_lost_to_a_conflict_is_retried_and_takes_another_address(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    first = auto_assign(store, args("net.a", "n1", tmp_path))
    racer_ip = []

    def racer(s: MemStore, txn: Txn) -> None:  # another ADD of the node commits in between
        racer_ip.append(auto_assign(s, args("net.racer", "n1", tmp_path / "other")).assignments[0].ip)

    store.before_commit = racer
    second = auto_assign(store, args("net.b", "n1", tmp_path))
    assert store.failed_commits == 1
    assert len({first.assignments[0].ip, second.assignments[0].ip, racer_ip[0]}) == 3
    assert check_invariants(store) == {"net.a": {first.assignments[0].ip}, "net.b": {second.assignments[0].ip},
                                       "net.racer": {racer_ip[0]}}


def test_a_precondition_is_read_with_the_first_read_and_guarded_in_the_commit(tmp_path):
    """The plugin's datastore lock as IPAM sees it: a lock committed between an attempt's read and its
    commit fails the commit; the attempt runs again, reads the lock and refuses, writing nothing."""
    from cni_calico import datastore_lock
    from cni_calico.errors import TRY_AGAIN_LATER, CniError
    from ipam.assign import Precondition

    store = pooled(("p", "10.0.0.0/24", 26))
    info = new_resource("ClusterInformation", "default", {"datastoreReady": True}).to_value()
    store.put(datastore_lock.KEY, info)

    def assign(handle: str) -> list[str]:
        with Assigner(store, args(handle, "n1", tmp_path), (Precondition(datastore_lock.KEY, datastore_lock.check),)) \
                as assigner:
            claim = transact(store, lambda: (lambda t: (t, assigner.prepare(t)))(Txn()), handle)
            assigner.committed(claim)
            return claim.cidrs

    assert assign("net.a")  # claims the node's block
    calls = store.calls
    assert assign("net.a2")
    assert store.calls - calls == 2  # one read, one commit: the precondition cost no round trip

    def lock(s: MemStore, txn: Txn) -> None:
        s.put(datastore_lock.KEY, {**info, "spec": {"datastoreReady": False}})

    store.before_commit = lock
    before = check_invariants(store)
    with pytest.raises(CniError) as refused:
        assign("net.b")
    assert refused.value.code == TRY_AGAIN_LATER and refused.value.msg == datastore_lock.NOT_READY
    assert store.failed_commits == 1 and check_invariants(store) == before
    store.put(datastore_lock.KEY, info)  # unlocked; absent counts as unlocked too
    assert assign("net.b")
    store.delete(datastore_lock.KEY)
    assert assign("net.c")


def test_two_nodes_claiming_the_same_block_get_different_blocks(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))

    def node2_claims(s: MemStore, txn: Txn) -> None:
        auto_assign(s, args("net.n2", "n2", tmp_path / "n2"))

    store.before_commit = node2_claims
    mine = auto_assign(store, args("net.n1", "n1", tmp_path / "n1"))
    ipam = IpamStore(store)
    affinities = dict((cidr, node) for node, cidr in ipam.affinities())
    assert sorted(affinities.values()) == ["n1", "n2"] and len(affinities) == 2
    assert affinities[mine.assignments[0].block] == "n1"
    assert {b.cidr: b.node for b, _ in ipam.blocks()} == affinities
    check_invariants(store)


def test_a_repeated_assignment_returns_the_same_addresses_and_writes_nothing(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26), ("p6", "fd00::/120", 122))
    first = auto_assign(store, args("net.a", "n1", tmp_path, num_ipv6=1))
    revision = store.rev
    again = auto_assign(store, args("net.a", "n1", tmp_path, num_ipv6=1))
    assert again.cidrs == first.cidrs and store.rev == revision
    assert [a.family for a in first.assignments] == [4, 6]


def test_dual_stack_is_all_or_nothing(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))  # no IPv6 pool
    revision = store.rev
    with pytest.raises(PoolExhausted):
        auto_assign(store, args("net.a", "n1", tmp_path, num_ipv6=1))
    assert store.rev == revision and IpamStore(store).blocks() == []


def test_the_callers_writes_ride_in_the_same_transaction_and_fail_with_it(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    endpoint = keys.resource("workloadendpoints", "wep", "default")
    store.put(endpoint, {"spec": {"containerID": "someone-else"}})
    stale = store.get(endpoint).mod_revision  # type: ignore[union-attr]
    store.put(endpoint, {"spec": {"containerID": "newer"}})
    with Assigner(store, args("net.a", "n1", tmp_path)) as assigner:
        txn = Txn()
        assigner.prepare(txn)
        txn.put(endpoint, {"spec": {"containerID": "a"}}, stale)  # the endpoint's guard is out of date
        assert not store.commit(txn)
    assert IpamStore(store).blocks() == [] and store.value(endpoint) == {"spec": {"containerID": "newer"}}
    assert store.list(keys.affinity_dir("n1", 4)) == []  # the claim's pending affinity was taken back


def test_exact_address_in_use_and_outside_every_pool(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    auto_assign(store, args("net.a", "n1", tmp_path, ips=["10.0.0.7"]))
    with pytest.raises(AddressInUse):
        auto_assign(store, args("net.b", "n1", tmp_path, ips=["10.0.0.7"]))
    with pytest.raises(InvalidRequest):
        auto_assign(store, args("net.c", "n1", tmp_path, ips=["10.9.0.7"]))
    assert check_invariants(store) == {"net.a": {"10.0.0.7"}}


def test_a_full_pool_is_exhausted_and_borrowing_crosses_nodes(tmp_path):
    store = pooled(("p", "10.0.0.0/30", 30))  # one block of 4 addresses
    got = [auto_assign(store, args(f"net.{i}", "n1" if i < 2 else "n2", tmp_path)).assignments[0].ip
           for i in range(4)]
    assert sorted(got) == [f"10.0.0.{i}" for i in range(4)]  # n2 borrowed from n1's block
    with pytest.raises(PoolExhausted, match="10.0.0.0/30"):
        auto_assign(store, args("net.x", "n2", tmp_path))
    check_invariants(store)


def test_release_frees_every_family_and_the_handle_in_one_commit(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26), ("p6", "fd00::/120", 122))
    claim = auto_assign(store, args("net.a", "n1", tmp_path, num_ipv6=1))
    commits = store.commits
    freed = IpamStore(store).release_by_handle("net.a")
    assert sorted(freed) == sorted(a.ip for a in claim.assignments)
    assert store.commits == commits + 1 and check_invariants(store) == {}
    assert IpamStore(store).release_by_handle("net.a") == []  # idempotent


def test_released_addresses_go_to_the_back_of_the_queue(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    first = auto_assign(store, args("net.a", "n1", tmp_path)).assignments[0].ip
    IpamStore(store).release_by_handle("net.a")
    assert auto_assign(store, args("net.b", "n1", tmp_path)).assignments[0].ip != first


def test_retries_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("cni_calico.datastore.time.sleep", lambda _s: None)
    store = pooled(("p", "10.0.0.0/24", 26))
    attempts = []

    def attempt() -> tuple[Txn, None]:
        attempts.append(1)
        return Txn().put("/calico/x", {"n": len(attempts)}, 12345), None  # a guard that never holds

    with pytest.raises(TooManyConflicts):
        transact(store, attempt, "writing x")
    assert len(attempts) == 100


OPS = st.lists(st.tuples(st.sampled_from(["assign", "release"]), st.integers(0, 5), st.sampled_from(["n1", "n2"]),
                         st.booleans()), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_interleaved_assign_and_release_keep_the_invariants(tmp_path, ops):
    """Random sequences on a small pool (two /29 blocks), each operation optionally raced by another
    one committing between its read and its commit: the invariants hold after every step, and
    every live handle holds exactly one address."""
    store = pooled(("p", "10.0.0.0/28", 29))
    live: set[str] = set()

    def run(op: str, n: int, node: str, run_dir: str = "") -> None:
        handle = f"net.{n}"
        if op == "release":
            IpamStore(store).release_by_handle(handle)
            live.discard(handle)
            return
        try:
            auto_assign(store, args(handle, node, tmp_path / (run_dir or node)))
            live.add(handle)
        except PoolExhausted:
            pass

    for i, (op, n, node, raced) in enumerate(ops):
        if raced:
            other = ops[(i + 1) % len(ops)]
            # Another process, with its own lock (a node's own ADDs would queue on the node's lock).
            store.before_commit = lambda s, txn, o=other: run(o[0], (o[1] + 3) % 6, o[2], "racer")
        run(op, n, node)
        store.before_commit = None
        held = check_invariants(store)
        assert set(held) == live and all(len(ips) == 1 for ips in held.values())


def test_a_block_written_by_another_tool_keeps_its_unknown_fields(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    block = Block.new("10.0.0.0/26", "n1").to_dict()
    block.update({"sequenceNumber": 7, "affinityClaimTime": "2026-01-01T00:00:00Z"})  # a field we do not know
    store.put(keys.block("10.0.0.0/26"), block)
    store.put(keys.affinity("n1", "10.0.0.0/26"), {"state": "confirmed"})
    auto_assign(store, args("net.a", "n1", tmp_path))
    written = store.value(keys.block("10.0.0.0/26"))
    assert written["sequenceNumber"] == 8 and written["affinityClaimTime"] == "2026-01-01T00:00:00Z"
    assert written["sequenceNumberForAllocation"] == {"0": 7}
    handle = store.value(keys.handle("net.a"))
    store.put(keys.handle("net.a"), {**handle, "note": "kept"})
    auto_assign(store, args("net.a", "n1", tmp_path, num_ipv6=0))
    IpamStore(store).release_ips([auto_assign(store, args("net.b", "n1", tmp_path)).assignments[0].ip])
    assert store.value(keys.handle("net.a"))["note"] == "kept"


def test_pools_of_the_other_family_or_disabled_are_not_used(tmp_path):
    store = pooled(("p6", "fd00::/120", 122))
    store.put(keys.resource("ippools", "off"),
              new_resource("IPPool", "off", {**pool_spec("10.1.0.0/24", 26), "disabled": True}).to_value())
    assert [p.name for p in IpamStore(store).pools()] == ["off", "p6"]
    assert IPPool.from_value(store.value(keys.resource("ippools", "off"))).disabled
    with pytest.raises(PoolExhausted):
        auto_assign(store, args("net.a", "n1", tmp_path))
    with pytest.raises(InvalidRequest, match="disabled"):
        auto_assign(store, args("net.a", "n1", tmp_path, ipv4_pools=["off"]))


# --- Calico's IPAM rules: block limit, cooldown, pending claims, pool uses --------------------------


def test_the_block_limit_per_node_as_calico_enforces_it(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 30))  # blocks of 4 addresses
    store.put(keys.ipam_config(), IPAMConfig(strict_affinity=True, max_blocks_per_host=2).to_value())
    got = [auto_assign(store, args(f"net.{i}", "n1", tmp_path)).assignments[0].block for i in range(8)]
    assert len(set(got)) == 2
    with pytest.raises(PoolExhausted, match="limit of 2 blocks reached for this node"):
        auto_assign(store, args("net.x", "n1", tmp_path))
    assert auto_assign(store, args("net.y", "n2", tmp_path / "n2")).cidrs  # another node has its own limit


def test_without_a_configured_limit_a_node_gets_calicos_twenty_blocks(tmp_path):
    store = pooled(("p", "10.0.0.0/16", 32))  # one address a block
    store.put(keys.ipam_config(), IPAMConfig(strict_affinity=True).to_value())
    for i in range(20):
        auto_assign(store, args(f"net.{i}", "n1", tmp_path))
    with pytest.raises(PoolExhausted, match="limit of 20 blocks"):
        auto_assign(store, args("net.x", "n1", tmp_path))


def test_a_released_address_rests_for_the_cooldown(tmp_path):
    store = pooled(("p", "10.0.0.0/30", 30))
    store.put(keys.ipam_config(), IPAMConfig(ip_cooldown_seconds=3600).to_value())
    first = auto_assign(store, args("net.a", "n1", tmp_path)).assignments[0].ip
    IpamStore(store).release_by_handle("net.a")
    block = Block.from_dict(store.value(keys.block("10.0.0.0/30")))
    assert block.cooling(block.ordinal_of(first)) and first not in [block.ip_at(o) for o in block.unallocated]
    taken = [auto_assign(store, args(f"net.{i}", "n1", tmp_path)).assignments[0].ip for i in range(3)]
    assert first not in taken
    with pytest.raises(PoolExhausted):  # the only address left is cooling down
        auto_assign(store, args("net.z", "n1", tmp_path))
    with pytest.raises(AddressInUse, match="cooling down"):
        auto_assign(store, args("net.w", "n1", tmp_path, ips=[first]))
    value = store.value(keys.block("10.0.0.0/30"))  # an hour later
    value["attributes"] = [{"releasedAt": "2026-01-01T00:00:00Z"} if "releasedAt" in a else a
                           for a in value["attributes"]]
    store.put(keys.block("10.0.0.0/30"), value)
    assert auto_assign(store, args("net.z", "n1", tmp_path)).assignments[0].ip == first
    check_invariants(store)


def test_a_pending_affinity_of_a_block_that_exists_is_confirmed_and_used(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    store.put(keys.block("10.0.0.64/26"), Block.new("10.0.0.64/26", "n1").to_dict())  # Calico's claim, stopped
    store.put(keys.affinity("n1", "10.0.0.64/26"), {"state": "pending", "deleted": False})
    store.put(keys.affinity("n1", "10.0.0.128/26"), {"state": "pending", "deleted": False})  # never got its block
    got = auto_assign(store, args("net.a", "n1", tmp_path)).assignments[0]
    assert got.block == "10.0.0.64/26"
    assert store.value(keys.affinity("n1", "10.0.0.64/26")) == {"state": "confirmed", "deleted": False}


def test_a_new_block_is_claimed_pending_then_confirmed_with_the_block(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    seen = []
    store.before_commit = lambda s, txn: seen.append(dict(txn.puts))
    got = auto_assign(store, args("net.a", "n1", tmp_path)).assignments[0]
    affinity = keys.affinity("n1", got.block)
    assert seen == [{affinity: {"state": "pending", "deleted": False}}]  # Calico's first step, alone
    assert store.commits == 2 and store.value(affinity) == {"state": "confirmed", "deleted": False}
    auto_assign(store, args("net.b", "n1", tmp_path))
    assert store.commits == 3  # an address of a block already ours: one commit


def test_a_claim_that_stopped_before_its_block_is_resumed(tmp_path):
    store = pooled(("p", "10.0.0.0/24", 26))
    store.put(keys.affinity("n1", "10.0.0.128/26"), {"state": "pending", "deleted": False})
    got = auto_assign(store, args("net.a", "n1", tmp_path)).assignments[0]
    assert got.block == "10.0.0.128/26" and store.commits == 1
    assert store.value(keys.affinity("n1", "10.0.0.128/26")) == {"state": "confirmed", "deleted": False}
    store.put(keys.affinity("n1", "10.0.0.192/26"), {"state": "pending", "deleted": False})
    exact = auto_assign(store, args("net.b", "n1", tmp_path, ips=["10.0.0.200"])).assignments[0]
    assert exact.block == "10.0.0.192/26"
    assert store.value(keys.affinity("n1", "10.0.0.192/26")) == {"state": "confirmed", "deleted": False}
    assert sorted(cidr for _, cidr in IpamStore(store).affinities()) == ["10.0.0.128/26", "10.0.0.192/26"]


def test_pools_by_allowed_use_assignment_mode_and_namespace(tmp_path):
    store = MemStore()
    specs = {"lb": {**pool_spec("10.1.0.0/24", 26), "allowedUses": ["LoadBalancer"]},
             "manual": {**pool_spec("10.2.0.0/24", 26), "assignmentMode": "Manual"},
             "team": {**pool_spec("10.3.0.0/24", 26), "namespaceSelector": "team == 'a'"},
             "tunnel": {**pool_spec("10.4.0.0/24", 26), "allowedUses": ["Tunnel"]}}
    for name, spec in specs.items():
        store.put(keys.resource("ippools", name), new_resource("IPPool", name, spec).to_value())
    # A pod in namespace b: neither the LoadBalancer pool, the manual one, team a's nor the tunnel one.
    with pytest.raises(PoolExhausted):
        auto_assign(store, args("net.a", "n1", tmp_path, namespace_labels={"team": "b"}))
    got = auto_assign(store, args("net.b", "n1", tmp_path, namespace_labels={"team": "a"}))
    assert got.assignments[0].block.startswith("10.3.")
    assert auto_assign(store, args("net.c", "n1", tmp_path, ipv4_pools=["manual"])).cidrs[0].startswith("10.2.")
    with pytest.raises(InvalidRequest, match="does not allow Workload"):
        auto_assign(store, args("net.d", "n1", tmp_path, ipv4_pools=["lb"]))
    # a tunnel address: any automatic pool that allows Tunnel (a namespaceSelector is for pods)
    assert auto_assign(store, args("tun", "n1", tmp_path, use="Tunnel")).cidrs[0].startswith(("10.3.", "10.4."))


def test_reserved_addresses_are_never_handed_out_automatically(tmp_path):
    store = pooled(("p", "10.0.0.0/29", 30))  # two blocks of four
    store.put(keys.resource("ipreservations", "r"), {"kind": "IPReservation", "apiVersion": "projectcalico.org/v3",
                                                     "metadata": {"name": "r"},
                                                     "spec": {"reservedCIDRs": ["10.0.0.1", "10.0.0.4/30"]}})
    got = {auto_assign(store, args(f"net.{i}", "n1", tmp_path)).assignments[0].ip for i in range(3)}
    assert got == {"10.0.0.0", "10.0.0.2", "10.0.0.3"}  # the second block is reserved whole: never claimed
    with pytest.raises(PoolExhausted):
        auto_assign(store, args("net.x", "n1", tmp_path))
    block = Block.from_dict(store.value(keys.block("10.0.0.0/30")))
    assert block.unallocated == [1]  # the reserved address stays in its place in the queue
    assert auto_assign(store, args("net.y", "n1", tmp_path, ips=["10.0.0.1"])).cidrs == ["10.0.0.1/32"]  # asked for
