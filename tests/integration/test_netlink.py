"""cni_calico.netlink against the kernel, with `ip` as the independent witness of what it did.

Two scratch namespaces of our own: "host" gets the veth, "pod" its peer.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cni_calico.dataplane import open_netns
from cni_calico.netlink import Rtnl
from tests.lab import REPO, Lab


@pytest.fixture
def pair(lab, make_pod):
    host, pod = make_pod(), make_pod()
    with open_netns(Lab.netns_path(host)) as h, open_netns(Lab.netns_path(pod)) as p:
        yield lab, host, pod, h, p


def _ip(lab, ns: str, *args: str) -> str:
    return lab.in_ns(ns, "ip", *args, check=True).stdout


def test_links_by_name_and_index(pair):
    lab, host, _, h, _ = pair
    lo = h.get_link("lo")
    assert lo is not None and lo["index"] == 1 and lo.get_attr("IFLA_IFNAME") == "lo"
    assert h.get_link(index=1).get_attr("IFLA_IFNAME") == "lo"
    assert h.get_link("nosuchlink0") is None
    assert h.get_link(index=99999) is None


def test_veth_with_its_peer_in_another_namespace(pair):
    lab, host, pod, h, p = pair
    fd = os.open(Lab.netns_path(pod), os.O_RDONLY)
    try:
        h.add_veth("ccnl0", "ee:ee:ee:ee:ee:ee", 1400,
                   peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": 1400, "address": "02:00:00:00:00:07"})
        with pytest.raises(NetlinkError) as exists:
            h.add_veth("ccnl0", "ee:ee:ee:ee:ee:ee", 1400, peer={"ifname": "eth9", "net_ns_fd": fd})
        assert exists.value.code == errno.EEXIST
    finally:
        os.close(fd)
    link = h.get_link("ccnl0")
    peer_index = link.get_attr("IFLA_LINK")
    assert f"{peer_index}: eth0@" in _ip(lab, pod, "-o", "link", "show", "eth0")
    assert "link/ether 02:00:00:00:00:07" in _ip(lab, pod, "link", "show", "eth0")
    assert "mtu 1400" in _ip(lab, host, "link", "show", "ccnl0")
    h.set_link(link["index"], up=True, alias="container-1")
    shown = _ip(lab, host, "link", "show", "ccnl0")
    assert "alias container-1" in shown and re.search(r"[<,]UP[,>]", shown)
    assert h.get_link(index=link["index"]).get_attr("IFLA_IFALIAS") == "container-1"
    p.set_link(peer_index, up=True)
    assert re.search(r"[<,]UP[,>]", _ip(lab, pod, "link", "show", "eth0"))
    h.del_link(link["index"])
    assert h.get_link("ccnl0") is None and p.get_link("eth0") is None  # the peer goes with it
    with pytest.raises(NetlinkError) as gone:
        h.del_link(link["index"])
    assert gone.value.code == errno.ENODEV


def test_addresses_and_routes(pair):
    lab, host, _, h, _ = pair
    lab.in_ns(host, "ip", "link", "add", "ccnl1", "type", "veth", "peer", "name", "ccnl1p", check=True)
    lab.in_ns(host, "ip", "link", "set", "ccnl1p", "up", check=True)
    lab.in_ns(host, "ip", "link", "set", "ccnl1", "up", check=True)
    index = h.get_link("ccnl1")["index"]
    h.add_address(index, "10.200.0.5/32")
    h.add_address(index, "fd00:200::5/128")
    assert "inet 10.200.0.5/32" in _ip(lab, host, "-4", "addr", "show", "ccnl1")
    assert {a.get_attr("IFA_ADDRESS") for a in h.addresses(index)} >= {"10.200.0.5", "fd00:200::5"}
    assert [a.get_attr("IFA_ADDRESS") for a in h.addresses(index, socket.AF_INET)] == ["10.200.0.5"]
    h.add_route("169.254.1.1/32", index, scope=253)
    h.add_route("0.0.0.0/0", index, gateway="169.254.1.1")
    h.add_route("10.200.0.9/32", index, scope=253)
    with pytest.raises(NetlinkError) as exists:
        h.add_route("10.200.0.9/32", index, scope=253)
    assert exists.value.code == errno.EEXIST
    h.add_route("10.200.0.9/32", index, scope=253, replace=True)
    routes = _ip(lab, host, "-4", "route")
    assert "default via 169.254.1.1 dev ccnl1" in routes
    assert "10.200.0.9 dev ccnl1 scope link" in routes
    assert "169.254.1.1 dev ccnl1 scope link" in routes
    dsts = {(r.get_attr("RTA_DST"), r["dst_len"]) for r in h.routes(socket.AF_INET, index)}
    assert {("10.200.0.9", 32), ("169.254.1.1", 32), (None, 0)} <= dsts
    assert h.routes(socket.AF_INET, index + 1000) == []


def test_route_table_reads_one_protocols_routes_of_a_device(pair):
    """calico-node's tunnel routes: written onlink with its protocol, read back by route_table (its own
    struct reading of the dump), deleted; `ip` is the witness."""
    lab, host, _, h, _ = pair
    for name in ("ccnl2", "ccnl3"):
        lab.in_ns(host, "ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p", check=True)
        lab.in_ns(host, "ip", "link", "set", name, "up", check=True)
    index, other = h.get_link("ccnl2")["index"], h.get_link("ccnl3")["index"]
    h.add_route("10.201.0.0/26", index, "10.250.0.1", replace=True, proto=80, flags=4)  # RTNH_F_ONLINK
    h.add_route("10.201.0.64/26", index, "10.250.0.2", replace=True, proto=80, flags=4)
    h.add_route("10.201.0.64/26", index, "10.250.0.3", replace=True, proto=80, flags=4)  # replaced
    h.add_route("10.201.1.0/24", index, scope=253, proto=80)  # no gateway
    h.add_route("10.201.2.0/24", index, scope=253)  # another protocol's
    h.add_route("10.201.3.0/24", other, "10.250.0.4", proto=80, flags=4)  # another device's
    h.add_route("fd00:201::/64", index, proto=80)  # another family's
    shown = _ip(lab, host, "-4", "route", "show", "proto", "80", "dev", "ccnl2")
    assert "10.201.0.64/26 via 10.250.0.3 onlink" in shown and "10.250.0.2" not in shown
    assert h.route_table(socket.AF_INET, index, 80) == {
        "10.201.0.0/26": "10.250.0.1", "10.201.0.64/26": "10.250.0.3", "10.201.1.0/24": ""}
    assert h.route_table(socket.AF_INET6, index, 80) == {"fd00:201::/64": ""}
    h.del_route("10.201.0.0/26", index, 80)
    with pytest.raises(NetlinkError) as gone:
        h.del_route("10.201.0.0/26", index, 80)
    assert gone.value.code == errno.ESRCH
    assert "10.201.0.0/26" not in _ip(lab, host, "-4", "route")
    assert set(h.route_table(socket.AF_INET, index, 80)) == {"10.201.0.64/26", "10.201.1.0/24"}


def test_a_socket_made_in_a_namespace_stays_there(pair):
    lab, host, pod, h, p = pair
    lab.in_ns(pod, "ip", "link", "add", "ccnl2", "type", "veth", "peer", "name", "ccnl2p", check=True)
    assert p.get_link("ccnl2") is not None
    assert h.get_link("ccnl2") is None
    with Rtnl() as mine:  # this process's own namespace
        assert mine.get_link("lo")["index"] == 1


def _modules_after(script: str) -> list[str]:
    probe = (
        "import sys\n" + script +
        "import cni_calico.plugin, cni_calico.dataplane\n"
        "from cni_calico.netlink import Rtnl\n"
        "assert Rtnl().get_link('lo')['index'] == 1\n"
        "print(' '.join(m for m in ('pyroute2.ndb.main', 'pyroute2.iproute.linux') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(REPO), check=True)
    return run.stdout.split()


def test_the_in_process_plugin_skips_pyroute2s_package_init():
    # The plugin's in-process path imports pyroute2's message classes only (~120 ms less per call).
    assert _modules_after("from cni_calico.entry import _bare_package\n_bare_package('pyroute2')\n") == []
    # Without it, the package's __init__ brings in all of pyroute2: the check above can fail.
    assert _modules_after("") == ["pyroute2.ndb.main", "pyroute2.iproute.linux"]


# --- ipset members over netlink (cni_calico.policy.ipsets), with `ipset` as the witness ---------------


def test_ipset_members_over_netlink(lab, make_pod):
    from cni_calico.dataplane import run_in_netns
    from cni_calico.policy.ipsets import IpsetError, MemberSocket

    ns = make_pod()
    # hash:net, as the policy's selector sets: addresses and network sets' CIDRs
    lab.in_ns(ns, "ipset", "create", "cali40s:nl", "hash:net", "family", "inet", check=True)
    lab.in_ns(ns, "ipset", "create", "cali60s:nl", "hash:net", "family", "inet6", check=True)
    failures: list[str] = []

    def work() -> None:  # the socket is made in the namespace, by this thread
        members = MemberSocket()
        try:
            members.change([("cali40s:nl", "10.0.0.1", True), ("cali40s:nl", "10.0.0.1", True),  # -exist: twice is fine
                            ("cali40s:nl", "10.0.0.2", True), ("cali40s:nl", "10.0.0.2", False),
                            ("cali40s:nl", "10.0.0.9", False), ("cali60s:nl", "fd00::1", True),
                            ("cali40s:nl", "198.51.100.0/24", True), ("cali40s:nl", "203.0.113.0/24", True),
                            ("cali40s:nl", "203.0.113.0/24", False), ("cali60s:nl", "2001:db8::/32", True)])
            members.change([("cali40s:nl", f"10.1.{i // 250}.{i % 250}", True) for i in range(1000)])  # several sends
            try:
                members.change([("cali40s:nl", "10.0.0.3", True), ("cali40s:none", "10.0.0.4", True)])
            except IpsetError as exc:
                failures.append(str(exc))
        finally:
            members.close()

    run_in_netns(Lab.netns_path(ns), work)
    saved = lab.in_ns(ns, "ipset", "save", check=True).stdout
    v4 = {line.split()[2] for line in saved.splitlines() if line.startswith("add cali40s:nl ")}
    assert v4 == {"10.0.0.1", "10.0.0.3", "198.51.100.0/24"} | {f"10.1.{i // 250}.{i % 250}" for i in range(1000)}
    assert "add cali60s:nl fd00::1" in saved and "add cali60s:nl 2001:db8::/32" in saved
    assert len(failures) == 1 and "cali40s:none 10.0.0.4" in failures[0]


def test_named_port_members_over_netlink(lab, make_pod):
    from cni_calico.dataplane import run_in_netns
    from cni_calico.policy.ipsets import MemberSocket

    ns = make_pod()
    # hash:ip,port, as the policy's named-port sets: "<address>,<proto>:<port>"
    lab.in_ns(ns, "ipset", "create", "cali40n:nl", "hash:ip,port", "family", "inet", check=True)
    lab.in_ns(ns, "ipset", "create", "cali60n:nl", "hash:ip,port", "family", "inet6", check=True)

    def work() -> None:
        members = MemberSocket()
        try:
            members.change([("cali40n:nl", "10.0.0.1,tcp:80", True), ("cali40n:nl", "10.0.0.1,udp:53", True),
                            ("cali40n:nl", "10.0.0.2,sctp:9", True), ("cali40n:nl", "10.0.0.3,tcp:8080", True),
                            ("cali40n:nl", "10.0.0.3,tcp:8080", False), ("cali60n:nl", "fd00::1,tcp:65535", True)])
        finally:
            members.close()

    run_in_netns(Lab.netns_path(ns), work)
    saved = lab.in_ns(ns, "ipset", "save", check=True).stdout
    assert {line.split()[2] for line in saved.splitlines() if line.startswith("add cali40n:nl ")} == {
        "10.0.0.1,tcp:80", "10.0.0.1,udp:53", "10.0.0.2,sctp:9"}
    assert "add cali60n:nl fd00::1,tcp:65535" in saved
