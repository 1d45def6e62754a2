"""Network config keys doing what they say: the classic 10-calico.conf, node name, MTU, forwarding, logs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.helpers import ENDPOINTS, assert_nothing_left
from tests.lab import REPO, Lab

CID = "cfg0000000000001"


def test_classic_config_works_as_written(lab, node, make_pod, pool, etcd, tmp_path):
    """examples/10-calico.conf, only pointed at the test etcd: the kubeconfig path need not exist."""
    conf = json.loads((REPO / "examples/10-calico.conf").read_text())
    assert conf["cniVersion"] == "0.1.0" and conf["ipam"] == {"type": "calico-ipam"}
    assert not Path(conf["kubernetes"]["kubeconfig"]).exists()
    conf.update(etcd_endpoints=etcd.url, nodename="node1", log_file_path=str(tmp_path / "cni.log"))
    pod = make_pod()
    args = "K8S_POD_NAMESPACE=rb;K8S_POD_NAME=app"
    add = Lab.run_plugin(node, "ADD", conf, CID, Lab.netns_path(pod), args=args)
    assert add.rc == 0, add.stdout + add.stderr
    assert add.out["ip4"]["ip"].startswith("10.60.0.")
    assert lab.ping(node, add.out["ip4"]["ip"].split("/")[0])
    assert Lab.run_plugin(node, "DEL", conf, CID, Lab.netns_path(pod), args=args).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_unreadable_kubeconfig_is_named_when_needed(lab, node, make_pod, pool, conf, etcd):
    missing = "/nonexistent/admin.kubeconfig"
    netconf = conf(kubernetes={"kubeconfig": missing}, policy={"type": "k8s"})
    run = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(make_pod()))
    assert run.rc != 0 and missing in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


def test_nodename_file(lab, node, make_pod, pool, conf, etcd, tmp_path):
    name_file = tmp_path / "nodename"
    name_file.write_text("from-file-node\n")
    netconf = conf(nodename_file=str(name_file))
    del netconf["nodename"]
    pod = make_pod()
    assert Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(pod)).rc == 0
    (key,) = etcd.keys(ENDPOINTS)
    assert key.endswith("/default/from--file--node-cni-cfg0000000000001-eth0")
    assert etcd.keys("/calico/ipam/v2/host/from-file-node/")
    assert Lab.run_plugin(node, "DEL", netconf, CID, Lab.netns_path(pod)).rc == 0


def test_mtu_and_ip_forwarding(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    netconf = conf(mtu=1400, container_settings={"allow_ip_forwarding": True})
    add = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(pod))
    assert add.rc == 0, add.stdout + add.stderr
    assert "mtu 1400" in lab.in_ns(pod, "ip", "link", "show", "eth0").stdout
    host = add.out["interfaces"][0]["name"]
    assert "mtu 1400" in lab.in_ns(node, "ip", "link", "show", host).stdout
    assert lab.in_ns(pod, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    for key, want in (("conf/{}/proxy_arp", "1"), ("neigh/{}/proxy_delay", "0"), ("conf/{}/forwarding", "1"),
                      ("conf/{}/route_localnet", "1")):
        path = "/proc/sys/net/ipv4/" + key.format(host)
        assert lab.in_ns(node, "cat", path).stdout.strip() == want, path
    assert Lab.run_plugin(node, "DEL", netconf, CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_forwarding_off_by_default_and_log_file(lab, node, make_pod, pool, conf, etcd, tmp_path):
    pod = make_pod()
    log_file = tmp_path / "logs" / "cni.log"
    netconf = conf(log_file_path=str(log_file), log_level="info")
    assert Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(pod)).rc == 0
    assert lab.in_ns(pod, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    text = log_file.read_text()
    assert f"ADD container={CID}" in text and "address=10.60.0." in text
    assert Lab.run_plugin(node, "DEL", netconf, CID, Lab.netns_path(pod)).rc == 0
    assert f"DEL container={CID}" in log_file.read_text()


def test_no_family_to_assign(lab, node, make_pod, pool, conf, etcd):
    netconf = conf(ipam={"type": "calico-ipam", "assign_ipv4": "false"})
    run = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(make_pod()))
    assert run.rc != 0 and run.out["code"] == 7 and "assign_ipv4" in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


def test_several_etcd_endpoints_fail_over(lab, node, make_pod, pool, conf, etcd):
    """A dead endpoint first in the list does not stop the ADD: the client moves to the next."""
    from tests.lab import free_port

    netconf = conf(etcd_endpoints=f"http://127.0.0.1:{free_port()},{etcd.url}")
    pod = make_pod()
    add = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(pod))
    assert add.rc == 0, add.stdout + add.stderr
    assert Lab.run_plugin(node, "DEL", netconf, CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)
