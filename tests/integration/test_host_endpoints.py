"""HostEndpoint policy as Felix applies it, with real traffic between simulated nodes (IPv4 and IPv6): a
host endpoint on node1's uplink (eth0, the veth to the switch) polices what node2 sends to node1 itself;
the failsafe ports (SSH on 22, BGP on 179) stay open whatever the policy, and FelixConfiguration's
failsafeInboundHostPorts replaces them; a host endpoint without profile or policy denies the rest; the
"*" host endpoint polices every host interface; pod-to-pod traffic across the nodes is not affected;
preDNAT policy (mangle table) catches forwarded traffic too; a doNotTrack allow (raw table) un-tracks
its packets; host traffic DNATed on the node meets the egress policy in mangle POSTROUTING; VXLAN
between nodes passes a denying host endpoint; a host endpoint without interfaceName
polices the interface holding its expectedIPs; deleting the host endpoint, drift and `calico-node
--cleanup` restore everything.

Every iptables call runs inside the node namespaces (the lab's), never in the machine's own: the
fixture checks that afterwards.
"""

from __future__ import annotations

import re

from tests.integration.cluster import Cluster
from tests.integration.test_policy import eventually, expect, ping, put_policy, reach, serve, tcp
from tests.integration.test_policy_ipv6 import add_pod, tcp6
from tests.lab import Lab, add_pool, plugin_dir

RES = "/calico/resources/v3/projectcalico.org"
NODE1, NODE1_6 = "192.168.200.1", "fd00:200::1"
NODE2, NODE2_6 = "192.168.200.2", "fd00:200::2"
OPEN, FAILSAFE = 8080, 22


def put_hep(etcd, name: str, node: str, iface: str, labels: dict, ips: list[str], profiles: list[str] = ()) -> str:
    key = f"{RES}/hostendpoints/{name}"
    spec = {"node": node, "interfaceName": iface, "expectedIPs": ips, **({"profiles": list(profiles)} if profiles
                                                                          else {})}
    etcd.put_json(key, {"kind": "HostEndpoint", "apiVersion": "projectcalico.org/v3",
                        "metadata": {"name": name, "labels": labels}, "spec": spec})
    return key


def delete(cluster: Cluster, key: str) -> None:
    cluster.etcd.ctl("del", key)


def setup(cluster: Cluster, v4: str, v6: str) -> dict[str, tuple[str, str, str]]:
    """Two dual-stack nodes (drift checked every second), a pod on each, and servers in node1's own
    namespace on OPEN, OPEN + 1 and FAILSAFE."""
    add_pool(cluster.etcd, "pool4", v4, 26)
    add_pool(cluster.etcd, "pool6", v6, 122)
    for i in (1, 2):
        cluster.add_node(i, IP6=f"fd00:200::{i}/64", FELIX_IPTABLESREFRESHINTERVAL="1")
    cluster.wait_established()
    pods = {"p1": add_pod(cluster, "node1"), "p2": add_pod(cluster, "node2")}
    serve(cluster.lab, cluster.ns["node1"], OPEN, FAILSAFE, OPEN + 1, listen="TCP6-LISTEN")
    return pods


def to_node1(cluster: Cluster) -> list[tuple]:
    """From node2: ping node1 (v4, v6), TCP to OPEN (v4, v6), TCP to the failsafe port (v4, v6)."""
    n2 = cluster.ns["node2"]
    return [(ping, n2, NODE1), (ping, n2, NODE1_6), (tcp, n2, NODE1, OPEN), (tcp6, n2, NODE1_6, OPEN),
            (tcp, n2, NODE1, FAILSAFE), (tcp6, n2, NODE1_6, FAILSAFE)]


def pod_to_pod(pods) -> list[tuple]:
    (p1, a1, b1), (p2, a2, b2) = pods["p1"], pods["p2"]
    return [(ping, p1, a2), (ping, p2, a1), (ping, p1, b2), (ping, p2, b1)]


def saved(cluster: Cluster, node: str, *args: str) -> str:
    return Lab.in_ns(cluster.ns[node], "iptables-save", *args).stdout + Lab.in_ns(
        cluster.ns[node], "ip6tables-save", *args).stdout


