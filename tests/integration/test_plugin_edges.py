"""The plugin's edge cases as Calico's own tests expect them (issue 14): a repeated ADD answers as the
first did and allocates nothing, a second interface of one container never destroys the first, a
/32 route that is another interface's is refused (never moved), `IP=` asks for one address exactly,
`allow_ip_forwarding: false` writes 0, and malformed input is a CNI error naming what is wrong."""

from __future__ import annotations

import json

from tests.integration.helpers import ENDPOINTS, HANDLES, allocated, assert_nothing_left
from tests.lab import Lab, sh

CID = "edge000000000001"


def _error(run, code: int, words: str) -> None:
    assert run.rc != 0 and set(run.out) == {"cniVersion", "code", "msg", "details"}, run.stdout
    assert run.out["code"] == code and words.lower() in (run.out["msg"] + run.out["details"]).lower(), run.out
    assert "Traceback" not in run.stdout and len(run.stdout.strip().splitlines()) == 1


def test_a_repeated_add_returns_the_first_result_and_allocates_nothing(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    first = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod))
    assert first.rc == 0, first.stderr
    before = (allocated(etcd), etcd.keys(HANDLES), etcd.get_json(etcd.keys(ENDPOINTS)[0]))
    again = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod))
    assert again.rc == 0, again.stdout + again.stderr
    assert again.out == first.out
    assert (allocated(etcd), etcd.keys(HANDLES), etcd.get_json(etcd.keys(ENDPOINTS)[0])) == before
    assert Lab.run_plugin(node, "DEL", conf(), CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_a_second_interface_never_destroys_the_first(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    first = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod))
    assert first.rc == 0, first.stderr
    second = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod), ifname="eth1")
    _error(second, 102, "already has an interface")
    host = first.out["interfaces"][0]["name"]
    assert host in lab.links(node) and "eth0" in lab.links(pod) and "eth1" not in lab.links(pod)
    assert Lab.run_plugin(node, "CHECK", {**conf(), "prevResult": first.out}, CID, Lab.netns_path(pod)).rc == 0
    assert len(allocated(etcd)) == 1
    assert Lab.run_plugin(node, "DEL", conf(), CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)


def test_an_address_routed_elsewhere_is_refused_not_moved(lab, node, make_pod, pool, conf, etcd):
    # Another interface of the node already routes 10.60.0.7: the ADD asking for it must not take it.
    sh("ip", "netns", "exec", node, "ip", "link", "add", "xedge0", "type", "veth", "peer", "name", "xedge1")
    sh("ip", "netns", "exec", node, "ip", "link", "set", "xedge0", "up")
    sh("ip", "netns", "exec", node, "ip", "route", "add", "10.60.0.7/32", "dev", "xedge0")
    run = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(make_pod()), args="IP=10.60.0.7")
    _error(run, 102, "route 10.60.0.7/32 already exists for an interface other than")
    assert any(r.startswith("10.60.0.7 dev xedge0") for r in lab.routes(node))
    assert_nothing_left(lab, node, etcd)


def test_ip_in_cni_args_is_that_address_or_an_error(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    got = Lab.run_plugin(node, "ADD", conf(), CID, Lab.netns_path(pod), args="IgnoreUnknown=1;IP=10.60.0.42")
    assert got.rc == 0 and got.out["ips"][0]["address"] == "10.60.0.42/32", got.stdout + got.stderr
    taken = Lab.run_plugin(node, "ADD", conf(), "edge000000000002", Lab.netns_path(make_pod()), args="IP=10.60.0.42")
    _error(taken, 102, "10.60.0.42 is already in use")
    outside = Lab.run_plugin(node, "ADD", conf(), "edge000000000003", Lab.netns_path(make_pod()), args="IP=10.99.0.1")
    _error(outside, 7, "outside every usable pool")
    bad = Lab.run_plugin(node, "ADD", conf(), "edge000000000004", Lab.netns_path(make_pod()), args="IP=10.60.0.999")
    _error(bad, 7, "not an IP address")
    runtime = conf(runtimeConfig={"ips": ["10.60.0.43/24"]})
    assert Lab.run_plugin(node, "ADD", runtime, "edge000000000005", Lab.netns_path(make_pod())).out["ips"][0][
        "address"] == "10.60.0.43/32"
    assert sorted(allocated(etcd)) == ["10.60.0.42", "10.60.0.43"]


def test_ip_forwarding_off_is_written_as_0(lab, node, make_pod, pool, conf, etcd):
    pod = make_pod()
    sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run = Lab.run_plugin(node, "ADD", conf(container_settings={"allow_ip_forwarding": False}), CID, Lab.netns_path(pod))
    assert run.rc == 0, run.stderr
    assert lab.in_ns(pod, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"


def test_malformed_input_is_named(lab, node, make_pod, pool, conf, etcd):
    pod = Lab.netns_path(make_pod())
    deep = b'{"cniVersion": "1.0.0", "name": "n", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    _error(Lab.run_plugin(node, "ADD", deep, CID, pod), 6, "nested too deeply")
    _error(Lab.run_plugin(node, "ADD", conf(args="x"), CID, pod), 7, "'args' must be an object")
    _error(Lab.run_plugin(node, "ADD", conf(runtimeConfig=[1]), CID, pod), 7, "'runtimeConfig' must be an object")
    ranged = conf()
    ranged["ipam"] = {**ranged["ipam"], "ranges": "10.0.0.0/24"}
    _error(Lab.run_plugin(node, "ADD", ranged, CID, pod), 7, "'ipam.ranges' must be a list")
    _error(Lab.run_plugin(node, "ADD", conf(runtimeConfig={"ips": "10.60.0.9"}), CID, pod), 7, "runtimeConfig.ips")
    # A value larger than etcd takes (its request limit is 1.5 MiB) is the config's fault, said at once.
    huge = conf(name="n" * 2_000_000)
    run = Lab.run_plugin(node, "ADD", json.dumps(huge), CID, pod)
    _error(run, 7, "refused")
    assert run.seconds < 8
    assert_nothing_left(lab, node, etcd)
