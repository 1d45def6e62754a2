"""The kinds beyond IPPool without etcd: names, defaults, validation naming fields, tables, IPAM check, BIRD output."""

from __future__ import annotations

import pytest

from cni_calico.ctl import ipam_check, node_cmd, output
from cni_calico.ctl.kinds.bgp import BGPPEER, NODE
from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
from cni_calico.ctl.kinds.policy import GLOBALNETWORKPOLICY, NETWORKPOLICY, PROFILE
from cni_calico.ctl.kinds.workload import IPAMCONFIG, WORKLOADENDPOINT, ipam_encode
from cni_calico.resources import Resource, ValidationError, from_stored, lookup, validate
from ipam.allocator import Block
from ipam.store import Handle


def res(kind, spec: dict, name: str = "r1", **meta) -> Resource:
    return Resource(kind, {"name": name, **meta}, spec)


def errors_of(resource: Resource) -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate(resource)
    return [str(e) for e in info.value.errors]


def rule_spec(**rule) -> dict:
    return {"ingress": [{"action": "Allow", **rule}]}


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "kind"), [
    ("no", NODE), ("NODES", NODE), ("bgpp", BGPPEER), ("bgpconfigs", BGPCONFIGURATION), ("pro", PROFILE),
    ("np", NETWORKPOLICY), ("policy", NETWORKPOLICY), ("gnp", GLOBALNETWORKPOLICY), ("wep", WORKLOADENDPOINT),
    ("ipamconfigs", IPAMCONFIG), ("GlobalNetworkPolicies", GLOBALNETWORKPOLICY),
])
def test_calico_names(alias, kind):
    assert lookup(alias) is kind


def test_namespaced_kinds():
    assert [k.name for k in (NETWORKPOLICY, WORKLOADENDPOINT) if k.namespaced] == ["NetworkPolicy",
                                                                                  "WorkloadEndpoint"]
    assert not any(k.namespaced for k in (NODE, BGPPEER, BGPCONFIGURATION, PROFILE, GLOBALNETWORKPOLICY, IPAMCONFIG))


# --- AS numbers, addresses, names --------------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [(64512, 64512), ("64512", 64512), ("1.10", 65546),
                                               (4294967295, 4294967295), ("65535.65535", 4294967295)])
def test_as_numbers_are_normalised(given, stored):
    node = res(NODE, {"bgp": {"asNumber": given}})
    validate(node)
    assert node.spec["bgp"]["asNumber"] == stored


@pytest.mark.parametrize("bad", [0, -1, 4294967296, "1.65536", "a.b", True, "0.0", 1.5])
def test_bad_as_numbers(bad):
    (error,) = errors_of(res(BGPPEER, {"peerIP": "10.0.0.1", "asNumber": bad}))
    assert error.startswith("spec.asNumber") and ("AS number" in error or "must be" in error)


@pytest.mark.parametrize(("spec", "field"), [
    ({"bgp": {"ipv4Address": "10.0.0.1/33"}}, "spec.bgp.ipv4Address = '10.0.0.1/33'"),
    ({"bgp": {"ipv6Address": "10.0.0.1/24"}}, "spec.bgp.ipv6Address = '10.0.0.1/24' (must be an IPv6 address"),
    ({"bgp": {"routeReflectorClusterID": "fd00::1"}}, "spec.bgp.routeReflectorClusterID = 'fd00::1'"),
    ({"bgp": {"routeReflectorClusterID": "224.0.0.1/32"}}, "spec.bgp.routeReflectorClusterID"),
    ({"ipv4VXLANTunnelAddr": "10.0.0.256"}, "spec.ipv4VXLANTunnelAddr"),
    ({"orchRefs": [{"nodeName": "x"}]}, "spec.orchRefs[0].orchestrator"),
    ({"bgp": "10.0.0.1"}, "spec.bgp = '10.0.0.1' (must be a mapping)"),
])
def test_node_fields(spec, field):
    assert any(e.startswith(field) for e in errors_of(res(NODE, spec))), errors_of(res(NODE, spec))


