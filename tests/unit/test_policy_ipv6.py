"""IPv6 policy: which rules go into which family's table, ICMPv6, neighbour discovery, inet6 ipsets, the
IPv6 Dataplane's transactions (ip6tables-restore), both families in one sync and in cleanup; and random
policies loaded into a real ip6tables inside a scratch network namespace."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_calico.endpoints import default_profile
from cni_calico.policy import layout, model, render
from cni_calico.policy.iptables import Dataplane, PolicyError, cleanup, saved_filter
from cni_calico.policy.sync import PolicySync
from tests.lab import netns_runner
from tests.unit.test_policy_dataplane import Fake
from tests.unit.test_policy_render import policy as random_policy

PROFILES = {n: model.profile_from_resource(default_profile(n).to_value()) for n in ("k8s", "tenant-b")}


def wep(name: str, node: str, iface: str, ips: list[str], profiles=("k8s",), **labels) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"node": node, "interfaceName": iface, "ipNetworks": ips, "profiles": list(profiles)}}


ENDPOINTS = model.with_effective_labels([model.endpoint_from_resource(w) for w in (
    wep("a", "n1", "cali0000000001", ["10.0.0.1/32", "fd00::1/128"], role="db"),
    wep("b", "n1", "cali0000000002", ["10.0.0.2/32"], role="fe"),  # IPv4 only
    wep("c", "n2", "cali0000000003", ["fd00::3/128"], role="fe"),  # IPv6 only
    wep("d", "n2", "cali0000000004", ["10.0.0.4/32", "fd00::4/128"], ("tenant-b",), role="fe"),
)], PROFILES)
ND = tuple(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (133, 134, 135, 136))
ALLOW = ("-j MARK --set-xmark 0x10000/0x10000", "-m mark --mark 0x10000/0x10000 -j RETURN")


def gnp(name: str, spec: dict) -> model.Policy:
    return model.policy_from_resource({"metadata": {"name": name}, "spec": spec}, namespaced=False)


def both(policies: list[model.Policy]) -> dict[int, layout.Ruleset]:
    return render.render_all(render.local_endpoints(ENDPOINTS, "n1"), ENDPOINTS, policies, PROFILES)


def chains_of(rules: list[dict]) -> dict[int, tuple[str, ...]]:
    """Each family's ingress chain of a global policy holding ``rules``."""
    return {v: rs.chains["cali-pi-p"] for v, rs in both([gnp("p", {"selector": "all()", "ingress": rules})]).items()}


def test_rules_go_only_into_their_familys_table():
    chains = chains_of([
        {"action": "Deny", "ipVersion": 4}, {"action": "Log", "ipVersion": 6},
        {"action": "Deny", "protocol": "ICMP"}, {"action": "Deny", "protocol": "ICMPv6"},
        {"action": "Deny", "source": {"nets": ["10.1.0.0/16"]}}, {"action": "Deny", "source": {"nets": ["fd01::/64"]}},
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}},
    ])
    tcp = "-p tcp -m multiport --dports 22 -j DROP"
    assert chains[4] == ("-j DROP", "-p icmp -j DROP", "-s 10.1.0.0/16 -j DROP", tcp)
    assert chains[6] == ("-j LOG --log-prefix calico-packet: --log-level 5", "-p ipv6-icmp -j DROP",
                         "-s fd01::/64 -j DROP", tcp)


def test_mixed_nets_are_split_by_family():
    rs = both([gnp("p", {"selector": "all()", "ingress": [{"action": "Allow", "source": {
        "nets": ["10.0.0.0/8", "fd00::/16", "fd01::/16"], "notNets": ["fd00:1::/32"]}}]})])
    v6_nets, v6_not = layout.set_name("n", "fd00::/16,fd01::/16", 6), layout.set_name("n", "fd00:1::/32", 6)
    assert rs[4].chains["cali-pi-p"] == (f"-s 10.0.0.0/8 {ALLOW[0]}", ALLOW[1])
    assert rs[6].chains["cali-pi-p"] == (
        f"-m set --match-set {v6_nets} src -m set ! --match-set {v6_not} src {ALLOW[0]}", ALLOW[1])
    assert rs[6].ipsets[v6_nets] == layout.IpSet("hash:net", ("fd00::/16", "fd01::/16"))
    assert not any(name.startswith("cali40n:") for name in rs[4].ipsets)


