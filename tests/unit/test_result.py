"""Result rendering per cniVersion and reading every version's shape back (cni_calico.result)."""

from __future__ import annotations

import json

import pytest

from cni_calico.result import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    Interface,
    IPConfig,
    Result,
    Route,
    is_legacy,
    version_tuple,
)

LEGACY = ("0.1.0", "0.2.0")
VERSIONED_IPS = ("0.3.0", "0.3.1", "0.4.0")
V1 = ("1.0.0", "1.1.0")
DNS = {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"]}


def sample() -> Result:
    return Result(
        interfaces=[
            Interface("cali0123456789a", mac="ee:ee:ee:ee:ee:ee", mtu=1440),
            Interface("eth0", mac="0a:58:0a:3c:00:05", sandbox="/var/run/netns/pod", mtu=1440),
        ],
        ips=[
            IPConfig("10.60.0.5/32", gateway="169.254.1.1", interface=1),
            IPConfig("fd00::5/128", interface=1),
            IPConfig("10.60.0.6/32", interface=1),  # a second v4: only 0.3.0+ has room for it
        ],
        routes=[Route("0.0.0.0/0", "169.254.1.1"), Route("::/0"), Route("10.96.0.0/12")],
        dns=dict(DNS),
    )


def test_supported_versions_are_the_seven_spec_versions():
    assert SUPPORTED_VERSIONS == LEGACY + VERSIONED_IPS + V1
    assert LATEST_VERSION == "1.1.0"
    assert set(SUPPORTED_VERSIONS) == set(LEGACY) | set(VERSIONED_IPS) | set(V1)


@pytest.mark.parametrize("version,legacy", [("0.1.0", True), ("0.2.0", True), ("0.3.0", False), ("1.1.0", False)])
def test_is_legacy(version, legacy):
    assert is_legacy(version) is legacy


def test_version_tuple_orders_numerically():
    assert version_tuple("0.10.0") > version_tuple("0.4.0")
    assert version_tuple("1.1.0") == (1, 1, 0)


# --- the version table: one case per spec version ----------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_render_carries_the_requested_version_and_is_json(version):
    out = sample().to_dict(version)
    assert out["cniVersion"] == version
    assert json.loads(json.dumps(out)) == out
    assert out["dns"] == DNS


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_render_shape_per_version(version):
    out = sample().to_dict(version)
    if version in LEGACY:
        assert set(out) == {"cniVersion", "ip4", "ip6", "dns"}
        assert out["ip4"] == {
            "ip": "10.60.0.5/32",
            "gateway": "169.254.1.1",
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "10.96.0.0/12"}],
        }
        assert out["ip6"] == {"ip": "fd00::5/128", "routes": [{"dst": "::/0"}]}
        return
    assert set(out) == {"cniVersion", "interfaces", "ips", "routes", "dns"}
    assert [i["name"] for i in out["interfaces"]] == ["cali0123456789a", "eth0"]
    assert out["interfaces"][1]["sandbox"] == "/var/run/netns/pod"
    assert out["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee"
    assert "sandbox" not in out["interfaces"][0]
    assert [ip["address"] for ip in out["ips"]] == ["10.60.0.5/32", "fd00::5/128", "10.60.0.6/32"]
    assert out["ips"][0]["gateway"] == "169.254.1.1"
    assert "gateway" not in out["ips"][1]
    assert all(ip["interface"] == 1 for ip in out["ips"])
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0"}, {"dst": "10.96.0.0/12"}]
    if version in VERSIONED_IPS:
        assert [ip["version"] for ip in out["ips"]] == ["4", "6", "4"]
    else:
        assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_mtu_only_from_1_1_0(version):
    out = sample().to_dict(version)
    if version == "1.1.0":
        assert [i["mtu"] for i in out["interfaces"]] == [1440, 1440]
    elif version in LEGACY:
        assert "interfaces" not in out
    else:
        assert all("mtu" not in i for i in out["interfaces"])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip_keeps_addresses_and_routes(version):
    original = sample()
    back = Result.from_dict(json.loads(json.dumps(original.to_dict(version))))
    assert back.dns == DNS
    if version in LEGACY:
        # One address per family survives; routes are regrouped by family.
        assert [(ip.address, ip.gateway) for ip in back.ips] == [("10.60.0.5/32", "169.254.1.1"), ("fd00::5/128", "")]
        assert sorted((r.dst, r.gw) for r in back.routes) == sorted((r.dst, r.gw) for r in original.routes)
        assert back.interfaces == []
        return
    assert [(ip.address, ip.gateway, ip.interface) for ip in back.ips] == [
        (ip.address, ip.gateway, ip.interface) for ip in original.ips
    ]
    assert back.routes == original.routes
    assert [(i.name, i.mac, i.sandbox) for i in back.interfaces] == [
        (i.name, i.mac, i.sandbox) for i in original.interfaces
    ]
    assert [i.mtu for i in back.interfaces] == ([1440, 1440] if version == "1.1.0" else [0, 0])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_render_of_empty_result(version):
    out = Result().to_dict(version)
    assert out["cniVersion"] == version
    assert out["dns"] == {}
    if version in LEGACY:
        assert "ip4" not in out and "ip6" not in out
    else:
        assert out["ips"] == []
        assert "interfaces" not in out and "routes" not in out


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_v6_only_result(version):
    result = Result(ips=[IPConfig("fd00::1/128")], routes=[Route("::/0", "fe80::1")])
    out = result.to_dict(version)
    if version in LEGACY:
        assert "ip4" not in out
        assert out["ip6"] == {"ip": "fd00::1/128", "routes": [{"dst": "::/0", "gw": "fe80::1"}]}
    else:
        assert out["ips"][0]["address"] == "fd00::1/128"
    assert Result.from_dict(out).ips[0].address == "fd00::1/128"


# --- reading results written by others ------------------------------------------------------


def test_from_dict_reads_a_0_2_0_result_from_another_plugin():
    data = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "dns": {},
    }
    got = Result.from_dict(data)
    assert got.ips == [IPConfig("10.1.2.3/24", "10.1.2.1")]
    assert got.routes == [Route("0.0.0.0/0")]


