"""Hypothesis strategies for CNI invocations: configs (valid, mutated, broken), CNI_ARGS, env, stdin.

Every case is safe to run on this machine: whatever the fuzzer draws, paths the plugin would
read, write or enter are mapped onto the sandbox's own (`Sandbox`): the log file, the lock
directory, the node-name file, certificate and kubeconfig files, CNI_PATH (a directory holding
only `calico-ipam`) and CNI_NETNS (the lab's pod namespaces, or paths that are no namespace).
A string that names anything else that exists is replaced, so no case can make the plugin
enter a foreign namespace or touch the machine's files. Env values carry no NUL (no runtime
can pass one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from hypothesis import strategies as st

from cni_calico.versions import SUPPORTED_VERSIONS
from tests.lab import REPO

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
FAULT_POINTS = ("after-ipam", "after-endpoint", "after-dataplane")
POOL = "fuzzpool"
POOL_CIDR = "10.77.0.0/16"
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@dataclass
class Sandbox:
    """What cases may point at; everything else is mapped onto these."""

    etcd_url: str
    unreachable_url: str  # a port in the node namespace where nothing listens
    node: str  # the Calico node name of the fuzzing node
    pods: list[str]  # netns paths of the lab's pods the fuzzer may network
    workdir: str
    run_dir: str
    cni_path: str  # holds only calico-ipam
    files: dict[str, str] = field(default_factory=dict)  # role -> path

    @classmethod
    def make(cls, workdir: str, etcd_url: str, unreachable_url: str, node: str, pods: list[str],
             run_dir: str, plugin_dir: str) -> Sandbox:
        os.makedirs(workdir, exist_ok=True)
        cni_path = os.path.join(workdir, "cni-bin")
        os.makedirs(cni_path, exist_ok=True)
        link = os.path.join(cni_path, "calico-ipam")
        if not os.path.lexists(link):
            os.symlink(os.path.join(plugin_dir, "calico-ipam"), link)
        files = {
            "log": os.path.join(workdir, "fuzz.log"),
            "missing": os.path.join(workdir, "no-such-file"),
            "empty": os.path.join(workdir, "empty"),
            "garbage": os.path.join(workdir, "garbage"),
            "dir": os.path.join(workdir, "a-dir"),
            "nodename": os.path.join(workdir, "nodename"),
        }
        open(files["empty"], "w").close()
        with open(files["garbage"], "wb") as f:
            f.write(b"\x00\xffnot a certificate {\n" * 3)
        os.makedirs(files["dir"], exist_ok=True)
        with open(files["nodename"], "w") as f:
            f.write(node + "\n")
        return cls(etcd_url, unreachable_url, node, pods, workdir, run_dir, cni_path, files)

    def safe_file(self, value: object) -> object:
        """A path-valued field: our files stay, other strings become the missing file."""
        if isinstance(value, str) and value not in self.files.values():
            return self.files["missing"]
        return value

    def safe_netns(self, value: str) -> str:
        """The lab's pods and our non-namespaces stay; any other existing path (even one relative
        to the driver's directory) becomes the missing file: no case enters a foreign namespace."""
        allowed = {*self.pods, self.files["missing"], self.files["empty"], self.files["dir"], ""}
        if value in allowed:
            return value
        if os.path.lexists(value) or os.path.lexists(os.path.join(REPO, value)) or "/proc" in value:
            return self.files["missing"]
        return value


def mostly(good, bad, one_in: int = 8):
    """`good`, except one draw in `one_in` from `bad` (hypothesis alone would pick each side half the time)."""
    return st.integers(0, one_in - 1).flatmap(lambda n: bad if n == 0 else good)


# --- JSON values and configs --------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(TEXT, max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(TEXT, max_size=8), inner, max_size=3), max_leaves=6)
names = st.sampled_from(["net1", "fuzz", "k8s-pod-network", "a", "x.y_z-1"]) | st.text(TEXT, min_size=0, max_size=10)


def _result(draw) -> dict:
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    if version in ("0.1.0", "0.2.0"):
        return {"cniVersion": version, "ip4": {"ip": draw(st.sampled_from(["10.77.0.1/32", "bogus", "10.77.0.1"]))}}
    return {"cniVersion": version, "interfaces": [{"name": "cali1", "mac": "ee:ee:ee:ee:ee:ee"}],
            "ips": [{"address": draw(st.sampled_from(["10.77.0.1/32", "::1/128", "nonsense", ""])),
                     **({"version": "4"} if version < "1.0.0" else {}), "interface": draw(st.integers(-1, 3))}]}


