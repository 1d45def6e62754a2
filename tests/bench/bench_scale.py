"""calico-node at cluster scale: one real calico-node among 200 nodes, 1,000 to 50,000 endpoints.

Run:  python -m tests.bench.bench_scale [--sizes 1000,5000,20000,50000] [--changes N]

The cluster is synthetic: the bench writes it straight into a lab etcd in the JSON the product writes
(Node, IPPool, IPAM blocks, affinities and handles, one Profile per namespace, WorkloadEndpoints with
labels app=a0..a9, group=g0..g9, tier=t0..t9, so each `x == 'y'` selector matches ~10 %, and a few
NetworkPolicies / GlobalNetworkPolicies whose rules select such subsets), in transactions of <= 128
operations. 199 nodes exist only as records; node `scale-000` runs the real calico-node of the bundle
(dist/bin, or $CNI_CALICO_BIN) in a lab node namespace, with four synthetic local endpoints and, during
the ADD figures, real pods added through the real plugin. The cluster grows to each size in turn.

Only what is visible from outside calico-node is observed, so the figures compare any implementation:
the kernel's ipsets and nf_tables chains in the node's namespace (read by a helper process inside it
through raw netfilter netlink: `ipset test` / `ipset list -t` / nft GETCHAIN equivalents, no fork per
poll; chains as nf_tables sees them, so iptables must be the nf_tables backend, as here), etcd's
/metrics, and /proc of calico-node's process tree. The selector ipset a change must reach is found by
observation (a probe endpoint: the set that holds its address and loses it when its label changes),
never from calico-node's naming. Each change starts from a quiet calico-node (its CPU at rest).

Per size:
- remote change -> ipset: create (or relabel) an endpoint of another node so that it matches a rule
  selector; time from the etcd write returning until its address is in the kernel ipset (the helper is
  polling before the write; its loop period, printed, is the resolution). p50 / p99 (nearest rank).
  Beside it the floor: a bare pyetcd watch on the endpoint prefix in this process, time from the same
  write returning until the event arrives.
- cost per remote change, over --cost-changes more such changes written back to back (each as soon as
  the last one is in the ipset; many changes, so the 10 ms CPU tick is no limit): etcd bytes sent to
  clients (etcd_network_client_grpc_sent_bytes_total, less the bench's own put answers and watch events,
  calibrated before calico-node starts, and less the idle rate) next to the changed value's size;
  calico-node CPU (utime+stime+cutime+cstime of calico-node and its descendants, i.e. the CNI server and
  the iptables / ipset runs it reaped; the BIRD daemon reported apart), less the idle rate; etcd's CPU.
- at rest (--idle seconds doing nothing): etcd requests/s (grpc_server_started_total), calico-node's
  CPU, its VmRSS.
- policy selector change -> in force: a GlobalNetworkPolicy's rule selector moves to another 10 %;
  time until a new ipset with exactly the expected member count exists and is referenced by a rule.
- local ADD -> rules: time from a real plugin ADD on the node returning until cali-tw-<iface> and
  cali-fw-<iface> exist (negative: they were there before the ADD returned).
- full resync: calico-node killed, its chains and ipsets removed, started again; time until every
  local chain and every in-use ipset (by member count) is back.
- at 20,000 (if among --sizes): a burst of --burst ADDs, --burst-parallel at a time; time from the
  first ADD until every pod's chains exist.
Every wait is capped (--timeout; a timeout is recorded and counts as infinite) and a phase stops taking
samples once it used --budget seconds (keeping at least 5 remote changes, 3 ADDs, 1 selector change),
so an implementation that needs seconds per change is measured, not waited out. The table also shows
how much CPU other work on the machine took during each size: it skews every figure. The bundle is
copied at the start, so a `make build` during the run does not swap builds under it.

Writes dist/bench/scale.json and dist/bench/scale.png. Everything runs in a lab (etcd on loopback, a
node namespace, pod namespaces) that is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import json
import math
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.lab import REPO, Lab, netconf, pool, sh

RES = "/calico/resources/v3/projectcalico.org"
IPAM = "/calico/ipam/v2"
WEP_PREFIX = f"{RES}/workloadendpoints/"
SELECTOR_SETS = ("cali40s:", "cali60s:")  # cni_calico.policy.layout.set_name's selector sets
API = "projectcalico.org/v3"
BENCH_NODE = "scale-000"
POOL_NAME, POOL_CIDR, BLOCK_PREFIX = "scale-pool", "10.64.0.0/10", 26
BLOCK_ADDRS = 2 ** (32 - BLOCK_PREFIX)
TOP_BLOCK = 2 ** (BLOCK_PREFIX - 10) - 1  # synthetic blocks from the top of the pool; real ADDs claim from the bottom
NODE_IP = "192.168.201.1/24"  # Lab.node(index=1)'s uplink address
LOCAL = 4  # synthetic endpoints on the bench node
TARGET = {"app": "a3"}  # the rule selector remote changes must reach: app == 'a3'
MAX_OPS = 128  # etcd's default --max-txn-ops
TARGETS = {  # from the issue, at 50,000 endpoints unless said
    "remote_p50_ms": 20.0, "remote_p99_ms": 100.0, "add_p50_ms": 50.0, "bytes_ratio": 2.0,
    "cpu_ms_per_change": 2.0, "rss_mb": 150.0, "burst_s": 3.0,
}
NOW = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- raw netfilter netlink (ipset, nf_tables), used by the helper inside the node namespace ----------

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NFNL_SUBSYS_IPSET, NFNL_SUBSYS_NFTABLES = 6, 10
IPSET_CMD_LIST, IPSET_CMD_TEST = 7, 11
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_TYPENAME, IPSET_ATTR_FLAGS, IPSET_ATTR_DATA = 1, 2, 3, 6, 7
IPSET_ATTR_IP, IPSET_ATTR_IPADDR_IPV4 = 1, 1
IPSET_ATTR_ELEMENTS, IPSET_ATTR_REFERENCES = 24, 25
IPSET_FLAG_LIST_HEADER = 1 << 2
IPSET_ERR_EXIST = 4103  # TEST: "not in the set"
NFT_MSG_GETCHAIN, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME = 4, 1, 3


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _nla_parse(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[i + 4:i + length]
        i += (length + 3) & ~3
    return out


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode()


class Netlink:
    """One NETLINK_NETFILTER socket: ipset TEST / LIST headers and nf_tables GETCHAIN, ~30-100 us a call."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.seq = 0

    def request(self, subsys: int, cmd: int, flags: int, family: int, payload: bytes) -> tuple[int, list[bytes]]:
        """(error, data messages past their nfgenmsg); error 0 or a positive errno / ipset error code."""
        self.seq += 1
        body = struct.pack("=BBH", family, 0, 0) + payload
        self.sock.send(struct.pack("=IHHII", 16 + len(body), (subsys << 8) | cmd, NLM_F_REQUEST | flags, self.seq, 0)
                       + body)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 20)
            i = 0
            while i + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, i)
                if length < 16:
                    break
                if seq == self.seq:
                    if kind == NLMSG_ERROR:
                        return -struct.unpack_from("=i", data, i + 16)[0], out
                    if kind == NLMSG_DONE:
                        return 0, out
                    out.append(data[i + 20:i + length])
                i += (length + 3) & ~3

    def ipset_test(self, name: str, ip: str) -> bool | None:
        """Whether the IPv4 address is in the set; None when there is no such set."""
        addr = _nla(IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, socket.inet_aton(ip))
        payload = (_nla(IPSET_ATTR_PROTOCOL, b"\x07") + _nla(IPSET_ATTR_SETNAME, name.encode() + b"\0")
                   + _nla(IPSET_ATTR_DATA | NLA_F_NESTED, _nla(IPSET_ATTR_IP | NLA_F_NESTED, addr)))
        err, _ = self.request(NFNL_SUBSYS_IPSET, IPSET_CMD_TEST, NLM_F_ACK, socket.AF_INET, payload)
        return True if err == 0 else False if err == IPSET_ERR_EXIST else None

    def ipset_headers(self) -> dict[str, list]:
        """name -> [type, entries, references] of every set (what `ipset list -t` shows)."""
        payload = (_nla(IPSET_ATTR_PROTOCOL, b"\x07")
                   + _nla(IPSET_ATTR_FLAGS | NLA_F_NET_BYTEORDER, struct.pack("!I", IPSET_FLAG_LIST_HEADER)))
        _, msgs = self.request(NFNL_SUBSYS_IPSET, IPSET_CMD_LIST, NLM_F_DUMP | NLM_F_ACK, socket.AF_UNSPEC, payload)
        out = {}
        for msg in msgs:
            top = _nla_parse(msg)
            if IPSET_ATTR_SETNAME not in top:
                continue
            data = _nla_parse(top.get(IPSET_ATTR_DATA, b""))
            entries, refs = (struct.unpack("!I", data[a])[0] if a in data else -1
                             for a in (IPSET_ATTR_ELEMENTS, IPSET_ATTR_REFERENCES))
            out[_cstr(top[IPSET_ATTR_SETNAME])] = [_cstr(top.get(IPSET_ATTR_TYPENAME, b"")), entries, refs]
        return out

    def chain_exists(self, name: str, table: str = "filter") -> bool:
        payload = _nla(NFTA_CHAIN_TABLE, table.encode() + b"\0") + _nla(NFTA_CHAIN_NAME, name.encode() + b"\0")
        return self.request(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, NLM_F_ACK, socket.AF_INET, payload)[0] == 0

    def chains(self, table: str = "filter") -> set[str]:
        """Every chain of the IPv4 table (iptables-nft keeps iptables' chains there)."""
        _, msgs = self.request(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, NLM_F_DUMP | NLM_F_ACK, socket.AF_INET, b"")
        out = set()
        for msg in msgs:
            a = _nla_parse(msg)
            if NFTA_CHAIN_NAME in a and _cstr(a.get(NFTA_CHAIN_TABLE, b"")) == table:
                out.add(_cstr(a[NFTA_CHAIN_NAME]))
        return out