def test_a_host_endpoint_polices_its_interface_but_never_the_failsafe_ports(cluster):
    pods = setup(cluster, "10.90.0.0/16", "fd00:90::/64")
    expect(to_node1(cluster) + pod_to_pod(pods), [True] * 10)
    text = saved(cluster, "node1")  # no host endpoint: OUTPUT is not ours, INPUT only for the workloads
    assert ":cali-OUTPUT" not in text and re.findall(r"-A cali-INPUT .*", text) == [
        "-A cali-INPUT -i cali+ -g cali-wl-to-host"] * 2, text

    # Policy: node1's uplink admits ICMP from node2 only (and the failsafe ports, always).
    put_policy(cluster.etcd, "hep-icmp", {"selector": "hep == 'node1'", "types": ["Ingress"], "ingress": [
        {"action": "Allow", "protocol": "ICMP", "source": {"nets": [f"{NODE2}/32"]}},
        {"action": "Allow", "protocol": "ICMPv6", "source": {"nets": [f"{NODE2_6}/128"]}}]})
    hep = put_hep(cluster.etcd, "node1-eth0", "node1", "eth0", {"hep": "node1"}, [NODE1, NODE1_6])
    expect(to_node1(cluster), [True, True, False, False, True, True], timeout=20)
    assert all(reach(pod_to_pod(pods)))  # forwarded pod traffic is not the host's
    # BGP (failsafe 179) comes back after a restart of every session; etcd (a new pod) still works.
    cluster.calico["node1"].birdc("restart", "all")
    cluster.wait_established()
    p3, a3, _ = add_pod(cluster, "node1")
    assert ping(pods["p2"][0], a3, timeout=5)
    text = saved(cluster, "node1")
    for chain in ("cali-INPUT", "cali-OUTPUT", "cali-fh-eth0", "cali-th-eth0", "cali-failsafe-in"):
        assert f":{chain} " in text, chain
    assert "-A cali-failsafe-in -p tcp -m multiport --dports 179 -j ACCEPT" in text

    # The policy gone, the profile-less host endpoint denies all but the failsafe ports.
    delete(cluster, f"{RES}/globalnetworkpolicies/hep-icmp")
    expect(to_node1(cluster), [False, False, False, False, True, True], timeout=20)
    assert all(reach(pod_to_pod(pods)))

    # FelixConfiguration's failsafe ports are honoured: 22 is no longer one of them, OPEN is.
    key = f"{RES}/felixconfigurations/node.node1"
    felix = cluster.etcd.get_json(key)
    felix["spec"]["failsafeInboundHostPorts"] = [{"protocol": "TCP", "port": OPEN}, {"protocol": "TCP", "port": 179}]
    cluster.etcd.put_json(key, felix)
    expect(to_node1(cluster), [False, False, True, True, False, False], timeout=20)
    del felix["spec"]["failsafeInboundHostPorts"]
    cluster.etcd.put_json(key, felix)
    expect(to_node1(cluster), [False, False, False, False, True, True], timeout=20)

    # The host endpoint deleted: everything as before, and OUTPUT, mangle and raw are ours no more (INPUT
    # keeps the workloads' rule alone).
    delete(cluster, hep)
    expect(to_node1(cluster) + pod_to_pod(pods), [True] * 10, timeout=20)
    text = saved(cluster, "node1")
    assert not re.search(r"cali-(OUTPUT|PREROUTING|fh-|th-|failsafe)", text), text
    assert re.findall(r"-A cali-INPUT .*", text) == ["-A cali-INPUT -i cali+ -g cali-wl-to-host"] * 2, text