@st.composite
def base_config(draw, sb: Sandbox) -> dict:
    """A config that would work, with optional extras drawn from the keys the plugin reads."""
    conf: dict = {
        "cniVersion": draw(st.sampled_from(SUPPORTED_VERSIONS[2:] * 3 + SUPPORTED_VERSIONS[:2])),
        "name": draw(st.sampled_from(["net1"] * 4 + ["fuzz", "k8s-pod-network"])),
        "type": "calico",
        "etcd_endpoints": draw(st.sampled_from([sb.etcd_url] * 10 + [
            f"{sb.unreachable_url},{sb.etcd_url}", f"{sb.etcd_url},{sb.unreachable_url}", sb.unreachable_url])),
        "log_level": draw(st.sampled_from(["debug", "info", "warning", "error", "INFO", "fatal"])),
        "log_file_path": sb.files["log"],
        "nodename": draw(st.sampled_from([sb.node] * 6 + ["fuzz-other", ""])),
        "nodename_file": draw(st.sampled_from([sb.files["nodename"], sb.files["missing"]])),
        "ipam": {"type": "calico-ipam"},
    }
    ipam = conf["ipam"]
    if draw(st.booleans()):
        ipam["assign_ipv4"] = draw(st.sampled_from(["true", "false", True, False, "maybe"]))
    if draw(st.integers(0, 4)) == 0:
        ipam["assign_ipv6"] = draw(st.sampled_from(["true", "false", True, False]))
    if draw(st.booleans()):
        ipam["ipv4_pools"] = draw(st.sampled_from([[POOL], [POOL_CIDR], ["nope"], [], ["fuzzoff"], ["10.1.0.0/33"],
                                                   [POOL, POOL], "fuzzpool"]))
    if draw(st.integers(0, 5)) == 0:
        ipam["type"] = draw(st.sampled_from(["calico-ipam", "no-such-ipam", "", "host local", "../calico-ipam"]))
    if draw(st.booleans()):
        conf["mtu"] = draw(st.sampled_from([1500, 1400, 68, 0, 9000, 67, 70000, "1500", -1, 1500.5, True]))
    if draw(st.integers(0, 3)) == 0:
        conf["container_settings"] = {"allow_ip_forwarding": draw(st.sampled_from([True, False, "true", "no"]))}
    if draw(st.integers(0, 5)) == 0:
        conf["kubernetes"] = {"kubeconfig": draw(st.sampled_from(list(sb.files.values())))}
    if draw(st.integers(0, 6)) == 0:
        conf["policy"] = {"type": draw(st.sampled_from(["k8s", "", "none"]))}
    if draw(st.integers(0, 4)) == 0:
        conf["prevResult"] = _result(draw)
    if draw(st.integers(0, 5)) == 0:
        conf["cni.dev/valid-attachments"] = draw(st.lists(
            st.fixed_dictionaries({"containerID": st.text(TEXT, max_size=8), "ifname": st.just("eth0")})
            | json_values, max_size=3))
    if draw(st.integers(0, 6)) == 0:
        for key in draw(st.sets(st.sampled_from(["etcd_key_file", "etcd_cert_file", "etcd_ca_cert_file"]))):
            conf[key] = draw(st.sampled_from(list(sb.files.values())))
    if draw(st.integers(0, 8)) == 0:
        conf["etcd_endpoints"] = draw(st.sampled_from(["", "127.0.0.1:2379", "http://", "http://h:99999", "ftp://x",
                                                       "http://[::1]:1", " , ", f"{sb.etcd_url}/v3/path"]))
    return conf


@st.composite
def mutated_config(draw, sb: Sandbox) -> dict:
    """A base config with 0-4 random edits: keys dropped, values replaced by any JSON, keys added."""
    conf = draw(base_config(sb))
    for _ in range(draw(mostly(st.just(0), st.integers(1, 4), one_in=2))):
        target = conf["ipam"] if isinstance(conf.get("ipam"), dict) and draw(st.booleans()) else conf
        op = draw(st.sampled_from(["drop", "replace", "add"]))
        keys = sorted(target)
        if op == "drop" and keys:
            target.pop(draw(st.sampled_from(keys)))
        elif op == "replace" and keys:
            target[draw(st.sampled_from(keys))] = draw(json_values)
        else:
            target[draw(st.text(TEXT, max_size=10) | st.sampled_from(["ipam", "kubernetes", "policy", "mtu"]))] = (
                draw(json_values))
    return make_safe(conf, sb)


