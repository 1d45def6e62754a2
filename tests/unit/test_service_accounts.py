"""Service accounts in policy (issue 17): a rule's `serviceAccounts` and a policy's
`serviceAccountSelector` match endpoints as libcalico-go's conversion makes them match — by the
endpoint's `projectcalico.org/serviceaccount` label and by its account's labels, which the profile
`ksa.<ns>.<account>` (calico-kube-controllers') applies under `pcsa.`."""

from __future__ import annotations

from cni_calico.policy import model
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.layout import set_name
from cni_calico.selector import matches

NODE = "n1"


def _ep(name: str, account: str, address: str, namespace: str = "a") -> model.Endpoint:
    return model.endpoint_from_resource({
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"projectcalico.org/serviceaccount": account} if account else {}},
        "spec": {"node": NODE, "interfaceName": f"cali{name}", "ipNetworks": [f"{address}/32"], "profiles": []}})


def _profile(name: str, **labels: str) -> model.Profile:
    return model.profile_from_resource({"metadata": {"name": name}, "spec": {"labelsToApply": labels}})


def test_an_endpoint_carries_its_service_accounts_labels():
    profiles = {"ksa.a.sa1": _profile("ksa.a.sa1", **{"pcsa.team": "x", "pcsa.projectcalico.org/name": "sa1"})}
    labels = model.effective_labels(_ep("w1", "sa1", "10.0.0.1"), profiles)
    assert labels["pcsa.team"] == "x" and labels["projectcalico.org/serviceaccount"] == "sa1"
    assert "pcsa.team" not in model.effective_labels(_ep("w2", "sa1", "10.0.0.2", namespace="b"), profiles)


def test_rule_service_accounts_by_name_and_by_label_within_the_namespace():
    rule = model.rule_from_dict({"action": "Allow", "source": {"serviceAccounts": {
        "names": ["sa1", "sa2"], "selector": "team == 'x'"}}}, namespace="a")
    selector = rule.source.selector
    both = {"projectcalico.org/namespace": "a", "projectcalico.org/serviceaccount": "sa1", "pcsa.team": "x"}
    assert matches(selector, both)
    assert not matches(selector, {**both, "pcsa.team": "y"})  # the selector over the account's labels
    assert not matches(selector, {**both, "projectcalico.org/serviceaccount": "sa3"})  # not a listed name
    assert not matches(selector, {**both, "projectcalico.org/namespace": "b"})  # a NetworkPolicy's namespace


def test_policy_service_account_selector_global_all_means_has_an_account():
    gnp = model.policy_from_resource({"metadata": {"name": "p"}, "spec": {
        "selector": "all()", "serviceAccountSelector": "all()"}}, namespaced=False)
    assert matches(gnp.selector, {"projectcalico.org/serviceaccount": "sa1"})
    assert not matches(gnp.selector, {"app": "web"})
    np = model.policy_from_resource({"metadata": {"name": "p", "namespace": "a"}, "spec": {
        "selector": "all()", "serviceAccountSelector": "team == 'x'"}}, namespaced=True)
    assert matches(np.selector, {"projectcalico.org/namespace": "a", "pcsa.team": "x"})
    assert not matches(np.selector, {"projectcalico.org/namespace": "a", "pcsa.team": "y"})


def test_a_service_account_relabel_moves_its_endpoints_between_sets():
    calc = PolicyCalculator(NODE)
    calc.update_endpoint("a/w1", _ep("w1", "sa1", "10.0.0.1"))
    calc.update_endpoint("a/w2", _ep("w2", "sa2", "10.0.0.2"))
    calc.update_policy("a/p", model.policy_from_resource({"metadata": {"name": "p", "namespace": "a"}, "spec": {
        "selector": "all()", "ingress": [{"action": "Allow", "source": {
            "serviceAccounts": {"selector": "team == 'x'"}}}]}}, namespaced=True))
    rule = model.rule_from_dict({"action": "Allow", "source": {"serviceAccounts": {"selector": "team == 'x'"}}},
                                namespace="a")
    name = set_name("s", rule.source.selector)
    assert calc.ruleset(4).ipsets[name].members == ()
    calc.update_profile("ksa.a.sa2", _profile("ksa.a.sa2", **{"pcsa.team": "x"}))
    assert calc.ruleset(4).ipsets[name].members == ("10.0.0.2",)
    calc.update_profile("ksa.a.sa2", None)
    assert calc.ruleset(4).ipsets[name].members == ()
