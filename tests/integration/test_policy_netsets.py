"""GlobalNetworkSet and NetworkSet in policy (issue 15 item 2), with real calico-node, iptables, ipsets and
traffic between pod namespaces on two nodes: a rule's selector matches a network set's nets by its labels;
a NetworkSet counts only for its own namespace's NetworkPolicies, a GlobalNetworkSet for a NetworkPolicy
only through `namespaceSelector: global()` (and for GlobalNetworkPolicies); every change takes effect
without a restart, and moves only the set's own members."""

from __future__ import annotations

from tests.integration.test_policy import add_pod, expect, put_policy, serve, start_nodes, tcp
from tests.lab import Lab

RES = "/calico/resources/v3/projectcalico.org"


def put_netset(etcd, name: str, nets: list[str], namespace: str = "", **labels: str) -> None:
    kind, plural = ("NetworkSet", "networksets") if namespace else ("GlobalNetworkSet", "globalnetworksets")
    meta = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    key = f"{RES}/{plural}/{namespace}/{name}" if namespace else f"{RES}/{plural}/{name}"
    etcd.put_json(key, {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta,
                        "spec": {"nets": nets}})


def test_network_sets_in_rules_follow_their_nets_labels_and_namespaces(cluster):
    start_nodes(cluster, "10.73.0.0/16")
    server, server_ip = add_pod(cluster, "node2", namespace="prod", pod="server")
    c1, c1_ip = add_pod(cluster, "node1", namespace="prod", pod="c1")
    c2, c2_ip = add_pod(cluster, "node1", namespace="dev", pod="c2")
    serve(cluster.lab, server, 80)
    checks = [(tcp, c1, server_ip, 80, 1), (tcp, c2, server_ip, 80, 1)]
    expect(checks, [True, True], timeout=30)  # profiles only
    etcd = cluster.etcd
    # The server admits only sources a network set labelled trusted holds, from its own namespace's sets
    # and from global ones.
    put_policy(etcd, "trusted-only", {"selector": "all()", "ingress": [
        {"action": "Allow", "source": {"selector": "trust == 'yes'"}},
        {"action": "Allow", "source": {"selector": "trust == 'yes'", "namespaceSelector": "global()"}}]},
               namespace="prod")
    expect(checks, [False, False])
    put_netset(etcd, "friends", [f"{c1_ip}/32"], namespace="prod", trust="yes")
    expect(checks, [True, False])
    put_netset(etcd, "friends", [f"{c1_ip}/32", "10.73.0.0/16"], namespace="dev", trust="yes")  # not prod's
    expect(checks, [True, False])
    put_netset(etcd, "everyone", ["10.73.0.0/16"], trust="yes")  # global: through global()
    expect(checks, [True, True])
    put_netset(etcd, "everyone", ["10.73.0.0/16"], trust="no")  # relabelled: out of the selector
    expect(checks, [True, False])
    put_netset(etcd, "friends", [c2_ip], namespace="prod", trust="yes")  # nets changed in place
    expect(checks, [False, True])
    etcd.ctl("del", f"{RES}/networksets/prod/friends")
    expect(checks, [False, False])
    # The kernel holds the nets in a hash:net selector set, beside the endpoints' addresses.
    put_netset(etcd, "everyone", ["10.73.0.0/16", "198.51.100.7/32"], trust="yes")
    expect(checks, [True, True])
    saved = Lab.in_ns(cluster.ns["node2"], "ipset", "save").stdout
    members = {line.split()[2] for line in saved.splitlines() if line.startswith("add cali40s:")}
    assert {"10.73.0.0/16", "198.51.100.7"} <= members, saved
    assert all(line.split()[2] == "hash:net" for line in saved.splitlines() if line.startswith("create cali40s:"))


def test_network_sets_over_ipv6(cluster):
    from tests.integration.test_policy_ipv6 import add_pod as add_dual_pod
    from tests.integration.test_policy_ipv6 import start, tcp6

    start(cluster, "10.74.0.0/16", "fd00:74::/64")
    server, _, server6 = add_dual_pod(cluster, "node2")
    c1, _, c1_6 = add_dual_pod(cluster, "node1")
    c2, _, c2_6 = add_dual_pod(cluster, "node1")
    serve(cluster.lab, server, 80, listen="TCP6-LISTEN")
    checks = [(tcp6, c1, server6, 80, 1), (tcp6, c2, server6, 80, 1)]
    expect(checks, [True, True], timeout=30)
    put_policy(cluster.etcd, "v6-trusted", {"selector": "all()", "ingress": [
        {"action": "Allow", "source": {"selector": "trust == 'yes'"}}]})
    expect(checks, [False, False])
    put_netset(cluster.etcd, "v6-friends", [f"{c1_6}/128"], trust="yes")  # a full-length IPv6 net
    expect(checks, [True, False])
    put_netset(cluster.etcd, "v6-friends", ["fd00:74::/64"], trust="yes")
    expect(checks, [True, True])
    saved = Lab.in_ns(cluster.ns["node2"], "ipset", "save").stdout
    assert any(line.startswith("add cali60s:") and line.endswith(" fd00:74::/64") for line in saved.splitlines())
