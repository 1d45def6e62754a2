"""A workload's traffic to its own host, as Felix polices it (cali-INPUT -> cali-wl-to-host), with real
TCP and ping between real namespaces, IPv4 and IPv6: servers listen in node1's own namespace (the pods'
host), a pod on node1 talks to them.

- Return (what Calico's start-up writes into node.<name>): the pod reaches its host, and now an egress
  policy of the pod denying a port stops that port (the workload's egress policy applies to host traffic);
  a DROP rule of the host's own at the end of INPUT applies after ours.
- Drop: nothing the pod sends its host arrives, while pod-to-pod traffic across nodes and the pod's IPv6
  neighbour discovery with its gateway still work.
- Accept: the host's own DROP rule is bypassed (the egress policy still applies).

The value is switched with calicoctl (FelixConfiguration node.node1, then default) and by deleting it, while
calico-node runs: the same process, no restart. FELIX_DEFAULTENDPOINTTOHOSTACTION wins over both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.integration.cluster import Cluster
from tests.integration.test_policy import expect, ping, put_policy, reach, serve, tcp
from tests.integration.test_policy_ipv6 import add_pod, tcp6
from tests.lab import Lab, add_pool, plugin_dir

NODE1, NODE1_6 = "192.168.200.1", "fd00:200::1"
OPEN, DENIED = 8080, 8081
HOST_DROP = ("-i", "cali+", "-j", "DROP")  # the host's own rule: what workloads send it is dropped


def calicoctl(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCD_ENDPOINTS": cluster.etcd.url}
    return subprocess.run([os.path.join(plugin_dir(), "calicoctl"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def set_action(cluster: Cluster, name: str, action: str | None) -> None:
    """FelixConfiguration ``name``'s defaultEndpointToHostAction through calicoctl (None: removed)."""
    if calicoctl(cluster, "get", "felixconfiguration", name).returncode != 0:
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": name},
               "spec": {}}
        r = calicoctl(cluster, "create", "-f", "-", stdin=json.dumps(doc))
        assert r.returncode == 0, r.stderr
    r = calicoctl(cluster, "patch", "felixconfiguration", name, "-p",
                  json.dumps({"spec": {"defaultEndpointToHostAction": action}}))
    assert r.returncode == 0, r.stderr


def host_rule(cluster: Cluster, op: str) -> None:
    """Appends (-A) or deletes (-D) the host's own DROP rule at the end of node1's INPUT, both families."""
    for tool in ("iptables", "ip6tables"):
        Lab.in_ns(cluster.ns["node1"], tool, op, "INPUT", *HOST_DROP, check=True)


def setup(cluster: Cluster, v4: str, v6: str, **env: str) -> dict[str, tuple[str, str, str]]:
    add_pool(cluster.etcd, "pool4", v4, 26)
    add_pool(cluster.etcd, "pool6", v6, 122)
    for i in (1, 2):
        cluster.add_node(i, IP6=f"fd00:200::{i}/64", FELIX_IPTABLESREFRESHINTERVAL="1", **env)
    cluster.wait_established()
    pods = {"p1": add_pod(cluster, "node1"), "p2": add_pod(cluster, "node2")}
    serve(cluster.lab, cluster.ns["node1"], OPEN, DENIED, listen="TCP6-LISTEN")
    return pods


def to_host(pods) -> list[tuple]:
    """From the pod on node1 to node1 itself: TCP to OPEN and DENIED (v4, v6), ping (v4, v6)."""
    p1 = pods["p1"][0]
    return [(tcp, p1, NODE1, OPEN), (tcp6, p1, NODE1_6, OPEN), (tcp, p1, NODE1, DENIED),
            (tcp6, p1, NODE1_6, DENIED), (ping, p1, NODE1), (ping, p1, NODE1_6)]


def pod_to_pod(pods) -> list[tuple]:
    (p1, a1, b1), (p2, a2, b2) = pods["p1"], pods["p2"]
    return [(ping, p1, a2), (ping, p2, a1), (ping, p1, b2), (ping, p2, b1)]


