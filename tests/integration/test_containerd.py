"""A real runtime: containerd 1.6 (Debian) runs our plugin through `ctr run --cni`.

Nothing of the machine's own containerd or CNI set-up is touched. containerd runs in a private mount
namespace (`unshare -m --propagation private`) where
- /run and /opt are fresh tmpfs mounts and /etc an overlay whose upper layer is a temp dir, so the
  mount points /opt/cni/bin, /etc/cni/net.d (and /run/containerd, where containerd 1.6's shims keep
  their sockets whatever --state says) are made there and not on the machine;
- <tmp>/opt/cni/bin (filled by the real `make install` recipe, plus Debian's loopback, portmap and
  bandwidth) is bind-mounted on /opt/cni/bin, <tmp>/etc/cni/net.d (our conflist) on /etc/cni/net.d:
  `ctr run --cni` only knows those two paths;
- containerd itself has its own --config, socket, --root and --state in temp dirs, and runs in a lab
  node's network namespace, entered with `nsenter --net=` (`ip netns exec` remounts /sys and hides the
  cgroup mounts runc needs).
`ctr` runs in the same mount and network namespaces (nsenter into containerd's), because the CNI
plugins are its children, not containerd's.

The image is built here from Debian's busybox-static: an OCI layout tar with one layer.

How ctr 1.6 drives CNI (cmd/ctr/commands/run/run.go): ADD (go-cni Setup) between task create and
start, with container ID `<namespace>-<id>` and CNI_NETNS=/proc/<pid>/ns/net; DEL (go-cni Remove, with
an empty CNI_NETNS) only in a *foreground* `ctr run --cni` once the task has exited. `ctr task kill` /
`ctr container rm` of a detached (`-d`) container never call DEL in 1.6 (1.7 added that), so every
container here is a foreground `ctr run --cni --rm` run in the background, and `ctr task kill` ends it.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import ENDPOINTS, HANDLES, allocated
from tests.lab import REFERENCE_CNI_DIR, REPO, Lab, sh, wait_for

BUSYBOX = "/bin/busybox"
IMAGE = "localhost/cni-calico-busybox:test"
POOL = "10.61.0.0/24"
NODENAME = "ctr-node"
# What must never appear on the machine itself (checked before and after).
HOST_PATHS = ("/etc/cni", "/opt/cni", "/run/containerd", "/var/lib/containerd")

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("containerd", "ctr", "runc", "nsenter", "unshare"))
    or not os.access(BUSYBOX, os.X_OK)
    or not all(os.access(f"{REFERENCE_CNI_DIR}/{p}", os.X_OK) for p in ("loopback", "portmap", "bandwidth")),
    reason="needs containerd, runc, busybox-static and containernetworking-plugins: run `make deps`",
)


@pytest.fixture(scope="session")
def bundle() -> Path:
    """dist/ of `make build` (which `make test` runs first); built once here when missing."""
    if not (REPO / "dist" / "bin" / "calico").exists():
        subprocess.run(["make", "-C", str(REPO), "build"], check=True, capture_output=True, timeout=900)
    return REPO / "dist"


# --- the image -------------------------------------------------------------------------------------


def _blob(layout: dict[str, bytes], data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout[f"blobs/sha256/{digest[7:]}"] = data
    return digest, len(data)


def _layer() -> bytes:
    """One uncompressed layer: /bin/busybox and the applet links the tests use."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("bin", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        data = Path(BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in ("sh", "ping", "ip", "sleep", "cat", "nc"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    return buf.getvalue()


def build_image(path: Path) -> Path:
    """An OCI image layout tar (what `ctr images import` reads) for IMAGE, amd64, Cmd sleep 3600."""
    layout: dict[str, bytes] = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode()}
    layer = _layer()
    layer_digest, layer_size = _blob(layout, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sleep", "3600"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": layer_size}],
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    layout["index.json"] = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "test"},
        }],
    }).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in layout.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


# --- containerd in its own mount namespace ----------------------------------------------------------