def make_safe(conf: dict, sb: Sandbox) -> dict:
    """Maps every path the plugin could read or write onto the sandbox (see the module docstring)."""
    if isinstance(conf.get("log_file_path"), str) or "log_file_path" not in conf:
        conf["log_file_path"] = sb.files["log"]  # never the default /var/log/calico/cni/cni.log
    for key in ("nodename_file", "etcd_key_file", "etcd_cert_file", "etcd_ca_cert_file"):
        if key in conf:
            conf[key] = sb.safe_file(conf[key])
    if "nodename_file" not in conf:
        conf["nodename_file"] = sb.files["missing"]
    kube = conf.get("kubernetes")
    if isinstance(kube, dict) and "kubeconfig" in kube:
        kube["kubeconfig"] = sb.safe_file(kube["kubeconfig"])
    return conf


# --- env and stdin ----------------------------------------------------------------------------

container_ids = mostly(st.integers(0, 2**64).map(lambda n: f"{n:016x}"),
                       st.sampled_from(["", "-leading-dash", "a/b", "..", "a..b", "x" * 300, "UPPER_case.ok-1"])
                       | st.text(TEXT, max_size=20))
cni_args = mostly(
    st.sampled_from(["", "", "IgnoreUnknown=1", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
                     "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-1;K8S_POD_NAME=pod.a;K8S_POD_INFRA_CONTAINER_ID=abc"]),
    st.lists(st.tuples(st.sampled_from(["K8S_POD_NAME", "K8S_POD_NAMESPACE", "IgnoreUnknown",
                                        "K8S_POD_INFRA_CONTAINER_ID", "IP", "X"]) | st.text(TEXT, max_size=6),
                       st.text(TEXT, max_size=12)), max_size=4).map(lambda kvs: ";".join(f"{k}={v}" for k, v in kvs))
    | st.sampled_from(["novalue", "=x", ";;", "K8S_POD_NAME=a=b"]) | st.text(TEXT, max_size=30),
    one_in=4)


@st.composite
def env(draw, sb: Sandbox, command: str | None = None) -> dict[str, str]:
    out = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command or draw(mostly(st.sampled_from(["ADD"] * 6 + ["DEL"] * 2 + ["CHECK", "GC", "STATUS"]),
                                              st.sampled_from(["VERSION", "", "add", "NOPE"]), one_in=12)),
        "CNI_CONTAINERID": draw(container_ids),
        "CNI_NETNS": sb.safe_netns(draw(mostly(st.sampled_from(sb.pods),
                                               st.sampled_from([sb.files["missing"], sb.files["empty"],
                                                                sb.files["dir"], ""]) | st.text(TEXT, max_size=12)))),
        "CNI_IFNAME": draw(mostly(st.sampled_from(["eth0"] * 6 + ["net1", "e", "x" * 15, "a.b"]),
                                  st.sampled_from(["x" * 16, "a b", "a/b", ".", "", "eth0:1"])
                                  | st.text(TEXT, max_size=16))),
        "CNI_ARGS": draw(cni_args),
        "CNI_PATH": draw(mostly(st.sampled_from([sb.cni_path, f"{sb.files['missing']}:{sb.cni_path}"]),
                                st.sampled_from(["", sb.files["missing"]]))),
        "CALICO_RUN_DIR": sb.run_dir,
    }
    if draw(st.integers(0, 11)) == 0:
        out["CNI_CALICO_FAIL_AT"] = draw(st.sampled_from(FAULT_POINTS))
    if draw(st.integers(0, 9)) == 0:
        out["ETCD_ENDPOINTS"] = draw(st.sampled_from([sb.etcd_url, sb.unreachable_url, "garbage"]))
    if draw(st.integers(0, 11)) == 0:
        del out[draw(st.sampled_from(sorted(k for k in out if k.startswith("CNI_"))))]
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.sampled_from(["CNI_EXTRA", "K8S_POD_NAME", "HOME"]))] = draw(st.text(TEXT, max_size=8))
    return {k: v for k, v in out.items() if "\x00" not in v}


@st.composite
def stdin_for(draw, conf: dict) -> bytes:
    text = json.dumps(conf).encode()
    how = draw(mostly(st.just("as-is"), st.sampled_from(["truncated", "flipped", "random", "wrapped"]), one_in=6))
    if how == "truncated":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "flipped":
        data = bytearray(text)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(max_size=64))
    if how == "wrapped":
        return draw(st.sampled_from([b"[" + text + b"]", text + b"\n" + text, b"\xef\xbb\xbf" + text, text + b"\x00"]))
    return text


@dataclass
class Case:
    plugin: str
    env: dict[str, str]
    stdin: bytes

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")


