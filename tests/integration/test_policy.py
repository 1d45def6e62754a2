"""Tenant isolation and network policy enforced by calico-node, with real traffic across simulated nodes.

Every iptables and ipset command runs inside a node namespace; each test also checks that the machine's
own namespace holds no cali chain or set.
"""

from __future__ import annotations

import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from tests.integration.cluster import Cluster
from tests.lab import Lab, add_pool, netconf, wait_for

RES = "/calico/resources/v3/projectcalico.org"
JUMP = '-A FORWARD -m comment --comment "cali:calico-node policy" -j cali-FORWARD'


# --- helpers -----------------------------------------------------------------------------------------


def add_pod(cluster: Cluster, node: str, network: str = "k8s", namespace: str = "", pod: str = "") -> tuple[str, str]:
    """A pod of ``network`` on ``node`` (in Kubernetes namespace ``namespace`` when given); (netns, address)."""
    ns = cluster.pod()
    cid = f"{node}y{len(cluster.pods):03d}".ljust(20, "0")
    args = f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod or cid}" if namespace else ""
    run = Lab.run_plugin(cluster.ns[node], "ADD", netconf(cluster.etcd, name=network, node=node), cid,
                         Lab.netns_path(ns), args=args)
    assert run.rc == 0, run.stdout + run.stderr[-1000:]
    address = run.out["ips"][0]["address"].split("/")[0]
    cluster.pods.append((node, ns, cid, address))
    return ns, address


def wep_key(cluster: Cluster, pod_ns: str) -> str:
    cid = next(p[2] for p in cluster.pods if p[1] == pod_ns)
    for key in cluster.etcd.keys(f"{RES}/workloadendpoints/"):
        if cluster.etcd.get_json(key)["spec"]["containerID"] == cid:
            return key
    raise AssertionError(f"no WorkloadEndpoint for {cid}")


def label(cluster: Cluster, pod_ns: str, **labels: str) -> None:
    key = wep_key(cluster, pod_ns)
    wep = cluster.etcd.get_json(key)
    wep["metadata"]["labels"] = {k: v for k, v in wep["metadata"]["labels"].items()
                                 if k.startswith("projectcalico.org/")} | labels
    cluster.etcd.put_json(key, wep)


def put_policy(etcd, name: str, spec: dict, namespace: str = "") -> str:
    """A NetworkPolicy in ``namespace``, or a GlobalNetworkPolicy without one; returns its key."""
    kind, plural = ("NetworkPolicy", "networkpolicies") if namespace else ("GlobalNetworkPolicy",
                                                                           "globalnetworkpolicies")
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    key = f"{RES}/{plural}/{namespace}/{name}" if namespace else f"{RES}/{plural}/{name}"
    etcd.put_json(key, {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": spec})
    return key


def serve(lab: Lab, pod_ns: str, *ports: int, listen: str = "TCP-LISTEN") -> None:
    """socat answering "ok" on each TCP port (`listen="TCP6-LISTEN"`: IPv6, and IPv4-mapped)."""
    for port in ports:
        lab.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, "socat", f"{listen}:{port},fork,reuseaddr", "SYSTEM:echo ok"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: all(f":{p} " in Lab.in_ns(pod_ns, "ss", "-ltn").stdout for p in ports), 10, "socat servers")


def tcp(src: str, address: str, port: int, timeout: float = 2) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", src, "socat", f"-T{timeout}", "-",
                           f"TCP:{address}:{port},connect-timeout={timeout}"],
                          input="", capture_output=True, text=True, timeout=timeout + 10)
    return proc.stdout.strip() == "ok"


ping = Lab.ping_once


