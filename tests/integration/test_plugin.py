"""The calico plugin end to end on one node, for every CNI spec version: ADD, CHECK, DEL, traffic."""

from __future__ import annotations

import json

import pytest

from cni_calico.result import SUPPORTED_VERSIONS
from tests.integration.helpers import ENDPOINTS, HANDLES, assert_nothing_left
from tests.lab import Lab, etcdctl


def _cid(version: str, i: int) -> str:
    return f"c{i}{version.replace('.', '')}".ljust(24, "0")


def _address(out: dict, version: str) -> str:
    if version in ("0.1.0", "0.2.0"):
        return out["ip4"]["ip"]
    return out["ips"][0]["address"]


def _check_shape(out: dict, version: str, pod_path: str) -> None:
    assert out["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert set(out) == {"cniVersion", "ip4", "dns"}
        assert out["ip4"]["ip"].endswith("/32")
        assert out["ip4"]["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
        return
    host, container = out["interfaces"]
    assert host["name"].startswith("cali") and len(host["name"]) == 15
    assert host["mac"] == "ee:ee:ee:ee:ee:ee"
    assert container == {"name": "eth0", "mac": container["mac"], "sandbox": pod_path}
    (ip,) = out["ips"]
    assert ip["address"].endswith("/32") and ip["interface"] == 1
    if version.startswith("0."):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_lifecycle(version, lab, node, make_pod, pool, conf, etcd):
    pods = [make_pod(), make_pod()]
    netconf = conf(version=version)
    results = []
    for i, pod in enumerate(pods):
        run = Lab.run_plugin(node, "ADD", netconf, _cid(version, i), Lab.netns_path(pod))
        assert run.rc == 0, run.stdout + run.stderr
        _check_shape(run.out, version, Lab.netns_path(pod))
        results.append(run.out)
    addresses = [_address(r, version).split("/")[0] for r in results]
    assert len(set(addresses)) == 2

    for pod, address in zip(pods, addresses, strict=True):
        assert f"inet {address}/32" in lab.in_ns(pod, "ip", "-4", "addr", "show", "eth0").stdout
        routes = lab.routes(pod)
        assert any(r.startswith("default via 169.254.1.1 dev eth0") for r in routes)
        assert any(r.startswith("169.254.1.1 dev eth0") and "scope link" in r for r in routes)
        assert any(r.startswith(f"{address} dev cali") and "scope link" in r for r in lab.routes(node))
    assert lab.ping(pods[0], addresses[1]) and lab.ping(pods[1], addresses[0])

    for i, pod in enumerate(pods):
        check = Lab.run_plugin(node, "CHECK", {**netconf, "prevResult": results[i]}, _cid(version, i),
                               Lab.netns_path(pod))
        if version in ("0.4.0", "1.0.0", "1.1.0"):
            assert check.rc == 0, check.stdout + check.stderr
        else:  # the spec has no CHECK before 0.4.0: refused as an incompatible version
            assert check.rc != 0 and check.out["code"] == 1

    cid0, cid1 = (_cid(version, i) for i in range(2))
    assert Lab.run_plugin(node, "DEL", netconf, cid0, Lab.netns_path(pods[0])).rc == 0
    again = Lab.run_plugin(node, "DEL", netconf, cid0, Lab.netns_path(pods[0]))
    assert again.rc == 0, again.stdout
    lab.in_ns(pods[1], "true")
    from tests.lab import sh

    sh("ip", "netns", "del", pods[1])  # the runtime may delete the sandbox before DEL
    gone = Lab.run_plugin(node, "DEL", netconf, cid1, Lab.netns_path(pods[1]))
    assert gone.rc == 0, gone.stdout + gone.stderr
    assert_nothing_left(lab, node, etcd)


def test_check_fails_when_a_piece_is_missing(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    netconf = conf(version="1.0.0")
    add = Lab.run_plugin(node, "ADD", netconf, "chk000000001", Lab.netns_path(pod))
    assert add.rc == 0
    checked = {**netconf, "prevResult": add.out}
    assert Lab.run_plugin(node, "CHECK", checked, "chk000000001", Lab.netns_path(pod)).rc == 0
    address = add.out["ips"][0]["address"].split("/")[0]
    host = add.out["interfaces"][0]["name"]
    lab.in_ns(node, "ip", "route", "del", f"{address}/32", "dev", host, check=True)
    failed = Lab.run_plugin(node, "CHECK", checked, "chk000000001", Lab.netns_path(pod))
    assert failed.rc != 0 and "route" in failed.out["msg"]
    lab.in_ns(node, "ip", "route", "add", f"{address}/32", "dev", host, "scope", "link", check=True)
    assert Lab.run_plugin(node, "CHECK", checked, "chk000000001", Lab.netns_path(pod)).rc == 0
    (wep,) = etcd.keys(ENDPOINTS)
    etcd.ctl("del", wep)
    failed = Lab.run_plugin(node, "CHECK", checked, "chk000000001", Lab.netns_path(pod))
    assert failed.rc != 0 and "endpoint" in failed.out["msg"]
    assert Lab.run_plugin(node, "DEL", netconf, "chk000000001", Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_endpoint_record(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=wep000000001"
    add = Lab.run_plugin(node, "ADD", conf(), "wep000000001", Lab.netns_path(pod), args=args)
    assert add.rc == 0, add.stdout + add.stderr
    key = f"{ENDPOINTS}shop/node1-k8s-web--1-eth0"
    wep = etcd.get_json(key)
    import hashlib

    veth = "cali" + hashlib.sha1(b"shop.web-1").hexdigest()[:11]
    assert wep["kind"] == "WorkloadEndpoint" and wep["metadata"]["namespace"] == "shop"
    assert wep["spec"]["node"] == "node1" and wep["spec"]["pod"] == "web-1"
    assert wep["spec"]["containerID"] == "wep000000001"
    assert wep["spec"]["interfaceName"] == veth == add.out["interfaces"][0]["name"]
    assert wep["spec"]["ipNetworks"] == [add.out["ips"][0]["address"]]
    assert wep["spec"]["mac"] == add.out["interfaces"][1]["mac"]
    assert wep["spec"]["profiles"] == ["net1"]
    profile_key = "/calico/resources/v3/projectcalico.org/profiles/net1"
    profile = etcd.get_json(profile_key)
    assert profile["spec"]["labelsToApply"] == {"net1": ""}
    assert profile["spec"]["ingress"] == [{"action": "Allow", "source": {"selector": "has(net1)"}}]
    # An operator's edit of the profile survives the next ADD (created only when absent).
    profile["spec"]["egress"] = []
    etcd.put_json(profile_key, profile)
    other = make_pod()
    assert Lab.run_plugin(node, "ADD", conf(), "wep000000002", Lab.netns_path(other)).rc == 0
    assert etcd.get_json(profile_key)["spec"]["egress"] == []
    assert Lab.run_plugin(node, "DEL", conf(), "wep000000002", Lab.netns_path(other)).rc == 0
    handle = etcd.get_json(f"{HANDLES}net1.wep000000001")
    assert list(handle) == ["block", "deleted"] and sum(handle["block"].values()) == 1  # Calico's IPAMHandle
    assert list(wep["spec"]) == ["orchestrator", "node", "containerID", "pod", "endpoint", "ipNetworks", "profiles",
                                 "interfaceName", "mac"]  # Go's field order
    assert Lab.run_plugin(node, "DEL", conf(), "wep000000001", Lab.netns_path(pod), args=args).rc == 0
    assert etcd.get_json(key) is None


def test_repeat_add_returns_same_address(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    first = Lab.run_plugin(node, "ADD", conf(), "rep000000001", Lab.netns_path(pod))
    assert first.rc == 0
    from cni_calico.datastore import Datastore, EtcdConf
    from ipam.assign import AssignArgs, auto_assign

    # The IPAM library asked again for the same handle hands back the same address, writing nothing.
    def revision() -> int:
        return json.loads(etcdctl(etcd.url, "get", "/calico", "--prefix", "--limit=1", "-w", "json").stdout)[
            "header"]["revision"]

    ds = Datastore(EtcdConf([etcd.url]))
    before = revision()
    again = auto_assign(ds, AssignArgs("net1.rep000000001", "node1", str(lab.workdir)))
    ds.close()
    assert again.cidrs == [first.out["ips"][0]["address"]] and revision() == before
    assert Lab.run_plugin(node, "DEL", conf(), "rep000000001", Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)
