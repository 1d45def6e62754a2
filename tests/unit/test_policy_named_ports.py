"""Named ports, as Felix enforces them: an endpoint's declared ports (model), one hash:ip,port set per
(rule side's selector, protocol, port name) holding "<address>,<proto>:<port>" of every endpoint of the
cluster the selector matches that declares the name (render and calc), and the rules that match them
(`dst,dst` / `src,src`, negated for notPorts, ORed with numeric ports)."""

from __future__ import annotations

from cni_calico.policy import layout, model, render
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.iptables import _normal
from cni_calico.policy.layout import V4, V6, IpSet

HTTP = {"name": "http", "protocol": "TCP", "port": 8080}


def wep(name: str, node: str, iface: str, ips: list[str], ports: list[dict], **labels) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"node": node, "interfaceName": iface, "ports": ports, "profiles": [],
                     "ipNetworks": [f"{ip}/{128 if ':' in ip else 32}" for ip in ips]}}


WEPS = [
    wep("a", "n1", "cali0000000001", ["10.0.0.1", "fd00::1"], [HTTP, {"name": "dns", "protocol": "UDP", "port": 53}],
        role="db"),
    wep("b", "n2", "cali0000000002", ["10.0.0.2"], [{"name": "http", "protocol": "TCP", "port": 80},
                                                    {"name": "", "protocol": "TCP", "port": 9, "hostPort": 9}],
        role="fe"),
    wep("c", "n2", "cali0000000003", ["10.0.0.3"], [{"name": "http", "protocol": "SCTP", "port": 81},
                                                    {"name": "http", "protocol": 6, "port": 82}], role="fe"),
    wep("d", "n2", "cali0000000004", ["10.0.0.4"], [], role="fe"),  # declares nothing
]
ENDPOINTS = model.with_effective_labels([model.endpoint_from_resource(w) for w in WEPS], {})


def gnp(rule: dict, selector: str = "role == 'db'") -> model.Policy:
    return model.policy_from_resource({"metadata": {"name": "p"}, "spec": {"selector": selector,
                                                                           "ingress": [rule]}}, namespaced=False)


def rendered(rule: dict, version: int = 4) -> render.Ruleset:
    return render.render(render.local_endpoints(ENDPOINTS, "n1"), ENDPOINTS, [gnp(rule)], {}, version)


def named(selector: str, protocol: str, name: str, version: int = 4) -> str:
    return layout.named_port_set(selector, protocol, name, version)


ALL = 'projectcalico.org/namespace == "default"'  # how a NetworkPolicy scopes a side without a selector


# --- model -------------------------------------------------------------------------------------------


def test_an_endpoint_keeps_its_named_ports_and_drops_unnamed_and_malformed_ones():
    a, b, c, _ = ENDPOINTS
    assert a.ports == (("http", "tcp", 8080), ("dns", "udp", 53))
    assert b.ports == (("http", "tcp", 80),)  # the hostPort without a name is not Felix's
    assert c.ports == (("http", "sctp", 81), ("http", "6", 82))
    bad = model.endpoint_from_resource(wep("x", "n1", "cali1", ["10.0.0.9"], [
        {"name": "p", "protocol": "TCP", "port": 0}, {"name": "q", "protocol": "GRE", "port": 1}, "junk",
        {"name": "r", "protocol": "TCP", "port": "80"}]))
    assert bad.ports == ()
    host = model.host_endpoint_from_resource({"metadata": {"name": "h"}, "spec": {
        "node": "n1", "interfaceName": "eth0", "expectedIPs": ["10.1.0.1"], "ports": [HTTP]}})
    assert host.ports == (("http", "tcp", 8080),)


def test_named_port_protocols_and_members_are_felixs():
    assert [model.named_port_protocol(p) for p in ("tcp", "6", "udp", "17", "sctp", "132", "udplite", "")] == [
        "tcp", "tcp", "udp", "udp", "sctp", "sctp", "tcp", "any"]
    a, b, c, d = ENDPOINTS
    assert model.named_port_members(a, "tcp", "http", 4) == ["10.0.0.1,tcp:8080"]
    assert model.named_port_members(a, "tcp", "http", 6) == ["fd00::1,tcp:8080"]
    assert model.named_port_members(a, "udp", "http", 4) == []
    assert model.named_port_members(c, "tcp", "http", 4) == ["10.0.0.3,tcp:82"]  # 6 is TCP
    assert model.named_port_members(c, "any", "http", 4) == ["10.0.0.3,sctp:81", "10.0.0.3,tcp:82"]
    assert model.named_port_members(d, "any", "http", 4) == []


