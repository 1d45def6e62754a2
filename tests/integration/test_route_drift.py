"""Drift repair of routing (issue 15 item 5), on real namespaces, BIRD and VXLAN devices: every refresh
interval calico-node checks the tunnel state it programs (device, its address and state, tunnel routes,
neighbour and FDB entries) and the blackholes of its blocks, puts back what an outsider changed and
logs each repair; pods' traffic flows again without a restart."""

from __future__ import annotations

import ipaddress
import os
import re
import signal

from cni_calico import keys
from tests.integration.cluster import SETTLE, Cluster
from tests.lab import add_pool, wait_for

RES = "/calico/resources/v3/projectcalico.org"


def repaired(cluster: Cluster, what: str) -> bool:
    return f"route drift repaired: {what} was not as programmed" in cluster.calico["node1"].log()


def test_tunnel_state_and_blackholes_are_put_back_and_logged(cluster, etcd):
    add_pool(etcd, "vx", "10.88.0.0/16", 26, vxlan="Always")
    for i in (1, 2):
        cluster.add_node(i, FELIX_IPTABLESREFRESHINTERVAL="1")
    cluster.wait_established()

    def spec(name: str) -> dict:
        return etcd.get_json(f"{RES}/nodes/{name}")["spec"]

    wait_for(lambda: all(spec(n).get("ipv4VXLANTunnelAddr") for n in ("node1", "node2")), 20, "tunnel addresses")
    pod1, a1 = cluster.add_pod("node1")
    pod2, a2 = cluster.add_pod("node2")
    block1 = str(ipaddress.ip_network(f"{a1}/26", strict=False))
    block2 = str(ipaddress.ip_network(f"{a2}/26", strict=False))
    tunnel2, mac2 = spec("node2")["ipv4VXLANTunnelAddr"], spec("node2")["vxlanTunnelMACAddr"]
    route = rf"^{re.escape(block2)} via {re.escape(tunnel2)} dev vxlan\.calico"
    cluster.wait_route("node1", route)
    assert cluster.lab.ping(pod1, a2, within=SETTLE)
    node1 = cluster.ns["node1"]

    # An outsider deletes the tunnel route, the neighbour entry and the FDB entry.
    for cmd in (["ip", "route", "del", block2], ["ip", "neigh", "del", tunnel2, "dev", "vxlan.calico"],
                ["bridge", "fdb", "del", mac2, "dev", "vxlan.calico", "self"]):
        assert cluster.lab.in_ns(node1, *cmd).returncode == 0, cmd
    cluster.wait_route("node1", route, timeout=10)
    wait_for(lambda: all(repaired(cluster, w) for w in (f"tunnel route {block2} via {tunnel2}",
                                                        f"neighbour {tunnel2}", f"FDB entry {mac2}")),
             10, "the repairs logged")
    assert cluster.lab.ping(pod1, a2, within=SETTLE)

    # ... then the whole device.
    assert cluster.lab.in_ns(node1, "ip", "link", "del", "vxlan.calico").returncode == 0
    cluster.wait_route("node1", route, timeout=10)
    wait_for(lambda: repaired(cluster, "device vxlan.calico"), 10, "the device's repair logged")
    link = cluster.lab.in_ns(node1, "ip", "-d", "link", "show", "vxlan.calico").stdout
    assert "vxlan id 4096" in link and "mtu 1450" in link and "UP" in link
    assert cluster.lab.ping(pod1, a2, within=SETTLE) and cluster.lab.ping(pod2, a1, within=SETTLE)

    # The block's blackhole, while BIRD (which also restores it at its kernel scan) is paused: calico-node
    # puts it back as BIRD installs it.
    bird = cluster.calico["node1"].bird_pid()
    assert bird
    os.kill(bird, signal.SIGSTOP)
    try:
        assert cluster.lab.in_ns(node1, "ip", "route", "del", "blackhole", block1).returncode == 0
        cluster.wait_route("node1", rf"^blackhole {re.escape(block1)} proto bird metric 32", timeout=10)
        wait_for(lambda: repaired(cluster, f"blackhole {block1}"), 10, "the blackhole's repair logged")
    finally:
        os.kill(bird, signal.SIGCONT)
    assert cluster.lab.ping(pod2, a1, within=SETTLE)
    # At rest nothing is repaired: the log says each repair once.
    log = cluster.calico["node1"].log()
    assert log.count(f"route drift repaired: blackhole {block1}") == 1, log[-3000:]


