"""Random policy updates for property tests (hypothesis strategies), and the from-scratch render
they are checked against: one place for the unit test of the calculator and the integration test of
calico-node's policy on real etcd, iptables and ipset."""

from __future__ import annotations

from hypothesis import strategies as st

from cni_calico import keys
from cni_calico.policy import hostep, model, render
from cni_calico.policy.calc import Changes, PolicyCalculator
from cni_calico.v3 import DEFAULT_ENDPOINT_TO_HOST, ENDPOINT_TO_HOST_ACTIONS

NODE = "n1"
SELECTORS = ["app == 'web'", "has(tier)", "all()", "tier in {'x'}", "!has(app)", "app == 'db' && tier == 'y'",
             "role == 'r1'", "bad((", "projectcalico.org/namespace == 'b'", "app != 'web'"]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "fd00::1", "fd00::2"]


def rule(draw, named: bool = False) -> dict:
    out: dict = {"action": draw(st.sampled_from(["Allow", "Deny", "Pass", "Log"]))}
    if draw(st.booleans()):
        out["source"] = {"selector": draw(st.sampled_from(SELECTORS))}
    if draw(st.booleans()):
        out["destination"] = {"notSelector": draw(st.sampled_from(SELECTORS))}
    if draw(st.booleans()):
        out["source"] = {**out.get("source", {}), "nets": draw(st.sampled_from(
            [["10.9.0.0/16"], ["10.9.0.0/16", "10.8.0.0/16"], ["fd00:9::/64"], ["0.0.0.0/0"]]))}
    if draw(st.booleans()):
        out["protocol"] = draw(st.sampled_from(["TCP", "ICMP", "ICMPv6"]))
    if draw(st.integers(0, 4)) == 0:  # service accounts: by name and by their labels (pcsa.)
        out["source"] = {**out.get("source", {}), "serviceAccounts": draw(st.sampled_from(
            [{"names": ["sa1"]}, {"selector": "team == 'x'"}, {"names": ["sa1", "sa2"], "selector": "all()"}]))}
    if named or draw(st.integers(0, 2)) == 0:  # named ports (ORed with numeric ones), either side, negated too
        side = draw(st.sampled_from(["source", "destination"]))
        field = draw(st.sampled_from(["ports", "ports", "notPorts"]))
        out[side] = {**out.get(side, {}), field: draw(st.lists(st.sampled_from(["http", "dns", 80, "http"]),
                                                               min_size=1, max_size=3))}
        out["protocol"] = draw(st.sampled_from(["TCP", "UDP", None]))
        if out["protocol"] is None:
            del out["protocol"]  # named ports alone need none: every protocol's declared ports
    return out


PORTS = [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "http", "protocol": "TCP", "port": 8080},
         {"name": "dns", "protocol": "UDP", "port": 53}, {"name": "dns", "protocol": "TCP", "port": 53},
         {"name": "", "protocol": "TCP", "port": 9, "hostPort": 9}]


def ports(draw) -> list[dict]:
    """An endpoint's declared ports (named, one unnamed hostPort that policy never sees)."""
    return draw(st.lists(st.sampled_from(PORTS), max_size=2, unique_by=lambda p: (p["name"], p["protocol"],
                                                                                  p["port"])))


@st.composite
def endpoint_op(draw):
    ns, n = draw(st.sampled_from(["a", "b"])), draw(st.integers(0, 4))
    if draw(st.integers(0, 4)) == 0:
        return ("endpoint", f"{ns}/w{n}", None)
    labels = {k: v for k, v in (("app", draw(st.sampled_from(["web", "db", None]))),
                                ("tier", draw(st.sampled_from(["x", "y", None]))),
                                ("projectcalico.org/serviceaccount", draw(st.sampled_from(["sa1", "sa2", None]))))
              if v}
    addrs = draw(st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True))
    value = {"metadata": {"name": f"w{n}", "namespace": ns, "labels": labels},
             "spec": {"node": draw(st.sampled_from([NODE, NODE, "n2"])),
                      "interfaceName": draw(st.sampled_from(["cali1", "cali2", "cali3", "eth9"])),
                      "ipNetworks": [f"{a}/{128 if ':' in a else 32}" for a in addrs],
                      "profiles": draw(st.lists(st.sampled_from(["k8s", "t1", "missing"]), max_size=2)),
                      "ports": ports(draw)}}
    return ("endpoint", f"{ns}/w{n}", value)


