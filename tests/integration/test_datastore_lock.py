"""Calico's datastore lock (`calicoctl datastore migrate lock`: ClusterInformation datastoreReady false)
stops the CNI plugin and calico-node as it stops Calico's, on real namespaces, etcd and iptables.

The plugin refuses ADD, DEL and CHECK with Calico's message and CNI code 11 (try again later), leaving
nothing behind; calico-node keeps the kernel as it is, programs no change and reports not ready until
the lock lifts, then programs what changed meanwhile."""

from __future__ import annotations

import time

from tests.integration.cluster import SETTLE
from tests.integration.test_calicoctl import run
from tests.integration.test_node_operable import _probe
from tests.integration.test_policy import add_pod, put_policy
from tests.lab import Lab, add_pool, wait_for

NOT_READY = "Calico is currently not ready to process requests"


def test_a_locked_datastore_stops_the_plugin_and_calico_node(cluster, etcd):
    add_pool(etcd, "pool", "10.86.0.0/16", 26)
    cluster.mesh(2)
    pod1, a1 = add_pod(cluster, "node1")
    pod2, a2 = add_pod(cluster, "node2")
    assert cluster.lab.ping(pod1, a2, within=SETTLE)
    wait_for(lambda: _probe(cluster, "node1", "-felix-ready").returncode == 0, 30, "node1 ready")
    handles = set(etcd.keys("/calico/ipam/v2/handle/"))
    endpoints = set(etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/"))

    assert run(etcd, "datastore", "migrate", "lock").returncode == 0
    wait_for(lambda: _probe(cluster, "node1", "-felix-ready").returncode != 0, 20, "node1 not ready while locked")
    assert "datastore locked" in _probe(cluster, "node1", "-felix-ready").stdout + \
        _probe(cluster, "node1", "-felix-ready").stderr

    # The plugin: ADD refused, nothing left behind (no link, no address, no endpoint).
    pod3 = cluster.pod()
    links = cluster.lab.in_ns(cluster.ns["node1"], "ip", "-o", "link").stdout
    refused = Lab.run_plugin(cluster.ns["node1"], "ADD", cluster.conf("node1"), "lockedadd".ljust(20, "0"),
                             Lab.netns_path(pod3))
    assert refused.rc != 0 and refused.out["code"] == 11 and refused.out["msg"] == NOT_READY, refused.stdout
    assert "datastore migrate unlock" in refused.out["details"]
    assert cluster.lab.in_ns(cluster.ns["node1"], "ip", "-o", "link").stdout == links
    assert "eth0" not in cluster.lab.in_ns(pod3, "ip", "-o", "link").stdout
    assert set(etcd.keys("/calico/ipam/v2/handle/")) == handles
    assert set(etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/")) == endpoints
    # ... DEL and CHECK too (kubelet retries them), the existing pod untouched.
    node, ns, cid, _ = cluster.pods[0]
    for command in ("DEL", "CHECK"):
        got = Lab.run_plugin(cluster.ns[node], command, cluster.conf(node), cid, Lab.netns_path(ns))
        assert got.rc != 0 and got.out["code"] == 11 and got.out["msg"] == NOT_READY, (command, got.stdout)
    assert set(etcd.keys("/calico/ipam/v2/handle/")) == handles

    # calico-node: a policy written while locked is not programmed; the traffic it would stop flows.
    def policy_chains() -> list[str]:
        saved = cluster.lab.in_ns(cluster.ns["node2"], "iptables-save", "-t", "filter").stdout
        return [line for line in saved.splitlines() if line.startswith(":cali-pi-")]

    assert policy_chains() == []
    put_policy(etcd, "deny-icmp-to-node2", {"selector": "all()", "types": ["Ingress"],
                                            "ingress": [{"action": "Deny", "protocol": "ICMP"},
                                                        {"action": "Allow"}]})
    time.sleep(2)  # calico-node sees a change within milliseconds: ample time to (wrongly) program it
    assert policy_chains() == []
    assert cluster.lab.ping(pod1, a2, within=SETTLE)

    # Unlocked: the policy is programmed, the node ready, the plugin works again.
    assert run(etcd, "datastore", "migrate", "unlock").returncode == 0
    wait_for(lambda: not cluster.lab.ping(pod1, a2), 20, "the policy written during the lock in force")
    assert len(policy_chains()) == 1
    wait_for(lambda: _probe(cluster, "node1", "-felix-ready").returncode == 0, 20, "node1 ready again")
    again = Lab.run_plugin(cluster.ns["node1"], "ADD", cluster.conf("node1"), "lockedadd".ljust(20, "0"),
                           Lab.netns_path(pod3))
    assert again.rc == 0, again.stdout + again.stderr[-1000:]
    assert Lab.run_plugin(cluster.ns["node1"], "DEL", cluster.conf("node1"), "lockedadd".ljust(20, "0"),
                          Lab.netns_path(pod3)).rc == 0

