"""The fast path: `calico` hands its request to calico-node over a root-only unix socket.

Same handlers, two hosts: results must be identical to the in-process path, the plugin must
fall back to doing the work itself when the agent is absent, dead or of another build, and
concurrent requests must stay correct.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni_calico.agent_client import PROTOCOL, FieldReader, forward, frame
from tests.integration.cluster import Cluster
from tests.integration.helpers import allocated
from tests.lab import Lab, add_pool, wait_for


@pytest.fixture
def one_node(lab, etcd):
    add_pool(etcd, "pool", "10.95.0.0/16", 26)
    cluster = Cluster(lab, etcd)
    cluster.add_node(1)
    yield cluster
    cluster.close()


def _env(cluster: Cluster) -> dict[str, str]:
    return {"CALICO_RUN_DIR": str(cluster.calico["node1"].run_dir)}


def _served(cluster: Cluster) -> int:
    return cluster.calico["node1"].served("ADD")


def test_requests_go_through_the_agent(one_node, lab, etcd):
    c = one_node
    sock = c.calico["node1"].run_dir / "cni.sock"
    wait_for(sock.exists, 20, "the agent's CNI socket")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    pod = c.pod()
    conf = c.conf("node1")
    add = Lab.run_plugin(c.ns["node1"], "ADD", conf, "agent00000000001", Lab.netns_path(pod), extra_env=_env(c))
    assert add.rc == 0, add.stdout + add.stderr
    assert _served(c) == 1  # the agent did it
    address = add.out["ips"][0]["address"].split("/")[0]
    # The pod's replies to its host meet its egress policy (cali-wl-to-host): calico-node programs its
    # interface a moment after the ADD (until then, as in Felix, an unknown interface is dropped).
    assert lab.ping(c.ns["node1"], address, within=10)
    check = Lab.run_plugin(c.ns["node1"], "CHECK", {**conf, "prevResult": add.out}, "agent00000000001",
                           Lab.netns_path(pod), extra_env=_env(c))
    assert check.rc == 0, check.stdout
    # Errors come back the same way: one JSON document, the right code.
    bad = Lab.run_plugin(c.ns["node1"], "ADD", {**conf, "mtu": 5}, "agent00000000002", Lab.netns_path(pod),
                         extra_env=_env(c))
    assert bad.rc == 1 and bad.out["code"] == 7 and "mtu" in bad.out["msg"]
    delete = Lab.run_plugin(c.ns["node1"], "DEL", conf, "agent00000000001", Lab.netns_path(pod), extra_env=_env(c))
    assert delete.rc == 0 and allocated(etcd) == []


def test_falls_back_when_the_agent_is_gone_or_of_another_build(one_node, lab, etcd):
    c = one_node
    sock = c.calico["node1"].run_dir / "cni.sock"
    wait_for(sock.exists, 20, "the agent's CNI socket")
    # Another build: the agent refuses before doing anything, the client says "do it yourself".
    stdin = json.dumps(c.conf("node1")).encode()
    assert forward({**_env(c), "CNI_COMMAND": "VERSION"}, stdin, "some-other-build") is None
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(sock))
    raw.sendall(frame(b"%d" % PROTOCOL, b"old", b"CNI_COMMAND=ADD", stdin) + b"\n")
    refused = FieldReader(raw)
    assert refused.field() == b"0" and b"agent is build" in refused.field()
    raw.close()
    # A plugin of the older JSON-lines protocol: the agent closes at once, so it works in-process.
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(sock))
    raw.settimeout(5)
    raw.sendall(json.dumps({"protocol": 1, "build": "old", "env": {}, "stdin": ""}).encode() + b"\n")
    assert raw.recv(4096) == b""
    raw.close()
    # A dead agent (socket file left behind): the plugin does the work in-process.
    c.calico["node1"].proc.send_signal(signal.SIGKILL)
    c.calico["node1"].proc.wait()
    assert sock.exists()
    pod = c.pod()
    before = _served(c)
    add = Lab.run_plugin(c.ns["node1"], "ADD", c.conf("node1"), "fall00000000001", Lab.netns_path(pod),
                         extra_env=_env(c))
    assert add.rc == 0, add.stdout + add.stderr
    assert _served(c) == before
    assert Lab.run_plugin(c.ns["node1"], "DEL", c.conf("node1"), "fall00000000001", Lab.netns_path(pod),
                          extra_env=_env(c)).rc == 0


def test_parallel_adds_through_the_agent(one_node, lab, etcd):
    c = one_node
    wait_for((c.calico["node1"].run_dir / "cni.sock").exists, 20, "the agent's CNI socket")
    pods = [c.pod() for _ in range(30)]
    cids = [f"burst{i:03d}".ljust(20, "0") for i in range(30)]
    conf = c.conf("node1")

    def add(job):
        return Lab.run_plugin(c.ns["node1"], "ADD", conf, job[0], Lab.netns_path(job[1]), extra_env=_env(c))

    with ThreadPoolExecutor(30) as ex:
        runs = list(ex.map(add, zip(cids, pods, strict=True)))
    assert [r.stdout for r in runs if r.rc != 0] == []
    addresses = {r.out["ips"][0]["address"] for r in runs}
    assert len(addresses) == 30 and len(allocated(etcd)) == 30
    assert _served(c) == 30

    def delete(job):
        return Lab.run_plugin(c.ns["node1"], "DEL", conf, job[0], Lab.netns_path(job[1]), extra_env=_env(c))

    with ThreadPoolExecutor(30) as ex:
        assert all(r.rc == 0 for r in ex.map(delete, zip(cids, pods, strict=True)))
    assert allocated(etcd) == []


def _cni_servers(pid: int) -> list[int]:
    """calico-node's children that are its CNI server (BIRD is a child too)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    found = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"--serve-cni" in f.read():
                    found.append(child)
        except FileNotFoundError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cni_server_process_is_restarted_and_dies_with_calico_node(one_node, lab, etcd):
    c = one_node
    node = c.calico["node1"]
    wait_for((node.run_dir / "cni.sock").exists, 20, "the agent's CNI socket")
    [server] = _cni_servers(node.proc.pid)
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: _cni_servers(node.proc.pid) not in ([], [server]), 10, "calico-node to start its CNI server again")
    assert "starting it again" in node.log()
    pod = c.pod()
    before = _served(c)

    def served_by_agent() -> bool:
        run = Lab.run_plugin(c.ns["node1"], "CHECK", c.conf("node1"), "none00000000001", Lab.netns_path(pod),
                             extra_env=_env(c))
        return run.rc != 0 and node.served("CHECK") > 0

    wait_for(served_by_agent, 10, "the new CNI server to answer")
    add = Lab.run_plugin(c.ns["node1"], "ADD", c.conf("node1"), "again0000000001", Lab.netns_path(pod),
                         extra_env=_env(c))
    assert add.rc == 0, add.stdout + add.stderr
    assert _served(c) == before + 1
    [server] = _cni_servers(node.proc.pid)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    wait_for(lambda: not _alive(server), 5, "the CNI server to die with calico-node")
    assert Lab.run_plugin(c.ns["node1"], "DEL", c.conf("node1"), "again0000000001", Lab.netns_path(pod),
                          extra_env=_env(c)).rc == 0
    assert allocated(etcd) == []
