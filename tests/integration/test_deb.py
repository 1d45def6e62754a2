"""`make deb`: the Debian package of the bundle, its exact contents, and an install + purge that leaves nothing.

The package is built by the real recipe (`make -o build deb`: the bundle of `make build` is used as it
is) into a temp dir, then installed into a throwaway root with its own, fresh dpkg database
(`dpkg --root`), never into the machine's. Layout and choices: build/deb/build-deb.sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.lab import REPO, sh

BUNDLE = REPO / "dist" / "cni-calico"
BUNDLE_DIR = "opt/cni/bin/cni-calico"
UNIT = "lib/systemd/system/calico-node.service"
EXAMPLES = ("10-calico.conf", "10-calico.conflist", "ippool.yaml")
# Every path of the package but the bundle's own: (type, link target), "d" directory, "f" file, "l" link.
EXTRA = {
    "lib/": ("d", None), "lib/systemd/": ("d", None), "lib/systemd/system/": ("d", None), UNIT: ("f", None),
    "opt/": ("d", None), "opt/cni/": ("d", None), "opt/cni/bin/": ("d", None),
    "opt/cni/bin/calico": ("l", "cni-calico/calico"), "opt/cni/bin/calico-ipam": ("l", "cni-calico/calico"),
    f"{BUNDLE_DIR}/calico-node": ("l", "calico"),
    "usr/": ("d", None), "usr/bin/": ("d", None),
    "usr/bin/calicoctl": ("l", "/opt/cni/bin/cni-calico/calico"),
    "usr/bin/calico-node": ("l", "/opt/cni/bin/cni-calico/calico"),
    "usr/share/": ("d", None), "usr/share/doc/": ("d", None), "usr/share/doc/cni-calico/": ("d", None),
    "usr/share/doc/cni-calico/copyright": ("f", None), "usr/share/doc/cni-calico/examples/": ("d", None),
    **{f"usr/share/doc/cni-calico/examples/{name}": ("f", None) for name in EXAMPLES},
}

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def version() -> str:
    text = (REPO / "cni_calico" / "__init__.py").read_text()
    return re.search(r'^__version__ = "(.+)"$', text, re.M).group(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """The package, and what it must hold as seen from the bundle it was made of (listed just before)."""
    if not (REPO / "dist" / "bin" / "calico").exists():
        subprocess.run(["make", "-C", str(REPO), "build"], check=True, capture_output=True, timeout=900)
    expected = expected_listing()
    out = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "DEB_OUT_DIR": str(out), "DEB_STAGE": str(out / "stage")}
    proc = subprocess.run(["make", "-C", str(REPO), "-s", "-o", "build", "deb"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    arch = sh("dpkg", "--print-architecture").stdout.strip()
    path = out / f"cni-calico_{version()}_{arch}.deb"
    assert proc.stdout.strip().endswith(path.name) and path.exists(), (proc.stdout, sorted(os.listdir(out)))
    shutil.rmtree(out / "stage")
    return path, expected


@pytest.fixture
def deb(built) -> Path:
    return built[0]


def expected_listing() -> dict[str, tuple[str, str | None]]:
    """What the package must hold: the bundle as `make build` left it, under /opt/cni/bin/cni-calico/, + EXTRA."""
    listing = {f"{BUNDLE_DIR}/": ("d", None)}
    for path in BUNDLE.rglob("*"):
        rel = f"{BUNDLE_DIR}/{path.relative_to(BUNDLE)}"
        if path.is_symlink():
            listing[rel] = ("l", os.readlink(path))
        elif path.is_dir():
            listing[rel + "/"] = ("d", None)
        else:
            listing[rel] = ("f", None)
    listing.update(EXTRA)
    return listing


def package_listing(deb: Path) -> dict[str, tuple[str, str | None, str]]:
    """`dpkg-deb -c`, as {path: (type, link target, mode)}."""
    listing = {}
    for line in sh("dpkg-deb", "-c", str(deb)).stdout.splitlines():
        mode, owner, _size, _date, _time, name = line.split(maxsplit=5)
        assert owner == "root/root", line
        target = None
        if mode.startswith("l"):
            name, target = name.split(" -> ", 1)
        assert name.startswith("./"), line
        if name == "./":
            continue
        listing[name[2:]] = ({"-": "f", "d": "d", "l": "l"}[mode[0]], target, mode)
    return listing


def test_package_holds_exactly_the_bundle_and_the_fixed_paths(built):
    deb, want = built
    have = package_listing(deb)
    assert {k: v[:2] for k, v in have.items()} == want
    # Executables stay executable, nothing is writable by group or others.
    for rel, (kind, _, mode) in have.items():
        assert kind == "l" or (mode[5] != "w" and mode[8] != "w"), (rel, mode)
        if kind == "f" and rel.startswith(BUNDLE_DIR):
            assert (mode[3] == "x") == os.access(BUNDLE / rel[len(BUNDLE_DIR) + 1:], os.X_OK), (rel, mode)
    assert have[f"{BUNDLE_DIR}/calico"][2] == "-rwxr-xr-x"
    assert have[UNIT][2] == "-rw-r--r--"


def test_control_fields_and_no_maintainer_scripts(deb):
    fields = {}
    for line in sh("dpkg-deb", "-f", str(deb)).stdout.splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(": ")
            fields[key] = value
    assert fields["Package"] == "cni-calico"
    assert fields["Version"] == version()
    assert fields["Architecture"] == sh("dpkg", "--print-architecture").stdout.strip()
    assert re.fullmatch(r"libc6( \(>= [0-9.]+\))?", fields["Depends"]), fields["Depends"]
    assert int(fields["Installed-Size"]) > 1000
    info = sh("dpkg-deb", "-I", str(deb)).stdout
    for script in ("preinst", "postinst", "prerm", "postrm", "conffiles"):
        assert f" {script}" not in info, info
    assert "md5sums" in info


def _walk(root: Path, skip: str = "var/lib/dpkg") -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == skip or rel.startswith(skip + "/"):
            dirnames[:] = []
            continue
        out.add(rel + "/")
        out.update(os.path.normpath(os.path.join(rel, name)) for name in filenames + [
            d for d in dirnames if os.path.islink(os.path.join(dirpath, d))])
    return out


def test_install_into_a_throwaway_root_then_purge_leaves_nothing(deb):
    root = Path(tempfile.mkdtemp(prefix="cni-calico-dpkg-root-"))
    try:
        admin = root / "var/lib/dpkg"
        for sub in ("info", "updates"):
            (admin / sub).mkdir(parents=True)
        for name in ("status", "available"):
            (admin / name).touch()
        # Something of another package where ours goes: it must survive our purge, and its dirs too.
        (root / "opt/cni/bin").mkdir(parents=True)
        (root / "opt/cni/bin/loopback").write_text("not ours\n")
        before = _walk(root)
        dpkg = ["dpkg", f"--root={root}"]

        # --force-depends: the throwaway database knows no libc6.
        installed = sh(*dpkg, "--force-depends", "-i", str(deb), check=False)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        status = sh("dpkg-query", f"--admindir={admin}", "-W", "-f", "${Package} ${Version} ${Status}\n",
                    "cni-calico").stdout
        assert status.strip() == f"cni-calico {version()} install ok installed", status
        owned = {p.lstrip("/") for p in sh("dpkg-query", f"--admindir={admin}", "-L", "cni-calico").stdout.split()}
        assert f"{BUNDLE_DIR}/calico" in owned and UNIT in owned

        # The installed plugin answers VERSION through its /opt/cni/bin link, as a runtime calls it.
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION"}
        for name in ("calico", "calico-ipam"):
            run = subprocess.run([str(root / "opt/cni/bin" / name)], input=b'{"cniVersion": "1.0.0"}', env=env,
                                 capture_output=True, timeout=60)
            assert run.returncode == 0, run.stdout + run.stderr
            answer = json.loads(run.stdout)
            assert "1.0.0" in answer["supportedVersions"] and "0.3.1" in answer["supportedVersions"], answer
        # The unit's ExecStart is the bundle's calico-node entry.
        unit = (root / UNIT).read_text()
        exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
        assert exec_start == f"/{BUNDLE_DIR}/calico-node"
        node = subprocess.run([str(root / exec_start.lstrip("/")), "--version"], capture_output=True, text=True,
                              timeout=60)
        assert node.returncode == 0 and node.stdout.strip() == version(), node.stdout + node.stderr
        # /usr/bin's links are absolute (across top-level dirs, as Debian wants) and resolve inside the root.
        for name in ("calicoctl", "calico-node"):
            target = os.readlink(root / "usr/bin" / name)
            assert target == f"/{BUNDLE_DIR}/calico" and os.access(root / target.lstrip("/"), os.X_OK)
        if shutil.which("systemd-analyze"):
            # systemd's own check of the unit (syntax, directives, an executable ExecStart). `--root` would
            # want a whole systemd in the root: a copy pointing at the installed executable is checked instead.
            check_dir = root.with_name(root.name + "-unit")
            check_dir.mkdir()
            (check_dir / "calico-node.service").write_text(unit.replace(exec_start, str(root) + exec_start))
            verify = sh("systemd-analyze", "verify", str(check_dir / "calico-node.service"), check=False)
            shutil.rmtree(check_dir)
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr

        purged = sh(*dpkg, "-P", "cni-calico", check=False)
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert _walk(root) == before
        assert (root / "opt/cni/bin/loopback").read_text() == "not ours\n"
        assert not list((admin / "info").glob("cni-calico.*"))
        assert "cni-calico" not in (admin / "status").read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_calico_node_unit_sets_and_documents_the_classic_environment():
    from cni_calico.node.config import from_env

    unit = (REPO / "examples" / "calico-node.service").read_text()
    service = unit.split("[Service]", 1)[1].split("\n[", 1)[0]
    lines = [line.strip() for line in service.splitlines() if line.strip() and not line.startswith("#")]
    env = dict(line[len("Environment="):].split("=", 1) for line in lines if line.startswith("Environment="))
    classic = ("NODENAME", "IP", "IP_AUTODETECTION_METHOD", "ETCD_ENDPOINTS", "CALICO_NETWORKING_BACKEND",
               "CALICO_IPV4POOL_CIDR", "CALICO_IPV4POOL_IPIP", "NO_DEFAULT_POOLS")
    assert set(classic) <= set(env), env
    assert env["IP_AUTODETECTION_METHOD"] == "first-found" and env["CALICO_NETWORKING_BACKEND"] == "bird"
    for name in classic:  # each one explained in the comment block
        assert re.search(rf"^#\s+{name}\s+\S", unit, re.M), name
    # The site file comes after the defaults (systemd lets it override them) and may be missing ("-").
    assert "EnvironmentFile=-/etc/calico/calico.env" in lines
    assert lines.index("EnvironmentFile=-/etc/calico/calico.env") > max(
        i for i, line in enumerate(lines) if line.startswith("Environment="))
    for setting in ("ExecStart=/opt/cni/bin/cni-calico/calico-node", "Restart=always", "RestartSec=10",
                    "KillMode=process", "Type=notify", "NotifyAccess=main"):
        assert setting in lines, setting
    # calico-node accepts the defaults as they are (an empty NODENAME means the host name).
    cfg = from_env({**env, "HOSTNAME": "node-a", "CALICO_NODENAME_FILE": "/nonexistent/nodename"})
    assert cfg.nodename == "node-a" and cfg.backend == "bird" and cfg.ip == "autodetect"
    assert cfg.pool_cidr == env["CALICO_IPV4POOL_CIDR"] and cfg.pool_ipip == "never" and not cfg.no_default_pools