def test_from_dict_reads_a_0_3_1_result_with_version_fields():
    data = {
        "cniVersion": "0.3.1",
        "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
        "ips": [{"version": "4", "address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
    }
    got = Result.from_dict(data)
    assert got.interfaces == [Interface("eth0", "", "/proc/1/ns/net", 0)]
    assert got.ips == [IPConfig("10.1.2.3/24", "10.1.2.1", 0)]
    assert got.routes == [] and got.dns == {}


def test_from_dict_of_interfaces_only():
    got = Result.from_dict({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]})
    assert got.interfaces == [Interface("eth0")]
    assert got.ips == []


def test_ipconfig_and_route_family():
    assert IPConfig("10.0.0.1/32").family == 4
    assert IPConfig("fd00::1/128").family == 6
    assert Route("0.0.0.0/0").family == 4
    assert Route("::/0").family == 6


@pytest.mark.parametrize(
    "junk",
    [
        None,
        [],
        "a string",
        42,
        {"ips": [{"gateway": "10.0.0.1"}]},  # ips entry without address
        {"ips": "10.0.0.1/32"},
        {"ips": [None]},
        {"interfaces": [{"mac": "aa:bb:cc:dd:ee:ff"}]},  # interface without name
        {"interfaces": [{"name": "eth0", "mtu": "big"}]},
        {"ips": [], "routes": [{"gw": "10.0.0.1"}]},  # route without dst
        {"ip4": {"gateway": "10.0.0.1"}},  # legacy without ip
        {"ip4": "10.0.0.1/32"},
        {"ip6": {"ip": "fd00::1/128", "routes": [{"gw": "fe80::1"}]}},
        {"ips": [], "dns": "8.8.8.8"},
        {"ips": [], "dns": [1, 2]},
    ],
)
def test_from_dict_raises_on_junk(junk):
    with pytest.raises((KeyError, TypeError, ValueError)):
        Result.from_dict(junk)


@pytest.mark.parametrize("address", ["not-an-address", 5, "10.0.0.300/32"])
def test_from_dict_rejects_an_address_that_is_not_a_cidr(address):
    with pytest.raises((KeyError, TypeError, ValueError)):
        Result.from_dict({"cniVersion": "1.0.0", "ips": [{"address": address}]})
