"""BGP settings on real BIRD sessions between node namespaces: mesh passwords (TCP MD5) from secret files,
listenPort, serviceClusterIPs advertisement (to the other node, and through a password-protected eBGP
BGPPeer into a plain BIRD router's kernel), a BGPFilter keeping a block out of the peer's kernel.

Everything runs in the lab's namespaces (tests/lab.py); secrets are files in this test's temporary dir.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster
from tests.lab import add_pool, sh, wait_for

RESOURCES = "/calico/resources/v3/projectcalico.org"
DOWN_FOR = 15.0  # seconds a session with the wrong password must stay down


def _resource(kind: str, name: str, spec: dict) -> dict:
    return {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}, "spec": spec}


def put_bgp_config(etcd, **spec) -> None:
    etcd.put_json(f"{RESOURCES}/bgpconfigurations/default", _resource("BGPConfiguration", "default", spec))


@pytest.fixture
def cluster(lab, etcd):
    c = Cluster(lab, etcd)
    yield c
    c.close()


def _write_secret(base: Path, password: str) -> None:
    (base / "bgp-secrets").mkdir(parents=True, exist_ok=True)
    (base / "bgp-secrets" / "mesh").write_text(password + "\n")


def _rendered(cluster: Cluster, name: str, text: str) -> bool:
    return text in (cluster.calico[name].run_dir / "bird.cfg").read_text()


def test_mesh_password_mismatch_keeps_sessions_down_until_fixed(cluster, etcd, tmp_path):
    put_bgp_config(etcd, nodeMeshPassword={"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}})
    dirs = {name: tmp_path / name for name in ("node1", "node2")}
    for base in dirs.values():
        _write_secret(base, "right-one")
    for i, base in enumerate(dirs.values(), start=1):
        cluster.add_node(i, CALICO_SECRETS_DIR=str(base))
    cluster.wait_established()
    assert _rendered(cluster, "node1", 'password "right-one";')

    _write_secret(dirs["node2"], "wrong-one")
    wait_for(lambda: _rendered(cluster, "node2", 'password "wrong-one";'), 15, "node2 to render its new password")
    wait_for(lambda: "Established" not in cluster.bgp_states("node2").values(), 15, "the session to drop")
    deadline = time.monotonic() + DOWN_FOR
    while time.monotonic() < deadline:
        states = {n: cluster.bgp_states(n) for n in ("node1", "node2")}
        assert all(s != "Established" for node in states.values() for s in node.values()), states
        time.sleep(0.5)

    # A missing secret: the session is rendered disabled, never without a password, and the log says why.
    (dirs["node2"] / "bgp-secrets" / "mesh").unlink()
    wait_for(lambda: _rendered(cluster, "node2", "disabled;  # password secret bgp-secrets/mesh"), 15,
             "node2 to disable the session")
    assert "BGP password secret bgp-secrets/mesh" in cluster.calico["node2"].log()

    _write_secret(dirs["node2"], "right-one")
    cluster.wait_established(timeout=60)


def test_listen_port_change_moves_sessions_to_the_new_port(cluster, etcd):
    cluster.mesh(2)

    def listening(name: str, port: int) -> bool:
        out = cluster.lab.in_ns(cluster.ns[name], "ss", "-Hltn").stdout
        return any(re.search(rf":{port}\s", line + " ") for line in out.splitlines())

    assert listening("node1", 179)
    put_bgp_config(etcd, listenPort=1790)
    for name in ("node1", "node2"):
        wait_for(lambda name=name: listening(name, 1790) and not listening(name, 179), 30,
                 f"{name}'s BIRD to listen on 1790 only")
    assert _rendered(cluster, "node1", "neighbor 192.168.200.2 port 1790 as 64512;")
    cluster.wait_established(timeout=60)
    established = cluster.lab.in_ns(cluster.ns["node1"], "ss", "-Htn", "state", "established").stdout
    assert re.search(r":1790\s", established + " "), established


def test_service_cluster_ips_are_advertised_by_every_node(cluster, etcd):
    cluster.mesh(2)
    put_bgp_config(etcd, serviceClusterIPs=[{"cidr": "10.96.0.0/16"}])

    def learnt(name: str, peer: str) -> bool:
        out = cluster.calico[name].birdc("show", "route", "protocol", f"Mesh_{peer.replace('.', '_')}")
        return "10.96.0.0/16" in out

    wait_for(lambda: learnt("node2", "192.168.200.1") and learnt("node1", "192.168.200.2"), 30,
             "each node to learn the service range from the other")
    # As in Calico: every node advertises the range and none programs it into its kernel (kube-proxy's job).
    assert not any(r.startswith("10.96.0.0/16") for r in cluster.routes("node2"))


def test_bgp_filter_keeps_a_block_out_of_the_peer_kernel(cluster, etcd):
    add_pool(etcd, "pool", "10.83.0.0/16", 26)
    put_bgp_config(etcd, nodeToNodeMeshEnabled=False)
    etcd.put_json(f"{RESOURCES}/bgpfilters/no-first-block", _resource("BGPFilter", "no-first-block", {
        "exportV4": [{"cidr": "10.83.0.0/26", "matchOperator": "Equal", "action": "Reject"}]}))
    etcd.put_json(f"{RESOURCES}/bgppeers/everyone", _resource("BGPPeer", "everyone", {
        "nodeSelector": "all()", "peerSelector": "all()", "filters": ["no-first-block"]}))
    cluster.mesh(2)
    cluster.add_pod("node1")  # the pool's first block: 10.83.0.0/26
    cluster.add_pod("node2")
    cluster.wait_route("node1", r"^10\.83\.0\.64/26 via 192\.168\.200\.2")  # unfiltered the other way
    time.sleep(3)
    assert not any(r.startswith("10.83.0.0/26 via") for r in cluster.routes("node2")), cluster.routes("node2")
    etcd.ctl("del", f"{RESOURCES}/bgpfilters/no-first-block")  # a filter that is gone is skipped, as in confd
    cluster.wait_route("node2", r"^10\.83\.0\.0/26 via 192\.168\.200\.1")


def _start_tor(cluster: Cluster, password: str) -> tuple[str, Path]:
    """A plain BIRD 2 router ("top of rack", AS 65100) on the switch at .250 that programs what it learns."""
    lab = cluster.lab
    ns = lab.cluster_node(cluster.switch, 250)
    cluster._made.append(ns)
    run_dir = lab.workdir / f"tor-{ns}"
    run_dir.mkdir()
    (run_dir / "bird.cfg").write_text(
        "router id 192.168.200.250;\nprotocol device {}\n"
        "protocol kernel { ipv4 { import none; export all; }; }\n"
        "protocol bgp node1 {\n  local 192.168.200.250 as 65100;\n  neighbor 192.168.200.1 as 64512;\n"
        f'  password "{password}";\n  connect retry time 2;\n  ipv4 {{ import all; export none; }};\n}}\n')
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c", str(run_dir / "bird.cfg"),
                             "-s", str(run_dir / "bird.ctl"), "-P", str(run_dir / "bird.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(proc)  # the lab kills it, also after a failure
    return ns, run_dir


def test_explicit_peer_password_and_service_range_reach_a_router(cluster, etcd, tmp_path):
    """A BGPPeer with a password (eBGP, multihop as confd renders it): the router learns the service range and
    programs it, so traffic for cluster IPs from outside reaches the cluster."""
    put_bgp_config(etcd, serviceClusterIPs=[{"cidr": "10.96.0.0/16"}])
    etcd.put_json(f"{RESOURCES}/bgppeers/tor", _resource("BGPPeer", "tor", {
        "peerIP": "192.168.200.250", "asNumber": 65100,
        "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}}}))
    (tmp_path / "bgp-secrets").mkdir()
    (tmp_path / "bgp-secrets" / "tor").write_text("tor-pw\n")
    cluster.add_node(1, CALICO_SECRETS_DIR=str(tmp_path))
    tor, run_dir = _start_tor(cluster, "tor-pw")

    def tor_routes() -> str:
        return cluster.lab.in_ns(tor, "ip", "-4", "route").stdout

    wait_for(lambda: "10.96.0.0/16 via 192.168.200.1" in tor_routes(), 60, "the router to program the service range")
    state = sh("ip", "netns", "exec", tor, "birdc", "-s", str(run_dir / "bird.ctl"), "show", "protocols", "node1",
               check=False).stdout
    assert "Established" in state, state
    assert cluster.bgp_states("node1") == {"Global_192_168_200_250": "Established"}
