"""Kubernetes objects → Calico resources, held to Calico's own converter.

The cases and expected values are those of libcalico-go's conversion_test.go and kube-controllers'
converter tests (projectcalico/calico at 87c1590): same inputs, same selectors, rule order, ports,
nets; the stored bytes as clientv3 writes them (encoding/json, Go's field order)."""

from __future__ import annotations

import json

from cni_calico.datastore import encode
from cni_calico.kubecontrollers import convert
from cni_calico.kubecontrollers.controllers import endpoint_labels
from cni_calico.v3 import Resource

K8S = "projectcalico.org/orchestrator == 'k8s'"


def np(spec: dict, name: str = "test.policy", namespace: str = "default") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "uid": "30316465-6365-4463-ad63-3564622d3638",
                         "resourceVersion": "17"},
            "spec": spec}


def test_basic_policy_name_order_selectors_and_default_tcp():
    ns, name, spec = convert.network_policy(np({
        "podSelector": {"matchLabels": {"label2": "value2", "label": "value"}},
        "ingress": [{"ports": [{"port": 80}, {"port": "foo"}],
                     "from": [{"podSelector": {"matchLabels": {"k2": "v2", "k": "v"}}}]}],
        "policyTypes": ["Ingress"],
    }))
    assert (ns, name) == ("default", "knp.default.test.policy")
    assert spec["order"] == 1000 and spec["tier"] == "default"
    assert spec["selector"] == f"{K8S} && label == 'value' && label2 == 'value2'"
    assert spec["ingress"] == [{"action": "Allow", "protocol": "TCP",
                                "source": {"selector": f"{K8S} && k == 'v' && k2 == 'v2'", "namespaceSelector": ""},
                                "destination": {"ports": [80, "foo"]}}]
    assert spec["egress"] == [] and spec["types"] == ["Ingress"]