def deny_port(cluster: Cluster) -> None:
    """The pods' egress: DENIED refused, the rest allowed."""
    put_policy(cluster.etcd, "no-denied-port", {
        "selector": "has(projectcalico.org/namespace)", "types": ["Egress"],
        "egress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [DENIED]}}, {"action": "Allow"}]})


def stays(checks: list[tuple], expected: list[bool], seconds: float = 3) -> None:
    """The checks still give ``expected`` once calico-node had ``seconds`` to act on a change (it should not)."""
    time.sleep(seconds)
    assert reach(checks) == expected


def saved(cluster: Cluster, *args: str) -> str:
    return Lab.in_ns(cluster.ns["node1"], "iptables-save", *args).stdout + Lab.in_ns(
        cluster.ns["node1"], "ip6tables-save", *args).stdout


def test_return_drop_and_accept_as_felix_switched_without_restart(cluster):
    pods = setup(cluster, "10.92.0.0/16", "fd00:92::/64")
    pid = cluster.calico["node1"].proc.pid
    # Calico's start-up wrote Return into node.node1: the pod reaches its host.
    assert cluster.etcd.get_json("/calico/resources/v3/projectcalico.org/felixconfigurations/node.node1")[
        "spec"]["defaultEndpointToHostAction"] == "Return"
    expect(to_host(pods) + pod_to_pod(pods), [True] * 10)
    text = saved(cluster)
    assert text.count('-A INPUT -m comment --comment "cali:calico-node policy" -j cali-INPUT') == 2, text
    assert '-A cali-wl-to-host -m comment --comment "Configured DefaultEndpointToHostAction" -j RETURN' in text

    # The pod's egress policy now applies to what it sends its host: DENIED is refused, the rest passes.
    deny_port(cluster)
    expect(to_host(pods), [True, True, False, False, True, True], timeout=20)
    # Return: the host's own rules follow ours; its DROP at the end of INPUT stops the rest too.
    host_rule(cluster, "-A")
    expect(to_host(pods), [False] * 6, timeout=20)

    # Accept: the host's own DROP is bypassed, the egress policy still holds.
    set_action(cluster, "node.node1", "Accept")
    expect(to_host(pods), [True, True, False, False, True, True], timeout=20)
    assert "workload to host traffic: Accept after the workload's egress policy (FelixConfiguration" in (
        cluster.calico["node1"].log())
    host_rule(cluster, "-D")

    # Drop: nothing from the pod reaches its host; pods across nodes still talk, also after the pod
    # forgot its gateway's IPv6 address (neighbour discovery with the host is let through).
    set_action(cluster, "node.node1", "Drop")
    expect(to_host(pods), [False] * 6, timeout=20)
    Lab.in_ns(pods["p1"][0], "ip", "-6", "neigh", "flush", "all", check=True)
    expect(pod_to_pod(pods), [True] * 4, timeout=20)
    neighbours = Lab.in_ns(pods["p1"][0], "ip", "-6", "neigh", "show").stdout
    assert "fe80::ecee:eeff:feee:eeee dev eth0 lladdr ee:ee:ee:ee:ee:ee" in neighbours, neighbours

    # node.node1 wins over default field by field; without either, Felix's default is Drop.
    set_action(cluster, "default", "Return")
    stays(to_host(pods), [False] * 6)
    set_action(cluster, "node.node1", None)
    expect(to_host(pods), [True, True, False, False, True, True], timeout=20)
    set_action(cluster, "default", None)
    expect(to_host(pods), [False] * 6, timeout=20)
    set_action(cluster, "node.node1", "Return")
    expect(to_host(pods), [True, True, False, False, True, True], timeout=20)
    assert cluster.calico["node1"].proc.pid == pid and cluster.calico["node1"].proc.poll() is None

    # Drift: the INPUT jump deleted by someone comes back; --cleanup removes it with the chains.
    for tool in ("iptables", "ip6tables"):
        Lab.in_ns(cluster.ns["node1"], tool, "-D", "INPUT", "-m", "comment", "--comment", "cali:calico-node policy",
                  "-j", "cali-INPUT", check=True)
    expect([(lambda: saved(cluster).count("-j cali-INPUT"),)], [2], timeout=20)
    assert "policy drift repaired (IPv6): filter jumps" in cluster.calico["node1"].log()
    expect(to_host(pods), [True, True, False, False, True, True])
    cluster.calico["node1"].stop(graceful=True)
    run = Lab.in_ns(cluster.ns["node1"], f"{plugin_dir()}/calico-node", "--cleanup")
    assert run.returncode == 0 and "chain: cali-wl-to-host" in run.stdout, run.stdout + run.stderr
    assert "cali" not in saved(cluster)


def test_the_environment_wins_over_felix_configuration(cluster):
    pods = setup(cluster, "10.93.0.0/16", "fd00:93::/64", FELIX_DEFAULTENDPOINTTOHOSTACTION="drop")
    expect(pod_to_pod(pods), [True] * 4, timeout=20)
    expect(to_host(pods), [False] * 6)  # though node.node1 says Return
    set_action(cluster, "node.node1", "Accept")
    stays(to_host(pods), [False] * 6)
    assert '-A cali-wl-to-host -m comment --comment "Configured DefaultEndpointToHostAction" -j DROP' in saved(
        cluster)


def test_a_felix_configuration_deleted_while_etcd_was_away_falls_back_after_the_resync(cluster):
    """calico-node's watch breaks (etcd restarted), node.node1 is deleted and etcd compacted meanwhile:
    no deletion event can come, and the fresh snapshot holds no FelixConfiguration at all. calico-node
    must apply what the snapshot says (Felix's default, Drop), not keep the deleted Return."""
    from tests.lab import etcdctl, wait_for

    add_pool(cluster.etcd, "pool4", "10.94.0.0/16", 26)
    cluster.add_node(1)  # its start-up writes node.node1 with Return, which wins
    rule = '-A cali-wl-to-host -m comment --comment "Configured DefaultEndpointToHostAction" -j {}'
    wait_for(lambda: rule.format("RETURN") in saved(cluster, "-t", "filter"), 20, "Return from node.node1")
    etcd, node = cluster.etcd, cluster.calico["node1"].proc
    os.kill(node.pid, signal.SIGSTOP)  # it cannot see the deletion or resume before the compaction
    try:
        etcd.stop()
        etcd.start()  # same data and port: calico-node's watch is broken
        for name in ("node.node1", "default"):
            assert calicoctl(cluster, "delete", "felixconfiguration", name).returncode == 0
        status = json.loads(etcd.ctl("endpoint", "status", "-w", "json"))
        etcdctl(etcd.url, "compaction", str(status[0]["Status"]["header"]["revision"]))
    finally:
        os.kill(node.pid, signal.SIGCONT)
    wait_for(lambda: cluster.calico["node1"].log().count("snapshot of etcd at revision") >= 2, 30,
             "calico-node's resync")
    wait_for(lambda: rule.format("DROP") in saved(cluster, "-t", "filter"), 30, "Felix's Drop after the resync")
    assert cluster.calico["node1"].proc.poll() is None