def test_pre_dnat_deny_and_do_not_track_allow(cluster):
    pods = setup(cluster, "10.91.0.0/16", "fd00:91::/64")
    p1, a1, b1 = pods["p1"]
    n2, switch = cluster.ns["node2"], cluster.switch
    hep = put_hep(cluster.etcd, "node1-eth0", "node1", "eth0", {"hep": "node1"}, [NODE1, NODE1_6])
    put_policy(cluster.etcd, "allow-all", {"selector": "hep == 'node1'", "ingress": [{"action": "Allow"}],
                                           "egress": [{"action": "Allow"}]})
    # The pods admit node2 (their network's profile admits the network's pods only).
    put_policy(cluster.etcd, "pods-open", {"selector": "has(projectcalico.org/namespace)",
                                           "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]})
    checks = [(tcp, n2, NODE1, OPEN), (ping, n2, a1), (ping, n2, b1), (tcp, switch, NODE1, OPEN),
              (tcp, n2, NODE1, FAILSAFE)]
    expect(checks, [True] * 5, timeout=20)

    # preDNAT: node2's packets are dropped in the mangle table, to node1 and through it to its pod alike
    # (normal host endpoint policy never sees forwarded traffic); the switch's pass; failsafe holds.
    put_policy(cluster.etcd, "no-node2", {"selector": "hep == 'node1'", "preDNAT": True, "applyOnForward": True,
                                          "ingress": [{"action": "Deny", "source": {"nets": [f"{NODE2}/32",
                                                                                             f"{NODE2_6}/128"]}}]})
    expect(checks, [False, False, False, True, True], timeout=20)
    mangle = Lab.in_ns(cluster.ns["node1"], "iptables-save", "-c", "-t", "mangle").stdout
    drops = re.search(rf"\[(\d+):\d+\] -A cali-pi-no-node2 -s {NODE2}/32 -j DROP", mangle)
    assert drops and int(drops.group(1)) > 0, mangle
    assert "cali-pi-no-node2" not in Lab.in_ns(cluster.ns["node1"], "iptables-save", "-t", "filter").stdout
    delete(cluster, f"{RES}/globalnetworkpolicies/no-node2")
    expect(checks, [True] * 5, timeout=20)

    # doNotTrack: with no normal policy the host endpoint denies OPEN + 1 and OPEN; an untracked allow of
    # OPEN (both ways) lets it through, NOTRACK in the raw table (its counters move).
    delete(cluster, f"{RES}/globalnetworkpolicies/allow-all")
    n1 = cluster.ns["node1"]
    expect([(tcp, n2, NODE1, OPEN), (tcp, n2, NODE1, OPEN + 1)], [False, False], timeout=20)
    put_policy(cluster.etcd, "untracked", {"selector": "hep == 'node1'", "doNotTrack": True, "applyOnForward": True,
                                           "ingress": [{"action": "Allow", "protocol": "TCP",
                                                        "destination": {"ports": [OPEN]}}],
                                           "egress": [{"action": "Allow", "protocol": "TCP",
                                                       "source": {"ports": [OPEN]}}]})
    expect([(tcp, n2, NODE1, OPEN), (tcp, n2, NODE1, OPEN + 1), (tcp6, n2, NODE1_6, OPEN)], [True, False, True],
           timeout=20)
    raw = Lab.in_ns(n1, "iptables-save", "-c", "-t", "raw").stdout
    notrack = [int(m) for m in re.findall(r"\[(\d+):\d+\] -A cali-(?:fh|th)-eth0 .*-j NOTRACK", raw)]
    assert len(notrack) == 2 and all(n > 0 for n in notrack), raw
    assert "cali-pi-untracked" not in Lab.in_ns(n1, "iptables-save", "-t", "filter").stdout

    # Drift: INPUT's jump and the raw table's PREROUTING chain go; the refresh (1 s) puts them back.
    Lab.in_ns(n1, "iptables", "-D", "INPUT", "-m", "comment", "--comment", "cali:calico-node policy", "-j",
              "cali-INPUT", check=True)
    Lab.in_ns(n1, "iptables", "-t", "raw", "-F", "cali-PREROUTING", check=True)
    eventually(lambda: "-A INPUT -m comment" in Lab.in_ns(n1, "iptables-save").stdout and
               "-A cali-PREROUTING -j cali-from-host-endpoint" in Lab.in_ns(n1, "iptables-save", "-t", "raw").stdout,
               timeout=20)
    log = cluster.calico["node1"].log()
    assert "policy drift repaired (IPv4): filter jumps" in log and "raw:cali-PREROUTING" in log, log[-3000:]

    # calico-node --cleanup takes every table's chains and jumps away.
    assert cluster.etcd.get_json(hep)
    cluster.calico["node1"].stop(graceful=True)
    run = Lab.in_ns(n1, f"{plugin_dir()}/calico-node", "--cleanup")
    assert run.returncode == 0 and "raw chain: cali-PREROUTING" in run.stdout, run.stdout + run.stderr
    assert "cali" not in saved(cluster, "node1")


def test_the_all_interfaces_host_endpoint_polices_every_host_interface_but_not_workloads(cluster):
    pods = setup(cluster, "10.92.0.0/16", "fd00:92::/64")
    # "*" covers the loopback too (etcd is reached there in the lab): the policy admits it.
    put_policy(cluster.etcd, "star", {"selector": "hep == 'star'", "ingress": [
        {"action": "Allow", "protocol": "ICMP", "source": {"nets": [f"{NODE2}/32"]}},
        {"action": "Allow", "protocol": "ICMPv6", "source": {"nets": [f"{NODE2_6}/128"]}},
        {"action": "Allow", "source": {"nets": ["127.0.0.0/8", "::1/128"]}}], "egress": [{"action": "Allow"}]})
    hep = put_hep(cluster.etcd, "node1-all", "node1", "*", {"hep": "star"}, [NODE1])
    expect(to_node1(cluster), [True, True, False, False, True, True], timeout=20)
    assert all(reach(pod_to_pod(pods)))
    _, a3, _ = add_pod(cluster, "node1")  # calico-node still reaches etcd; the new pod is admitted
    assert ping(pods["p2"][0], a3, timeout=5)
    assert "-A cali-from-host-endpoint -g cali-fh-any-interface-at-all" in saved(cluster, "node1")
    delete(cluster, hep)
    expect(to_node1(cluster), [True] * 6, timeout=20)


def test_a_host_endpoint_without_interface_name_polices_the_interface_holding_its_expected_ip(cluster):
    pods = setup(cluster, "10.93.0.0/16", "fd00:93::/64")
    hep = put_hep(cluster.etcd, "node1-by-ip", "node1", "", {"hep": "node1"}, [NODE1])
    expect(to_node1(cluster), [False, False, False, False, True, True], timeout=20)
    assert ":cali-fh-eth0 " in saved(cluster, "node1") and all(reach(pod_to_pod(pods)))
    # The address moves away from eth0: nothing holds it, nothing is policed.
    Lab.in_ns(cluster.ns["node1"], "ip", "addr", "del", f"{NODE1}/24", "dev", "eth0", check=True)
    eventually(lambda: ":cali-fh-eth0 " not in saved(cluster, "node1"), timeout=20)
    Lab.in_ns(cluster.ns["node1"], "ip", "addr", "add", f"{NODE1}/24", "dev", "eth0", check=True)
    Lab.in_ns(cluster.ns["node1"], "ip", "route", "replace", "default", "via", "192.168.200.254", "dev", "eth0",
              check=True)
    expect(to_node1(cluster), [False, False, False, False, True, True], timeout=20)
    delete(cluster, hep)
    expect(to_node1(cluster), [True] * 6, timeout=20)


def test_vxlan_between_nodes_passes_a_denying_host_endpoint(cluster):
    add_pool(cluster.etcd, "vx", "10.94.0.0/16", 26, vxlan="Always")
    for i in (1, 2):
        cluster.add_node(i)
    cluster.wait_established()
    p1, a1 = cluster.add_pod("node1")
    p2, a2 = cluster.add_pod("node2")
    serve(cluster.lab, cluster.ns["node1"], OPEN)
    expect([(ping, p1, a2), (ping, p2, a1), (tcp, cluster.ns["node2"], NODE1, OPEN)], [True] * 3, timeout=30)
    # A profile-less host endpoint on node1's uplink denies OPEN; VXLAN from and to the other node passes.
    put_hep(cluster.etcd, "node1-eth0", "node1", "eth0", {"hep": "node1"}, [NODE1])
    expect([(ping, p1, a2), (ping, p2, a1), (tcp, cluster.ns["node2"], NODE1, OPEN)], [True, True, False],
           timeout=20)
    text = saved(cluster, "node1")
    assert "-A cali-INPUT -p udp -m multiport --dports 4789 -m set --match-set cali40h:" in text, text


def test_host_traffic_dnated_on_the_node_meets_the_egress_policy_in_mangle_postrouting(cluster):
    setup(cluster, "10.95.0.0/16", "fd00:95::/64")
    n1, n2 = cluster.ns["node1"], cluster.ns["node2"]
    serve(cluster.lab, n2, OPEN, OPEN + 1)
    for vip, port in (("10.96.0.10", OPEN), ("10.96.0.11", OPEN + 1)):  # a "service" DNATed on node1 itself
        Lab.in_ns(n1, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", vip, "-p", "tcp", "--dport", "80", "-j", "DNAT",
                  "--to-destination", f"{NODE2}:{port}", check=True)
    checks = [(tcp, n1, NODE2, OPEN), (tcp, n1, "10.96.0.10", 80), (tcp, n1, "10.96.0.11", 80)]
    expect(checks, [True] * 3)
    put_policy(cluster.etcd, "no-open", {"selector": "hep == 'node1'", "ingress": [{"action": "Allow"}], "egress": [
        {"action": "Deny", "protocol": "TCP", "destination": {"nets": [f"{NODE2}/32"], "ports": [OPEN]}},
        {"action": "Allow"}]})
    put_hep(cluster.etcd, "node1-eth0", "node1", "eth0", {"hep": "node1"}, [NODE1])
    # Filter OUTPUT cannot police the DNATed connection (its interface is known later): mangle POSTROUTING does.
    expect(checks, [False, False, True], timeout=20)
    mangle = Lab.in_ns(n1, "iptables-save", "-c", "-t", "mangle").stdout
    drops = re.search(r"\[(\d+):\d+\] -A cali-po-no-open .*-j DROP", mangle)
    assert drops and int(drops.group(1)) > 0, mangle