def test_any_address_and_its_halves():
    rs = both([gnp("p", {"selector": "all()", "ingress": [
        {"action": "Allow", "source": {"nets": ["::/0"]}}, {"action": "Deny", "source": {"notNets": ["::/0"]}}]})])
    halves = layout.set_name("n", "::/0", 6)
    assert rs[6].chains["cali-pi-p"] == (*ALLOW, f"-m set ! --match-set {halves} src -j DROP")
    assert rs[6].ipsets[halves].members == ("8000::/1", "::/1")
    assert rs[4].chains["cali-pi-p"] == ("-j DROP",)  # an IPv4 packet is never in ::/0


def test_icmpv6_fields_and_the_other_familys_icmp_in_not_protocol():
    chains = chains_of([
        {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128, "code": 0}},
        {"action": "Deny", "protocol": 58, "notICMP": {"type": 1}},
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
        {"action": "Deny", "notProtocol": "ICMPv6"}, {"action": "Deny", "notProtocol": "ICMP"},
    ])
    assert chains[6] == (f"-p ipv6-icmp -m icmp6 --icmpv6-type 128/0 {ALLOW[0]}", ALLOW[1],
                         "-p 58 -m icmp6 ! --icmpv6-type 1 -j DROP", "! -p ipv6-icmp -j DROP", "-j DROP")
    assert chains[4] == (f"-p icmp -m icmp --icmp-type 8 {ALLOW[0]}", ALLOW[1], "-j DROP", "! -p icmp -j DROP")


def test_neighbour_discovery_is_accepted_before_any_policy():
    rs = both([gnp("deny", {"order": 0, "selector": "all()", "types": ["Ingress", "Egress"],
                            "ingress": [{"action": "Deny"}], "egress": [{"action": "Deny"}]})])
    for chain in (layout.FROM_WL, layout.TO_WL):
        assert rs[6].chains[chain][:4] == ND and rs[6].chains[chain][-1] == "-j DROP"
        assert not any("icmp" in rule for rule in rs[4].chains[chain])
    # The same layout otherwise: conntrack, policies, profiles, and the jump from FORWARD.
    assert rs[6].chains["cali-tw-cali0000000001"] == rs[4].chains["cali-tw-cali0000000001"]
    assert rs[6].chains[layout.FORWARD_CHAIN] == rs[4].chains[layout.FORWARD_CHAIN]
    assert rs[6].chains.keys() == rs[4].chains.keys()
    assert "-I FORWARD 1 " + layout.JUMP in rs[6].text()


def test_selector_sets_hold_each_familys_addresses():
    rs = both([gnp("p", {"selector": "role == 'db'", "ingress": [{"action": "Allow", "source": {
        "selector": "role == 'fe'"}}]})])
    v4, v6 = layout.set_name("s", 'role == "fe"'), layout.set_name("s", 'role == "fe"', 6)
    assert v6.startswith("cali60s:") and len(v6) == layout.MAX_SET and v4.startswith("cali40s:")
    assert rs[4].ipsets[v4] == layout.IpSet("hash:net", ("10.0.0.2", "10.0.0.4"))
    assert rs[6].ipsets[v6] == layout.IpSet("hash:net", ("fd00::3", "fd00::4"))
    assert all(n.startswith("cali40") for n in rs[4].ipsets) and all(n.startswith("cali60") for n in rs[6].ipsets)
    assert rs[6].chains["cali-pi-p"] == (f"-m set --match-set {v6} src {ALLOW[0]}", ALLOW[1])


# --- the IPv6 Dataplane and both families together, against the recording fake -----------------------


