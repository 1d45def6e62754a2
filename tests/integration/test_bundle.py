"""The PyInstaller bundle (`make build`) works as the runtime will run it, and `make install` lays it out.

dist/bin/<name> are symlinks into the onedir bundle dist/cni-calico/; the one executable dispatches on
the name it was called by. Every plugin run goes through `Lab.run_plugin` (`ip netns exec <node>`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

import pytest

from cni_calico import keys
from tests.lab import REFERENCE_CNI_DIR, REPO, Lab

BUNDLE_BIN = REPO / "dist" / "bin"
BUNDLE_EXE = REPO / "dist" / "cni-calico" / "calico"

pytestmark = pytest.mark.skipif(
    not (BUNDLE_BIN / "calico").exists(),
    reason="no bundle at dist/bin/calico: run `make build` first (`make test` builds it)",
)

SPEC_VERSIONS = ("0.3.1", "0.4.0", "1.0.0")


def handles(etcd) -> list[str]:
    return etcd.keys("/calico/ipam/v2/handle/")


@pytest.mark.parametrize("name", ["calico", "calico-ipam"])
def test_version_through_each_name(node, name):
    run = Lab.run_plugin(node, "VERSION", {"cniVersion": "1.0.0"}, bin_dir=str(BUNDLE_BIN), exe=name)
    assert run.rc == 0, run.stdout + run.stderr
    assert run.out["cniVersion"] == "1.0.0"
    assert set(SPEC_VERSIONS) <= set(run.out["supportedVersions"]), run.out


def bundled_modules() -> set[str]:
    """Module names in the bundle: .pyc files under _internal/ (noarchive) and whatever its PYZ holds."""
    from PyInstaller.archive.readers import CArchiveReader

    internal = BUNDLE_EXE.parent / "_internal"
    names = set(CArchiveReader(str(BUNDLE_EXE)).open_embedded_archive("PYZ.pyz").toc)
    for path in internal.rglob("*.pyc"):
        parts = path.relative_to(internal).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_bundle_holds_every_module_of_ours():
    """entry.py imports lazily, so only collecting the packages whole puts every module in the bundle."""
    bundled = bundled_modules()
    ours = set()
    for package in ("cni_calico", "ipam"):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            ours.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    missing = sorted(ours - bundled)
    assert not missing, f"modules missing from the bundle (stale? run `make build`): {missing}"
    needed = {"pyetcd.etcdrpc.rpc_pb2", "pyetcd.etcdrpc.rpc_pb2_grpc", "pyetcd.etcdrpc.kv_pb2", "grpc", "yaml",
              "pyroute2.iproute.linux", "pyroute2.netlink.rtnl.ifinfmsg.plugins.vlan"}
    assert needed <= bundled, sorted(needed - bundled)


@pytest.mark.parametrize("name, module", [("calicoctl", "ctl"), ("calico-node", "node"),
                                          ("calico-kube-controllers", "kubecontrollers")])
def test_tools_start_from_the_bundle(name, module):
    """`--help` imports each tool's entry module: a module the bundle lacks shows up here."""
    if not (REPO / "cni_calico" / module / "main.py").exists():
        pytest.skip(f"{name} is not written yet")
    if not (BUNDLE_BIN / name).exists():
        pytest.skip(f"dist/bin/{name} is missing: run `make build`")
    proc = subprocess.run([str(BUNDLE_BIN / name), "--help"], capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert "Failed to execute script" not in output, output
    assert "ModuleNotFoundError" not in output and "ImportError" not in output, output
    assert proc.returncode == 0 and f"usage: {name}" in output, output


def test_add_del_through_the_bundle(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    cid = "b0d1e0000001"
    run = Lab.run_plugin(node, "ADD", conf(), cid, Lab.netns_path(pod), bin_dir=str(BUNDLE_BIN))
    assert run.rc == 0, run.stdout + run.stderr
    assert run.out["cniVersion"] == "1.0.0"
    address = run.out["ips"][0]["address"]
    assert ipaddress.ip_interface(address).ip in ipaddress.ip_network(pool)
    assert address.split("/")[0] in lab.in_ns(pod, "ip", "-4", "addr", "show", "dev", "eth0").stdout
    host_links = [link for link in lab.links(node) if link.startswith("cali")]
    assert len(host_links) == 1, lab.links(node)
    assert any(r.startswith(address.split("/")[0]) and host_links[0] in r for r in lab.routes(node)), lab.routes(node)
    assert handles(etcd) == [f"/calico/ipam/v2/handle/net1.{cid}"]

    run = Lab.run_plugin(node, "DEL", conf(), cid, Lab.netns_path(pod), bin_dir=str(BUNDLE_BIN))
    assert run.rc == 0, run.stdout + run.stderr
    assert not handles(etcd)
    assert not etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/")
    assert not [link for link in lab.links(node) if link.startswith("cali")]


def reference_plugin(name: str) -> str:
    path = f"{REFERENCE_CNI_DIR}/{name}"
    if not os.access(path, os.X_OK):
        pytest.skip(f"Debian's {name} plugin is not installed (containernetworking-plugins)")
    return path


def standalone(plugin: str) -> dict:
    """How a foreign main plugin runs calico-ipam: found through CNI_PATH, bundle first."""
    cni_path = f"{BUNDLE_BIN}:{REFERENCE_CNI_DIR}"
    return {"exe": reference_plugin(plugin), "bin_dir": str(BUNDLE_BIN), "cni_path": cni_path}


def test_calico_ipam_standalone_under_macvlan(lab, node, make_pod, pool, conf, etcd):
    """calico-ipam called through CNI_PATH by another plugin, as any IPAM plugin is: ADD, then DEL releases."""
    pod = make_pod()
    cid = "b0d1e0000002"
    macvlan = conf(name="mvnet", type="macvlan", master="up0", mode="bridge")
    kw = standalone("macvlan")
    run = Lab.run_plugin(node, "ADD", macvlan, cid, Lab.netns_path(pod), **kw)
    assert run.rc == 0, run.stdout + run.stderr
    address = run.out["ips"][0]["address"]
    assert address.endswith("/32")
    assert ipaddress.ip_interface(address).ip in ipaddress.ip_network(pool)
    assert address.split("/")[0] in lab.in_ns(pod, "ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert handles(etcd) == [f"/calico/ipam/v2/handle/mvnet.{cid}"]

    run = Lab.run_plugin(node, "DEL", macvlan, cid, Lab.netns_path(pod), **kw)
    assert run.rc == 0, run.stdout + run.stderr
    assert not handles(etcd)
    assert "eth0" not in lab.links(pod)


def test_calico_ipam_standalone_under_ptp(lab, node, make_pod, pool, conf, etcd):
    """calico-ipam under Debian's ptp: the address comes from the pool and nothing is left behind.

    ptp (containernetworking/plugins 1.1.1) configures the address, then deletes the prefix route the
    kernel added for it, unconditionally; a /32 (what calico-ipam returns, as Calico's does) gets no
    prefix route, so ptp's ADD fails with "failed to delete route ... no such process" and ptp calls
    calico-ipam DEL to roll back. Either way the pool's address must come back: if ptp succeeds (a
    different ptp or result shape), the full ADD/DEL is checked instead.
    """
    pod = make_pod()
    cid = "b0d1e0000003"
    ptp = conf(name="ptpnet", type="ptp", ipMasq=False)
    kw = standalone("ptp")
    run = Lab.run_plugin(node, "ADD", ptp, cid, Lab.netns_path(pod), **kw)
    blocks = [keys.cidr_from_block_key(k) for k in etcd.keys(keys.block_dir(4))]
    assert blocks, "calico-ipam was not reached through CNI_PATH (no block claimed): " + run.stdout + run.stderr
    assert all(ipaddress.ip_network(b).subnet_of(ipaddress.ip_network(pool)) for b in blocks), blocks
    if run.rc != 0:
        assert "failed to delete route" in run.out.get("msg", ""), run.stdout + run.stderr
        assert not handles(etcd), "ptp's rollback (calico-ipam DEL) left the address allocated"
    else:
        address = run.out["ips"][0]["address"]
        assert ipaddress.ip_interface(address).ip in ipaddress.ip_network(pool)
        assert handles(etcd) == [f"/calico/ipam/v2/handle/ptpnet.{cid}"]
    run = Lab.run_plugin(node, "DEL", ptp, cid, Lab.netns_path(pod), **kw)
    assert run.rc == 0, run.stdout + run.stderr
    assert not handles(etcd)
    assert not [link for link in lab.links(node) if link.startswith("veth")]


def test_make_install_into_destdir(tmp_path, node):
    """`make install DESTDIR=…`, twice (the second swaps a bundle in over the first); the bundle as built."""
    dest = tmp_path / "root"
    for _ in range(2):
        # -o build: use the bundle as built (make test builds first) instead of rebuilding it here.
        proc = subprocess.run(
            ["make", "-o", "build", "install", f"DESTDIR={dest}"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    bin_dir = dest / "opt" / "cni" / "bin"
    assert (bin_dir / "cni-calico" / "calico").is_file()
    assert (bin_dir / "cni-calico" / "_internal").is_dir()
    assert sorted(p.name for p in bin_dir.iterdir()) == ["calico", "calico-ipam", "cni-calico"]
    for name in ("calico", "calico-ipam"):
        assert (bin_dir / name).is_symlink()
        assert os.readlink(bin_dir / name) == "cni-calico/calico"  # relative: works under any DESTDIR
    conf = dest / "etc" / "cni" / "net.d" / "10-calico.conf"
    assert conf.read_bytes() == (REPO / "examples" / "10-calico.conf").read_bytes()
    json.loads(conf.read_text())

    for name in ("calico", "calico-ipam"):
        run = Lab.run_plugin(node, "VERSION", {"cniVersion": "1.0.0"}, bin_dir=str(bin_dir), exe=name)
        assert run.rc == 0, run.stdout + run.stderr
        assert "1.0.0" in run.out["supportedVersions"]


def test_install_does_not_leave_the_destdir_out(tmp_path):
    """A dry run shows every path under DESTDIR: nothing may go to the machine's own /opt/cni or /etc/cni."""
    dest = tmp_path / "root"
    cmd = ["make", "-n", "-o", "build", "install", f"DESTDIR={dest}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in proc.stdout.split():
        if "/opt/cni" in word or "/etc/cni" in word:
            assert str(dest) in word, word
