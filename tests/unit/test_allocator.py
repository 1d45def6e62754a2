"""Block arithmetic: ordinals, FIFO reuse, handles, attribute compaction and Calico's JSON shape (ipam.allocator)."""

from __future__ import annotations

import ipaddress
import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.allocator import Block, block_cidrs, network

ATTRS = {"node": "node1", "namespace": "default", "pod": "nginx"}


# --- sizes and addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr,size",
    [("10.60.0.0/26", 64), ("10.60.0.0/24", 256), ("10.60.0.7/32", 1), ("fd00::/122", 64), ("fd00::1/128", 1)],
)
def test_new_block_sizes(cidr, size):
    block = Block.new(cidr, "node1")
    assert len(block.allocations) == size
    assert block.allocations == [None] * size
    assert block.unallocated == list(range(size))
    assert block.free == size
    assert block.attributes is None  # as Calico's newBlock: stored as null until the first assignment
    assert block.is_empty()


def test_new_block_affinity():
    assert Block.new("10.60.0.0/26", "node1").affinity == "host:node1"
    assert Block.new("10.60.0.0/26", "node1").node == "node1"
    assert Block.new("10.60.0.0/26", None).affinity is None
    assert Block.new("10.60.0.0/26", None).node is None
    assert Block(cidr="10.60.0.0/26", affinity="virtual:x", allocations=[], unallocated=[]).node is None


def test_ip_at_and_ordinal_of():
    block = Block.new("10.60.0.64/26", "n")
    assert block.ip_at(0) == "10.60.0.64"
    assert block.ip_at(63) == "10.60.0.127"
    for ordinal in range(64):
        assert block.ordinal_of(block.ip_at(ordinal)) == ordinal


def test_ip_at_and_ordinal_of_v6():
    block = Block.new("fd00:1::40/122", "n")
    assert block.ip_at(0) == "fd00:1::40"
    assert block.ip_at(63) == "fd00:1::7f"
    for ordinal in range(64):
        assert block.ordinal_of(block.ip_at(ordinal)) == ordinal


@pytest.mark.parametrize("ip", ["10.60.0.63", "10.60.0.128", "10.61.0.64", "fd00::1"])
def test_ordinal_of_outside_block_raises(ip):
    with pytest.raises(ValueError):
        Block.new("10.60.0.64/26", "n").ordinal_of(ip)


def test_ordinal_of_junk_raises():
    with pytest.raises(ValueError):
        Block.new("10.60.0.64/26", "n").ordinal_of("not-an-ip")


# --- assignment ----------------------------------------------------------------------------------


def test_assign_hands_out_in_order():
    block = Block.new("10.60.0.0/26", "n")
    assert block.assign(1, "h1", ATTRS) == ["10.60.0.0"]
    assert block.assign(2, "h2", {}) == ["10.60.0.1", "10.60.0.2"]
    assert block.assign(1, "h3", {}) == ["10.60.0.3"]
    assert block.free == 60
    assert block.unallocated == list(range(4, 64))
    assert block.handle_of(0) == "h1"
    assert block.handle_of(1) == block.handle_of(2) == "h2"
    assert block.handle_of(4) is None
    assert block.attributes[block.allocations[0]] == {"handle_id": "h1", "secondary": ATTRS}
    assert not block.is_empty()


def test_assign_more_than_free_takes_nothing():
    block = Block.new("10.60.0.0/30", "n")
    assert block.assign(3, "h1", {}) == ["10.60.0.0", "10.60.0.1", "10.60.0.2"]
    before = block.to_dict()
    assert block.assign(2, "h2", {}) == []
    assert block.to_dict() == before
    assert block.assign(1, "h2", {}) == ["10.60.0.3"]
    assert block.free == 0
    assert block.assign(1, "h3", {}) == []


def test_single_address_block():
    block = Block.new("10.60.0.7/32", "n")
    assert block.assign(1, "h", {}) == ["10.60.0.7"]
    assert block.assign(1, "h2", {}) == []
    assert block.release_handle("h") == ["10.60.0.7"]
    assert block.is_empty()


def test_assign_negative_count_takes_nothing():
    block = Block.new("10.60.0.0/26", "n")
    assert block.assign(-1, "h", {}) == []
    assert block.free == 64


def test_assign_ip_specific_address():
    block = Block.new("10.60.0.0/26", "n")
    assert block.assign_ip("10.60.0.10", "h1", ATTRS) is True
    assert block.handle_of(10) == "h1"
    assert 10 not in block.unallocated
    assert block.free == 63
    # The queue order of the rest is unchanged: auto-assignment still starts at .0.
    assert block.assign(1, "h2", {}) == ["10.60.0.0"]


