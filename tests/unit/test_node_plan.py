"""calico-node's pure planning: peerings, BIRD config text, tunnel routes, and env validation."""

from __future__ import annotations

import pytest

from cni_calico import keys
from cni_calico.node import birdconf
from cni_calico.node.config import NodeConfigError, from_env
from cni_calico.node.model import Routing, Snapshot
from cni_calico.node.peers import peerings
from cni_calico.node.tunnels import IPIP_DEVICE, plan_ipip, plan_vxlan, tunnel_mac, tunnel_mtu
from cni_calico.v3 import BGPPeer, IPPool, Node


def snap(nodes, pools=None, blocks=None, mesh=True, peers=None) -> Snapshot:
    return Snapshot(
        revision=1,
        nodes={n.name: n for n in nodes},
        mesh=mesh,
        default_asn=64512,
        peers=peers or [],
        pools=pools or [IPPool("p", "10.0.0.0/16", 26)],
        blocks=blocks or {},
    )


N1 = Node("n1", "192.168.0.1", "192.168.0.1/24")
N2 = Node("n2", "192.168.0.2", "192.168.0.2/24", asn=65001)
N3 = Node("n3", "192.168.1.3", "192.168.1.3/24", labels={"rack": "b"})


def test_mesh_peers_every_other_node_with_its_as():
    got = peerings(snap([N1, N2, N3]), "n1")
    assert [(p.name, p.asn, p.kind) for p in got] == [
        ("Mesh_192_168_0_2", 65001, "node-to-node mesh"),
        ("Mesh_192_168_1_3", 64512, "node-to-node mesh"),
    ]


def test_mesh_off_and_explicit_peers():
    peers = [
        BGPPeer("tor", peer_ip="10.1.1.1", asn=65100),  # global
        BGPPeer("only-n2", node="n2", peer_ip="10.1.1.2", asn=65200),
        BGPPeer("rack-b", node_selector="rack == 'b'", peer_ip="10.1.1.3", asn=65300),
    ]
    s = snap([N1, N2, N3], mesh=False, peers=peers)
    assert [(p.name, p.kind) for p in peerings(s, "n1")] == [("Global_10_1_1_1", "global")]
    assert {p.name for p in peerings(s, "n2")} == {"Global_10_1_1_1", "Node_10_1_1_2"}
    assert {p.name for p in peerings(s, "n3")} == {"Global_10_1_1_1", "Node_10_1_1_3"}


def test_route_reflector_is_symmetric_and_marks_clients():
    rr = Node("n1", "192.168.0.1", "192.168.0.1/24", rr_cluster_id="224.0.0.1", labels={"rr": "true"})
    peers = [BGPPeer("to-rr", node_selector="all()", peer_selector="rr == 'true'")]
    s = snap([rr, N2, N3], mesh=False, peers=peers)
    on_rr = peerings(s, "n1")
    assert [(p.ip, p.rr_client) for p in on_rr] == [("192.168.0.2", True), ("192.168.1.3", True)]
    assert [(p.ip, p.rr_client) for p in peerings(s, "n2")] == [("192.168.0.1", False)]
    text = birdconf.render(s, "n1")
    assert text.count("rr client;") == 2 and "rr cluster id 224.0.0.1;" in text


def test_bird_config_exports_aggregates_not_their_slash32s():
    s = snap([N1, N2], blocks={"10.0.0.0/26": "n1", "10.0.0.64/26": "n2"},
             pools=[IPPool("p", "10.0.0.0/16", 26), IPPool("other", "10.9.0.0/16", 26, disable_bgp_export=True)])
    text = birdconf.render(s, "n1")
    assert "route 10.0.0.0/26 blackhole;" in text and "10.0.0.64/26 blackhole" not in text
    assert 'if proto = "blocks" && net ~ [ 10.0.0.0/26 ] then accept;' in text
    assert "if net ~ [ 10.0.0.0/26+ ] then reject;" in text
    assert 'if proto = "kernel4" && net ~ [ 10.0.0.0/16{32,32} ] then accept;' in text
    assert "10.9.0.0/16" not in text  # a pool with BGP export off
    assert "router id 192.168.0.1;" in text and "local 192.168.0.1 as 64512;" in text
    assert "persist;" in text and "graceful restart;" in text
    assert birdconf.render(s, "n1") == text  # deterministic


def test_bird_config_without_blocks_has_no_empty_sets():
    text = birdconf.render(snap([N1]), "n1")
    assert "[  ]" not in text and "[ ]" not in text and "protocol static" not in text