# --- the helper: runs inside the node namespace, answers JSON lines on stdin / stdout -------------------

class _Stdin:
    def __init__(self) -> None:
        self.buf = b""

    def line(self, timeout: float | None) -> str | None:
        """A line, "" when none arrived within `timeout`, None at EOF."""
        while b"\n" not in self.buf:
            if not select.select([0], [], [], timeout)[0]:
                return ""
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def _condition(nl: Netlink, cmd: dict):
    """A function returning a truthy value once the awaited state holds."""
    kind = cmd["until"]
    if kind == "member":  # set, ip, present
        return lambda: nl.ipset_test(cmd["set"], cmd["ip"]) is cmd.get("present", True)
    if kind == "in_any_set":  # ip: the selector sets that hold it
        def in_any():
            return [n for n in nl.ipset_headers() if n.startswith(SELECTOR_SETS) and nl.ipset_test(n, cmd["ip"])]
        return in_any
    if kind == "left_a_set":  # ip, sets: those of them that no longer hold it
        return lambda: [n for n in cmd["sets"] if not nl.ipset_test(n, cmd["ip"])]
    if kind == "entries":  # set, entries
        return lambda: (nl.ipset_headers().get(cmd["set"]) or [0, -1])[1] == cmd["entries"]
    if kind == "new_set":  # exclude, entries: a set not in `exclude` (those in use before) with that many
        # members, used by a rule
        exclude = set(cmd["exclude"])
        return lambda: [n for n, (_, e, r) in nl.ipset_headers().items()
                        if n not in exclude and e == cmd["entries"] and r > 0]
    if kind == "chains":  # chains, present
        wanted, present = list(cmd["chains"]), cmd.get("present", True)
        if len(wanted) <= 4:
            return lambda: all(nl.chain_exists(c) is present for c in wanted)
        return lambda: (set(wanted) <= nl.chains()) if present else not (set(wanted) & nl.chains())
    if kind == "complete":  # chains, entries (a multiset of member counts of in-use sets)
        def complete():
            have: dict[int, int] = {}
            for _, entries, refs in nl.ipset_headers().values():
                if refs > 0:
                    have[entries] = have.get(entries, 0) + 1
            need: dict[int, int] = {}
            for entries in cmd["entries"]:
                need[entries] = need.get(entries, 0) + 1
            return all(have.get(e, 0) >= n for e, n in need.items()) and set(cmd["chains"]) <= nl.chains()
        return complete
    raise ValueError(f"unknown condition {kind!r}")


