"""IP pools from resources, the choice of pools for a request, and nodeSelector matching (ipam.pools)."""

from __future__ import annotations

import pytest

from cni_calico.v3 import DEFAULT_BLOCK_SIZE, IPPool
from ipam.errors import InvalidRequest
from ipam.pools import select_pools, selects


def resource(name: str, cidr: str, **spec) -> dict:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


# --- pool_from_resource ---------------------------------------------------------------------------


def test_v4_pool_defaults():
    pool = IPPool.from_value(resource("default-ipv4-ippool", "10.60.0.0/16"))
    assert pool == IPPool("default-ipv4-ippool", "10.60.0.0/16", 26, disabled=False, node_selector="all()")
    assert pool.family == 4
    assert DEFAULT_BLOCK_SIZE == {4: 26, 6: 122}


def test_v6_pool_defaults():
    pool = IPPool.from_value(resource("default-ipv6-ippool", "fd00:10::/64"))
    assert pool.block_size == 122
    assert pool.family == 6
    assert pool.cidr == "fd00:10::/64"


def test_pool_fields():
    pool = IPPool.from_value(
        resource("p", "10.70.0.5/24", blockSize=28, disabled=True, nodeSelector="rack == 'a'", ipipMode="Always")
    )
    assert pool.cidr == "10.70.0.0/24"  # host bits dropped
    assert pool.block_size == 28
    assert pool.disabled is True
    assert pool.node_selector == "rack == 'a'"


@pytest.mark.parametrize("selector", ["", None])
def test_empty_node_selector_means_all(selector):
    assert IPPool.from_value(resource("p", "10.0.0.0/16", nodeSelector=selector)).node_selector == "all()"


@pytest.mark.parametrize(
    "bad", [{"metadata": {"name": "p"}, "spec": {}}, {"metadata": {"name": "p"}}, {"spec": {"cidr": "10.0.0.0/8"}}]
)
def test_resource_without_cidr_or_name_raises(bad):
    with pytest.raises((KeyError, TypeError, ValueError)):
        IPPool.from_value(bad)


def test_resource_with_junk_cidr_raises():
    with pytest.raises(ValueError):
        IPPool.from_value(resource("p", "10.0.0.0/33"))


def test_pool_contains():
    pool = IPPool("p", "10.60.0.0/16", 26)
    assert pool.contains("10.60.3.64/26")
    assert pool.contains("10.60.0.0/16")
    assert not pool.contains("10.61.0.0/26")
    assert not pool.contains("10.0.0.0/8")
    assert not pool.contains("fd00::/122")


# --- select_pools -------------------------------------------------------------------------------------

POOLS = [
    IPPool("pool-a", "10.60.0.0/16", 26),
    IPPool("pool-b", "10.70.0.0/16", 26, node_selector="rack == 'b'"),
    IPPool("pool-off", "10.80.0.0/16", 26, disabled=True),
    IPPool("pool-v6", "fd00:60::/64", 122),
    IPPool("pool-v6-off", "fd00:70::/64", 122, disabled=True),
]


def names(pools: list[IPPool]) -> list[str]:
    return [p.name for p in pools]


def test_select_by_name():
    assert names(select_pools(POOLS, ["pool-b"], 4, {})) == ["pool-b"]
    assert names(select_pools(POOLS, ["pool-b", "pool-a"], 4, {})) == ["pool-b", "pool-a"]


def test_select_by_cidr():
    assert names(select_pools(POOLS, ["10.70.0.0/16"], 4, {})) == ["pool-b"]
    assert names(select_pools(POOLS, ["fd00:60::/64"], 6, {})) == ["pool-v6"]
    # Written differently, the same network.
    assert names(select_pools(POOLS, ["fd00:60:0:0::/64"], 6, {})) == ["pool-v6"]


def test_requested_pool_ignores_node_selector():
    # Pins the current rule: an explicit request is honoured even where the selector would not pick the node.
    assert names(select_pools(POOLS, ["pool-b"], 4, {"rack": "a"})) == ["pool-b"]