def test_felixconfiguration_vxlan_enabled_false_takes_the_tunnel_away_and_true_brings_it_back(cluster, etcd):
    add_pool(etcd, "vx", "10.89.0.0/16", 26, vxlan="Always")
    cluster.mesh(2)
    wait_for(lambda: all(etcd.get_json(f"{RES}/nodes/{n}")["spec"].get("ipv4VXLANTunnelAddr")
                         for n in ("node1", "node2")), 20, "tunnel addresses")
    pod1, a1 = cluster.add_pod("node1")
    _, a2 = cluster.add_pod("node2")
    block2 = str(ipaddress.ip_network(f"{a2}/26", strict=False))
    cluster.wait_route("node1", rf"^{re.escape(block2)} via .* dev vxlan\.calico")
    assert cluster.lab.ping(pod1, a2, within=SETTLE)
    node1 = cluster.ns["node1"]

    def felix(spec: dict) -> None:
        etcd.put_json(f"{RES}/felixconfigurations/node.node1", {
            "kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "node.node1"}, "spec": spec})

    def has_device() -> bool:
        return cluster.lab.in_ns(node1, "ip", "link", "show", "vxlan.calico").returncode == 0

    felix({"vxlanEnabled": False})
    wait_for(lambda: not has_device(), 10, "vxlan.calico removed on node1")
    assert not any("vxlan.calico" in r for r in cluster.routes("node1"))
    assert "VXLAN never programmed (FelixConfiguration vxlanEnabled)" in cluster.calico["node1"].log()
    assert cluster.lab.in_ns(cluster.ns["node2"], "ip", "link", "show", "vxlan.calico").returncode == 0  # only node1
    felix({"vxlanEnabled": True})
    cluster.wait_route("node1", rf"^{re.escape(block2)} via .* dev vxlan\.calico", timeout=10)
    assert has_device() and cluster.lab.ping(pod1, a2, within=SETTLE)


def test_a_block_claimed_elsewhere_writes_that_blocks_route_alone(cluster, etcd):
    """Cost per change: a remote block's affinity re-plans and writes that block's tunnel route only.
    Proof from outside: a route an outsider deleted stays deleted while other blocks come and go and
    their node's record changes (a whole re-plan would have written it again); the drift check puts it
    back."""
    def refresh(interval: str) -> None:
        etcd.put_json(f"{RES}/felixconfigurations/default", {
            "kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "default"}, "spec": {"iptablesRefreshInterval": interval}})

    refresh("3600s")
    add_pool(etcd, "vx", "10.87.0.0/16", 26, vxlan="Always")
    cluster.mesh(2)
    blocks = [f"10.87.{i}.0/26" for i in range(1, 41)]  # claimed by node2 without pods
    for cidr in blocks:
        etcd.put_json(keys.affinity("node2", cidr), {"state": "confirmed", "deleted": False})
    tunnel2 = wait_for(lambda: etcd.get_json(f"{RES}/nodes/node2")["spec"].get("ipv4VXLANTunnelAddr"), 20,
                       "node2's tunnel address")
    node1 = cluster.ns["node1"]

    def routes() -> set[str]:
        out = cluster.lab.in_ns(node1, "ip", "-4", "route", "show", "dev", "vxlan.calico").stdout
        return {line.split()[0] for line in out.splitlines() if f"via {tunnel2}" in line}

    wait_for(lambda: set(blocks) <= routes(), 20, "node2's blocks routed through vxlan.calico on node1")
    assert cluster.lab.in_ns(node1, "ip", "route", "del", blocks[0]).returncode == 0

    def claim_and_release(extra: str) -> None:
        etcd.put_json(keys.affinity("node2", extra), {"state": "confirmed", "deleted": False})
        wait_for(lambda: extra in routes(), 20, "the new block's route")
        etcd.ctl("del", keys.affinity("node2", extra))
        wait_for(lambda: extra not in routes(), 20, "the released block's route gone")

    claim_and_release("10.87.200.0/26")
    node2 = etcd.get_json(f"{RES}/nodes/node2")
    node2["metadata"]["labels"] = {**(node2["metadata"].get("labels") or {}), "rack": "r2"}
    etcd.put_json(f"{RES}/nodes/node2", node2)
    claim_and_release("10.87.201.0/26")  # node1 handles changes in order: the label change is behind it
    assert routes() & set(blocks) == set(blocks[1:]), "a change of other blocks rewrote this block's route"
    assert not repaired(cluster, f"tunnel route {blocks[0]} via {tunnel2}")

    refresh("1s")
    wait_for(lambda: set(blocks) <= routes(), 20, "the deleted route put back by the drift check")
    assert repaired(cluster, f"tunnel route {blocks[0]} via {tunnel2}")