def test_assign_ip_of_a_taken_address_returns_false_and_changes_nothing():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(1, "h1", {})
    before = block.to_dict()
    assert block.assign_ip("10.60.0.0", "h2", {}) is False
    assert block.to_dict() == before
    assert block.handle_of(0) == "h1"


def test_assign_ip_outside_block_raises():
    with pytest.raises(ValueError):
        Block.new("10.60.0.0/26", "n").assign_ip("10.60.0.64", "h", {})


def test_ips_for_handle():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(1, "h1", {})
    block.assign(1, "h2", {})
    block.assign(1, "h1", {})
    block.assign_ip("10.60.0.40", "h1", {})
    assert block.ips_for_handle("h1") == ["10.60.0.0", "10.60.0.2", "10.60.0.40"]
    assert block.ips_for_handle("h2") == ["10.60.0.1"]
    assert block.ips_for_handle("nobody") == []


# --- release ----------------------------------------------------------------------------------------


def test_release_appends_to_the_end_fifo():
    block = Block.new("10.60.0.0/30", "n")
    block.assign(1, "h1", {})  # .0
    block.assign(1, "h2", {})  # .1
    assert block.release_handle("h1") == ["10.60.0.0"]
    assert block.unallocated == [2, 3, 0]
    # The address just freed is handed out last.
    assert block.assign(1, "h3", {}) == ["10.60.0.2"]
    assert block.assign(1, "h4", {}) == ["10.60.0.3"]
    assert block.assign(1, "h5", {}) == ["10.60.0.0"]


def test_release_handle_frees_only_that_handle():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(2, "h1", {})
    block.assign(1, "h2", {})
    block.assign(1, "h1", {})
    assert block.release_handle("h1") == ["10.60.0.0", "10.60.0.1", "10.60.0.3"]
    assert block.ips_for_handle("h2") == ["10.60.0.2"]
    assert block.ips_for_handle("h1") == []
    assert block.free == 63


def test_release_of_unknown_handle_is_a_noop():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(1, "h1", {})
    before = block.to_dict()
    assert block.release_handle("nobody") == []
    assert block.to_dict() == before


def test_release_ips():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(3, "h1", {})
    assert block.release_ips(["10.60.0.1", "10.60.0.5"]) == ["10.60.0.1"]  # .5 was free: skipped
    assert block.ips_for_handle("h1") == ["10.60.0.0", "10.60.0.2"]
    assert block.unallocated[-1] == 1
    assert block.unallocated.count(5) == 1


def test_release_ips_outside_block_raises():
    with pytest.raises(ValueError):
        Block.new("10.60.0.0/26", "n").release_ips(["10.60.1.0"])


def test_release_ips_with_a_repeated_address():
    block = Block.new("10.60.0.0/30", "n")
    block.assign(4, "h1", {})
    block.release_ips(["10.60.0.1", "10.60.0.1"])
    assert block.unallocated == [1]
    # What goes wrong next: the same address is handed to two handles.
    first, second = block.assign(1, "h2", {}), block.assign(1, "h3", {})
    assert first != second


def test_compaction_keeps_other_handles_intact():
    block = Block.new("10.60.0.0/26", "n")
    for i, handle in enumerate(["a", "b", "c", "a", "d", "b", "e"]):
        block.assign(1, handle, {"n": i})
    expected = {o: block.handle_of(o) for o in range(7)}
    block.release_handle("b")
    block.release_handle("a")
    for ordinal, handle in expected.items():
        if handle in ("a", "b"):
            assert block.handle_of(ordinal) is None
        else:
            assert block.handle_of(ordinal) == handle
    # Each remaining allocation still points at the attributes it was given.
    assert block.attributes[block.allocations[2]]["secondary"] == {"n": 2}
    assert block.attributes[block.allocations[4]]["secondary"] == {"n": 4}
    assert block.attributes[block.allocations[6]]["secondary"] == {"n": 6}
    # No attribute entry is left that nobody points at, and every index is valid.
    used = {i for i in block.allocations if i is not None}
    assert used == set(range(len(block.attributes)))
    assert [a["handle_id"] for a in block.attributes] == ["c", "d", "e"]


