"""`make demo`: one simulated node, two pods networked by the real `calico` binary, a ping between them.

Starts a private etcd on loopback, creates an IP pool with calicoctl, makes a
node namespace and two pod namespaces, runs `calico` ADD in the node exactly
as a runtime would (CNI_* env vars, examples/10-calico.conf on stdin), shows
addresses and routes, pings, runs DEL, and removes everything it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lab import Lab, plugin_dir, sh  # noqa: E402


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(title: str, cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    print(f"$ {' '.join(cmd)}   # {title}\n{out.rstrip()}")
    return out


def main() -> int:
    bin_dir = plugin_dir()
    print(f"plugin binaries: {bin_dir}")
    with Lab(prefix=f"demo{os.getpid() % 10000}-") as lab:
        os.environ["CALICO_RUN_DIR"] = str(lab.workdir / "run")
        say("etcd on loopback")
        etcd = lab.etcd()
        print(f"etcd {etcd.url} (pid {etcd.proc.pid}, data in {lab.workdir})")

        say("an IP pool, with calicoctl")
        env = {**os.environ, "ETCD_ENDPOINTS": etcd.url, "DATASTORE_TYPE": "etcdv3"}
        ctl = os.path.join(bin_dir, "calicoctl")
        print(subprocess.run([ctl, "apply", "-f", str(REPO / "examples/ippool.yaml")], env=env,
                             capture_output=True, text=True).stdout.rstrip())
        print(subprocess.run([ctl, "get", "ippool", "-o", "wide"], env=env, capture_output=True, text=True).stdout)

        say("one node namespace, two pod namespaces")
        node = lab.node(etcd)
        pods = [lab.pod(), lab.pod()]
        print(f"node: {node}\npods: {', '.join(pods)}")

        conf = json.loads((REPO / "examples/10-calico.conf").read_text())
        conf.update(etcd_endpoints=etcd.url, nodename="demo-node", log_file_path=str(lab.workdir / "cni.log"))
        say("the network config on stdin (examples/10-calico.conf, pointed at this etcd)")
        print(json.dumps(conf, indent=2))

        addresses = []
        for i, pod in enumerate(pods):
            cid = f"demo{i}" + "0" * 59
            args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo-pod-{i}"
            say(f"CNI ADD pod {i}: ip netns exec {node} {bin_dir}/calico")
            run = lab.run_plugin(node, "ADD", conf, cid, lab.netns_path(pod), args=args, bin_dir=bin_dir)
            print(f"exit {run.rc} in {run.seconds * 1000:.0f} ms\n{json.dumps(run.out, indent=2)}")
            if run.rc != 0:
                print(run.stderr[-2000:])
                return 1
            addresses.append(run.out["ip4"]["ip"].split("/")[0])

        say("addresses and routes")
        for pod in pods:
            show(f"pod {pod}", ["ip", "netns", "exec", pod, "ip", "-4", "addr", "show", "eth0"])
            show(f"pod {pod}", ["ip", "netns", "exec", pod, "ip", "route"])
        show(f"node {node}", ["ip", "netns", "exec", node, "ip", "route"])
        show("etcd", ["etcdctl", "--endpoints", etcd.url, "get", "--prefix", "/calico", "--keys-only"])

        say(f"ping pod 0 -> pod 1 ({addresses[1]})")
        ping = subprocess.run(["ip", "netns", "exec", pods[0], "ping", "-c", "3", "-W", "2", addresses[1]])
        say("CNI DEL both pods")
        for i, pod in enumerate(pods):
            cid = f"demo{i}" + "0" * 59
            run = lab.run_plugin(node, "DEL", conf, cid, lab.netns_path(pod), bin_dir=bin_dir)
            print(f"DEL pod {i}: exit {run.rc} in {run.seconds * 1000:.0f} ms")
        left = etcd.keys("/calico/ipam/v2/handle/")
        print(f"handles left in etcd: {left or 'none'}")
        links = [link for link in lab.links(node) if link.startswith("cali")]
        print(f"cali links left on the node: {links or 'none'}")
        ok = ping.returncode == 0 and not left and not links
    say("tear-down")
    mine = [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("demo")]
    print(f"namespaces left: {mine or 'none'}; etcd stopped")
    print("\nDEMO", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