def helper_main() -> int:
    nl, stdin = Netlink(), _Stdin()

    def send(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = stdin.line(None)
        if line is None:
            return 0
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["op"] == "headers":
                send({"sets": nl.ipset_headers()})
            elif cmd["op"] == "chains":
                send({"chains": sorted(nl.chains())})
            elif cmd["op"] == "test":
                send({"in": nl.ipset_test(cmd["set"], cmd["ip"])})
            elif cmd["op"] == "cost":  # the cost of one membership test, in seconds
                n, started = 2000, time.perf_counter()
                for _ in range(n):
                    nl.ipset_test(cmd["set"], cmd["ip"])
                send({"seconds": (time.perf_counter() - started) / n})
            elif cmd["op"] == "wait":
                check, poll, timeout = _condition(nl, cmd), float(cmd.get("poll", 0.001)), float(cmd["timeout"])
                t0 = time.monotonic()
                value, polls, t = check(), 1, t0
                send({"armed": t0})
                while not value:
                    if time.monotonic() - t0 > timeout:
                        break
                    if stdin.line(0) == "cancel":
                        break
                    time.sleep(max(0.0, t0 + polls * poll - time.monotonic()))  # paced: one check per period
                    t = time.monotonic()
                    value, polls = check(), polls + 1
                period = (t - t0) / (polls - 1) if polls > 1 else 0.0
                send({"ok": bool(value), "t": t, "t0": t0, "polls": polls, "period": period,
                      "value": value if isinstance(value, list) else None})
            else:
                send({"error": f"unknown op {cmd['op']!r}"})
        except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails the phase
            send({"error": repr(exc)})


class NsProbe:
    """The bench's side of the helper: one process in the node namespace, spoken to in JSON lines."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.bench.bench_scale", "--ns-helper"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        lab.procs.append(self.proc)
        self.buf = b""

    def _line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the namespace helper did not answer")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the namespace helper exited ({self.proc.poll()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"namespace helper: {out['error']}")
        return out

    def _send(self, cmd: dict | str) -> None:
        self.proc.stdin.write(((cmd if isinstance(cmd, str) else json.dumps(cmd)) + "\n").encode())

    def ask(self, op: str, **kw) -> dict:
        self._send({"op": op, **kw})
        return self._line(30)

    def headers(self) -> dict[str, list]:
        return self.ask("headers")["sets"]

    def arm(self, until: str, timeout: float, poll: float = 0.001, **kw) -> float:
        """Starts a wait; returns once the helper has made its first check (its monotonic time)."""
        self._timeout = timeout
        self._send({"op": "wait", "until": until, "timeout": timeout, "poll": poll, **kw})
        return self._line(30)["armed"]

    def result(self) -> dict:
        return self._line(self._timeout + 30)

    def cancel(self) -> dict:
        self._send("cancel")
        return self._line(30)

    def wait(self, until: str, timeout: float, poll: float = 0.001, **kw) -> dict:
        self.arm(until, timeout, poll, **kw)
        return self.result()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the synthetic cluster ---------------------------------------------------------------------------------

def node_name(i: int) -> str:
    return f"scale-{i:03d}"


def _escape(part: str) -> str:
    return part.replace("-", "--")


class Synth:
    """Deterministic records: remote endpoint k lives on node 1 + k % (nodes - 1), in slot k // (nodes - 1)
    of it; slot s is ordinal s % 64 of the node's block s // 64; block j of node i is block number
    TOP_BLOCK - (j * nodes + i) of the pool. Label changes are kept as overrides, not whole records."""

    def __init__(self, nodes: int, namespaces: int) -> None:
        self.nodes, self.namespaces = nodes, namespaces
        self.base = int(ipaddress.IPv4Network(POOL_CIDR).network_address)
        self.count = 0  # remote endpoints written: k < count
        self.ipam_count = 0  # remote endpoints whose IPAM records are written
        self.overrides: dict[int, dict[str, str]] = {}

    # placement
    def place(self, k: int) -> tuple[int, int]:
        return (0, -1 - k) if k < 0 else (1 + k % (self.nodes - 1), k // (self.nodes - 1))

    def block_cidr(self, node: int, j: int) -> str:
        first = self.base + (TOP_BLOCK - (j * self.nodes + node)) * BLOCK_ADDRS
        return f"{ipaddress.IPv4Address(first)}/{BLOCK_PREFIX}"

    def address(self, k: int) -> str:
        node, slot = self.place(k)
        j, ordinal = divmod(slot, BLOCK_ADDRS)
        return str(ipaddress.IPv4Network(self.block_cidr(node, j)).network_address + ordinal)

    # endpoint k (k < 0: the bench node's synthetic local endpoints -1 .. -LOCAL)
    def namespace(self, k: int) -> str:
        return f"ns{(-1 - k) % self.namespaces:02d}" if k < 0 else f"ns{(k // 7) % self.namespaces:02d}"

    def labels(self, k: int) -> dict[str, str]:
        if k < 0:
            i = -1 - k
            base = {"app": f"a{i}", "group": f"g{i}", "tier": f"t{5 + i}"}
        else:
            base = {"app": f"a{k % 10}", "group": f"g{(k // 10) % 10}", "tier": f"t{(k // 100) % 10}"}
        return {**base, **self.overrides.get(k, {})}

    def pod(self, k: int) -> str:
        return f"local-{-1 - k}" if k < 0 else f"pod-{k:06d}"

    def container_id(self, k: int) -> str:
        return hashlib.sha256(f"scale-{k}".encode()).hexdigest()

    def interface(self, k: int) -> str:
        return "cali" + hashlib.sha1(f"{self.namespace(k)}.{self.pod(k)}".encode()).hexdigest()[:11]

    def handle(self, k: int) -> str:
        return f"{self.namespace(k)}.{self.container_id(k)}"

    def endpoint(self, k: int) -> tuple[str, dict]:
        """The key and the resource, as cni_calico.endpoints.build writes a finished endpoint."""
        node = node_name(0 if k < 0 else self.place(k)[0])
        ns, pod = self.namespace(k), self.pod(k)
        name = f"{_escape(node)}-k8s-{_escape(pod)}-eth0"
        cid = self.container_id(k)
        mac = "ee:" + ":".join(cid[i:i + 2] for i in range(0, 10, 2))
        return f"{WEP_PREFIX}{ns}/{name}", {
            "kind": "WorkloadEndpoint", "apiVersion": API,
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": NOW,
                         "labels": {**self.labels(k), "projectcalico.org/namespace": ns,
                                    "projectcalico.org/orchestrator": "k8s"}},
            "spec": {"orchestrator": "k8s", "node": node, "containerID": cid, "pod": pod, "endpoint": "eth0",
                     "interfaceName": self.interface(k), "mac": mac, "ipNetworks": [f"{self.address(k)}/32"],
                     "profiles": [ns]},
        }

    def local_chains(self) -> list[str]:
        return [f"cali-{d}-{self.interface(k)}" for k in range(-1, -1 - LOCAL, -1) for d in ("tw", "fw")]

    def all_keys(self) -> list[int]:
        return [*range(-1, -1 - LOCAL, -1), *range(self.count)]

    def matching(self, **want: str) -> int:
        return sum(1 for k in self.all_keys() if all(self.labels(k).get(a) == v for a, v in want.items()))

    # IPAM records of node `node`'s block j, holding its slots [0, used)
    def block(self, node: int, j: int, used: int) -> tuple[str, dict, list[tuple[str, dict]]]:
        cidr = self.block_cidr(node, j)
        allocations: list[int | None] = [None] * BLOCK_ADDRS
        attributes, handles = [], []
        for ordinal in range(min(BLOCK_ADDRS, max(0, used - j * BLOCK_ADDRS))):
            slot = j * BLOCK_ADDRS + ordinal
            k = -1 - slot if node == 0 else slot * (self.nodes - 1) + node - 1
            handle = self.handle(k)
            allocations[ordinal] = len(attributes)
            attributes.append({"handle_id": handle, "secondary": {
                "node": node_name(node), "containerID": self.container_id(k), "timestamp": NOW,
                "namespace": self.namespace(k), "pod": self.pod(k)}})
            handles.append((f"{IPAM}/handle/{handle}", {"handleID": handle, "block": {cidr: 1}, "deleted": False}))
        block = {"cidr": cidr, "affinity": f"host:{node_name(node)}", "strictAffinity": False,
                 "allocations": allocations, "unallocated": [o for o in range(BLOCK_ADDRS) if allocations[o] is None],
                 "attributes": attributes, "deleted": False}
        return f"{IPAM}/assignment/ipv4/block/{cidr.replace('/', '-')}", block, handles

    def slots(self, node: int, count: int) -> int:
        """Slots node `node` (>= 1) uses when remote endpoints 0 .. count-1 exist."""
        per, extra = divmod(count, self.nodes - 1)
        return per + (1 if node - 1 < extra else 0)


def node_resource(i: int) -> dict:
    name = node_name(i)
    address = NODE_IP if i == 0 else f"172.20.{i // 250}.{i % 250 + 1}/16"
    return {"kind": "Node", "apiVersion": API,
            "metadata": {"name": name, "creationTimestamp": NOW, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"bgp": {"ipv4Address": address}}}


def profile_resource(name: str) -> dict:
    """cni_calico.endpoints.default_profile's format: members accept each other, egress open."""
    return {"kind": "Profile", "apiVersion": API, "metadata": {"name": name},
            "spec": {"ingress": [{"action": "Allow", "source": {"selector": f"has({name})"}}],
                     "egress": [{"action": "Allow"}], "labelsToApply": {name: ""}}}


def policies(tier: str) -> dict[str, dict]:
    """Rule selectors over the whole cluster (GlobalNetworkPolicies, a namespaceSelector) and in a namespace."""
    def gnp(name: str, order: int, selector: str, **rules) -> dict:
        types = [t.capitalize() for t in rules]
        return {"kind": "GlobalNetworkPolicy", "apiVersion": API, "metadata": {"name": name},
                "spec": {"order": order, "selector": selector, "types": types, **rules}}

    return {
        f"{RES}/globalnetworkpolicies/scale-ingress": gnp("scale-ingress", 100, "all()", ingress=[
            {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'a3'"},
             "destination": {"ports": [8080]}},
            {"action": "Allow", "protocol": "TCP", "source": {"selector": "group == 'g1'"},
             "destination": {"ports": [9090]}}]),
        f"{RES}/globalnetworkpolicies/scale-egress": gnp("scale-egress", 200, "has(projectcalico.org/namespace)",
                                                         egress=[
            {"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'a7' && group == 'g2'",
                                                                   "ports": [5432]}},
            {"action": "Allow", "destination": {"nets": ["10.0.0.0/8", "172.16.0.0/12"]}}]),
        f"{RES}/globalnetworkpolicies/scale-switch": gnp("scale-switch", 300, "all()", ingress=[
            {"action": "Allow", "protocol": "TCP", "source": {"selector": f"tier == '{tier}'"},
             "destination": {"ports": [7070]}}]),
        f"{RES}/networkpolicies/ns00/scale-ns": {
            "kind": "NetworkPolicy", "apiVersion": API, "metadata": {"name": "scale-ns", "namespace": "ns00"},
            "spec": {"order": 50, "selector": "all()", "types": ["Ingress"], "ingress": [
                {"action": "Allow", "source": {"selector": "app == 'a1'"}},
                {"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'ns01'"}}]}},
    }


