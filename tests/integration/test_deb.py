"""`make deb`: the Debian package of the bundle, its exact contents, and an install + purge that leaves nothing.

The package is built by the real recipe (`make -o build deb`: the bundle of `make build` is used as it
is) into a temp dir, then installed into a throwaway root with its own, fresh dpkg database
(`dpkg --root`), never into the machine's. Layout and choices: build/deb/build-deb.sh.
"""

from __future__ import annotations

import gzip
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
CONF = "etc/cni/net.d/10-calico.conf"  # the one conffile
MAN_PAGES = {"calicoctl": "usr/share/man/man1/calicoctl.1.gz", "calico-node": "usr/share/man/man8/calico-node.8.gz",
             "calico": "usr/share/man/man8/calico.8.gz"}
# Every path of the package but the bundle's own: (type, link target), "d" directory, "f" file, "l" link.
EXTRA = {
    "lib/": ("d", None), "lib/systemd/": ("d", None), "lib/systemd/system/": ("d", None), UNIT: ("f", None),
    "opt/": ("d", None), "opt/cni/": ("d", None), "opt/cni/bin/": ("d", None),
    "opt/cni/bin/calico": ("l", "cni-calico/calico"), "opt/cni/bin/calico-ipam": ("l", "cni-calico/calico"),
    "usr/": ("d", None), "usr/bin/": ("d", None),
    "usr/bin/calicoctl": ("l", "/opt/cni/bin/cni-calico/calico"),
    "usr/bin/calico-node": ("l", "/opt/cni/bin/cni-calico/calico"),
    "usr/share/": ("d", None), "usr/share/doc/": ("d", None), "usr/share/doc/cni-calico/": ("d", None),
    "usr/share/doc/cni-calico/copyright": ("f", None), "usr/share/doc/cni-calico/examples/": ("d", None),
    **{f"usr/share/doc/cni-calico/examples/{name}": ("f", None) for name in EXAMPLES},
    "usr/share/doc/cni-calico/changelog.gz": ("f", None),
    "etc/": ("d", None), "etc/cni/": ("d", None), "etc/cni/net.d/": ("d", None), CONF: ("f", None),
    "usr/share/man/": ("d", None), "usr/share/man/man1/": ("d", None), "usr/share/man/man8/": ("d", None),
    **{page: ("f", None) for page in MAN_PAGES.values()},
    "usr/share/lintian/": ("d", None), "usr/share/lintian/overrides/": ("d", None),
    "usr/share/lintian/overrides/cni-calico": ("f", None),
}
MAINTAINER = "cni-calico developers <cni-calico@lists.example.org>"

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


def test_control_fields_conffile_and_maintainer_scripts(deb):
    fields = {}
    for line in sh("dpkg-deb", "-f", str(deb)).stdout.splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(": ")
            fields[key] = value
    assert fields["Package"] == "cni-calico"
    assert fields["Version"] == version()
    assert fields["Architecture"] == sh("dpkg", "--print-architecture").stdout.strip()
    assert fields["Maintainer"] == MAINTAINER
    assert re.fullmatch(r"libc6( \(>= [0-9.]+\))?", fields["Depends"]), fields["Depends"]
    assert int(fields["Installed-Size"]) > 1000
    control = Path(tempfile.mkdtemp(prefix="cni-calico-control-"))
    try:
        sh("dpkg-deb", "-e", str(deb), str(control))
        assert sorted(p.name for p in control.iterdir()) == ["conffiles", "control", "md5sums", "postinst", "postrm",
                                                             "prerm"]
        assert (control / "conffiles").read_text() == f"/{CONF}\n"
        for script in ("postinst", "prerm", "postrm"):
            assert os.access(control / script, os.X_OK), script
            assert sh("sh", "-n", str(control / script), check=False).returncode == 0, script
        # postinst enables, never starts; nothing calls systemctl for another root (DPKG_ROOT) or without systemd.
        postinst = (control / "postinst").read_text()
        assert "deb-systemd-helper enable calico-node.service" in postinst
        assert "start" not in re.sub(r"#.*", "", postinst), postinst
        for script in ("postinst", "prerm", "postrm"):
            guard = ""
            for line in (control / script).read_text().splitlines():
                code = line.split("#")[0]
                if code.strip().startswith("if "):
                    guard = code
                if re.search(r"\b(systemctl|deb-systemd-invoke)\b", code):
                    assert '[ -z "${DPKG_ROOT:-}" ]' in guard and "[ -d /run/systemd/system ]" in guard, (script, line)
        assert CONF not in (control / "md5sums").read_text()  # dpkg keeps conffiles' sums itself
    finally:
        shutil.rmtree(control)
    # The changelog: Debian's format, gzipped, its top entry this version, by the maintainer.
    with tempfile.TemporaryDirectory() as tmp:
        sh("dpkg-deb", "-x", str(deb), tmp)
        changelog = Path(tmp) / "usr/share/doc/cni-calico/changelog.gz"
        text = gzip.decompress(changelog.read_bytes()).decode()
        parsed = subprocess.run(["dpkg-parsechangelog", "-l-", "-S", "Version"], input=text, capture_output=True,
                                text=True, check=True).stdout.strip()
        assert parsed == version()
        assert f" -- {MAINTAINER}  " in text


