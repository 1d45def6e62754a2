"""Prometheus metrics (issue 16 item 2): a real calico-node in a node namespace serves /metrics on Felix's
port; the figures move as pods come and go through its CNI server (requests by command and CNI result
code, latency, etcd round trips), as policy is programmed (Felix's names) and with this node's IPAM (blocks
and addresses in use per pool). FelixConfiguration switches the exporter on and off on another port.
Scraped with curl inside the node's namespace."""

from __future__ import annotations

import re

from tests.integration.cluster import Cluster
from tests.integration.test_policy import put_policy
from tests.lab import Lab, add_pool, wait_for

RES = "/calico/resources/v3/projectcalico.org"


def scrape(cluster: Cluster, node: str, port: int = 9091) -> dict[str, float] | None:
    """`name{labels}` -> value, or None when nothing answers."""
    r = Lab.in_ns(cluster.ns[node], "curl", "-sf", "--max-time", "3", f"http://127.0.0.1:{port}/metrics")
    if r.returncode != 0:
        return None
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def value(cluster: Cluster, node: str, name: str, port: int = 9091) -> float:
    return (scrape(cluster, node, port) or {}).get(name, 0.0)


def test_metrics_move_as_pods_come_and_go(cluster, etcd, lab):
    add_pool(etcd, "pool", "10.96.0.0/16", 26)
    cluster.add_node(1, FELIX_PROMETHEUSMETRICSENABLED="true")
    node = cluster.calico["node1"]
    wait_for(lambda: scrape(cluster, "node1") is not None, 30, "the metrics endpoint")
    wait_for((node.run_dir / "cni.sock").exists, 30, "the agent's CNI socket")
    env = {"CALICO_RUN_DIR": str(node.run_dir)}
    conf = cluster.conf("node1")
    pods = []
    for i in range(2):
        pod = cluster.pod()
        cid = f"metrics{i}".ljust(20, "0")
        run = Lab.run_plugin(cluster.ns["node1"], "ADD", conf, cid, Lab.netns_path(pod), extra_env=env)
        assert run.rc == 0, run.stderr[-2000:]
        pods.append((cid, pod))
    bad = Lab.run_plugin(cluster.ns["node1"], "ADD", cluster.conf("node1", ipam={"type": "calico-ipam",
                                                                                "ipv4_pools": ["nope"]}),
                         "metricsbad".ljust(20, "0"), Lab.netns_path(cluster.pod()), extra_env=env)
    assert bad.rc != 0 and bad.out["code"] == 7
    assert node.served("ADD") == 3  # all three went through calico-node's CNI server

    def figures() -> dict[str, float]:
        return scrape(cluster, "node1") or {}

    # The CNI server records a request's figures just after its answer.
    wait_for(lambda: figures().get("felix_active_local_endpoints") == 2 and figures().get(
        'cni_calico_cni_request_seconds_count{command="ADD"}') == 3, 15, "two local endpoints, three ADDs")
    got = figures()
    assert got['cni_calico_cni_requests_total{code="0",command="ADD"}'] == 2
    assert got['cni_calico_cni_requests_total{code="7",command="ADD"}'] == 1
    assert got['cni_calico_cni_request_seconds_count{command="ADD"}'] == 3
    assert got['cni_calico_etcd_round_trips_total{process="cni-server"}'] >= 6  # 3 per successful ADD
    assert got['cni_calico_ipam_addresses_in_use{pool="pool"}'] == 2
    assert got['cni_calico_ipam_blocks{pool="pool"}'] == 1
    assert got["felix_resyncs_started_total"] >= 1 and got["felix_iptables_restore_calls_total"] >= 1
    assert got["felix_active_local_policies"] == 0
    restores = got["felix_iptables_restore_calls_total"]

    put_policy(etcd, "all", {"selector": "all()", "ingress": [{"action": "Allow"}]})
    wait_for(lambda: figures().get("felix_active_local_policies") == 1, 15, "one local policy")
    assert figures()["felix_iptables_restore_calls_total"] > restores
    assert figures()["felix_int_dataplane_apply_time_seconds_count"] >= 1

    cid, pod = pods[0]
    run = Lab.run_plugin(cluster.ns["node1"], "DEL", conf, cid, Lab.netns_path(pod), extra_env=env)
    assert run.rc == 0, run.stderr[-2000:]
    wait_for(lambda: figures().get("felix_active_local_endpoints") == 1 and figures().get(
        'cni_calico_cni_requests_total{code="0",command="DEL"}') == 1, 15, "one local endpoint left, one DEL")
    got = figures()
    assert got['cni_calico_cni_requests_total{code="0",command="DEL"}'] == 1
    assert got['cni_calico_ipam_addresses_in_use{pool="pool"}'] == 1


def test_felixconfiguration_switches_the_exporter_and_its_port(cluster, etcd):
    add_pool(etcd, "pool", "10.97.0.0/16", 26)
    cluster.add_node(1)
    wait_for(lambda: "calico-node running" in cluster.calico["node1"].log(), 30, "calico-node to start")
    assert scrape(cluster, "node1") is None  # off by default, as Felix

    def felix(spec: dict) -> None:
        etcd.put_json(f"{RES}/felixconfigurations/default", {
            "kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "default"},
            "spec": spec})

    felix({"prometheusMetricsEnabled": True, "prometheusMetricsPort": 9095})
    wait_for(lambda: scrape(cluster, "node1", 9095) is not None, 15, "metrics on 9095")
    assert value(cluster, "node1", "felix_resyncs_started_total", 9095) >= 1
    felix({"prometheusMetricsEnabled": False})
    wait_for(lambda: scrape(cluster, "node1", 9095) is None, 15, "the exporter to stop")


def test_a_bad_metrics_variable_stops_calico_node_naming_it(cluster, etcd):
    cluster.add_node(1, FELIX_PROMETHEUSMETRICSPORT="99999")
    proc = cluster.calico["node1"].proc
    proc.wait(60)
    assert proc.returncode != 0
    assert "FELIX_PROMETHEUSMETRICSPORT='99999' is not a port (1 to 65535)" in cluster.calico["node1"].log()
