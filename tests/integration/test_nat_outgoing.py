"""Outgoing NAT as Felix does it, with real traffic: a "world" namespace behind the switch (the nodes'
uplink) runs a server that answers with the source address it sees. From a `natOutgoing` pool the
world sees the node's address (IPv4 and IPv6), from another pool the pod's own; pod-to-pod traffic,
same node or across, same pool or another, is never NATed; switching NAT on or off, adding a pool
and FelixConfiguration's `natOutgoingAddress` take effect without a restart; a flushed chain or a
deleted set member is put back by the drift check.

The switch routes the pools back to node1, so traffic that is not NATed gets its answer too (and the
server can report its source); the world has no other way into the cluster.
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tests.integration.cluster import Cluster, checked_cluster
from tests.integration.test_policy import eventually
from tests.lab import Lab, netconf, pool, sh, wait_for

WORLD4, WORLD6 = "203.0.113.10", "2001:db8:113::10"
PORT = 7000
RES = "/calico/resources/v3/projectcalico.org/"


@pytest.fixture
def cluster(lab, etcd):
    yield from checked_cluster(lab, etcd)


def put_pool(etcd, name: str, cidr: str, block: int, nat: bool) -> None:
    value = pool(name, cidr, block)
    value["spec"]["natOutgoing"] = nat
    etcd.put_json(f"{RES}ippools/{name}", value)


def who_am_i(lab: Lab, ns: str) -> None:
    """A server on PORT (IPv4 and IPv6) answering with the peer's address."""
    lab.procs.append(subprocess.Popen(
        ["ip", "netns", "exec", ns, "socat", f"TCP6-LISTEN:{PORT},fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for(lambda: f":{PORT} " in Lab.in_ns(ns, "ss", "-ltn").stdout, 10, "the who-am-i server")


def seen(src: str, address: str) -> str:
    """The source address the server at `address` saw for a connection from pod `src` ("" if none)."""
    target = f"[{address}]" if ":" in address else address
    proc = subprocess.run(["ip", "netns", "exec", src, "socat", "-T2", "-", f"TCP:{target}:{PORT},connect-timeout=2"],
                          input="", capture_output=True, text=True, timeout=15)
    text = proc.stdout.strip().strip("[]")
    if not text:
        return ""
    address = ipaddress.ip_address(text)  # socat writes IPv6 in full, IPv4 as mapped IPv6
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def world(cluster: Cluster) -> str:
    """The world: 203.0.113.10 and 2001:db8:113::10 behind the switch, which routes back to node1."""
    ns = cluster.lab.netns("world")
    sw = ["ip", "netns", "exec", cluster.switch]
    sh(*sw, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh(*sw, "ip", "addr", "add", "203.0.113.1/24", "dev", "up0")
    sh(*sw, "ip", "-6", "addr", "add", "2001:db8:113::1/64", "dev", "up0", "nodad")
    sh(*sw, "ip", "link", "set", "up0", "up")
    sh(*sw, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    w = ["ip", "netns", "exec", ns]
    sh(*w, "ip", "addr", "add", f"{WORLD4}/24", "dev", "eth0")
    sh(*w, "ip", "-6", "addr", "add", f"{WORLD6}/64", "dev", "eth0", "nodad")
    sh(*w, "ip", "link", "set", "eth0", "up")
    sh(*w, "ip", "route", "add", "default", "via", "203.0.113.1")
    sh(*w, "ip", "-6", "route", "add", "default", "via", "2001:db8:113::1")
    who_am_i(cluster.lab, ns)
    return ns


def add_pod(cluster: Cluster, node: str, v4_pool: str, v6_pool: str = "") -> tuple[str, str, str]:
    """A pod on `node` with an address from `v4_pool` (and from `v6_pool`): (netns, IPv4, IPv6)."""
    ns = cluster.pod()
    ipam = {"type": "calico-ipam", "ipv4_pools": [v4_pool]}
    if v6_pool:
        ipam.update({"assign_ipv6": "true", "ipv6_pools": [v6_pool]})
    cid = f"{node}n{len(cluster.pods):03d}".ljust(20, "0")
    run = Lab.run_plugin(cluster.ns[node], "ADD", netconf(cluster.etcd, name="k8s", node=node, ipam=ipam), cid,
                         Lab.netns_path(ns))
    assert run.rc == 0, run.stdout + run.stderr[-1000:]
    addresses = [ip["address"].split("/")[0] for ip in run.out["ips"]]
    v4 = next(a for a in addresses if ":" not in a)
    v6 = next((a for a in addresses if ":" in a), "")
    cluster.pods.append((node, ns, cid, v4))
    who_am_i(cluster.lab, ns)
    return ns, v4, v6


def test_outgoing_nat_as_felix_does_it(cluster, etcd):
    put_pool(etcd, "nat4", "10.80.0.0/16", 26, nat=True)
    put_pool(etcd, "nat6", "fd00:80::/64", 122, nat=True)
    put_pool(etcd, "plain4", "10.81.0.0/16", 26, nat=False)
    felix = {"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "node.node1"},
             "spec": {"iptablesRefreshInterval": "1s"}}
    etcd.put_json(f"{RES}felixconfigurations/node.node1", felix)
    for i in (1, 2):
        cluster.add_node(i, IP6=f"fd00:200::{i}/64")
    cluster.wait_established()
    sw = ["ip", "netns", "exec", cluster.switch]
    for cidr, via in (("10.80.0.0/16", "192.168.200.1"), ("10.81.0.0/16", "192.168.200.1"),
                      ("fd00:80::/64", "fd00:200::1")):
        sh(*sw, "ip", "route", "add", cidr, "via", via)
    world(cluster)
    a1, a1_v4, a1_v6 = add_pod(cluster, "node1", "10.80.0.0/16", "fd00:80::/64")
    a2, a2_v4, a2_v6 = add_pod(cluster, "node2", "10.80.0.0/16", "fd00:80::/64")
    b1, b1_v4, _ = add_pod(cluster, "node1", "10.81.0.0/16")

    # From a natOutgoing pool the world sees the node; from the other pool the pod itself.
    # (Each check waits for routes and neighbours to settle, IPv6's and BIRD's included.)
    eventually(lambda: seen(a1, WORLD4) == "192.168.200.1", timeout=20)
    eventually(lambda: seen(a1, WORLD6) == "fd00:200::1", timeout=20)
    eventually(lambda: seen(b1, WORLD4) == b1_v4, timeout=20)
    # Pod to pod: never NATed (other node, same pool; same node, other pool; IPv6).
    eventually(lambda: seen(a1, a2_v4) == a1_v4, timeout=20)
    eventually(lambda: seen(a1, a2_v6) == a1_v6, timeout=20)
    assert seen(a1, b1_v4) == a1_v4 and seen(b1, a1_v4) == b1_v4
    node1 = cluster.ns["node1"]
    nat = Lab.in_ns(node1, "iptables-save", "-t", "nat").stdout
    assert ("-A cali-nat-outgoing -m set --match-set cali40masq-ipam-pools src -m set ! --match-set "
            "cali40all-ipam-pools dst -j MASQUERADE --random-fully") in nat, nat
    assert "-A POSTROUTING -m comment --comment \"cali:calico-node nat\" -j cali-POSTROUTING" in nat

    # Pools change, no restart: NAT off for one, on for the other, a new pool joins the sets.
    put_pool(etcd, "nat4", "10.80.0.0/16", 26, nat=False)
    put_pool(etcd, "plain4", "10.81.0.0/16", 26, nat=True)
    eventually(lambda: seen(a1, WORLD4) == a1_v4 and seen(b1, WORLD4) == "192.168.200.1", timeout=20)
    assert seen(a1, WORLD6) == "fd00:200::1"  # the IPv6 pool keeps its NAT (its path is settled by now)
    put_pool(etcd, "later", "10.82.0.0/16", 26, nat=True)
    eventually(lambda: "10.82.0.0/16" in Lab.in_ns(node1, "ipset", "list", "cali40masq-ipam-pools").stdout)
    assert "10.82.0.0/16" in Lab.in_ns(node1, "ipset", "list", "cali40all-ipam-pools").stdout
    etcd.ctl("del", f"{RES}ippools/later")
    eventually(lambda: "10.82.0.0/16" not in Lab.in_ns(node1, "ipset", "list", "cali40masq-ipam-pools").stdout
               + Lab.in_ns(node1, "ipset", "list", "cali40all-ipam-pools").stdout)

    # natOutgoingAddress: SNAT to the address FelixConfiguration names (IPv4).
    sh("ip", "netns", "exec", node1, "ip", "addr", "add", "192.168.200.101/24", "dev", "eth0")
    felix["spec"]["natOutgoingAddress"] = "192.168.200.101"
    etcd.put_json(f"{RES}felixconfigurations/node.node1", felix)
    eventually(lambda: seen(b1, WORLD4) == "192.168.200.101", timeout=20)

    # Drift: someone flushes our chain and deletes a member; the refresh (1 s) puts both back.
    Lab.in_ns(node1, "iptables", "-t", "nat", "-F", "cali-nat-outgoing", check=True)
    Lab.in_ns(node1, "ipset", "del", "cali40masq-ipam-pools", "10.81.0.0/16", check=True)
    eventually(lambda: seen(b1, WORLD4) == "192.168.200.101", timeout=20)
    log = cluster.calico["node1"].log()
    assert "outgoing NAT drift repaired (IPv4): chain cali-nat-outgoing" in log
    assert "outgoing NAT drift repaired (IPv4): set cali40masq-ipam-pools" in log

    # calico-node --cleanup takes it all away again.
    cluster.calico["node1"].stop(graceful=True)
    from tests.lab import plugin_dir

    run = Lab.in_ns(node1, f"{plugin_dir()}/calico-node", "--cleanup")
    assert run.returncode == 0 and "removed nat chain: cali-nat-outgoing" in run.stdout, run.stdout + run.stderr
    assert "cali" not in Lab.in_ns(node1, "iptables-save").stdout + Lab.in_ns(node1, "ip6tables-save").stdout
    assert "cali" not in Lab.in_ns(node1, "ipset", "list", "-n").stdout
