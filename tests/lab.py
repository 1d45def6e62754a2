"""A lab on one machine: a real etcd, node and pod network namespaces, the plugin run as a runtime would.

Used by the tests, the benchmarks and `make demo`. Everything it makes carries
the lab's unique prefix and is removed by `Lab.close()`, also after failures;
it never touches the machine's own namespace beyond processes it starts itself
(etcd and its socat bridge, on loopback) and stops by PID.

A node namespace cannot reach the host's loopback, so etcd is bridged in: a
socat in the host serves a Unix socket that forwards to etcd, and a socat in
each node listens on the node's 127.0.0.1:<port> and forwards to that socket.
The plugin's config therefore says `http://127.0.0.1:<port>` everywhere.

Safety rules the lab keeps
--------------------------
* Unique prefix: every namespace is `<prefix><role><n>`, the prefix `cc<pid><3 hex>-` unless given,
  so two labs (or a lab and the machine's own namespaces) never collide; its files live in one fresh
  temporary directory, `Lab.workdir`.
* Everything is removed in `close()` (also on leaving `with Lab() as lab:`, and after failures):
  calico-nodes and their BIRD killed, other processes killed, etcds stopped, namespaces deleted,
  the workdir deleted. Parts are registered before they start, so a failed start is cleaned up too.
  Processes are stopped by PID, never by name.
* Loopback only: etcd listens on 127.0.0.1 (clients and peers), its bridge on a Unix socket in the
  workdir and on 127.0.0.1 inside each node; every link, address, route and sysctl is made inside
  the lab's own namespaces, never in the host's.

What it offers
--------------
Constants: REPO (the checkout), NETNS_DIR (/var/run/netns), REFERENCE_CNI_DIR (reference plugins).

Helpers:
    sh(*cmd, check=True)                subprocess.run, text output captured; raises on failure unless check=False.
    etcdctl(endpoints, *args)           etcdctl (API v3) against comma-separated client URLs.
    wait_for(predicate, timeout, what)  polls until predicate() is truthy and returns it; else TimeoutError.
    port_open(port, netns=None)         True when 127.0.0.1:port accepts TCP (inside `netns` when given).
    free_port()                         a free TCP port on 127.0.0.1.
    plugin_dir()                        where calico, calico-ipam, calico-node live: $CNI_CALICO_BIN, else .venv/bin.
    netns_runner(ns)                    a policy Runner (cni_calico.policy.iptables) running each command in `ns`.
    pool(name, cidr, ...)               an IPPool resource (projectcalico.org/v3) as a dict.
    add_pool(etcd, name, cidr, ...)     writes that pool into etcd (ipip= / vxlan= Always|CrossSubnet).
    netconf(etcd, name=, node=, ...)    the plugin's network config against `etcd`, extra keys merged in.

etcd:
    EtcdData     get_json / put_json / keys / wipe through ctl(); shared by Etcd and EtcdCluster.
    Etcd         one member on loopback with its own data dir and bridge socket: url, start(), stop(), ctl().
    Certs        a throw-away CA, server (127.0.0.1) and client certificates: ca, key(), cert(), *_args().
    EtcdMember   one member of an EtcdCluster: kill(), freeze() / thaw() (SIGSTOP / SIGCONT), running.
    EtcdCluster  members as one cluster: url (all), live (running), start(), wait_healthy(), leader(), stop().

Processes and results:
    CalicoNode   calico-node (and its BIRD) in a node: env, start(), stop(graceful=), bird_pid(), log(), served(),
                 birdc().
    PluginRun    one plugin run: rc, out (stdout parsed as JSON), stdout, stderr, seconds.

Lab (prefix=None), owner of everything above that it makes; by purpose:
  lifecycle
    close()                             removes everything (see the rules); `with Lab() as lab:` calls it.
    prefix, workdir                     the unique name prefix and the lab's temporary directory.
    namespaces, procs, etcds, calico_nodes  what close() will remove.
  etcd
    etcd(tls=None)                      a started Etcd (mutual TLS with `Certs`), registered with the lab.
    etcd_cluster(size=3)                a started, healthy EtcdCluster of `size` members.
    bridge_etcd(ns, etcd)               etcd reachable at 127.0.0.1:<etcd.port> inside `ns`.
    bridge_etcd_cluster(ns, cluster)    every member bridged into `ns` on its own port.
  namespaces / nodes
    netns(role)                         a namespace `<prefix><role><n>` with lo up.
    node(etcd=None, index=1)            a node: uplink, default routes (v4 and v6), forwarding on, etcd bridged.
    switch()                            the nodes' L2 segment: a bridge on SWITCH_NET / SWITCH_NET6 in a namespace.
    cluster_node(switch, index, etcd=None)  a node on the switch at SWITCH_NET.<index>.
    pod()                               an empty pod namespace.
    remove_netns(ns)                    deletes `ns` now, first killing the lab's processes inside it.
    netns_path(ns)                      /var/run/netns/<ns>, what CNI_NETNS takes.
  calico-node
    calico_node(ns, etcd, name, **env)  a started CalicoNode in `ns` (env overrides its settings).
  plugin runs
    run_plugin(node, command, conf, container_id, netns, ...)  a plugin in `node` with the CNI env -> PluginRun.
    in_ns(ns, *cmd)                     a command inside `ns` (check=False by default).
  pings / links / routes
    ping_once(ns, address)              one ping (-6 for IPv6) from `ns`; True when it answers.
    ping(ns, address, within=0.0)       ping, retried for `within` seconds (policy is eventual).
    links(ns)                           interface names in `ns`.
    routes(ns)                          IPv4 routes in `ns`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NETNS_DIR = "/var/run/netns"
REFERENCE_CNI_DIR = "/usr/lib/cni"


def plugin_dir() -> str:
    """Where `calico` and `calico-ipam` live: $CNI_CALICO_BIN, else the project venv's scripts."""
    return os.environ.get("CNI_CALICO_BIN") or str(REPO / ".venv" / "bin")


