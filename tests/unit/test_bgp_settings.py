"""BGP settings (BGPConfiguration, BGPPeer, BGPFilter) rendered into BIRD 2's config as confd renders them,
and the whole config, every field used, accepted by `bird -p`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cni_calico.node import bgpfilters, birdconf
from cni_calico.node.model import Routing, Snapshot
from cni_calico.v3 import BGPConfiguration, BGPFilter, BGPPeer, IPPool, Node, SecretRef

N1 = Node("n1", "192.168.0.1", "192.168.0.1/24", ipv6="fd00::1", ipv6_cidr="fd00::1/64")
N2 = Node("n2", "192.168.0.2", "192.168.0.2/24", ipv6="fd00::2", ipv6_cidr="fd00::2/64")
MESH_SECRET = SecretRef("bgp-secrets", "mesh")
PEER_SECRET = SecretRef("bgp-secrets", "tor")


def _value(kind: str, name: str, spec: dict) -> dict:
    return {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}, "spec": spec}


CONFIG_SPEC = {
    "logSeverityScreen": "Debug", "listenPort": 1790, "bindMode": "NodeIP", "ignoredInterfaces": ["eth9*"],
    "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/108"}],
    "serviceExternalIPs": [{"cidr": "203.0.113.0/24"}],
    "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
    "communities": [{"name": "gold", "value": "65000:100"}],
    "prefixAdvertisements": [{"cidr": "10.96.0.0/12", "communities": ["gold", "65000:1:2"]}],
    "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}},
    "nodeMeshMaxRestartTime": "2m",
}
CONFIG = BGPConfiguration.from_value(_value("BGPConfiguration", "default", CONFIG_SPEC))
TOR_SPEC = {
    "peerIP": "192.168.0.250:1791", "asNumber": 65100, "localASNumber": 65010, "keepOriginalNextHop": True,
    "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}}, "sourceAddress": "None",
    "maxRestartTime": "45s", "keepaliveTime": "10s", "numAllowedLocalASNumbers": 2, "ttlSecurity": 2,
    "reachableBy": "192.168.0.254", "filters": ["no-test-net", "tag"], "reversePeering": "Auto",
}
TOR = BGPPeer.from_value(_value("BGPPeer", "tor", TOR_SPEC))
TOR6 = BGPPeer.from_value(_value("BGPPeer", "tor6", {"peerIP": "fd00::250", "asNumber": 65100,
                                                     "nextHopMode": "Self", "filters": ["no-test-net"]}))
NO_TEST_NET_SPEC = {
    "importV4": [{"cidr": "10.50.0.0/16", "matchOperator": "In", "prefixLength": {"min": 24}, "action": "Reject"},
                 {"source": "RemotePeers", "action": "Accept"}],
    "exportV4": [{"cidr": "10.0.0.0/26", "matchOperator": "Equal", "action": "Reject"},
                 {"interface": "eth*", "matchOperator": "NotIn", "cidr": "10.60.0.0/16", "action": "Accept"}],
    "importV6": [{"cidr": "fd00:50::/64", "matchOperator": "NotEqual", "action": "Accept"}],
    "exportV6": [{"cidr": "fd00:10::/64", "matchOperator": "In", "action": "Reject"}],
}
NO_TEST_NET = BGPFilter.from_value(_value("BGPFilter", "no-test-net", NO_TEST_NET_SPEC))
TAG_SPEC = {
    "exportV4": [{"peerType": "eBGP", "communities": {"values": ["65000:7"]}, "asPathPrefix": [65001],
                  "operations": [{"addCommunity": {"value": "65000:8"}}, {"prependASPath": {"prefix": [65010, 65011]}}],
                  "action": "Accept"}],
}
TAG = BGPFilter.from_value(_value("BGPFilter", "tag", TAG_SPEC))


def full_snapshot() -> Snapshot:
    return Snapshot(1, {"n1": N1, "n2": N2}, True, 64512, [TOR, TOR6],
                    [IPPool("p", "10.0.0.0/16", 26), IPPool("p6", "fd00:10::/64", 122)],
                    {"10.0.0.0/26": "n1", "fd00:10::/122": "n1"}, CONFIG,
                    {"n2": BGPConfiguration("node.n2", listen_port=1800)},
                    {"no-test-net": NO_TEST_NET, "tag": TAG})


SECRETS = {MESH_SECRET: "mesh-pw", PEER_SECRET: "tor-pw"}


def test_every_field_renders_as_confd_does():
    text = birdconf.render(full_snapshot(), "n1", secrets=SECRETS)
    mesh = text.split("protocol bgp Mesh_192_168_0_2 ")[1].split("\n}")[0]
    assert "neighbor 192.168.0.2 port 1800 as 64512;" in mesh  # n2's own listenPort
    assert 'password "mesh-pw";' in mesh and "graceful restart time 120;" in mesh
    assert "local 192.168.0.1 as 64512;" in mesh and "strict bind on;" in mesh
    tor = text.split("protocol bgp Global_192_168_0_250_port_1791 ")[1].split("\n}")[0]
    assert "neighbor 192.168.0.250 port 1791 as 65100;" in tor
    assert "  local as 65010;" in tor and "strict bind" not in tor  # sourceAddress None: no local address
    for line in ('password "tor-pw";', "graceful restart time 45;", "keepalive time 10;", "allow local as 2;",
                 "ttl security on;", "multihop 2;", "next hop keep;",
                 "import filter { 'bgp_no-test-net_importFilterV4'(); accept; };",
                 "export filter { 'bgp_no-test-net_exportFilterV4'(); 'bgp_tag_exportFilterV4'(false); "
                 "calico_export_to_bgp_peers(); };"):
        assert line in tor, line
    assert "route 192.168.0.250/32 via 192.168.0.254;" in text  # reachableBy
    assert "  local port 1790 as 64512;" in text and "debug all;" in text
    assert 'interface -"eth9*", -"cali*", -"kube-ipvs*"' in text
    assert "route 10.96.0.0/12 blackhole;" in text and "route 203.0.113.0/24 blackhole;" in text
    assert "route 198.51.100.0/24 blackhole;" in text
    assert "if net ~ [ 10.96.0.0/12+, 198.51.100.0/24+, 203.0.113.0/24+ ] then reject;" in text  # not in kernel
    assert 'if proto = "services" then accept;' in text
    assert ("if net ~ 10.96.0.0/12 then { bgp_community.add((65000, 100)); "
            "bgp_large_community.add((65000, 1, 2)); }") in text
    assert "function 'bgp_tag_exportFilterV4'(bool is_same_as) {" in text
    assert ("if (!is_same_as) then { if (((65000, 7) ~ bgp_community)&&(bgp_path ~ [= 65001 * =])) then { "
            "bgp_community.add((65000, 8)); bgp_path.prepend(65011); bgp_path.prepend(65010); accept; } }") in text
    assert "if ((net ~ [ 10.50.0.0/16{24,32} ])) then { reject; }" in text
    assert "if ((net = 10.0.0.0/26)) then { reject; }" in text
    assert "route fd00:96::/108 blackhole;" in text and "next hop self;" in text
    tor6 = text.split("protocol bgp Global_fd00__250 ")[1].split("\n}")[0]
    assert "  multihop;" in tor6 and "ttl security" not in tor6  # as confd: multihop without ttlSecurity


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 (Debian bird2) is not installed")
def test_config_with_every_field_passes_bird_parse(tmp_path):
    path = tmp_path / "bird.cfg"
    path.write_text(birdconf.render(full_snapshot(), "n1", "192.168.0.0/24", secrets=SECRETS))
    result = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + path.read_text()


def test_missing_password_disables_the_session_never_passwordless():
    text = birdconf.render(full_snapshot(), "n1", secrets={PEER_SECRET: "tor-pw"})
    mesh = text.split("protocol bgp Mesh_192_168_0_2 ")[1].split("\n}")[0]
    assert "disabled;" in mesh and "password" not in mesh.replace("password secret", "")
    assert birdconf.secret_refs(full_snapshot(), "n1") == {MESH_SECRET, PEER_SECRET}


@pytest.mark.parametrize("level,device,session", [
    ("Info", "debug { states };", "debug { states, routes, filters, events };"),
    ("", "debug { states };", "debug { states, routes, filters, events };"),
    ("Warning", None, None),
])
def test_log_severity_as_confd_maps_it(level, device, session):
    snap = full_snapshot()
    snap.config = BGPConfiguration("default", log_severity=level)
    text = birdconf.render(snap, "n1", secrets=SECRETS)
    if device is None:
        assert "debug" not in text
    else:
        assert device in text and session in text


def test_long_filter_names_fit_bird_symbols():
    name = bgpfilters.function_name("f" * 80, "import", 4)
    assert len(name) - 2 <= 64 and name.startswith("'bgp_" + "f" * 28 + "_")


def test_routing_view_reads_node_configs_and_filters():
    routing = Routing()
    key = "/calico/resources/v3/projectcalico.org/bgpconfigurations/node.n2"
    assert routing.update(key, _value("BGPConfiguration", "node.n2", {"listenPort": 1800}))
    assert routing.update("/calico/resources/v3/projectcalico.org/bgpfilters/f", _value("BGPFilter", "f", {}))
    snap = routing.snapshot()
    assert snap.listen_port("n2") == 1800 and snap.listen_port("n1") == 0 and "f" in snap.filters
    assert routing.update(key, None) and routing.snapshot().listen_port("n2") == 0


# --- calicoctl: each field rendered, or refused as not supported --------------------------------


def _errors(kind, spec: dict, name: str = "default") -> list[str]:
    from cni_calico.resources import Resource, ValidationError, validate

    try:
        validate(Resource(kind, {"name": name}, spec))
    except ValidationError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_calicoctl_accepts_every_rendered_field():
    from cni_calico.ctl.kinds.bgp import BGPPEER
    from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
    from cni_calico.ctl.kinds.bgpfilter import BGPFILTER

    for kind, value in ((BGPCONFIGURATION, CONFIG_SPEC), (BGPPEER, TOR_SPEC)):
        assert _errors(kind, dict(value)) == []
    assert _errors(BGPFILTER, dict(NO_TEST_NET_SPEC), "no-test-net") == []
    assert _errors(BGPFILTER, dict(TAG_SPEC), "tag") == []


@pytest.mark.parametrize("kind,spec,field", [
    ("config", {"ipv4NormalRoutePriority": 512}, "spec.ipv4NormalRoutePriority"),
    ("config", {"localWorkloadPeeringIPV4": "169.254.0.1"}, "spec.localWorkloadPeeringIPV4"),
    ("config", {"programClusterRoutes": "Disabled"}, "spec.programClusterRoutes"),
    ("config", {"serviceLoadBalancerAggregation": "Disabled"}, "spec.serviceLoadBalancerAggregation"),
    ("config", {"serviceExternalIPs": [{"cidr": "203.0.113.7/32"}]}, "spec.serviceExternalIPs[0].cidr"),
    ("peer", {"peerIP": "10.0.0.9", "asNumber": 65000, "localWorkloadSelector": "all()"},
     "spec.localWorkloadSelector"),
    ("peer", {"peerIP": "10.0.0.9", "asNumber": 65000, "reversePeering": "Manual"}, "spec.reversePeering"),
    ("filter", {"importV4": [{"action": "Accept", "priority": 512}]}, "spec.importV4[0].priority"),
    ("filter", {"exportV4": [{"action": "Accept", "operations": [{"setPriority": {"value": 5}}]}]},
     "spec.exportV4[0].operations[0].setPriority"),
])
def test_calicoctl_refuses_what_is_not_rendered(kind, spec, field):
    from cni_calico.ctl.kinds.bgp import BGPPEER
    from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
    from cni_calico.ctl.kinds.bgpfilter import BGPFILTER

    kinds = {"config": BGPCONFIGURATION, "peer": BGPPEER, "filter": BGPFILTER}
    errors = _errors(kinds[kind], spec, "f1" if kind == "filter" else "default")
    assert any(field in e and "not supported" in e for e in errors), errors


@pytest.mark.parametrize("kind,spec,field", [
    ("config", {"nodeMeshPassword": {"secretKeyRef": {"name": "../x", "key": "k"}}},
     "spec.nodeMeshPassword.secretKeyRef.name"),
    ("config", {"nodeMeshMaxRestartTime": "soon"}, "spec.nodeMeshMaxRestartTime"),
    ("config", {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nope"]}]},
     "spec.prefixAdvertisements[0].communities[0]"),
    ("peer", {"peerIP": "10.0.0.9", "asNumber": 65000, "reachableBy": "fd00::1"}, "spec.reachableBy"),
    ("peer", {"peerIP": "10.0.0.9", "asNumber": 65000, "ttlSecurity": 300}, "spec.ttlSecurity"),
    ("filter", {"importV4": [{"cidr": "10.0.0.0/8", "action": "Accept"}]}, "spec.importV4[0].matchOperator"),
    ("filter", {"importV6": [{"cidr": "10.0.0.0/8", "matchOperator": "In", "action": "Accept"}]},
     "spec.importV6[0].cidr"),
])
def test_calicoctl_names_bad_values(kind, spec, field):
    from cni_calico.ctl.kinds.bgp import BGPPEER
    from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
    from cni_calico.ctl.kinds.bgpfilter import BGPFILTER

    kinds = {"config": BGPCONFIGURATION, "peer": BGPPEER, "filter": BGPFILTER}
    errors = _errors(kinds[kind], spec, "f1" if kind == "filter" else "default")
    assert any(field in e for e in errors), errors


def test_node_specific_configuration_takes_only_what_confd_reads_per_node():
    from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION

    assert _errors(BGPCONFIGURATION, {"listenPort": 1790, "logSeverityScreen": "Debug"}, "node.n1") == []
    errors = _errors(BGPCONFIGURATION, {"ignoredInterfaces": ["eth1"]}, "node.n1")
    assert any("spec.ignoredInterfaces" in e for e in errors)


def test_bind_mode_node_ip_and_source_address_none_are_refused_together():
    """BIRD 2 cannot listen on the node IP for some sessions and on every address for others."""
    from cni_calico.ctl.kinds.bgp import BGPPEER
    from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
    from cni_calico.resources import Resource

    config = Resource(BGPCONFIGURATION, {"name": "default"}, {"bindMode": "NodeIP"})
    peer = Resource(BGPPEER, {"name": "tor"}, {"peerIP": "10.0.0.9", "asNumber": 65000, "sourceAddress": "None"})
    stored = {"bgpconfigurations": [config], "bgppeers": [peer]}
    errors = BGPPEER.check_related(peer, stored.__getitem__)
    assert errors and errors[0].field == "spec.sourceAddress" and "bindMode NodeIP" in str(errors[0])
    errors = BGPCONFIGURATION.check_related(config, stored.__getitem__)
    assert errors and errors[0].field == "spec.bindMode" and "tor" in str(errors[0])
    assert BGPPEER.check_related(peer, {"bgpconfigurations": [], "bgppeers": []}.__getitem__) == []
