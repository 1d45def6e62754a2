"""The incremental policy calculator (cni_calico.policy.calc) against the from-scratch render: after
every update of a random sequence, its whole desired state equals render.render_all of the same
endpoints, profiles and policies, and the changes it handed out, applied one after the other,
add up to that same state. The selector index (cni_calico.policy.index) is checked the same way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cni_calico.policy import model
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.index import SelectorIndex
from cni_calico.policy.layout import IpSet, qualified, split_key
from cni_calico.selector import parse
from tests.policy_cases import HOST_OPS, NAMED_OPS, NODE, OPS, SELECTORS, TO_HOST_OPS, World, apply_changes


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_every_update_leaves_what_a_full_render_gives(ops):
    check_against_render(ops)


@settings(max_examples=300, deadline=None)
@given(ops=HOST_OPS)
def test_host_endpoints_and_every_kind_of_policy_leave_what_a_full_render_gives(ops):
    check_against_render(ops)


@settings(max_examples=200, deadline=None)
@given(ops=NAMED_OPS)
def test_named_ports_of_endpoints_and_rules_leave_what_a_full_render_gives(ops):
    check_against_render(ops)


@settings(max_examples=200, deadline=None)
@given(ops=TO_HOST_OPS)
def test_switching_the_endpoint_to_host_action_leaves_what_a_full_render_gives(ops):
    check_against_render(ops)


def check_closed(chains: dict[str, tuple[str, ...]]) -> None:
    """Every chain a rule jumps or goes to is in the same table of the same ruleset."""
    for key, rules in chains.items():
        table = split_key(key)[0]
        for rule in rules:
            for flag in ("-j ", "-g "):
                target = rule.rsplit(flag, 1)[-1].split()[0] if flag in rule else ""
                if target.startswith("cali-"):
                    assert qualified(table, target) in chains, (key, rule)


def check_against_render(ops) -> None:
    calc, world = PolicyCalculator(NODE), World()
    kernel: dict[int, dict] = {4: {}, 6: {}}
    for op in ops:
        world.apply(op, calc)
        expected = world.render()
        for version in (4, 6):
            got = calc.ruleset(version)
            assert got.chains == expected[version].chains, op
            check_closed(got.chains)
            assert got.ipsets == expected[version].ipsets, op
            apply_changes(kernel[version], calc.take_changes(version))
            assert kernel[version]["chains"] == got.chains
            assert {n: IpSet(k, tuple(sorted(m))) for n, (k, m) in kernel[version]["sets"].items()} == got.ipsets


def test_a_remote_endpoint_touches_only_the_sets_it_joins():
    calc = PolicyCalculator(NODE)
    calc.update_profile("k8s", model.profile_from_resource({"metadata": {"name": "k8s"}, "spec": {
        "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}}))
    calc.update_endpoint("a/local", model.endpoint_from_resource({"metadata": {"name": "local", "namespace": "a"},
        "spec": {"node": NODE, "interfaceName": "cali1", "ipNetworks": ["10.0.0.1/32"], "profiles": ["k8s"]}}))
    calc.take_changes(4)
    calc.update_endpoint("a/far", model.endpoint_from_resource({"metadata": {
        "name": "far", "namespace": "a", "labels": {"app": "web"}}, "spec": {
        "node": "n2", "interfaceName": "cali9", "ipNetworks": ["10.0.0.9/32"], "profiles": ["k8s"]}}))
    changes = calc.take_changes(4)
    assert not changes.chains and not changes.created and list(changes.added.values()) == [{"10.0.0.9"}]
    calc.update_endpoint("a/other", model.endpoint_from_resource({"metadata": {
        "name": "other", "namespace": "a", "labels": {"app": "db"}}, "spec": {
        "node": "n2", "interfaceName": "cali8", "ipNetworks": ["10.0.0.8/32"], "profiles": ["k8s"]}}))
    assert not calc.take_changes(4)


LABELS = st.dictionaries(st.sampled_from(["app", "tier", "projectcalico.org/namespace", "role"]),
                         st.sampled_from(["web", "db", "x", "a", "b"]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("label"), st.integers(0, 6), LABELS),
    st.tuples(st.just("remove"), st.integers(0, 6), st.just({})),
    st.tuples(st.just("add"), st.sampled_from(SELECTORS[:7] + SELECTORS[8:]), st.just({})),
    st.tuples(st.just("drop"), st.sampled_from(SELECTORS[:7] + SELECTORS[8:]), st.just({}))), max_size=30))
def test_the_index_always_knows_exactly_which_endpoints_each_selector_matches(steps):
    index, labels = SelectorIndex(), {}
    for kind, target, value in steps:
        if kind == "label":
            labels[f"e{target}"] = value
            index.update(f"e{target}", value)
        elif kind == "remove":
            labels.pop(f"e{target}", None)
            index.remove(f"e{target}")
        elif kind == "add":
            index.add_selector(target)
        else:
            index.remove_selector(target)
        for selector in index.parsed:
            assert index.endpoints(selector) == {e for e, ls in labels.items() if parse(selector).evaluate(ls)}
        for ep in labels:
            assert index.selectors(ep) == {s for s in index.parsed if ep in index.endpoints(s)}
        assert all(ls.members for ls in index.sets.values())  # no label set outlives its endpoints