@st.composite
def profile_op(draw, named: bool = False):
    name = draw(st.sampled_from(["k8s", "t1", "ksa.a.sa1", "ksa.b.sa2"]))  # ksa.*: a service account's labels
    if draw(st.integers(0, 5)) == 0:
        return ("profile", name, None)
    value = {"metadata": {"name": name}, "spec": {
        "ingress": [rule(draw, named) for _ in range(draw(st.integers(0, 2)))],
        "egress": [rule(draw, named) for _ in range(draw(st.integers(0, 1)))],
        "labelsToApply": draw(st.sampled_from([{}, {"role": "r1"}, {"role": "r2"}, {"pcsa.team": "x"}]))}}
    return ("profile", name, value)


@st.composite
def policy_op(draw, global_only: bool = False, named: bool = False):
    n = draw(st.sampled_from([1, 3] if global_only else [0, 1, 2, 3]))
    namespaced = n % 2 == 0
    key = f"a/p{n}" if namespaced else f"p{n}"
    if draw(st.integers(0, 4)) == 0:
        return ("policy", key, None)
    spec = {"selector": draw(st.sampled_from(SELECTORS)), "order": draw(st.sampled_from([None, 1, 5, 5.5]))}
    tier = draw(st.sampled_from([None, None, "default", "t1", "t2", "missing"]))
    if tier:
        spec["tier"] = tier
    if draw(st.booleans()):
        spec["ingress"] = [rule(draw, named) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        spec["egress"] = [rule(draw, named) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        spec["types"] = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if draw(st.integers(0, 4)) == 0:
        spec["serviceAccountSelector"] = draw(st.sampled_from(["team == 'x'", "all()"]))
    if not namespaced:  # Felix's kinds of GlobalNetworkPolicy (doNotTrack wins over preDNAT)
        for flag in ("doNotTrack", "preDNAT", "applyOnForward"):
            if draw(st.booleans()):
                spec[flag] = True
    meta = {"name": f"p{n}", **({"namespace": "a"} if namespaced else {})}
    return ("policy", key, {"metadata": meta, "spec": spec, "_namespaced": namespaced})


@st.composite
def tier_op(draw):
    name = draw(st.sampled_from(["t1", "t2", "default"]))
    if draw(st.integers(0, 4)) == 0:
        return ("tier", name, None)
    spec = {"order": draw(st.sampled_from([1, 100, 2000000, None])),
            "defaultAction": draw(st.sampled_from(["Deny", "Pass"]))}
    return ("tier", name, {"metadata": {"name": name}, "spec": {k: v for k, v in spec.items() if v is not None}})


@st.composite
def netset_op(draw):
    """A NetworkSet (in namespace "a" or "b") or a GlobalNetworkSet; nets overlap the endpoints' addresses
    (a set member held by both), include /0 (two halves) and full-length nets (bare members)."""
    ns, n = draw(st.sampled_from(["a", "b", ""])), draw(st.integers(0, 2))
    key = f"{ns}/s{n}" if ns else f"s{n}"
    if draw(st.integers(0, 4)) == 0:
        return ("netset", key, None)
    nets = draw(st.lists(st.sampled_from(["10.0.0.1/32", "10.0.0.1", "10.7.0.0/16", "0.0.0.0/0", "fd00::2/128",
                                          "fd00:7::/48", "not-a-net"]), max_size=3, unique=True))
    labels = {k: v for k, v in (("app", draw(st.sampled_from(["web", "db", None]))),
                                ("role", draw(st.sampled_from(["r1", None])))) if v}
    meta = {"name": f"s{n}", "labels": labels, **({"namespace": ns} if ns else {})}
    return ("netset", key, {"metadata": meta, "spec": {"nets": nets}})


@st.composite
def host_op(draw, here: bool = False):
    """A HostEndpoint: this node's or another's, on a named interface, on "*", on none (expectedIPs
    only) or on a workload's; its expectedIPs join selector sets."""
    n = draw(st.integers(0, 2))
    if draw(st.integers(0, 4)) == 0:
        return ("host", f"h{n}", None)
    labels = {k: v for k, v in (("app", draw(st.sampled_from(["web", "db", None]))),
                                ("role", draw(st.sampled_from(["r1", None])))) if v}
    spec = {"node": NODE if here else draw(st.sampled_from([NODE, NODE, "n2"])),
            "interfaceName": draw(st.sampled_from(["eth0", "eth1", "*", ""] if here else
                                                  ["eth0", "eth0", "eth1", "*", "", "cali1"])),
            "expectedIPs": draw(st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True)),
            "profiles": draw(st.lists(st.sampled_from(["k8s", "t1", "missing"]), max_size=2)),
            "ports": [p for p in ports(draw) if p["name"]]}
    return ("host", f"h{n}", {"metadata": {"name": f"h{n}", "labels": labels}, "spec": spec})


# Endpoints declaring ports, and rules with named ports always.
NAMED_OPS = st.lists(st.one_of(endpoint_op(), endpoint_op(), endpoint_op(), profile_op(named=True),
                               policy_op(named=True), host_op()), min_size=1, max_size=25)
OPS = st.lists(st.one_of(endpoint_op(), endpoint_op(), profile_op(), policy_op(), policy_op(), tier_op(),
                         netset_op(), host_op(), host_op()), min_size=1, max_size=25)
@st.composite
def addresses_op(draw):
    """This node's interfaces and their addresses (host endpoints without interfaceName follow them)."""
    return ("addresses", "", {iface: draw(st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True))
                              for iface in ("eth0", "eth1", "cali1") if draw(st.booleans())})