def test_the_ipv6_dataplane_uses_ip6tables_and_inet6_sets_only():
    fake = Fake(sets="cali40s:keep\ncali60s:stale\n")
    dp = Dataplane(fake, version=6)
    rs = both([gnp("p", {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "has(x)"}}]})])
    assert dp.apply(rs[6])
    assert fake.commands() == ["ip6tables-restore --help", "ip6tables-save -t filter", "ipset list -n",
                               "ipset restore -exist", "ip6tables-restore --noflush", "ipset destroy cali60s:stale"]
    assert "family inet6" in fake.calls[3][1] and "cali40" not in fake.calls[3][1]
    assert f"-I FORWARD 1 {layout.JUMP}" in fake.restore("ip6tables-restore")
    fake.calls.clear()
    assert not dp.apply(rs[6]) and fake.calls == []
    with pytest.raises(ValueError):
        dp.apply(rs[4])


def test_one_sync_programs_both_families_and_a_v6_failure_leaves_v4_applied():
    res = "/calico/resources/v3/projectcalico.org"
    fake = Fake()
    sync = PolicySync("n1", Dataplane(fake), ipv6=True)  # type: ignore[arg-type]
    sync.load([(f"{res}/profiles/k8s", default_profile("k8s").to_value()), (f"{res}/workloadendpoints/default/w", {
        "metadata": {"name": "w", "namespace": "default"}, "spec": {
            "node": "n1", "interfaceName": "cali1", "ipNetworks": ["10.0.0.1/32", "fd00::1/128"],
            "profiles": ["k8s"]}})])
    assert sync.flush()
    assert "-A cali-tw-cali1 -j cali-pri-k8s" in fake.restore() and ND[0] in fake.restore("ip6tables-restore")
    fake.calls.clear()
    assert not sync.flush() and fake.calls == []
    sync.update(f"{res}/globalnetworkpolicies/p", {"metadata": {"name": "p"}, "spec": {"selector": "all()"}})
    fake.fail = "ip6tables-restore --noflush"
    with pytest.raises(PolicyError):
        sync.flush()
    assert "cali-pi-p" in fake.restore() and sync.dataplanes[0].programmed and not sync.dataplanes[1].programmed
    fake.fail, fake.calls = "", []
    assert sync.flush()  # only the IPv6 side is rewritten whole: the IPv4 one is already as rendered
    assert "ip6tables-save -t filter" in fake.commands() and "iptables-restore --noflush" not in fake.commands()
    assert len(PolicySync("n1", Dataplane(Fake()), ipv6=False).dataplanes) == 1  # type: ignore[arg-type]


def test_cleanup_covers_both_families_and_deletes_a_pristine_ip6_table():
    jumped = f"*filter\n:FORWARD ACCEPT [0:0]\n:cali-FORWARD - [0:0]\n-A FORWARD {layout.JUMP}\nCOMMIT\n"
    fake = Fake(save=jumped, save6=jumped, sets="cali40s:a\ncali60s:b\nsite\n",
                version="iptables v1.8.9 (nf_tables)")
    removed = cleanup(fake, versions=(4, 6))
    assert removed == [f"jump: -A FORWARD {layout.JUMP}", "chain: cali-FORWARD", "ipset: cali40s:a",
                       f"ip6 jump: -A FORWARD {layout.JUMP}", "ip6 chain: cali-FORWARD", "ipset: cali60s:b"]
    assert fake.restore("ip6tables-restore").startswith("*filter\n:cali-FORWARD - [0:0]\n-D FORWARD ")
    assert "ip6tables-save" in fake.commands() and "ipset destroy site" not in fake.commands()
    # The fake still saves the jump, so neither table looks pristine: no table is deleted.
    assert not any(c.startswith("nft ") for c in fake.commands())


# --- random policies through a real ip6tables -----------------------------------------------------------


