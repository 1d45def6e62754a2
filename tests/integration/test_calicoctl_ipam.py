"""calicoctl ipam show/check/release and the IPAM clean-up of `delete node` / `delete ippool`, with real ADDs.

The plugin runs in node namespaces (fixtures `node`, `make_pod`, `pool`, `conf`). A leak is made by
SIGKILLing the plugin the moment its IPAM handle appears in etcd (an etcd watch tells). The plugin
now writes its WorkloadEndpoint in IPAM's own transaction, so the kill leaves the endpoint too; the
test then deletes that endpoint key, leaving exactly what a plugin killed between IPAM and the
endpoint write (or a delegated IPAM whose caller died) leaves: an address no endpoint claims.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import subprocess

import yaml

from tests.integration.helpers import ENDPOINTS, HANDLES, allocated
from tests.integration.test_calicoctl import run, write
from tests.lab import REFERENCE_CNI_DIR, Lab, plugin_dir

BLOCKS = "/calico/ipam/v2/assignment/ipv4/block/"
AFFINITY = "/calico/ipam/v2/host/"


def add(node: str, conf: dict, cid: str, pod: str) -> str:
    result = Lab.run_plugin(node, "ADD", conf, cid, Lab.netns_path(pod))
    assert result.rc == 0, result.stdout + result.stderr[-800:]
    return result.out["ips"][0]["address"].split("/")[0]


def delete(node: str, conf: dict, cid: str, pod: str) -> None:
    assert Lab.run_plugin(node, "DEL", conf, cid, Lab.netns_path(pod)).rc == 0


def add_killed_after_ipam(etcd, node: str, conf: dict, cid: str, pod: str) -> str:
    """Starts an ADD, SIGKILLs the plugin the moment its handle is in etcd, removes its endpoint: a leak."""
    handle_key = f"{HANDLES}{conf['name']}.{cid}"
    revision = json.loads(etcd.ctl("get", "/calico", "-w", "json"))["header"]["revision"]
    env_ctl = {**os.environ, "ETCDCTL_API": "3"}
    watch = subprocess.Popen(["etcdctl", "--endpoints", etcd.url, "watch", f"--rev={revision + 1}", handle_key],
                             stdout=subprocess.PIPE, text=True, env=env_ctl)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": cid, "CNI_NETNS": Lab.netns_path(pod), "CNI_IFNAME": "eth0", "CNI_ARGS": "",
           "CNI_PATH": f"{plugin_dir()}:{REFERENCE_CNI_DIR}", "CALICO_RUN_DIR": os.environ.get("CALICO_RUN_DIR", "")}
    plugin = subprocess.Popen(["ip", "netns", "exec", node, os.path.join(plugin_dir(), "calico")],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        plugin.stdin.write(json.dumps(conf).encode())
        plugin.stdin.close()
        ready, _, _ = select.select([watch.stdout], [], [], 30)
        assert ready, "the plugin's handle never appeared in etcd"
        plugin.kill()
    finally:
        plugin.kill()
        plugin.wait()
        watch.kill()
        watch.wait()
    endpoint = [k for k in etcd.keys(ENDPOINTS) if cid in k]
    for key in endpoint:  # written with the handle (or the plugin finished first): the leak is its absence
        etcd.ctl("del", key)
    handle = etcd.get_json(handle_key)
    assert handle is not None
    block = etcd.get_json(BLOCKS + next(iter(handle["block"])).replace("/", "-"))
    ordinal = next(i for i, a in enumerate(block["allocations"])
                   if a is not None and block["attributes"][a]["handle_id"] == f"{conf['name']}.{cid}")
    return str(ipaddress.ip_network(block["cidr"]).network_address + ordinal)


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_ipam_show(node, make_pod, pool, conf, etcd):
    cids = ["show0".ljust(16, "0"), "show1".ljust(16, "0")]
    pods = [make_pod(), make_pod()]
    ips = [add(node, conf(), cid, pod) for cid, pod in zip(cids, pods, strict=True)]
    r = run(etcd, "ipam", "show")
    assert r.returncode == 0, r.stderr
    # Real calicoctl's columns (ipam show's GetUtilization): IN USE, RESERVED, FREE.
    assert table_rows(r.stdout) == [["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"],
                                    ["IP Pool", "10.60.0.0/24", "256", "2 (1%)", "0 (0%)", "254 (99%)"]]
    assert r.stdout.splitlines()[0] == "+----------+--------------+-----------+------------+--------------+-----------+"
    etcd.put_json("/calico/resources/v3/projectcalico.org/ipreservations/r", {
        "kind": "IPReservation", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "r"},
        "spec": {"reservedCIDRs": ["10.60.0.60/30", "10.60.0.128/26"]}})
    rows = table_rows(run(etcd, "ipam", "show", "--show-blocks").stdout)
    assert rows[0] == ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"]
    assert rows[1:] == [["IP Pool", "10.60.0.0/24", "256", "2 (1%)", "68 (27%)", "186 (73%)"],
                        ["Block", "10.60.0.0/26", "64", "2 (3%)", "4 (6%)", "58 (91%)"]]
    etcd.ctl("del", "/calico/resources/v3/projectcalico.org/ipreservations/r")
    out = run(etcd, "ipam", "show", f"--ip={ips[1]}").stdout.splitlines()
    assert out[:3] == [f"IP {ips[1]} is in use", f"Handle ID: net1.{cids[1]}", "Active Owner Attributes:"]
    assert "  node: node1" in out and "containerID" not in "\n".join(out)  # Calico's: node, timestamp (k8s: pod...)
    assert any(re.fullmatch(r"  timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC", line) for line in out)
    assert "Block: 10.60.0.0/26 (affinity: node1)" in out
    assert out[-1] == f"Workload endpoint: WorkloadEndpoint(default/node1-cni-{cids[1]}-eth0)"
    assert run(etcd, "ipam", "show", "--ip=10.60.0.200").stdout == "10.60.0.200 is not assigned\n"
    r = run(etcd, "ipam", "show", "--ip=10.60.0.300")
    assert r.returncode == 1 and r.stderr == "invalid IP address: '10.60.0.300'\n"
    assert table_rows(run(etcd, "ipam", "show", "--show-configuration").stdout) == [
        ["PROPERTY", "VALUE"], ["StrictAffinity", "false"], ["AutoAllocateBlocks", "true"], ["MaxBlocksPerHost", "0"],
        ["IPCooldownSeconds", "0"]]
    for cid, pod in zip(cids, pods, strict=True):
        delete(node, conf(), cid, pod)


def test_check_finds_a_killed_add_and_release_frees_only_it(node, make_pod, pool, conf, etcd, tmp_path):
    live_cid, dead_cid = "live0".ljust(16, "0"), "dead0".ljust(16, "0")
    live_pod = make_pod()
    live = add(node, conf(), live_cid, live_pod)
    leaked = add_killed_after_ipam(etcd, node, conf(), dead_cid, make_pod())
    assert sorted(allocated(etcd)) == sorted([live, leaked])

    report = tmp_path / "report.json"
    r = run(etcd, "ipam", "check", "-o", str(report))
    assert r.returncode == 0, r.stderr
    assert f"  {leaked} leaked; handle net1.{dead_cid}, node node1, container {dead_cid}" in r.stdout
    assert "Found 1 IPs that are allocated in IPAM but not actually in use." in r.stdout
    assert "Check complete; found 1 problems." in r.stdout
    doc = json.loads(report.read_text())
    assert [(o["ip"], o["handle"], o["node"]) for o in doc["orphans"]] == [(leaked, f"net1.{dead_cid}", "node1")]
    assert doc["leakedHandles"] == [] and doc["endpointProblems"] == [] and doc["handleProblems"] == []

    r = run(etcd, "ipam", "release", "--from-report", str(report))
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"Releasing 1 leaked IPs from {report}...\n"
                        f"  {leaked} released (handle net1.{dead_cid}, node node1)\nReleased 1 IPs; skipped 0.\n")
    assert allocated(etcd) == [live]
    assert etcd.keys(HANDLES) == [f"{HANDLES}net1.{live_cid}"]
    assert "Check complete; found 0 problems." in run(etcd, "ipam", "check").stdout
    r = run(etcd, "ipam", "release", "--from-report", str(report))  # again: nothing left to do
    assert r.returncode == 0 and "skipped: handle net1." in r.stdout and allocated(etcd) == [live]
    delete(node, conf(), live_cid, live_pod)


def test_check_lists_a_cooling_address_apart_never_as_a_leak(node, make_pod, pool, conf, etcd, tmp_path):
    assert run(etcd, "ipam", "configure", "--ip-cooldown-seconds", "3600").returncode == 0
    try:
        cid, pod = "cool0".ljust(16, "0"), make_pod()
        ip = add(node, conf(), cid, pod)
        delete(node, conf(), cid, pod)
        report = tmp_path / "report.json"
        r = run(etcd, "ipam", "check", "--show-all-ips", "-o", str(report))
        assert r.returncode == 0, r.stderr
        assert "Found 0 IPs that are allocated in IPAM but not actually in use." in r.stdout
        assert "Found 1 IPs released and cooling down (ipCooldownSeconds); not leaks." in r.stdout
        assert re.search(rf"  {re.escape(ip)} cooling down since \d{{4}}-\d\d-\d\dT", r.stdout)
        assert "Check complete; found 0 problems." in r.stdout
        doc = json.loads(report.read_text())
        assert [(c["ip"], c["coolingDown"]) for c in doc["coolingDown"]] == [(ip, True)] and doc["orphans"] == []
    finally:
        run(etcd, "ipam", "configure", "--ip-cooldown-seconds", "0")


def test_release_from_report_rechecks_every_address(node, make_pod, pool, conf, etcd, tmp_path):
    cid = "back0".ljust(16, "0")
    pod = make_pod()
    ip = add(node, conf(), cid, pod)
    (key,) = etcd.keys(ENDPOINTS)
    endpoint = etcd.get_json(key)
    etcd.ctl("del", key)  # the endpoint is gone while the check runs...
    report = tmp_path / "report.json"
    assert run(etcd, "ipam", "check", "-o", str(report)).returncode == 0
    assert [o["ip"] for o in json.loads(report.read_text())["orphans"]] == [ip]
    etcd.put_json(key, endpoint)  # ...and back before the release: the address is in use again
    r = run(etcd, "ipam", "release", "--from-report", str(report))
    assert r.returncode == 0
    assert f"  {ip} skipped: in use by WorkloadEndpoint(default/node1-cni-{cid}-eth0) now" in r.stdout
    assert allocated(etcd) == [ip]

    doc = json.loads(report.read_text())
    stale = tmp_path / "old.json"
    stale.write_text(json.dumps(dict(doc, version="0.0.1")))
    r = run(etcd, "ipam", "release", "--from-report", str(stale))
    assert r.returncode == 1 and "written by calicoctl 0.0.1" in r.stderr and "--force" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"orphans": [{"ip": "x"}]}')
    r = run(etcd, "ipam", "release", "--from-report", str(bad))
    assert r.returncode == 1 and "is not a report of calicoctl ipam check" in r.stderr
    assert run(etcd, "ipam", "release").returncode == 1  # neither --ip nor --from-report
    assert allocated(etcd) == [ip]
    delete(node, conf(), cid, pod)


def test_release_ip_refuses_an_address_in_use(node, make_pod, pool, conf, etcd):
    cid = "rel0".ljust(16, "0")
    pod = make_pod()
    ip = add(node, conf(), cid, pod)
    r = run(etcd, "ipam", "release", f"--ip={ip}")
    assert r.returncode == 1
    assert r.stderr.startswith(f"IP address {ip} is in use by WorkloadEndpoint(default/node1-cni-{cid}-eth0)")
    assert allocated(etcd) == [ip]
    etcd.ctl("del", "--prefix", ENDPOINTS)
    r = run(etcd, "ipam", "release", f"--ip={ip}")
    assert (r.returncode, r.stdout) == (0, f"Successfully released IP address {ip}\n")
    assert allocated(etcd) == [] and etcd.keys(HANDLES) == []
    r = run(etcd, "ipam", "release", f"--ip={ip}")
    assert (r.returncode, r.stderr) == (1, f"IP address {ip} is not assigned\n")
    delete(node, conf(), cid, pod)


def test_check_reports_endpoint_and_handle_inconsistencies(etcd, tmp_path):
    etcd.put_json(f"{ENDPOINTS}prod/n9-cni-x-eth0", {
        "kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "n9-cni-x-eth0", "namespace": "prod"},
        "spec": {"node": "n9", "containerID": "x", "ipNetworks": ["10.61.0.9/32"]}})
    etcd.put_json(f"{HANDLES}net1.ghost", {"handleID": "net1.ghost", "block": {"10.61.0.0/26": 1}, "deleted": False})
    report = tmp_path / "report.json"
    r = run(etcd, "ipam", "check", "-o", str(report))
    assert "  10.61.0.9 in use by Workload(prod/n9-cni-x-eth0): not allocated in IPAM" in r.stdout
    assert "  handle net1.ghost holds no address in any block (leaked handle)" in r.stdout
    assert "Check complete; found 2 problems." in r.stdout
    doc = json.loads(report.read_text())
    assert doc["leakedHandles"] == [{"handle": "net1.ghost", "revision": doc["leakedHandles"][0]["revision"]}]
    r = run(etcd, "ipam", "release", "--from-report", str(report))
    assert "Deleted 1 leaked handles; skipped 0" in r.stdout
    assert etcd.keys(HANDLES) == []


def test_delete_node_releases_its_ipam_and_endpoints(lab, node, make_pod, pool, conf, etcd, tmp_path):
    other = lab.node(etcd, index=2)
    try:
        node_doc = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "node1"},
                    "spec": {"bgp": {"ipv4Address": "192.168.201.1/24"}}}
        peer = {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "node1-tor"},
                "spec": {"node": "node1", "peerIP": "192.168.201.254", "asNumber": 65001}}
        config = {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                  "metadata": {"name": "node.node1"}, "spec": {"logSeverityScreen": "Debug"}}
        assert run(etcd, "create", "-f", write(tmp_path, node_doc, peer, config)).returncode == 0
        mine = [("mine0".ljust(16, "0"), make_pod()), ("mine1".ljust(16, "0"), make_pod())]
        ips = [add(node, conf(), cid, pod) for cid, pod in mine]
        theirs = add(other, conf(node="node2"), "theirs0".ljust(16, "0"), make_pod())

        stale = yaml.safe_load(run(etcd, "get", "node", "node1", "-o", "yaml").stdout)
        assert run(etcd, "apply", "-f", write(tmp_path, dict(stale, spec={"bgp": {"asNumber": 65100}}))).returncode == 0
        r = run(etcd, "delete", "-f", write(tmp_path, stale))  # read before that change: refused, nothing cleaned
        assert r.returncode == 1 and "update conflict: Node(node1)" in r.stderr and len(allocated(etcd)) == 3

        r = run(etcd, "delete", "node", "node1")
        assert r.returncode == 0, r.stderr
        assert r.stdout == (f"Node(node1): released 2 addresses ({ips[0]}, {ips[1]}), deleted 2 WorkloadEndpoints, "
                            "released 1 block affinity, deleted 1 empty block, deleted 1 BGPPeer, "
                            "deleted 1 BGPConfiguration\nSuccessfully deleted 1 'Node' resource(s)\n")
        assert allocated(etcd) == [theirs]
        assert etcd.keys(f"{AFFINITY}node1/") == [] and etcd.get_json(BLOCKS + "10.60.0.0-26") is None
        assert etcd.keys(f"{AFFINITY}node2/") == [f"{AFFINITY}node2/ipv4/block/10.60.0.64-26"]
        assert [k.rsplit("/", 1)[1] for k in etcd.keys(ENDPOINTS)] == [f"node2-cni-{'theirs0'.ljust(16, '0')}-eth0"]
        assert etcd.keys(HANDLES) == [f"{HANDLES}net1.{'theirs0'.ljust(16, '0')}"]
        assert etcd.keys("/calico/resources/v3/projectcalico.org/bgp") == []
        assert "Check complete; found 0 problems." in run(etcd, "ipam", "check").stdout
        for cid, pod in mine:  # the runtime's DEL afterwards still succeeds
            delete(node, conf(), cid, pod)
        assert run(etcd, "delete", "node", "node1").returncode == 1  # gone
    finally:
        lab.remove_netns(other)


def test_delete_pool_refused_while_in_use_unless_forced(node, make_pod, pool, conf, etcd):
    pool_key = "/calico/resources/v3/projectcalico.org/ippools/pool1"
    cid, pod = "pool0".ljust(16, "0"), make_pod()
    ip = add(node, conf(), cid, pod)
    r = run(etcd, "delete", "ippool", "pool1")
    assert r.returncode == 1
    assert r.stderr == ("Failed to delete 'IPPool' resource: [cannot delete IPPool(pool1): 1 address of 10.60.0.0/24 "
                        "is still allocated (in 1 block); delete the workloads using them first (see calicoctl ipam "
                        "show --show-blocks), or use --force to delete the pool anyway (allocated addresses stay "
                        "valid until released)]\n")
    assert etcd.get_json(pool_key)["spec"]["disabled"] is False

    r = run(etcd, "delete", "ippool", "pool1", "--force")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("IPPool(pool1): released 1 block affinity, deleted 0 empty blocks, kept 1 "
                                        "block still holding addresses (now affine to no node)")
    assert etcd.get_json(pool_key) is None and etcd.keys(AFFINITY) == []
    assert etcd.get_json(BLOCKS + "10.60.0.0-26")["affinity"] is None and allocated(etcd) == [ip]
    rows = table_rows(run(etcd, "ipam", "show", "--show-blocks").stdout)
    assert rows[1:] == [["Block", "10.60.0.0/26", "64", "1 (2%)", "0 (0%)", "63 (98%)"]]  # no pool row: it is gone
    delete(node, conf(), cid, pod)
    assert allocated(etcd) == []


def test_delete_empty_pool_deletes_its_blocks(node, make_pod, pool, conf, etcd):
    cid, pod = "pool1".ljust(16, "0"), make_pod()
    add(node, conf(), cid, pod)
    delete(node, conf(), cid, pod)  # the block stays, empty and affine to node1
    assert etcd.keys(BLOCKS) == [BLOCKS + "10.60.0.0-26"]
    r = run(etcd, "delete", "ippool", "pool1")
    assert r.stdout == ("IPPool(pool1): released 1 block affinity, deleted 1 empty block\n"
                        "Successfully deleted 1 'IPPool' resource(s)\n")
    assert etcd.keys("/calico/ipam/") == [] and etcd.keys("/calico/resources/v3/projectcalico.org/ippools/") == []
