"""Issue 6, properties 4 and 5: a stale DEL never takes a live pod's things; freed addresses queue.

- A DEL carrying a pod's OLD container ID, arriving after the pod was re-created (same pod name,
  so the same host veth and endpoint name) while the OLD network namespace still exists, removes
  neither the live pod's veth, route, endpoint nor address — in-process and through the
  calico-node agent.
- A released address goes to the back of its block's queue: with a /29 pool in /29 blocks, ADD
  then DEL over and over hands out all 8 addresses before any comes back, in the same order.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzz.driver import Driver
from tests.integration.cluster import Cluster
from tests.integration.helpers import ENDPOINTS, HANDLES, allocated, assert_nothing_left
from tests.lab import Lab, add_pool, plugin_dir, wait_for

pytestmark = pytest.mark.reliability

POD_ARGS = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
OLD, NEW = "old0000000000002", "new0000000000002"


def _stale_del_with_old_netns(lab: Lab, node: str, conf: dict, etcd, old: str, new: str,
                              env: dict[str, str] | None = None) -> None:
    first = Lab.run_plugin(node, "ADD", conf, OLD, Lab.netns_path(old), args=POD_ARGS, extra_env=env)
    assert first.rc == 0, first.stdout + first.stderr[-500:]
    old_address = first.out["ips"][0]["address"].split("/")[0]
    # The pod is re-created: a new sandbox, while the old one's namespace is still there.
    live = Lab.run_plugin(node, "ADD", conf, NEW, Lab.netns_path(new), args=POD_ARGS, extra_env=env)
    assert live.rc == 0, live.stdout + live.stderr[-500:]
    address = live.out["ips"][0]["address"].split("/")[0]
    veth = live.out["interfaces"][0]["name"]
    assert address != old_address  # the old sandbox still holds its address until its DEL
    assert os.path.exists(Lab.netns_path(old))

    stale = Lab.run_plugin(node, "DEL", conf, OLD, Lab.netns_path(old), args=POD_ARGS, extra_env=env)
    assert stale.rc == 0 and stale.stdout == "", stale.stdout + stale.stderr[-500:]
    assert veth in lab.links(node)
    assert [r for r in lab.routes(node) if r.startswith(f"{address} dev {veth}")], lab.routes(node)
    assert "eth0" in lab.links(new)
    # With calico-node, the pod's replies to its host pass once its interface is programmed (cali-wl-to-host).
    assert lab.ping(node, address, within=10)
    assert etcd.keys(HANDLES) == [f"{HANDLES}{conf['name']}.{NEW}"]
    endpoints = etcd.keys(ENDPOINTS)
    assert len(endpoints) == 1 and etcd.get_json(endpoints[0])["spec"]["containerID"] == NEW
    assert allocated(etcd) == [address]
    # The runtime's repeated stale DEL is just as harmless; then the live pod goes for real.
    assert Lab.run_plugin(node, "DEL", conf, OLD, Lab.netns_path(old), args=POD_ARGS, extra_env=env).rc == 0
    assert lab.ping(node, address)
    assert Lab.run_plugin(node, "DEL", conf, NEW, Lab.netns_path(new), args=POD_ARGS, extra_env=env).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_stale_del_while_the_old_netns_still_exists(lab, node, make_pod, pool, conf, etcd):
    _stale_del_with_old_netns(lab, node, conf(), etcd, make_pod(), make_pod())


def test_stale_del_while_the_old_netns_still_exists_through_the_agent(lab, etcd, make_pod):
    add_pool(etcd, "pool", "10.74.0.0/16", 26)
    cluster = Cluster(lab, etcd)
    try:
        cluster.add_node(1)
        calico = cluster.calico["node1"]
        wait_for((calico.run_dir / "cni.sock").exists, 30, "the agent's CNI socket")
        served = calico.served("ADD")
        _stale_del_with_old_netns(lab, cluster.ns["node1"], cluster.conf("node1"), etcd, make_pod(), make_pod(),
                                  env={"CALICO_RUN_DIR": str(calico.run_dir)})
        assert calico.served("ADD") == served + 2  # the agent did the work
    finally:
        cluster.close()


def test_a_whole_block_cycles_before_an_address_comes_back(lab, node, make_pod, conf, etcd, tmp_path):
    add_pool(etcd, "fifo29", "10.75.0.0/29", 29)  # one block of 8
    pod = make_pod()
    netconf = json.dumps(conf()).encode()
    env = {"PATH": os.environ.get("PATH", ""), "CNI_NETNS": Lab.netns_path(pod), "CNI_IFNAME": "eth0",
           "CNI_PATH": plugin_dir(), "CALICO_RUN_DIR": os.environ["CALICO_RUN_DIR"]}
    handed_out = []
    with Driver(node, str(tmp_path / "driver.err")) as driver:
        for i in range(8 * 2 + 4):  # a new container each time, as pods come and go
            cid = f"cycle{i:03d}".ljust(16, "0")
            add = driver.run("calico", {**env, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid}, netconf)
            assert add["status"] == 0, add["stdout"]
            handed_out.append(json.loads(add["stdout"])["ips"][0]["address"].split("/")[0])
            delete = driver.run("calico", {**env, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid}, netconf)
            assert delete["status"] == 0, delete["stdout"]
    assert sorted(handed_out[:8], key=lambda a: int(a.rsplit(".", 1)[1])) == [f"10.75.0.{i}" for i in range(8)]
    for i in range(len(handed_out) - 8):
        window = handed_out[i:i + 8]
        assert len(set(window)) == 8, f"{window} repeats an address within one turn of the block"
        assert handed_out[i + 8] == handed_out[i]  # the oldest freed address is the next one out
    assert_nothing_left(lab, node, etcd)
