"""Dual-stack: IPv6 pods beside IPv4 ones, on one node and across nodes through BIRD's IPv6 sessions."""

from __future__ import annotations

import ipaddress
import re

import pytest

from cni_calico.result import SUPPORTED_VERSIONS
from tests.integration.cluster import SETTLE, Cluster
from tests.integration.helpers import assert_nothing_left
from tests.lab import Lab, add_pool, plugin_dir, wait_for

DUAL = {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
V6_ONLY = {"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": "true"}


def _ips(out: dict) -> list[str]:
    if "ips" in out:
        return [ip["address"] for ip in out["ips"]]
    return [out[k]["ip"] for k in ("ip4", "ip6") if k in out]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_dual_stack_result_shapes_and_dataplane(version, lab, node, make_pod, conf, etcd):
    add_pool(etcd, "v4", "10.110.0.0/24")
    add_pool(etcd, "v6", "fd00:110::/64", 122)
    pods = [make_pod(), make_pod()]
    netconf = conf(version=version, ipam=DUAL)
    outs = []
    cids = [f"ds{i}{version.replace('.', '')}".ljust(20, "0") for i in range(2)]
    for cid, pod in zip(cids, pods, strict=True):
        run = Lab.run_plugin(node, "ADD", netconf, cid, Lab.netns_path(pod))
        assert run.rc == 0, run.stdout + run.stderr[-600:]
        outs.append(run.out)
    out = outs[0]
    if version in ("0.1.0", "0.2.0"):
        assert out["ip6"]["ip"].endswith("/128") and out["ip4"]["ip"].endswith("/32")
        assert out["ip6"]["routes"] == [{"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}]
    else:
        v4, v6 = out["ips"]
        assert v4["address"].endswith("/32") and v6["address"].endswith("/128")
        if version.startswith("0."):
            assert (v4["version"], v6["version"]) == ("4", "6")
        else:
            assert "version" not in v6
        assert {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"} in out["routes"]
    a6 = [a.split("/")[0] for a in _ips(outs[1]) if ":" in a][0]
    routes6 = lab.in_ns(pods[0], "ip", "-6", "route").stdout
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in routes6
    host = lab.in_ns(node, "ip", "-6", "route").stdout
    assert re.search(rf"^{re.escape(a6)} dev cali\w+ ", host, re.M)
    assert lab.in_ns(pods[0], "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6").stdout.strip() == "0"
    assert lab.ping(pods[0], a6)
    for cid, pod in zip(cids, pods, strict=True):
        assert Lab.run_plugin(node, "DEL", netconf, cid, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)
    assert etcd.keys("/calico/ipam/v2/handle/") == []


def test_exhausting_one_family_leaves_nothing_of_the_other(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "v4", "10.111.0.0/24")
    add_pool(etcd, "v6-tiny", "fd00:111::/127", 127)  # two addresses
    netconf = conf(ipam=DUAL)
    pods = [make_pod() for _ in range(3)]
    for i in range(2):
        assert Lab.run_plugin(node, "ADD", netconf, f"ex{i}".ljust(16, "0"), Lab.netns_path(pods[i])).rc == 0
    full = Lab.run_plugin(node, "ADD", netconf, "ex2".ljust(16, "0"), Lab.netns_path(pods[2]))
    assert full.rc != 0 and full.out["code"] == 101 and "IPv6" in full.out["msg"]
    assert etcd.keys("/calico/ipam/v2/handle/net1.ex2") == []
    v4_block = etcd.get_json("/calico/ipam/v2/assignment/ipv4/block/10.111.0.0-26")
    assert sum(a is not None for a in v4_block["allocations"]) == 2  # the third pod's IPv4 address went back
    for i in range(2):
        assert Lab.run_plugin(node, "DEL", netconf, f"ex{i}".ljust(16, "0"), Lab.netns_path(pods[i])).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_ipv6_across_nodes_through_bird(lab, etcd):
    add_pool(etcd, "v4", "10.112.0.0/16", 26)
    add_pool(etcd, "v6", "fd00:112::/64", 122)
    cluster = Cluster(lab, etcd)
    try:
        for i in (1, 2):
            cluster.add_node(i, IP6=f"fd00:200::{i}/64")
        cluster.wait_established()
        states = cluster.bgp_states("node1")
        assert states == {"Mesh_192_168_200_2": "Established", "Mesh_fd00_200__2": "Established"}
        pod1, _ = cluster.add_pod("node1", ipam=V6_ONLY)
        dual2, _ = cluster.add_pod("node2", ipam=DUAL)
        v6_of = {}
        for _, pod, _, _ in cluster.pods:
            out = lab.in_ns(pod, "ip", "-6", "-o", "addr", "show", "eth0", "scope", "global").stdout
            v6_of[pod] = out.split()[3].split("/")[0]
        block2 = str(ipaddress.ip_network(f"{v6_of[dual2]}/122", strict=False))

        def routed() -> bool:
            routes = lab.in_ns(cluster.ns["node1"], "ip", "-6", "route").stdout
            return bool(re.search(rf"^{re.escape(block2)} via fd00:200::2 ", routes, re.M))

        wait_for(routed, 30, f"node1's IPv6 route to {block2}")
        assert lab.ping(pod1, v6_of[dual2], within=SETTLE) and lab.ping(dual2, v6_of[pod1], within=SETTLE)
        run_dir = f"CALICO_RUN_DIR={cluster.calico['node1'].run_dir}"
        ctl = f"{plugin_dir()}/calicoctl"
        status = lab.in_ns(cluster.ns["node1"], "env", run_dir, ctl, "node", "status").stdout
        assert "IPv6 BGP status" in status and "fd00:200::2" in status
    finally:
        cluster.close()