@pytest.mark.skipif(shutil.which("lintian") is None, reason="needs lintian (make deps installs it)")
def test_lintian_finds_no_error_or_warning(deb):
    """What a PyInstaller bundle cannot avoid is overridden with a reason (build/deb/lintian-overrides)."""
    proc = subprocess.run(["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(deb)],
                          capture_output=True, text=True, timeout=600)
    hints = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert proc.returncode == 0 and not hints, proc.stdout + proc.stderr


def test_man_pages_come_from_the_help_texts(deb):
    """calicoctl(1), calico-node(8), calico(8): each option of --help is there, and man renders them cleanly."""
    with tempfile.TemporaryDirectory() as tmp:
        sh("dpkg-deb", "-x", str(deb), tmp)
        for name, page in MAN_PAGES.items():
            raw = (Path(tmp) / page).read_bytes()
            text = gzip.decompress(raw).decode()
            section = page.rsplit(".", 2)[1]
            assert text.startswith(f'.TH {name.upper()} {section} "'), text[:100]
            assert f"cni-calico v{version()}" in text.splitlines()[0]
            roff_name = name.replace("-", "\\-")
            assert f".SH NAME\n{roff_name} \\- " in text, text[:300]
            helped = subprocess.run([name, "--help"], executable=str(BUNDLE / "calico"), capture_output=True,
                                    text=True, env={"PATH": os.environ["PATH"], "COLUMNS": "80"},
                                    stdin=subprocess.DEVNULL, timeout=60)
            assert helped.returncode == 0, helped.stderr
            for option in set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", helped.stdout)):
                assert option.replace("-", "\\-") in text, (name, option)
            assert raw[4:8] == b"\0\0\0\0", "gzip time stamp set: not reproducible"
            if shutil.which("man"):
                shown = subprocess.run(["man", "--warnings", "-l", str(Path(tmp) / page)], capture_output=True,
                                       text=True, env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_STDERR": "1"},
                                       timeout=60)
                assert shown.returncode == 0 and not shown.stderr.strip(), shown.stderr
                assert "NAME" in shown.stdout and "SYNOPSIS" in shown.stdout


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


def in_root(root: Path, path: str) -> Path:
    """`path` as the installed system would resolve it, with `root` as /: absolute links stay in the root."""
    here = root / path.lstrip("/")
    for _ in range(10):
        if not here.is_symlink():
            return here
        target = os.readlink(here)
        here = root / target.lstrip("/") if target.startswith("/") else here.parent / target
    raise AssertionError(f"too many links at {path}")


def run_in_root(root: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    """Runs the installed `path` under its own name (argv[0], which the bundle dispatches on)."""
    return subprocess.run([os.path.basename(path), *args], executable=str(in_root(root, path)), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


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
        # Directories every systemd system has (systemd's own): deb-systemd-helper's links and state go there.
        for systemd_dir in ("etc/systemd/system", "var/lib/systemd"):
            (root / systemd_dir).mkdir(parents=True)
        before = _walk(root)
        # --force-script-chrootless: the maintainer scripts run here with DPKG_ROOT=<root> (the root has no
        # shell to chroot into), as in an image build; --force-not-root: what it needs without root too.
        dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-not-root"]

        # --force-depends: the throwaway database knows no libc6.
        installed = sh(*dpkg, "--force-depends", "-i", str(deb), check=False)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        # postinst enabled calico-node (deb-systemd-helper, inside the root) and started nothing.
        wants = root / "etc/systemd/system/multi-user.target.wants/calico-node.service"
        assert os.readlink(wants) == f"/{UNIT}", os.readlink(wants)
        # The conffile, and the tools on the PATH, run from inside the root.
        assert (root / CONF).read_bytes() == (REPO / "examples/10-calico.conf").read_bytes()
        assert sh("dpkg-query", f"--admindir={admin}", "-W", "-f", "${Conffiles}", "cni-calico").stdout.split()[0] \
            == f"/{CONF}"
        for name in ("calicoctl", "calico-node"):
            helped = run_in_root(root, f"/usr/bin/{name}", "--help")
            assert helped.returncode == 0 and f"usage: {name}" in helped.stdout, helped.stdout + helped.stderr
        for name in ("calico", "calico-ipam"):
            shown = run_in_root(root, f"/opt/cni/bin/{name}", "-v")
            assert (shown.returncode, shown.stdout) == (0, f"v{version()}\n"), shown.stdout + shown.stderr
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
        # The unit's ExecStart is /usr/bin/calico-node, which runs as calico-node from inside the root.
        unit = (root / UNIT).read_text()
        exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
        assert exec_start == "/usr/bin/calico-node"
        node = run_in_root(root, exec_start, "--version")
        assert node.returncode == 0 and node.stdout == f"v{version()}\n", node.stdout + node.stderr
        # /usr/bin's links are absolute (across top-level dirs, as Debian wants) and resolve inside the root.
        for name in ("calicoctl", "calico-node"):
            target = os.readlink(root / "usr/bin" / name)
            assert target == f"/{BUNDLE_DIR}/calico" and os.access(root / target.lstrip("/"), os.X_OK)
        if shutil.which("systemd-analyze"):
            # systemd's own check of the unit (syntax, directives, an executable ExecStart). `--root` would
            # want a whole systemd in the root: a copy pointing at the installed executable is checked instead.
            check_dir = root.with_name(root.name + "-unit")
            check_dir.mkdir()
            (check_dir / "calico-node.service").write_text(unit.replace(exec_start, str(in_root(root, exec_start))))
            verify = sh("systemd-analyze", "verify", str(check_dir / "calico-node.service"), check=False)
            shutil.rmtree(check_dir)
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stdout + verify.stderr

        # Remove keeps the admin's edited conffile (and the bundle is gone); purge then takes everything.
        (root / CONF).write_text((root / CONF).read_text().replace("127.0.0.1", "192.0.2.10"))
        removed = sh(*dpkg, "-r", "cni-calico", check=False)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "192.0.2.10" in (root / CONF).read_text() and not (root / BUNDLE_DIR).exists()
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
    for setting in ("ExecStart=/usr/local/bin/calico-node", "Restart=always", "RestartSec=10",
                    "KillMode=process", "Type=notify", "NotifyAccess=main"):
        assert setting in lines, setting
    # calico-node accepts the defaults as they are (an empty NODENAME means the host name).
    cfg = from_env({**env, "HOSTNAME": "node-a", "CALICO_NODENAME_FILE": "/nonexistent/nodename"})
    assert cfg.nodename == "node-a" and cfg.backend == "bird" and cfg.ip == "autodetect"
    assert cfg.pool_cidr == env["CALICO_IPV4POOL_CIDR"] and cfg.pool_ipip == "never" and not cfg.no_default_pools
