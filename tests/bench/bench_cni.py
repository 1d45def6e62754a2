"""ADD / DEL / VERSION timings of our `calico` (+ in-process `calico-ipam`) against Debian's `ptp` + `host-local`.

Run by `make bench` after `make build`:  python -m tests.bench.bench_cni [--cycles N] [--no-venv]

One etcd, one node namespace, one IPPool; per cycle and per variant a fresh pod namespace, one ADD
and one DEL, each timed as wall clock around the whole `ip netns exec <node> <plugin>` process
(nothing subtracted). The variants run interleaved within every cycle (ours, reference, venv) so
that machine noise hits them alike; `ip netns exec <node> /bin/true` is timed alongside as the
floor every call pays. VERSION is timed as a direct exec (no namespace): that is start-up alone.

Every ADD and DEL must succeed; at the end the node must hold no `cali*`/`veth*` link and no pod
route, etcd no handle and no workload endpoint, host-local's data dir no allocation. Any
violation fails the run (exit 1). The figures go to stdout and to dist/bench/cni.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import REFERENCE_CNI_DIR, REPO, Etcd, Lab, add_pool, netconf, sh

CNI_VERSION = "1.0.0"
POOL_CIDR = "10.70.0.0/16"
REF_SUBNET = "10.250.0.0/16"
NODE_NAME = "bench-node"
WARMUP = 2  # untimed cycles first: page cache, and our first ADD claims the node's IPAM block


class BenchFailure(Exception):
    pass


@dataclass
class Variant:
    key: str  # bundle | ref | venv
    label: str
    bin_dir: str
    exe: str
    cni_path: str
    conf: dict
    network: ipaddress.IPv4Network
    uses_etcd: bool
    samples: dict[str, list[float]] = field(default_factory=lambda: {"ADD": [], "DEL": [], "VERSION": []})
    round_trips: dict[str, list[int]] = field(default_factory=lambda: {"ADD": [], "DEL": []})
    rpc_mix: dict[str, Counter] = field(default_factory=lambda: {"ADD": Counter(), "DEL": Counter()})


# --- figures ------------------------------------------------------------------------------


def stats(samples: list[float]) -> dict:
    """min / median / p95 (nearest rank) in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return {
        "n": len(ordered),
        "min": round(ordered[0] * 1000, 2),
        "median": round(statistics.median(ordered) * 1000, 2),
        "p95": round(p95 * 1000, 2),
    }


_RPC_LINE = re.compile(r'^grpc_server_started_total\{grpc_method="(\w+)",grpc_service="([\w.]+)"[^}]*\}\s+(\S+)$')


