"""calico-node on a simulated cluster: BGP mesh, reflectors, joins and leaves, BIRD and etcd failures."""

from __future__ import annotations

import ipaddress
import os
import re
import time

import pytest

from tests.integration.cluster import SETTLE, Cluster
from tests.integration.helpers import kernel_has_ipip
from tests.lab import add_pool, plugin_dir, pool, sh, wait_for


@pytest.fixture
def cluster(lab, etcd):
    c = Cluster(lab, etcd)
    yield c
    c.close()


def test_mesh_three_nodes_every_pod_reaches_every_pod(cluster, etcd):
    add_pool(etcd, "pool", "10.80.0.0/16", 26)
    cluster.mesh(3)
    for name in ("node1", "node2", "node3"):
        states = cluster.bgp_states(name)
        others = {f"Mesh_{cluster.ip(n).replace('.', '_')}" for n in cluster.ns if n != name}
        assert states == {peer: "Established" for peer in others}
        status = cluster.lab.in_ns(cluster.ns[name], "env", f"CALICO_RUN_DIR={cluster.calico[name].run_dir}",
                                   f"{plugin_dir()}/calicoctl", "node", "status").stdout
        assert "Calico process is running." in status and "not ready" not in status
        for other in cluster.ns:
            if other != name:
                assert re.search(rf"\| {re.escape(cluster.ip(other))} +\| node-to-node mesh \| up +\|.*Established",
                                 status), status
        for _ in range(2):
            cluster.add_pod(name)
    for name in cluster.ns:
        for other, _, _, address in cluster.pods:
            if other != name:
                block = address.rsplit(".", 1)[0]
                cluster.wait_route(name, rf"^{block}\.\d+/26 via {cluster.ip(other)} dev eth0 proto bird")
    assert cluster.all_pairs_ping() == []
    for name in cluster.ns:
        routes = cluster.routes(name)
        # Only BIRD's routes and the node's own: no static route anywhere, no /32 of another node.
        remote = [r for r in routes if " via 192.168.200." in r and not r.startswith("default")]
        assert remote and all("proto bird" in r and "/26" in r for r in remote), routes
        assert any(r.startswith("blackhole 10.80.") for r in routes)


def test_new_pod_in_an_exported_block_needs_no_bgp_change(cluster, etcd):
    add_pool(etcd, "pool", "10.81.0.0/16", 26)
    cluster.mesh(2)
    cluster.add_pod("node1")
    pod2, _ = cluster.add_pod("node2")
    cluster.wait_route("node2", r"^10\.81\.0\.0/26 via 192\.168\.200\.1")
    cluster.wait_route("node2", r"^blackhole 10\.81\.0\.64/26")
    time.sleep(1)  # let both BIRDs settle before taking the "before" picture
    before = cluster.routes("node2")
    config_before = (cluster.calico["node1"].run_dir / "bird.cfg").read_text()
    _, address = cluster.add_pod("node1")  # same block: nothing to announce
    assert cluster.lab.ping(pod2, address, within=SETTLE)
    assert cluster.routes("node2") == before
    assert (cluster.calico["node1"].run_dir / "bird.cfg").read_text() == config_before


def test_fourth_node_joins_and_one_leaves(cluster, etcd, lab):
    add_pool(etcd, "pool", "10.82.0.0/16", 26)
    cluster.mesh(3)
    for name in ("node1", "node2", "node3"):
        cluster.add_pod(name)
    cluster.add_node(4)
    cluster.wait_established()
    assert len(cluster.bgp_states("node1")) == 3
    cluster.add_pod("node4")
    block4 = cluster.pods[-1][3].rsplit(".", 1)[0]
    for name in ("node1", "node2", "node3"):
        cluster.wait_route(name, rf"^{block4}\.\d+/26 via 192\.168\.200\.4")
    assert cluster.all_pairs_ping() == []
    # node3 leaves: its calico-node stops and its Node is deleted; the others drop its session and routes.
    block3 = str(ipaddress.ip_network([p for p in cluster.pods if p[0] == "node3"][0][3] + "/26", strict=False))
    cluster.calico["node3"].stop(graceful=False)
    ctl = sh(f"{plugin_dir()}/calicoctl", "delete", "node", "node3", env={**os.environ, "ETCD_ENDPOINTS": etcd.url})
    assert "Successfully deleted 1 'Node' resource(s)" in ctl.stdout
    for name in ("node1", "node2", "node4"):
        cluster.wait_route(name, rf"^{re.escape(block3)} via", present=False)
        assert "Mesh_192_168_200_3" not in cluster.bgp_states(name)


