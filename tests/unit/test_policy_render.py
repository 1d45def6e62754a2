"""Rendering policy into iptables chains and ipsets: per-field rules, layout, names, determinism; and a
property test whose random policies are loaded into a real kernel inside a scratch network namespace."""

from __future__ import annotations

import os
import random
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_calico.endpoints import default_profile
from cni_calico.policy import layout, model, render
from cni_calico.policy.iptables import Dataplane, PolicyError, cleanup, saved_filter
from tests.lab import netns_runner

SCRATCH_NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a scratch network namespace")


def wep(name: str, node: str, iface: str, ip: str, profiles=("k8s",), ns: str = "default", ports=(),
        **labels) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"node": node, "interfaceName": iface, "ipNetworks": [f"{ip}/32"], "profiles": list(profiles),
                     "ports": list(ports)}}


PROFILES = {n: model.profile_from_resource(default_profile(n).to_value()) for n in ("k8s", "tenant-b")}
ENDPOINTS = model.with_effective_labels([model.endpoint_from_resource(w) for w in (
    wep("a", "n1", "cali0000000001", "10.0.0.1", role="db", ports=[{"name": "http", "protocol": "TCP", "port": 80}]),
    wep("b", "n1", "cali0000000002", "10.0.0.2", role="fe"),
    wep("c", "n2", "cali0000000003", "10.0.0.3", role="fe", ports=[{"name": "http", "protocol": "UDP", "port": 80}]),
    wep("d", "n2", "cali0000000004", "10.0.0.4", ("tenant-b",), ns="dev", role="fe"),
)], PROFILES)


def gnp(name: str, spec: dict) -> model.Policy:
    return model.policy_from_resource({"metadata": {"name": name}, "spec": spec}, namespaced=False)


def render_n1(policies: list[model.Policy], endpoints=ENDPOINTS, profiles=PROFILES) -> render.Ruleset:
    return render.render(render.local_endpoints(endpoints, "n1"), endpoints, policies, profiles)


def one_rule(rule: dict) -> tuple[tuple[str, ...], dict[str, render.IpSet]]:
    """The ingress chain of a global policy holding just ``rule``, and the sets it uses."""
    rs = render_n1([gnp("p", {"selector": "role == 'db'", "ingress": [rule]})])
    return rs.chains["cali-pi-p"], rs.ipsets


ALLOW = ("-j MARK --set-xmark 0x10000/0x10000", "-m mark --mark 0x10000/0x10000 -j RETURN")


@pytest.mark.parametrize("rule, match", [
    ({"action": "Allow"}, ""),
    ({"action": "Allow", "protocol": "TCP"}, "-p tcp"),
    ({"action": "Allow", "protocol": 47}, "-p 47"),
    ({"action": "Allow", "notProtocol": "UDP"}, "! -p udp"),
    ({"action": "Allow", "source": {"nets": ["10.1.0.0/16"]}}, "-s 10.1.0.0/16"),
    ({"action": "Allow", "destination": {"nets": ["10.2.0.1"]}}, "-d 10.2.0.1/32"),
    ({"action": "Allow", "source": {"nets": ["0.0.0.0/0"]}}, ""),
    ({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}, "-p icmp -m icmp --icmp-type 8/0"),
    ({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 3}}, "-p icmp -m icmp ! --icmp-type 3"),
    ({"action": "Allow", "protocol": "UDP", "destination": {"ports": [53, "1000:2000"]}},
     "-p udp -m multiport --dports 53,1000:2000"),
    ({"action": "Allow", "protocol": "TCP", "source": {"ports": [1]}, "destination": {"notPorts": [22]}},
     "-p tcp -m multiport ! --dports 22 -m multiport --sports 1"),
])
def test_rule_fields(rule, match):
    chain, _ = one_rule(rule)
    assert chain == ((f"{match} {ALLOW[0]}".strip(), ALLOW[1]))


def test_rule_selectors_and_nets_become_ipsets():
    chain, sets = one_rule({"action": "Deny", "source": {
        "selector": "role == 'fe'", "notSelector": "has(x)", "nets": ["10.0.0.0/8", "11.0.0.0/8"],
        "notNets": ["10.9.0.0/16"]}})
    sel, notsel = render.set_name("s", 'role == "fe"'), render.set_name("s", "has(x)")
    nets, notnets = render.set_name("n", "10.0.0.0/8,11.0.0.0/8"), render.set_name("n", "10.9.0.0/16")
    assert chain == (f"-m set --match-set {nets} src -m set ! --match-set {notnets} src "
                     f"-m set --match-set {sel} src -m set ! --match-set {notsel} src -j DROP",)
    assert sets[sel] == render.IpSet("hash:net", ("10.0.0.2", "10.0.0.3", "10.0.0.4"))  # every node's endpoints
    assert sets[notsel] == render.IpSet("hash:net", ())
    assert sets[nets] == render.IpSet("hash:net", ("10.0.0.0/8", "11.0.0.0/8"))


