"""The fast path's figures (issue 9): ADD/DEL through the calico-node agent vs in-process vs ptp + host-local.

Run by `make bench`:  python -m tests.bench.bench_fastpath [--cycles N] [--burst N] [--scale N]

One node namespace running calico-node (its agent serves CNI requests on a unix socket), one
etcd, one big pool. Forms of our plugin, measured in the same run, interleaved per cycle:
  agent/bundle      dist/bin/calico (PyInstaller onedir) forwarding to the agent
  agent/launcher    the venv launcher (make install INSTALL_FORM=venv) forwarding to the agent
  standalone/bundle dist/bin/calico doing the work itself (CALICO_CNI_AGENT=off)
  ref               Debian's ptp + host-local
Floors: VERSION of each form (start-up, json, exit; an ADD's hand-over to the agent imports less
than that). Then: a burst of N ADDs at once with the agent (bundle and launcher) and without;
etcd round trips per ADD/DEL (from the plugin's log lines); agent RSS at the end of the scale run
and one plugin call's peak RSS; ADD latency against the number of pods already on the node
(0 -> scale) for agent, standalone and ref, drawn into dist/bench/fastpath.png. Figures also in
dist/bench/fastpath.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.cluster import Cluster
from tests.lab import REFERENCE_CNI_DIR, REPO, Lab, add_pool, wait_for

OUT = REPO / "dist" / "bench"


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "min": round(ordered[0], 1), "median": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1)}


class Forms:
    def __init__(self, lab: Lab, cluster: Cluster, work: Path) -> None:
        self.lab, self.cluster, self.node = lab, cluster, cluster.ns["node1"]
        launcher = work / "launcher"
        launcher.mkdir()
        subprocess.run([sys.executable, str(REPO / "build/make_launcher.py"), str(launcher), "calico", "calico-ipam"],
                       check=True)
        run_dir = str(cluster.calico["node1"].run_dir)
        self.log = work / "cni.log"
        conf = cluster.conf("node1", log_level="info", log_file_path=str(self.log))
        ref_conf = {"cniVersion": "1.0.0", "name": "bench", "type": "ptp", "ipMasq": False,
                    "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": str(work / "host-local")}}
        bundle = str(REPO / "dist" / "bin")
        self.forms = {
            "agent/bundle": (bundle, "calico", conf, {"CALICO_RUN_DIR": run_dir}),
            "agent/launcher": (str(launcher), "calico", conf, {"CALICO_RUN_DIR": run_dir}),
            "standalone/bundle": (bundle, "calico", conf, {"CALICO_CNI_AGENT": "off"}),
            "ref": (REFERENCE_CNI_DIR, "ptp", ref_conf, {}),
        }
        self.count = 0

    def add(self, form: str, pod: str | None = None) -> tuple[float, str, str]:
        bin_dir, exe, conf, env = self.forms[form]
        pod = pod or self.lab.pod()
        self.count += 1
        cid = f"fp{self.count:05d}".ljust(24, "0")
        run = Lab.run_plugin(self.node, "ADD", conf, cid, Lab.netns_path(pod), exe=exe, bin_dir=bin_dir,
                             cni_path=f"{bin_dir}:{REFERENCE_CNI_DIR}", extra_env=env)
        if run.rc != 0:
            raise RuntimeError(f"{form} ADD failed: {run.stdout} {run.stderr[-500:]}")
        return run.seconds * 1000, cid, pod

    def delete(self, form: str, cid: str, pod: str) -> float:
        bin_dir, exe, conf, env = self.forms[form]
        run = Lab.run_plugin(self.node, "DEL", conf, cid, Lab.netns_path(pod), exe=exe, bin_dir=bin_dir,
                             cni_path=f"{bin_dir}:{REFERENCE_CNI_DIR}", extra_env=env)
        if run.rc != 0:
            raise RuntimeError(f"{form} DEL failed: {run.stdout} {run.stderr[-500:]}")
        self.lab.in_ns(self.node, "true")
        subprocess.run(["ip", "netns", "del", pod], check=False)
        return run.seconds * 1000

    def version(self, form: str) -> float:
        bin_dir, exe, _, env = self.forms[form]
        started = time.monotonic()
        subprocess.run(["ip", "netns", "exec", self.node, f"{bin_dir}/{exe}"], input=b"{}", capture_output=True,
                       env={"CNI_COMMAND": "VERSION", **env}, check=True)
        return (time.monotonic() - started) * 1000

    def round_trips(self) -> dict[str, list[int]]:
        text = self.log.read_text() if self.log.exists() else ""
        return {op: [int(n) for n in re.findall(rf"{op} container=.*?etcd_round_trips=(\d+)", text)]
                for op in ("ADD", "DEL")}


def cycles(forms: Forms, n: int) -> dict:
    samples: dict[str, dict[str, list[float]]] = {f: {"ADD": [], "DEL": [], "VERSION": []} for f in forms.forms}
    for i in range(n + 2):
        for form in forms.forms:
            add_ms, cid, pod = forms.add(form)
            del_ms = forms.delete(form, cid, pod)
            version_ms = forms.version(form)
            if i >= 2:  # two warm-up cycles
                samples[form]["ADD"].append(add_ms)
                samples[form]["DEL"].append(del_ms)
                samples[form]["VERSION"].append(version_ms)
    return {f: {op: stats(v) for op, v in ops.items()} for f, ops in samples.items()}


def burst(forms: Forms, form: str, n: int) -> dict:
    pods = [forms.lab.pod() for _ in range(n)]
    started = time.monotonic()
    with ThreadPoolExecutor(n) as ex:
        done = list(ex.map(lambda p: forms.add(form, p), pods))
    wall = time.monotonic() - started
    addresses = set(forms.lab.in_ns(p, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3] for _, _, p in done)
    with ThreadPoolExecutor(min(n, 50)) as ex:
        list(ex.map(lambda d: forms.delete(form, d[1], d[2]), done))
    return {"pods": n, "wall_s": round(wall, 2), "unique_addresses": len(addresses)}


def scale(forms: Forms, top: int, step: int) -> dict:
    series: dict[str, list[tuple[int, float]]] = {"agent/bundle": [], "standalone/bundle": [], "ref": []}
    kept: list[tuple[str, str, str]] = []
    on_node = 0
    while True:
        for form in series:
            samples = []
            for _ in range(3):  # three ADDs per form and step: the median is what gets drawn
                ms, cid, pod = forms.add(form)
                samples.append(ms)
                kept.append((form, cid, pod))
            series[form].append((on_node, statistics.median(samples)))
        on_node = len(kept)
        if on_node >= top:
            break
        with ThreadPoolExecutor(10) as ex:  # fill up to the next step through the agent
            for _ms, cid, pod in ex.map(lambda _: forms.add("agent/bundle"), range(max(0, step - 9))):
                kept.append(("agent/bundle", cid, pod))
        on_node = len(kept)
    agent_rss = _rss_kb(forms.cluster.calico["node1"].proc.pid)
    with ThreadPoolExecutor(20) as ex:
        list(ex.map(lambda k: forms.delete(*k), kept))
    return {"series": series, "agent_rss_kb": agent_rss, "pods_at_peak": on_node}


def _rss_kb(pid: int) -> int:
    """calico-node's RSS plus its CNI server child's (BIRD, also a child, is not ours)."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for proc in [str(pid)] + [c for c in children if b"--serve-cni" in Path(f"/proc/{c}/cmdline").read_bytes()]:
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def plugin_rss_kb(forms: Forms, form: str) -> int:
    bin_dir, exe, conf, env = forms.forms[form]
    pod = forms.lab.pod()
    cid = "rss".ljust(24, "0")
    proc = subprocess.run(
        ["ip", "netns", "exec", forms.node, "/usr/bin/time", "-f", "RSS=%M", f"{bin_dir}/{exe}"],
        input=json.dumps(conf).encode(), capture_output=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
             "CNI_NETNS": Lab.netns_path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": bin_dir, **env})
    forms.delete(form, cid, pod)
    found = re.search(rb"RSS=(\d+)", proc.stderr)
    return int(found.group(1)) if found else 0


def plot(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("pods already on the node")
    ax.set_ylabel("ADD latency (ms, whole process)")
    ax.set_yscale("log")
    ax.set_title("cni-calico ADD latency against pods on the node")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--scale", type=int, default=250)
    parser.add_argument("--step", type=int, default=25)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    # The agent must be the bundle's calico-node: the plugin and the agent compare build ids.
    os.environ["CNI_CALICO_BIN"] = str(REPO / "dist" / "bin")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="cni-calico-fastpath-") as tmp:
        etcd = lab.etcd()
        add_pool(etcd, "bench", "10.96.0.0/16", 26)
        cluster = Cluster(lab, etcd)
        try:
            cluster.add_node(1, CALICO_NODE_LOG_LEVEL="info")
            wait_for((cluster.calico["node1"].run_dir / "cni.sock").exists, 30, "the agent's socket")
            forms = Forms(lab, cluster, Path(tmp))
            timings = cycles(forms, args.cycles)
            trips = forms.round_trips()
            burst_forms = ("agent/bundle", "agent/launcher", "standalone/bundle")
            bursts = {form: burst(forms, form, args.burst) for form in burst_forms}
            rss = {form: plugin_rss_kb(forms, form) for form in ("agent/bundle", "standalone/bundle")}
            grown = scale(forms, args.scale, args.step)
        finally:
            cluster.close()
    ref = timings["ref"]
    print(f"\nADD/DEL over {args.cycles} interleaved cycles (ms, whole `ip netns exec <node> <plugin>` process)")
    print(f"{'form':20} {'op':8} {'min':>7} {'median':>7} {'p95':>7} {'x ref':>6}  floor (VERSION median)")
    for form, ops in timings.items():
        for op in ("ADD", "DEL"):
            ratio = ops[op]["median"] / ref[op]["median"]
            print(f"{form:20} {op:8} {ops[op]['min']:7.1f} {ops[op]['median']:7.1f} {ops[op]['p95']:7.1f} "
                  f"{ratio:6.2f}  {ops['VERSION']['median']:.1f}")
    for form in ("agent/bundle", "agent/launcher"):
        over = timings[form]["ADD"]["median"] - timings[form]["VERSION"]["median"]
        print(f"{form}: ADD median is floor + {over:.1f} ms (target: + 25 ms)")
    common = {op: statistics.median(v) if v else None for op, v in trips.items()}
    print(f"etcd round trips (median per operation, from the plugin log): ADD {common['ADD']}, DEL {common['DEL']}")
    for form, b in bursts.items():
        print(f"burst {form}: {b['pods']} ADDs at once in {b['wall_s']} s, {b['unique_addresses']} unique addresses")
    print(f"RSS: agent (calico-node + its CNI server) {grown['agent_rss_kb'] / 1024:.1f} MiB with "
          f"{grown['pods_at_peak']} pods; one plugin call "
          f"{rss['agent/bundle'] / 1024:.1f} MiB via the agent, {rss['standalone/bundle'] / 1024:.1f} MiB standalone")
    plot(grown["series"], OUT / "fastpath.png")
    print(f"plot: {OUT / 'fastpath.png'}")
    (OUT / "fastpath.json").write_text(json.dumps({
        "timings_ms": timings, "etcd_round_trips": trips, "bursts": bursts, "plugin_rss_kb": rss,
        "agent_rss_kb": grown["agent_rss_kb"], "scale_series_ms": grown["series"]}, indent=1))
    ok = all(b["unique_addresses"] == b["pods"] for b in bursts.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
