"""50 ADDs at once on one node: all succeed with unique addresses, all DELs clean up everything."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.integration.helpers import allocated, assert_nothing_left
from tests.lab import Lab, add_pool

N = 50


def test_fifty_parallel_adds(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "wide", "10.62.0.0/22", 26)
    pods = [make_pod() for _ in range(N)]
    cids = [f"par{i:03d}".ljust(20, "0") for i in range(N)]
    netconf = conf()

    with ThreadPoolExecutor(N) as pool:
        adds = list(pool.map(lambda a: Lab.run_plugin(node, "ADD", netconf, a[0], Lab.netns_path(a[1])),
                             zip(cids, pods, strict=True)))
    failures = [r.stdout + r.stderr[-500:] for r in adds if r.rc != 0]
    assert failures == []
    addresses = [r.out["ips"][0]["address"].split("/")[0] for r in adds]
    assert len(set(addresses)) == N
    assert sorted(allocated(etcd)) == sorted(addresses)
    assert len([link for link in lab.links(node) if link.startswith("cali")]) == N
    # Each pod really has its own address and the node routes to it.
    assert lab.ping(pods[0], addresses[-1]) and lab.ping(pods[-1], addresses[0])

    with ThreadPoolExecutor(N) as pool:
        dels = list(pool.map(lambda a: Lab.run_plugin(node, "DEL", netconf, a[0], Lab.netns_path(a[1])),
                             zip(cids, pods, strict=True)))
    assert [r.stdout for r in dels if r.rc != 0] == []
    assert_nothing_left(lab, node, etcd)