CONFIG_TOML = """\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""

# Runs as `unshare -m --propagation private bash start.sh`: every mount below stays in that namespace.
START_SH = """\
set -eu
d={d}
# The node's network namespace is reached through a copy of its nsfs mount: /run is hidden next.
mount --bind {netns} "$d/netns"
mount -t tmpfs -o mode=0755 cni-calico-test /run
mount -t tmpfs -o mode=0755 cni-calico-test /opt
mount -t overlay cni-calico-test -o "lowerdir=/etc,upperdir=$d/etc-upper,workdir=$d/etc-work" /etc
mkdir -p /opt/cni/bin /etc/cni/net.d
mount --bind "$d/opt/cni/bin" /opt/cni/bin
mount --bind "$d/etc/cni/net.d" /etc/cni/net.d
exec nsenter --net="$d/netns" containerd --config "$d/config.toml" --log-level info
"""


class Containerd:
    """containerd (and what it starts) in a private mount namespace and a lab node's network namespace."""

    def __init__(self, workdir: Path, node: str) -> None:
        self.dir = workdir
        self.node = node
        # The containerd namespace (also the cgroups' parent). Short: go-cni's container ID is "<namespace>-<id>"
        # and the plugin names the host veth after its first 11 characters (see test_host_veth_names_collide).
        self.namespace = f"c{uuid.uuid4().hex[:5]}"
        self.socket = str(workdir / "containerd.sock")
        self.proc: subprocess.Popen | None = None
        self.mnt_ns = ""
        self.config_toml = CONFIG_TOML  # test_cri.py's runtime enables the CRI plugin here
        self.runs: dict[str, subprocess.Popen] = {}
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            # The plugin's IPAM host lock (and its agent socket lookup) in a dir of the test's.
            "CALICO_RUN_DIR": str(workdir / "calico-run"),
        }

    def start(self) -> Containerd:
        d = self.dir
        for sub in ("root", "state", "opt", "etc-upper", "etc-work", "calico-run"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "netns").touch()
        (d / "config.toml").write_text(self.config_toml.format(d=d))
        (d / "start.sh").write_text(START_SH.format(d=d, netns=Lab.netns_path(self.node)))
        log = open(d / "containerd.log", "wb")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", str(d / "start.sh")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
        )
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0

        wait_for(up, 30, "containerd's socket")
        self.mnt_ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
        return self

    def log(self) -> str:
        return (self.dir / "containerd.log").read_text(errors="replace")

    def _enter(self) -> list[str]:
        pid = self.proc.pid
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/proc/{pid}/ns/net", "--",
                "ctr", "-a", self.socket, "-n", self.namespace]

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self._enter(), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def in_mount_ns(self, *cmd: str) -> subprocess.CompletedProcess:
        pid = self.proc.pid
        return sh("nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/proc/{pid}/ns/net", "--", *cmd,
                  check=False)

    def task_status(self, cid: str) -> str:
        for line in self.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return fields[-1]
        return ""

    def run(self, cid: str, *command: str) -> subprocess.Popen:
        """`ctr run --cni --rm IMAGE cid` in the foreground (so that it runs DEL), left running in the background."""
        out = open(self.dir / f"ctr-run-{cid}.log", "wb")
        proc = subprocess.Popen([*self._enter(), "run", "--cni", "--rm", IMAGE, cid, *command],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        out.close()
        self.runs[cid] = proc

        def running() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ctr run {cid} exited {proc.returncode}:\n{self.run_log(cid)}")
            return self.task_status(cid) == "RUNNING"

        wait_for(running, 60, f"container {cid} running", interval=0.2)
        return proc

    def run_log(self, cid: str) -> str:
        return (self.dir / f"ctr-run-{cid}.log").read_text(errors="replace")

    def exec(self, cid: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.ctr("task", "exec", "--exec-id", f"x{uuid.uuid4().hex[:8]}", cid, *command, check=False,
                        timeout=timeout)

    def stop_container(self, cid: str) -> int:
        """`ctr task kill -s SIGKILL`: the foreground `ctr run` then runs DEL and removes the container."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid)
        proc = self.runs.pop(cid)
        return proc.wait(60)

    def close(self) -> None:
        for cid in list(self.runs):
            self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            proc = self.runs.pop(cid)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ctr("task", "ls", "-q", check=False).stdout.split():
                self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
                self.ctr("task", "rm", "-f", cid, check=False)
            for cid in self.ctr("container", "ls", "-q", check=False).stdout.split():
                self.ctr("container", "rm", cid, check=False)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Shims outlive containerd by design: anything still in our private mount namespace is ours, and
        so is anything in our containerd namespace's cgroups."""
        pids = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and self.mnt_ns:
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self.mnt_ns:
                        pids.add(int(entry))
                except OSError:
                    pass
        for procs in Path("/sys/fs/cgroup").glob(f"*/{self.namespace}/*/cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2 if pids else 0)
        for group in sorted(Path("/sys/fs/cgroup").glob(f"*/{self.namespace}/*"), reverse=True) + sorted(
            Path("/sys/fs/cgroup").glob(f"*/{self.namespace}")
        ):
            try:
                group.rmdir()
            except OSError:
                pass


@pytest.fixture
def containerd(lab, node, etcd, bundle):
    before = {path: os.path.lexists(path) for path in HOST_PATHS}
    workdir = Path(tempfile.mkdtemp(prefix="cni-calico-containerd-"))
    bin_dir, conf_dir = workdir / "opt/cni/bin", workdir / "etc/cni/net.d"
    # The real install recipe (bundle + calico/calico-ipam links), without rebuilding (-o build).
    scratch_conf = workdir / "install-conf"
    sh("make", "-C", str(REPO), "-s", "-o", "build", "install", f"CNI_BIN_DIR={bin_dir}",
       f"CNI_CONF_DIR={scratch_conf}", timeout=300)
    for plugin in ("loopback", "portmap", "bandwidth"):
        shutil.copy2(f"{REFERENCE_CNI_DIR}/{plugin}", bin_dir / plugin)
    conf_dir.mkdir(parents=True)
    conflist = json.loads((REPO / "examples/10-calico.conflist").read_text())
    conflist["cniVersion"] = "1.0.0"  # containerd 1.6 speaks CNI up to 1.0.0
    calico = conflist["plugins"][0]
    calico.update(etcd_endpoints=etcd.url, nodename=NODENAME, log_level="debug",
                  log_file_path=str(workdir / "cni.log"))
    (conf_dir / "10-calico.conflist").write_text(json.dumps(conflist, indent=2))
    runtime = Containerd(workdir, node)
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert {path: os.path.lexists(path) for path in HOST_PATHS} == before, "the machine's paths changed"


def pod_address(runtime: Containerd, cid: str) -> str:
    out = runtime.exec(cid, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    fields = out.split()
    assert "inet" in fields, out
    return fields[fields.index("inet") + 1]


def test_ctr_run_cni_add_ping_del(lab, node, etcd, containerd):
    from tests.lab import add_pool

    add_pool(etcd, "ctr-pool", POOL, 26)
    runtime = containerd
    image = build_image(runtime.dir / "busybox-oci.tar")
    runtime.ctr("images", "import", str(image))
    assert IMAGE in runtime.ctr("images", "ls", "-q").stdout

    # The plugins ctr runs see our /opt/cni/bin and conflist, not the machine's (there are none).
    listing = runtime.in_mount_ns("ls", "/opt/cni/bin", "/etc/cni/net.d").stdout
    assert "calico-ipam" in listing and "10-calico.conflist" in listing, listing

    addresses = {}
    for cid in ("a", "b"):
        runtime.run(cid)
        address = pod_address(runtime, cid)
        assert address.endswith("/32"), address
        assert ipaddress.ip_interface(address).ip in ipaddress.ip_network(POOL), address
        addresses[cid] = address.split("/")[0]
    assert addresses["a"] != addresses["b"]

    # etcd: one handle per container, named <network>.<containerd namespace>-<id> (go-cni's container ID).
    handles = sorted(etcd.keys(HANDLES))
    assert handles == [f"{HANDLES}calico-k8s-network.{runtime.namespace}-{cid}" for cid in ("a", "b")], handles
    assert sorted(allocated(etcd)) == sorted(addresses.values())
    endpoints = etcd.keys(ENDPOINTS)
    assert len(endpoints) == 2, endpoints
    for key in endpoints:
        wep = etcd.get_json(key)
        assert wep["spec"]["node"] == NODENAME, wep
        assert wep["spec"]["ipNetworks"][0].split("/")[0] in addresses.values(), wep
    # The host side is in the node namespace: a cali veth and a /32 route per container.
    cali = [link for link in lab.links(node) if link.startswith("cali")]
    assert len(cali) == 2, lab.links(node)
    for address in addresses.values():
        assert any(r.startswith(f"{address} dev cali") for r in lab.routes(node)), lab.routes(node)

    # Container to container, both ways, with the image's busybox ping.
    for src, dst in (("a", "b"), ("b", "a")):
        ping = runtime.exec(src, "ping", "-c", "2", "-W", "2", addresses[dst])
        assert ping.returncode == 0, f"{src} -> {dst}: {ping.stdout}{ping.stderr}"

    # A short-lived container: ADD, its command (ping a), exit, DEL, removal, all by one `ctr run --rm`.
    short = runtime.ctr("run", "--cni", "--rm", IMAGE, "c", "sh", "-c",
                        f"ip -4 -o addr show dev eth0 && ping -c 1 -W 2 {addresses['a']}", check=False)
    assert short.returncode == 0, short.stdout + short.stderr
    assert "inet 10.61.0." in short.stdout and "1 packets received" in short.stdout, short.stdout
    assert len(etcd.keys(HANDLES)) == 2 and len(etcd.keys(ENDPOINTS)) == 2

    # `ctr task kill`: the foreground `ctr run` sees the task end, runs our DEL, removes the container.
    for cid in ("a", "b"):
        rc = runtime.stop_container(cid)
        assert rc == 137, f"ctr run {cid} exited {rc}:\n{runtime.run_log(cid)}"
        assert "network review" not in runtime.run_log(cid), runtime.run_log(cid)  # go-cni Remove's error
        assert addresses[cid] not in allocated(etcd)
    assert etcd.keys(HANDLES) == []
    assert etcd.keys(ENDPOINTS) == []
    assert allocated(etcd) == []
    assert [link for link in lab.links(node) if link.startswith("cali")] == []
    assert [r for r in lab.routes(node) if "cali" in r] == []
    assert runtime.ctr("container", "ls", "-q").stdout.split() == []


def test_host_veth_names_collide(lab, node, make_pod, pool, conf, etcd):
    """ctr's container IDs are `<namespace>-<id>`: `default-web1` and `default-web2` share 11 characters.

    The first keeps Calico's name (`calidefault-web`); the second, finding that name owned by another
    container (the veth's alias), takes `cali` + sha1(container ID)[:11]; DEL finds each its own.
    """
    pods = {cid: make_pod() for cid in ("default-web1", "default-web2")}
    addresses = {}
    for cid, pod in pods.items():
        run = Lab.run_plugin(node, "ADD", conf(), cid, Lab.netns_path(pod))
        assert run.rc == 0, run.stdout + run.stderr
        addresses[cid] = run.out["ips"][0]["address"].split("/")[0]
    try:
        assert len([link for link in lab.links(node) if link.startswith("cali")]) == 2, lab.links(node)
        assert "calidefault-web" in lab.links(node)
        assert lab.ping(pods["default-web1"], addresses["default-web2"])
        assert lab.ping(pods["default-web2"], addresses["default-web1"])
    finally:
        for cid, pod in pods.items():
            assert Lab.run_plugin(node, "DEL", conf(), cid, Lab.netns_path(pod)).rc == 0
    assert [link for link in lab.links(node) if link.startswith("cali")] == []
