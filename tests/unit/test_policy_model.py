"""Policy records from Calico v3 resources: rules, scoping by namespace, types, order, labels."""

from __future__ import annotations

import pytest

from cni_calico.endpoints import default_profile
from cni_calico.policy import model, scope
from cni_calico.policy.model import Entity, Rule, rule_from_dict


def test_rule_fields_are_normalised():
    rule = rule_from_dict({
        "action": "Allow", "protocol": "TCP", "notProtocol": "UDP",
        "source": {"nets": ["10.1.2.3/8", "192.168.0.1"], "notNets": ["10.9.0.0/16"], "ports": ["1000:2000", 80]},
        "destination": {"ports": [5432, "22:22"], "notPorts": ["6000"]},
    })
    assert rule == Rule("Allow", "tcp", "", source=Entity(
        nets=("10.0.0.0/8", "192.168.0.1/32"), not_nets=("10.9.0.0/16",), ports=("1000:2000", "80")),
        destination=Entity(ports=("5432", "22"), not_ports=("6000",)), ip_version=4)  # IPv4 nets only


@pytest.mark.parametrize("data, protocol", [
    ({"protocol": "UDPLite"}, "udplite"), ({"protocol": "SCTP"}, "sctp"), ({"protocol": 47}, "47"),
    ({"protocol": "132"}, "132"), ({}, ""),
])
def test_protocols(data, protocol):
    assert rule_from_dict({"action": "Deny", **data}).protocol == protocol


def test_icmp_type_and_code():
    rule = rule_from_dict({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0},
                           "notICMP": {"type": 3}})
    assert (rule.icmp, rule.not_icmp, rule.never) == ("8/0", "3", False)


@pytest.mark.parametrize("data", [
    {"action": "Allow", "protocol": "ICMP", "destination": {"ports": ["http"]}},  # named ports of a portless protocol
    {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["Not-a-name", "a--b", "123456"]}},  # none valid
    {"action": "Allow", "destination": {"ports": [80]}},  # numeric ports without a protocol
    {"action": "Allow", "destination": {"ports": ["http", 80]}},
    {"action": "Allow", "protocol": "UDP", "icmp": {"type": 8}},  # icmp without ICMP
    {"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4},  # no family left
    {"action": "Allow", "protocol": "ICMP", "ipVersion": 6},
    {"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}},
    {"action": "Allow", "source": {"nets": ["fd00::/64"]}, "destination": {"nets": ["10.0.0.1"]}},
    {"action": "Allow", "protocol": 58, "destination": {"nets": ["10.0.0.1"]}},
    {"action": "Allow", "ipVersion": 5},
    {"action": "Allow", "source": {"nets": ["not-a-net"]}},
    {"action": "Allow", "protocol": 0},
    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 300}},
    {"action": "Allow", "source": {"selector": "a ==="}},
    {"action": "Allow", "protocol": "TCP", "notProtocol": "TCP"},
    {"action": "Jump"},
    "not a rule",
])
def test_rules_that_cannot_match_are_kept_as_never(data):
    assert rule_from_dict(data).never


@pytest.mark.parametrize("data, version", [
    ({}, 0), ({"ipVersion": 4}, 4), ({"ipVersion": 6}, 6), ({"protocol": "ICMP"}, 4), ({"protocol": 1}, 4),
    ({"protocol": "ICMPv6"}, 6), ({"protocol": "58"}, 6), ({"protocol": "TCP", "ipVersion": 6}, 6),
    ({"source": {"nets": ["fd00::1"]}}, 6), ({"source": {"nets": ["fd00::/64", "10.0.0.0/8"]}}, 0),
    ({"source": {"nets": ["fd00::/64", "10.0.0.0/8"]}, "destination": {"nets": ["10.1.0.0/16"]}}, 4),
    ({"source": {"notNets": ["fd00::/64"]}}, 0), ({"notProtocol": "ICMPv6"}, 0), ({"notProtocol": "ICMP"}, 0),
])
def test_ip_version_follows_ipversion_protocol_and_nets(data, version):
    rule = rule_from_dict({"action": "Allow", **data})
    assert (rule.ip_version, rule.never) == (version, False)


def test_ipv6_nets_and_icmpv6_are_normalised():
    rule = rule_from_dict({"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128, "code": 0},
                           "source": {"nets": ["FD00:0::1", "fd00::1/64"], "notNets": ["fd00::9/128"]}})
    assert (rule.protocol, rule.icmp, rule.ip_version) == ("icmpv6", "128/0", 6)
    assert (rule.source.nets, rule.source.not_nets) == (("fd00::/64", "fd00::1/128"), ("fd00::9/128",))