def test_actions():
    assert one_rule({"action": "Deny"})[0] == ("-j DROP",)
    assert one_rule({"action": "Pass"})[0] == ("-j MARK --set-xmark 0x20000/0x20000",
                                               "-m mark --mark 0x20000/0x20000 -j RETURN")
    assert one_rule({"action": "Log"})[0] == ("-j LOG --log-prefix calico-packet: --log-level 5",)
    assert one_rule({"action": "Allow", "protocol": "ICMP", "destination": {"ports": ["http"]}})[0] == ()  # never


def test_many_ports_are_split_over_multiport_matches():
    ports = list(range(1, 21)) + ["100:200"]
    chain, _ = one_rule({"action": "Deny", "protocol": "TCP", "destination": {"ports": ports, "notPorts": ports}})
    negated = ("-m multiport ! --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 "
               "-m multiport ! --dports 16,17,18,19,20,100:200")
    assert chain == (f"-p tcp {negated} -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j DROP",
                     f"-p tcp {negated} -m multiport --dports 16,17,18,19,20,100:200 -j DROP")


def test_endpoint_chains_policies_in_order_then_profiles():
    rs = render_n1([gnp("late", {"selector": "role == 'db'", "egress": [{"action": "Allow"}]}),
                    gnp("first", {"order": 1, "selector": "role == 'db'", "ingress": [{"action": "Pass"}]}),
                    gnp("other", {"selector": "role == 'nobody'"})])
    ct = ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate INVALID -j DROP",
          "-j MARK --set-xmark 0x0/0x30000")
    assert rs.chains["cali-tw-cali0000000001"] == (*ct, "-m mark --mark 0x0/0x20000 -j cali-pi-first", ALLOW[1],
                                                   "-m mark --mark 0x0/0x20000 -j DROP", "-j cali-pri-k8s", ALLOW[1],
                                                   "-j DROP")
    assert rs.chains["cali-fw-cali0000000001"] == (*ct, "-m mark --mark 0x0/0x20000 -j cali-po-late", ALLOW[1],
                                                   "-m mark --mark 0x0/0x20000 -j DROP", "-j cali-pro-k8s", ALLOW[1],
                                                   "-j DROP")
    assert rs.chains["cali-tw-cali0000000002"] == (*ct, "-j cali-pri-k8s", ALLOW[1], "-j DROP")  # no policy
    assert "cali-pi-other" not in rs.chains  # selects no local endpoint
    assert rs.chains["cali-from-wl-dispatch"] == ("-i cali0000000001 -g cali-fw-cali0000000001",
                                                  "-i cali0000000002 -g cali-fw-cali0000000002", "-j DROP")
    assert rs.chains["cali-FORWARD"][-1] == "-m mark --mark 0x10000/0x10000 -j ACCEPT"


def test_a_missing_profile_allows_nothing():
    eps = model.with_effective_labels([model.endpoint_from_resource(
        wep("a", "n1", "cali0000000001", "10.0.0.1", ("gone",)))], PROFILES)
    assert render_n1([], eps).chains["cali-tw-cali0000000001"][-1:] == ("-j DROP",)
    assert not any(c.startswith("cali-pr") for c in render_n1([], eps).chains)


def test_names_stay_within_the_kernel_limits():
    long = "a-very-long-policy-name-that-goes-on-and-on-and-on"
    rs = render_n1([gnp(long, {"selector": "all()", "ingress": [{"action": "Allow", "source": {
        "selector": "x == '" + "y" * 300 + "'"}}]}), gnp(long + "2", {"selector": "all()"})])
    assert all(c.startswith("cali-") and len(c) <= layout.MAX_CHAIN for c in rs.chains)
    assert all(s.startswith("cali40") and len(s) <= layout.MAX_SET for s in rs.ipsets)
    hashed = [c for c in rs.chains if c.startswith("cali-pi-_")]
    assert len(hashed) == 2 and len(set(hashed)) == 2
    assert render.chain_name("cali-pi-", "prod/db") == "cali-pi-prod/db"
    assert len(render.set_name("t", "anything")) == layout.MAX_SET


def test_rendering_is_deterministic():
    policies = [gnp(f"p{i}", {"order": i % 3, "selector": "has(role)", "ingress": [
        {"action": "Allow", "source": {"selector": f"role == 'fe' || n == '{i}'"}}]}) for i in range(10)]
    first = render_n1(policies)
    for seed in range(5):
        rnd = random.Random(seed)
        eps, pols = list(ENDPOINTS), list(policies)
        rnd.shuffle(eps)
        rnd.shuffle(pols)
        again = render_n1(pols, eps, dict(reversed(list(PROFILES.items()))))
        assert again.text() == first.text() and again.ipsets == first.ipsets


