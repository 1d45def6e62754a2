"""calico-node's policy over its lifecycle: a restart opens no gap, an etcd outage keeps the rules in
force, and `calico-node --cleanup` leaves a node's iptables and ipsets exactly as they were."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from tests.integration.cluster import checked_cluster
from tests.integration.test_policy import (
    JUMP,
    add_pod,
    eventually,
    expect,
    node_save,
    normalised,
    ping,
    put_policy,
    reach,
    start_nodes,
    wep_key,
)
from tests.lab import Lab, add_pool, plugin_dir, wait_for


@pytest.fixture
def cluster(lab, etcd):
    yield from checked_cluster(lab, etcd)


def test_rules_survive_a_calico_node_restart_without_a_gap(cluster):
    start_nodes(cluster, "10.73.0.0/16")
    # Client and server share node2, so the flow depends on policy alone: across nodes it also rides
    # BIRD's routes, which a restarted BIRD withdraws for a moment (a routing matter, not policy's).
    client, _ = add_pod(cluster, "node2")
    server, server_ip = add_pod(cluster, "node2")
    outsider, _ = add_pod(cluster, "node1", network="outsiders")  # must stay shut out throughout
    ifaces = [cluster.etcd.get_json(wep_key(cluster, p))["spec"]["interfaceName"] for p in (client, server)]
    eventually(lambda: ping(client, server_ip), timeout=30)
    lab = cluster.lab
    lab.procs.append(subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: ":5201" in Lab.in_ns(server, "ss", "-ltn").stdout, 10, "iperf3 server")
    samples: list[str] = []
    blocked: list[bool] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(node_save(cluster, "node2"))
            time.sleep(0.02)

    def knock() -> None:
        while not done.is_set():
            blocked.append(not ping(outsider, server_ip, timeout=1))

    threads = [threading.Thread(target=sample), threading.Thread(target=knock)]
    client_run = subprocess.Popen(["ip", "netns", "exec", client, "iperf3", "-c", server_ip, "-t", "8", "-J"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        cluster.calico["node2"].stop(graceful=True)  # SIGTERM
        time.sleep(1)
        restarted = cluster.start("node2")
        wait_for(lambda: "policy applied" in restarted.log(), 20, "the restarted calico-node to apply its policy")
        out, _ = client_run.communicate(timeout=30)
    finally:
        done.set()
        for t in threads:
            t.join()
    intervals = [i["sum"]["bytes"] for i in json.loads(out)["intervals"]]
    assert len(intervals) >= 7 and min(intervals) > 0, intervals
    assert len(samples) > 20
    assert all(JUMP in s and f":cali-fw-{ifaces[0]} " in s and f":cali-tw-{ifaces[1]} " in s for s in samples)
    assert blocked and all(blocked), blocked


def test_cleanup_restores_iptables_and_ipsets(cluster):
    add_pool(cluster.etcd, "pool", "10.74.0.0/16", 26)
    cluster.add_node(1, start=False)
    cluster.add_node(2, start=False)
    ns1 = cluster.ns["node1"]
    for cmd in (["iptables", "-N", "site-chain"], ["iptables", "-A", "site-chain", "-p", "tcp", "--dport", "22",
                                                   "-j", "ACCEPT"],
                ["iptables", "-A", "FORWARD", "-s", "203.0.113.0/24", "-j", "site-chain"],
                ["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"],
                ["ipset", "create", "site-set", "hash:ip"]):
        Lab.in_ns(ns1, *cmd, check=True)
    before = {n: normalised(node_save(cluster, n)) for n in ("node1", "node2")}
    sets_before = {n: Lab.in_ns(cluster.ns[n], "ipset", "list", "-n").stdout for n in ("node1", "node2")}
    assert before["node2"] == [] and "site-set" in sets_before["node1"]
    for name in ("node1", "node2"):
        cluster.start(name)
    cluster.wait_established()
    a, a_ip = add_pod(cluster, "node1", "tenant-a")
    b, _ = add_pod(cluster, "node2", "tenant-b")
    eventually(lambda: "cali-tw-" in node_save(cluster, "node1") and "cali-tw-" in node_save(cluster, "node2"))
    forward = [line for line in node_save(cluster, "node1").splitlines() if line.startswith("-A FORWARD")]
    assert forward[0] == JUMP and "site-chain" in forward[1]
    assert not ping(b, a_ip)
    for name in ("node1", "node2"):
        cluster.calico[name].stop(graceful=True)
        assert JUMP in node_save(cluster, name)  # a stopped calico-node leaves its rules in place
        run = Lab.in_ns(cluster.ns[name], os.path.join(plugin_dir(), "calico-node"), "--cleanup")
        assert run.returncode == 0 and "removed chain: cali-FORWARD" in run.stdout, run.stderr
        assert normalised(node_save(cluster, name)) == before[name]
        assert Lab.in_ns(cluster.ns[name], "ipset", "list", "-n").stdout == sets_before[name]
    assert ping(b, a_ip)  # with our rules gone the tenants meet: the drops were ours


def test_rules_stay_in_force_through_an_etcd_outage_and_follow_changes_after(lab):
    etcd = lab.etcd()  # a private etcd: this test stops it
    gen = checked_cluster(lab, etcd)
    cluster = next(gen)
    try:
        start_nodes(cluster, "10.75.0.0/16")
        a1, a1_ip = add_pod(cluster, "node1", "tenant-a")
        a2, _ = add_pod(cluster, "node2", "tenant-a")
        b2, _ = add_pod(cluster, "node2", "tenant-b")
        checks = [(ping, a2, a1_ip, 1), (ping, b2, a1_ip, 1)]
        expect(checks, [True, False], timeout=30)
        before = node_save(cluster, "node1")
        etcd.proc.send_signal(15)
        etcd.proc.wait(10)
        wait_for(lambda: "etcd unavailable" in cluster.calico["node1"].log(), 20, "calico-node to notice")
        assert reach(checks) == [True, False]
        assert normalised(node_save(cluster, "node1")) == normalised(before)  # nothing flushed meanwhile
        etcd.start()
        # tenant-b may now reach tenant-a: a change made after the outage is programmed.
        put_policy(etcd, "b-to-a", {"order": 1, "selector": "has(tenant-a)", "ingress": [
            {"action": "Allow", "source": {"selector": "has(tenant-b)"}}]})
        expect(checks, [False, True], timeout=30)  # selected now: only its rule allows
    finally:
        next(gen, None)
        etcd.stop()