@pytest.fixture(scope="module")
def scratch6():
    """A scratch network namespace, and a runner that executes commands inside it."""
    ns = f"ccpolicy6-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    root_before = [subprocess.run([tool], capture_output=True, text=True).stdout.count("cali")
                   for tool in ("iptables-save", "ip6tables-save")]
    subprocess.run(["ip", "netns", "add", ns], check=True)

    yield netns_runner(ns)
    subprocess.run(["ip", "netns", "del", ns], check=True)
    assert [subprocess.run([tool], capture_output=True, text=True).stdout.count("cali")
            for tool in ("iptables-save", "ip6tables-save")] == root_before


v6_nets = st.lists(st.sampled_from(["fd00::/8", "fd00::1", "2001:db8::/32", "::/0", "10.0.0.0/8"]), max_size=3)
v6_rule = st.fixed_dictionaries({"action": st.sampled_from(["Allow", "Deny", "Pass", "Log"])}, optional={
    "protocol": st.sampled_from(["ICMPv6", 58, "TCP", "ICMP"]), "notProtocol": st.sampled_from(["ICMP", "UDP"]),
    "icmp": st.fixed_dictionaries({"type": st.integers(0, 255)}, optional={"code": st.integers(0, 255)}),
    "ipVersion": st.sampled_from([4, 6]), "source": st.fixed_dictionaries({}, optional={
        "nets": v6_nets, "notNets": v6_nets, "selector": st.sampled_from(["role == 'fe'", "all()"])}),
    "destination": st.fixed_dictionaries({}, optional={"nets": v6_nets, "notNets": v6_nets})})
v6_policy = st.fixed_dictionaries({"selector": st.just("all()"), "ingress": st.lists(v6_rule, max_size=3),
                                   "egress": st.lists(v6_rule, max_size=2)})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a scratch network namespace")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(specs=st.lists(st.one_of(v6_policy, random_policy), min_size=1, max_size=3))
def test_random_policies_render_and_load_into_ip6tables(scratch6, specs):
    policies = [gnp(f"p{i}", spec) for i, spec in enumerate(specs)]
    rs = both(policies)[6]
    dataplane = getattr(scratch6, "dataplane", None) or Dataplane(scratch6, version=6)
    scratch6.dataplane = dataplane  # one across examples: the incremental path is exercised too
    try:
        dataplane.apply(rs)
    except PolicyError as exc:
        raise AssertionError(f"{exc}\n{rs.text()}") from None
    test = scratch6(["ip6tables-restore", "--noflush", "--test"], rs.text(), check=False)
    assert test.returncode == 0, test.stderr + rs.text()
    saved = saved_filter(scratch6, layout.V6)
    assert sorted(line[1:].split()[0] for line in saved if line.startswith(":cali-")) == sorted(rs.chains)
    for chain, rules in rs.chains.items():
        assert sum(1 for line in saved if line.startswith(f"-A {chain} ")) == len(rules), chain
    assert set(scratch6(["ipset", "list", "-n"]).stdout.split()) == set(rs.ipsets)
    for name, s in rs.ipsets.items():
        listing = scratch6(["ipset", "list", name]).stdout
        assert "family inet6" in listing
        held = listing.split("Members:\n")[1].split()
        assert sorted(held) == sorted(m.removesuffix("/128") for m in s.members), name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a scratch network namespace")
def test_cleanup_leaves_both_tables_of_the_scratch_namespace_as_they_were(scratch6):
    rs = both([gnp("p", {"selector": "all()", "ingress": [{"action": "Deny", "source": {"selector": "has(k8s)"}}]})])
    Dataplane(scratch6).apply(rs[4])
    Dataplane(scratch6, version=6).apply(rs[6])
    assert "cali-FORWARD" in scratch6(["iptables-save"]).stdout and ND[0] in scratch6(["ip6tables-save"]).stdout
    removed = cleanup(scratch6)
    assert "ip6 chain: cali-FORWARD" in removed and "chain: cali-FORWARD" in removed
    assert scratch6(["iptables-save"]).stdout == "" and scratch6(["ip6tables-save"]).stdout == ""
    assert scratch6(["ipset", "list", "-n"]).stdout == ""
