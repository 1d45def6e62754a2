"""An operable node (issue 16): identity (one address, one node; its registration kept), start-up input
refused with a message naming the variable, and health (probes, the HTTP endpoint, systemd's READY=1).

Every calico-node runs in a node namespace of the lab; the health endpoint is asked on that
namespace's loopback; the systemd socket is one the test binds in its temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.cluster import Cluster
from tests.integration.helpers import kernel_has_ipip
from tests.lab import REPO, add_pool, plugin_dir, pool, wait_for

NODES = "/calico/resources/v3/projectcalico.org/nodes/"


@pytest.fixture
def cluster(lab, etcd):
    add_pool(etcd, "pool", "10.90.0.0/16", 26)
    c = Cluster(lab, etcd)
    yield c
    c.close()


def _bgp(etcd, name: str) -> dict:
    node = etcd.get_json(NODES + name) or {}
    return (node.get("spec") or {}).get("bgp") or {}


def _probe(cluster: Cluster, name: str, *flags: str, node=None) -> subprocess.CompletedProcess:
    node = node or cluster.calico[name]
    return cluster.lab.in_ns(cluster.ns[name], "env", f"CALICO_RUN_DIR={node.run_dir}",
                             f"CALICO_LIB_DIR={node.lib_dir}", f"{plugin_dir()}/calico-node", *flags)


def _exited(node, timeout: float = 30) -> int:
    assert node.proc is not None
    return node.proc.wait(timeout)


# --- identity -----------------------------------------------------------------------------------


def test_a_node_with_another_nodes_address_is_refused(cluster, etcd):
    cluster.add_node(1, IP6="fd00:200::1/64")
    wait_for(lambda: _bgp(etcd, "node1").get("ipv6Address"), 30, "node1 to register")
    cluster.add_node(2, start=False)
    second = cluster.start("node2", IP="192.168.200.1/24")
    assert _exited(second) == 1
    assert "Calico node 'node1' is already using the IPv4 address 192.168.200.1." in second.log()
    assert etcd.get_json(NODES + "node2") is None  # nothing registered
    cluster.add_node(3, start=False)
    third = cluster.start("node3", IP="192.168.200.3/24", IP6="fd00:200::1/120")  # prefix ignored, as Calico
    assert _exited(third) == 1
    assert "Calico node 'node1' is already using the IPv6 address fd00:200::1." in third.log()
    assert "Traceback" not in third.log()
    assert _bgp(etcd, "node1")["ipv4Address"] == "192.168.200.1/24"  # the first node keeps its registration
    assert cluster.calico["node1"].proc.poll() is None


def test_a_name_registered_from_another_address_takes_the_new_one(cluster, etcd, lab):
    cluster.add_node(1)
    wait_for(lambda: _bgp(etcd, "node1").get("ipv4Address") == "192.168.200.1/24", 30, "node1 to register")
    cluster.calico["node1"].stop(graceful=True)
    cluster.add_node(2, start=False)
    # The machine behind the name changed (Calico's rule: addresses may change; it warns and updates).
    moved = lab.calico_node(cluster.ns["node2"], etcd, "node1", IP="192.168.200.2/24")
    try:
        wait_for(lambda: _bgp(etcd, "node1").get("ipv4Address") == "192.168.200.2/24", 30, "the new address")
        assert moved.proc.poll() is None
        assert "was registered with ipv4Address 192.168.200.1/24, now 192.168.200.2/24" in moved.log()
    finally:
        moved.stop(graceful=False)


def test_a_changed_registration_is_put_back_from_the_watch(cluster, etcd):
    cluster.add_node(1)
    node = cluster.calico["node1"]
    wait_for(lambda: _probe(cluster, "node1", "-felix-ready").returncode == 0, 30, "node1 to be ready")
    value = etcd.get_json(NODES + "node1")
    value["spec"]["bgp"]["ipv4Address"] = "10.9.9.9/24"
    etcd.put_json(NODES + "node1", value)
    wait_for(lambda: _bgp(etcd, "node1").get("ipv4Address") == "192.168.200.1/24", 20, "the address put back")
    assert "registration was changed in etcd: putting back its own ipv4Address 192.168.200.1/24" in node.log()
    assert etcd.get_json(NODES + "node1")["metadata"]["labels"] == value["metadata"]["labels"]  # rest kept


def test_two_calico_nodes_with_one_name_stop_fighting_and_say_so(cluster, etcd, lab):
    cluster.add_node(1)
    wait_for(lambda: _probe(cluster, "node1", "-felix-ready").returncode == 0, 30, "node1 to be ready")
    cluster.add_node(2, start=False)
    twin = lab.calico_node(cluster.ns["node2"], etcd, "node1", IP="192.168.200.2/24")
    try:
        first = cluster.calico["node1"]
        wait_for(lambda: "is another calico-node running with this NODENAME?" in first.log() + twin.log(), 40,
                 "one of the two to give up putting its address back")
        time.sleep(2)
        revision = _mod_revision(etcd, NODES + "node1")
        time.sleep(3)
        assert _mod_revision(etcd, NODES + "node1") == revision  # no more writes
    finally:
        twin.stop(graceful=False)


def _mod_revision(etcd, key: str) -> int:
    return json.loads(etcd.ctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"]


# --- start-up input -----------------------------------------------------------------------------

BUNDLE = REPO / "dist" / "bin" / "calico-node"


@pytest.mark.skipif(not BUNDLE.exists(), reason="no bundle at dist/bin/calico-node: run `make build` first")
@pytest.mark.parametrize("bad,expected", [
    ({"ETCD_CA_CERT_FILE": "/nonexistent"},
     "calico-node: ETCD_CA_CERT_FILE='/nonexistent': cannot read it: No such file or directory\n"),
    ({"NO_DEFAULT_POOLS": "maybe"},
     "calico-node: NO_DEFAULT_POOLS='maybe' is not a boolean (true or false; also 1/0, t/f)\n"),
    ({"FELIX_HEALTHPORT": "http"}, "calico-node: FELIX_HEALTHPORT='http' is not a port (1 to 65535)\n"),
])
def test_the_bundle_refuses_bad_environment_naming_the_variable(node, etcd, bad, expected):
    env = {"PATH": os.environ["PATH"], "NODENAME": "node1", "ETCD_ENDPOINTS": etcd.url, **bad}
    run = subprocess.run(["ip", "netns", "exec", node, str(BUNDLE)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", expected)
    assert etcd.get_json(NODES + "node1") is None


def test_a_missing_nodename_falls_back_and_says_so(cluster, etcd, lab):
    cluster.add_node(1, start=False)
    node = lab.calico_node(cluster.ns["node1"], etcd, "ignored", IP="192.168.200.1/24", NODENAME="",
                           HOSTNAME="Fallback-Host")
    try:
        wait_for(lambda: etcd.get_json(NODES + "fallback-host"), 30, "the node registered under HOSTNAME")
        assert "NODENAME is not set: using node name fallback-host from HOSTNAME (lowercased)" in node.log()
        # calico-node writes the file just after registering: under load the test can get there first.
        wait_for((node.lib_dir / "nodename").exists, 30, "the nodename file")
        assert (node.lib_dir / "nodename").read_text() == "fallback-host"
    finally:
        node.stop(graceful=True)
    # The next start without NODENAME takes the stored name first, as Calico (before HOSTNAME).
    again = lab.calico_node(cluster.ns["node1"], etcd, "ignored", IP="192.168.200.1/24", NODENAME="",
                            HOSTNAME="other-host", CALICO_LIB_DIR=str(node.lib_dir))
    try:
        wait_for(lambda: "using node name fallback-host from the nodename file" in again.log(), 30, "the stored name")
        assert etcd.get_json(NODES + "other-host") is None
    finally:
        again.stop(graceful=True)


# --- health -------------------------------------------------------------------------------------


def test_probes_before_and_after_ready_and_after_sigkill(cluster, etcd):
    cluster.add_node(1, start=False)
    cluster.add_node(2)
    before = cluster.start("node1")
    cluster.wait_established()
    for flag in ("-felix-live", "-felix-ready", "-bird-live", "-bird-ready", "-bird6-live", "-bird6-ready",
                 "--felix-ready", "--ready"):
        run = _probe(cluster, "node1", flag)
        assert (run.returncode, run.stderr) == (0, ""), flag
    # node2 goes away: within calico-node's first 30 s every session must be up (Calico's rule).
    cluster.calico["node2"].stop(graceful=False)
    os.utime(before.lib_dir / "nodename")
    wait_for(lambda: _probe(cluster, "node1", "-bird-ready").returncode == 1, 30, "-bird-ready to fail")
    assert "BGP not established with 192.168.200.2" in _probe(cluster, "node1", "-bird-ready").stderr
    assert _probe(cluster, "node1", "-felix-ready").returncode == 0  # the dataplane is fine
    # calico-node killed: BIRD still answers, but nothing says the node is alive any more.
    before.proc.send_signal(signal.SIGKILL)
    before.proc.wait(10)
    assert before.birdc("show", "status").startswith("BIRD")
    for flag in ("-felix-live", "-felix-ready", "-bird-live"):
        run = _probe(cluster, "node1", flag)
        assert run.returncode == 1 and f"calico-node (pid {before.proc.pid}) is not running" in run.stderr, flag
    status = cluster.lab.in_ns(cluster.ns["node1"], "env", f"CALICO_RUN_DIR={before.run_dir}",
                               f"{plugin_dir()}/calicoctl", "node", "status")
    assert (status.returncode, status.stdout) == (1, "Calico process is not running.\n")
    assert f"calico-node (pid {before.proc.pid}) is not running" in status.stderr


def test_probes_before_calico_node_runs(cluster):
    cluster.add_node(1, start=False)

    class NotStarted:
        run_dir = cluster.lab.workdir / "never-run"
        lib_dir = cluster.lab.workdir / "never-lib"

    for flag in ("-felix-live", "-felix-ready", "-bird-live", "-bird6-ready"):
        run = _probe(cluster, "node1", flag, node=NotStarted)
        assert run.returncode == 1 and "calico-node is not ready" in run.stderr and "Traceback" not in run.stderr


def _get(cluster: Cluster, name: str, url: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
            " print(r.status); print(r.read().decode(), end='')\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode(), end='')\n"
            "except OSError as e:\n print(0); print(e)\n")
    out = cluster.lab.in_ns(cluster.ns[name], sys.executable, "-c", code, url).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_health_endpoint_on_the_node_loopback(cluster, etcd, lab):
    cluster.add_node(1)
    cluster.add_node(2, start=False)
    cluster.start("node2", FELIX_HEALTHPORT="9199", FELIX_HEALTHHOST="0.0.0.0")
    wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9099/readiness")[0] == 200, 30, "node1 ready")
    assert _get(cluster, "node1", "http://127.0.0.1:9099/liveness") == (200, "ok\n")
    assert _get(cluster, "node1", "http://127.0.0.1:9099/other")[0] == 404
    assert _get(cluster, "node1", "http://192.168.200.1:9099/liveness")[0] == 0  # loopback only by default
    wait_for(lambda: _get(cluster, "node2", "http://192.168.200.2:9199/liveness")[0] == 200, 30,
             "node2's endpoint on its own port and every address")
    if not kernel_has_ipip(lab):
        # A pool this kernel cannot serve: live, not ready, the reason in the body.
        etcd.put_json("/calico/resources/v3/projectcalico.org/ippools/tunnelled",
                      pool("tunnelled", "10.91.0.0/16", ipip="Always"))
        wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9099/readiness")[0] == 503, 20, "503")
        assert "IPIP pool tunnelled (10.91.0.0/16)" in _get(cluster, "node1", "http://127.0.0.1:9099/readiness")[1]
        assert _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 200
    cluster.calico["node1"].stop(graceful=True)
    assert _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 0  # gone with the process


def test_sd_notify_ready_once_in_sync_and_stopping(cluster, lab, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(40)
        cluster.add_node(1, start=False)
        started = time.monotonic()
        node = cluster.start("node1", NOTIFY_SOCKET=path)
        message = sock.recv(4096).decode()
        assert message.startswith("READY=1\n") and "STATUS=in sync with etcd" in message
        # Sent when in sync: the probe agrees at once.
        assert _probe(cluster, "node1", "-felix-ready").returncode == 0
        assert time.monotonic() - started < 40
        node.stop(graceful=True)
        assert sock.recv(4096) == b"STOPPING=1"


def test_felixconfiguration_moves_and_stops_the_health_endpoint_where_the_environment_does_not_say(cluster, etcd):
    cluster.add_node(1)
    cluster.add_node(2, start=False)
    cluster.start("node2", FELIX_HEALTHPORT="9199")  # node2's port is its environment's
    wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 200, 30, "node1's endpoint")
    wait_for(lambda: _get(cluster, "node2", "http://127.0.0.1:9199/liveness")[0] == 200, 30, "node2's endpoint")

    def felix(spec: dict) -> None:
        etcd.put_json("/calico/resources/v3/projectcalico.org/felixconfigurations/default", {
            "kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "default"},
            "spec": spec})

    felix({"healthPort": 9299})
    wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9299/liveness")[0] == 200, 15, "node1 on 9299")
    assert _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 0
    assert _get(cluster, "node2", "http://127.0.0.1:9199/liveness")[0] == 200  # FELIX_HEALTHPORT wins
    felix({"healthEnabled": False})
    wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 0
             and _get(cluster, "node1", "http://127.0.0.1:9299/liveness")[0] == 0, 15, "node1's endpoint gone")
    wait_for(lambda: _get(cluster, "node2", "http://127.0.0.1:9199/liveness")[0] == 0, 15, "node2's too")
    felix({})
    wait_for(lambda: _get(cluster, "node1", "http://127.0.0.1:9099/liveness")[0] == 200, 15, "back on 9099")
