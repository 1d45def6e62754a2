"""Host endpoints without a kernel: the records, Felix's sorting of policies (doNotTrack, preDNAT,
applyOnForward; workloads see none of the first two), the chains of a host endpoint (default deny,
"*", the tables), the failsafe ports (Felix's defaults, FelixConfiguration's and the environment's
forms), calicoctl's HostEndpoint kind, and the dataplane's jumps from INPUT, OUTPUT and the mangle and
raw tables. (The calculator equals the from-scratch render with host endpoints too: test_policy_calc's
property test draws them.)"""

from __future__ import annotations

import pytest

from cni_calico.ctl.kinds.felix import FELIXCONFIGURATION
from cni_calico.ctl.kinds.hostendpoints import HOSTENDPOINT
from cni_calico.datastore import encode
from cni_calico.node.config import NodeConfigError, from_env
from cni_calico.policy import hostep, model, render
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.iptables import Dataplane
from cni_calico.policy.layout import Ruleset, chain_name
from cni_calico.resources import Resource, ValidationError, lookup, validate
from cni_calico.v3 import FAILSAFE_INBOUND, FelixConfiguration, ProtoPort, parse_port_list, proto_ports_from_config
from tests.unit.test_policy_dataplane import Fake

NODE = "n1"


def hep(name: str = "h1", iface: str = "eth0", node: str = NODE, labels: dict | None = None, **spec) -> model.Endpoint:
    return model.host_endpoint_from_resource({"metadata": {"name": name, "labels": labels or {"hep": "yes"}},
                                              "spec": {"node": node, "interfaceName": iface, **spec}})


def gnp(name: str, selector: str = "hep == 'yes'", **spec) -> model.Policy:
    return model.policy_from_resource({"metadata": {"name": name}, "spec": {"selector": selector, **spec}},
                                      namespaced=False)


def wep(name: str = "w1", iface: str = "cali1") -> model.Endpoint:
    return model.endpoint_from_resource({"metadata": {"name": name, "namespace": "a", "labels": {"hep": "yes"}},
                                         "spec": {"node": NODE, "interfaceName": iface, "ipNetworks": ["10.0.0.1/32"]}})


def rendered(endpoints: list[model.Endpoint], policies: list[model.Policy], version: int = 4,
             failsafe: hostep.Failsafe | None = None) -> Ruleset:
    eps = model.with_effective_labels(endpoints, {})
    return render.render(render.local_endpoints(eps, NODE), eps, policies, {}, version,
                         hosts=hostep.local_host_endpoints(eps, NODE), failsafe=failsafe)


ALLOW = {"action": "Allow"}


# --- records -----------------------------------------------------------------------------------------


def test_a_host_endpoint_is_global_with_its_expected_ips_as_addresses():
    ep = hep(expectedIPs=["10.0.0.5", "fd00::5", "10.9.0.0/16", "junk"], profiles=["p"])
    assert (ep.key, ep.namespace, ep.host, ep.addresses, ep.profiles) == (
        "hostendpoint:h1", "", True, ("10.0.0.5", "fd00::5"), ("p",))
    assert model.effective_labels(ep, {}) == {"hep": "yes"}  # no namespace labels: global() names it


def test_felix_sorts_policies_by_kind_and_namespaced_policies_have_none():
    assert gnp("a", doNotTrack=True, preDNAT=True, applyOnForward=True).kind == "untracked"  # doNotTrack wins
    pre = gnp("b", preDNAT=True, applyOnForward=True, ingress=[ALLOW], egress=[ALLOW])
    assert pre.kind == "prednat" and pre.egress is None  # preDNAT polices ingress only
    assert gnp("c", applyOnForward=True).kind == "normal"
    namespaced = model.policy_from_resource({"metadata": {"name": "n", "namespace": "a"}, "spec": {
        "selector": "all()", "doNotTrack": True}}, namespaced=True)
    assert namespaced.kind == "normal"


# --- chains ------------------------------------------------------------------------------------------


