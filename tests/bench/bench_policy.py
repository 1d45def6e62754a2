"""Policy figures: render and apply time at scale, and the time from a policy change in etcd to the rule
in force, measured with real traffic.

Run:  python -m tests.bench.bench_policy [--endpoints 500] [--policies 100] [--rounds 10]

- Scale: N synthetic WorkloadEndpoints of one node (no pods: the records alone drive the rules) and M
  NetworkPolicies written to etcd; the policy component loads them and programs them with real
  iptables-restore and ipset inside the node's namespace. Cold (the snapshot and the first whole
  apply), one policy changed (that change alone), unchanged (no call), and a full resync from the
  snapshot (as after a compaction); medians of --rounds.
- Latency: a real calico-node on that node, two real pods among the synthetic endpoints; a policy
  toggles the server between "nothing allowed" and "the client may connect on TCP 9000". A probe in the
  client pod connects every ~20 ms; the figure is the time from the etcd write to the first connection
  that behaves the new way (blocked -> allowed, and allowed -> blocked), median of --rounds each.

Writes dist/bench/policy.json. Everything runs in namespaces it makes and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from cni_calico.datastore import Datastore, EtcdConf, Txn
from cni_calico.endpoints import default_profile
from cni_calico.policy.iptables import Dataplane
from cni_calico.policy.sync import PolicySync
from tests.lab import REPO, Lab, add_pool, netconf, netns_runner

RES = "/calico/resources/v3/projectcalico.org"
NODE = "bench-node"
PROBE = """
import socket, sys, time
address, port, want, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "open", time.monotonic() + 30
print("ready", flush=True)
sys.stdin.readline()
while time.monotonic() < deadline:
    s = socket.socket()
    s.settimeout(0.02)
    try:
        s.connect((address, port))
        is_open = True
    except OSError:
        is_open = False
    finally:
        s.close()
    if is_open == want:
        print(time.monotonic(), flush=True)
        sys.exit(0)
    if is_open:
        time.sleep(0.02)
