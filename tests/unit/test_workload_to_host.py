"""A workload's traffic to its own host without a kernel (Felix's cali-wl-to-host): the chains for each
DefaultEndpointToHostAction in both families, with and without host endpoints, the jump from INPUT
(installed, repaired, cleaned up), and the setting's forms: FelixConfiguration (calicoctl's validation,
calico-node's reading) and the environment. (The calculator equals the from-scratch render while the
action switches: test_policy_calc's property tests draw it.)"""

from __future__ import annotations

import pytest

from cni_calico.ctl.kinds.felix import FELIXCONFIGURATION
from cni_calico.ctl.resources_help import FELIX_HELP
from cni_calico.node.config import NodeConfigError, from_env
from cni_calico.policy import hostep, model, render
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.iptables import Dataplane, cleanup
from cni_calico.resources import Resource, ValidationError, validate
from cni_calico.v3 import FelixConfiguration, endpoint_to_host_action
from tests.unit.test_policy_dataplane import Fake

NODE = "n1"
JUMP = '-m comment --comment "cali:calico-node policy" -j cali-INPUT'
COMMENT = '-m comment --comment "Configured DefaultEndpointToHostAction"'


def wep(iface: str = "cali1") -> model.Endpoint:
    return model.endpoint_from_resource({"metadata": {"name": "w1", "namespace": "a", "labels": {"app": "x"}},
                                         "spec": {"node": NODE, "interfaceName": iface,
                                                  "ipNetworks": ["10.0.0.1/32", "fd00::1/128"]}})


def rendered(version: int = 4, to_host: str = "Drop", hosts: bool = False):
    eps = [wep()]
    if hosts:
        eps.append(model.host_endpoint_from_resource({"metadata": {"name": "h"},
                                                      "spec": {"node": NODE, "interfaceName": "eth0"}}))
    eps = model.with_effective_labels(eps, {})
    return render.render(render.local_endpoints(eps, NODE), eps, [], {}, version,
                         hosts=hostep.local_host_endpoints(eps, NODE), to_host=to_host)


@pytest.mark.parametrize(("action", "target"), [("Drop", "DROP"), ("Accept", "ACCEPT"), ("Return", "RETURN")])
def test_the_workloads_traffic_to_the_host_meets_their_egress_policy_then_the_action(action, target):
    rs = rendered(4, action)
    assert rs.chains["cali-INPUT"] == ("-i cali+ -g cali-wl-to-host",)
    assert rs.chains["cali-wl-to-host"] == ("-j cali-from-wl-dispatch", f"{COMMENT} -j {target}")
    assert f"-I INPUT 1 {JUMP}" in rs.text() and "OUTPUT" not in rs.text()
    v6 = rendered(6, action).chains["cali-wl-to-host"]
    assert v6 == (*(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (130, 131, 132, 133, 135, 136)),
                  "-j cali-from-wl-dispatch", f"{COMMENT} -j {target}")


def test_felixs_default_is_drop_and_host_endpoints_keep_the_workloads_rule_first():
    assert render.render([], [], [], {}, 4).chains["cali-wl-to-host"][-1] == f"{COMMENT} -j DROP"
    assert PolicyCalculator(NODE, (4,)).ruleset(4).chains["cali-wl-to-host"][-1] == f"{COMMENT} -j DROP"
    chain = rendered(4, "Return", hosts=True).chains["cali-INPUT"]
    assert chain[0] == "-i cali+ -g cali-wl-to-host" and "-j cali-from-host-endpoint" in chain
    assert chain.index("-j cali-from-host-endpoint") > 0


def test_the_calculator_switches_the_action_by_rewriting_one_chain():
    calc = PolicyCalculator(NODE, (4, 6))
    calc.update_endpoint("a/w1", wep())
    for version in (4, 6):
        calc.take_changes(version)
    calc.set_endpoint_to_host("Accept")
    for version in (4, 6):
        changes = calc.take_changes(version)
        assert list(changes.chains) == ["cali-wl-to-host"] and changes.chains["cali-wl-to-host"][-1].endswith(
            "-j ACCEPT")
    calc.set_endpoint_to_host("Accept")
    assert not calc.take_changes(4)


def saved(rs, jump: bool) -> str:
    """iptables-save's text of a kernel holding ``rs`` (with our INPUT jump or without), after the site's
    own INPUT rule."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             *(f":{c} - [0:0]" for c in rs.chains), *([f"-A INPUT {JUMP}"] if jump else []), "-A INPUT -j DROP",
             '-A FORWARD -m comment --comment "cali:calico-node policy" -j cali-FORWARD']
    lines += [f"-A {c} {r}" for c, rules in rs.chains.items() for r in rules]
    return "\n".join([*lines, "COMMIT", ""])


def test_the_input_jump_is_installed_repaired_and_cleaned_up():
    rs = rendered(4, "Return")
    fake = Fake()
    Dataplane(fake).apply(rs)
    assert f"-I INPUT 1 {JUMP}" in fake.restore()
    assert not any("-t mangle" in c or "-t raw" in c for c in fake.commands())  # no host endpoint
    assert Dataplane(Fake(saved(rs, True))).repair(rs) == []
    fixer = Fake(saved(rs, False))  # someone deleted the jump: the drift check puts it back at the top
    assert Dataplane(fixer).repair(rs) == ["filter jumps"]
    assert f"-I INPUT 1 {JUMP}" in fixer.restore()
    cleaner = Fake(saved(rs, True))
    removed = cleanup(cleaner, (4,))
    assert f"jump: -A INPUT {JUMP}" in removed and "chain: cali-wl-to-host" in removed
    assert f"-D INPUT {JUMP}" in cleaner.restore() and "-A INPUT -j DROP" not in cleaner.restore()


def test_felix_configuration_and_calicoctl_take_the_three_actions_in_any_case():
    assert [endpoint_to_host_action(v) for v in ("Drop", "accept", "RETURN", "", "Reject", None, 1)] == [
        "Drop", "Accept", "Return", None, None, None, None]
    for value in ("Drop", "Accept", "Return", "return", ""):
        validate(Resource(FELIXCONFIGURATION, {"name": "node.n1"}, {"defaultEndpointToHostAction": value}))
    for value in ("Reject", "Allow", 1):
        with pytest.raises(ValidationError) as info:
            validate(Resource(FELIXCONFIGURATION, {"name": "default"}, {"defaultEndpointToHostAction": value}))
        assert "spec.defaultEndpointToHostAction" in str(info.value.errors[0])
        assert "Drop, Accept, Return" in str(info.value.errors[0])
    felix = FelixConfiguration.from_value({"metadata": {"name": "default"},
                                           "spec": {"defaultEndpointToHostAction": "accept"}})
    assert felix.endpoint_to_host == "Accept"
    assert FelixConfiguration.from_value({"metadata": {"name": "default"}, "spec": {}}).endpoint_to_host is None
    assert "defaultEndpointToHostAction" in FELIX_HELP.replace("\n", " ").split("; it accepts")[0]


def test_the_environment_sets_the_action_and_refuses_others():
    env = {"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379"}
    assert from_env(env).endpoint_to_host is None
    assert from_env({**env, "FELIX_DEFAULTENDPOINTTOHOSTACTION": "ACCEPT"}).endpoint_to_host == "Accept"
    with pytest.raises(NodeConfigError, match="FELIX_DEFAULTENDPOINTTOHOSTACTION"):
        from_env({**env, "FELIX_DEFAULTENDPOINTTOHOSTACTION": "reject"})