@st.composite
def tunnels_op(draw):
    """The pools' encapsulations and the nodes' addresses (host endpoint policy lets tunnels through)."""
    return ("tunnels", "", {"vxlan": draw(st.booleans()), "ipip": draw(st.booleans()),
                            "hosts": draw(st.lists(st.sampled_from(["192.168.0.1", "192.168.0.2", "10.0.0.1"]),
                                                   max_size=3, unique=True))})


@st.composite
def to_host_op(draw):
    """FelixConfiguration's defaultEndpointToHostAction (an input of the calculator, not a policy record)."""
    return ("to_host", "", draw(st.sampled_from(ENDPOINT_TO_HOST_ACTIONS)))


# Host endpoints of this node and GlobalNetworkPolicies (of every kind) most of all.
HOST_OPS = st.lists(st.one_of(host_op(here=True), host_op(), policy_op(global_only=True),
                              policy_op(global_only=True), profile_op(), tier_op(), endpoint_op(), addresses_op(),
                              tunnels_op(), to_host_op()), min_size=1, max_size=25)
# Workloads, their policy and the action on their traffic to the host, switched among them.
TO_HOST_OPS = st.lists(st.one_of(endpoint_op(), endpoint_op(), policy_op(), profile_op(), host_op(here=True),
                                 to_host_op(), to_host_op()), min_size=1, max_size=25)


PLURALS = {"endpoint": "workloadendpoints", "profile": "profiles", "tier": "tiers", "host": "hostendpoints"}


def netset_key(key: str) -> str:
    """The calculator's key of a network set (as cni_calico.policy.sync feeds it)."""
    return f"networkset:{key}" if "/" in key else f"globalnetworkset:{key}"


def etcd_key(op) -> str:
    """Where an update's resource lives in etcd."""
    kind, key, value = op
    if kind in ("policy", "netset"):
        ns, _, name = key.rpartition("/")
        plurals = ("networkpolicies", "globalnetworkpolicies") if kind == "policy" else ("networksets",
                                                                                       "globalnetworksets")
        return keys.resource(plurals[0] if ns else plurals[1], name, ns)
    ns, _, name = key.rpartition("/")
    return keys.resource(PLURALS[kind], name, ns)