# --- render ------------------------------------------------------------------------------------------


def test_a_destination_named_port_matches_its_set_and_the_set_holds_every_declaring_endpoint():
    rs = rendered({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}})
    name = named("all()", "tcp", "http")
    assert name.startswith("cali40n:") and len(name) == 31
    assert rs.chains["cali-pi-p"] == (f"-p tcp -m set --match-set {name} dst,dst -j MARK --set-xmark 0x10000/0x10000",
                                      "-m mark --mark 0x10000/0x10000 -j RETURN")
    assert rs.ipsets[name] == IpSet("hash:ip,port", ("10.0.0.1,tcp:8080", "10.0.0.2,tcp:80", "10.0.0.3,tcp:82"))
    six = rendered({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}, 6)
    assert six.ipsets[named("all()", "tcp", "http", 6)] == IpSet("hash:ip,port", ("fd00::1,tcp:8080",))
    assert named("all()", "tcp", "http", 6).startswith("cali60n:")


def test_a_sides_selector_filters_its_named_port_set_instead_of_its_own_match():
    rs = rendered({"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'fe'", "ports": ["http"]}})
    sel = 'role == "fe"'
    name = named(sel, "tcp", "http")
    assert rs.chains["cali-pi-p"][0] == f"-p tcp -m set --match-set {name} src,src -j MARK --set-xmark 0x10000/0x10000"
    assert rs.ipsets == {name: IpSet("hash:ip,port", ("10.0.0.2,tcp:80", "10.0.0.3,tcp:82"))}  # no selector set


def test_numeric_and_named_ports_are_alternatives_and_the_selector_stays_for_the_numbers():
    rs = rendered({"action": "Deny", "protocol": "UDP", "destination": {"selector": "role == 'db'",
                                                                         "ports": [53, "dns", "http"]}})
    sel = render.set_name("s", 'role == "db"')
    dns, http = named('role == "db"', "udp", "dns"), named('role == "db"', "udp", "http")
    assert rs.chains["cali-pi-p"] == (f"-p udp -m set --match-set {sel} dst -m multiport --dports 53 -j DROP",
                                      f"-p udp -m set --match-set {sel} dst -m set --match-set {dns} dst,dst -j DROP",
                                      f"-p udp -m set --match-set {sel} dst -m set --match-set {http} dst,dst -j DROP")
    assert rs.ipsets[dns] == IpSet("hash:ip,port", ("10.0.0.1,udp:53",)) and rs.ipsets[http].members == ()


def test_allow_and_pass_return_after_each_alternative():
    http = named("all()", "tcp", "http")
    for action, mark in (("Allow", "0x10000"), ("Pass", "0x20000")):
        rs = rendered({"action": action, "protocol": "TCP", "destination": {"ports": [22, "http"]}})
        set_mark, back = f"-j MARK --set-xmark {mark}/{mark}", f"-m mark --mark {mark}/{mark} -j RETURN"
        assert rs.chains["cali-pi-p"] == (f"-p tcp -m multiport --dports 22 {set_mark}", back,
                                          f"-p tcp -m set --match-set {http} dst,dst {set_mark}", back)


def test_not_ports_named_are_negated_and_anded():
    rs = rendered({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["http", 22]}})
    name = named("all()", "tcp", "http")
    assert rs.chains["cali-pi-p"][0] == (f"-p tcp -m multiport ! --dports 22 -m set ! --match-set {name} dst,dst "
                                         "-j MARK --set-xmark 0x10000/0x10000")


def test_without_a_protocol_a_named_port_takes_every_protocol_of_the_declared_ports():
    rs = rendered({"action": "Allow", "destination": {"ports": ["http"]}})
    name = named("all()", "any", "http")
    assert rs.chains["cali-pi-p"][0] == f"-m set --match-set {name} dst,dst -j MARK --set-xmark 0x10000/0x10000"
    assert rs.ipsets[name].members == ("10.0.0.1,tcp:8080", "10.0.0.2,tcp:80", "10.0.0.3,sctp:81",
                                       "10.0.0.3,tcp:82")


