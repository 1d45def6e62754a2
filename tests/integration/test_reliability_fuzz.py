"""Issue 6, property 7: fuzzing `calico` and `calico-ipam` with configs, CNI_ARGS, env and stdin bytes.

Whatever the input, the plugin exits with exactly one JSON document on stdout — a result (or
nothing, for DEL/CHECK/STATUS/GC) with status 0, or an error {cniVersion, code, msg, details}
with status 1 — never a traceback or stray line there, never code 999 (an unexpected exception),
never a hang, and never a leak: an ADD that succeeded is DELeted with the same input, and after
every ADD case no cali link, handle or endpoint is left (at the end: no allocation either).
Nothing lost either: a sentinel pod stays up through the whole in-process run, every GC case's
attachment list names it (when the list is a list), and no case may take its address.

Most cases run in-process in a driver that lives in a node namespace (tests/fuzz/driver.py),
so the dataplane the cases build lands there; hypothesis draws them in this process
(tests/fuzz/cases.py keeps every path they name inside the sandbox). A few hundred more run
through the real executables, four at a time. FUZZ_CASES / FUZZ_EXEC_CASES change the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from cni_calico.datastore import Datastore, EtcdConf
from cni_calico.versions import SUPPORTED_VERSIONS
from tests.fuzz.cases import POOL, POOL_CIDR, Case, Sandbox, cases
from tests.fuzz.driver import Driver
from tests.integration.helpers import ENDPOINTS, HANDLES, allocated
from tests.lab import Lab, add_pool, free_port, plugin_dir

pytestmark = pytest.mark.reliability

IN_PROCESS = int(os.environ.get("FUZZ_CASES", "2500"))
EXECUTABLES = int(os.environ.get("FUZZ_EXEC_CASES", "160"))
HANG = 30.0  # seconds: a case still running then is a hang (the driver's etcd deadline is 1.5 s)
WORKERS = 4
NODE = "fuzz1"
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}


def check_reply(case: Case, status: int, stdout: str, stray: str = "") -> list[str]:
    """What is wrong with one invocation's answer ([] when it is a valid CNI answer)."""
    problems = []
    if stray:
        problems.append(f"stray output on stdout: {stray[:300]!r}")
    if "Traceback" in stdout:
        problems.append("a traceback on stdout")
    if status not in (0, 1):
        problems.append(f"exit status {status}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    if status == 0 and not lines:
        if case.command in ("ADD", "VERSION"):
            problems.append(f"{case.command} succeeded with nothing on stdout")
        return problems
    if len(lines) != 1:
        return [*problems, f"{len(lines)} lines on stdout: {stdout[:300]!r}"]
    try:
        doc = json.loads(lines[0])
    except ValueError:
        return [*problems, f"stdout is not JSON: {stdout[:300]!r}"]
    if not isinstance(doc, dict) or doc.get("cniVersion") not in SUPPORTED_VERSIONS:
        return [*problems, f"no supported cniVersion in {stdout[:300]!r}"]
    if status == 1:
        if set(doc) != ERROR_KEYS or not isinstance(doc["code"], int) or not isinstance(doc["msg"], str) \
                or not doc["msg"] or not isinstance(doc["details"], str):
            problems.append(f"not a CNI error document: {doc}")
        elif doc["code"] == 999:
            problems.append(f"internal error (an unexpected exception): {doc['msg']}")
    elif case.command == "VERSION":
        if set(doc) != {"cniVersion", "supportedVersions"}:
            problems.append(f"not a VERSION answer: {doc}")
    elif case.command == "ADD":
        if not ({"ips", "ip4", "ip6"} & set(doc)) or "code" in doc:
            problems.append(f"not an ADD result: {doc}")
    else:
        problems.append(f"{case.command} printed {stdout[:200]!r}")
    return problems


def _check_after_add(case: Case, result: str) -> Case | None:
    """CHECK with the ADD's input (and its result as prevResult), for configs that may ask for CHECK."""
    try:
        doc = json.loads(case.stdin)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("cniVersion") not in ("0.4.0", "1.0.0", "1.1.0"):
        return None
    if case.plugin == "calico":
        doc = {**doc, "prevResult": json.loads(result)}
    return Case(case.plugin, {**case.env, "CNI_COMMAND": "CHECK"}, json.dumps(doc).encode())


def _code(status: int, stdout: str) -> str:
    if status == 0:
        return "ok"
    try:
        return str(json.loads(stdout)["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


@pytest.fixture
def fuzz_node(lab, etcd, tmp_path):
    add_pool(etcd, POOL, POOL_CIDR, 26)
    add_pool(etcd, "fuzzoff", "10.78.0.0/24", disabled=True)
    node = lab.node(etcd, index=11)
    pods = [lab.pod() for _ in range(2 * WORKERS)]
    ds = Datastore(EtcdConf([etcd.url]))
    try:
        yield node, pods, ds
    finally:
        ds.close()
        for ns in [*pods, node]:
            lab.remove_netns(ns)


def _leftovers(lab: Lab, node: str, ds: Datastore, keep: str = "") -> list[str]:
    """cali links, handles and endpoints on the node and in etcd (but the sentinel's, `keep`)."""
    found = [f"link {link}" for link in lab.links(node) if link.startswith("cali") and link != f"cali{keep[:11]}"]
    found += [f"key {kv.key}" for kv in ds.list(HANDLES, keys_only=True) + ds.list(ENDPOINTS, keys_only=True)
              if not keep or keep not in kv.key]
    return found


SENTINEL = "sentinel00000001"
ATTACHMENTS = "cni.dev/valid-attachments"


def _naming_sentinel(case: Case) -> Case:
    """A GC case whose attachment list (a list, or none at all) names the sentinel, as a runtime would."""
    if case.command != "GC":
        return case
    try:
        doc = json.loads(case.stdin)
    except ValueError:
        return case
    if not isinstance(doc, dict):
        return case
    entry = {"containerID": SENTINEL, "ifname": "eth0"}
    if ATTACHMENTS not in doc:
        doc[ATTACHMENTS] = [entry]
    elif isinstance(doc[ATTACHMENTS], list):
        doc[ATTACHMENTS] = [*doc[ATTACHMENTS], entry]
    else:
        return case  # malformed: refused, or at least the sentinel survives
    return Case(case.plugin, case.env, json.dumps(doc).encode())


def _assert_clean_end(lab: Lab, node: str, pods: list[str], etcd, ds: Datastore) -> None:
    assert _leftovers(lab, node, ds) == []
    assert allocated(etcd) == []
    for pod in pods:
        assert lab.links(pod) == ["lo"], (pod, lab.links(pod))


def test_fuzz_in_process(lab, etcd, fuzz_node, make_pod, tmp_path, record_property):
    node, pods, ds = fuzz_node
    sb = Sandbox.make(str(tmp_path / "sandbox"), etcd.url, f"http://127.0.0.1:{free_port()}", NODE,
                      [Lab.netns_path(p) for p in pods], str(tmp_path / "run"), plugin_dir())
    sentinel_pod = make_pod()
    sentinel_conf = json.dumps({"cniVersion": "1.1.0", "name": "net1", "type": "calico", "etcd_endpoints": etcd.url,
                                "log_file_path": sb.files["log"], "nodename": NODE,
                                "ipam": {"type": "calico-ipam"}}).encode()
    sentinel_env = {"PATH": os.environ.get("PATH", ""), "CNI_CONTAINERID": SENTINEL, "CNI_IFNAME": "eth0",
                    "CNI_NETNS": Lab.netns_path(sentinel_pod), "CNI_PATH": sb.cni_path, "CALICO_RUN_DIR": sb.run_dir}
    sentinel_handle = f"{HANDLES}net1.{SENTINEL}"
    stats: Counter = Counter()
    messages: Counter = Counter()  # FUZZ_DEBUG=1: the errors' first words, to tune the strategies
    slowest = [0.0]
    started = time.monotonic()
    with Driver(node, str(tmp_path / "driver.err"), rpc_timeout=0.5, deadline=1.5) as driver:

        def run(case: Case) -> dict:
            reply = driver.run(case.plugin, case.env, case.stdin, timeout=HANG)
            slowest[0] = max(slowest[0], reply["seconds"])
            return reply

        def sentinel(command: str) -> None:
            reply = driver.run("calico", {**sentinel_env, "CNI_COMMAND": command}, sentinel_conf, timeout=HANG)
            assert reply["status"] == 0, reply

        sentinel("ADD")

        @settings(max_examples=IN_PROCESS, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(case=cases(sb).map(_naming_sentinel))
        def fuzz(case: Case) -> None:
            reply = run(case)
            stats["cases"] += 1
            stats[f"{case.plugin} {case.command or '-'} {_code(reply['status'], reply['stdout'])}"] += 1
            problems = check_reply(case, reply["status"], reply["stdout"], reply["stray"])
            if os.environ.get("FUZZ_DEBUG") and reply["status"]:
                messages[f"{case.command} {reply['stdout'][:110]}"] += 1
            if case.command == "ADD" and reply["status"] == 0:
                check = _check_after_add(case, reply["stdout"])
                if check is not None:
                    checked = run(check)
                    stats["cases"] += 1
                    stats["checks-after-add"] += 1
                    if checked["status"] != 0 or checked["stdout"] or checked["stray"]:
                        problems.append(f"CHECK right after the ADD failed: {checked}")
                undo = run(Case(case.plugin, {**case.env, "CNI_COMMAND": "DEL"}, case.stdin))
                stats["cases"] += 1
                stats["successful ADDs"] += 1
                if undo["status"] != 0 or undo["stdout"] or undo["stray"]:
                    problems.append(f"DEL with the ADD's own input failed: {undo}")
            if case.command == "ADD":
                problems += [f"left behind: {x}" for x in _leftovers(lab, node, ds, keep=SENTINEL)]
            if ds.get(sentinel_handle) is None:
                problems.append("the sentinel pod's address was taken")
                sentinel("DEL")
                sentinel("ADD")
            assert problems == [], (case, reply)

        fuzz()
        assert lab.ping(node, ds.get(f"{ENDPOINTS}default/{NODE}-cni-{SENTINEL}-eth0").value["spec"]["ipNetworks"][0]
                        .split("/")[0])
        sentinel("DEL")
    _assert_clean_end(lab, node, [*pods, sentinel_pod], etcd, ds)
    figures = {"cases": stats["cases"], "successful_adds": stats["successful ADDs"],
               "checks_after_add": stats["checks-after-add"],
               "seconds": round(time.monotonic() - started, 1), "slowest_case_s": round(slowest[0], 2),
               "outcomes": dict(sorted((k, v) for k, v in stats.items() if k.count(" ") == 2))}
    print("\nRELIABILITY fuzz-in-process", json.dumps(figures))
    for message, n in messages.most_common(40):
        print(f"{n:5d} {message}")
    record_property("fuzz_in_process", json.dumps(figures))


@pytest.mark.parametrize("attachments", [
    {"containerID": "live0000000000001", "ifname": "eth0"}, "live0000000000001",
    [{"containerId": "live0000000000001"}], {}])
def test_gc_refuses_a_malformed_attachment_list(attachments, lab, node, make_pod, pool, conf, etcd):
    """Read loosely, a malformed list would make every live attachment look stale (and release it)."""
    netconf, pod = conf(version="1.1.0"), make_pod()
    assert Lab.run_plugin(node, "ADD", netconf, "live0000000000001", Lab.netns_path(pod)).rc == 0
    gc = Lab.run_plugin(node, "GC", {**netconf, ATTACHMENTS: attachments})
    assert gc.rc == 1 and gc.out["code"] == 7 and "valid-attachments" in gc.out["msg"], gc.stdout
    assert etcd.keys(HANDLES) == [f"{HANDLES}net1.live0000000000001"] and len(etcd.keys(ENDPOINTS)) == 1
    assert Lab.run_plugin(node, "DEL", netconf, "live0000000000001", Lab.netns_path(pod)).rc == 0


def _exec(node: str, case: Case, timeout: float = HANG) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", node, os.path.join(plugin_dir(), case.plugin)], input=case.stdin,
                          env=case.env, capture_output=True, timeout=timeout)


def test_fuzz_through_the_executables(lab, etcd, fuzz_node, tmp_path, record_property):
    node, pods, ds = fuzz_node
    # The executables keep the datastore's real 10 s deadline: here "unreachable" is reachable.
    sb = Sandbox.make(str(tmp_path / "sandbox"), etcd.url, etcd.url, NODE, [Lab.netns_path(p) for p in pods],
                      str(tmp_path / "run"), plugin_dir())
    drawn: list[Case] = []

    @settings(max_examples=EXECUTABLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases(sb))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    # One worker per veth name (a container ID's first 11 characters), with its own two pods.
    queues: list[list[Case]] = [[] for _ in range(WORKERS)]
    for case in drawn:
        w = sum(case.env.get("CNI_CONTAINERID", "")[:11].encode()) % WORKERS
        netns = case.env.get("CNI_NETNS")
        if netns in sb.pods:
            case.env["CNI_NETNS"] = sb.pods[2 * w + sb.pods.index(netns) % 2]
        queues[w].append(case)

    def work(queue: list[Case]) -> tuple[list, Counter]:
        problems, stats = [], Counter()
        for case in queue:
            try:
                done = _exec(node, case)
            except subprocess.TimeoutExpired:
                problems.append((case, f"hung for more than {HANG} s"))
                continue
            out = done.stdout.decode(errors="replace")
            stats[f"{case.plugin} {case.command or '-'} {_code(done.returncode, out)}"] += 1
            found = check_reply(case, done.returncode, out)
            if case.command == "ADD" and done.returncode == 0:
                stats["successful ADDs"] += 1
                undo = _exec(node, Case(case.plugin, {**case.env, "CNI_COMMAND": "DEL"}, case.stdin))
                if undo.returncode != 0 or undo.stdout:
                    found.append(f"DEL with the ADD's own input failed: {undo.stdout!r}")
            if found:
                problems.append((case, found, done.stderr.decode(errors="replace")[-800:]))
        return problems, stats

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as ex:
        results = list(ex.map(work, queues))
    problems = [p for ps, _ in results for p in ps]
    stats = sum((s for _, s in results), Counter())
    assert problems == []
    _assert_clean_end(lab, node, pods, etcd, ds)
    figures = {"cases": len(drawn) + stats["successful ADDs"], "successful_adds": stats["successful ADDs"],
               "seconds": round(time.monotonic() - started, 1),
               "outcomes": dict(sorted((k, v) for k, v in stats.items() if k.count(" ") == 2))}
    print("\nRELIABILITY fuzz-executables", json.dumps(figures))
    record_property("fuzz_executables", json.dumps(figures))


# --- what the fuzzer found, pinned (pure: nothing runs past validation) -----------------------


def test_found_an_etcd_port_out_of_range_is_a_config_error():
    from cni_calico.errors import CniError
    from cni_calico.netconf import parse_etcd

    for url in ("http://h:99999", "http://127.0.0.1:0", "http://[::1]:65536/"):
        with pytest.raises(CniError) as err:
            parse_etcd({"etcd_endpoints": url}, {})
        assert err.value.code == 7 and "port" in err.value.msg
    assert parse_etcd({"etcd_endpoints": "http://127.0.0.1:65535"}, {}).endpoints == ["http://127.0.0.1:65535"]


def test_found_an_ifname_is_measured_in_bytes():
    from cni_calico import plugin, skel
    from cni_calico.host import PluginHost

    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent", "CNI_PATH": "/nonexistent",
           "CNI_IFNAME": "\u00e9" * 8}  # 8 characters, 16 bytes: the kernel answered ERANGE (code 999 then)
    status, out = skel.execute(plugin.handlers(PluginHost()), env, b'{"cniVersion": "1.0.0", "name": "n"}')
    assert status == 1 and json.loads(out)["code"] == 4 and "15 bytes" in json.loads(out)["msg"]


def test_found_a_percent_in_the_ifname_is_refused():
    from cni_calico import plugin, skel
    from cni_calico.host import PluginHost

    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent", "CNI_PATH": "/nonexistent",
           "CNI_IFNAME": "%d"}  # the kernel named the link "0" and the CHECK right after the ADD found no "%d"
    status, out = skel.execute(plugin.handlers(PluginHost()), env, b'{"cniVersion": "1.0.0", "name": "n"}')
    assert status == 1 and json.loads(out)["code"] == 4 and "'%' makes the kernel choose" in json.loads(out)["msg"]