def test_named_ports_mixed_with_numbers_keep_both():
    rule = rule_from_dict({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http", 443, "http"]},
                           "source": {"notPorts": ["metrics", "1:9"]}})
    assert (rule.destination.ports, rule.destination.named_ports) == (("443",), ("http",)) and not rule.never
    assert (rule.source.not_ports, rule.source.not_named_ports) == (("1:9",), ("metrics",))
    # Named ports alone need no protocol (Calico's validator); numeric ones do.
    assert not rule_from_dict({"action": "Allow", "destination": {"ports": ["http"]}}).never


def test_network_policy_rules_are_scoped_to_its_namespace():
    rule = rule_from_dict({"action": "Allow", "source": {"selector": "role == 'fe'"}}, namespace="prod")
    assert rule.source.selector == '(projectcalico.org/namespace == "prod" && role == "fe")'
    # A notSelector alone is scoped through the positive match; the notSelector stays as written.
    rule = rule_from_dict({"action": "Allow", "source": {"notSelector": "role == 'fe'"}}, namespace="prod")
    assert (rule.source.selector, rule.source.not_selector) == ('projectcalico.org/namespace == "prod"',
                                                                'role == "fe"')
    # Nets alone are not scoped: any source in the CIDR.
    assert rule_from_dict({"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}}, "prod").source.selector == ""


def test_namespace_selector_uses_the_pcns_labels():
    rule = rule_from_dict({"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'dev'",
                                                          "selector": "app == 'x'"}}, namespace="prod")
    assert rule.source.selector == '(pcns.projectcalico.org/name == "dev" && app == "x")'
    all_ns = scope.scoped_selector("", namespace_selector="all()")
    assert all_ns == "has(projectcalico.org/namespace)"


def test_global_policy_rules_are_not_scoped():
    rule = rule_from_dict({"action": "Allow", "source": {"selector": "role == 'fe'"}})
    assert rule.source.selector == 'role == "fe"'


def _policy(spec: dict, namespace: str | None = "default", name: str = "p") -> model.Policy:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return model.policy_from_resource({"metadata": meta, "spec": spec}, namespaced=namespace is not None)


def test_policy_types_default_as_calico():
    assert (_policy({}).ingress, _policy({}).egress) == ((), None)
    both = _policy({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]})
    assert both.ingress and both.egress
    egress_only = _policy({"egress": [{"action": "Deny"}]})
    assert egress_only.ingress is None and egress_only.egress
    explicit = _policy({"types": ["Ingress", "Egress"]})
    assert (explicit.ingress, explicit.egress) == ((), ())


def test_policy_selector_and_order():
    np = _policy({"selector": "role == 'db'", "order": 10}, namespace="prod", name="db")
    assert (np.key, np.order) == ("prod/db", 10.0)
    assert np.selector == '(projectcalico.org/namespace == "prod" && role == "db")'
    gnp = _policy({"namespaceSelector": "projectcalico.org/name == 'dev'"}, namespace=None, name="g")
    assert (gnp.key, gnp.order, gnp.selector) == ("g", None, '(pcns.projectcalico.org/name == "dev" && all())')
    assert _policy({"selector": "a ==="}).selector == ""  # selects nothing
    ordered = sorted([_policy({}, name="z"), _policy({"order": 5}, name="b"), _policy({"order": 5}, name="a"),
                      _policy({"order": 1.5}, name="y")], key=model.Policy.sort_key)
    assert [p.key for p in ordered] == ["default/y", "default/a", "default/b", "default/z"]


def test_effective_labels():
    prof = model.profile_from_resource(default_profile("tenant-a").to_value())
    other = model.profile_from_resource({"metadata": {"name": "o"}, "spec": {"labelsToApply": {"tier": "p",
                                                                                               "role": "p"}}})
    ep = model.endpoint_from_resource({
        "metadata": {"name": "w", "namespace": "prod", "labels": {"role": "db", "projectcalico.org/namespace": "x"}},
        "spec": {"node": "n1", "interfaceName": "cali1", "ipNetworks": ["10.0.0.1/32", "fd00::1/128"],
                 "profiles": ["tenant-a", "o", "missing"]},
    })
    assert ep.addresses == ("10.0.0.1", "fd00::1") and ep.key == "prod/w"
    assert model.effective_labels(ep, {"tenant-a": prof, "o": other}) == {
        "tenant-a": "", "tier": "p", "role": "db",  # the endpoint's own labels win over profiles'
        "projectcalico.org/namespace": "prod", "pcns.projectcalico.org/name": "prod",
    }
