"""examples/10-calico.conflist run as a chain, the way libcni (containerd, CRI-O, kubelet) runs one.

`calico` first, then Debian's `portmap` (host port 8080 -> pod port 80, with SNAT) and `bandwidth`
(tbf on the host veth for ingress, an ifb device for egress), all in a lab node's namespace.

The runner below does what libcni 1.x does (libcni/api.go):
- every plugin gets its own config: the plugin's object plus the list's `name` and `cniVersion`,
  `prevResult` (the previous plugin's result) from the second plugin on, and `runtimeConfig` holding
  only the capability arguments the plugin declares under `capabilities` (left out when empty);
- ADD runs the plugins in order, each result feeding the next; the last result is the list's;
- DEL runs them in reverse; it passes the cached ADD result as `prevResult` only from CNI 0.4.0 on;
- CHECK (0.4.0 on; refused for older lists) runs them in order, with the cached result as `prevResult`.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import subprocess

import pytest

from tests.integration.helpers import ENDPOINTS, HANDLES, allocated, assert_nothing_left
from tests.lab import REFERENCE_CNI_DIR, REPO, Lab, PluginRun, plugin_dir, port_open, wait_for

EXAMPLE = REPO / "examples" / "10-calico.conflist"
HOST_PORT, POD_PORT = 8080, 80
CAPABILITY_ARGS = {
    "portMappings": [{"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}],
    # bits per second and bits, as the bandwidth plugin reads them
    "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                  "egressRate": 20_000_000, "egressBurst": 1_000_000},
}

pytestmark = pytest.mark.skipif(
    not all(os.access(f"{REFERENCE_CNI_DIR}/{p}", os.X_OK) for p in ("portmap", "bandwidth")),
    reason="Debian's portmap and bandwidth plugins are missing (containernetworking-plugins): run `make deps`",
)


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


class ChainError(AssertionError):
    pass


class Chain:
    """A network configuration list, run on a lab node as libcni runs it."""

    def __init__(self, conflist: dict, node: str, container_id: str, netns: str, capability_args: dict) -> None:
        self.conflist = conflist
        self.node, self.container_id, self.netns = node, container_id, netns
        self.capability_args = capability_args
        self.cached: dict | None = None  # the ADD result libcni caches for DEL and CHECK
        self.calls: list[tuple[str, str, dict]] = []  # (command, type, config sent), for the assertions

    def plugin_config(self, plugin: dict, prev_result: dict | None) -> dict:
        conf = copy.deepcopy(plugin)
        conf["name"] = self.conflist["name"]
        conf["cniVersion"] = self.conflist["cniVersion"]
        if prev_result is not None:
            conf["prevResult"] = prev_result
        runtime = {cap: self.capability_args[cap] for cap, wanted in plugin.get("capabilities", {}).items()
                   if wanted and cap in self.capability_args}
        if runtime:
            conf["runtimeConfig"] = runtime
        return conf

    def _run(self, command: str, plugin: dict, prev_result: dict | None) -> PluginRun:
        conf = self.plugin_config(plugin, prev_result)
        self.calls.append((command, plugin["type"], conf))
        ours = plugin_dir()
        exe = plugin["type"] if plugin["type"].startswith("calico") else f"{REFERENCE_CNI_DIR}/{plugin['type']}"
        run = Lab.run_plugin(self.node, command, conf, self.container_id, self.netns, bin_dir=ours, exe=exe,
                             cni_path=f"{ours}:{REFERENCE_CNI_DIR}")
        if run.rc != 0:
            raise ChainError(f"{command} {plugin['type']} exited {run.rc}: {run.stdout} {run.stderr[-2000:]}")
        return run

    def add(self) -> dict:
        result = None
        for plugin in self.conflist["plugins"]:
            result = self._run("ADD", plugin, result).out
            assert result.get("cniVersion") == self.conflist["cniVersion"], result
        self.cached = result
        return result

    def delete(self) -> None:
        cached = self.cached if _version(self.conflist["cniVersion"]) >= (0, 4, 0) else None
        for plugin in reversed(self.conflist["plugins"]):
            self._run("DEL", plugin, cached)

    def check(self, known_failures: dict[str, str] | None = None) -> list[str]:
        """Stops at the first failure, as libcni does, except for `known_failures` ({type: message part}):
        those are returned and the chain goes on."""
        if _version(self.conflist["cniVersion"]) < (0, 4, 0):
            raise ChainError(f"configuration version {self.conflist['cniVersion']} does not support CHECK")
        known = []
        for plugin in self.conflist["plugins"]:
            try:
                self._run("CHECK", plugin, self.cached)
            except ChainError as exc:
                if (known_failures or {}).get(plugin["type"], "\0") not in str(exc):
                    raise
                known.append(str(exc))
        return known


def example(etcd, version: str | None = None) -> dict:
    conflist = json.loads(EXAMPLE.read_text())
    if version:
        conflist["cniVersion"] = version
    conflist["plugins"][0].update(etcd_endpoints=etcd.url, nodename="node1", log_level="debug",
                                  log_file_path="/tmp/cni-calico-tests.log")
    return conflist


def test_example_is_calicos_chain():
    conflist = json.loads(EXAMPLE.read_text())
    assert conflist["cniVersion"] == "0.3.1"
    calico, portmap, bandwidth = conflist["plugins"]
    assert calico["type"] == "calico" and calico["ipam"] == {"type": "calico-ipam"}
    assert {"etcd_endpoints", "log_level", "kubernetes"} <= set(calico)
    assert calico["kubernetes"]["kubeconfig"]
    assert portmap == {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}
    assert bandwidth == {"type": "bandwidth", "capabilities": {"bandwidth": True}}


def test_runner_builds_configs_as_libcni(etcd):
    chain = Chain(example(etcd), "node", "cid", "/netns", CAPABILITY_ARGS)
    calico, portmap, bandwidth = chain.conflist["plugins"]
    first = chain.plugin_config(calico, None)
    assert "prevResult" not in first and "runtimeConfig" not in first
    assert first["name"] == "calico-k8s-network" and first["cniVersion"] == "0.3.1"
    prev = {"cniVersion": "0.3.1", "ips": []}
    assert chain.plugin_config(portmap, prev)["runtimeConfig"] == {"portMappings": CAPABILITY_ARGS["portMappings"]}
    assert chain.plugin_config(portmap, prev)["prevResult"] == prev
    assert chain.plugin_config(bandwidth, prev)["runtimeConfig"] == {"bandwidth": CAPABILITY_ARGS["bandwidth"]}
    # A capability the runtime has no argument for is not sent.
    assert "runtimeConfig" not in Chain(example(etcd), "n", "c", "/n", {}).plugin_config(portmap, prev)


def _nat_rules(lab: Lab, node: str) -> str:
    return lab.in_ns(node, "iptables-save", "-t", "nat").stdout


def _node_address(lab: Lab, node: str) -> str:
    out = lab.in_ns(node, "ip", "-4", "-o", "addr", "show", "dev", "up0").stdout.split()
    return out[out.index("inet") + 1].split("/")[0]


def _host_veth(result: dict) -> str:
    (host,) = [i for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("cali")]
    return host["name"]


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0"])
def test_chain_add_check_del(lab, node, make_pod, pool, etcd, version):
    pod = make_pod()
    cid = f"chain{version.replace('.', '')}".ljust(32, "0")
    chain = Chain(example(etcd, version), node, cid, Lab.netns_path(pod), CAPABILITY_ARGS)
    server = None
    try:
        result = chain.add()

        # prevResult flowed through: the list's result is still ours (veth pair, address from the pool).
        assert [c[1] for c in chain.calls] == ["calico", "portmap", "bandwidth"]
        assert "prevResult" not in chain.calls[0][2]
        assert chain.calls[2][2]["prevResult"]["ips"] == chain.calls[1][2]["prevResult"]["ips"]
        assert result["cniVersion"] == version
        veth = _host_veth(result)
        assert veth.startswith("cali") and veth in lab.links(node)
        # calico's two interfaces come first and stay where `ips[].interface` points; bandwidth appends its ifb.
        ours = chain.calls[1][2]["prevResult"]["interfaces"]
        assert result["interfaces"][:2] == ours and ours[0]["name"] == veth
        assert ours[1] == {"name": "eth0", "mac": ours[1]["mac"], "sandbox": Lab.netns_path(pod)}
        assert [i["name"][:3] for i in result["interfaces"][2:]] == ["bwp"], result["interfaces"]
        (ip,) = result["ips"]
        assert ip["interface"] == 1
        address = ip["address"].split("/")[0]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(pool)
        assert allocated(etcd) == [address]
        assert len(etcd.keys(HANDLES)) == 1 and len(etcd.keys(ENDPOINTS)) == 1

        # portmap: DNAT of the host port to the pod, in the NODE namespace's nat table.
        nat = _nat_rules(lab, node)
        assert f"--dport {HOST_PORT}" in nat and f"--to-destination {address}:{POD_PORT}" in nat, nat
        # bandwidth: tbf on our host veth (ingress of the pod), an ifb device for its egress.
        qdisc = lab.in_ns(node, "tc", "qdisc", "show", "dev", veth).stdout
        assert "qdisc tbf" in qdisc and "rate 10Mbit" in qdisc, qdisc
        assert "qdisc ingress" in qdisc, qdisc
        ifbs = [link for link in lab.links(node) if link.startswith("bwp")]
        assert len(ifbs) == 1, lab.links(node)
        assert "rate 20Mbit" in lab.in_ns(node, "tc", "qdisc", "show", "dev", ifbs[0]).stdout

        # A real TCP connection: node:8080 -> DNAT -> pod:80, a socat server in the pod.
        server = subprocess.Popen(
            ["ip", "netns", "exec", pod, "socat", f"TCP-LISTEN:{POD_PORT},reuseaddr,fork", "SYSTEM:echo hello-pod"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(POD_PORT, pod), 10, "the server in the pod")
        node_ip = _node_address(lab, node)
        reply = lab.in_ns(node, "socat", "-u", "-T", "5", f"TCP:{node_ip}:{HOST_PORT},connect-timeout=5", "STDOUT")
        assert reply.stdout.strip() == "hello-pod", (reply.returncode, reply.stdout, reply.stderr, nat)

        # CHECK: every plugin, in order, against the cached result (libcni refuses it before 0.4.0).
        if _version(version) >= (0, 4, 0):
            # Debian's portmap 1.1.1 also looks for ip6tables chains of an IPv4-only container and fails
            # (containernetworking/plugins#819, fixed upstream later): tolerated, nothing else is.
            known = chain.check(known_failures={"portmap": "could not check ipv6 dnat"})
            assert len(known) <= 1, known
            checks = [c for c in chain.calls if c[0] == "CHECK"]
            assert [c[1] for c in checks] == ["calico", "portmap", "bandwidth"]
            assert all(c[2]["prevResult"] == result for c in checks)
        else:
            with pytest.raises(ChainError, match="does not support CHECK"):
                chain.check()

        # DEL in reverse: bandwidth, portmap, calico.
        chain.calls.clear()
        chain.delete()
        assert [c[1] for c in chain.calls] == ["bandwidth", "portmap", "calico"]
        if _version(version) >= (0, 4, 0):
            assert all(c[2]["prevResult"] == result for c in chain.calls)
        else:
            assert all("prevResult" not in c[2] for c in chain.calls)
        nat = _nat_rules(lab, node)
        assert f"--dport {HOST_PORT}" not in nat and address not in nat, nat
        assert not [link for link in lab.links(node) if link.startswith(("bwp", "cali"))], lab.links(node)
        assert_nothing_left(lab, node, etcd)

        # DEL again (the runtime retries): every plugin must succeed on what is already gone.
        chain.delete()
        assert_nothing_left(lab, node, etcd)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if chain.cached is not None:
            try:
                chain.delete()
            except ChainError:
                pass
