"""Named ports enforced by calico-node, with real TCP between dual-stack pods across simulated nodes: a
policy allowing a port by name opens it on the pods that declare that name (their WorkloadEndpoint's
`ports`), at the port each declares, in both families, and follows a pod that moves the name to
another port.

Every iptables, ip6tables and ipset command runs inside a node namespace; the machine's own namespace
holds no cali chain or set afterwards (the cluster fixture checks).
"""

from __future__ import annotations

import pytest

from tests.integration.cluster import Cluster, checked_cluster
from tests.integration.test_policy import expect, put_policy, serve, tcp, wep_key
from tests.integration.test_policy_ipv6 import add_pod, start, tcp6
from tests.lab import Lab


@pytest.fixture
def cluster(lab, etcd):
    yield from checked_cluster(lab, etcd)  # the machine's own iptables, ip6tables and ipsets stay untouched


def declare(cluster: Cluster, pod_ns: str, ports: list[dict]) -> None:
    """The pod's WorkloadEndpoint declares ``ports`` (as the plugin writes a pod's container ports)."""
    key = wep_key(cluster, pod_ns)
    wep = cluster.etcd.get_json(key)
    wep["spec"]["ports"] = [{"name": p["name"], "protocol": "TCP", "port": p["port"], "hostPort": 0, "hostIP": ""}
                            for p in ports]
    cluster.etcd.put_json(key, wep)


def test_a_named_port_opens_where_it_is_declared_in_both_families(cluster):
    start(cluster, "10.74.0.0/16", "fd00:74::/112")
    client, _, _ = add_pod(cluster, "node1")
    web, web4, web6 = add_pod(cluster, "node2")  # declares http = 8080
    plain, plain4, plain6 = add_pod(cluster, "node2")  # declares nothing, serves the same ports
    for pod in (web, plain):
        serve(cluster.lab, pod, 8080, 9090, listen="TCP6-LISTEN")
    checks = [(tcp, client, web4, 8080, 1), (tcp, client, web4, 9090, 1), (tcp, client, plain4, 8080, 1),
              (tcp6, client, web6, 8080, 1), (tcp6, client, web6, 9090, 1), (tcp6, client, plain6, 8080, 1)]
    expect(checks, [True] * 6, timeout=30)  # no policy yet: the profile lets all of k8s in
    declare(cluster, web, [{"name": "http", "port": 8080}])
    put_policy(cluster.etcd, "http-only", {
        "selector": "all()", "types": ["Ingress"],
        "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}],
    }, namespace="default")
    expect(checks, [True, False, False, True, False, False])
    for save, family in ((Lab.in_ns(cluster.ns["node2"], "iptables-save").stdout, "cali40n:"),
                         (Lab.in_ns(cluster.ns["node2"], "ip6tables-save").stdout, "cali60n:")):
        assert f"-p tcp -m set --match-set {family}" in save and " dst,dst -j MARK" in save
    saved = Lab.in_ns(cluster.ns["node2"], "ipset", "save").stdout
    assert f"{web4},tcp:8080" in saved and f"{web6},tcp:8080" in saved and f"{plain4}," not in saved
    assert "hash:ip,port family inet " in saved and "hash:ip,port family inet6 " in saved
    # The pod moves the name to another port: only the set's members change.
    declare(cluster, web, [{"name": "http", "port": 9090}])
    expect(checks, [False, True, False, False, True, False])