def reach(checks: list[tuple]) -> list[bool]:
    """Runs (fn, *args) checks concurrently (a dropped packet costs a whole timeout)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda c: c[0](*c[1:]), checks))


def expect(checks: list[tuple], expected: list[bool], timeout: float = 15) -> float:
    """Seconds until the checks give exactly ``expected`` (all at once, so no earlier state passes)."""
    started, got = time.monotonic(), []
    while time.monotonic() - started < timeout:
        got = reach(checks)
        if got == expected:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"after {timeout} s: {got}, expected {expected}")


def eventually(check, expected: bool = True, timeout: float = 15) -> float:
    """Seconds until ``check()`` returns ``expected``."""
    started = time.monotonic()
    wait_for(lambda: check() == expected, timeout, f"{check} to become {expected}", interval=0.1)
    return time.monotonic() - started


def node_save(cluster: Cluster, node: str) -> str:
    return Lab.in_ns(cluster.ns[node], "iptables-save").stdout


def normalised(save: str) -> list[str]:
    """iptables-save without comments, counters and rule comments."""
    out = []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        line = re.sub(r" \[\d+:\d+\]$", "", line)
        out.append(re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", line))
    return out


def start_nodes(cluster: Cluster, cidr: str, count: int = 2) -> None:
    add_pool(cluster.etcd, "pool", cidr, 26)
    for i in range(1, count + 1):
        cluster.add_node(i)
    cluster.wait_established()


# --- tests -------------------------------------------------------------------------------------------


def test_two_tenants_are_isolated_within_and_across_nodes(cluster):
    start_nodes(cluster, "10.70.0.0/16")
    pods = {
        "a1": add_pod(cluster, "node1", "tenant-a"), "a2": add_pod(cluster, "node2", "tenant-a"),
        "a3": add_pod(cluster, "node1", "tenant-a"),
        "b1": add_pod(cluster, "node1", "tenant-b"), "b2": add_pod(cluster, "node2", "tenant-b"),
    }
    for ns, _ in pods.values():
        serve(cluster.lab, ns, 8080)
    same = [(s, d) for s in pods for d in pods if s != d and s[0] == d[0]]
    cross = [(s, d) for s in pods for d in pods if s[0] != d[0]]
    for s, d in same:  # routes and rules settle
        eventually(lambda s=s, d=d: ping(pods[s][0], pods[d][1]), timeout=30)
    got = reach([(tcp, pods[s][0], pods[d][1], 8080) for s, d in same + cross]
                + [(ping, pods[s][0], pods[d][1]) for s, d in same + cross])
    n = len(same) + len(cross)
    expected = [True] * len(same) + [False] * len(cross)
    assert got[:n] == expected, list(zip(same + cross, got[:n], strict=True))
    assert got[n:] == expected, list(zip(same + cross, got[n:], strict=True))
    for node in ("node1", "node2"):
        save = node_save(cluster, node)
        assert save.count("-j cali-FORWARD") == 1 and JUMP in save
        assert "-A cali-pri-tenant-a -m set --match-set cali40s:" in save
        sets = Lab.in_ns(cluster.ns[node], "ipset", "list", "-n").stdout.split()
        assert sets and all(s.startswith(("cali40", "cali60")) and len(s) <= 31 for s in sets)


def test_policy_allows_frontend_to_db_on_one_port_and_follows_relabels(cluster):
    start_nodes(cluster, "10.71.0.0/16")
    fe, _ = add_pod(cluster, "node1")
    other, _ = add_pod(cluster, "node1")
    db, db_ip = add_pod(cluster, "node2")
    serve(cluster.lab, db, 5432, 6000)
    eventually(lambda: tcp(other, db_ip, 5432), timeout=30)  # no policy yet: the profile lets all of k8s in
    label(cluster, fe, role="frontend")
    label(cluster, other, role="other")
    label(cluster, db, role="db")
    put_policy(cluster.etcd, "db", {
        "selector": "role == 'db'", "types": ["Ingress"],
        "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'frontend'"},
                     "destination": {"ports": [5432]}}],
    }, namespace="default")
    eventually(lambda: tcp(other, db_ip, 5432, timeout=1), expected=False)
    assert reach([(tcp, fe, db_ip, 5432), (tcp, fe, db_ip, 6000), (tcp, other, db_ip, 5432), (ping, fe, db_ip)]) == [
        True, False, False, False]
    # Relabelling changes what a pod may reach, without restarting anything.
    label(cluster, other, role="frontend")
    granted = eventually(lambda: tcp(other, db_ip, 5432, timeout=0.3))
    label(cluster, fe, role="other")
    revoked = eventually(lambda: tcp(fe, db_ip, 5432, timeout=0.3), expected=False)
    print(f"relabel in force: granted after {granted:.2f} s, revoked after {revoked:.2f} s")
    assert granted < 3 and revoked < 3, (granted, revoked)
    assert tcp(other, db_ip, 5432) and not tcp(other, db_ip, 6000, timeout=1)


def test_order_deny_pass_and_global_policy_across_namespaces(cluster):
    start_nodes(cluster, "10.72.0.0/16")
    p1, _ = add_pod(cluster, "node1", namespace="prod", pod="p1")
    p2, p2_ip = add_pod(cluster, "node2", namespace="prod", pod="p2")
    d1, d1_ip = add_pod(cluster, "node1", namespace="dev", pod="d1")
    x1, _ = add_pod(cluster, "node1", network="other-net", namespace="dev", pod="x1")  # not in profile k8s
    serve(cluster.lab, p2, 80)
    serve(cluster.lab, d1, 80)
    assert "/prod/" in wep_key(cluster, p2) and "/dev/" in wep_key(cluster, d1)
    # Each step waits for the whole expected picture (it differs from the step before in some check).
    checks = [(tcp, p1, p2_ip, 80, 1), (tcp, d1, p2_ip, 80, 1), (tcp, x1, p2_ip, 80, 1), (tcp, p1, d1_ip, 80, 1)]
    expect(checks, [True, True, False, True], timeout=30)  # no policy: profiles only
    etcd = cluster.etcd
    put_policy(etcd, "allow-all", {"order": 20, "ingress": [{"action": "Allow"}]}, namespace="prod")
    expect(checks, [True, True, True, True])  # prod's Allow lets other-net in too
    # Deny (order 10) beats the later Allow (order 20), for all of dev; dev itself is not selected.
    deny = {"order": 10, "ingress": [{"action": "Deny", "source": {
        "namespaceSelector": "projectcalico.org/name == 'dev'"}}]}
    put_policy(etcd, "deny-dev", deny, namespace="prod")
    expect(checks, [True, False, False, True])
    put_policy(etcd, "deny-dev", {**deny, "order": 30}, namespace="prod")  # now the Allow comes first
    expect(checks, [True, True, True, True])
    # Pass hands the decision to the profiles: k8s members get in, other-net does not, the Deny is skipped.
    put_policy(etcd, "pass", {"order": 1, "ingress": [{"action": "Pass"}]}, namespace="prod")
    put_policy(etcd, "deny-dev", deny, namespace="prod")
    expect(checks, [True, True, False, True])
    # Without the Pass and the Allow a policy still selects p2 and nothing allows: even prod is refused.
    etcd.ctl("del", f"{RES}/networkpolicies/prod/pass")
    etcd.ctl("del", f"{RES}/networkpolicies/prod/allow-all")
    expect(checks, [False, False, False, True])
    # A GlobalNetworkPolicy applies in every namespace: no ICMP anywhere, the rest to the profiles.
    etcd.ctl("del", "--prefix", f"{RES}/networkpolicies/")
    put_policy(etcd, "no-ping", {"order": 0, "selector": "all()", "ingress": [
        {"action": "Deny", "protocol": "ICMP"}, {"action": "Pass"}]})
    expect(checks + [(ping, p1, p2_ip, 1), (ping, p1, d1_ip, 1)], [True, True, False, True, False, False])


def test_tiers_in_order_with_their_default_actions(cluster):
    start_nodes(cluster, "10.74.0.0/16")
    client, _ = add_pod(cluster, "node1")
    other, _ = add_pod(cluster, "node1")
    server, server_ip = add_pod(cluster, "node1")
    label(cluster, client, role="client")
    serve(cluster.lab, server, 80)
    checks = [(tcp, client, server_ip, 80, 1), (tcp, other, server_ip, 80, 1)]
    expect(checks, [True, True], timeout=30)  # the profile lets the network in
    etcd = cluster.etcd

    def tier(name: str, order: float, action: str) -> None:
        etcd.put_json(f"{RES}/tiers/{name}", {"kind": "Tier", "apiVersion": "projectcalico.org/v3",
                                               "metadata": {"name": name},
                                               "spec": {"order": order, "defaultAction": action}, "status": {}})

    # A security tier before the default one: the client is passed on (to the profile), anyone else
    # meets the tier's default action, Deny.
    tier("security", 100, "Deny")
    put_policy(etcd, "security.gate", {"tier": "security", "selector": "all()", "ingress": [
        {"action": "Pass", "source": {"selector": "role == 'client'"}}]})
    expect(checks, [True, False])
    tier("security", 100, "Pass")  # its default action now hands the rest on too
    expect(checks, [True, True])
    # The default tier after it still decides: a Deny there for everyone but the client.
    put_policy(etcd, "deny-others", {"selector": "all()", "ingress": [
        {"action": "Allow", "source": {"selector": "role == 'client'"}}]})
    expect(checks, [True, False])
    # A policy of a tier that does not exist applies to nothing.
    put_policy(etcd, "ghost.deny", {"tier": "ghost", "order": 0, "selector": "all()",
                                    "ingress": [{"action": "Deny"}]})
    time.sleep(1)
    assert reach(checks) == [True, False]