def test_good_node_and_reflector_id():
    validate(res(NODE, {"bgp": {"ipv4Address": "10.0.0.1/24", "ipv6Address": "fd00::1/64",
                                "routeReflectorClusterID": "224.0.0.1"}, "vxlanTunnelMACAddr": "ee:ee:ee:ee:ee:ee"}))


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({"peerIP": "10.0.0.1"}, "spec.asNumber", "needs the peer's AS number"),
    ({"asNumber": 1}, "spec.peerIP", "needs spec.peerIP"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "node": "n1", "nodeSelector": "all()"}, "spec.nodeSelector", "not both"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "peerSelector": "all()"}, "spec.peerSelector", "not both"),
    ({"peerSelector": "rr == 'y'", "asNumber": 1}, "spec.asNumber", "peers' own AS numbers"),
    ({"peerIP": "10.0.0.1:99999", "asNumber": 1}, "spec.peerIP", "port must be 1-65535"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "node": "Node_1"}, "spec.node", "RFC 1123"),
    ({"peerIP": "10.0.0.1", "asNumber": 1, "sourceAddress": "Any"}, "spec.sourceAddress", "UseNodeIP, None"),
])
def test_bgppeer_rules(spec, field, reason):
    errors = errors_of(res(BGPPEER, spec))
    assert any(e.startswith(field) and reason in e for e in errors), errors


@pytest.mark.parametrize("peer_ip", ["10.0.0.1", "10.0.0.1:1790", "fd00::1", "[fd00::1]:179"])
def test_bgppeer_addresses(peer_ip):
    validate(res(BGPPEER, {"peerIP": peer_ip, "asNumber": "65000"}))