def stored(op) -> dict:
    """The resource as etcd holds it (without the test's own markers)."""
    return {k: v for k, v in op[2].items() if not k.startswith("_")}


class World:
    """The same updates, kept as plain records for the from-scratch render."""

    def __init__(self) -> None:
        self.endpoints: dict[str, model.Endpoint] = {}
        self.profiles: dict[str, model.Profile] = {}
        self.policies: dict[str, model.Policy] = {}
        self.tiers: dict[str, model.Tier] = {}
        self.failsafe = hostep.Failsafe()
        self.addresses: dict[str, frozenset[str]] = {}
        self.tunnels = hostep.Tunnels()
        self.to_host = DEFAULT_ENDPOINT_TO_HOST

    def apply(self, op, calc: PolicyCalculator | None = None) -> None:
        """Records an update (and feeds it to `calc`, when given)."""
        kind, key, value = op
        if kind == "endpoint":
            ep = None if value is None else model.endpoint_from_resource(value)
            self._put(self.endpoints, key, ep)
            if calc is not None:
                calc.update_endpoint(key, ep)
        elif kind == "profile":
            prof = None if value is None else model.profile_from_resource(value)
            self._put(self.profiles, key, prof)
            if calc is not None:
                calc.update_profile(key, prof)
        elif kind == "netset":
            netset = None if value is None else model.network_set_from_resource(value, namespaced="/" in key)
            self._put(self.endpoints, netset_key(key), netset)
            if calc is not None:
                calc.update_endpoint(netset_key(key), netset)
        elif kind == "tunnels":
            self.tunnels = hostep.Tunnels(value["vxlan"], value["ipip"], tuple(value["hosts"]))
            if calc is not None:
                calc.set_tunnels(self.tunnels)
        elif kind == "to_host":
            self.to_host = value
            if calc is not None:
                calc.set_endpoint_to_host(value)
        elif kind == "addresses":
            self.addresses = {iface: frozenset(held) for iface, held in value.items()}
            if calc is not None:
                calc.set_interface_addresses(self.addresses)
        elif kind == "host":
            host = None if value is None else model.host_endpoint_from_resource(value)
            self._put(self.endpoints, f"hostendpoint:{key}", host)
            if calc is not None:
                calc.update_endpoint(f"hostendpoint:{key}", host)
        elif kind == "tier":
            tier = None if value is None else model.tier_from_resource(value)
            self._put(self.tiers, key, tier)
            if calc is not None:
                calc.update_tier(key, tier)
        else:
            pol = None if value is None else model.policy_from_resource(value, namespaced=value["_namespaced"])
            self._put(self.policies, key, pol)
            if calc is not None:
                calc.update_policy(key, pol)

    @staticmethod
    def _put(table: dict, key: str, value) -> None:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    def render(self) -> dict:
        eps = model.with_effective_labels(list(self.endpoints.values()), self.profiles)
        local = render.local_endpoints(eps, NODE)
        return render.render_all(local, eps, list(self.policies.values()), self.profiles, tiers=self.tiers,
                                 hosts=hostep.local_host_endpoints(eps, NODE, self.addresses),
                                 failsafe=self.failsafe, tunnels=self.tunnels, to_host=self.to_host)


def apply_changes(state: dict, changes: Changes) -> None:
    """What the dataplane does with the changes, on a plain model of the kernel."""
    chains, sets = state.setdefault("chains", {}), state.setdefault("sets", {})
    for name, ipset in changes.created.items():
        sets[name] = (ipset.kind, set(ipset.members))
    for name, members in changes.added.items():
        assert not members & sets[name][1], f"{name}: adding members already there"
        sets[name][1].update(members)
    for name, rules in changes.chains.items():
        if rules is None:
            del chains[name]
        else:
            chains[name] = rules
    for name, members in changes.deleted.items():
        assert members <= sets[name][1], f"{name}: deleting members not there"
        sets[name][1].difference_update(members)
    for name in changes.destroyed:
        del sets[name]