def test_a_profile_less_host_endpoint_without_policy_denies_all_but_the_failsafe_ports():
    rs = rendered([hep()], [])
    ct = ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate INVALID -j DROP")
    assert rs.chains["cali-fh-eth0"] == (*ct, "-j cali-failsafe-in", "-j MARK --set-xmark 0x0/0x30000", "-j DROP")
    assert rs.chains["cali-th-eth0"] == (*ct, "-j cali-failsafe-out", "-j MARK --set-xmark 0x0/0x30000", "-j DROP")
    assert rs.chains["cali-fhfw-eth0"][-2:] == ("-j MARK --set-xmark 0x10000/0x10000", "-j RETURN")  # forwarding
    assert rs.chains["cali-from-host-endpoint"] == ("-i eth0 -g cali-fh-eth0",)
    assert rs.chains["cali-INPUT"][0] == "-i cali+ -g cali-wl-to-host"  # workload traffic: cali-wl-to-host's
    assert rs.chains["cali-FORWARD"][:2] == ("-j MARK --set-xmark 0x0/0x20000",
                                             "-m mark --mark 0x0/0x10000 -j cali-from-hep-forward")
    assert not any(k.startswith(("mangle:", "raw:")) and "cali-fh-" in k for k in rs.chains)  # no such policy
    assert "-I INPUT 1 " in rs.text() and "*raw" in rs.text() and "*mangle" in rs.text()


def test_without_a_host_endpoint_only_forward_and_the_workloads_input_are_ours():
    rs = rendered([wep(), hep(node="n2"), hep("h2", iface="")], [gnp("p", ingress=[ALLOW])])
    assert not any(k in rs.chains for k in ("cali-OUTPUT", "cali-failsafe-in", "cali-from-host-endpoint"))
    assert rs.chains["cali-INPUT"] == ("-i cali+ -g cali-wl-to-host",)  # workload -> own host (Felix's)
    assert not any(":" in k for k in rs.chains) and "*raw" not in rs.text() and "OUTPUT" not in rs.text()


def test_each_kind_of_policy_goes_to_its_table_and_workloads_get_normal_policy_only():
    policies = [gnp("normal", ingress=[ALLOW]), gnp("fwd", applyOnForward=True, ingress=[ALLOW]),
                gnp("pre", preDNAT=True, applyOnForward=True, ingress=[{"action": "Deny"}]),
                gnp("untracked", doNotTrack=True, applyOnForward=True, ingress=[ALLOW], egress=[ALLOW])]
    rs = rendered([hep(), wep()], policies)
    assert "-m mark --mark 0x0/0x20000 -j cali-pi-normal" in rs.chains["cali-fh-eth0"]
    assert "-m mark --mark 0x0/0x20000 -j cali-pi-fwd" in rs.chains["cali-fh-eth0"]
    assert not any("cali-pi-normal" in r for r in rs.chains["cali-fhfw-eth0"])
    assert "-m mark --mark 0x0/0x20000 -j cali-pi-fwd" in rs.chains["cali-fhfw-eth0"]
    assert rs.chains["mangle:cali-pi-pre"] == ("-j DROP",) and "cali-pi-pre" not in rs.chains
    assert "-m mark --mark 0x0/0x20000 -j cali-pi-pre" in rs.chains["mangle:cali-fh-eth0"]
    assert rs.chains["mangle:cali-from-host-endpoint"] == ("-i eth0 -g cali-fh-eth0",)
    raw = rs.chains["raw:cali-th-eth0"]
    assert raw[0] == "-j cali-failsafe-out" and "-m mark --mark 0x10000/0x10000 -j NOTRACK" in raw
    assert "raw:cali-pi-untracked" in rs.chains and "raw:cali-po-untracked" in rs.chains
    workload = rs.chains["cali-tw-cali1"]
    assert any("cali-pi-normal" in r for r in workload)
    assert not any(p in r for r in workload for p in ("cali-pi-pre", "cali-pi-untracked"))


def test_the_all_interfaces_endpoint_is_the_dispatch_default_and_takes_no_untracked_policy():
    policies = [gnp("n", ingress=[ALLOW]), gnp("u", doNotTrack=True, applyOnForward=True, ingress=[ALLOW]),
                gnp("pre", preDNAT=True, applyOnForward=True, ingress=[ALLOW])]
    rs = rendered([hep(iface="eth1"), hep("h2", iface="*")], policies)
    assert rs.chains["cali-from-host-endpoint"] == ("-i eth1 -g cali-fh-eth1", "-g cali-fh-any-interface-at-all")
    hashed = chain_name("cali-thfw-", "any-interface-at-all")  # too long: hashed, as Felix's EndpointChainName
    assert rs.chains["cali-to-hep-forward"][-1] == f"-g {hashed}" and hashed in rs.chains
    assert "raw:cali-fh-any-interface-at-all" not in rs.chains and "raw:cali-fh-eth1" in rs.chains
    assert rs.chains["raw:cali-from-host-endpoint"] == ("-i eth1 -g cali-fh-eth1",)
    assert rs.chains["mangle:cali-from-host-endpoint"][-1] == "-g cali-fh-any-interface-at-all"