def test_bgp_configuration():
    conf = res(BGPCONFIGURATION, {"asNumber": "0.64512", "nodeToNodeMeshEnabled": False,
                                  "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}, name="default")
    validate(conf)
    assert conf.spec["asNumber"] == 64512
    errors = errors_of(res(BGPCONFIGURATION, {"asNumber": 65000, "logSeverityScreen": "info",
                                              "serviceClusterIPs": [{"cidr": "10.96.0.1"}]}, name="node.n1"))
    assert "spec.logSeverityScreen = 'info' (must be one of Debug, Info, Warning, Error, Fatal (did you mean " \
           "Info?))" in errors
    assert any(e.startswith("spec.serviceClusterIPs[0].cidr = '10.96.0.1'") for e in errors)
    assert "spec.asNumber = '65000' (may be set in the cluster-wide 'default' BGPConfiguration only)" in errors


# --- rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ports", [[80], ["80"], ["1:65535"], ["http-alt"], [443, "8000:8080", "metrics"]])
def test_good_ports(ports):
    policy = res(GLOBALNETWORKPOLICY, rule_spec(protocol="TCP", destination={"ports": ports, "notPorts": [22]}))
    validate(policy)
    assert all(isinstance(p, int) or not p.isdigit() for p in policy.spec["ingress"][0]["destination"]["ports"])


@pytest.mark.parametrize(("ports", "reason"), [
    ([0], "port must be 1-65535"), ([65536], "port must be 1-65535"), (["10:5"], "low <= high"),
    (["0:10"], "bounds must be 1-65535"), (["1:2:3"], "a range"), (["Has_Upper"], "port name"),
    ([True], "a port name"), ("80", "must be a list of ports"),
])
def test_bad_ports(ports, reason):
    errors = errors_of(res(NETWORKPOLICY, rule_spec(protocol="UDP", source={"ports": ports})))
    assert any(e.startswith("spec.ingress[0].source.ports") and reason in e for e in errors), errors


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP", "UDPLite", 6, 17, 132, 136])
def test_protocols_with_ports(protocol):
    validate(res(PROFILE, rule_spec(protocol=protocol, destination={"ports": [53]})))


@pytest.mark.parametrize(("rule", "field", "reason"), [
    ({"protocol": "ICMP", "destination": {"ports": [1]}}, "spec.ingress[0].destination.ports", "not ICMP"),
    ({"destination": {"notPorts": [1]}}, "spec.ingress[0].destination.notPorts", "the rule has no protocol"),
    ({"protocol": "tcp"}, "spec.ingress[0].protocol = 'tcp'", "did you mean TCP?"),
    ({"protocol": 0}, "spec.ingress[0].protocol = '0'", "1-255"),
    ({"notProtocol": "HTTP"}, "spec.ingress[0].notProtocol = 'HTTP'", "one of TCP"),
    ({"protocol": "TCP", "icmp": {"type": 8}}, "spec.ingress[0].icmp", "need protocol ICMP or ICMPv6"),
    ({"protocol": "ICMP", "icmp": {"type": 255}}, "spec.ingress[0].icmp.type = '255'", "0-254"),
    ({"protocol": "ICMP", "icmp": {"type": 3, "code": 256}}, "spec.ingress[0].icmp.code = '256'", "0-255"),
    ({"protocol": "ICMPv6", "notICMP": {"code": 1}}, "spec.ingress[0].notICMP.code", "needs an ICMP type"),
    ({"protocol": "ICMPv6", "ipVersion": 4}, "spec.ingress[0].protocol = 'ICMPv6'", "ipVersion 4"),
    ({"ipVersion": 5}, "spec.ingress[0].ipVersion = '5'", "4 or 6"),
    ({"ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}}, "spec.ingress[0].ipVersion", "CIDRs are IPv4"),
    ({"source": {"nets": ["10.0.0.0/8"], "notNets": ["fd00::/8"]}}, "spec.ingress[0]", "mix IPv4 and IPv6"),
    ({"source": {"selector": "a ==", "namespaceSelector": "has(x"}}, "spec.ingress[0].source.selector = 'a =='",
     "invalid selector:"),
    ({"source": {"namespaceSelector": "has(x"}}, "spec.ingress[0].source.namespaceSelector = 'has(x'",
     "at position"),
    ({"destination": {"serviceAccounts": {"name": "a"}}}, "spec.ingress[0].destination.serviceAccounts.name",
     "unknown field"),
    ({"destination": {"services": {}}}, "spec.ingress[0].destination.services", "unknown field"),
    ({"http": {}}, "spec.ingress[0].http", "unknown field"),
])
def test_rule_errors_name_the_field(rule, field, reason):
    errors = errors_of(res(GLOBALNETWORKPOLICY, rule_spec(**rule)))
    assert any(e.startswith(field) and reason in e for e in errors), errors


def test_rule_needs_a_valid_action():
    assert errors_of(res(PROFILE, {"egress": [{}]})) == [
        "spec.egress[0].action (a rule needs an action: one of Allow, Deny, Pass, Log)"]
    assert "spec.egress[0] = 'Allow' (a rule must be a mapping)" in errors_of(res(PROFILE, {"egress": ["Allow"]}))


def test_selector_error_gives_field_and_position():
    (error,) = errors_of(res(NETWORKPOLICY, {"selector": "role == "}, namespace="default"))
    assert error == "spec.selector = 'role == ' (invalid selector: expected string at position 8)"
    assert errors_of(res(IPAMCONFIG, {}, name="x")) == [
        "metadata.name = 'x' (the only IPAMConfig is named 'default')"]


# --- policy types and flags ------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "types"), [
    ({}, ["Ingress"]), ({"ingress": [{"action": "Allow"}]}, ["Ingress"]),
    ({"egress": [{"action": "Deny"}]}, ["Egress"]),
    ({"ingress": [{"action": "Allow"}], "egress": [{"action": "Deny"}]}, ["Ingress", "Egress"]),
    ({"types": ["Egress"]}, ["Egress"]),
])
def test_policy_types_default_from_rules(spec, types):
    policy = res(NETWORKPOLICY, spec, namespace="default")
    validate(policy)
    assert policy.spec["types"] == types


@pytest.mark.parametrize(("spec", "field"), [
    ({"types": ["ingress"]}, "spec.types[0] = 'ingress'"), ({"types": ["Ingress", "Ingress"]}, "spec.types"),
    ({"types": ["Ingress"], "egress": [{"action": "Allow"}]}, "spec.egress"),
    ({"doNotTrack": True, "preDNAT": True, "applyOnForward": True}, "spec.preDNAT"),
    ({"doNotTrack": True}, "spec.applyOnForward = 'false'"),
    ({"preDNAT": True, "applyOnForward": True, "egress": [{"action": "Allow"}]}, "spec.egress (a preDNAT"),
    ({"order": "first"}, "spec.order = 'first' (must be an integer or a number)"),
    ({"namespaceSelector": "x =="}, "spec.namespaceSelector"),
])
def test_global_policy_errors(spec, field):
    errors = errors_of(res(GLOBALNETWORKPOLICY, spec))
    assert any(e.startswith(field) for e in errors), errors


def test_namespace_only_for_namespaced_policy():
    assert "doNotTrack" not in NETWORKPOLICY.spec_fields
    assert any(e.startswith("spec.doNotTrack (unknown field)")
               for e in errors_of(res(NETWORKPOLICY, {"doNotTrack": True}, namespace="default")))
    assert any(e.startswith("metadata.namespace") for e in errors_of(res(PROFILE, {}, namespace="default")))


def test_profile_labels():
    assert errors_of(res(PROFILE, {"labelsToApply": {"bad key!": "x", "ok": 5}})) == [
        "spec.labelsToApply = 'bad key!' (invalid label name)",
        "spec.labelsToApply.ok = '5' (label value must be a string of at most 63 characters)"]


# --- IPAMConfig and tables ---------------------------------------------------------------------------


def test_ipamconfig_round_trip():
    config = res(IPAMCONFIG, {"strictAffinity": True, "maxBlocksPerHost": 3}, name="default")
    validate(config)
    # Calico's model.IPAMConfig: mixed-case names, zero values left out
    assert ipam_encode(config) == {"strict_affinity": True, "auto_allocate_blocks": True, "maxBlocksPerHost": 3}
    back = from_stored(IPAMCONFIG, {"strict_affinity": True, "max_blocks_per_host": 3}, 9)  # our old name, read
    assert (back.name, back.resource_version, back.spec) == (
        "default", "9", {"strictAffinity": True, "autoAllocateBlocks": False, "maxBlocksPerHost": 3,
                         "ipCooldownSeconds": 0})
    refused = res(IPAMCONFIG, {"strictAffinity": False, "maxBlocksPerHost": 3}, name="default")
    with pytest.raises(ValidationError, match="maxBlocksPerHost can only be set with strictAffinity true"):
        validate(refused)


def test_tables_with_namespaces_and_context():
    weps = [from_stored(WORKLOADENDPOINT, {"metadata": {"name": n, "namespace": ns}, "spec": {
        "node": "node1", "pod": "web", "ipNetworks": ["10.0.0.1/32"], "interfaceName": "cali1"}}, 1)
        for ns, n in (("default", "a"), ("production", "b"))]
    assert output.render(weps, "ps", all_namespaces=True) == (
        "NAMESPACE    WORKLOAD   NODE    NETWORKS      INTERFACE\n"
        "default      web        node1   10.0.0.1/32   cali1\n"
        "production   web        node1   10.0.0.1/32   cali1\n\n")
    node = from_stored(NODE, {"metadata": {"name": "n"}, "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}}, 1)
    assert output.render([node], "wide", context={"asnumber": 65000}).splitlines()[1].split() == [
        "n", "(65000)", "10.0.0.1/24"]
    assert output.render([], "ps", listed=NETWORKPOLICY, all_namespaces=True) == "NAMESPACE   NAME   TIER\n\n"


def test_box_table_like_calico():
    text = output.box(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
                      [["192.168.200.2", "node-to-node mesh", "up", "07:12:52", "Established"]])
    assert text == (
        "+---------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        "| 192.168.200.2 | node-to-node mesh | up    | 07:12:52 | Established |\n"
        "+---------------+-------------------+-------+----------+-------------+\n")


# --- node status parsing ---------------------------------------------------------------------------

BIRDC = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     18:47:53.748
Mesh_192_168_200_2 BGP        ---        up     18:47:54.547  Established
Node_fd00__9 BGP        ---        start  18:48:02.813  Idle
Global_10_0_0_1 BGP     ---        start  2024-05-01 18:48:02  Active        Socket: Connection refused
peer_x     BGP        ---        start  18:48:02.813  Connect
"""


def test_bird_protocols_parsed():
    peers, unknown = node_cmd.parse_protocols(BIRDC)
    assert [(p.address, p.kind, p.state, p.since, p.info) for p in peers] == [
        ("192.168.200.2", "node-to-node mesh", "up", "18:47:54", "Established"),
        ("fd00::9", "node specific", "start", "18:48:02", "Idle"),
        ("10.0.0.1", "global", "start", "2024-05-01 18:48:02", "Active Socket: Connection refused")]
    assert unknown == ["peer_x"]
    descriptions = node_cmd.parse_descriptions("peer_x  BGP  ---  start  18:48:02.813  Connect\n"
                                               "  Description:    Global_192_168_200_9\n  BGP state: Connect\n")
    peers, unknown = node_cmd.parse_protocols(BIRDC, descriptions)
    assert (peers[-1].address, peers[-1].kind, unknown) == ("192.168.200.9", "global", [])
    assert node_cmd.peer_from_name("Mesh_300_1_1_1") is None and node_cmd.peer_from_name("kernel1") is None


# --- ipam check ----------------------------------------------------------------------------------------


def test_ipam_check_analysis():
    block = Block.new("10.0.0.0/30", "n1")
    block.assign(1, "net1.live", {"node": "n1", "containerID": "live"})
    block.assign(1, "net1.dead", {"node": "n1", "containerID": "dead"})
    block.assign(1, "vxlan-tunnel-addr-n1", {"node": "n1", "type": "vxlanTunnelAddress"})
    endpoint = from_stored(WORKLOADENDPOINT, {"metadata": {"name": "w", "namespace": "default"}, "spec": {
        "node": "n1", "containerID": "live", "ipNetworks": ["10.0.0.0/32", "10.0.0.3/32"]}}, 1)
    node = from_stored(NODE, {"metadata": {"name": "n1"}, "spec": {"ipv4VXLANTunnelAddr": "10.0.0.2"}}, 1)
    handles = [Handle("net1.live", {"10.0.0.0/30": 1}, 5), Handle("net1.dead", {"10.0.0.0/30": 2}, 6),
               Handle("net1.gone", {"10.9.0.0/30": 1}, 7)]
    snap = ipam_check.Snapshot(11, [block], handles, [endpoint], [node], [])
    found = ipam_check.analyse(snap)
    assert [(a.ip, a.handle, a.handleRevision) for a in found.orphans] == [("10.0.0.1", "net1.dead", 6)]
    assert found.endpoint_problems == [{"ip": "10.0.0.3", "endpoint": "Workload(default/w)",
                                        "problem": "not allocated in IPAM"}]
    assert [p["handle"] for p in found.handle_problems] == ["net1.dead", "net1.gone", "vxlan-tunnel-addr-n1"]
    assert [h.handle_id for h in found.leaked_handles] == ["net1.gone"] and found.problems == 5
    doc = ipam_check.report(snap, found)
    assert doc["revision"] == 11 and doc["orphans"][0]["node"] == "n1" and "owners" not in doc["orphans"][0]
    assert doc["coolingDown"] == [] and doc["blockProblems"] == []


def test_ipam_check_lists_cooling_addresses_apart_and_a_future_release_as_clock_skew():
    import datetime

    from cni_calico.v3 import timestamp

    block = Block.new("10.0.0.0/30", "n1")
    block.assign(2, "net1.gone", {"node": "n1"})
    block.release_handle("net1.gone", cooldown=3600)
    snap = ipam_check.Snapshot(3, [block], [], [], [], [])
    found = ipam_check.analyse(snap)
    assert found.orphans == [] and found.handle_problems == [] and found.problems == 0
    assert [(c.ip, c.coolingDown) for c in found.cooling] == [("10.0.0.0", True), ("10.0.0.1", True)]
    assert ipam_check.report(snap, found)["coolingDown"][0] == {
        "ip": "10.0.0.0", "block": "10.0.0.0/30", "releasedAt": block.cooling(0), "coolingDown": True}
    later = timestamp(datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    block.attributes[block.allocations[0]]["releasedAt"] = later
    found = ipam_check.analyse(snap)
    assert found.problems == 1 and "released in the future" in found.block_problems[0]["problem"]