def test_release_everything_leaves_an_empty_block():
    block = Block.new("10.60.0.0/26", "n")
    block.assign(5, "h1", {})
    block.assign_ip("10.60.0.30", "h2", {})
    block.release_handle("h1")
    block.release_handle("h2")
    assert block.is_empty()
    assert block.attributes == []
    assert sorted(block.unallocated) == list(range(64))


# --- Calico's JSON shape --------------------------------------------------------------------------------


def test_to_dict_is_calicos_allocation_block_field_for_field():
    block = Block.new("10.60.0.0/30", "node1")
    seq = block.sequence
    block.assign(1, "k8s-pod-network.abc", ATTRS)
    out = block.updated()  # a write: the sequence number goes up by one, the ordinal keeps the old one
    assert list(out) == ["cidr", "affinity", "affinity_claim_time", "allocations", "unallocated", "attributes",
                         "sequenceNumber", "sequenceNumberForAllocation", "deleted"]
    assert out["affinity_claim_time"].endswith("Z") and out["sequenceNumber"] == seq + 1
    assert {k: v for k, v in out.items() if k not in ("affinity_claim_time", "sequenceNumber")} == {
        "cidr": "10.60.0.0/30",
        "affinity": "host:node1",
        "allocations": [0, None, None, None],
        "unallocated": [1, 2, 3],
        "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": dict(sorted(ATTRS.items()))}],
        "sequenceNumberForAllocation": {"0": seq},
        "deleted": False,
    }
    assert "strictAffinity" not in out and json.loads(json.dumps(out)) == out


def test_from_dict_of_a_calico_block_keeps_what_it_does_not_use():
    stored = {
        "cidr": "192.168.0.0/30",
        "affinity": "host:node2",
        "affinity_claim_time": "2026-08-22T13:33:20Z",
        "allocations": [None, 1, 0, None],
        "unallocated": [3, 0],
        "attributes": [
            {"handle_id": "k8s-pod-network.x", "secondary": {"node": "node2"}},
            {"handle_id": "ipip-tunnel-addr-node2"},
        ],
        "sequenceNumber": 1787405600123456790,
        "sequenceNumberForAllocation": {"1": 1787405600123456788, "2": 1787405600123456789},
        "deleted": False,
        "hostAffinity": "node2",
    }
    block = Block.from_dict(stored)
    assert block.node == "node2"
    assert block.handle_of(2) == "k8s-pod-network.x"
    assert block.handle_of(1) == "ipip-tunnel-addr-node2"
    assert block.to_dict() == stored  # read and written back: nothing lost, nothing added
    assert block.assign(1, "h", {}) == ["192.168.0.3"]
    out = block.updated()
    assert out["unallocated"] == [0] and out["sequenceNumber"] == 1787405600123456791
    assert out["sequenceNumberForAllocation"]["3"] == 1787405600123456790 and out["hostAffinity"] == "node2"


def test_from_dict_defaults_and_our_old_field_dropped():
    block = Block.from_dict({"cidr": "10.0.0.0/31", "allocations": [None, None], "unallocated": [0, 1],
                             "strictAffinity": False})
    assert block.affinity is None and block.attributes is None and "strictAffinity" not in block.to_dict()


def test_release_with_a_cooldown_holds_the_address_until_it_has_cooled():
    block = Block.new("10.0.0.0/30", "n")
    block.assign(2, "h", {})
    assert block.release_handle("h", cooldown=30) == ["10.0.0.0", "10.0.0.1"]
    assert block.free == 2 and block.cooling(0) and block.handle_of(0) is None and not block.is_empty()
    assert block.attributes == [{"releasedAt": block.cooling(0)}]
    assert not block.collect(30)  # still cooling
    from cni_calico.v3 import parse_timestamp

    assert block.collect(30, now=parse_timestamp(block.cooling(0)) + 30)
    assert block.is_empty() and block.unallocated == [2, 3, 0, 1] and block.attributes == []
    assert block.sequence_for == {}


def test_round_trip_through_json():
    block = Block.new("fd00::/122", "node1")
    block.assign(3, "h1", ATTRS)
    block.assign_ip("fd00::20", "h2", {})
    block.release_ips(["fd00::1"])
    back = Block.from_dict(json.loads(json.dumps(block.to_dict())))
    assert back == block
    assert back.to_dict() == block.to_dict()


def test_from_dict_copies_lists():
    stored = Block.new("10.0.0.0/30", "n").to_dict()
    block = Block.from_dict(stored)
    block.assign(1, "h", {})
    assert stored["unallocated"] == [0, 1, 2, 3]


# --- pools into blocks ------------------------------------------------------------------------------


