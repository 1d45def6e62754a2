"""Node-level figures: the reference document's iperf3 experiment, route convergence, BGP session counts.

Run by `make bench`:  python -m tests.bench.bench_node [--seconds N] [--rounds N]

- Throughput (iperf3, one TCP stream, N seconds each) between two simulated nodes on a bridge:
  node to node, pod to pod across the nodes (BGP-routed, no encapsulation), pod to pod on one
  node, and pod to pod across the nodes through VXLAN; printed in Gbit/s with the ratio pod/node
  beside the reference document's 543 vs 571 Mbit/s (0.95).
- Route convergence: a pod ADD on node1 that needs a new block; the time until node1's BIRD has
  the block's blackhole in the kernel, and until node2's kernel has the route to it (median of N).
- BGP sessions: established sessions in a full mesh and with one route reflector, at 3, 5, 8 nodes.

Writes dist/bench/node.json. Everything runs in namespaces it makes and removes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from tests.integration.cluster import Cluster
from tests.lab import REPO, Lab, add_pool, wait_for

REFERENCE = {"node_mbit": 571, "pod_mbit": 543}


def iperf(lab: Lab, server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: lab.in_ns(server_ns, "ss", "-ltn").stdout.count(":5201") > 0, 10, "iperf3 server")
        out = lab.in_ns(client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J", timeout=seconds + 30).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def throughput(lab: Lab, seconds: int) -> dict:
    etcd = lab.etcd()
    add_pool(etcd, "bgp", "10.90.0.0/16", 26)
    add_pool(etcd, "vx", "10.91.0.0/16", 26, vxlan="Always")
    cluster = Cluster(lab, etcd)
    try:
        cluster.mesh(2)
        bgp = {"ipam": {"type": "calico-ipam", "ipv4_pools": ["bgp"]}}
        vx = {"ipam": {"type": "calico-ipam", "ipv4_pools": ["vx"]}}
        a, _ = cluster.add_pod("node1", **bgp)
        b, b_ip = cluster.add_pod("node1", **bgp)
        c, c_ip = cluster.add_pod("node2", **bgp)
        d, _ = cluster.add_pod("node1", **vx)
        e, e_ip = cluster.add_pod("node2", **vx)
        for src, dst in ((a, c_ip), (d, e_ip)):
            wait_for(lambda s=src, t=dst: lab.ping(s, t), 30, f"route to {dst}")
        ns1, ns2 = cluster.ns["node1"], cluster.ns["node2"]
        rates = {
            "node_to_node": iperf(lab, ns2, ns1, "192.168.200.2", seconds),
            "pod_to_pod_across_nodes": iperf(lab, c, a, c_ip, seconds),
            "pod_to_pod_same_node": iperf(lab, b, a, b_ip, seconds),
            "pod_to_pod_vxlan": iperf(lab, e, d, e_ip, seconds),
        }
    finally:
        cluster.close()
        etcd.stop()
    return rates


def convergence(lab: Lab, rounds: int) -> dict:
    etcd = lab.etcd()
    cluster = Cluster(lab, etcd)
    origin, remote, adds = [], [], []
    try:
        cluster.mesh(2)
        for r in range(rounds):
            add_pool(etcd, f"conv{r}", f"10.{100 + r}.0.0/24", 26)  # each round: a pool, so a new block
            started = time.monotonic()
            cluster.add_pod("node1", ipam={"type": "calico-ipam", "ipv4_pools": [f"conv{r}"]})
            added = time.monotonic()
            adds.append(added - started)
            cluster.wait_route("node1", rf"^blackhole 10\.{100 + r}\.0\.0/26", timeout=30)
            origin.append(time.monotonic() - added)
            cluster.wait_route("node2", rf"^10\.{100 + r}\.0\.0/26 via 192\.168\.200\.1", timeout=30)
            remote.append(time.monotonic() - added)
    finally:
        cluster.close()
        etcd.stop()
    # The block is claimed early in the ADD, so part of the propagation overlaps the ADD itself.
    return {"add_ms": [x * 1000 for x in adds], "origin_blackhole_ms": [x * 1000 for x in origin],
            "remote_route_ms": [x * 1000 for x in remote]}


def sessions(lab: Lab) -> dict:
    etcd = lab.etcd()
    cluster = Cluster(lab, etcd)
    counts: dict[str, dict[int, int]] = {"mesh": {}, "route_reflector": {}}

    def established() -> int:
        return sum(list(cluster.bgp_states(n).values()).count("Established") for n in cluster.calico) // 2

    try:
        started = 0
        for size in (3, 5, 8):
            for i in range(started + 1, size + 1):
                cluster.add_node(i)
            started = size
            cluster.wait_established(timeout=90)
            counts["mesh"][size] = established()
        etcd.put_json("/calico/resources/v3/projectcalico.org/bgppeers/to-rr", {
            "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "to-rr"},
            "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}})
        node1 = etcd.get_json("/calico/resources/v3/projectcalico.org/nodes/node1")
        node1["metadata"].setdefault("labels", {})["route-reflector"] = "true"
        node1["spec"]["bgp"]["routeReflectorClusterID"] = "224.0.0.1"
        etcd.put_json("/calico/resources/v3/projectcalico.org/nodes/node1", node1)
        for size in (8, 5, 3):
            for i in range(size + 1, 9):
                if f"node{i}" in cluster.calico and cluster.calico[f"node{i}"].proc.poll() is None:
                    cluster.calico[f"node{i}"].stop(graceful=False)
                    etcd.ctl("del", f"/calico/resources/v3/projectcalico.org/nodes/node{i}")
                    del cluster.calico[f"node{i}"]
            etcd.put_json("/calico/resources/v3/projectcalico.org/bgpconfigurations/default", {
                "kind": "BGPConfiguration", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "default"},
                "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512}})
            wait_for(lambda s=size: established() == s - 1 and all(
                len(cluster.bgp_states(n)) == (s - 1 if n == "node1" else 1) for n in cluster.calico), 90,
                f"route reflector sessions at {size} nodes", interval=0.5)
            counts["route_reflector"][size] = established()
    finally:
        cluster.close()
        etcd.stop()
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per measurement")
    parser.add_argument("--rounds", type=int, default=10, help="route convergence rounds")
    args = parser.parse_args(argv)
    with Lab() as lab:
        rates = throughput(lab, args.seconds)
        conv = convergence(lab, args.rounds)
        counts = sessions(lab)
    node = rates["node_to_node"]
    print(f"\nThroughput (iperf3, 1 TCP stream, {args.seconds} s each)")
    print(f"{'path':32} {'Gbit/s':>8} {'ratio to node':>14}")
    for key, value in rates.items():
        print(f"{key:32} {value:8.2f} {value / node:14.2f}")
    ref = REFERENCE["pod_mbit"] / REFERENCE["node_mbit"]
    print(f"reference document (CentOS 7, 2019): node 571 Mbit/s, pod 543 Mbit/s, ratio {ref:.2f}; "
          f"ours across nodes: {rates['pod_to_pod_across_nodes'] / node:.2f}")
    print(f"\nRoute convergence over {args.rounds} new blocks (add_ms: the ADD that claims the block; the others: "
          "ms after that ADD returned, polled every ~20 ms)")
    for key, values in conv.items():
        print(f"{key:24} median {statistics.median(values):7.0f}  min {min(values):6.0f}  max {max(values):6.0f}")
    print("\nEstablished BGP sessions")
    print(f"{'nodes':>6} {'full mesh':>10} {'route reflector':>16}")
    for size in (3, 5, 8):
        print(f"{size:>6} {counts['mesh'][size]:>10} {counts['route_reflector'][size]:>16}")
    out = REPO / "dist" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "node.json").write_text(json.dumps({"throughput_gbit": rates, "convergence": conv, "sessions": counts,
                                               "reference_mbit": REFERENCE}, indent=2))
    ok = all(counts["mesh"][n] == n * (n - 1) // 2 and counts["route_reflector"][n] == n - 1 for n in (3, 5, 8))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