def test_the_first_host_endpoint_by_name_has_an_interface_and_workload_interfaces_are_refused():
    first, second = hep("a", labels={"x": "1"}), hep("b", labels={"hep": "yes"})
    assert hostep.local_host_endpoints([second, first], NODE) == {"eth0": first}
    assert hostep.local_host_endpoints([hep(iface="cali123")], NODE) == {}


def test_ipv6_host_endpoint_chains_let_neighbour_discovery_through():
    rs = rendered([hep()], [], version=6)
    assert "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in rs.chains["cali-INPUT"]
    assert "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT" in rs.chains["cali-OUTPUT"]


# --- failsafe ports ----------------------------------------------------------------------------------


def test_felix_default_failsafe_ports():
    rs = rendered([hep()], [])
    inbound = rs.chains["cali-failsafe-in"]
    assert [r.split()[5] for r in inbound] == ["22", "68", "179", "2379", "2380", "5473", "6443", "6666", "6667"]
    assert inbound[1] == "-p udp -m multiport --dports 68 -j ACCEPT"
    assert [r.split()[5] for r in rs.chains["cali-failsafe-out"]] == [
        "53", "67", "179", "2379", "2380", "5473", "6443", "6666", "6667"]
    # raw: the replies of the other direction's failsafe connections too (by source port)
    assert "-p tcp -m multiport --sports 2379 -j ACCEPT" in rs.chains["raw:cali-failsafe-in"]
    assert "-p tcp -m multiport --sports 22 -j ACCEPT" in rs.chains["raw:cali-failsafe-out"]
    assert rs.chains["mangle:cali-failsafe-in"] == inbound


def test_failsafe_entries_with_a_net_go_to_their_family_only():
    failsafe = hostep.Failsafe(inbound=(ProtoPort("tcp", 22, "10.0.0.0/8"), ProtoPort("tcp", 22, "fd00::/64")),
                               outbound=(ProtoPort("sctp", 9, "192.168.0.0/16"),))
    assert rendered([hep()], [], 4, failsafe).chains["cali-failsafe-in"] == (
        "-s 10.0.0.0/8 -p tcp -m multiport --dports 22 -j ACCEPT",)
    assert rendered([hep()], [], 6, failsafe).chains["cali-failsafe-in"] == (
        "-s fd00::/64 -p tcp -m multiport --dports 22 -j ACCEPT",)
    assert rendered([hep()], [], 4, failsafe).chains["cali-failsafe-out"] == (
        "-d 192.168.0.0/16 -p sctp -m multiport --dports 9 -j ACCEPT",)
    assert rendered([hep()], [], 6, failsafe).chains["cali-failsafe-out"] == ()


def test_failsafe_port_lists_in_felixs_environment_form():
    assert parse_port_list("tcp:22,udp:68, 2379") == (ProtoPort("tcp", 22), ProtoPort("udp", 68),
                                                      ProtoPort("tcp", 2379))
    assert parse_port_list("none") == ()
    assert parse_port_list("tcp:10.0.0.1:22,udp:[fd00::/64]:53") == (ProtoPort("tcp", 22, "10.0.0.1/32"),
                                                                      ProtoPort("udp", 53, "fd00::/64"))
    for bad in ("icmp:1", "tcp:x", "tcp:70000", "tcp:1:2:3:4", "tcp:nonet:22"):
        with pytest.raises(ValueError):
            parse_port_list(bad)
    assert ",".join(p.text() for p in parse_port_list("tcp:[fd00::/64]:22,udp:10.0.0.0/8:53")) == (
        "tcp:[fd00::/64]:22,udp:10.0.0.0/8:53")


