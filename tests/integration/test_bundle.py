"""The PyInstaller bundle (`make build`) works as the runtime will run it, and `make install` lays it out.

dist/bin/<name> are symlinks into the onedir bundle dist/cni-calico/; the one executable dispatches on
the name it was called by. Every plugin run goes through `Lab.run_plugin` (`ip netns exec <node>`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from cni_calico import __version__, keys
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


# What dist/cni-calico/_internal/ may hold at its top level, besides the standard library's modules below.
# A name not listed fails the test: a new dependency is added here with its reason; anything else is an
# unused package that an optional import dragged in (numpy came through protobuf's `try: import numpy`
# while matplotlib, a dev extra, sat in the venv) and is excluded in build/cni-calico.spec.
THIRD_PARTY = {
    "cni_calico": "ours: the plugin, calico-node, calicoctl",
    "ipam": "ours: calico-ipam",
    "_cni_calico_build": "ours: the build id frozen in by the spec (cni_calico/build_id.py)",
    "pyetcd": "the etcd v3 client (etcd-sdk-python)",
    "grpc": "pyetcd's transport (grpcio)",
    "google": "protobuf: pyetcd's generated stubs",
    "typing_extensions": "grpc imports it (grpc/_server.py, grpc/aio)",
    "pyroute2": "netlink: veths, addresses, routes",
    "yaml": "PyYAML: calicoctl's resources",
    "prometheus_client": "calico-node's metrics exporter (cni_calico/node/metrics.py)",
}
# The standard library's top-level modules the bundle holds today (PyInstaller follows stdlib imports on its
# own). A new one is a sign of a new import chain: look at what brought it before adding it here.
STDLIB = set("""
    __future__ _collections_abc _compat_pickle _compression _py_abc _pydecimal _strptime _threading_local
    _weakrefset abc argparse ast asyncio base64 bisect bz2 calendar codecs collections concurrent contextlib
    contextvars copy copyreg csv ctypes dataclasses datetime decimal difflib dis email encodings enum fnmatch
    fractions ftplib functools genericpath getopt getpass gettext gzip hashlib heapq hmac http importlib
    inspect io ipaddress json keyword linecache locale logging lzma mimetypes multiprocessing netrc ntpath
    nturl2path numbers opcode operator os pathlib pickle pkgutil platform posixpath pprint py_compile queue
    quopri random re reprlib runpy secrets selectors shlex shutil signal smtplib socket sqlite3 sre_compile
    sre_constants sre_parse ssl stat statistics string stringprep struct subprocess tarfile tempfile textwrap
    threading token tokenize traceback tracemalloc types typing unittest urllib uuid warnings weakref xml
    xmlrpc zipfile zipimport
""".split()) | {
    # prometheus_client's: its HTTP server (http.server: socketserver, html; wsgiref), multiprocess files
    # (glob), decorators (timeit).
    "glob", "html", "socketserver", "timeit", "wsgiref",
}
# Shared libraries beside them: libpython and the C libraries of the stdlib's and grpc's extension modules.
SHARED_LIBS = {
    "libpython3.11.so.1.0", "libbz2.so.1.0", "libcrypto.so.3", "libssl.so.3", "libffi.so.8", "libgcc_s.so.1",
    "liblzma.so.5", "libsqlite3.so.0", "libstdc++.so.6", "libuuid.so.1", "libz.so.1",
}
# The stdlib's C extension modules (python3.11/lib-dynload/).
STDLIB_EXTENSIONS = set("""
    _asyncio _bisect _blake2 _bz2 _codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp _codecs_kr _codecs_tw
    _contextvars _csv _ctypes _datetime _decimal _hashlib _heapq _json _lzma _md5 _multibytecodec
    _multiprocessing _opcode _pickle _posixshmem _posixsubprocess _queue _random _sha1 _sha256 _sha3 _sha512
    _socket _sqlite3 _ssl _statistics _struct _typing _uuid array binascii fcntl grp math mmap pyexpat resource
    select termios unicodedata zlib