# --- random policies through a real kernel -----------------------------------------------------------

nets = st.lists(st.sampled_from(["10.0.0.0/8", "10.0.0.1", "192.168.1.0/24", "0.0.0.0/0", "fd00::/8"]), max_size=3)
ports = st.lists(st.one_of(st.integers(0, 65535), st.sampled_from(["http", "1:2", "9:5", "100:65535"])), max_size=18)
selectors = st.sampled_from(["", "role == 'fe'", "has(k8s)", "all()", "!has(x) && a in {'1', '2'}", "bad ==="])
entity = st.fixed_dictionaries({}, optional={
    "nets": nets, "notNets": nets, "selector": selectors, "notSelector": selectors, "ports": ports,
    "notPorts": ports, "namespaceSelector": st.sampled_from(["all()", "projectcalico.org/name == 'dev'"])})
protocols = st.sampled_from(["TCP", "UDP", "ICMP", "SCTP", "UDPLite", "ICMPv6", 1, 6, 47, 300, "tcp"])
icmp = st.fixed_dictionaries({}, optional={"type": st.integers(0, 260), "code": st.integers(0, 260)})
rule = st.fixed_dictionaries({"action": st.sampled_from(["Allow", "Deny", "Pass", "Log", "allow"])}, optional={
    "protocol": protocols, "notProtocol": protocols, "icmp": icmp, "notICMP": icmp, "source": entity,
    "destination": entity, "ipVersion": st.sampled_from([4, 6])})
policy = st.fixed_dictionaries({"selector": selectors, "ingress": st.lists(rule, max_size=3),
                                "egress": st.lists(rule, max_size=3)}, optional={
    "order": st.one_of(st.none(), st.integers(-5, 5), st.floats(0, 10)),
    "types": st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]])})


@pytest.fixture(scope="module")
def scratch():
    """A scratch network namespace, and a runner that executes commands inside it."""
    ns = f"ccpolicy-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    root_before = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    subprocess.run(["ip", "netns", "add", ns], check=True)

    yield netns_runner(ns)
    subprocess.run(["ip", "netns", "del", ns], check=True)
    assert subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.count("cali") == \
        root_before.count("cali")


@SCRATCH_NEEDS_ROOT
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(specs=st.lists(policy, min_size=1, max_size=4), namespaced=st.lists(st.booleans(), min_size=4, max_size=4))
def test_random_policies_render_and_load_into_a_kernel(scratch, specs, namespaced):
    policies = [model.policy_from_resource({"metadata": {"name": f"p{i}", "namespace": "prod"}, "spec": spec},
                                           namespaced=namespaced[i]) for i, spec in enumerate(specs)]
    rs = render_n1(policies)
    assert rs.text() == render_n1(list(reversed(policies))).text()
    dataplane = getattr(scratch, "dataplane", None) or Dataplane(scratch)
    scratch.dataplane = dataplane  # one across examples: the incremental path is exercised too
    try:
        dataplane.apply(rs)
    except PolicyError as exc:
        raise AssertionError(f"{exc}\n{rs.text()}") from None
    test = scratch(["iptables-restore", "--noflush", "--test"], rs.text(), check=False)
    assert test.returncode == 0, test.stderr + rs.text()
    saved = saved_filter(scratch)
    assert sorted(line[1:].split()[0] for line in saved if line.startswith(":cali-")) == sorted(rs.chains)
    for chain, rules in rs.chains.items():
        assert sum(1 for line in saved if line.startswith(f"-A {chain} ")) == len(rules), chain
    assert set(scratch(["ipset", "list", "-n"]).stdout.split()) == set(rs.ipsets)
    for name, s in rs.ipsets.items():
        held = scratch(["ipset", "list", name]).stdout.split("Members:\n")[1].split()
        assert sorted(held) == sorted(m.removesuffix("/32") for m in s.members), name


@SCRATCH_NEEDS_ROOT
def test_cleanup_leaves_the_scratch_namespace_as_it_was(scratch):
    Dataplane(scratch).apply(render_n1([gnp("p", {"selector": "all()", "ingress": [{"action": "Deny", "source": {
        "selector": "has(k8s)"}}]})]))
    assert "cali-FORWARD" in scratch(["iptables-save"]).stdout
    cleanup(scratch)
    assert scratch(["iptables-save"]).stdout == "" and scratch(["ipset", "list", "-n"]).stdout == ""