sys.exit(1)
"""


def policy(j: int, port: int) -> dict:
    return {"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": f"pol-{j:03d}", "namespace": "default"},
            "spec": {"order": j, "selector": f"app == 'app-{j % 25}'", "types": ["Ingress", "Egress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [port, "9000:9100"]},
                                  "source": {"selector": f"role == 'fe' && app == 'app-{(j + 1) % 25}'"}},
                                 {"action": "Deny", "protocol": "UDP", "source": {"nets": ["10.9.0.0/16",
                                                                                           f"10.10.{j}.0/24"]}}],
                     "egress": [{"action": "Allow", "protocol": "TCP", "destination": {
                         "selector": "role == 'db'", "ports": [5432]}}, {"action": "Pass"}]}}


def put(ds: Datastore, key: str, value: dict) -> None:
    ds.commit(Txn().put(key, value))


def write_synthetic(ds: Datastore, endpoints: int, policies: int) -> None:
    put(ds, f"{RES}/profiles/k8s", default_profile("k8s").to_value())
    for i in range(endpoints):
        name = f"{NODE}-cni-bench{i:05d}-eth0"
        put(ds, f"{RES}/workloadendpoints/default/{name}", {
            "kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "namespace": "default", "labels": {
                "projectcalico.org/namespace": "default", "app": f"app-{i % 25}", "role": ("fe", "be", "db")[i % 3]}},
            "spec": {"node": NODE, "interfaceName": f"cali{i:011x}",
                     "ipNetworks": [f"10.100.{i // 250}.{i % 250 + 1}/32"],
                     "profiles": ["k8s"], "containerID": f"bench{i:05d}"}})
    for j in range(policies):
        put(ds, f"{RES}/networkpolicies/default/pol-{j:03d}", policy(j, 8000 + j))


def scale(lab: Lab, ds: Datastore, ns: str, rounds: int) -> dict:
    sync = PolicySync(NODE, Dataplane(netns_runner(ns)))
    out: dict[str, list[float]] = {}

    def measure(label: str, step) -> None:
        started = time.monotonic()
        step()
        sync.flush()
        out.setdefault(label, []).append((time.monotonic() - started) * 1000)

    snapshot = [(kv.key, kv.value) for kv in ds.list(RES + "/")]
    measure("cold", lambda: sync.load(snapshot))  # the snapshot into the calculator, the first whole apply
    for r in range(rounds):
        changed = policy(0, 20000 + r)
        measure("one_policy_changed", lambda changed=changed: sync.update(f"{RES}/networkpolicies/default/pol-000",
                                                                          changed))
        measure("unchanged", lambda: None)
        measure("full_resync", lambda: sync.load(snapshot))  # as after etcd compacted the watch's revisions
    saved = lab.in_ns(ns, "iptables-save").stdout
    out["rules"] = [float(sum(1 for line in saved.splitlines() if line.startswith("-A cali-")))]
    out["chains"] = [float(sum(1 for line in saved.splitlines() if line.startswith(":cali-")))]
    out["ipsets"] = [float(len(lab.in_ns(ns, "ipset", "list", "-n").stdout.split()))]
    return out


def latency(lab: Lab, etcd, ds: Datastore, ns: str, rounds: int) -> dict:
    add_pool(etcd, "bench", "10.101.0.0/24", 26)
    node = lab.calico_node(ns, etcd, NODE, IP="none", CALICO_NETWORKING_BACKEND="none",
                           CALICO_NODE_LOG_LEVEL="info")
    pods = {}
    for role in ("client", "server"):
        pod = lab.pod()
        run = Lab.run_plugin(ns, "ADD", netconf(etcd, name="k8s", node=NODE), f"bench-{role}".ljust(20, "0"),
                             Lab.netns_path(pod))
        assert run.rc == 0, run.stderr[-2000:]
        key = next(k for k in etcd.keys(f"{RES}/workloadendpoints/") if f"bench--{role}" in k)
        wep = etcd.get_json(key)
        wep["metadata"]["labels"]["role"] = f"bench-{role}"
        etcd.put_json(key, wep)
        pods[role] = (pod, run.out["ips"][0]["address"].split("/")[0])
    server, address = pods["server"]
    lab.procs.append(subprocess.Popen(["ip", "netns", "exec", server, "socat", "TCP-LISTEN:9000,fork,reuseaddr",
                                       "SYSTEM:echo ok"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    gate = {"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "bench-gate", "namespace": "default"},
            "spec": {"selector": "role == 'bench-server'", "types": ["Ingress"], "ingress": []}}
    allow = [{"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'bench-client'"},
              "destination": {"ports": [9000]}}]

    def flip(rules: list, want: str) -> float:
        probe = subprocess.Popen(["ip", "netns", "exec", pods["client"][0], sys.executable, "-c", PROBE, address,
                                  "9000", want], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert probe.stdout.readline().strip() == "ready"
        started = time.monotonic()
        put(ds, f"{RES}/networkpolicies/default/bench-gate", {**gate, "spec": {**gate["spec"], "ingress": rules}})
        probe.stdin.write("go\n")
        probe.stdin.flush()
        line = probe.stdout.readline().strip()
        assert probe.wait(40) == 0 and line, f"the probe never saw the port {want}"
        return (float(line) - started) * 1000

    out: dict[str, list[float]] = {"blocked_to_allowed_ms": [], "allowed_to_blocked_ms": []}
    try:
        flip([], "closed")  # settle: everything in place and the gate shut
        time.sleep(0.5)
        for _ in range(rounds):
            out["blocked_to_allowed_ms"].append(flip(allow, "open"))
            time.sleep(0.3)
            out["allowed_to_blocked_ms"].append(flip([], "closed"))
            time.sleep(0.3)
    finally:
        node.stop()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    with Lab() as lab:
        os.environ["CALICO_RUN_DIR"] = str(lab.workdir / "plugin-run")  # the plugin's lock: not /var/run/calico
        etcd = lab.etcd()
        ns = lab.node(etcd)
        ds = Datastore(EtcdConf([etcd.url]))
        try:
            write_synthetic(ds, args.endpoints, args.policies)
            figures = scale(lab, ds, ns, args.rounds)
            figures.update(latency(lab, etcd, ds, ns, args.rounds))
        finally:
            ds.close()
    print(f"\nPolicy at scale: {args.endpoints} endpoints on one node, {args.policies} policies "
          f"({figures['chains'][0]:.0f} chains, {figures['rules'][0]:.0f} rules, {figures['ipsets'][0]:.0f} ipsets)")
    print(f"{'what (ms)':34} {'median':>8} {'min':>8} {'max':>8}")
    summary = {}
    for key, values in figures.items():
        if key in ("rules", "chains", "ipsets"):
            continue
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
        print(f"{key:34} {summary[key]['median']:8.1f} {min(values):8.1f} {max(values):8.1f}")
    out = REPO / "dist" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(json.dumps({
        "endpoints": args.endpoints, "policies": args.policies, "rounds": args.rounds,
        "chains": figures["chains"][0], "rules": figures["rules"][0], "ipsets": figures["ipsets"][0],
        "summary_ms": summary, "raw_ms": {k: v for k, v in figures.items() if k not in ("rules", "chains", "ipsets")},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