""".split())


PY_VERSION = "3.11"  # the lists above are of this Python's standard library


def bundle_top_level() -> tuple[set[str], set[str], set[str]]:
    """_internal/'s top-level module and package names, its shared libraries, and lib-dynload's modules."""
    internal = BUNDLE_EXE.parent / "_internal"
    modules, libs = set(), set()
    for path in internal.iterdir():
        if path.name.startswith("lib") and ".so" in path.name:
            libs.add(path.name)
        elif path.name != f"python{PY_VERSION}":
            modules.add(path.name.split(".", 1)[0] if path.is_file() else path.name)
    dynload = {path.name.split(".", 1)[0] for path in (internal / f"python{PY_VERSION}" / "lib-dynload").iterdir()}
    return modules, libs, dynload


def test_bundle_holds_only_what_the_code_imports():
    """Every top-level name of the bundle is allowed, with a reason; ours and the dependencies all there."""
    if not (BUNDLE_EXE.parent / "_internal" / f"python{PY_VERSION}").is_dir():
        pytest.skip(f"the bundle was not built with Python {PY_VERSION}: the allowlists name its stdlib")
    modules, libs, dynload = bundle_top_level()
    new = sorted(modules - THIRD_PARTY.keys() - STDLIB)
    assert not new, f"not in the allowlist (an unused package? exclude it in build/cni-calico.spec): {new}"
    missing = sorted(THIRD_PARTY.keys() - modules)
    assert not missing, f"dependencies missing from the bundle: {missing}"
    assert libs <= SHARED_LIBS, f"shared libraries not in the allowlist: {sorted(libs - SHARED_LIBS)}"
    assert dynload <= STDLIB_EXTENSIONS, f"extension modules not allowed: {sorted(dynload - STDLIB_EXTENSIONS)}"
    # What came in before through optional imports, named so a regression reads plainly.
    for name in ("numpy", "numpy.libs", "netaddr", "matplotlib", "PIL", "packaging", "pytest", "setuptools"):
        assert not (BUNDLE_EXE.parent / "_internal" / name).exists(), name


def test_the_code_does_not_import_netaddr():
    """netaddr was bundled and required without any import of it: the stdlib's ipaddress does the work."""
    for package in ("cni_calico", "ipam"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            assert "import netaddr" not in text and "from netaddr" not in text, path


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


@pytest.mark.parametrize("name", ["calico", "calico-ipam", "calico-node"])
@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_flag_through_the_bundle(name, flag):
    """`calico -v` as Calico's: the version alone, exit 0 (not a CNI error for a missing CNI_COMMAND)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.run([str(BUNDLE_BIN / name), flag], stdin=subprocess.DEVNULL, env=env, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"v{__version__}\n", "")


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


# Every path `make install` writes under DESTDIR (defaults: PREFIX=/usr/local, SYSTEMD_UNIT_DIR=/etc/systemd/system)
# but the bundle's own files: "l" link (with its target) or "f" file.
INSTALLED = {
    "opt/cni/bin/calico": ("l", "cni-calico/calico"),
    "opt/cni/bin/calico-ipam": ("l", "cni-calico/calico"),
    "usr/local/bin/calicoctl": ("l", "../../../opt/cni/bin/cni-calico/calico"),
    "usr/local/bin/calico-node": ("l", "../../../opt/cni/bin/cni-calico/calico"),
    "etc/systemd/system/calico-node.service": ("f", None),
    "etc/cni/net.d/10-calico.conf": ("f", None),
    "usr/local/share/bash-completion/completions/calicoctl": ("f", None),
}
# Other packages' files where ours go: install and uninstall must leave them alone.
FOREIGN = ("opt/cni/bin/loopback", "usr/local/bin/other-tool", "etc/systemd/system/other.service",
           "etc/cni/net.d/99-other.conflist")


def files_under(root: Path) -> dict[str, tuple[str, str | None]]:
    """Every file and link below `root` (directories left out), as {relative path: (kind, link target)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            out[rel] = ("l", os.readlink(path)) if os.path.islink(path) else ("f", None)
    return out


def make(*args: str) -> subprocess.CompletedProcess:
    """`make -o build …` in the checkout: the bundle as built (make test builds first), never rebuilt here."""
    proc = subprocess.run(["make", "-s", "-o", "build", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_make_install_then_uninstall_exact_file_set(tmp_path):
    """`make install DESTDIR=…` lays out exactly what an operator needs, the tools run from there, and
    `make uninstall DESTDIR=…` takes exactly that away again, other packages' files untouched."""
    dest = tmp_path / "root"
    for rel in FOREIGN:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text("not ours\n")
    before = files_under(dest)
    make("install", f"DESTDIR={dest}")

    bundle = files_under(BUNDLE_EXE.parent)
    want = {**before, **INSTALLED, **{f"opt/cni/bin/cni-calico/{rel}": kind for rel, kind in bundle.items()}}
    assert files_under(dest) == want
    unit = (dest / "etc/systemd/system/calico-node.service").read_text()
    example = (REPO / "examples" / "calico-node.service").read_text()
    assert re.findall(r"^ExecStart=.*$", unit, re.M) == ["ExecStart=/usr/local/bin/calico-node"]
    assert unit == re.sub(r"^ExecStart=.*$", "ExecStart=/usr/local/bin/calico-node", example, flags=re.M)
    assert (dest / "etc/cni/net.d/10-calico.conf").read_bytes() == (REPO / "examples/10-calico.conf").read_bytes()
    completion = (dest / "usr/local/share/bash-completion/completions/calicoctl").read_text()
    assert "complete -o default -F _calicoctl calicoctl" in completion

    # The operator's tools, run from where install put them, as the PATH would find them.
    for name in ("calicoctl", "calico-node"):
        proc = subprocess.run([str(dest / "usr/local/bin" / name), "--help"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and f"usage: {name}" in proc.stdout, proc.stdout + proc.stderr
    version = subprocess.run([str(dest / "usr/local/bin/calico-node"), "-v"], capture_output=True, text=True,
                             timeout=60)
    assert (version.returncode, version.stdout) == (0, f"v{__version__}\n"), version.stdout + version.stderr
    # The unit's ExecStart is that calico-node (inside the DESTDIR).
    exe = dest / "usr/local/bin/calico-node"
    assert os.access(exe, os.X_OK) and exe.resolve() == (dest / "opt/cni/bin/cni-calico/calico").resolve()

    make("uninstall", f"DESTDIR={dest}")
    assert files_under(dest) == before
    for rel in FOREIGN:
        assert (dest / rel).read_text() == "not ours\n"


def test_uninstall_keeps_an_edited_conf_and_install_does_not_overwrite_it(tmp_path):
    dest = tmp_path / "root"
    make("install", f"DESTDIR={dest}")
    conf = dest / "etc/cni/net.d/10-calico.conf"
    edited = conf.read_text().replace("127.0.0.1", "192.0.2.10")
    assert edited != conf.read_text()
    conf.write_text(edited)
    again = make("install", f"DESTDIR={dest}")
    assert conf.read_text() == edited and "kept" in again.stdout, again.stdout
    gone = make("uninstall", f"DESTDIR={dest}")
    assert files_under(dest) == {"etc/cni/net.d/10-calico.conf": ("f", None)}, files_under(dest)
    assert conf.read_text() == edited and "kept" in gone.stdout, gone.stdout


def test_install_and_uninstall_do_not_leave_the_destdir(tmp_path):
    """A dry run shows every path under DESTDIR: nothing may go to the machine's own /opt/cni, /etc/cni,
    /usr/local or /etc/systemd. Two words name real paths without writing there: the link target computed with
    `realpath --relative-to` and the unit's ExecStart value; they are left out of the check."""
    dest = tmp_path / "root"
    for target in ("install", "uninstall"):
        cmd = ["make", "-n", "-o", "build", target, f"DESTDIR={dest}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        for line in proc.stdout.splitlines():
            for word in line.split():
                if "realpath" in line and str(dest) not in word or "ExecStart=" in word:
                    continue
                if any(root in word for root in ("/opt/cni", "/etc/cni", "/usr/local", "/etc/systemd")):
                    assert str(dest) in word, (target, word)