def test_a_log_rule_split_in_alternatives_logs_a_packet_once():
    rs = rendered({"action": "Log", "protocol": "TCP", "source": {"ports": [1, "http"]},
                   "destination": {"ports": [2, "http"]}})
    src, dst = named("all()", "tcp", "http"), named("all()", "tcp", "http")
    s1, s2 = "-m multiport --sports 1", f"-m set --match-set {src} src,src"
    d1, d2 = "-m multiport --dports 2", f"-m set --match-set {dst} dst,dst"
    not_s1, not_d1 = "-m multiport ! --sports 1", "-m multiport ! --dports 2"
    log = "-j LOG --log-prefix calico-packet: --log-level 5"
    assert rs.chains["cali-pi-p"] == (f"-p tcp {s1} {d1} {log}", f"-p tcp {s1} {d2} {not_d1} {log}",
                                      f"-p tcp {s2} {d1} {not_s1} {log}", f"-p tcp {s2} {d2} {not_s1} {not_d1} {log}")


def test_named_port_sets_never_share_a_name_with_net_sets():
    assert layout.named_port_set("all()", "tcp", "http") != layout.named_port_set("all()", "udp", "http")
    assert layout.named_port_set("a", "tcp", "b") != layout.set_name("n", "a,tcp,b")
    assert layout.policy_set(layout.named_port_set("all()", "tcp", "http"), V4)
    assert layout.policy_set(layout.named_port_set("all()", "tcp", "http", 6), V6)


def test_kernel_members_read_back_as_written():
    assert _normal("10.0.0.1,tcp:80", V4) == "10.0.0.1,tcp:80"
    assert _normal("fd00:0::1,udp:53", V6) == "fd00::1,udp:53"
    assert _normal("10.0.0.0/24", V4) == "10.0.0.0/24"


# --- calc --------------------------------------------------------------------------------------------


def test_an_endpoints_ports_change_only_its_members_of_the_named_port_sets():
    calc = PolicyCalculator("n1")
    calc.update_policy("p", gnp({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}))
    for raw in WEPS[:2]:
        calc.update_endpoint(f"default/{raw['metadata']['name']}", model.endpoint_from_resource(raw))
    name = named("all()", "tcp", "http")
    created = calc.take_changes(4).created
    assert created[name] == IpSet("hash:ip,port", ("10.0.0.1,tcp:8080", "10.0.0.2,tcp:80"))
    assert calc.take_changes(6).created[named("all()", "tcp", "http", 6)].members == ("fd00::1,tcp:8080",)
    # b moves http to 8081: one member out, one in; no chain is written.
    moved = wep("b", "n2", "cali0000000002", ["10.0.0.2"], [{"name": "http", "protocol": "TCP", "port": 8081}],
                role="fe")
    calc.update_endpoint("default/b", model.endpoint_from_resource(moved))
    changes = calc.take_changes(4)
    assert (changes.added, changes.deleted, changes.chains, changes.created) == (
        {name: {"10.0.0.2,tcp:8081"}}, {name: {"10.0.0.2,tcp:80"}}, {}, {})
    assert not calc.take_changes(6)
    # An endpoint without ports changes nothing; b's going takes its member.
    calc.update_endpoint("default/d", model.endpoint_from_resource(WEPS[3]))
    assert not calc.take_changes(4)
    calc.update_endpoint("default/b", None)
    assert calc.take_changes(4).deleted == {name: {"10.0.0.2,tcp:8081"}}
    # The set lives while a rule names it.
    calc.update_policy("p", None)
    assert name in calc.take_changes(4).destroyed


def test_a_label_change_moves_an_endpoint_in_and_out_of_a_filtered_named_port_set():
    calc = PolicyCalculator("n1")
    calc.update_policy("p", gnp({"action": "Allow", "protocol": "TCP",
                                 "source": {"selector": "role == 'fe'", "ports": ["http"]}}))
    calc.update_endpoint("default/a", model.endpoint_from_resource(WEPS[0]))
    name = named('role == "fe"', "tcp", "http")
    assert calc.take_changes(4).created[name].members == ()
    calc.update_endpoint("default/b", model.endpoint_from_resource(WEPS[1]))
    assert calc.take_changes(4).added == {name: {"10.0.0.2,tcp:80"}}
    relabelled = {**WEPS[1], "metadata": {**WEPS[1]["metadata"], "labels": {"role": "db"}}}
    calc.update_endpoint("default/b", model.endpoint_from_resource(relabelled))
    assert calc.take_changes(4).deleted == {name: {"10.0.0.2,tcp:80"}}
