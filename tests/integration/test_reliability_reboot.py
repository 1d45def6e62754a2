"""Issue 6, property 6: a node "reboots" and comes back clean.

node1's namespace is deleted with everything in it (calico-node, BIRD, its pods) and made again
under the same node name; calico-node starts again and the pods are re-added with new container
IDs. The runtime then runs CNI 1.1 GC with the attachments it knows: the old pods' handles,
addresses and endpoints go, and nothing is left twice — each /32 appears once in node1's
routes, and node2 has exactly one route per node1 block.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import pytest

from tests.integration.cluster import Cluster
from tests.integration.helpers import ENDPOINTS, HANDLES, allocated
from tests.lab import Lab, add_pool, wait_for

pytestmark = pytest.mark.reliability

ROUTE_TYPES = ("blackhole", "unreachable", "prohibit", "local", "broadcast", "throw")


def _destinations(routes: list[str]) -> list[str]:
    out = []
    for r in routes:
        parts = r.split()
        out.append(parts[1] if parts[0] in ROUTE_TYPES else parts[0])
    return out


def _block(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/26", strict=False))


def test_rebooted_node_ends_with_no_stale_allocation_and_no_duplicate_route(lab, etcd):
    add_pool(etcd, "pool", "10.76.0.0/16", 26)
    cluster = Cluster(lab, etcd)
    try:
        cluster.mesh(2)
        for _ in range(3):
            cluster.add_pod("node1")
        for _ in range(2):
            cluster.add_pod("node2")
        old = [p for p in cluster.pods if p[0] == "node1"]
        block1 = _block(old[0][3])
        cluster.wait_route("node2", rf"^{re.escape(block1)} via 192\.168\.200\.1 ")

        # --- the reboot: the node and its pods vanish; same name, new namespace, calico-node again -----
        cluster.remove_node_ns("node1")
        for _, pod, _, _ in old:
            lab.remove_netns(pod)
        # The kernel destroys a namespace once its last process is gone, asynchronously: the old
        # switch port goes with it.
        wait_for(lambda: "p1" not in lab.links(cluster.switch), 30, "node1's old switch port to go")
        cluster.add_node(1)
        cluster.wait_established()
        for _ in range(3):
            cluster.add_pod("node1")  # new container IDs (the count in the ID keeps growing)
        cluster.pods = [p for p in cluster.pods if p not in old]
        new = [p for p in cluster.pods if p[0] == "node1"]
        assert not {c for _, _, c, _ in new} & {c for _, _, c, _ in old}

        # --- GC, the runtime's way: the attachments it knows on node1 ---------------------------------
        valid = [{"containerID": cid, "ifname": "eth0"} for _, _, cid, _ in new]
        gc = Lab.run_plugin(cluster.ns["node1"], "GC",
                            {**cluster.conf("node1"), "cniVersion": "1.1.0", "cni.dev/valid-attachments": valid})
        assert gc.rc == 0, gc.stdout + gc.stderr[-500:]
        live = cluster.pods
        assert sorted(allocated(etcd)) == sorted(a for *_, a in live)
        assert sorted(etcd.keys(HANDLES)) == sorted(f"{HANDLES}{cluster.network}.{c}" for _, _, c, _ in live)
        assert sorted(etcd.get_json(k)["spec"]["containerID"] for k in etcd.keys(ENDPOINTS)) == sorted(
            c for _, _, c, _ in live)

        # --- no route twice ------------------------------------------------------------------------------
        blocks1 = {_block(a) for name, _, _, a in live if name == "node1"}
        for block in blocks1:
            cluster.wait_route("node2", rf"^{re.escape(block)} via 192\.168\.200\.1 ")
        wait_for(lambda: cluster.all_pairs_ping() == [], 30, "every pod to reach every pod", interval=1)
        routes1 = cluster.routes("node1")
        twice = [d for d, n in Counter(_destinations(routes1)).items() if n > 1]
        assert twice == [], routes1
        for _, _, _, address in new:
            assert sum(1 for r in routes1 if r.startswith(f"{address} dev cali")) == 1, routes1
        for _, _, _, address in old:
            assert not any(r.startswith(f"{address} ") for r in routes1), routes1
        routes2 = cluster.routes("node2")
        assert [d for d, n in Counter(_destinations(routes2)).items() if n > 1] == [], routes2
        for block in blocks1 | {block1}:
            assert sum(1 for r in routes2 if r.startswith(f"{block} ")) == 1, routes2
        print("\nRELIABILITY reboot", {"old_pods": len(old), "new_pods": len(new), "released_by_gc": len(old),
                                       "node1_routes": len(routes1), "node2_routes": len(routes2)})
    finally:
        cluster.close()
