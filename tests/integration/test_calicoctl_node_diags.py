"""`calicoctl node diags` and `calicoctl node checksystem` (issue 16 item 7), run as the real executable.

diags runs inside a node namespace whose calico-node and BIRD are live: the tarball it names holds that
node's routes (the block's blackhole), its iptables (calico-node's chains), ipsets, BIRD's config and
sessions and the copied logs. checksystem runs on this machine and must agree with what the kernel
actually has (the ipip driver is probed by making an ipip link in a namespace of the test's own).
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile

from tests.integration.helpers import kernel_has_ipip
from tests.integration.test_calicoctl import CALICOCTL
from tests.lab import add_pool, wait_for


def test_diags_packs_the_nodes_state_and_says_where(cluster, etcd, tmp_path):
    add_pool(etcd, "pool", "10.98.0.0/16", 26)
    cluster.mesh(2)
    cluster.add_pod("node1")
    wait_for(lambda: any(r.startswith("blackhole 10.98.") for r in cluster.routes("node1")), 20, "the blackhole")
    logs = tmp_path / "logs"
    (logs / "cni").mkdir(parents=True)
    (logs / "cni" / "cni.log").write_text("a CNI log line\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {"PATH": os.environ["PATH"], "CALICO_RUN_DIR": str(cluster.calico["node1"].run_dir), "TMPDIR": str(out_dir)}
    r = subprocess.run(["ip", "netns", "exec", cluster.ns["node1"], CALICOCTL, "node", "diags", "--log-dir",
                        str(logs)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Collecting diagnostics" and lines[1].startswith(f"Using temp dir: {out_dir}/calico")
    assert "Dumping routes (IPv4)" in lines and "Dumping iptables (IPv4)" in lines and "Copying Calico logs" in lines
    saved = re.search(r"^Diags saved to (\S+/diags-\d{8}_\d{6}\.tar\.gz)$", r.stdout, re.M)
    assert saved, r.stdout
    assert lines[-1] == "If required, you can upload the diagnostics bundle to a file sharing service."
    with tarfile.open(saved.group(1)) as tar:
        def text(name: str) -> str:
            return tar.extractfile(f"diagnostics/{name}").read().decode()

        names = set(tar.getnames())
        assert re.search(r"^blackhole 10\.98\.\d+\.\d+/26 proto bird", text("ipv4_route"), re.M)
        assert ":cali-FORWARD" in text("ipv4_tables")
        assert "Name: cali40" in text("ipsets")
        assert "protocol kernel kernel4" in text("bird.cfg")
        assert "Mesh_192_168_200_2" in text("bird_protocols") and "Established" in text("bird_protocols")
        assert text("logs/cni/cni.log") == "a CNI log line\n"
        assert "diagnostics/readiness.json" in names and "diagnostics/hostname" in names


def test_checksystem_says_what_this_host_has_and_lacks(lab, tmp_path):
    r = subprocess.run([CALICOCTL, "node", "checksystem"], capture_output=True, text=True, timeout=60)
    results = dict(re.findall(r"^\t\t(\S+)\s*\t+(OK|SKIP|FAIL)$", r.stdout, re.M))
    assert results[os.uname().release] == "OK"
    for needed in ("ip_set", "ip_tables", "xt_set", "xt_conntrack", "iptables-save", "ipset", "bird"):
        assert results[needed] == "OK", r.stdout  # the suite itself runs on them
    assert results["ipip"] == ("OK" if kernel_has_ipip(lab) else "SKIP"), r.stdout
    assert r.returncode == 0 and r.stdout.endswith("System meets minimum system requirements to run Calico!\n")
    # A kernel config that builds nothing: whatever /sys/module does not show is missing, named, exit 1.
    empty = tmp_path / "config"
    empty.write_text("# nothing built\n")
    r = subprocess.run([CALICOCTL, "node", "checksystem", "--kernel-config", str(empty)], capture_output=True,
                       text=True, timeout=60)
    failed = re.findall(r"^\t\t(\S+)\s*\t+FAIL$", r.stdout, re.M)
    from cni_calico.ctl.node_checksystem import MODULES, module_present

    release = os.uname().release
    listed = "".join(open(f"/lib/modules/{release}/{n}").read() for n in ("modules.dep", "modules.builtin")
                     if os.path.exists(f"/lib/modules/{release}/{n}"))
    missing = [m.name for m in MODULES if not m.optional
               and not module_present(m, set(os.listdir("/sys/module")), listed, "")]
    assert failed == missing, r.stdout
    if missing:
        assert r.returncode == 1 and "system doesn't meet one or more minimum systems requirements" in r.stdout
        assert f"Unable to detect the {missing[0]} module" in r.stdout