def test_failsafe_port_lists_in_felix_configuration():
    assert proto_ports_from_config([{"protocol": "UDP", "port": 53, "net": "10.0.0.0/8"}, {"port": 22}]) == (
        ProtoPort("udp", 53, "10.0.0.0/8"), ProtoPort("tcp", 22))
    for bad in ([{"protocol": "udp", "port": 1}], [{"protocol": "TCP", "port": 70000}], [{"port": 1, "x": 1}],
                "tcp:22", [{"protocol": "TCP", "port": 1, "net": "nonet"}]):
        with pytest.raises(ValueError):
            proto_ports_from_config(bad)
    felix = FelixConfiguration.from_value({"metadata": {"name": "default"}, "spec": {
        "failsafeInboundHostPorts": [], "failsafeOutboundHostPorts": [{"protocol": "TCP", "port": 179}]}})
    assert felix.failsafe_inbound == () and felix.failsafe_outbound == (ProtoPort("tcp", 179),)
    assert FelixConfiguration.from_value({"metadata": {"name": "default"}, "spec": {}}).failsafe_inbound is None


def test_calicoctl_accepts_failsafe_ports_validated_and_keeps_an_empty_list():
    ok = Resource(FELIXCONFIGURATION, {"name": "default"}, {
        "failsafeInboundHostPorts": [], "failsafeOutboundHostPorts": [{"port": 53, "protocol": "UDP"}]})
    validate(ok)
    ok.metadata.update({"uid": "u", "creationTimestamp": "2026-08-22T13:33:20Z"})
    assert '"failsafeInboundHostPorts":[],"failsafeOutboundHostPorts":[{"protocol":"UDP","port":53}]' in encode(
        ok.to_stored())
    bad = Resource(FELIXCONFIGURATION, {"name": "default"}, {"failsafeInboundHostPorts": [{"protocol": "ICMP",
                                                                                           "port": 1}]})
    with pytest.raises(ValidationError) as info:
        validate(bad)
    assert str(info.value.errors[0]).startswith("spec.failsafeInboundHostPorts")


def test_the_environment_sets_failsafe_ports_and_refuses_bad_ones():
    env = {"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379"}
    cfg = from_env({**env, "FELIX_FAILSAFEINBOUNDHOSTPORTS": "tcp:22", "FELIX_FAILSAFEOUTBOUNDHOSTPORTS": "none"})
    assert cfg.failsafe_inbound == (ProtoPort("tcp", 22),) and cfg.failsafe_outbound == ()
    assert from_env(env).failsafe_inbound is None
    with pytest.raises(NodeConfigError, match="FELIX_FAILSAFEINBOUNDHOSTPORTS"):
        from_env({**env, "FELIX_FAILSAFEINBOUNDHOSTPORTS": "gre:1"})


def test_the_calculator_follows_the_failsafe_ports():
    calc = PolicyCalculator(NODE)
    calc.update_endpoint("hostendpoint:h1", hep())
    calc.take_changes(4)
    failsafe = hostep.Failsafe(inbound=FAILSAFE_INBOUND[:1], outbound=())
    calc.set_failsafe(failsafe)
    changes = calc.take_changes(4)
    assert set(changes.chains) == {"cali-failsafe-in", "cali-failsafe-out", "mangle:cali-failsafe-in",
                                   "mangle:cali-failsafe-out", "raw:cali-failsafe-in", "raw:cali-failsafe-out"}
    assert calc.ruleset(4) == rendered([hep()], [], 4, failsafe)


# --- calicoctl's HostEndpoint --------------------------------------------------------------------------


def errors_of(spec: dict, name: str = "h1") -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate(Resource(HOSTENDPOINT, {"name": name}, spec))
    return [str(e) for e in info.value.errors]


