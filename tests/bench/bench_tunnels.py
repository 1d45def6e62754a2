"""Tunnel routes at cluster scale: what one remote block's change costs calico-node's VXLAN routing.

Run by `make bench`:  python -m tests.bench.bench_tunnels [--sizes 2000,20000] [--changes N]

In a lab node namespace (a veth uplink; nothing else), calico-node's own `Tunnels` programs a
synthetic routing view: 200 remote nodes with VXLAN tunnel addresses, one VXLAN pool, N remote blocks.
Per size: the first sync (N routes written), then --changes single-block changes (a block claimed by a
remote node, as an affinity arriving from etcd), each synced two ways in the same run:

- per change: the changes the routing view reports (`Routing.take_changes`), as calico-node syncs;
- whole: the same sync re-planning every block and reading the kernel's routes back (what a fresh
  snapshot, a pool's change or the drift repair does), the baseline the ratio is taken against.
  Before per-change syncing every change also re-wrote every route: 13.1 s a change at 20,000
  blocks, 1.6 s at 2,000 (measured with that code on this machine, December 2026).

Then a whole re-check with every route present (the drift repair's sync) and the drift check itself.
The measuring process runs inside the namespace (`ip netns exec`); wall-clock ms, median of --changes.
Writes dist/bench/tunnels.json. The namespace is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types

from tests.lab import REPO, Lab


def measure(size: int, changes: int, lib_dir: str) -> dict:
    """Runs inside the node namespace."""
    from cni_calico import keys
    from cni_calico.node.model import Routing
    from cni_calico.node.tunnels import Tunnels, tunnel_mac
    from cni_calico.v3 import Node

    cfg = types.SimpleNamespace(nodename="me", lib_dir=lib_dir, run_dir=lib_dir)
    tunnels = Tunnels(None, cfg, "192.168.201.1/24")  # type: ignore[arg-type] - no etcd: addresses given
    routing = Routing()
    routing.update(keys.resource("ippools", "vx"), {
        "kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "vx"},
        "spec": {"cidr": "10.0.0.0/8", "blockSize": 26, "vxlanMode": "Always"}})
    routing.nodes["me"] = Node("me", "192.168.201.1", "192.168.201.1/24", vxlan_addr="10.255.255.1",
                               vxlan_mac=tunnel_mac("me"))
    for i in range(200):
        routing.nodes[f"n{i}"] = Node(f"n{i}", f"192.168.201.{i + 2}", f"192.168.201.{i + 2}/24",
                                      vxlan_addr=f"10.254.{i}.1", vxlan_mac=tunnel_mac(f"n{i}"))
    confirmed = {"state": "confirmed", "deleted": False}
    for j in range(size):
        routing.update(keys.affinity(f"n{j % 200}", f"10.{j >> 10 & 255}.{j >> 2 & 255}.{(j & 3) * 64}/26"), confirmed)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000

    first = timed(lambda: tunnels.sync(routing.snapshot(), routing.take_changes()))
    per_change, whole = [], []
    for k in range(changes):
        routing.update(keys.affinity(f"n{k % 200}", f"10.250.{k}.0/26"), confirmed)
        per_change.append(timed(lambda: tunnels.sync(routing.snapshot(), routing.take_changes())))
        routing.update(keys.affinity(f"n{k % 200}", f"10.251.{k}.0/26"), confirmed)
        routing.take_changes()
        whole.append(timed(lambda: tunnels.sync(routing.snapshot())))
    recheck = timed(lambda: tunnels.sync(routing.snapshot()))
    drift: list[str] = []
    drift_ms = timed(lambda: drift.extend(tunnels.drift(routing.snapshot())))
    return {"blocks": size, "first_sync_ms": first, "per_change_ms": statistics.median(per_change),
            "whole_ms": statistics.median(whole), "recheck_ms": recheck, "drift_check_ms": drift_ms,
            "drift": drift, "routes": len(tunnels.programmed["vxlan.calico"])}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="remote blocks, comma-separated")
    parser.add_argument("--changes", type=int, default=5, help="single-block changes per size")
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # size:changes:lib_dir, run in the namespace
    args = parser.parse_args(argv)
    if args.inside:
        size, changes, lib_dir = args.inside.split(":", 2)
        print(json.dumps(measure(int(size), int(changes), lib_dir)))
        return 0
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        with Lab() as lab:  # a fresh namespace per size: no routes left from the last one
            ns = lab.node()
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.bench.bench_tunnels",
                                  "--inside", f"{size}:{args.changes}:{lab.workdir}"],
                                 cwd=REPO, capture_output=True, text=True, check=True, timeout=1800)
            results.append(json.loads(out.stdout.splitlines()[-1]))
    print(f"\nVXLAN tunnel routes, one remote block claimed (median of {args.changes}; ms)")
    print(f"{'blocks':>7} {'first sync':>11} {'per change':>11} {'whole re-plan':>14} {'ratio':>7} "
          f"{'re-check':>9} {'drift check':>12}")
    for r in results:
        print(f"{r['blocks']:>7} {r['first_sync_ms']:>11.0f} {r['per_change_ms']:>11.1f} {r['whole_ms']:>14.0f} "
              f"{r['whole_ms'] / r['per_change_ms']:>7.0f} {r['recheck_ms']:>9.0f} {r['drift_check_ms']:>12.0f}")
    out_dir = REPO / "dist" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tunnels.json").write_text(json.dumps(results, indent=2))
    return 0 if all(r["routes"] >= r["blocks"] and not r["drift"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
