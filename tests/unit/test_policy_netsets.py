"""Network sets in policy (issue 15 item 2), on the pure calculator: a rule's selector matches
GlobalNetworkSets and NetworkSets by their labels, as it matches endpoints, and their nets join the
selector's hash:net set; a NetworkSet is seen only by its own namespace's NetworkPolicies (and by
global policies); a set's update moves only its own members."""

from __future__ import annotations

from cni_calico.policy import model
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.layout import set_name
from cni_calico.policy.scope import scoped_selector

NODE = "n1"


def _local(calc: PolicyCalculator, namespace: str = "a") -> None:
    calc.update_endpoint(f"{namespace}/local", model.endpoint_from_resource({
        "metadata": {"name": "local", "namespace": namespace, "labels": {"app": "db"}},
        "spec": {"node": NODE, "interfaceName": "cali1", "ipNetworks": ["10.0.0.1/32"], "profiles": []}}))


def _netset(calc: PolicyCalculator, name: str, nets: list[str], namespace: str = "", **labels: str) -> None:
    meta = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    key = f"networkset:{namespace}/{name}" if namespace else f"globalnetworkset:{name}"
    calc.update_endpoint(key, model.network_set_from_resource({"metadata": meta, "spec": {"nets": nets}},
                                                             namespaced=bool(namespace)))


def _policy(calc: PolicyCalculator, name: str, source_selector: str, namespace: str = "") -> str:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    resource = {"metadata": meta, "spec": {"selector": "app == 'db'", "ingress": [
        {"action": "Allow", "source": {"selector": source_selector}}]}}
    calc.update_policy(f"{namespace}/{name}" if namespace else name,
                       model.policy_from_resource(resource, namespaced=bool(namespace)))
    return set_name("s", scoped_selector(source_selector, namespace))


def test_a_global_network_sets_nets_join_the_selector_set():
    calc = PolicyCalculator(NODE)
    _local(calc)
    name = _policy(calc, "from-world", "role == 'world'")
    _netset(calc, "world", ["198.51.100.0/24", "203.0.113.7/32", "0.0.0.0/0", "2001:db8::/32"], role="world")
    v4, v6 = calc.ruleset(4).ipsets[name], calc.ruleset(6).ipsets[set_name("s", "role == \"world\"", 6)]
    assert v4.kind == "hash:net"
    # /32 as the bare address the kernel prints; /0 as its two halves (hash:net holds no /0).
    assert v4.members == ("0.0.0.0/1", "128.0.0.0/1", "198.51.100.0/24", "203.0.113.7")
    assert v6.members == ("2001:db8::/32",)
    calc.take_changes(4)
    _netset(calc, "world", ["198.51.100.0/24"], role="world")
    changes = calc.take_changes(4)
    assert (changes.added, changes.deleted) == ({}, {name: {"0.0.0.0/1", "128.0.0.0/1", "203.0.113.7"}})
    assert not changes.chains and not changes.created
    _netset(calc, "world", ["198.51.100.0/24"], role="other")
    assert calc.ruleset(4).ipsets[name].members == ()


def test_a_network_set_is_seen_by_its_own_namespaces_policies_only():
    calc = PolicyCalculator(NODE)
    _local(calc, "a")
    own = _policy(calc, "partners", "role == 'partner'", namespace="a")
    _netset(calc, "in-a", ["192.0.2.0/24"], namespace="a", role="partner")
    _netset(calc, "in-b", ["192.0.3.0/24"], namespace="b", role="partner")
    _netset(calc, "global", ["192.0.4.0/24"], role="partner")
    assert calc.ruleset(4).ipsets[own].members == ("192.0.2.0/24",)
    everywhere = _policy(calc, "partners-anywhere", "role == 'partner'")  # a GlobalNetworkPolicy sees them all
    assert calc.ruleset(4).ipsets[everywhere].members == ("192.0.2.0/24", "192.0.3.0/24", "192.0.4.0/24")


def test_a_namespaced_set_carries_its_namespaces_labels():
    calc = PolicyCalculator(NODE)
    _local(calc, "a")
    calc.update_policy("from-ns-b", model.policy_from_resource({"metadata": {"name": "from-ns-b"}, "spec": {
        "selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"namespaceSelector": "team == 'x'"}}]}},
        namespaced=False))
    name = set_name("s", scoped_selector("", "", "team == 'x'"))
    calc.update_profile("kns.b", model.profile_from_resource({"metadata": {"name": "kns.b"},
                                                              "spec": {"labelsToApply": {"pcns.team": "x"}}}))
    _netset(calc, "in-b", ["192.0.3.0/24"], namespace="b")
    assert calc.ruleset(4).ipsets[name].members == ("192.0.3.0/24",)
    calc.update_profile("kns.b", model.profile_from_resource({"metadata": {"name": "kns.b"},
                                                              "spec": {"labelsToApply": {"pcns.team": "y"}}}))
    assert calc.ruleset(4).ipsets[name].members == ()


def test_an_invalid_net_is_skipped_and_the_rest_kept():
    ep = model.network_set_from_resource({"metadata": {"name": "s"}, "spec": {"nets": ["bad", "10.1.0.0/16"]}},
                                         namespaced=False)
    assert (ep.key, ep.addresses, ep.namespace, ep.profiles) == ("globalnetworkset:s", ("10.1.0.0/16",), "", ())
    assert model.effective_labels(ep, {}) == {}  # a global set carries no namespace


def test_a_network_policy_names_global_sets_with_namespace_selector_global():
    calc = PolicyCalculator(NODE)
    _local(calc, "a")
    calc.update_policy("a/g", model.policy_from_resource({"metadata": {"name": "g", "namespace": "a"}, "spec": {
        "selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {
            "selector": "role == 'partner'", "namespaceSelector": "global()"}}]}}, namespaced=True))
    _netset(calc, "in-a", ["192.0.2.0/24"], namespace="a", role="partner")
    _netset(calc, "global", ["192.0.4.0/24"], role="partner")
    name = set_name("s", scoped_selector("role == 'partner'", "a", "global()"))
    assert calc.ruleset(4).ipsets[name].members == ("192.0.4.0/24",)
