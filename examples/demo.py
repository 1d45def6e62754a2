"""`make demo`: two simulated nodes running calico-node + BIRD, pods networked by the real `calico` binary.

Starts a private etcd on loopback, creates an IP pool with calicoctl, makes a
switch and two node namespaces, starts calico-node in each (BGP full mesh),
runs `calico` ADD in the nodes exactly as a runtime would (CNI_* env vars,
examples/10-calico.conf on stdin), shows addresses and routes, pings on one
node and across nodes, measures iperf3 node-to-node against pod-to-pod,
runs DEL, and removes everything it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lab import Lab, plugin_dir, sh, wait_for  # noqa: E402


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(title: str, cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    print(f"$ {' '.join(cmd)}   # {title}\n{out.rstrip()}")
    return out


def iperf(lab: Lab, server_ns: str, client_ns: str, address: str, seconds: int = 3) -> float:
    """Gbit/s from client to server (iperf3, one TCP stream)."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = lab.in_ns(client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J", timeout=seconds + 20).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def ping(ns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", address]).returncode == 0


def main() -> int:
    bin_dir = plugin_dir()
    print(f"binaries: {bin_dir}")
    ok = True
    with Lab(prefix=f"demo{os.getpid() % 10000}-") as lab:
        os.environ["CALICO_RUN_DIR"] = str(lab.workdir / "run")
        say("etcd on loopback")
        etcd = lab.etcd()
        print(f"etcd {etcd.url} (pid {etcd.proc.pid}, data in {lab.workdir})")

        say("an IP pool, with calicoctl")
        env = {**os.environ, "ETCD_ENDPOINTS": etcd.url, "DATASTORE_TYPE": "etcdv3"}
        ctl = os.path.join(bin_dir, "calicoctl")
        for args in (["apply", "-f", str(REPO / "examples/ippool.yaml")], ["get", "ippool", "-o", "wide"]):
            print(subprocess.run([ctl, *args], env=env, capture_output=True, text=True).stdout.rstrip())

        say("a switch and two nodes, each running calico-node (BIRD, node-to-node mesh)")
        switch = lab.switch()
        nodes = [lab.cluster_node(switch, i, etcd) for i in (1, 2)]
        calico = [lab.calico_node(ns, etcd, f"node{i}", IP=f"192.168.200.{i}/24")
                  for i, ns in zip((1, 2), nodes, strict=True)]
        for i, ns in enumerate(nodes):
            print(f"node{i + 1}: namespace {ns}, address 192.168.200.{i + 1}, calico-node pid {calico[i].proc.pid}")

        def run_dir(node_index: int) -> dict[str, str]:
            return {"CALICO_RUN_DIR": str(calico[node_index].run_dir)}

        def established() -> bool:
            return all("Established" in c.birdc("show", "protocols") for c in calico)

        wait_for(established, 60, "BGP sessions")
        show("node1's BGP peers", ["ip", "netns", "exec", nodes[0], "env", f"CALICO_RUN_DIR={calico[0].run_dir}",
                                   ctl, "node", "status"])

        conf = json.loads((REPO / "examples/10-calico.conf").read_text())
        conf.update(etcd_endpoints=etcd.url, log_file_path=str(lab.workdir / "cni.log"))
        say("the network config on stdin (examples/10-calico.conf, pointed at this etcd)")
        print(json.dumps(conf, indent=2))

        pods = []  # (node index, pod ns, container id, address)
        for node_index, count in ((0, 2), (1, 1)):
            for _ in range(count):
                pod = lab.pod()
                cid = f"demo{len(pods)}".ljust(64, "0")
                args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo-pod-{len(pods)}"
                node_conf = {**conf, "nodename": f"node{node_index + 1}"}
                say(f"CNI ADD pod {len(pods)} on node{node_index + 1}: ip netns exec {nodes[node_index]} calico")
                # As on a real node, the plugin finds calico-node's CNI socket in the node's CALICO_RUN_DIR
                # (/var/run/calico by default; each simulated node has its own here): the fast path.
                run = lab.run_plugin(nodes[node_index], "ADD", node_conf, cid, lab.netns_path(pod), args=args,
                                     bin_dir=bin_dir, extra_env=run_dir(node_index))
                print(f"exit {run.rc} in {run.seconds * 1000:.0f} ms\n{json.dumps(run.out)}")
                if run.rc != 0:
                    print(run.stderr[-2000:])
                    return 1
                pods.append((node_index, pod, cid, run.out["ip4"]["ip"].split("/")[0], args))

        say("addresses and routes")
        for _, pod, _, _, _ in pods:
            show(f"pod {pod}", ["ip", "netns", "exec", pod, "ip", "-4", "addr", "show", "eth0"])
        show(f"pod {pods[0][1]}", ["ip", "netns", "exec", pods[0][1], "ip", "route"])
        time.sleep(3)  # BGP carries the new blocks
        for ns in nodes:
            show(f"node {ns}: /32s of its pods, the other node's block by BGP, a blackhole for its own",
                 ["ip", "netns", "exec", ns, "ip", "route"])

        say(f"ping on one node: pod 0 -> pod 1 ({pods[1][3]})")
        ok &= ping(pods[0][1], pods[1][3])
        say(f"ping across nodes: pod 0 (node1) -> pod 2 (node2, {pods[2][3]})")
        ok &= ping(pods[0][1], pods[2][3])

        say("iperf3: node to node, then pod to pod across the nodes (the reference document's experiment)")
        node_rate = iperf(lab, nodes[1], nodes[0], "192.168.200.2")
        pod_rate = iperf(lab, pods[2][1], pods[0][1], pods[2][3])
        print(f"node1 -> node2: {node_rate:.2f} Gbit/s")
        print(f"pod on node1 -> pod on node2: {pod_rate:.2f} Gbit/s")
        print(f"pod/node ratio: {pod_rate / node_rate:.2f} (the reference document: 543/571 Mbit/s = 0.95)")

        say("CNI DEL every pod")
        for node_index, pod, cid, _, args in pods:
            node_conf = {**conf, "nodename": f"node{node_index + 1}"}
            run = lab.run_plugin(nodes[node_index], "DEL", node_conf, cid, lab.netns_path(pod), args=args,
                                 bin_dir=bin_dir, extra_env=run_dir(node_index))
            print(f"DEL {cid[:8]}…: exit {run.rc} in {run.seconds * 1000:.0f} ms")
            ok &= run.rc == 0
        left = etcd.keys("/calico/ipam/v2/handle/")
        print(f"handles left in etcd: {left or 'none'}")
        ok &= not left
    say("tear-down")
    mine = [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith(f"demo{os.getpid() % 10000}-")]
    print(f"namespaces left: {mine or 'none'}; etcd, calico-node and BIRD stopped")
    print("\nDEMO", "PASSED" if ok and not mine else "FAILED")
    return 0 if ok and not mine else 1


if __name__ == "__main__":
    sys.exit(main())
