"""A simulated cluster for the node tests: a switch, N nodes each running calico-node + BIRD, pods."""

from __future__ import annotations

import re
import time

from tests.lab import CalicoNode, Etcd, Lab, netconf, sh, wait_for

# Seconds a new pod may wait for every node's policy to admit it (Calico's policy is eventual too).
SETTLE = 10.0


class Cluster:
    def __init__(self, lab: Lab, etcd: Etcd, network: str = "k8s") -> None:
        self.lab, self.etcd, self.network = lab, etcd, network
        self.switch = lab.switch()
        self.ns: dict[str, str] = {}
        self.calico: dict[str, CalicoNode] = {}
        self.pods: list[tuple[str, str, str, str]] = []  # (node, pod ns, container id, address)
        self._made: list[str] = [self.switch]

    def ip(self, name: str) -> str:
        return f"{Lab.SWITCH_NET}.{int(name.removeprefix('node'))}"

    def add_node(self, index: int, start: bool = True, **env: str) -> str:
        name = f"node{index}"
        ns = self.lab.cluster_node(self.switch, index, self.etcd)
        self._made.append(ns)
        self.ns[name] = ns
        if start:
            self.start(name, **env)
        return name

    def mesh(self, count: int) -> None:
        """node1 … node<count>, each with calico-node and BIRD, every BGP session Established."""
        for i in range(1, count + 1):
            self.add_node(i)
        self.wait_established()

    def start(self, name: str, **env: str) -> CalicoNode:
        env.setdefault("IP", f"{self.ip(name)}/24")
        self.calico[name] = self.lab.calico_node(self.ns[name], self.etcd, name, **env)
        return self.calico[name]

    def conf(self, name: str, **extra) -> dict:
        return netconf(self.etcd, name=self.network, node=name, **extra)

    def pod(self) -> str:
        """A pod namespace (no plugin run) that `close()` removes with the cluster."""
        pod = self.lab.pod()
        self._made.append(pod)
        return pod

    def add_pod(self, name: str, **extra) -> tuple[str, str]:
        pod = self.pod()
        cid = f"{name}x{len(self.pods):03d}".ljust(20, "0")
        run = Lab.run_plugin(self.ns[name], "ADD", self.conf(name, **extra), cid, Lab.netns_path(pod))
        assert run.rc == 0, run.stdout + run.stderr[-1000:]
        address = run.out["ips"][0]["address"].split("/")[0]
        self.pods.append((name, pod, cid, address))
        return pod, address

    def bgp_states(self, name: str) -> dict[str, str]:
        """BGP protocol name -> state info, from BIRD's control socket."""
        out = self.calico[name].birdc("show", "protocols")
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "BGP":
                states[parts[0]] = parts[-1]
        return states

    def wait_established(self, names: list[str] | None = None, timeout: float = 60) -> None:
        names = names or list(self.calico)

        def ready() -> bool:
            for name in names:
                states = self.bgp_states(name)
                if not states or any(s != "Established" for s in states.values()):
                    return False
            return True

        try:
            wait_for(ready, timeout, "BGP sessions to be Established", interval=0.3)
        except TimeoutError:
            detail = {n: self.bgp_states(n) for n in names}
            logs = {n: self.calico[n].log()[-1500:] for n in names}
            raise AssertionError(f"BGP not established: {detail}\n{logs}") from None

    def routes(self, name: str) -> list[str]:
        return [r for r in self.lab.in_ns(self.ns[name], "ip", "-4", "route").stdout.splitlines() if r]

    def wait_route(self, name: str, pattern: str, present: bool = True, timeout: float = 30) -> float:
        """Seconds until a route matching the regex appears (or disappears) on the node."""
        started = time.monotonic()
        wait_for(lambda: any(re.search(pattern, r) for r in self.routes(name)) == present, timeout,
                 f"route {pattern!r} {'on' if present else 'gone from'} {name}", interval=0.05)
        return time.monotonic() - started

    def all_pairs_ping(self) -> list[tuple[str, str]]:
        """The (pod, address) pairs that do NOT answer."""
        failed = []
        for _, pod, _, _ in self.pods:
            for _, other, _, address in self.pods:
                if other != pod and not self.lab.ping(pod, address, within=SETTLE):
                    failed.append((pod, address))
        return failed

    def remove_node_ns(self, name: str) -> None:
        self.calico[name].stop(graceful=False)
        self.lab.remove_netns(self.ns[name])

    def close(self) -> None:
        for node in self.calico.values():
            node.stop(graceful=False)
            if node in self.lab.calico_nodes:
                self.lab.calico_nodes.remove(node)
        for ns in reversed(self._made):
            if ns in self.lab.namespaces:
                self.lab.remove_netns(ns)
        sh("true")


def checked_cluster(lab: Lab, etcd: Etcd):
    """A Cluster that, once closed, checks that the machine's own namespace holds nothing of ours (the
    `cluster` fixture of tests/conftest.py)."""
    c = Cluster(lab, etcd)
    try:
        yield c
    finally:
        c.close()
    for tool in ("iptables-save", "ip6tables-save"):
        assert "cali" not in sh(tool).stdout, f"calico-node touched the machine's own {tool}"
    assert "cali" not in sh("ipset", "list", "-n").stdout, "calico-node touched the machine's own ipsets"