def etcd_rpcs(etcd: Etcd) -> Counter:
    """gRPC calls etcd has started so far, per method (its Prometheus counters): one HTTP GET."""
    with urllib.request.urlopen(etcd.url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    counts: Counter = Counter()
    for line in text.splitlines():
        m = _RPC_LINE.match(line)
        if m and m.group(2).startswith("etcdserverpb."):
            counts[m.group(1)] += int(float(m.group(3)))
    return counts


# --- one call -------------------------------------------------------------------------------


def call(node: str, variant: Variant, command: str, container_id: str, pod: str) -> tuple[float, dict]:
    run = Lab.run_plugin(
        node, command, variant.conf, container_id, Lab.netns_path(pod) if pod else "",
        exe=variant.exe, bin_dir=variant.bin_dir, cni_path=variant.cni_path, timeout=60,
    )
    where = f"{variant.label} {command} ({container_id})"
    if run.rc != 0:
        raise BenchFailure(f"{where} failed rc={run.rc}: {run.stdout.strip()} {run.stderr.strip()[-2000:]}")
    if command == "ADD":
        check_add_result(variant, run.out, where)
    elif command == "DEL" and run.stdout.strip():
        raise BenchFailure(f"{where} printed on stdout: {run.stdout.strip()}")
    return run.seconds, run.out


def check_add_result(variant: Variant, out: dict, where: str) -> None:
    if out.get("cniVersion") != CNI_VERSION:
        raise BenchFailure(f"{where}: result cniVersion {out.get('cniVersion')!r}, expected {CNI_VERSION}: {out}")
    ips = out.get("ips") or []
    if not ips:
        raise BenchFailure(f"{where}: result has no ips: {out}")
    address = ipaddress.ip_interface(ips[0]["address"]).ip
    if address not in variant.network:
        raise BenchFailure(f"{where}: address {address} is not from {variant.network}")
    if not out.get("interfaces"):
        raise BenchFailure(f"{where}: result has no interfaces: {out}")


def version(variant: Variant) -> float:
    """CNI_COMMAND=VERSION by direct exec: the executable's start-up and nothing else."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "VERSION"}
    stdin = json.dumps({"cniVersion": CNI_VERSION}).encode()
    exe = os.path.join(variant.bin_dir, variant.exe)
    started = time.monotonic()
    proc = subprocess.run([exe], input=stdin, env=env, capture_output=True, timeout=30)
    seconds = time.monotonic() - started
    if proc.returncode != 0 or CNI_VERSION not in json.loads(proc.stdout or b"{}").get("supportedVersions", []):
        raise BenchFailure(f"{variant.label} VERSION failed rc={proc.returncode}: {proc.stdout!r} {proc.stderr!r}")
    return seconds


def floor(node: str) -> float:
    """`ip netns exec <node> /bin/true`, timed the same way as a plugin call."""
    run = Lab.run_plugin(node, "NONE", b"", exe="/bin/true", bin_dir="/bin", timeout=30)
    if run.rc != 0:
        raise BenchFailure(f"ip netns exec {node} /bin/true failed: {run.stderr}")
    return run.seconds


# --- one cycle ------------------------------------------------------------------------------


def remove_pod(lab: Lab, pod: str) -> None:
    sh("ip", "netns", "del", pod, check=False)
    if pod in lab.namespaces:
        lab.namespaces.remove(pod)


def add_del(lab: Lab, etcd: Etcd, node: str, variant: Variant, cycle: int, record: bool) -> None:
    pod = lab.pod()
    container_id = f"bench{variant.key}{cycle:04d}{uuid.uuid4().hex[:8]}"
    try:
        before = etcd_rpcs(etcd) if variant.uses_etcd and record else None
        seconds_add, out = call(node, variant, "ADD", container_id, pod)
        after_add = etcd_rpcs(etcd) if before is not None else None
        address = out["ips"][0]["address"].split("/")[0]
        if address not in lab.in_ns(pod, "ip", "-4", "-o", "addr", "show").stdout:
            raise BenchFailure(f"{variant.label} ADD ({container_id}): {address} is not configured in the pod")
        seconds_del, _ = call(node, variant, "DEL", container_id, pod)
        after_del = etcd_rpcs(etcd) if before is not None else None
    finally:
        remove_pod(lab, pod)
    if record:
        variant.samples["ADD"].append(seconds_add)
        variant.samples["DEL"].append(seconds_del)
        if before is not None:
            for op, (a, b) in (("ADD", (before, after_add)), ("DEL", (after_add, after_del))):
                mix = b - a
                variant.round_trips[op].append(sum(mix.values()))
                variant.rpc_mix[op] += mix


# --- the end state ----------------------------------------------------------------------------


def is_pod_route(dest: str) -> bool:
    """A host route (no prefix length: /32) or anything into the two benchmark networks."""
    if dest == "default":
        return False
    return "/" not in dest or ipaddress.ip_network(dest).subnet_of(ipaddress.ip_network(POOL_CIDR)) \
        or ipaddress.ip_network(dest).subnet_of(ipaddress.ip_network(REF_SUBNET))


def check_clean(lab: Lab, etcd: Etcd, node: str, host_local_dir: Path) -> list[str]:
    problems = []
    leftover_links = [link for link in lab.links(node) if link.startswith(("cali", "veth"))]
    if leftover_links:
        problems.append(f"links left in the node: {leftover_links}")
    pod_routes = [r for r in lab.routes(node) if is_pod_route(r.split()[0])]
    if pod_routes:
        problems.append(f"pod routes left in the node: {pod_routes}")
    handles = etcd.keys("/calico/ipam/v2/handle/")
    if handles:
        problems.append(f"IPAM handles left in etcd: {handles}")
    endpoints = etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/")
    if endpoints:
        problems.append(f"workload endpoints left in etcd: {endpoints}")
    allocated = []
    for path in host_local_dir.rglob("*"):
        try:
            ipaddress.ip_address(path.name)
            allocated.append(path.name)
        except ValueError:
            pass
    if allocated:
        problems.append(f"host-local allocations left: {allocated}")
    return problems


# --- report ---------------------------------------------------------------------------------


def ratio(ours: dict, ref: dict) -> float:
    return round(ours["median"] / ref["median"], 2) if ref["median"] else float("nan")


def render(report: dict) -> str:
    def cols(s: dict) -> str:
        return f"{s['min']:8.1f} {s['median']:8.1f} {s['p95']:8.1f}"

    fl = report["floor_ms"]
    lines = [
        f"cni bench: {report['cycles']} cycles (+{report['warmup']} untimed warm-up), cniVersion {CNI_VERSION}, "
        f"interleaved per cycle: {', '.join(report['order'])}",
        f"exec floor  `ip netns exec <node> /bin/true`: min {fl['min']:.1f}  median {fl['median']:.1f}  "
        f"p95 {fl['p95']:.1f} ms (included in every ADD/DEL figure, nothing subtracted)",
        "",
        f"{'operation':<18} {'ours: min':>9} {'median':>8} {'p95':>8}   {'ref: min':>8} {'median':>8} {'p95':>8}"
        f"   {'ours/ref':>8}",
    ]
    ref = report["variants"]["ref"]["ms"]
    for key, suffix in (("bundle", ""), ("venv", " (venv)")):
        if key not in report["variants"]:
            continue
        ours = report["variants"][key]["ms"]
        for op in ("ADD", "DEL", "VERSION"):
            label = f"{op}{suffix}" + (" *" if op == "VERSION" else "")
            lines.append(f"{label:<18} {cols(ours[op])}   {cols(ref[op])}   {ratio(ours[op], ref[op]):8.2f}")
    lines.append("(ms; ours = dist/bin calico with calico-ipam in-process, (venv) = .venv/bin; "
                 "ref = /usr/lib/cni ptp + host-local; * = direct exec, no netns)")
    rt = report.get("etcd_round_trips")
    if rt:
        lines.append("")
        for op in ("ADD", "DEL"):
            mix = ", ".join(f"{m}×{n:g}" for m, n in rt[op]["mix_per_call"].items())
            lines.append(f"etcd round trips per {op}: median {rt[op]['median']:g} (min {rt[op]['min']}, "
                         f"max {rt[op]['max']}; per call: {mix})")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_cni", description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=40, help="timed ADD+DEL cycles per variant (default 40, use >= 30)")
    p.add_argument("--venv", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the venv's calico (.venv/bin) (default on)")
    p.add_argument("--bundle-bin", default=str(REPO / "dist" / "bin"), help="the bundle's symlinks (dist/bin)")
    p.add_argument("--venv-bin", default=str(REPO / ".venv" / "bin"))
    p.add_argument("--json", default=str(REPO / "dist" / "bench" / "cni.json"), help="where to write the figures")
    args = p.parse_args(argv)
    if args.cycles < 1:
        p.error("--cycles must be at least 1")
    return args


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchFailure("the bench makes network namespaces: run it as root")
    needed = [os.path.join(args.bundle_bin, "calico"), f"{REFERENCE_CNI_DIR}/ptp", f"{REFERENCE_CNI_DIR}/host-local"]
    if args.venv:
        needed.append(os.path.join(args.venv_bin, "calico"))
    missing = [path for path in needed if not os.access(path, os.X_OK)]
    if missing:
        raise BenchFailure(f"missing executables {missing}: run `make build` (and `make deps`)")


def run(args: argparse.Namespace) -> dict:
    with Lab() as lab:
        os.environ["CALICO_RUN_DIR"] = str(lab.workdir / "calico-run")  # the IPAM host lock, not /var/run
        etcd = lab.etcd()
        node = lab.node(etcd)
        add_pool(etcd, "bench-pool", POOL_CIDR, 26)
        host_local_dir = lab.workdir / "host-local"
        ours_conf = netconf(
            etcd, name="bench-calico", version=CNI_VERSION, node=NODE_NAME,
            log_level="info", log_file_path=str(lab.workdir / "calico-cni.log"),
        )
        ref_conf = {
            "cniVersion": CNI_VERSION, "name": "bench", "type": "ptp", "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": REF_SUBNET, "dataDir": str(host_local_dir)},
        }
        variants = [
            Variant("bundle", "ours (dist/bin)", args.bundle_bin, "calico",
                    f"{args.bundle_bin}:{REFERENCE_CNI_DIR}", ours_conf, ipaddress.ip_network(POOL_CIDR), True),
            Variant("ref", "ref (ptp+host-local)", REFERENCE_CNI_DIR, "ptp", REFERENCE_CNI_DIR, ref_conf,
                    ipaddress.ip_network(REF_SUBNET), False),
        ]
        if args.venv:
            variants.append(Variant("venv", "ours (.venv/bin)", args.venv_bin, "calico",
                                    f"{args.venv_bin}:{REFERENCE_CNI_DIR}", ours_conf,
                                    ipaddress.ip_network(POOL_CIDR), True))
        floors: list[float] = []
        started = time.monotonic()
        for cycle in range(-WARMUP, args.cycles):
            record = cycle >= 0
            for variant in variants:
                add_del(lab, etcd, node, variant, cycle + WARMUP, record)
            for variant in variants:
                seconds = version(variant)
                if record:
                    variant.samples["VERSION"].append(seconds)
            seconds = floor(node)
            if record:
                floors.append(seconds)
        elapsed = time.monotonic() - started
        problems = check_clean(lab, etcd, node, host_local_dir)
        if problems:
            raise BenchFailure("the node or the datastore is not clean after the run:\n  " + "\n  ".join(problems))

    report: dict = {
        "cycles": args.cycles,
        "warmup": WARMUP,
        "cni_version": CNI_VERSION,
        "order": [v.label for v in variants],
        "seconds": round(elapsed, 1),
        "machine": {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count()},
        "floor_ms": stats(floors),
        "variants": {},
    }
    for v in variants:
        report["variants"][v.key] = {
            "label": v.label,
            "bin_dir": v.bin_dir,
            "ms": {op: stats(s) for op, s in v.samples.items()},
            "samples_ms": {op: [round(x * 1000, 2) for x in s] for op, s in v.samples.items()},
        }
    ref = report["variants"]["ref"]["ms"]
    report["ratio_of_medians"] = {
        key: {op: ratio(report["variants"][key]["ms"][op], ref[op]) for op in ("ADD", "DEL", "VERSION")}
        for key in report["variants"] if key != "ref"
    }
    counted = [v for v in variants if v.uses_etcd and v.round_trips["ADD"]]
    if counted:
        report["etcd_round_trips"] = {}
        for op in ("ADD", "DEL"):
            trips = [n for v in counted for n in v.round_trips[op]]
            mix: Counter = sum((v.rpc_mix[op] for v in counted), Counter())
            report["etcd_round_trips"][op] = {
                "median": statistics.median(trips), "min": min(trips), "max": max(trips),
                "mix_per_call": {m: round(n / len(trips), 2) for m, n in sorted(mix.items())},
            }
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        preflight(args)
        report = run(args)
    except BenchFailure as exc:
        print(f"bench FAILED: {exc}", file=sys.stderr)
        return 1
    print(render(report))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