@pytest.mark.parametrize(
    "want,family",
    [("pool-x", 4), ("10.99.0.0/16", 4), ("10.60.0.0/24", 4), ("pool-v6", 4), ("pool-a", 6), ("junk/cidr", 4)],
)
def test_unknown_requested_pool_is_an_invalid_request_naming_it(want, family):
    with pytest.raises(InvalidRequest) as info:
        select_pools(POOLS, [want], family, {})
    assert repr(want) in info.value.msg
    assert f"IPv{family}" in info.value.msg


def test_unknown_pool_error_lists_the_known_ones():
    with pytest.raises(InvalidRequest) as info:
        select_pools(POOLS, ["pool-a", "missing"], 4, {})
    assert "pool-a (10.60.0.0/16)" in info.value.details
    assert "pool-v6" not in info.value.details


def test_unknown_pool_with_no_pools_at_all():
    with pytest.raises(InvalidRequest) as info:
        select_pools([], ["pool-a"], 4, {})
    assert "none" in info.value.details


@pytest.mark.parametrize("want,family", [("pool-off", 4), ("10.80.0.0/16", 4), ("pool-v6-off", 6)])
def test_disabled_requested_pool_is_an_error(want, family):
    with pytest.raises(InvalidRequest) as info:
        select_pools(POOLS, [want], family, {})
    assert "disabled" in info.value.msg and repr(want) in info.value.msg


def test_no_request_gives_enabled_pools_of_the_family_selecting_the_node():
    assert names(select_pools(POOLS, [], 4, {})) == ["pool-a"]
    assert names(select_pools(POOLS, [], 4, {"rack": "b"})) == ["pool-a", "pool-b"]
    assert names(select_pools(POOLS, [], 4, {"rack": "c"})) == ["pool-a"]
    assert names(select_pools(POOLS, [], 6, {"rack": "b"})) == ["pool-v6"]


def test_no_request_and_no_usable_pool_is_empty():
    assert select_pools([IPPool("off", "10.0.0.0/8", 26, disabled=True)], [], 4, {}) == []
    assert select_pools(POOLS, [], 4, {}) != []
    assert select_pools([IPPool("v6", "fd00::/64", 122)], [], 4, {}) == []


# --- selects -------------------------------------------------------------------------------------

LABELS = {"rack": "a", "zone": "z1", "kubernetes.io/hostname": "node-1", "gpu": ""}


@pytest.mark.parametrize(
    "selector,expected",
    [
        ("all()", True),
        ("  all()  ", True),
        ("", True),
        ("   ", True),
        ("!all()", False),
        ("rack == 'a'", True),
        ('rack == "a"', True),
        ("rack=='a'", True),
        ("rack == 'b'", False),
        ("missing == 'a'", False),
        ("rack != 'b'", True),
        ("rack != 'a'", False),
        ("missing != 'a'", True),  # Calico: != matches when the label is absent
        ("has(rack)", True),
        ("has(gpu)", True),
        ("has(missing)", False),
        ("kubernetes.io/hostname == 'node-1'", True),
        ("has(kubernetes.io/hostname)", True),
        ("rack == 'a' && has(zone)", True),
        ("rack == 'a' && has(missing)", False),
        ("rack == 'b' && has(zone)", False),
        ("rack == 'a' && zone == 'z1' && rack != 'x'", True),
        ("rack == ''", False),
        ("gpu == ''", True),
    ],
)
def test_node_selected(selector, expected):
    assert selects(selector, LABELS) is expected


@pytest.mark.parametrize(
    "selector",
    [
        "has(rack) && ",
        "rack == a",
        "rack = 'a'",
        "rack == 'a",
        "not a selector",
        "has(rack",
    ],
)
def test_malformed_expression_selects_nothing(selector):
    assert selects(selector, LABELS) is False
    assert selects(selector, {}) is False


def test_selector_against_no_labels():
    assert selects("all()", {}) is True
    assert selects("has(rack)", {}) is False
    assert selects("rack != 'a'", {}) is True


@pytest.mark.parametrize(
    "selector", ["rack in {'a', 'b'}", "rack == 'a' || zone == 'z1'", "!has(missing)", "all() && has(rack)"]
)
def test_full_selector_language(selector):
    from cni_calico.selector import matches

    assert selects(selector, LABELS) is matches(selector, LABELS)
    assert selects(selector, {}) is matches(selector, {})