def test_block_cidrs_enumerates_a_pool():
    got = block_cidrs("10.60.0.0/24", 26)
    assert isinstance(got, types.GeneratorType)
    assert list(got) == ["10.60.0.0/26", "10.60.0.64/26", "10.60.0.128/26", "10.60.0.192/26"]


def test_block_cidrs_v6_and_edge_sizes():
    assert list(block_cidrs("fd00::/120", 122)) == ["fd00::/122", "fd00::40/122", "fd00::80/122", "fd00::c0/122"]
    assert list(block_cidrs("10.60.0.0/26", 26)) == ["10.60.0.0/26"]
    assert len(list(block_cidrs("10.60.0.0/30", 32))) == 4


def test_block_cidrs_of_a_big_pool_is_lazy():
    first = next(block_cidrs("10.0.0.0/8", 26))
    assert first == "10.0.0.0/26"


def test_network_is_lenient_about_host_bits():
    assert str(network("10.60.0.5/24")) == "10.60.0.0/24"
    assert network("fd00::/64").version == 6


# --- the property: no ordinal is both free and taken, no address has two holders --------------------------

HANDLES = ["h0", "h1", "h2", "h3"]
op = st.one_of(
    st.tuples(st.just("assign"), st.integers(0, 5), st.sampled_from(HANDLES)),
    st.tuples(st.just("assign_ip"), st.integers(0, 15), st.sampled_from(HANDLES)),
    st.tuples(st.just("release_handle"), st.sampled_from(HANDLES)),
    st.tuples(st.just("release_ips"), st.sets(st.integers(0, 15), max_size=5)),
    st.tuples(st.just("reload")),
)


def check_invariants(block: Block, model: dict[str, set[int]]) -> None:
    size = len(block.allocations)
    free = block.unallocated
    assert len(free) == len(set(free)), f"an ordinal is free twice: {free}"
    for ordinal in range(size):
        allocated = block.allocations[ordinal] is not None
        assert allocated != (ordinal in free), f"ordinal {ordinal} is both or neither free and allocated"
    assert all(0 <= i < len(block.attributes) for i in block.allocations if i is not None)
    owners: dict[int, str] = {}
    for handle, ordinals in model.items():
        for ordinal in ordinals:
            assert ordinal not in owners, f"ordinal {ordinal} given to {owners.get(ordinal)} and {handle}"
            owners[ordinal] = handle
    for ordinal in range(size):
        assert block.handle_of(ordinal) == owners.get(ordinal)
    for handle in HANDLES:
        assert block.ips_for_handle(handle) == [block.ip_at(o) for o in sorted(model.get(handle, ()))]


@settings(max_examples=300, deadline=None)
@given(cidr=st.sampled_from(["10.60.0.0/28", "fd00::10/124"]), ops=st.lists(op, max_size=40))
def test_any_sequence_keeps_the_block_consistent(cidr, ops):
    block = Block.new(cidr, "node1")
    model: dict[str, set[int]] = {}
    for step in ops:
        kind = step[0]
        if kind == "assign":
            _, count, handle = step
            free_before = list(block.unallocated)
            got = block.assign(count, handle, {})
            if count > len(free_before):
                assert got == []
            else:
                assert got == [block.ip_at(o) for o in free_before[:count]]
                model.setdefault(handle, set()).update(free_before[:count])
        elif kind == "assign_ip":
            _, ordinal, handle = step
            taken = block.allocations[ordinal] is not None
            assert block.assign_ip(block.ip_at(ordinal), handle, {}) is (not taken)
            if not taken:
                model.setdefault(handle, set()).add(ordinal)
        elif kind == "release_handle":
            _, handle = step
            freed = block.release_handle(handle)
            assert sorted(ipaddress.ip_address(ip) for ip in freed) == sorted(
                ipaddress.ip_address(block.ip_at(o)) for o in model.pop(handle, set())
            )
            assert block.unallocated[len(block.unallocated) - len(freed) :] == [block.ordinal_of(ip) for ip in freed]
        elif kind == "release_ips":
            _, ordinals = step
            freed = block.release_ips([block.ip_at(o) for o in sorted(ordinals)])
            expected = [o for o in sorted(ordinals) if any(o in held for held in model.values())]
            assert freed == [block.ip_at(o) for o in expected]
            for held in model.values():
                held.difference_update(ordinals)
        else:
            block = Block.from_dict(json.loads(json.dumps(block.to_dict())))
        check_invariants(block, model)
