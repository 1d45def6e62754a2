"""Network policy over IPv6, enforced by calico-node with ip6tables, with real traffic between dual-stack
pods across simulated nodes: tenant isolation, a NetworkPolicy, family-specific rules, and
`calico-node --cleanup` restoring ip6tables-save.

Every iptables, ip6tables and ipset command runs inside a node namespace; each test also checks that the
machine's own namespace holds no cali chain (of either family) or set.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.cluster import Cluster, checked_cluster
from tests.integration.test_policy import (
    JUMP,
    eventually,
    expect,
    label,
    normalised,
    ping,
    put_policy,
    reach,
    serve,
    tcp,
)
from tests.lab import Lab, add_pool, netconf, plugin_dir

DUAL = {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}
ND_RULE = "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT"


@pytest.fixture
def cluster(lab, etcd):
    yield from checked_cluster(lab, etcd)


# --- helpers -----------------------------------------------------------------------------------------


def start(cluster: Cluster, v4: str, v6: str, count: int = 2) -> None:
    """Pools and ``count`` dual-stack nodes, their BGP sessions (IPv4 and IPv6) established."""
    add_pool(cluster.etcd, "pool4", v4, 26)
    add_pool(cluster.etcd, "pool6", v6, 122)
    for i in range(1, count + 1):
        cluster.add_node(i, IP6=f"fd00:200::{i}/64")
    cluster.wait_established()


def add_pod(cluster: Cluster, node: str, network: str = "k8s") -> tuple[str, str, str]:
    """A dual-stack pod of ``network`` on ``node``: (netns, IPv4 address, IPv6 address)."""
    ns = cluster.pod()
    cid = f"{node}z{len(cluster.pods):03d}".ljust(20, "0")
    run = Lab.run_plugin(cluster.ns[node], "ADD", netconf(cluster.etcd, name=network, node=node, ipam=DUAL), cid,
                         Lab.netns_path(ns))
    assert run.rc == 0, run.stdout + run.stderr[-1000:]
    v4, v6 = (next(ip["address"].split("/")[0] for ip in run.out["ips"] if (":" in ip["address"]) == six)
              for six in (False, True))
    cluster.pods.append((node, ns, cid, v4))
    return ns, v4, v6


def tcp6(src: str, address: str, port: int, timeout: float = 2) -> bool:
    return tcp(src, f"[{address}]", port, timeout)


def save6(cluster: Cluster, node: str) -> str:
    return Lab.in_ns(cluster.ns[node], "ip6tables-save").stdout


# --- tests -------------------------------------------------------------------------------------------


def test_two_tenants_are_isolated_over_ipv6_within_and_across_nodes(cluster):
    start(cluster, "10.76.0.0/16", "fd00:76::/64")
    pods = {
        "a1": add_pod(cluster, "node1", "tenant-a"), "a2": add_pod(cluster, "node2", "tenant-a"),
        "a3": add_pod(cluster, "node1", "tenant-a"),
        "b1": add_pod(cluster, "node1", "tenant-b"), "b2": add_pod(cluster, "node2", "tenant-b"),
    }
    for ns, _, _ in pods.values():
        serve(cluster.lab, ns, 8080, listen="TCP6-LISTEN")
    same = [(s, d) for s in pods for d in pods if s != d and s[0] == d[0]]
    cross = [(s, d) for s in pods for d in pods if s[0] != d[0]]
    for s, d in same:  # routes (BIRD's IPv6 ones across nodes) and rules settle
        eventually(lambda s=s, d=d: ping(pods[s][0], pods[d][2]), timeout=30)
    pairs = same + cross
    expected = [True] * len(same) + [False] * len(cross)
    checks = ([(tcp6, pods[s][0], pods[d][2], 8080) for s, d in pairs] + [(ping, pods[s][0], pods[d][2])
                                                                          for s, d in pairs]
              + [(ping, pods[s][0], pods[d][1]) for s, d in pairs])  # IPv4 as well: the same picture
    got = reach(checks)
    n = len(pairs)
    for what, part in (("tcp6", got[:n]), ("ping -6", got[n:2 * n]), ("ping", got[2 * n:])):
        assert part == expected, (what, [(p, g) for p, g, e in zip(pairs, part, expected, strict=True) if g != e])
    for node in ("node1", "node2"):
        save = save6(cluster, node)
        assert save.count("-j cali-FORWARD") == 1 and JUMP in save
        assert f"-A cali-from-wl-dispatch {ND_RULE}" in save and f"-A cali-to-wl-dispatch {ND_RULE}" in save
        assert "-A cali-pri-tenant-a -m set --match-set cali60s:" in save
        sets = Lab.in_ns(cluster.ns[node], "ipset", "list", "-n").stdout.split()
        v6_sets = [s for s in sets if s.startswith("cali60")]
        assert v6_sets and all(s.startswith(("cali40", "cali60")) and len(s) <= 31 for s in sets)
        listing = Lab.in_ns(cluster.ns[node], "ipset", "list", v6_sets[0]).stdout
        assert "family inet6" in listing


def test_network_policy_over_ipv6_with_family_specific_rules(cluster):
    start(cluster, "10.77.0.0/16", "fd00:77::/64")
    fe, _, _ = add_pod(cluster, "node1")
    other, _, _ = add_pod(cluster, "node1")
    db, db4, db6 = add_pod(cluster, "node2")
    serve(cluster.lab, db, 5432, 6000, listen="TCP6-LISTEN")
    eventually(lambda: tcp6(other, db6, 5432), timeout=30)  # no policy yet: the profile lets all of k8s in
    label(cluster, fe, role="frontend")
    label(cluster, other, role="other")
    label(cluster, db, role="db")
    put_policy(cluster.etcd, "db", {"selector": "role == 'db'", "types": ["Ingress"], "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'frontend'"},
         "destination": {"ports": [5432]}},
        # Family-specific rules: each only in its own table.
        {"action": "Allow", "ipVersion": 4, "protocol": "TCP", "source": {"selector": "role == 'other'"},
         "destination": {"ports": [6000]}},
        {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}, "source": {"selector": "role == 'frontend'"}},
    ]}, namespace="default")
    eventually(lambda: tcp6(other, db6, 5432, timeout=1), expected=False)
    checks = [(tcp6, fe, db6, 5432), (tcp6, fe, db6, 6000), (tcp6, other, db6, 5432), (ping, fe, db6),
              (tcp, fe, db4, 5432), (tcp, fe, db4, 6000), (tcp, other, db4, 5432), (ping, fe, db4),
              (tcp, other, db4, 6000), (tcp6, other, db6, 6000), (ping, other, db6)]
    expect(checks, [True, False, False, True, True, False, False, False, True, False, False])
    save = save6(cluster, "node2")
    assert "-m icmp6 --icmpv6-type 128 " in save and "--dports 6000" not in save
    assert "--dports 6000" in Lab.in_ns(cluster.ns["node2"], "iptables-save").stdout
    # Relabelling works over IPv6 as over IPv4.
    label(cluster, other, role="frontend")
    eventually(lambda: tcp6(other, db6, 5432, timeout=0.5))


def test_cleanup_restores_ip6tables_and_ipsets(cluster):
    add_pool(cluster.etcd, "pool4", "10.78.0.0/16", 26)
    add_pool(cluster.etcd, "pool6", "fd00:78::/64", 122)
    cluster.add_node(1, start=False)
    cluster.add_node(2, start=False)
    ns1 = cluster.ns["node1"]
    for cmd in (["ip6tables", "-N", "site-chain"],
                ["ip6tables", "-A", "site-chain", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
                ["ip6tables", "-A", "FORWARD", "-s", "2001:db8::/64", "-j", "site-chain"],
                ["ip6tables", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
                ["ipset", "create", "site-set6", "hash:ip", "family", "inet6"]):
        Lab.in_ns(ns1, *cmd, check=True)
    names = ("node1", "node2")
    tables = {n: [normalised(Lab.in_ns(cluster.ns[n], tool).stdout) for tool in ("iptables-save", "ip6tables-save")]
              for n in names}
    sets_before = {n: Lab.in_ns(cluster.ns[n], "ipset", "list", "-n").stdout for n in names}
    assert tables["node2"] == [[], []] and "site-chain" in str(tables["node1"][1])
    for i, name in enumerate(names, 1):
        cluster.start(name, IP6=f"fd00:200::{i}/64")
    cluster.wait_established()
    a, _, a6 = add_pod(cluster, "node1", "tenant-a")
    b, _, _ = add_pod(cluster, "node2", "tenant-b")
    eventually(lambda: all("cali-tw-" in save6(cluster, n) for n in names))
    forward = [line for line in save6(cluster, "node1").splitlines() if line.startswith("-A FORWARD")]
    assert forward[0] == JUMP and "site-chain" in forward[1]
    assert not ping(b, a6)
    for name in names:
        cluster.calico[name].stop(graceful=True)
        assert JUMP in save6(cluster, name)  # a stopped calico-node leaves its rules in place
        run = Lab.in_ns(cluster.ns[name], os.path.join(plugin_dir(), "calico-node"), "--cleanup")
        assert run.returncode == 0, run.stderr
        assert "removed chain: cali-FORWARD" in run.stdout and "removed ip6 chain: cali-FORWARD" in run.stdout
        assert "removed ipset: cali60" in run.stdout
        assert [normalised(Lab.in_ns(cluster.ns[name], tool).stdout)
                for tool in ("iptables-save", "ip6tables-save")] == tables[name]
        assert Lab.in_ns(cluster.ns[name], "ipset", "list", "-n").stdout == sets_before[name]
    assert Lab.in_ns(cluster.ns["node2"], "ip6tables-save").stdout == ""  # the ip6 filter table is gone again
    eventually(lambda: ping(b, a6))  # with our rules gone the tenants meet: the drops were ours