def test_host_endpoint_kind_names_and_columns():
    assert all(lookup(a) is HOSTENDPOINT for a in ("hostendpoint", "hostendpoints", "hep", "heps"))
    assert HOSTENDPOINT.headings == ("NAME", "NODE") and not HOSTENDPOINT.namespaced
    assert HOSTENDPOINT.wide_headings == ("NAME", "NODE", "INTERFACE", "IPS", "PROFILES")
    r = Resource(HOSTENDPOINT, {"name": "h1"}, {"node": "n1", "interfaceName": "eth0",
                                                 "expectedIPs": ["10.0.0.1", "fd00::1"], "profiles": ["a", "b"]})
    validate(r)
    assert [HOSTENDPOINT.columns[c](r, {}) for c in HOSTENDPOINT.wide_headings] == [
        "h1", "n1", "eth0", "10.0.0.1,fd00::1", "a,b"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"interfaceName": "eth0"}, "spec.node"),
    ({"node": "n1"}, "spec.interfaceName (at least one of interfaceName or expectedIPs"),
    ({"node": "n1", "interfaceName": "a-name-much-too-long"}, "spec.interfaceName"),
    ({"node": "n1", "interfaceName": "eth 0"}, "spec.interfaceName"),
    ({"node": "N1", "interfaceName": "*"}, "spec.node"),
    ({"node": "n1", "expectedIPs": ["10.0.0.0/8"]}, "spec.expectedIPs[0]"),
    ({"node": "n1", "interfaceName": "*", "profiles": ["Bad_Name"]}, "spec.profiles[0]"),
    ({"node": "n1", "interfaceName": "*", "ports": [{"name": "http", "protocol": "ICMP", "port": 80}]},
     "spec.ports[0].protocol"),
    ({"node": "n1", "interfaceName": "*", "ports": [{"name": "http", "protocol": "TCP", "port": 0}]},
     "spec.ports[0].port"),
    ({"node": "n1", "interfaceName": "*", "ports": [{"name": "Http", "protocol": "TCP", "port": 80}]},
     "spec.ports[0].name"),
    ({"node": "n1", "interfaceName": "*", "selector": "x"}, "spec.selector"),
])
def test_host_endpoint_validation_names_the_field(spec, field):
    errors = errors_of(spec)
    assert any(e.startswith(field) for e in errors), errors