def test_vxlan_pools_are_not_bgp_and_cross_subnet_filters_kernel_routes():
    pools = [IPPool("vx", "10.1.0.0/16", 26, vxlan_mode="Always"), IPPool("cs", "10.2.0.0/16", 26,
                                                                        vxlan_mode="CrossSubnet")]
    s = snap([N1, N2], pools=pools, blocks={"10.1.0.0/26": "n1"})
    text = birdconf.render(s, "n1", "192.168.0.0/24")
    assert "10.1.0.0/16" not in text.split("function calico_export_to_bgp_peers()")[1]
    assert "if (net ~ [ 10.2.0.0/16+ ]) && !(bgp_next_hop ~ 192.168.0.0/24) then reject;" in text


def test_vxlan_plan_always_and_cross_subnet():
    n2 = Node("n2", "192.168.0.2", "192.168.0.2/24", vxlan_addr="10.1.0.65", vxlan_mac=tunnel_mac("n2"))
    n3 = Node("n3", "192.168.1.3", "192.168.1.3/24", vxlan_addr="10.2.0.129", vxlan_mac=tunnel_mac("n3"))
    pools = [IPPool("vx", "10.1.0.0/16", 26, vxlan_mode="Always"), IPPool("cs", "10.2.0.0/16", 26,
                                                                        vxlan_mode="CrossSubnet")]
    blocks = {"10.1.0.0/26": "n1", "10.1.0.64/26": "n2", "10.2.0.0/26": "n2", "10.2.0.128/26": "n3"}
    plan = plan_vxlan(snap([N1, n2, n3], pools=pools, blocks=blocks), "n1", "192.168.0.1/24")
    assert [(r.dst, r.via) for r in plan.routes] == [("10.1.0.64/26", "10.1.0.65"), ("10.2.0.128/26", "10.2.0.129")]
    assert plan.fdb == {tunnel_mac("n2"): "192.168.0.2", tunnel_mac("n3"): "192.168.1.3"}
    assert plan.neighbours["10.1.0.65"] == tunnel_mac("n2")


def test_ipip_plan_routes_to_node_addresses_over_tunl0():
    pools = [IPPool("ip", "10.3.0.0/16", 26, ipip_mode="Always"), IPPool("plain", "10.4.0.0/16", 26)]
    blocks = {"10.3.0.0/26": "n1", "10.3.0.64/26": "n2", "10.4.0.0/26": "n2"}
    plan = plan_ipip(snap([N1, N2], pools=pools, blocks=blocks), "n1", "192.168.0.1/24")
    assert [(r.dst, r.via, r.device) for r in plan.routes] == [("10.3.0.64/26", "192.168.0.2", IPIP_DEVICE)]
    cross = [IPPool("ip", "10.3.0.0/16", 26, ipip_mode="CrossSubnet")]
    assert plan_ipip(snap([N1, N2], pools=cross, blocks=blocks), "n1", "192.168.0.1/24").routes == []


def _node_value(name: str, ip: str, labels: dict | None = None) -> dict:
    return {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"bgp": {"ipv4Address": f"{ip}/24"}}}


def test_routing_says_which_blocks_a_change_touches():
    routing = Routing()
    assert routing.take_changes().everything  # a fresh view: everything is new
    confirmed = {"state": "confirmed", "deleted": False}
    for cidr, node in (("10.0.0.0/26", "n1"), ("10.0.0.64/26", "n2"), ("10.0.0.128/26", "n2")):
        routing.update(keys.affinity(node, cidr), confirmed)
    routing.update(keys.resource("nodes", "n2"), _node_value("n2", "192.168.0.2"))
    got = routing.take_changes()
    assert not got.everything and got.nodes == {"n2"}
    assert got.blocks == {"10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26"}
    assert routing.take_changes() == type(got)()  # taken: nothing left

    # A node's record changing touches its blocks alone; a block moving touches that block.
    assert routing.update(keys.resource("nodes", "n2"), _node_value("n2", "192.168.0.2", {"rack": "a"}))
    assert routing.take_changes().blocks == {"10.0.0.64/26", "10.0.0.128/26"}
    assert not routing.update(keys.affinity("n2", "10.0.0.64/26"), confirmed)  # the same again: no change
    assert routing.update(keys.affinity("n1", "10.0.0.64/26"), confirmed)
    assert routing.owned == {"n1": {"10.0.0.0/26", "10.0.0.64/26"}, "n2": {"10.0.0.128/26"}}
    assert routing.update(keys.affinity("n2", "10.0.0.128/26"), None)
    assert not routing.update(keys.affinity("n2", "10.0.0.128/26"), None)
    assert routing.take_changes().blocks == {"10.0.0.64/26", "10.0.0.128/26"} and "n2" not in routing.owned
    pool = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "p"},
            "spec": {"cidr": "10.0.0.0/16", "blockSize": 26}}
    assert routing.update(keys.resource("ippools", "p"), pool) and routing.take_changes().everything


