"""Bad input and failures: each gives a CNI error JSON on stdout, exits non-zero, and leaves nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.helpers import assert_nothing_left
from tests.lab import Lab, add_pool, free_port, sh

CID = "bad0000000000001"


def _assert_cni_error(run, code: int, words: str = "") -> None:
    assert run.rc != 0
    assert set(run.out) == {"cniVersion", "code", "msg", "details"}, run.stdout
    assert run.out["code"] == code, run.out
    assert words.lower() in run.out["msg"].lower(), run.out
    assert "Traceback" not in run.stdout
    assert len(run.stdout.strip().splitlines()) == 1  # stdout is the runtime's: one JSON document


def test_invalid_json(lab, node, make_pod, pool, etcd):
    run = Lab.run_plugin(node, "ADD", b"{not json", CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 6, "not valid JSON")
    assert_nothing_left(lab, node, etcd)


def test_missing_name(lab, node, make_pod, pool, conf, etcd):
    netconf = conf()
    del netconf["name"]
    _assert_cni_error(Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(make_pod())), 7, "name")
    assert_nothing_left(lab, node, etcd)


def test_unsupported_version(lab, node, make_pod, pool, conf, etcd):
    run = Lab.run_plugin(node, "ADD", conf(version="0.9.9"), CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 1, "0.9.9")
    assert "1.1.0" in run.out["details"]
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_COMMAND"])
def test_missing_env(missing, lab, node, make_pod, pool, conf, etcd):
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(make_pod()), extra_env={missing: None})
    if missing == "CNI_COMMAND":
        run = Lab.run_plugin(node, "", conf(), CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 4, missing)
    assert_nothing_left(lab, node, etcd)


def test_ifname_already_present(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    lab.in_ns(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", check=True)
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod))
    _assert_cni_error(run, 102, "already exists")
    assert_nothing_left(lab, node, etcd)
    assert "other0" in lab.links(pod)  # and what was there is untouched


def test_ifname_too_long(lab, node, make_pod, pool, conf, etcd):
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(make_pod()), ifname="a-very-long-ifname")
    _assert_cni_error(run, 4, "longer than 15")
    assert_nothing_left(lab, node, etcd)


def test_netns_not_a_namespace(lab, node, pool, conf, etcd, tmp_path):
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    _assert_cni_error(Lab.run_plugin(node, "ADD", conf(), CID, str(plain)), 4, "not a network namespace")
    _assert_cni_error(Lab.run_plugin(node, "ADD", conf(), CID, str(tmp_path / "nowhere")), 4, "does not exist")
    assert_nothing_left(lab, node, etcd)


def test_unknown_ipam_type(lab, node, make_pod, pool, conf, etcd):
    run = Lab.run_plugin(node, "ADD", conf(ipam={"type": "no-such-ipam"}), CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 7, "no-such-ipam")
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("name", ["../../etc", "node/1", "Node1", "a..b", "-node"])
def test_node_name_that_is_not_a_dns_name(name, lab, node, make_pod, pool, conf, etcd, tmp_path):
    # From the config and from the file calico-node writes: both end up in etcd keys and file names.
    run = Lab.run_plugin(node, "ADD", conf(nodename=name), CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 7, "not a lowercase DNS name")
    assert repr(name) in run.out["msg"]
    name_file = tmp_path / "nodename"
    name_file.write_text(name + "\n")
    netconf = conf(nodename_file=str(name_file))
    del netconf["nodename"]
    run = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 7, "not a lowercase DNS name")
    assert str(name_file) in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


def test_etcd_unreachable(lab, node, make_pod, conf, etcd):
    netconf = conf()
    netconf["etcd_endpoints"] = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    run = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(make_pod()))
    assert time.monotonic() - started < 30
    _assert_cni_error(run, 11, "unreachable")
    assert "127.0.0.1" in run.out["msg"]
    assert [link for link in lab.links(node) if link.startswith("cali")] == []


def test_pool_exhausted(lab, node, make_pod, conf, etcd):
    add_pool(etcd, "tiny", "10.61.0.0/30", 30)
    pods = [make_pod() for _ in range(5)]
    for i, pod in enumerate(pods[:4]):
        assert Lab.run_plugin(node, "ADD", conf(), f"full{i}".ljust(16, "0"), Lab.netns_path(pod)).rc == 0
    run = Lab.run_plugin(node, "ADD", conf(), "full4".ljust(16, "0"), Lab.netns_path(pods[4]))
    _assert_cni_error(run, 101, "10.61.0.0/30")
    assert "exhausted" in run.out["msg"]
    assert "eth0" not in lab.links(pods[4])
    for i, pod in enumerate(pods[:4]):
        assert Lab.run_plugin(node, "DEL", conf(), f"full{i}".ljust(16, "0"), Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_no_pool_at_all(lab, node, make_pod, conf, etcd):
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(make_pod()))
    _assert_cni_error(run, 101, "no enabled IP pool")
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("point", ["after-ipam", "after-dataplane", "after-endpoint"])
def test_failure_after_allocation_rolls_back(point, lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod), extra_env={"CNI_CALICO_FAIL_AT": point})
    _assert_cni_error(run, 100, point)
    assert_nothing_left(lab, node, etcd)
    assert "eth0" not in lab.links(pod)
    # And the same container can be added afterwards, as the runtime retries.
    assert Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod)).rc == 0
    assert Lab.run_plugin(node, "DEL", conf(), CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_del_of_unknown_container_succeeds(lab, node, conf, pool, etcd):
    run = Lab.run_plugin(node, "DEL", conf(), "never00000000001", "/var/run/netns/does-not-exist")
    assert run.rc == 0 and run.stdout == "", run.stdout + run.stderr


def test_version_command(lab, node):
    run = Lab.run_plugin(node, "VERSION", json.dumps({"cniVersion": "0.4.0"}))
    assert run.rc == 0
    assert run.out == {"cniVersion": "0.4.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0",
                                                                     "1.0.0", "1.1.0"]}


def test_status_and_gc(lab, node, make_pod, pool, conf, etcd):
    netconf = conf(version="1.1.0")
    assert Lab.run_plugin(node, "STATUS", netconf).rc == 0
    pods = [make_pod() for _ in range(3)]
    cids = [f"gc{i}".ljust(16, "0") for i in range(3)]
    for cid, pod in zip(cids, pods, strict=True):
        assert Lab.run_plugin(node, "ADD", netconf, cid, Lab.netns_path(pod)).rc == 0
    valid = [{"containerID": cids[0], "ifname": "eth0"}]
    gc = Lab.run_plugin(node, "GC", {**netconf, "cni.dev/valid-attachments": valid})
    assert gc.rc == 0, gc.stdout + gc.stderr
    handles = etcd.keys("/calico/ipam/v2/handle/")
    assert handles == [f"/calico/ipam/v2/handle/net1.{cids[0]}"]
    assert len(etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/")) == 1
    # STATUS says the plugin is unavailable when etcd is not there.
    down = Lab.run_plugin(node, "STATUS", {**netconf, "etcd_endpoints": f"http://127.0.0.1:{free_port()}"})
    _assert_cni_error(down, 50, "unreachable")
    for cid, pod in zip(cids, pods, strict=True):
        assert Lab.run_plugin(node, "DEL", netconf, cid, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_old_versions_refuse_status(lab, node, pool, conf):
    _assert_cni_error(Lab.run_plugin(node, "STATUS", conf(version="1.0.0")), 1, "STATUS")


def test_no_traceback_on_stdout_for_junk_stdin(lab, node, make_pod):
    for junk in (b"", b"\xff\xfe\x00", b"[]", b'"str"', b"null"):
        run = Lab.run_plugin(node, "ADD", junk, CID, Lab.netns_path(make_pod()))
        assert run.rc != 0 and run.out.get("code") in (6, 7), (junk, run.stdout)


def test_stale_sandbox_del_keeps_live_pod(lab, node, make_pod, pool, conf, etcd):
    """A DEL for a pod's old sandbox must not remove the re-created pod's veth, endpoint or address."""
    args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
    old, new = make_pod(), make_pod()
    assert Lab.run_plugin(node, "ADD", conf(), "old0000000000001", Lab.netns_path(old), args=args).rc == 0
    sh("ip", "netns", "del", old)
    live = Lab.run_plugin(node, "ADD", conf(), "new0000000000001", Lab.netns_path(new), args=args)
    assert live.rc == 0, live.stdout
    stale = Lab.run_plugin(node, "DEL", conf(), "old0000000000001", Lab.netns_path(old), args=args)
    assert stale.rc == 0
    address = live.out["ips"][0]["address"].split("/")[0]
    assert live.out["interfaces"][0]["name"] in lab.links(node)
    assert lab.ping(node, address)  # the node still routes to the live pod
    assert etcd.keys("/calico/ipam/v2/handle/") == ["/calico/ipam/v2/handle/net1.new0000000000001"]
    assert len(etcd.keys("/calico/resources/v3/projectcalico.org/workloadendpoints/")) == 1
    assert Lab.run_plugin(node, "DEL", conf(), "new0000000000001", Lab.netns_path(new), args=args).rc == 0
    assert_nothing_left(lab, node, etcd)