def test_a_valid_host_endpoint_is_stored_in_gos_field_order():
    r = Resource(HOSTENDPOINT, {"name": "h1"}, {"profiles": ["p"], "expectedIPs": ["10.0.0.1"], "node": "n1",
                                                 "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]})
    validate(r)
    r.metadata.update({"uid": "u", "creationTimestamp": "2026-08-22T13:33:20Z"})
    assert encode(r.to_stored()).endswith(
        '"spec":{"node":"n1","expectedIPs":["10.0.0.1"],"profiles":["p"],'
        '"ports":[{"name":"http","protocol":"TCP","port":80}]}}')


# --- the dataplane ------------------------------------------------------------------------------------


def test_host_endpoint_chains_come_and_go_with_their_jumps():
    calc = PolicyCalculator(NODE, (4,))
    dp = Dataplane(Fake())
    dp.apply(calc.ruleset(4))
    calc.take_changes(4)
    calc.update_endpoint("hostendpoint:h1", hep())
    fake = dp.run = Fake()
    dp.apply_changes(calc.take_changes(4))
    text = fake.restore()
    assert text.index("*filter") < text.index("*mangle") < text.index("*raw")
    assert "INPUT 1" not in text  # always there (the workloads' traffic to the host)
    for line in ('-I OUTPUT 1 -m comment --comment "cali:calico-node policy" -j cali-OUTPUT',
                 '-I PREROUTING 1 -m comment --comment "cali:calico-node policy" -j cali-PREROUTING'):
        assert line in text
    assert "FORWARD 1" not in text  # already there
    calc.update_endpoint("hostendpoint:h1", None)
    fake = dp.run = Fake()
    dp.apply_changes(calc.take_changes(4))
    text = fake.restore()
    assert '-D OUTPUT -m comment --comment "cali:calico-node policy" -j cali-OUTPUT' in text
    assert "-X cali-OUTPUT" in text and "*raw" in text and "-X cali-PREROUTING" in text
    assert "-D INPUT" not in text and "-X cali-INPUT" not in text  # the workloads' part stays
    assert dp.chains == calc.ruleset(4).chains


def test_a_first_apply_reads_mangle_and_raw_only_with_host_endpoints():
    fake = Fake()
    Dataplane(fake).apply(rendered([wep()], []))
    assert not any("-t mangle" in c or "-t raw" in c for c in fake.commands())
    fake = Fake()
    Dataplane(fake).apply(rendered([hep()], []))
    assert "iptables-save -t mangle" in fake.commands() and "iptables-save -t raw" in fake.commands()


def test_a_host_endpoint_without_interface_name_goes_where_its_expected_ips_are():
    by_ip = hep("b", iface="", expectedIPs=["10.0.0.5"])
    addresses = {"eth0": frozenset({"10.0.0.5"}), "eth1": frozenset({"10.0.0.6"}), "cali1": frozenset({"10.0.0.5"})}
    assert hostep.local_host_endpoints([by_ip], NODE, addresses) == {"eth0": by_ip}
    assert hostep.local_host_endpoints([by_ip], NODE) == {}
    named = hep("a", iface="eth0")  # first by name, as Felix
    assert hostep.local_host_endpoints([by_ip, named], NODE, addresses) == {"eth0": named}
    calc = PolicyCalculator(NODE)
    calc.update_endpoint("hostendpoint:b", by_ip)
    assert calc.wants_addresses and "cali-fh-eth0" not in calc.ruleset(4).chains
    calc.set_interface_addresses(addresses)
    assert "cali-fh-eth0" in calc.ruleset(4).chains and "cali-fh-eth1" not in calc.ruleset(4).chains
    calc.update_endpoint("hostendpoint:b", None)
    assert not calc.wants_addresses and "cali-OUTPUT" not in calc.ruleset(4).chains


def test_tunnels_between_nodes_pass_host_endpoint_policy_as_in_felix():
    tunnels = hostep.Tunnels(vxlan=True, ipip=False, hosts=("192.168.200.1", "192.168.200.2"))
    eps = model.with_effective_labels([hep()], {})
    rs = render.render([], eps, [], {}, 4, hosts=hostep.local_host_endpoints(eps, NODE), tunnels=tunnels)
    (name, ipset), = rs.ipsets.items()
    assert name.startswith("cali40h:") and ipset.members == ("192.168.200.1", "192.168.200.2")
    assert rs.chains["cali-INPUT"][0] == (f"-p udp -m multiport --dports 4789 -m set --match-set {name} src "
                                          "-m addrtype --dst-type LOCAL -j ACCEPT")
    assert f"-p udp -m multiport --dports 4789 -m addrtype --src-type LOCAL -m set --match-set {name} dst -j ACCEPT" \
        in rs.chains["cali-OUTPUT"]
    v6 = render.render([], eps, [], {}, 6, hosts=hostep.local_host_endpoints(eps, NODE), tunnels=tunnels)
    assert not v6.ipsets and not any("4789" in r for r in v6.chains["cali-INPUT"])
    assert not render.render([], eps, [], {}, 4, tunnels=tunnels).ipsets  # no host endpoint: no set
    calc = PolicyCalculator(NODE, (4,))
    calc.update_endpoint("hostendpoint:h1", hep())
    calc.set_tunnels(tunnels)
    assert calc.ruleset(4) == rs
    calc.take_changes(4)
    calc.set_tunnels(hostep.Tunnels(vxlan=True, hosts=("192.168.200.1",)))
    changes = calc.take_changes(4)
    assert changes.deleted == {name: {"192.168.200.2"}} and not changes.chains


def test_dnated_host_traffic_meets_normal_egress_policy_in_mangle_postrouting():
    rs = rendered([hep(profiles=["k"])], [gnp("out", egress=[{"action": "Deny"}]), gnp("in", ingress=[ALLOW])])
    assert rs.chains["mangle:cali-POSTROUTING"] == (
        "-m mark --mark 0x10000/0x10000 -j RETURN", "-j MARK --set-xmark 0x0/0x30000",
        "-m conntrack --ctstate DNAT -j cali-to-host-endpoint", "-m mark --mark 0x10000/0x10000 -j RETURN")
    th = rs.chains["mangle:cali-th-eth0"]
    assert th[:3] == ("-m conntrack --ctstate RELATED,ESTABLISHED -j MARK --set-xmark 0x10000/0x10000",
                      "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", "-m conntrack --ctstate INVALID -j DROP")
    assert "-m mark --mark 0x0/0x20000 -j cali-po-out" in th and th[-1] == "-j DROP"
    assert rs.chains["mangle:cali-po-out"] == rs.chains["cali-po-out"] == ("-j DROP",)  # in both tables
    assert "mangle:cali-pi-in" not in rs.chains  # egress only
    assert rs.chains["cali-FORWARD"][-1] == "-j MARK --set-xmark 0x10000/0x10000"  # forwarded: not the host's
    assert '-I POSTROUTING 1 -m comment --comment "cali:calico-node policy" -j cali-POSTROUTING' in rs.text()
    star = rendered([hep(iface="*")], [])
    assert star.chains["mangle:cali-to-host-endpoint"][0] == "-o cali+ -j RETURN"  # not to local workloads