@st.composite
def good_config(draw, sb: Sandbox) -> dict:
    """A config that works, varied only in ways that must all work."""
    conf: dict = {
        "cniVersion": draw(st.sampled_from(SUPPORTED_VERSIONS)),
        "name": draw(st.sampled_from(["net1", "fuzz", "k8s-pod-network"])),
        "type": "calico",
        "etcd_endpoints": draw(st.sampled_from([sb.etcd_url, f"{sb.etcd_url},{sb.unreachable_url}"])),
        "log_level": draw(st.sampled_from(["debug", "info", "warning"])),
        "log_file_path": sb.files["log"],
        "nodename_file": sb.files["nodename"],
        "ipam": {"type": "calico-ipam"},
    }
    if draw(st.booleans()):
        conf["nodename"] = sb.node
    if draw(st.booleans()):
        conf["ipam"]["ipv4_pools"] = draw(st.sampled_from([[POOL], [POOL_CIDR]]))
    if draw(st.booleans()):
        conf["mtu"] = draw(st.sampled_from([1500, 1400, 9000, 68]))
    if draw(st.booleans()):
        conf["container_settings"] = {"allow_ip_forwarding": draw(st.booleans())}
    return conf


GOOD_ENV = {"CNI_IFNAME": "eth0", "CNI_ARGS": ""}
BAD_ENV = {
    "CNI_COMMAND": st.sampled_from(["", "add", "NOPE", "VERSION", "STATUS", "GC", "CHECK"]),
    "CNI_CONTAINERID": st.sampled_from(["", "-x", "a/b", "..", "x" * 300, "a b"]) | st.text(TEXT, max_size=20),
    "CNI_IFNAME": st.sampled_from(["x" * 16, "a b", "a/b", ".", "", "eth0:1", "lo", "up0", "\u00e9" * 8])
    | st.text(TEXT, max_size=16),
    "CNI_ARGS": st.sampled_from(["novalue", "=x", "K8S_POD_NAME=web", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b/c"])
    | st.text(TEXT, max_size=30),
    "CNI_PATH": st.sampled_from(["", "/nonexistent"]),
}


@st.composite
def near_valid_case(draw, sb: Sandbox, plugin: str) -> Case:
    """A working invocation with at most one thing wrong: reaches the deep paths (IPAM, veth, rollback)."""
    conf = draw(good_config(sb))
    out = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": draw(st.sampled_from(["ADD"] * 4 + ["DEL", "CHECK", "GC", "STATUS"])),
        "CNI_CONTAINERID": f"{draw(st.integers(0, 2**64)):016x}",
        "CNI_NETNS": draw(st.sampled_from(sb.pods)),
        **GOOD_ENV,
        "CNI_PATH": sb.cni_path,
        "CALICO_RUN_DIR": sb.run_dir,
    }
    if out["CNI_COMMAND"] in ("CHECK", "GC", "STATUS") and draw(mostly(st.just(True), st.just(False), one_in=4)):
        conf["cniVersion"] = "1.1.0"  # older configs may not ask for these: mostly go past that check
    if draw(st.integers(0, 2)) == 0:
        out["CNI_ARGS"] = f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{out['CNI_CONTAINERID'][:6]}"
    what = draw(st.sampled_from(["nothing", "nothing", "config", "env", "stdin", "fault"]))
    if what == "config":
        target = conf["ipam"] if draw(st.booleans()) else conf
        key = draw(st.sampled_from(sorted(target)) | st.text(TEXT, max_size=8))
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(json_values)
    elif what == "env":
        key = draw(st.sampled_from(sorted(BAD_ENV)))
        out[key] = draw(BAD_ENV[key])
    elif what == "fault":
        out["CNI_CALICO_FAIL_AT"] = draw(st.sampled_from(FAULT_POINTS))
    conf = make_safe(conf, sb)
    stdin = draw(stdin_for(conf)) if what == "stdin" else json.dumps(conf).encode()
    return Case(plugin, {k: v for k, v in out.items() if "\x00" not in v}, stdin)


@st.composite
def cases(draw, sb: Sandbox, plugin: str | None = None) -> Case:
    """Half near-valid invocations (one thing wrong at most), half wild ones (anything goes)."""
    chosen = plugin or draw(st.sampled_from(["calico"] * 3 + ["calico-ipam"]))
    if draw(st.booleans()):
        return draw(near_valid_case(sb, chosen))
    conf = draw(mutated_config(sb))
    return Case(chosen, draw(env(sb)), draw(stdin_for(conf)))