# --- etcd: writes, metrics, the floor watcher ----------------------------------------------------------

def _dump(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


class EtcdClient:
    """The bench's own etcd client (pyetcd, as cni_calico.datastore uses it) and etcd's /metrics."""

    def __init__(self, url: str, pid: int) -> None:
        import pyetcd
        from pyetcd import transactions

        self.url, self.pid, self._txn = url, pid, transactions
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[pyetcd.Endpoint(host, int(port), secure=False, time_retry=0)], timeout=30)

    def put(self, key: str, value: dict) -> int:
        """Writes one value; returns its size in bytes."""
        data = _dump(value)
        self.client.put(key, data)
        return len(data)

    def put_many(self, items) -> int:
        batch, written = [], 0
        for key, value in items:
            batch.append(self._txn.Put(key, _dump(value)))
            if len(batch) == MAX_OPS:
                self.client.transaction(compare=[], success=batch, failure=[])
                written, batch = written + len(batch), []
        if batch:
            self.client.transaction(compare=[], success=batch, failure=[])
            written += len(batch)
        return written

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"{self.url}/metrics", timeout=10).read().decode()
        out = {"sent_bytes": 0.0, "started": 0.0}
        for line in text.splitlines():
            if line.startswith("etcd_network_client_grpc_sent_bytes_total"):
                out["sent_bytes"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("grpc_server_started_total{"):
                value = float(line.rsplit(" ", 1)[1])
                out["started"] += value
                method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
                out[f"started.{method}"] = out.get(f"started.{method}", 0.0) + value
        out["cpu_s"] = proc_cpu(self.pid)
        return out

    def close(self) -> None:
        self.client.close()


class FloorWatcher:
    """A bare watch on the endpoint prefix: when each key's latest event arrived (monotonic time)."""

    def __init__(self, etcd: EtcdClient) -> None:
        self.etcd, self.seen, self.cond = etcd, {}, threading.Condition()
        self.watch_id = etcd.client.add_watch_prefix_callback(WEP_PREFIX, self._event)

    def _event(self, response) -> None:
        now = time.monotonic()
        with self.cond:
            for event in getattr(response, "events", None) or []:
                self.seen[event.key.decode()] = now
            self.cond.notify_all()

    def when(self, key: str, after: float, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.seen.get(key, -1.0) < after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[key]

    def close(self) -> None:
        self.etcd.client.cancel_watch(self.watch_id)


# --- /proc -----------------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of one process, in seconds (0 when it is gone)."""
    fields = _stat(pid)
    return sum(int(x) for x in fields[11:15]) / TICK if fields else 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs (/proc/stat): other load on the machine skews every figure."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class ProcTree:
    """calico-node's process and its descendants; the BIRD daemon (by its pid file) is counted apart."""

    def __init__(self, root: int, bird_pid=lambda: None) -> None:
        self.root, self.bird_pid = root, bird_pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat(int(entry))
                if fields:
                    children.setdefault(int(fields[1]), []).append(int(entry))
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def cpu(self) -> tuple[float, float, float, float]:
        """CPU seconds: (calico-node and its descendants but BIRD, reaped children included; the BIRD daemon;
        of the first: calico-node's own process; the children it ran and reaped, e.g. ipset, iptables-restore,
        `bird -p`). Only the daemon named by the pid file is BIRD's."""
        ours = bird = 0.0
        daemon = self.bird_pid()
        for pid in self.pids():
            if pid == daemon:
                bird += proc_cpu(pid)
            else:
                ours += proc_cpu(pid)
        fields = _stat(self.root)
        own, reaped = (sum(int(x) for x in fields[11:13]) / TICK, sum(int(x) for x in fields[13:15]) / TICK) \
            if fields else (0.0, 0.0)
        return ours, bird, own, reaped

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            role = "calico-node" if pid == self.root else "cni-server" if "--serve-cni" in cmd else _comm(pid)
            out[role] = out.get(role, 0.0) + rss / 1024
        return out


# --- statistics ----------------------------------------------------------------------------------------------

def pct(values: list[float | None], q: float) -> float | None:
    """Nearest-rank percentile; a timeout (None) counts as +inf."""
    if not values:
        return None
    ordered = sorted(math.inf if v is None else v for v in values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- the bench ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab, self.args = lab, args
        self.lab_etcd = lab.etcd()
        self.etcd = EtcdClient(self.lab_etcd.url, self.lab_etcd.proc.pid)
        self.ns = lab.node(self.lab_etcd, index=1)
        self.probe = NsProbe(lab, self.ns)
        self.synth = Synth(args.nodes, args.namespaces)
        self.node = None
        self.tree: ProcTree | None = None
        self.target_set = ""
        self.probe_k = -999
        self.tier = "t0"
        self.update_k = 5  # next candidate for a relabel (app a5 -> a3)
        self.pods: list[tuple[str, str]] = []  # (pod namespace, container id) of real pods on the node
        self.calibration: dict[str, float] = {}

    # -- helpers
    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def conf(self) -> dict:
        return netconf(self.lab_etcd, name="ns00", node=BENCH_NODE, log_level="warning",
                       log_file_path=str(self.lab.workdir / "cni.log"))

    def plugin(self, command: str, pod_ns: str, cid: str):
        return Lab.run_plugin(self.ns, command, self.conf(), cid, Lab.netns_path(pod_ns), timeout=120,
                              extra_env={"CALICO_RUN_DIR": str(self.node.run_dir)})

    def drop_ns(self, ns: str) -> None:
        sh("ip", "netns", "del", ns, check=False)
        if ns in self.lab.namespaces:
            self.lab.namespaces.remove(ns)

    def cpu(self) -> float:
        return self.tree.cpu()[0] if self.tree else 0.0

    def load(self) -> tuple[float, float, float]:
        """(machine busy CPU s, the lab's CPU s, wall time): the lab = calico-node's tree and BIRD, etcd, this
        process with the children it reaped (plugin runs, a killed calico-node), the helper, the bridges."""
        t = os.times()
        ours = sum(self.tree.cpu()[:2]) if self.tree else 0.0
        ours += proc_cpu(self.lab_etcd.proc.pid) + t.user + t.system + t.children_user + t.children_system
        ours += sum(proc_cpu(p.pid) for p in self.lab.procs if p.poll() is None)
        return machine_busy()[0] / TICK, ours, time.monotonic()

    def wait_quiet(self, limit: float = 30.0, window: float = 0.5, ticks: int = 3) -> float:
        """Seconds until calico-node's tree used <= `ticks` clock ticks in two windows in a row."""
        started, calm = time.monotonic(), 0
        last = self.cpu()
        while time.monotonic() - started < limit:
            time.sleep(window)
            now = self.cpu()
            calm = calm + 1 if (now - last) * TICK <= ticks else 0
            last = now
            if calm >= 2:
                break
        return time.monotonic() - started

    # -- the cluster
    def write_base(self) -> None:
        e = self.etcd
        e.put(f"{RES}/ippools/{POOL_NAME}", pool(POOL_NAME, POOL_CIDR, BLOCK_PREFIX))
        e.put_many((f"{RES}/nodes/{node_name(i)}", node_resource(i)) for i in range(self.args.nodes))
        e.put_many((f"{RES}/profiles/ns{i:02d}", profile_resource(f"ns{i:02d}")) for i in range(self.args.namespaces))
        e.put_many(policies(self.tier).items())
        self.write_ipam(0, 0, local=True)
        e.put_many(self.synth.endpoint(k) for k in range(-1, -1 - LOCAL, -1))

    def write_ipam(self, before: int, after: int, local: bool = False) -> None:
        """Blocks, their affinities and the handles of remote endpoints before .. after-1 (blocks rewritten whole)."""
        s, items = self.synth, []
        nodes = [0] if local else range(1, self.args.nodes)
        for node in nodes:
            old, new = (0, LOCAL) if local else (s.slots(node, before), s.slots(node, after))
            if new == old:
                continue
            for j in range(old // BLOCK_ADDRS, (new - 1) // BLOCK_ADDRS + 1):
                key, block, handles = s.block(node, j, new)
                items.append((key, block))
                items.append((f"{IPAM}/host/{node_name(node)}/ipv4/block/{key.rsplit('/', 1)[1]}",
                              {"state": "confirmed", "deleted": False}))
                items += [h for i, h in enumerate(handles) if j * BLOCK_ADDRS + i >= old]
        self.etcd.put_many(items)

    def grow(self, size: int) -> tuple[float, int]:
        """Remote endpoints up to `size` (the bench node's few included); (seconds, endpoints written)."""
        want = max(self.synth.count, size - LOCAL)
        before, started = self.synth.count, time.monotonic()
        self.write_ipam(self.synth.ipam_count, want)
        self.synth.ipam_count = want
        written = self.etcd.put_many(self.synth.endpoint(k) for k in range(before, want))
        self.synth.count = want
        return time.monotonic() - started, written

    def create_remote(self, **labels: str) -> tuple[int, str, dict]:
        k = self.synth.count
        self.synth.count += 1
        if labels:
            self.synth.overrides[k] = dict(labels)
        key, value = self.synth.endpoint(k)
        return k, key, value

    def relabel(self, k: int, **labels: str) -> tuple[str, dict]:
        self.synth.overrides[k] = {**self.synth.overrides.get(k, {}), **labels}
        return self.synth.endpoint(k)

    def next_update(self) -> int:
        while self.update_k in self.synth.overrides or self.synth.labels(self.update_k)["app"] == TARGET["app"]:
            self.update_k += 10
        k, self.update_k = self.update_k, self.update_k + 10
        return k

    # -- calico-node
    def start_node(self) -> float:
        started = time.monotonic()
        self.node = self.lab.calico_node(self.ns, self.lab_etcd, BENCH_NODE, IP=NODE_IP, CALICO_NODE_LOG_LEVEL="info",
                                         CALICO_NETWORKING_BACKEND=self.args.backend)
        self.tree = ProcTree(self.node.proc.pid, self.node.bird_pid)
        return started

    def kill_node(self) -> None:
        pids = self.tree.pids() if self.tree else []
        self.node.stop(graceful=False)  # stays in lab.calico_nodes: stopping it again at close is a no-op
        for pid in pids:  # descendants by the PIDs we saw (the CNI server dies with it; make sure)
            if pid != self.node.proc.pid and _comm(pid) in ("calico-node", "bird"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def wipe_dataplane(self) -> None:
        """Removes every nf_tables table (iptables' included) and ipset in the bench node's namespace: only
        calico-node made any there."""
        Lab.in_ns(self.ns, "nft", "flush", "ruleset", check=True)
        Lab.in_ns(self.ns, "ipset", "destroy", check=True)

    def expected_target(self) -> int:
        return self.synth.matching(**TARGET)

    # -- setup
    def calibrate(self) -> None:
        """etcd bytes the bench itself causes per change (its put's answer + the floor watcher's event)."""
        watcher = FloorWatcher(self.etcd)
        time.sleep(0.3)
        before, sizes = self.etcd.metrics(), []
        for _ in range(10):
            _, key, value = self.create_remote()
            sizes.append(self.etcd.put(key, value))
            watcher.when(key, 0.0)
        time.sleep(0.3)
        after = self.etcd.metrics()
        watcher.close()
        self.calibration = {"bench_bytes_per_change": (after["sent_bytes"] - before["sent_bytes"]) / 10,
                            "value_bytes": statistics.mean(sizes)}
        self.log(f"calibration: the bench's own etcd traffic per change "
                 f"{self.calibration['bench_bytes_per_change']:.0f} B (value {self.calibration['value_bytes']:.0f} B)")

    def discover(self) -> None:
        """Finds the kernel ipset of `app == 'a3'` by observation, with a probe endpoint."""
        t = self.args.timeout * 3
        k, key, value = self.create_remote(app="a3", group="gx", tier="tx")
        self.probe_k, ip = k, self.synth.address(k)
        self.probe.arm("in_any_set", t, poll=0.005, ip=ip)
        self.etcd.put(key, value)
        found = self.probe.result()
        if not found["ok"]:
            raise RuntimeError(f"the probe {ip} reached no ipset within {t} s")
        self.wait_quiet()
        sets = [n for n in self.probe.headers()
                if n.startswith(SELECTOR_SETS) and self.probe.ask("test", set=n, ip=ip)["in"]]
        if len(sets) > 1:  # take its label away: the set it leaves is the selector's
            self.probe.arm("left_a_set", t, poll=0.005, ip=ip, sets=sets)
            self.etcd.put(*self.relabel(k, app="a8"))
            left = self.probe.result()
            if not left["ok"] or len(left["value"]) != 1:
                raise RuntimeError(f"cannot tell the selector's ipset among {sets}: {left}")
            sets = left["value"]
            self.probe.arm("member", t, poll=0.005, set=sets[0], ip=ip)
            self.etcd.put(*self.relabel(k, app="a3"))
            self.probe.result()
        if not sets:
            raise RuntimeError("the probe's address is in no ipset")
        self.target_set = sets[0]
        cost = self.probe.ask("cost", set=self.target_set, ip=ip)["seconds"]
        self.calibration["ipset_test_us"] = cost * 1e6
        self.log(f"selector app == 'a3' is ipset {self.target_set} (found through probe {ip}); "
                 f"one netlink membership test costs {cost * 1e6:.0f} us")

    def settle(self, timeout: float) -> float | None:
        """Seconds until the target set holds every matching endpoint (None: timed out)."""
        started = time.monotonic()
        got = self.probe.wait("entries", timeout, poll=0.05, set=self.target_set, entries=self.expected_target())
        if not got["ok"]:
            return None
        return got["t"] - started

    # -- phases
    def idle(self, seconds: float) -> dict:
        m0, c0, b0, t0 = self.etcd.metrics(), self.tree.cpu(), machine_busy(), time.monotonic()
        time.sleep(seconds)
        m1, c1, b1, t1 = self.etcd.metrics(), self.tree.cpu(), machine_busy(), time.monotonic()
        span = t1 - t0
        by_method = {k.split(".", 1)[1]: round((m1.get(k, 0) - m0.get(k, 0)) / span, 2) for k in m1
                     if k.startswith("started.") and m1.get(k, 0) != m0.get(k, 0)}
        rss = self.tree.rss_mb()
        return {"seconds": span, "etcd_requests_per_s": (m1["started"] - m0["started"]) / span,
                "etcd_requests_by_method": by_method,
                "etcd_bytes_per_s": (m1["sent_bytes"] - m0["sent_bytes"]) / span,
                "etcd_cpu_pct": (m1["cpu_s"] - m0["cpu_s"]) / span * 100,
                "cpu_pct": (c1[0] - c0[0]) / span * 100, "bird_cpu_pct": (c1[1] - c0[1]) / span * 100,
                "machine_busy_cores": (b1[0] - b0[0]) / max(1e-9, b1[1] - b0[1]) * (os.cpu_count() or 1),
                "rss_mb": rss.get("calico-node", 0.0), "rss_mb_tree": rss}

    def remote_changes(self, n: int, idle: dict, isolated: bool, budget: float) -> dict:
        """`n` remote changes, one after the other, each awaited in the ipset; `isolated`: each starts from a
        quiet calico-node (latency), else the next is written as soon as the last one is in (cost)."""
        timeout = self.args.timeout
        watcher = FloorWatcher(self.etcd)
        time.sleep(0.2)
        self.wait_quiet()
        lat, floor, kinds, sizes, periods = [], [], [], [], []
        m0, c0, t0 = self.etcd.metrics(), self.tree.cpu(), time.monotonic()
        for i in range(n):
            if i >= 5 and time.monotonic() - t0 > budget:
                break
            if i % 2 == 0:
                k, key, value = self.create_remote(**TARGET)
                kind = "create"
            else:
                k = self.next_update()
                key, value = self.relabel(k, **TARGET)
                kind = "relabel"
            ip = self.synth.address(k)
            self.probe.arm("member", timeout, poll=self.args.poll_ms / 1000, set=self.target_set, ip=ip)
            before = time.monotonic()
            sizes.append(self.etcd.put(key, value))
            written = time.monotonic()
            got = self.probe.result()
            seen = watcher.when(key, before)
            if got["polls"] > 1:
                periods.append(got["period"])
            lat.append(got["t"] - written if got["ok"] else None)
            floor.append(seen - written if seen is not None else None)
            kinds.append(kind)
            if isolated:
                self.wait_quiet(limit=timeout)
        self.wait_quiet(limit=timeout)
        m1, c1, t1 = self.etcd.metrics(), self.tree.cpu(), time.monotonic()
        watcher.close()
        done, span = len(lat), t1 - t0
        sent = m1["sent_bytes"] - m0["sent_bytes"] - done * self.calibration["bench_bytes_per_change"]
        cpu = c1[0] - c0[0]
        return {
            "n": done, "timeouts": sum(v is None for v in lat), "kinds": kinds,
            "ms": [None if v is None else v * 1000 for v in lat],
            "floor_ms": [None if v is None else v * 1000 for v in floor],
            "poll_period_ms": statistics.mean(periods) * 1000 if periods else None,
            "value_bytes": statistics.mean(sizes), "window_s": span,
            "etcd_bytes_per_change_raw": sent / done,
            "etcd_bytes_per_change": (sent - idle["etcd_bytes_per_s"] * span) / done,
            "etcd_cpu_ms_per_change": (m1["cpu_s"] - m0["cpu_s"]) / done * 1000,
            "cpu_ms_per_change_raw": cpu / done * 1000,
            "cpu_ms_per_change": (cpu - idle["cpu_pct"] / 100 * span) / done * 1000,
            "bird_cpu_ms": (c1[1] - c0[1]) * 1000,
            "cpu_split_ms_per_change": {  # raw, idle not subtracted
                "calico-node process": (c1[2] - c0[2]) / done * 1000,
                "programs it ran (ipset, iptables-restore, ...)": (c1[3] - c0[3]) / done * 1000,
                "other descendants (CNI server)": ((c1[0] - c1[2] - c1[3]) - (c0[0] - c0[2] - c0[3])) / done * 1000},
        }

    def selector_changes(self, n: int) -> dict:
        out, started = [], time.monotonic()
        for i in range(n):
            if i >= 1 and time.monotonic() - started > self.args.budget:
                break
            before = [name for name, (_, _, refs) in self.probe.headers().items() if refs > 0]  # in use now
            self.tier = f"t{(int(self.tier[1:]) + 1) % 10}"
            expected = self.synth.matching(tier=self.tier)
            key = f"{RES}/globalnetworkpolicies/scale-switch"
            self.probe.arm("new_set", self.args.timeout, poll=0.002, exclude=before, entries=expected)
            self.etcd.put(key, policies(self.tier)[key])
            written = time.monotonic()
            got = self.probe.result()
            out.append(got["t"] - written if got["ok"] else None)
            self.wait_quiet(limit=self.args.timeout)
        return {"n": len(out), "timeouts": sum(v is None for v in out),
                "ms": [None if v is None else v * 1000 for v in out]}

    def local_adds(self, n: int) -> dict:
        lat, plugin_ms, failures, started = [], [], [], time.monotonic()
        for i in range(n):
            if i >= 3 and time.monotonic() - started > self.args.budget:
                break
            pod = self.lab.pod()
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            iface = "cali" + cid[:11]
            self.probe.arm("chains", self.args.timeout, poll=self.args.poll_ms / 1000,
                           chains=[f"cali-tw-{iface}", f"cali-fw-{iface}"])
            run = self.plugin("ADD", pod, cid)
            returned = time.monotonic()
            got_iface = next((x.get("name") for x in run.out.get("interfaces", []) if not x.get("sandbox")), iface)
            if run.rc != 0 or got_iface != iface:
                self.probe.cancel()
                failures.append(run.stdout[-300:] + run.stderr[-300:] if run.rc else f"interface {got_iface}")
                self.drop_ns(pod)
                continue
            self.pods.append((pod, cid))
            got = self.probe.result()
            lat.append(got["t"] - returned if got["ok"] else None)
            plugin_ms.append(run.seconds * 1000)
            self.wait_quiet(limit=self.args.timeout)
        return {"n": len(lat), "timeouts": sum(v is None for v in lat), "failures": failures,
                "ms": [None if v is None else v * 1000 for v in lat], "plugin_ms": plugin_ms}

    def burst(self, count: int, parallel: int) -> dict:
        pods = [(self.lab.pod(), uuid.uuid4().hex + uuid.uuid4().hex) for _ in range(count)]
        chains = [f"cali-{d}-cali{cid[:11]}" for _, cid in pods for d in ("tw", "fw")]
        self.wait_quiet()
        self.probe.arm("chains", self.args.burst_timeout, poll=0.005, chains=chains)
        started = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool_:
            runs = list(pool_.map(lambda p: self.plugin("ADD", *p), pods))
        returned = time.monotonic()
        failed = [r.stdout[-300:] + r.stderr[-300:] for r in runs if r.rc != 0]
        if failed:
            self.probe.cancel()
            got = {"ok": False}
        else:
            got = self.probe.result()
        self.pods += pods
        return {"count": count, "parallel": parallel, "failures": failed,
                "s": got["t"] - started if got["ok"] else None, "adds_returned_s": returned - started,
                "plugin_ms_p50": statistics.median(r.seconds * 1000 for r in runs)}

    def remove_pods(self) -> None:
        if not self.pods:
            return
        with ThreadPoolExecutor(8) as pool_:
            runs = list(pool_.map(lambda p: self.plugin("DEL", *p), self.pods))
        bad = [r for r in runs if r.rc != 0]
        if bad:
            self.log(f"warning: {len(bad)} DELs failed: {bad[0].stdout[-200:]}{bad[0].stderr[-200:]}")
        for pod, _ in self.pods:
            self.drop_ns(pod)
        self.pods = []
        self.wait_quiet(limit=self.args.timeout)

    def resync(self) -> dict:
        """Kill calico-node, remove its dataplane, start it: seconds until the dataplane is back whole."""
        in_use = [e for _, e, r in self.probe.headers().values() if r > 0]
        chains = self.synth.local_chains() + [f"cali-{d}-cali{cid[:11]}" for _, cid in self.pods for d in ("tw", "fw")]
        self.kill_node()
        self.wipe_dataplane()
        started = self.start_node()
        got = self.probe.wait("complete", self.args.settle_timeout, poll=0.01, entries=in_use, chains=chains)
        self.wait_quiet(limit=self.args.timeout)
        if self.probe.ask("test", set=self.target_set, ip=self.synth.address(self.probe_k))["in"] is not True:
            self.log("the selector's ipset is not where it was before the restart: finding it again")
            self.discover()
        return {"s": got["t"] - started if got["ok"] else None, "sets": len(in_use), "chains": len(chains)}

    # -- one size
    def measure(self, size: int, first: bool) -> dict:
        out, load0 = {}, self.load()
        try:
            return self._measure(size, first, out)
        finally:
            load1 = self.load()
            out["other_load_cores"] = ((load1[0] - load0[0]) - (load1[1] - load0[1])) / (load1[2] - load0[2])

    def _measure(self, size: int, first: bool, out: dict) -> dict:
        args = self.args
        grow_s, written = self.grow(size)
        out["grow"] = {"seconds": grow_s, "endpoints_written": written}
        self.log(f"{size}: wrote {written} endpoints (+ IPAM records) in {grow_s:.1f} s")
        if first:
            self.calibrate()
            self.start_node()
            got = self.probe.wait("chains", args.settle_timeout, poll=0.01, chains=self.synth.local_chains())
            if not got["ok"]:
                raise RuntimeError(f"calico-node never programmed the local endpoints:\n{self.node.log()[-3000:]}")
            self.wait_quiet()
            self.discover()
        catch_up = self.settle(args.settle_timeout)
        out["catch_up_s"] = None if first else catch_up  # the first size: calico-node started after the writes
        if catch_up is None:
            self.log(f"{size}: calico-node did not catch up within {args.settle_timeout} s; figures at this size "
                     "are of a node still behind")
        out["quiet_after_catch_up_s"] = self.wait_quiet(limit=args.timeout)  # syncs still running behind the set
        total = self.synth.count + LOCAL
        out["endpoints"] = total
        out["target_members"] = self.expected_target()
        self.log(f"{size}: {total} endpoints, the selector's ipset holds {out['target_members']}; "
                 f"caught up {catch_up if catch_up is None else round(catch_up, 1)} s after the writes")
        if not args.no_resync:
            out["resync"] = self.resync()
            self.log(f"{size}: full resync (restart, empty dataplane) {out['resync']['s']} s")
        out["idle"] = self.idle(args.idle)
        self.log(f"{size}: idle {out['idle']['etcd_requests_per_s']:.1f} etcd req/s, "
                 f"calico-node {out['idle']['cpu_pct']:.1f} % CPU, RSS {out['idle']['rss_mb']:.0f} MB; "
                 f"the machine meanwhile busy {out['idle']['machine_busy_cores']:.2f} cores")
        out["remote"] = r = self.remote_changes(args.changes, out["idle"], isolated=True, budget=args.budget)
        self.log(f"{size}: remote change -> ipset p50 {pct(r['ms'], 50)} ms p99 {pct(r['ms'], 99)} ms over {r['n']}"
                 f" (floor p50 {pct(r['floor_ms'], 50)} ms)")
        if args.cost_changes:
            out["cost"] = r = self.remote_changes(args.cost_changes, out["idle"], isolated=False,
                                                  budget=args.cost_budget)
        self.log(f"{size}: {r['etcd_bytes_per_change']:.0f} etcd B and {r['cpu_ms_per_change']:.2f} ms calico-node CPU "
                 f"per remote change (over {r['n']} changes)")
        out["selector"] = self.selector_changes(args.policy_changes)
        self.log(f"{size}: selector change -> in force {out['selector']['ms']} ms")
        out["add"] = self.local_adds(args.adds)
        self.log(f"{size}: local ADD -> rules {out['add']['ms']} ms (plugin {out['add']['plugin_ms']} ms)")
        self.remove_pods()
        if size == args.burst_size and args.burst:
            out["burst"] = self.burst(args.burst, args.burst_parallel)
            self.log(f"{size}: burst of {args.burst} ADDs -> every pod's rules {out['burst']['s']} s")
            self.remove_pods()
        return out


# --- report ------------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if value == math.inf:
        return "timeout"
    return f"{value:.{digits}f}"


def summary(results: dict[int, dict]) -> dict[int, dict]:
    out = {}
    for size, r in results.items():
        rem, idle, cost = r["remote"], r["idle"], r.get("cost") or r["remote"]
        out[size] = {
            "remote_p50_ms": pct(rem["ms"], 50), "remote_p99_ms": pct(rem["ms"], 99),
            "floor_p50_ms": pct(rem["floor_ms"], 50), "floor_p99_ms": pct(rem["floor_ms"], 99),
            "remote_n": rem["n"], "remote_timeouts": rem["timeouts"],
            **{f"remote_{kind}_p50_ms": pct([v for v, k in zip(rem["ms"], rem["kinds"], strict=True) if k == kind], 50)
               for kind in ("create", "relabel")},
            "machine_busy_cores_idle": idle["machine_busy_cores"], "other_load_cores": r.get("other_load_cores"),
            "add_p50_ms": pct(r["add"]["ms"], 50), "add_n": r["add"]["n"], "add_plugin_p50_ms": pct(
                r["add"]["plugin_ms"], 50),
            "selector_p50_ms": pct(r["selector"]["ms"], 50), "selector_n": r["selector"]["n"],
            "etcd_bytes_per_change": cost["etcd_bytes_per_change"], "value_bytes": cost["value_bytes"],
            "cost_n": cost["n"], "cost_p50_ms": pct(cost["ms"], 50),
            "etcd_requests_per_s_idle": idle["etcd_requests_per_s"],
            "cpu_ms_per_change": cost["cpu_ms_per_change"], "idle_cpu_pct": idle["cpu_pct"],
            "rss_mb": idle["rss_mb"], "resync_s": (r.get("resync") or {}).get("s"),
            "burst_s": (r.get("burst") or {}).get("s"), "catch_up_s": r.get("catch_up_s"),
            "etcd_cpu_ms_per_change": cost["etcd_cpu_ms_per_change"],
            "cpu_split_ms_per_change": cost["cpu_split_ms_per_change"],
        }
    return out


ROWS = [  # key, label, digits, floor key, target text
    ("remote_p50_ms", "remote change -> ipset p50 (ms)", 1, "floor_p50_ms", "<= 20 at 50k"),
    ("remote_p99_ms", "remote change -> ipset p99 (ms)", 1, "floor_p99_ms", "<= 100 at 50k"),
    ("add_p50_ms", "local ADD -> rules p50 (ms)", 1, None, "<= 50 at 50k"),
    ("add_plugin_p50_ms", "  (the ADD itself, p50 ms)", 1, None, ""),
    ("selector_p50_ms", "selector change -> in force p50 (ms)", 0, None, ""),
    ("etcd_bytes_per_change", "etcd bytes sent / remote change", 0, "value_bytes", "<= 2x value size"),
    ("etcd_requests_per_s_idle", "etcd requests/s at rest", 1, None, ""),
    ("cpu_ms_per_change", "calico-node CPU / remote change (ms)", 1, None, "<= 2 at 50k"),
    ("etcd_cpu_ms_per_change", "etcd CPU / remote change (ms)", 1, None, ""),
    ("idle_cpu_pct", "calico-node idle CPU (% of a core)", 2, None, ""),
    ("rss_mb", "calico-node RSS (MB)", 0, None, "<= 150 at 50k"),
    ("resync_s", "full resync after restart (s)", 2, None, ""),
    ("catch_up_s", "catch-up after growing (s)", 1, None, ""),
    ("burst_s", "burst of ADDs -> all rules (s)", 2, None, "<= 3 at 20k"),
]


def print_table(summ: dict[int, dict], args: argparse.Namespace, resolution: dict) -> None:
    sizes = sorted(summ)
    width = 16
    print(f"\ncalico-node at scale ({args.nodes} nodes, {args.namespaces} namespaces; floor = bare etcd watch on the "
          "endpoint prefix for the latency rows, the changed value's size for the bytes row)")
    head = f"{'':40}" + "".join(f"{s:>{width}}" for s in sizes) + "   target"
    print(head)
    print(f"{'':40}" + "".join(f"{'ours / floor':>{width}}" for _ in sizes))
    for key, label, digits, floor, target in ROWS:
        cells = []
        for s in sizes:
            value = _fmt(summ[s].get(key), digits)
            if floor:
                value += " / " + _fmt(summ[s].get(floor), digits)
            cells.append(f"{value:>{width}}")
        print(f"{label:40}" + "".join(cells) + f"   {target}")
    split = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.2f}" for k, v in summ[s]["cpu_split_ms_per_change"].items())
                      for s in sizes)
    print(f"calico-node CPU per remote change by process (ms, idle included): {split}")
    busy = ", ".join(f"{s}: {summ[s]['other_load_cores']:.2f}" for s in sizes)
    print(f"other work on the machine during each size (CPU cores of {os.cpu_count()} busy outside the lab; above "
          f"~0.2 it skewed the figures): {busy}")
    print("samples: " + "; ".join(f"{s}: remote {summ[s]['remote_n']} ({summ[s]['remote_timeouts']} timeouts), "
                                  f"ADD {summ[s]['add_n']}, selector {summ[s]['selector_n']}" for s in sizes))
    print(f"resolution: ipset membership polled every {resolution['poll_ms']:.2f} ms on average (one netlink test "
          f"{resolution['test_us']:.0f} us); chains every {args.poll_ms} ms (+ the GETCHAIN calls); selector sets "
          f"every 2 ms; CPU read in {1000 / TICK:.0f} ms ticks, so +-{1000 / TICK:.0f} ms per process over all "
          f"the cost changes (--cost-changes {args.cost_changes}, fewer if --cost-budget ran out); p99 is "
          f"nearest-rank (with 20 samples: the maximum); a timeout (> {args.timeout} s) counts as infinite")


def plot(summ: dict[int, dict], path: Path, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(summ)

    def series(key: str) -> list[float]:
        """Missing and timed-out figures are gaps; values <= 0 (before the write returned) drawn at 0.01."""
        return [math.nan if summ[s].get(key) in (None, math.inf) else max(summ[s][key], 0.01) for s in sizes]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for key, label, style in (("remote_p50_ms", "remote change -> ipset p50", "o-"),
                              ("remote_p99_ms", "remote change -> ipset p99", "o--"),
                              ("floor_p50_ms", "bare etcd watch p50 (floor)", "s-"),
                              ("floor_p99_ms", "bare etcd watch p99 (floor)", "s--"),
                              ("add_p50_ms", "local ADD -> rules p50", "^-"),
                              ("selector_p50_ms", "selector change -> in force p50", "v-")):
        ax.plot(sizes, series(key), style, label=label)
    ax.axhline(20, color="grey", lw=0.8, ls=":")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="endpoints", ylabel="ms", title="latency")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.plot(sizes, series("etcd_bytes_per_change"), "o-", label="etcd bytes sent / remote change")
    ax.plot(sizes, [2 * v for v in series("value_bytes")], "k:", label="target: 2x value size")
    ax.set(xscale="log", yscale="log", xlabel="endpoints", ylabel="bytes", title="etcd traffic per change")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    ax.plot(sizes, series("cpu_ms_per_change"), "o-", label="calico-node CPU / remote change (ms)")
    ax.plot(sizes, series("etcd_cpu_ms_per_change"), "s-", label="etcd CPU / remote change (ms)")
    ax.axhline(2, color="grey", lw=0.8, ls=":", label="target 2 ms")
    ax.set(xscale="log", yscale="log", xlabel="endpoints", ylabel="ms", title="CPU per change")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    ax.plot(sizes, series("rss_mb"), "o-", label="calico-node RSS (MB)")
    ax.plot(sizes, series("resync_s"), "s-", label="full resync (s)")
    ax.plot(sizes, series("etcd_requests_per_s_idle"), "^-", label="etcd requests/s at rest")
    ax.axhline(150, color="grey", lw=0.8, ls=":", label="RSS target 150 MB")
    ax.set(xscale="log", yscale="log", xlabel="endpoints", title="footprint")
    ax.legend(fontsize=7)
    fig.suptitle(f"calico-node at scale: {what} (log axes: a value <= 0 is drawn at 0.01)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, float) and math.isinf(obj):
        return "timeout"
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def main(argv: list[str]) -> int:
    if argv == ["--ns-helper"]:
        return helper_main()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000,20000,50000", help="endpoint counts, grown in this order")
    parser.add_argument("--changes", type=int, default=20, help="remote endpoint changes per size")
    parser.add_argument("--cost-changes", type=int, default=100,
                        help="back-to-back remote changes per size for CPU and etcd bytes per change (0: none)")
    parser.add_argument("--cost-budget", type=float, default=60.0, help="--budget of the back-to-back changes (s)")
    parser.add_argument("--adds", type=int, default=5, help="single local ADDs per size")
    parser.add_argument("--policy-changes", type=int, default=3, help="selector changes per size")
    parser.add_argument("--burst", type=int, default=100, help="pods in the burst (0: none)")
    parser.add_argument("--burst-size", type=int, default=20000, help="the size at which the burst runs")
    parser.add_argument("--burst-parallel", type=int, default=10, help="ADDs running at once in the burst")
    parser.add_argument("--burst-timeout", type=float, default=120.0, help="cap of the burst's wait (s)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of rest measured per size")
    parser.add_argument("--timeout", type=float, default=30.0, help="cap of each wait (s)")
    parser.add_argument("--settle-timeout", type=float, default=300.0, help="cap of catch-up and resync waits (s)")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="a phase stops taking samples after this many seconds (it keeps at least 5)")
    parser.add_argument("--poll-ms", type=float, default=1.0, help="ipset / chain polling period (ms)")
    parser.add_argument("--backend", default="bird", choices=("bird", "none"), help="calico-node's networking backend")
    parser.add_argument("--no-resync", action="store_true", help="skip the restart measurement")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    bundle = REPO / "dist" / "cni-calico"
    if not os.environ.get("CNI_CALICO_BIN") and not (bundle / "calico").exists():
        print(f"no bundle in {bundle}: run `make build` first", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: dict[int, dict] = {}
    with Lab() as lab:
        if not os.environ.get("CNI_CALICO_BIN"):  # a copy: a `make build` during the run must not swap builds
            args.bundle = f"{bundle} of {time.ctime(os.path.getmtime(bundle / 'calico'))}"
            shutil.copytree(bundle, lab.workdir / "bundle" / "cni-calico", symlinks=True)
            (lab.workdir / "bundle" / "bin").mkdir()
            for name in ("calico", "calico-ipam", "calico-node", "calicoctl"):
                os.symlink("../cni-calico/calico", lab.workdir / "bundle" / "bin" / name)
            os.environ["CNI_CALICO_BIN"] = str(lab.workdir / "bundle" / "bin")
        else:
            args.bundle = os.environ["CNI_CALICO_BIN"]
        args.repo_head = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
        print(f"measuring {args.bundle} (repo HEAD {args.repo_head})", flush=True)
        os.environ["CALICO_RUN_DIR"] = str(lab.workdir / "plugin-run")  # in-process fallback's lock: not /var/run
        bench = Bench(lab, args)
        try:
            bench.write_base()
            for i, size in enumerate(sizes):
                results[size] = bench.measure(size, first=i == 0)
        except BaseException:
            if bench.node is not None:
                print(f"calico-node log (tail):\n{bench.node.log()[-3000:]}", file=sys.stderr)
            raise
        finally:
            periods = [r["remote"]["poll_period_ms"] for r in results.values() if r["remote"]["poll_period_ms"]]
            resolution = {"poll_ms": statistics.mean(periods) if periods else math.nan,
                          "test_us": bench.calibration.get("ipset_test_us", math.nan)}
            bench.probe.close()
            bench.etcd.close()
    summ = summary(results)
    print_table(summ, args, resolution)
    print(f"total run time {time.monotonic() - started:.0f} s")
    out = REPO / "dist" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(_jsonable({
        "config": vars(args) | {"sizes": sizes}, "targets": TARGETS, "calibration": bench.calibration,
        "resolution": resolution, "summary": summ, "raw": results}), indent=2))
    plot(summ, out / "scale.png", f"{args.bundle} (repo HEAD {args.repo_head})")
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