def test_tunnel_mtu_and_mac():
    assert tunnel_mtu(1500, snap([N1], pools=[IPPool("vx", "10.1.0.0/16", 26, vxlan_mode="Always")])) == 1450
    assert tunnel_mtu(1500, snap([N1], pools=[IPPool("ip", "10.1.0.0/16", 26, ipip_mode="Always")])) == 1480
    assert tunnel_mtu(1500, snap([N1])) == 1500
    mac = tunnel_mac("n1")
    assert mac == tunnel_mac("n1") != tunnel_mac("n2")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast


GOOD = {"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379", "IP": "192.168.0.1/24"}


@pytest.mark.parametrize(
    "change,variable",
    [
        ({"CALICO_NETWORKING_BACKEND": "gobgp"}, "CALICO_NETWORKING_BACKEND"),
        ({"CALICO_IPV4POOL_IPIP": "sometimes"}, "CALICO_IPV4POOL_IPIP"),
        ({"CALICO_IPV4POOL_VXLAN": "yes please"}, "CALICO_IPV4POOL_VXLAN"),
        ({"CALICO_IPV4POOL_CIDR": "10.0.0.0/33"}, "CALICO_IPV4POOL_CIDR"),
        ({"IP": "300.1.1.1"}, "IP"),
        ({"IP_AUTODETECTION_METHOD": "interface=("}, "IP_AUTODETECTION_METHOD"),
        ({"IP_AUTODETECTION_METHOD": "magic"}, "IP_AUTODETECTION_METHOD"),
        ({"IP_AUTODETECTION_METHOD": "can-reach=somewhere"}, "IP_AUTODETECTION_METHOD"),
        ({"AS": "abc"}, "AS"),
        ({"AS": "0"}, "AS"),
        ({"ETCD_ENDPOINTS": ""}, "ETCD_ENDPOINTS"),
        ({"ETCD_ENDPOINTS": "ftp://x"}, "ETCD_ENDPOINTS"),
        ({"NODENAME": "Bad_Name"}, "NODENAME"),
        ({"CALICO_IPV4POOL_IPIP": "always", "CALICO_IPV4POOL_VXLAN": "always"}, "CALICO_IPV4POOL_IPIP"),
    ],
)
def test_bad_environment_names_the_variable(change, variable):
    with pytest.raises(NodeConfigError) as err:
        from_env({**GOOD, **change})
    assert variable in str(err.value)


def test_classic_environment():
    cfg = from_env({**GOOD, "NO_DEFAULT_POOLS": "", "CALICO_IPV4POOL_IPIP": "always", "IP": "10.10.10.19",
                    "CALICO_IPV4POOL_CIDR": "10.20.0.0/16", "IP6_AUTODETECTION_METHOD": "first-found",
                    "CALICO_LIBNETWORK_ENABLED": "true", "CALICO_NETWORKING_BACKEND": "bird"})
    assert cfg.no_default_pools is False and cfg.pool_ipip == "always" and cfg.pool_cidr == "10.20.0.0/16"
    assert cfg.run_dir == "/var/run/calico" and cfg.nodename_file == "/var/lib/calico/nodename"
    assert from_env({**GOOD, "CALICO_RUN_DIR": "/x/run", "CALICO_LIB_DIR": "/x/lib"}).nodename_file == "/x/lib/nodename"


def test_ipv6_sessions_blackholes_and_filters():
    n1 = Node("n1", "192.168.0.1", "192.168.0.1/24", ipv6="fd00::1", ipv6_cidr="fd00::1/64")
    n2 = Node("n2", "192.168.0.2", "192.168.0.2/24", ipv6="fd00::2", ipv6_cidr="fd00::2/64")
    n3 = Node("n3", "192.168.0.3", "192.168.0.3/24")  # IPv4 only
    s = snap([n1, n2, n3], pools=[IPPool("p", "10.0.0.0/16", 26), IPPool("p6", "fd00:10::/64", 122)],
             blocks={"10.0.0.0/26": "n1", "fd00:10::/122": "n1"})
    assert [p.name for p in peerings(s, "n1", 6)] == ["Mesh_fd00__2"]
    assert [p.name for p in peerings(s, "n1", 4)] == ["Mesh_192_168_0_2", "Mesh_192_168_0_3"]
    text = birdconf.render(s, "n1")
    assert "protocol kernel kernel6" in text and "route fd00:10::/122 blackhole;" in text
    assert "local fd00::1 as 64512;" in text and "neighbor fd00::2 as 64512;" in text
    assert 'if proto = "kernel6" && net ~ [ fd00:10::/64{128,128} ] then accept;' in text
    assert "fd00:10::/122 blackhole" not in birdconf.render(s, "n1").split("protocol static blocks {")[1].split("}")[0]
    assert "kernel6" not in birdconf.render(s, "n3")  # a node without IPv6 gets no IPv6 sections