def python_path() -> dict[str, str]:
    """PYTHONPATH, when the tests run with one (a worktree's code first on the path), for the product's
    processes they start with an environment of their own: they then run the same code."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def etcdctl(endpoints: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """etcdctl (API v3) against the comma-separated `endpoints`."""
    return sh("etcdctl", "--endpoints", endpoints, *args, check=check, env={**os.environ, "ETCDCTL_API": "3"})


def netns_runner(ns: str):
    """A policy Runner (cni_calico.policy.iptables) that runs each command inside namespace `ns`."""
    from cni_calico.policy.iptables import PolicyError

    def run(args: list[str], stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", ns, *args], input=stdin, capture_output=True, text=True)
        if check and proc.returncode:
            raise PolicyError(f"{args[0]}: {proc.stderr[-2000:]}")
        return proc

    return run


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int, netns: str | None = None) -> bool:
    """True when something accepts TCP on 127.0.0.1:`port` (inside namespace `netns` when given)."""
    if netns:
        probe = f"echo > /dev/tcp/127.0.0.1/{port}"
        return sh("ip", "netns", "exec", netns, "bash", "-c", probe, check=False).returncode == 0
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class EtcdData:
    """Reading and writing JSON values through `self.ctl` (etcdctl), for one member or a cluster."""

    def ctl(self, *args: str) -> str:
        raise NotImplementedError

    def get_json(self, key: str) -> dict | None:
        out = self.ctl("get", key, "--print-value-only").strip()
        return json.loads(out) if out else None

    def keys(self, prefix: str = "/calico") -> list[str]:
        return [k for k in self.ctl("get", "--prefix", prefix, "--keys-only").split("\n") if k]

    def put_json(self, key: str, value: dict) -> None:
        self.ctl("put", key, json.dumps(value))

    def wipe(self) -> None:
        self.ctl("del", "--prefix", "/calico")


@dataclass
class Etcd(EtcdData):
    """One etcd member on loopback, with its own data dir; stopped by PID."""

    workdir: Path
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    socket_path: str = ""
    bridge: subprocess.Popen | None = None
    tls: Certs | None = None  # serve https and require client certificates signed by tls.ca

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> Etcd:
        data = self.workdir / f"etcd-{self.port}"
        log = open(self.workdir / f"etcd-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [
                "etcd", "--name", f"lab{self.port}", "--data-dir", str(data),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", f"lab{self.port}=http://127.0.0.1:{self.peer_port}",
                "--unsafe-no-fsync",
                *(self.tls.etcd_args() if self.tls else []),
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_open(self.port), 20, f"etcd on {self.url}")
        self.socket_path = str(self.workdir / f"etcd-{self.port}.sock")
        if self.bridge is not None and self.bridge.poll() is None:
            return self  # a restarted etcd keeps its bridge
        # nodelay: without it Nagle and delayed ACKs stall some etcd calls by ~40 ms.
        self.bridge = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{self.socket_path},fork,reuseaddr", f"TCP:127.0.0.1:{self.port},nodelay"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: os.path.exists(self.socket_path), 10, "the etcd bridge socket")
        return self

    def stop(self) -> None:
        for proc in (self.bridge, self.proc):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def ctl(self, *args: str) -> str:
        tls = self.tls.etcdctl_args() if self.tls else []
        return etcdctl(self.url, *tls, *args).stdout


@dataclass
class Certs:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate (openssl)."""

    directory: Path

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        ossl = ("openssl",)
        sh(*ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lab-ca",
           "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
        for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                          ("client", "extendedKeyUsage=clientAuth")):
            (d / f"{name}.ext").write_text(ext + "\n")
            sh(*ossl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=lab-{name}",
               "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
            sh(*ossl, "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
               str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(d / f"{name}.pem"),
               "-extfile", str(d / f"{name}.ext"))
            os.chmod(d / f"{name}.key", 0o600)

    @property
    def ca(self) -> str:
        return str(self.directory / "ca.pem")

    def key(self, name: str = "client") -> str:
        return str(self.directory / f"{name}.key")

    def cert(self, name: str = "client") -> str:
        return str(self.directory / f"{name}.pem")

    def etcd_args(self) -> list[str]:
        return ["--cert-file", self.cert("server"), "--key-file", self.key("server"),
                "--trusted-ca-file", self.ca, "--client-cert-auth"]

    def etcdctl_args(self) -> list[str]:
        return ["--cacert", self.ca, "--cert", self.cert(), "--key", self.key()]


@dataclass
class EtcdMember(Etcd):
    """One member of an `EtcdCluster`: an `Etcd` started with the whole cluster's peer list.

    `kill()` stops only the etcd process (its bridge stays, as a dead member's address does);
    `start()` again brings it back with its data dir."""

    name: str = ""
    initial_cluster: str = ""
    cluster_token: str = "lab"

    def start(self) -> EtcdMember:
        data = self.workdir / f"etcd-{self.port}"
        log = open(self.workdir / f"etcd-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [
                "etcd", "--name", self.name, "--data-dir", str(data),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.cluster_token,
                "--unsafe-no-fsync",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: port_open(self.port), 20, f"etcd member {self.name} on {self.url}")
        self.socket_path = str(self.workdir / f"etcd-{self.port}.sock")
        if self.bridge is None or self.bridge.poll() is not None:
            self.bridge = subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{self.socket_path},fork,reuseaddr", f"TCP:127.0.0.1:{self.port},nodelay"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: os.path.exists(self.socket_path), 10, "the etcd bridge socket")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stops the member's etcd process only; its data dir and bridge stay."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def freeze(self) -> None:
        """SIGSTOP: the member still accepts connections but answers nothing (a hung machine)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster(EtcdData):
    """Several etcd members on loopback forming one cluster; quacks like `Etcd` for the helpers.

    `url` is the comma-separated list of every member's client URL (what `etcd_endpoints` takes);
    `ctl` talks to the members that are running. Every member is registered with the lab, so
    `Lab.close()` stops them all, also after a failure."""

    tls = None

    def __init__(self, members: list[EtcdMember]) -> None:
        self.members = members

    @property
    def url(self) -> str:
        return ",".join(m.url for m in self.members)

    def start(self, timeout: float = 30) -> EtcdCluster:
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            return etcdctl(self.live, "--command-timeout=2s", "endpoint", "health", check=False).returncode == 0

        wait_for(healthy, timeout, "the etcd cluster to be healthy", interval=0.2)

    def stop(self) -> None:
        for m in self.members:
            m.thaw()
            m.stop()

    def leader(self) -> EtcdMember:
        """The member that leads now (asked of the running members)."""
        out = etcdctl(self.live, "--command-timeout=3s", "endpoint", "status", "-w", "json").stdout
        statuses = json.loads(out)
        leader_id = statuses[0]["Status"]["leader"]
        for status in statuses:
            if status["Status"]["header"]["member_id"] == leader_id:
                return next(m for m in self.members if m.url == status["Endpoint"])
        raise LookupError(f"no leader among {self.live}")

    @property
    def live(self) -> str:
        """The client URLs of the members that are running."""
        return ",".join(m.url for m in self.members if m.running)

    def ctl(self, *args: str) -> str:
        return etcdctl(self.live, "--command-timeout=10s", *args).stdout


class CalicoNode:
    """A calico-node process (and the BIRD it starts) in a node namespace; stopped by PID."""

    def __init__(self, lab: Lab, ns: str, etcd: Etcd, name: str, env: dict[str, str]) -> None:
        self.lab, self.ns, self.etcd, self.name = lab, ns, etcd, name
        self.dir = lab.workdir / f"{name}-{next(Lab._ids)}"
        self.run_dir, self.lib_dir = self.dir / "run", self.dir / "lib"
        self.extra_env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "calico-node.log"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NODENAME": self.name,
            "ETCD_ENDPOINTS": self.etcd.url,
            "CALICO_RUN_DIR": str(self.run_dir),
            "CALICO_LIB_DIR": str(self.lib_dir),
            "NO_DEFAULT_POOLS": "true",
            "CALICO_NODE_LOG_LEVEL": "debug",
            **python_path(),
            **self.extra_env,
        }

    def start(self) -> CalicoNode:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, os.path.join(plugin_dir(), "calico-node")],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def bird_pid(self) -> int | None:
        try:
            pid = int((self.run_dir / "bird.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm == "bird" else None

    def stop(self, graceful: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not graceful:
            pid = self.bird_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def served(self, command: str) -> int:
        """How many CNI requests of `command` (ADD, DEL, CHECK…) its CNI server logged answering."""
        import re

        return len(re.findall(rf"node/cni_server\.py \d+: {command} ", self.log()))

    def birdc(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.ns, "birdc", "-s", str(self.run_dir / "bird.ctl"), *args,
                  check=False).stdout


@dataclass
class PluginRun:
    rc: int
    out: dict
    stdout: str
    stderr: str
    seconds: float


class Lab:
    """Owns every namespace and process it makes; `close()` removes them all."""

    _ids = itertools.count()

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"cc{os.getpid() % 100000}{uuid.uuid4().hex[:3]}-"
        self.workdir = Path(tempfile.mkdtemp(prefix="cni-calico-lab-"))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.etcds: list[Etcd] = []
        self.calico_nodes: list[CalicoNode] = []

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        for node in self.calico_nodes:
            node.stop(graceful=False)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for etcd in self.etcds:
            etcd.stop()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- parts ------------------------------------------------------------------------

    def etcd(self, tls: Certs | None = None) -> Etcd:
        etcd = Etcd(self.workdir, tls=tls)
        self.etcds.append(etcd)  # registered first: a failed start is still stopped
        return etcd.start()

    def netns(self, role: str) -> str:
        name = f"{self.prefix}{role}{next(self._ids)}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def node(self, etcd: Etcd | None = None, index: int = 1) -> str:
        """A node namespace with an uplink and default route (proxy ARP needs one), forwarding on."""
        ns = self.netns("node")
        run = ["ip", "netns", "exec", ns]
        sh(*run, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        sh(*run, "ip", "link", "set", "up0", "up")
        sh(*run, "ip", "link", "set", "up1", "up")
        sh(*run, "ip", "addr", "add", f"192.168.{200 + index}.1/24", "dev", "up0")
        sh(*run, "ip", "route", "add", "default", "via", f"192.168.{200 + index}.254", "dev", "up0", "onlink")
        sh(*run, "ip", "-6", "addr", "add", f"fd00:{200 + index}::1/64", "dev", "up0", "nodad")
        sh(*run, "ip", "-6", "route", "add", "default", "via", f"fd00:{200 + index}::fe", "dev", "up0", "onlink")
        sh(*run, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        if etcd is not None:
            self.bridge_etcd(ns, etcd)
        return ns

    SWITCH_NET = "192.168.200"
    SWITCH_NET6 = "fd00:200"

    def switch(self) -> str:
        """The L2 segment nodes share: a bridge in its own namespace, with a gateway address."""
        ns = self.netns("switch")
        run = ["ip", "netns", "exec", ns]
        sh(*run, "ip", "link", "add", "br0", "type", "bridge")
        sh(*run, "ip", "addr", "add", f"{self.SWITCH_NET}.254/24", "dev", "br0")
        sh(*run, "ip", "-6", "addr", "add", f"{self.SWITCH_NET6}::fe/64", "dev", "br0", "nodad")
        sh(*run, "ip", "link", "set", "br0", "up")
        return ns

    def cluster_node(self, switch: str, index: int, etcd: Etcd | None = None) -> str:
        """A node on the switch: eth0 = 192.168.200.<index>/24, default route via the switch."""
        ns = self.netns("node")
        sh("ip", "netns", "exec", switch, "ip", "link", "add", f"p{index}", "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "netns", "exec", switch, "ip", "link", "set", f"p{index}", "master", "br0", "up")
        run = ["ip", "netns", "exec", ns]
        sh(*run, "ip", "addr", "add", f"{self.SWITCH_NET}.{index}/24", "dev", "eth0")
        sh(*run, "ip", "link", "set", "eth0", "up")
        sh(*run, "ip", "route", "add", "default", "via", f"{self.SWITCH_NET}.254", "dev", "eth0")
        sh(*run, "ip", "-6", "addr", "add", f"{self.SWITCH_NET6}::{index}/64", "dev", "eth0", "nodad")
        sh(*run, "ip", "-6", "route", "add", "default", "via", f"{self.SWITCH_NET6}::fe", "dev", "eth0")
        sh(*run, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        if etcd is not None:
            self.bridge_etcd(ns, etcd)
        return ns

    def calico_node(self, ns: str, etcd: Etcd, name: str, **env: str) -> CalicoNode:
        node = CalicoNode(self, ns, etcd, name, env)
        self.calico_nodes.append(node)
        return node.start()

    def bridge_etcd(self, ns: str, etcd: Etcd) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "socat",
             f"TCP-LISTEN:{etcd.port},bind=127.0.0.1,fork,reuseaddr,nodelay", f"UNIX-CONNECT:{etcd.socket_path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_for(lambda: port_open(etcd.port, ns), 10, f"the etcd bridge in {ns}")

    def etcd_cluster(self, size: int = 3) -> EtcdCluster:
        """A `size`-member etcd cluster on loopback, every member with its own bridge socket."""
        members = [EtcdMember(self.workdir) for _ in range(size)]
        for i, m in enumerate(members):
            m.name = f"lab{i}-{m.port}"
        peers = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
        token = f"lab-{uuid.uuid4().hex[:8]}"
        for m in members:
            m.initial_cluster, m.cluster_token = peers, token
            self.etcds.append(m)  # registered first: a failed start is still stopped
        return EtcdCluster(members).start()

    def bridge_etcd_cluster(self, ns: str, cluster: EtcdCluster) -> None:
        """Every member bridged into the node on its own port (the node reaches each at 127.0.0.1)."""
        for member in cluster.members:
            self.bridge_etcd(ns, member)

    def pod(self) -> str:
        return self.netns("pod")

    def remove_netns(self, ns: str) -> None:
        """Deletes namespace `ns` now (not at `close()`), first killing the lab's processes inside it."""
        # Stop what runs inside (the etcd bridge) before the namespace goes.
        for proc in list(self.procs):
            if proc.args and ns in proc.args and proc.poll() is None:
                proc.kill()
                proc.wait()
                self.procs.remove(proc)
        sh("ip", "netns", "del", ns, check=False)
        if ns in self.namespaces:
            self.namespaces.remove(ns)

    @staticmethod
    def netns_path(ns: str) -> str:
        return f"{NETNS_DIR}/{ns}"

    # --- running plugins ----------------------------------------------------------------

    @staticmethod
    def run_plugin(
        node: str,
        command: str,
        conf: dict | bytes | str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "eth0",
        args: str = "",
        exe: str = "calico",
        bin_dir: str | None = None,
        cni_path: str | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> PluginRun:
        """Runs a plugin in the node's namespace with the CNI env and the config on stdin."""
        bin_dir = bin_dir or plugin_dir()
        stdin = conf if isinstance(conf, bytes) else (conf if isinstance(conf, str) else json.dumps(conf)).encode()
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": cni_path if cni_path is not None else f"{bin_dir}:{REFERENCE_CNI_DIR}",
            # The IPAM host lock lives here; the lab points it at its own directory.
            "CALICO_RUN_DIR": os.environ.get("CALICO_RUN_DIR"),
            **python_path(),
        }
        env.update(extra_env or {})
        env = {k: v for k, v in env.items() if v is not None}
        exe_path = exe if os.path.isabs(exe) else os.path.join(bin_dir, exe)
        started = time.monotonic()
        proc = subprocess.run(
            ["ip", "netns", "exec", node, exe_path], input=stdin, env=env, capture_output=True, timeout=timeout
        )
        seconds = time.monotonic() - started
        stdout = proc.stdout.decode(errors="replace")
        try:
            out = json.loads(stdout) if stdout.strip() else {}
        except ValueError:
            out = {"unparseable": stdout}
        return PluginRun(proc.returncode, out, stdout, proc.stderr.decode(errors="replace"), seconds)

    @staticmethod
    def in_ns(ns: str, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def links(self, ns: str) -> list[str]:
        out = self.in_ns(ns, "ip", "-o", "link", "show").stdout
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]

    def routes(self, ns: str) -> list[str]:
        return [r for r in self.in_ns(ns, "ip", "-4", "route", "show").stdout.splitlines() if r]

    @staticmethod
    def ping_once(ns: str, address: str, timeout: int = 2, count: int = 1) -> bool:
        """`ping` (-6 for an IPv6 address) from namespace `ns`: True when `address` answers."""
        family = ["-6"] if ":" in address else []
        return Lab.in_ns(ns, "ping", *family, "-c", str(count), "-W", str(timeout), address).returncode == 0

    def ping(self, ns: str, address: str, count: int = 1, within: float = 0.0) -> bool:
        """True when `address` answers; with `within`, keeps trying that many seconds first.

        `within` is for peers behind a calico-node: its policy admits a new pod's
        address a moment after the pod exists (eventual, as in Calico), so the
        first packet may meet the old rules.
        """
        deadline = time.monotonic() + within
        while True:
            if self.ping_once(ns, address, count=count):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def pool(name: str, cidr: str, block_size: int = 26, disabled: bool = False, ipip: str = "Never",
         vxlan: str = "Never") -> dict:
    return {
        "kind": "IPPool",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": block_size, "ipipMode": ipip, "vxlanMode": vxlan,
                 "natOutgoing": False, "disabled": disabled, "nodeSelector": "all()"},
    }


def add_pool(etcd: Etcd, name: str, cidr: str, block_size: int = 26, disabled: bool = False, **modes: str) -> None:
    """`modes`: ipip= / vxlan= Always|CrossSubnet (default Never)."""
    etcd.put_json(f"/calico/resources/v3/projectcalico.org/ippools/{name}",
                  pool(name, cidr, block_size, disabled, **modes))


def netconf(etcd: Etcd, name: str = "net1", version: str = "1.0.0", node: str = "node1", **extra) -> dict:
    conf = {
        "name": name,
        "cniVersion": version,
        "type": "calico",
        "etcd_endpoints": etcd.url,
        "log_level": "debug",
        "log_file_path": str(Path(tempfile.gettempdir()) / "cni-calico-tests.log"),
        "nodename": node,
        "ipam": {"type": "calico-ipam"},
    }
    conf.update(extra)
    return conf
