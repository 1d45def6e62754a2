"""calico-ipam on real etcd: blocks and affinity, new blocks, borrowing, pool choice, two nodes at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.helpers import allocated, assert_nothing_left
from tests.lab import Lab, add_pool

AFFINITY = "/calico/ipam/v2/host/{node}/ipv4/block/"


def _add(node, conf, cid, pod, **kw):
    run = Lab.run_plugin(node, "ADD", conf, cid, Lab.netns_path(pod), **kw)
    assert run.rc == 0, run.stdout + run.stderr[-800:]
    return run.out["ips"][0]["address"].split("/")[0]


def test_block_claimed_with_affinity_and_a_new_one_when_full(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "small-blocks", "10.63.0.0/24", 30)  # blocks of 4 addresses
    pods = [make_pod() for _ in range(5)]
    addresses = [_add(node, conf(), f"blk{i}".ljust(16, "0"), pod) for i, pod in enumerate(pods)]
    assert addresses[:4] == ["10.63.0.0", "10.63.0.1", "10.63.0.2", "10.63.0.3"]
    assert addresses[4] == "10.63.0.4"
    affine = sorted(etcd.keys(AFFINITY.format(node="node1")))
    assert affine == [AFFINITY.format(node="node1") + "10.63.0.0-30", AFFINITY.format(node="node1") + "10.63.0.4-30"]
    block = etcd.get_json("/calico/ipam/v2/assignment/ipv4/block/10.63.0.0-30")
    assert block["affinity"] == "host:node1" and block["unallocated"] == []
    assert {a["secondary"]["node"] for a in block["attributes"]} == {"node1"}
    assert etcd.get_json(AFFINITY.format(node="node1") + "10.63.0.0-30")["state"] == "confirmed"
    for i, pod in enumerate(pods):
        assert Lab.run_plugin(node, "DEL", conf(), f"blk{i}".ljust(16, "0"), Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_released_address_is_reused_last(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "fifo", "10.64.0.0/26", 26)
    pods = [make_pod() for _ in range(3)]
    first = _add(node, conf(), "fifo0".ljust(16, "0"), pods[0])
    assert Lab.run_plugin(node, "DEL", conf(), "fifo0".ljust(16, "0"), Lab.netns_path(pods[0])).rc == 0
    second = _add(node, conf(), "fifo1".ljust(16, "0"), pods[1])
    assert second != first  # the freed ordinal went to the back of the queue
    Lab.run_plugin(node, "DEL", conf(), "fifo1".ljust(16, "0"), Lab.netns_path(pods[1]))


def test_borrowing_and_strict_affinity(lab, etcd, make_pod, conf):
    add_pool(etcd, "one-block", "10.65.0.0/26", 26)
    node1, node2 = lab.node(etcd, index=1), lab.node(etcd, index=2)
    try:
        a = _add(node1, conf(node="node1"), "own0".ljust(16, "0"), make_pod())
        # The pool's only block is node1's; node2 borrows from it (strict affinity off by default).
        b = _add(node2, conf(node="node2"), "borrow0".ljust(16, "0"), make_pod())
        assert a != b and b.startswith("10.65.0.")
        block = etcd.get_json("/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26")
        assert block["affinity"] == "host:node1"
        assert etcd.keys(AFFINITY.format(node="node2")) == []
        etcd.put_json("/calico/ipam/v2/config", {"strict_affinity": True, "auto_allocate_blocks": True})
        refused = Lab.run_plugin(node2, "ADD", conf(node="node2"), "borrow1".ljust(16, "0"), Lab.netns_path(make_pod()))
        assert refused.rc != 0 and refused.out["code"] == 101
        assert len(allocated(etcd)) == 2
    finally:
        for ns in (node1, node2):
            lab.remove_netns(ns)


def test_pool_choice(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "pool-a", "10.66.0.0/24")
    add_pool(etcd, "pool-b", "10.67.0.0/24")
    add_pool(etcd, "pool-off", "10.68.0.0/24", disabled=True)
    by_name = _add(node, conf(ipam={"type": "calico-ipam", "ipv4_pools": ["pool-b"]}), "pc0".ljust(16, "0"), make_pod())
    assert by_name.startswith("10.67.0.")
    by_cidr = _add(node, conf(ipam={"type": "calico-ipam", "ipv4_pools": ["10.66.0.0/24"]}), "pc1".ljust(16, "0"),
                   make_pod())
    assert by_cidr.startswith("10.66.0.")
    for i in range(2, 6):  # without a choice: any enabled pool, never the disabled one
        assert not _add(node, conf(), f"pc{i}".ljust(16, "0"), make_pod()).startswith("10.68.")
    disabled = Lab.run_plugin(node, "ADD", conf(ipam={"type": "calico-ipam", "ipv4_pools": ["pool-off"]}),
                              "pc9".ljust(16, "0"), Lab.netns_path(make_pod()))
    assert disabled.rc != 0 and "disabled" in disabled.out["msg"]
    unknown = Lab.run_plugin(node, "ADD", conf(ipam={"type": "calico-ipam", "ipv4_pools": ["nope"]}),
                             "pc9".ljust(16, "0"), Lab.netns_path(make_pod()))
    assert unknown.rc != 0 and unknown.out["code"] == 7 and "nope" in unknown.out["msg"]


@pytest.mark.parametrize("per_node", [15])
def test_two_nodes_in_parallel_never_share_an_address(per_node, lab, etcd, make_pod, conf):
    add_pool(etcd, "shared", "10.69.0.0/26", 29)  # 8 blocks of 8: nodes race for blocks and borrow
    nodes = [lab.node(etcd, index=1), lab.node(etcd, index=2)]
    jobs = [(n, f"n{j}", f"two{j}{i:02d}".ljust(16, "0"), make_pod()) for j, n in enumerate(nodes)
            for i in range(per_node)]
    try:
        with ThreadPoolExecutor(len(jobs)) as ex:
            runs = list(ex.map(lambda job: Lab.run_plugin(job[0], "ADD", conf(node=job[1]), job[2],
                                                          Lab.netns_path(job[3])), jobs))
        assert [r.stdout for r in runs if r.rc != 0] == []
        addresses = [r.out["ips"][0]["address"] for r in runs]
        assert len(set(addresses)) == len(jobs)
        assert sorted(a.split("/")[0] for a in addresses) == sorted(allocated(etcd))
    finally:
        for ns in nodes:
            lab.remove_netns(ns)