def test_stored_bytes_as_clientv3_writes_them():
    ns, name, spec = convert.network_policy(np({
        "podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}], "policyTypes": ["Ingress"]}))
    res = Resource("NetworkPolicy", {"name": name, "namespace": ns, "uid": "u", "creationTimestamp": "t"}, spec)
    assert encode(res.to_value()) == (
        '{"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"knp.default.test.policy",'
        '"namespace":"default","uid":"u","creationTimestamp":"t"},"spec":{"tier":"default","order":1000,'
        '"ingress":[{"action":"Allow","source":{"selector":"projectcalico.org/orchestrator == \'k8s\'",'
        '"namespaceSelector":"all()"}}],"selector":"projectcalico.org/orchestrator == \'k8s\'",'
        '"types":["Ingress"]}}')


def test_multiple_peers_and_ports_one_rule_per_protocol_and_peer_protocols_sorted():
    _, _, spec = convert.network_policy(np({
        "podSelector": {"matchLabels": {"label": "value"}},
        "ingress": [{"ports": [{"port": 90, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}],
                     "from": [{"podSelector": {"matchLabels": {"k": "v"}}},
                              {"podSelector": {"matchLabels": {"k2": "v2"}}}]}],
        "policyTypes": ["Ingress"]}))
    got = [(r["protocol"], r["source"]["selector"], r["destination"]["ports"]) for r in spec["ingress"]]
    assert got == [("TCP", f"{K8S} && k == 'v'", [80]), ("TCP", f"{K8S} && k2 == 'v2'", [80]),
                   ("UDP", f"{K8S} && k == 'v'", [90]), ("UDP", f"{K8S} && k2 == 'v2'", [90])]


def test_no_ports_blank_ports_and_no_rules():
    _, _, spec = convert.network_policy(np({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}))
    assert spec["ingress"] == [{"action": "Allow", "source": {}, "destination": {"ports": []}}]
    # Only a protocol: every port of it (nil ports) and it wins over the listed ports of that protocol.
    _, _, spec = convert.network_policy(np({"podSelector": {}, "ingress": [{"ports": [
        {"protocol": "UDP"}, {"port": 53, "protocol": "UDP"}]}]}))
    assert [(r["protocol"], r["destination"]["ports"]) for r in spec["ingress"]] == [("UDP", [])]
    _, _, spec = convert.network_policy(np({"podSelector": {}}))
    assert spec["ingress"] == [] and spec["egress"] == [] and spec["types"] == ["Ingress"]


def test_default_deny_egress_and_types():
    _, _, spec = convert.network_policy(np({"podSelector": {}, "policyTypes": ["Egress"]}))
    assert spec["types"] == ["Egress"] and spec["egress"] == []
    _, _, spec = convert.network_policy(np({"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}))
    assert spec["types"] == ["Ingress", "Egress"]


def test_ports_merged_into_ranges_named_first_and_endport():
    assert convert.simplify_ports([80, 81, 82, 9090, "foo"]) == ["foo", "80:82", 9090]
    assert convert.simplify_ports([80, "foo"]) == [80, "foo"]  # one numeric port: as given
    _, _, spec = convert.network_policy(np({"podSelector": {}, "ingress": [{"ports": [
        {"port": 32000, "endPort": 32768, "protocol": "TCP"}]}]}))
    assert spec["ingress"][0]["destination"]["ports"] == ["32000:32768"]


def test_invalid_port_drops_only_its_rule():
    _, _, spec = convert.network_policy(np({"podSelector": {}, "ingress": [
        {"ports": [{"port": 80}]}, {"ports": [{"port": 80}, {"port": "-50:-1"}]}]}))
    assert [r["destination"]["ports"] for r in spec["ingress"]] == [[80]]


def test_egress_ipblock_with_except_and_ports():
    _, _, spec = convert.network_policy(np({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"ipBlock": {"cidr": "192.168.0.1/16", "except": ["192.168.3.0/24", "192.168.4.0/24"]}}],
        "ports": [{"port": 80, "protocol": "TCP"}]}]}))
    assert spec["egress"] == [{"action": "Allow", "protocol": "TCP", "destination": {
        "ports": [80], "nets": ["192.168.0.0/16"], "notNets": ["192.168.3.0/24", "192.168.4.0/24"]}}]


def test_selectors_namespace_and_expressions():
    assert convert.selector(None, pod=False) == ""
    assert convert.selector({}, pod=False) == "all()"
    assert convert.selector({}, pod=True) == K8S
    assert convert.selector({"matchLabels": {"team": "a"}, "matchExpressions": [
        {"key": "k", "operator": "In", "values": ["v1", "v2"]},
        {"key": "k2", "operator": "NotIn", "values": ["v3"]},
        {"key": "k3", "operator": "Exists"}, {"key": "k4", "operator": "DoesNotExist"}]}, pod=False) == (
        "team == 'a' && k in { 'v1', 'v2' } && k2 not in { 'v3' } && has(k3) && ! has(k4)")
    _, _, spec = convert.network_policy(np({"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}))
    assert spec["ingress"][0]["source"] == {"selector": f"{K8S} && app == 'db'", "namespaceSelector": "team == 'a'"}


def test_namespace_and_service_account_profiles():
    name, spec = convert.namespace_profile({"metadata": {"name": "team-a", "labels": {"team": "a"}}})
    assert name == "kns.team-a"
    assert spec == {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                    "labelsToApply": {"pcns.team": "a", "pcns.projectcalico.org/name": "team-a"}}
    name, spec = convert.service_account_profile({"metadata": {"name": "web", "namespace": "team-a",
                                                               "labels": {"role": "front"}}})
    assert name == "ksa.team-a.web"
    assert spec == {"labelsToApply": {"pcsa.role": "front", "pcsa.projectcalico.org/name": "web"}}
    stored = Resource("Profile", {"name": name}, spec).to_value()
    assert json.loads(encode(stored))["spec"] == {"labelsToApply": {"pcsa.projectcalico.org/name": "web",
                                                                    "pcsa.role": "front"}}


def test_endpoint_labels_are_the_plugins():
    pod = {"metadata": {"name": "web-0", "namespace": "team-a", "labels": {"app": "web"}},
           "spec": {"serviceAccountName": "default"}}
    ns = {"metadata": {"name": "team-a", "labels": {"team": "a"}}}
    assert endpoint_labels(pod, ns) == {"app": "web", "pcns.team": "a", "projectcalico.org/serviceaccount": "default",
                                        "projectcalico.org/namespace": "team-a",
                                        "projectcalico.org/orchestrator": "k8s"}