def test_route_reflector_topology(cluster, etcd):
    add_pool(etcd, "pool", "10.83.0.0/16", 26)
    etcd.put_json("/calico/resources/v3/projectcalico.org/bgpconfigurations/default", {
        "kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512}})
    etcd.put_json("/calico/resources/v3/projectcalico.org/bgppeers/peer-with-rr", {
        "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "peer-with-rr"},
        "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}})
    cluster.add_node(1, CALICO_NODE_LABELS="route-reflector=true", CALICO_ROUTE_REFLECTOR_CLUSTER_ID="224.0.0.1")
    for i in (2, 3, 4):
        cluster.add_node(i)
    cluster.wait_established()
    assert sorted(cluster.bgp_states("node1")) == ["Node_192_168_200_2", "Node_192_168_200_3", "Node_192_168_200_4"]
    for name in ("node2", "node3", "node4"):
        assert cluster.bgp_states(name) == {"Node_192_168_200_1": "Established"}  # only the reflector
    assert "rr client" in (cluster.calico["node1"].run_dir / "bird.cfg").read_text()
    for name in ("node1", "node2", "node3", "node4"):
        cluster.add_pod(name)
    for name in ("node2", "node3"):
        for other in ("node3", "node4"):
            if other != name:
                block = [p for p in cluster.pods if p[0] == other][0][3].rsplit(".", 1)[0]
                cluster.wait_route(name, rf"^{block}\.\d+/26 via {cluster.ip(other)}")
    assert cluster.all_pairs_ping() == []


def test_bird_killed_is_restarted_and_routes_come_back(cluster, etcd):
    add_pool(etcd, "pool", "10.84.0.0/16", 26)
    cluster.mesh(2)
    pod1, _ = cluster.add_pod("node1")
    _, a2 = cluster.add_pod("node2")
    cluster.wait_route("node1", r"^10\.84\.0\.64/26 via")
    old = cluster.calico["node1"].bird_pid()
    sh("kill", "-9", str(old))
    from tests.lab import wait_for

    # Through the restart (BIRD started with -R, kernel routes persisted) the route never goes away.
    gaps = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gaps += not any(r.startswith("10.84.0.64/26 via") for r in cluster.routes("node1"))
        restarted = cluster.calico["node1"].bird_pid() not in (None, old)
        if restarted and all(s == "Established" for s in cluster.bgp_states("node1").values()):
            break
        time.sleep(0.1)
    assert gaps == 0
    wait_for(lambda: cluster.calico["node1"].bird_pid() not in (None, old), 15, "BIRD to be restarted")
    cluster.wait_established()
    time.sleep(3)  # after recovery the relearned route is still there
    assert any(r.startswith("10.84.0.64/26 via") for r in cluster.routes("node1"))
    assert "starting it again" in cluster.calico["node1"].log()
    assert cluster.lab.ping(pod1, a2)


def test_routing_survives_an_etcd_outage_and_resyncs(lab, tmp_path):
    etcd = lab.etcd()  # a private etcd: this test stops it
    add_pool(etcd, "pool", "10.85.0.0/16", 26)
    cluster = Cluster(lab, etcd)
    try:
        cluster.mesh(2)
        pod1, _ = cluster.add_pod("node1")
        _, a2 = cluster.add_pod("node2")
        cluster.wait_route("node1", r"^10\.85\.0\.64/26 via")
        etcd.proc.send_signal(15)
        etcd.proc.wait(10)
        time.sleep(4)  # calico-node notices and keeps its configuration
        assert cluster.lab.ping(pod1, a2)
        assert all(s == "Established" for s in cluster.bgp_states("node1").values())
        assert "etcd unavailable" in cluster.calico["node1"].log()
        etcd.start()  # same data dir and port: the cluster's state is back
        _, a3 = cluster.add_pod("node2")  # a change made once it is back is picked up
        from tests.lab import wait_for

        # calico-node reconnects (gRPC back-off) and programs the new pod's rules within seconds.
        wait_for(lambda: cluster.lab.ping(pod1, a3), 30, "the new pod to be reachable after the outage")
        from tests.lab import wait_for

        wait_for(lambda: "etcd is back" in cluster.calico["node1"].log(), 20, "calico-node to resync")
    finally:
        cluster.close()


def test_graceful_stop_keeps_routes_and_traffic(cluster, etcd):
    add_pool(etcd, "pool", "10.86.0.0/16", 26)
    cluster.mesh(2)
    pod1, a1 = cluster.add_pod("node1")
    pod2, a2 = cluster.add_pod("node2")
    cluster.wait_route("node1", r"^10\.86\.0\.64/26 via")
    cluster.wait_route("node2", r"^10\.86\.0\.0/26 via")
    cluster.calico["node1"].stop(graceful=True)
    assert cluster.calico["node1"].bird_pid() is None
    time.sleep(3)
    # node1's kernel keeps its routes (persist); node2 keeps node1's block (graceful restart).
    assert any(r.startswith("10.86.0.64/26 via") for r in cluster.routes("node1"))
    assert any(r.startswith("10.86.0.0/26 via") for r in cluster.routes("node2"))
    assert cluster.lab.ping(pod1, a2, within=SETTLE) and cluster.lab.ping(pod2, a1, within=SETTLE)
    cluster.start("node1")
    cluster.wait_established()
    assert cluster.lab.ping(pod1, a2, within=SETTLE)


def test_vxlan_pool_goes_through_the_tunnel(cluster, etcd):
    add_pool(etcd, "vx", "10.87.0.0/16", 26, vxlan="Always")
    cluster.mesh(2)
    from tests.lab import wait_for

    def tunnel(name: str) -> dict:
        return etcd.get_json(f"/calico/resources/v3/projectcalico.org/nodes/{name}")["spec"]

    wait_for(lambda: all(tunnel(n).get("ipv4VXLANTunnelAddr") for n in ("node1", "node2")), 20, "tunnel addresses")
    pod1, a1 = cluster.add_pod("node1")
    pod2, a2 = cluster.add_pod("node2")
    peer_tunnel = tunnel("node2")["ipv4VXLANTunnelAddr"]
    block2 = str(ipaddress.ip_network(f"{a2}/26", strict=False))
    cluster.wait_route("node1", rf"^{re.escape(block2)} via {re.escape(peer_tunnel)} dev vxlan\.calico")
    # BIRD does not carry VXLAN pools: no plain route to node2's block over eth0.
    assert not any(r.startswith(f"{block2} via 192.168.200.2 dev eth0") for r in cluster.routes("node1"))
    link = cluster.lab.in_ns(cluster.ns["node1"], "ip", "-d", "link", "show", "vxlan.calico").stdout
    assert "vxlan id 4096" in link and "mtu 1450" in link

    def tx_packets() -> int:
        out = cluster.lab.in_ns(cluster.ns["node1"], "cat", "/sys/class/net/vxlan.calico/statistics/tx_packets")
        return int(out.stdout.strip() or 0)

    before = tx_packets()
    assert cluster.lab.ping(pod1, a2, count=3, within=SETTLE) and cluster.lab.ping(pod2, a1, within=SETTLE)
    assert tx_packets() >= before + 3
    # The pods' MTU leaves room for the VXLAN header (calico-node writes it, the plugin reads it).
    lib = cluster.calico["node1"].lib_dir
    assert (lib / "mtu").read_text().strip() == "1450"
    pod3, _ = cluster.add_pod("node1", nodename_file=str(lib / "nodename"))
    assert "mtu 1450" in cluster.lab.in_ns(pod3, "ip", "link", "show", "eth0").stdout


def test_an_ipip_pool_this_kernel_cannot_serve_makes_the_node_not_ready(cluster, etcd, lab):
    if kernel_has_ipip(lab):
        pytest.skip("this kernel has the ipip driver: the not-ready path needs one without it")
    add_pool(etcd, "plain", "10.89.0.0/16", 26)
    cluster.add_node(1)
    node = cluster.calico["node1"]

    def probe(*args: str):
        return cluster.lab.in_ns(cluster.ns["node1"], "env", f"CALICO_RUN_DIR={node.run_dir}", *args)

    ready = [f"{plugin_dir()}/calico-node", "--ready"]
    wait_for(lambda: probe(*ready).returncode == 0, 20, "calico-node to report ready")
    tunnelled = pool("tunnelled", "10.88.0.0/16", ipip="Always")
    etcd.put_json("/calico/resources/v3/projectcalico.org/ippools/tunnelled", tunnelled)
    wait_for(lambda: probe(*ready).returncode == 1, 20, "calico-node to report not ready")
    problem = "IPIP pool tunnelled (10.88.0.0/16) selects this node, but this kernel has no ipip driver"
    assert problem in probe(*ready).stderr
    status = probe(f"{plugin_dir()}/calicoctl", "node", "status").stdout
    assert "Calico process is running." in status and f"Calico node is not ready: {problem}" in status
    assert f"not ready: {problem}" in node.log()
    # A pool that does not select the node asks nothing of it.
    tunnelled["spec"]["nodeSelector"] = "rack == 'elsewhere'"
    etcd.put_json("/calico/resources/v3/projectcalico.org/ippools/tunnelled", tunnelled)
    wait_for(lambda: probe(*ready).returncode == 0, 20, "calico-node to report ready again")
    assert "not ready" not in probe(f"{plugin_dir()}/calicoctl", "node", "status").stdout
    node.stop(graceful=True)
    stopped = probe(*ready)
    assert stopped.returncode == 1 and "it is not running" in stopped.stderr


def test_ipip_pool_goes_through_tunl0(cluster, etcd, lab):
    if not kernel_has_ipip(lab):
        pytest.skip("this kernel has no ipip driver (`ip link add … type ipip` fails): IPIP routing cannot run "
                    "here; its route plan is covered by tests/unit/test_node_plan.py")
    add_pool(etcd, "ipip", "10.88.0.0/16", 26, ipip="Always")
    cluster.mesh(2)
    pod1, a1 = cluster.add_pod("node1")
    pod2, a2 = cluster.add_pod("node2")
    block2 = str(ipaddress.ip_network(f"{a2}/26", strict=False))
    cluster.wait_route("node1", rf"^{re.escape(block2)} via 192\.168\.200\.2 dev tunl0")
    assert cluster.lab.ping(pod1, a2, within=SETTLE) and cluster.lab.ping(pod2, a1, within=SETTLE)
