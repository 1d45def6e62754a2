"""One node's policy as filter chains and ipsets, for each IP family (pure and deterministic: same
input, same text).

Layout (Felix's names and marks), the same in iptables' and ip6tables' filter table::

    FORWARD ── first rule ──> cali-FORWARD
        clear the mark bits 0x30000
        -i cali+ -> cali-from-wl-dispatch: -i <iface> -g cali-fw-<iface> ... ; unknown interface: DROP
        -o cali+ -> cali-to-wl-dispatch:   -o <iface> -g cali-tw-<iface> ... ; unknown interface: DROP
        accept mark (0x10000) set -> ACCEPT
    cali-fw-<iface> (what the workload sends: egress) / cali-tw-<iface> (what it receives: ingress)
        ESTABLISHED,RELATED -> ACCEPT; INVALID -> DROP; clear the marks
        each policy selecting the endpoint in that direction, in order, while the pass mark is clear:
            -> cali-po-/cali-pi-<policy>; accept mark -> RETURN
        if some policy selected it: pass mark clear -> DROP
        each of its profiles: -> cali-pro-/cali-pri-<profile>; accept mark -> RETURN
        DROP
    policy and profile chains, one rule per Calico rule, or one per alternative when a side's ports
    exceed multiport's 15 or hold named ports (numeric and named ports are ORed, as in Felix):
        Allow = set accept mark, RETURN; Deny = DROP; Pass = set pass mark (0x20000), RETURN; Log = LOG
        (a Log rule's alternatives each exclude the earlier ones of their side: one LOG a packet)

IPv6 (``version=6``): both dispatch chains first ACCEPT ICMPv6 types 133-136 (router and neighbour
solicitation / advertisement), before any endpoint's policy, so that no policy can cut a workload off
from its gateway ``fe80::ecee:eeff:feee:eeee``. Each table holds only its family's rules: a rule whose
``ip_version`` (see cni_calico.policy.model) is the other family's is left out, nets are filtered to the
family, ``ICMP`` is ``-p icmp -m icmp --icmp-type`` in IPv4 and ``ICMPv6`` ``-p ipv6-icmp -m icmp6
--icmpv6-type`` in IPv6, and a ``notProtocol`` naming the other family's ICMP (always true) is dropped.

Invariants: see cni_calico.policy.layout for the names. Every chain a rule jumps to and every set a rule
names is part of the same Ruleset. Selector sets (hash:net, ``cali40s:`` family inet / ``cali60s:``
family inet6) hold the family's addresses of every endpoint of the cluster that matches and the nets of
every matching network set (see model.network_set_from_resource); net sets (hash:net) hold a rule's
CIDRs of the family. Named-port sets (hash:ip,port, ``cali40n:`` / ``cali60n:``, one per rule side's
selector, protocol and port name, see layout.named_port_set) hold ``<address>,<proto>:<port>`` of the
family's addresses of every endpoint the side's selector ("all()" without one) matches that declares
the name (model.named_port_members); a rule matches them ``dst,dst`` or ``src,src`` (negated for
notPorts), and a side with named ports and no numeric ones drops its selector match, which the sets
already filter (Felix's rule scanner). In selector and net sets, 0.0.0.0/0 or ::/0 is held as its two
halves (hash:net holds no /0), and a full-length network as its bare address (``set_member``: the
kernel prints it so).

A workload's traffic to its own node (Felix's layout, always present)::

    INPUT ── first rule ──> cali-INPUT: -i cali+ -g cali-wl-to-host
    cali-wl-to-host: [IPv6: ACCEPT ICMPv6 130-133, 135, 136]; -> cali-from-wl-dispatch (its egress
        policy: denied is dropped there, allowed comes back); then DefaultEndpointToHostAction:
        DROP, ACCEPT, or RETURN (to INPUT's later rules: the host's own)

Felix's default is Drop; Calico's start-up writes Return into FelixConfiguration ``node.<name>``.
Traffic from the node to its own workloads is not policed (host endpoints' cali-OUTPUT returns
``-o cali+`` first). A workload's chains hold its "normal" policies only: doNotTrack and preDNAT
policies police host endpoints alone (as Felix). This node's host endpoints
(cni_calico.policy.hostep) add chains in the filter, mangle and raw tables, the rest of cali-INPUT, the
OUTPUT / PREROUTING jumps and two rules of cali-FORWARD; without a host endpoint none of that exists
and OUTPUT, mangle and raw are never touched.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable

from cni_calico.policy import hostep
from cni_calico.policy.hostep import Failsafe, HostSummary, Tunnels
from cni_calico.policy.layout import (
    ACCEPT_MARK,
    FAMILIES,
    FORWARD_CHAIN,
    FROM_WL,
    IFACE_PREFIX,
    INPUT_CHAIN,
    MARKS,
    NAMED_PORT_SET,
    ND_TYPES,
    PASS_MARK,
    SELECTOR_SET,
    TO_WL,
    WL_TO_HOST,
    WL_TO_HOST_ICMPV6,
    Family,
    IpSet,
    Ruleset,
    chain_name,
    named_port_set,
    qualified,
    set_member,
    set_name,
    split_key,
)
from cni_calico.policy.model import (
    DEFAULT_TIER,
    ICMP_PROTOCOLS,
    Endpoint,
    Entity,
    Policy,
    Profile,
    Rule,
    Tier,
    named_port_members,
    named_port_protocol,
)
from cni_calico.selector import Selector, parse
from cni_calico.v3 import DEFAULT_ENDPOINT_TO_HOST

log = logging.getLogger(__name__)

MULTIPORT_SLOTS = 15  # a range takes two
_IFACE = re.compile(r"^cali[A-Za-z0-9._-]{1,11}$")

_ACCEPTED = f"-m mark --mark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}"
_PASSED = f"-m mark --mark {PASS_MARK:#x}/{PASS_MARK:#x}"
_NOT_PASSED = f"-m mark --mark 0x0/{PASS_MARK:#x}"
_ACTIONS = {
    "Allow": (f"-j MARK --set-xmark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}", f"{_ACCEPTED} -j RETURN"),
    "Pass": (f"-j MARK --set-xmark {PASS_MARK:#x}/{PASS_MARK:#x}", f"{_PASSED} -j RETURN"),
    "Deny": ("-j DROP",),
    "Log": ("-j LOG --log-prefix calico-packet: --log-level 5",),
}


def _port_chunks(ports: tuple[str, ...]) -> list[str]:
    """Comma lists that fit one multiport match each."""
    chunks: list[list[str]] = [[]]
    used = 0
    for port in ports:
        cost = 2 if ":" in port else 1
        if used + cost > MULTIPORT_SLOTS:
            chunks.append([])
            used = 0
        chunks[-1].append(port)
        used += cost
    return [",".join(c) for c in chunks if c]


def _set_members(nets: Iterable[str], family: Family) -> tuple[str, ...]:
    out = set()
    for net in nets:
        out.update(family.halves if net == family.any_net else (set_member(net),))  # hash:net has no /0
    return tuple(sorted(out))


def _spelling(protocol: str, family: Family) -> str:
    return family.icmp if protocol == "icmpv6" else protocol


class Matcher:
    """Evaluates selectors once per distinct label set (pods of one workload share theirs); one can
    serve both families' renders."""

    def __init__(self) -> None:
        self._parsed: dict[str, Selector] = {}
        self._results: dict[tuple[str, frozenset], bool] = {}

    def matches(self, selector: str, labels: frozenset) -> bool:
        if not selector:
            return False
        key = (selector, labels)
        if key not in self._results:
            sel = self._parsed.get(selector)
            if sel is None:
                sel = self._parsed[selector] = parse(selector)
            self._results[key] = sel.evaluate(dict(labels))
        return self._results[key]


class RuleRenderer:
    """One family's iptables rules for Calico rules; records the ipsets they name (selector sets by
    their selector and named-port sets by (selector, protocol, name), whose members the caller fills
    in; net sets with their members)."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self.selectors: dict[str, str] = {}  # set name -> selector
        self.named: dict[str, tuple[str, str, str]] = {}  # set name -> (selector, protocol, port name)
        self.nets: dict[str, IpSet] = {}

    def selector_set(self, selector: str) -> str:
        name = set_name("s", selector, self.family.version)
        self.selectors[name] = selector
        return name

    def nets_set(self, nets: tuple[str, ...]) -> str:
        name = set_name("n", ",".join(nets), self.family.version)
        self.nets.setdefault(name, IpSet("hash:net", _set_members(nets, self.family)))
        return name

    def named_set(self, selector: str, protocol: str, port: str) -> str:
        """The named-port set of a rule side: filtered by its positive selector (Felix's rule scanner)."""
        key = (selector or "all()", named_port_protocol(protocol), port)
        name = named_port_set(*key, self.family.version)
        self.named[name] = key
        return name

    def sets(self) -> set[str]:
        return set(self.selectors) | set(self.named) | set(self.nets)

    def _alternatives(self, side: str, entity: Entity, protocol: str) -> list[list[str]]:
        """A side's port matches, any one of which must hold: numeric ports (multiport's 15 slots at a
        time), then each named port's set."""
        out = [["-m", "multiport", f"--{side[0]}ports", chunk] for chunk in _port_chunks(entity.ports)]
        return out + [["-m", "set", "--match-set", self.named_set(entity.selector, protocol, port), f"{side},{side}"]
                      for port in entity.named_ports]

    def rule(self, rule: Rule) -> list[str]:
        """This family's rules for one Calico rule (none if it cannot match here)."""
        f = self.family
        if rule.never or rule.ip_version not in (0, f.version):
            return []
        # In the order iptables-save prints a rule (addresses, protocol, then the matches), so the
        # kernel's text of a chain is ours exactly.
        addresses, match = [], []
        if rule.protocol:
            match += ["-p", _spelling(rule.protocol, f)]
        other_icmp = ICMP_PROTOCOLS[6 if f.version == 4 else 4]
        if rule.not_protocol and rule.not_protocol not in other_icmp:  # else always true here
            match += ["!", "-p", _spelling(rule.not_protocol, f)]
        for side, flag, entity in (("src", "-s", rule.source), ("dst", "-d", rule.destination)):
            nets = tuple(n for n in entity.nets if f.holds(n))
            not_nets = tuple(n for n in entity.not_nets if f.holds(n))
            if len(nets) == 1 and nets[0] != f.any_net:
                addresses += [flag, nets[0]]
            elif nets and f.any_net not in nets:
                match += ["-m", "set", "--match-set", self.nets_set(nets), side]
            if not_nets:
                match += ["-m", "set", "!", "--match-set", self.nets_set(not_nets), side]
            if entity.selector and (entity.ports or not entity.named_ports):  # else the named-port sets filter
                match += ["-m", "set", "--match-set", self.selector_set(entity.selector), side]
            if entity.not_selector:
                match += ["-m", "set", "!", "--match-set", self.selector_set(entity.not_selector), side]
            for chunk in _port_chunks(entity.not_ports):
                match += ["-m", "multiport", "!", f"--{side[0]}ports", chunk]
            for port in entity.not_named_ports:
                match += ["-m", "set", "!", "--match-set", self.named_set(entity.selector, rule.protocol, port),
                          f"{side},{side}"]
        if rule.icmp:
            match += [f.icmp_match, f.icmp_type, rule.icmp]
        if rule.not_icmp:
            match += [f.icmp_match, "!", f.icmp_type, rule.not_icmp]
        lines = []
        sources = self._alternatives("src", rule.source, rule.protocol) or [[]]
        destinations = self._alternatives("dst", rule.destination, rule.protocol) or [[]]
        for (i, sports), (j, dports) in itertools.product(enumerate(sources), enumerate(destinations)):
            full = [*addresses, *match, *sports, *dports]
            if rule.action == "Log":  # one LOG a packet: the first alternative of each side that it matches
                full += [word for alt in [*sources[:i], *destinations[:j]] for word in [*alt[:2], "!", *alt[2:]]]
            head, *tail = _ACTIONS[rule.action]
            lines += [" ".join([*full, head]), *tail]
        return lines

    def rules_chain(self, rules: tuple[Rule, ...]) -> tuple[str, ...]:
        return tuple(line for r in rules for line in self.rule(r))


def _endpoint_chain(tiers: list[tuple[Tier, list[str]]], profiles: list[str]) -> tuple[str, ...]:
    """One endpoint's chain for one direction: its tiers in order, each with the chains of its policies
    that apply (a tier none of whose policies apply is skipped), then its profiles."""
    rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate INVALID -j DROP",
             f"-j MARK --set-xmark 0x0/{MARKS:#x}"]
    for i, (tier, chains) in enumerate(tiers):
        if i:
            rules.append(f"-j MARK --set-xmark 0x0/{PASS_MARK:#x}")  # a Pass reaches this tier only
        for chain in chains:
            rules += [f"{_NOT_PASSED} -j {chain}", f"{_ACCEPTED} -j RETURN"]
        if tier.default_action == "Deny":
            rules.append(f"{_NOT_PASSED} -j DROP")
    for chain in profiles:
        rules += [f"-j {chain}", f"{_ACCEPTED} -j RETURN"]
    return (*rules, "-j DROP")


DIRECTIONS = (("egress", "o", "fw", "-i"), ("ingress", "i", "tw", "-o"))  # (rules, chain letter, own chain, flag)


_POLICY_TABLE = {"normal": "filter", "prednat": "mangle", "untracked": "raw"}


def policy_chain(policy: Policy, letter: str) -> str:
    """The Ruleset key of a policy's chain: in the table its kind polices in (normal: filter)."""
    return qualified(_POLICY_TABLE[policy.kind], chain_name(f"cali-p{letter}-", policy.key))


def for_workloads(selecting: list[Policy]) -> list[Policy]:
    """The policies that police a workload: doNotTrack and preDNAT ones never do (Felix)."""
    return [p for p in selecting if p.kind == "normal"]


def profile_chain(profile: Profile, letter: str) -> str:
    return chain_name(f"cali-pr{letter}-", profile.name)


def own_chain(interface: str, kind: str) -> str:
    return chain_name(f"cali-{kind}-", interface)


DEFAULT_TIERS = {DEFAULT_TIER: Tier(DEFAULT_TIER)}


def tiered(selecting: list[Policy], tiers: dict[str, Tier]) -> list[tuple[Tier, list[Policy]]]:
    """The selecting policies (in order) grouped by tier, tiers in order. The default tier is there
    even when the datastore has no Tier record; a policy of a tier that does not exist applies to
    nothing (as Felix)."""
    tiers = {DEFAULT_TIER: DEFAULT_TIERS[DEFAULT_TIER], **tiers}
    groups: dict[str, list[Policy]] = {}
    for policy in selecting:
        if policy.tier in tiers:
            groups.setdefault(policy.tier, []).append(policy)
    return [(tiers[name], groups[name]) for name in sorted(groups, key=lambda n: tiers[n].sort_key())]


def workload_chains(interface: str, selecting: list[Policy], present: list[Profile],
                    tiers: dict[str, Tier] | None = None) -> dict[str, tuple[str, ...]]:
    """A local endpoint's own chains (cali-fw-/cali-tw-), given the policies selecting it (in order),
    its profiles that exist (in order) and the tiers; the chains they jump to are rendered by the
    caller (`body_chains`)."""
    out = {}
    groups = tiered(selecting, tiers or {})
    for direction, letter, kind, _ in DIRECTIONS:
        by_tier = [(tier, [split_key(policy_chain(p, letter))[1] for p in pols if getattr(p, direction) is not None])
                   for tier, pols in groups]
        out[own_chain(interface, kind)] = _endpoint_chain([(t, c) for t, c in by_tier if c],
                                                          [profile_chain(p, letter) for p in present])
    return out


def body_chains(selecting: list[Policy], present: list[Profile],
                tiers: dict[str, Tier] | None = None) -> dict[str, tuple[str, Policy | Profile]]:
    """The policy and profile chains a local endpoint's chains jump to: name -> (direction, source)."""
    out: dict[str, tuple[str, Policy | Profile]] = {}
    applying = [p for _, pols in tiered(selecting, tiers or {}) for p in pols]
    for direction, letter, _, _ in DIRECTIONS:
        for policy in applying:
            if getattr(policy, direction) is not None:
                out[policy_chain(policy, letter)] = (direction, policy)
        for profile in present:
            out[profile_chain(profile, letter)] = (direction, profile)
    return out


def host_endpoint_chains(name: str, selecting: list[Policy], present: list[Profile],
                         tiers: dict[str, Tier] | None = None
                         ) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, Policy | Profile]]]:
    """A local host endpoint's own chains (cni_calico.policy.hostep), and the policy and profile chains
    they jump to (as `body_chains`), given every policy selecting it (in order) and its profiles."""
    lists = {kind: tiered(policies, tiers or {}) for kind, policies in hostep.split(selecting).items()}
    own = hostep.own_chains(name, lists, present, policy_chain, profile_chain)
    sources: dict[str, tuple[str, Policy | Profile]] = {}  # bare chain name -> what it renders
    for direction, letter, _, _ in DIRECTIONS:
        for policy in [p for groups in lists.values() for _, policies in groups for p in policies]:
            if getattr(policy, direction) is not None:
                sources[split_key(policy_chain(policy, letter))[1]] = (direction, policy)
        for profile in present:
            sources[profile_chain(profile, letter)] = (direction, profile)
    bodies: dict[str, tuple[str, Policy | Profile]] = {}
    for key, rules in own.items():  # each jump target, in the table of the chain that jumps
        table = split_key(key)[0]
        for target in (rule.rsplit("-j ", 1)[-1] for rule in rules):
            if target in sources:
                bodies[qualified(table, target)] = sources[target]
    return own, bodies


def host_summary(owns: dict[str, dict[str, tuple[str, ...]]]) -> HostSummary | None:
    """What the fixed chains need of the local host endpoints' own chains (None: there are none)."""
    if not owns:
        return None
    return HostSummary(tuple(sorted(owns)),
                       tuple(n for n in sorted(owns) if qualified("mangle", chain_name("cali-fh-", n)) in owns[n]),
                       tuple(n for n in sorted(owns) if qualified("raw", chain_name("cali-fh-", n)) in owns[n]))


_TO_HOST_TARGETS = {"Drop": "DROP", "Accept": "ACCEPT", "Return": "RETURN"}


def workload_to_host_chain(version: int, to_host: str = DEFAULT_ENDPOINT_TO_HOST) -> tuple[str, ...]:
    """cali-wl-to-host (Felix's): what a workload sends its own host meets the workload's egress policy
    (cali-from-wl-dispatch: a denied packet is dropped there, an allowed one comes back with the accept
    mark), then DefaultEndpointToHostAction ``to_host``: Drop, Accept, or Return (to INPUT's later rules,
    the host's own). IPv6: multicast listener and neighbour discovery messages are accepted first."""
    family = FAMILIES[version]
    icmp = [f"-p {family.icmp} {family.icmp_match} {family.icmp_type} {t} -j ACCEPT" for t in WL_TO_HOST_ICMPV6
            if version == 6]
    return (*icmp, f"-j {FROM_WL}",
            f'-m comment --comment "Configured DefaultEndpointToHostAction" -j {_TO_HOST_TARGETS[to_host]}')


def fixed_chains(interfaces: list[str], version: int, hosts: HostSummary | None = None,
                 failsafe: Failsafe | None = None, tunnels: Tunnels | None = None,
                 to_host: str = DEFAULT_ENDPOINT_TO_HOST) -> dict[str, tuple[str, ...]]:
    """The dispatch chains (by local interface, sorted), cali-FORWARD, cali-INPUT and cali-wl-to-host
    (``to_host``: DefaultEndpointToHostAction); with host endpoints, their fixed chains too
    (cni_calico.policy.hostep, whose cali-INPUT has the workloads' rule too)."""
    family = FAMILIES[version]
    nd = [f"-p {family.icmp} {family.icmp_match} {family.icmp_type} {t} -j ACCEPT" for t in ND_TYPES
          if version == 6]
    dispatch = {flag: [f"{flag} {i} -g {own_chain(i, kind)}" for i in interfaces] for _, _, kind, flag in DIRECTIONS}
    workloads = (f"-i {IFACE_PREFIX}+ -j {FROM_WL}", f"-o {IFACE_PREFIX}+ -j {TO_WL}")
    out = {
        FROM_WL: (*nd, *dispatch["-i"], "-j DROP"),
        TO_WL: (*nd, *dispatch["-o"], "-j DROP"),
        FORWARD_CHAIN: (f"-j MARK --set-xmark 0x0/{MARKS:#x}", *workloads, f"{_ACCEPTED} -j ACCEPT"),
        INPUT_CHAIN: (hostep.TO_HOST_RULE,),
        WL_TO_HOST: workload_to_host_chain(version, to_host),
    }
    if hosts is not None:
        out[FORWARD_CHAIN] = hostep.forward_chain(workloads)
        out.update(hostep.fixed_chains(hosts, failsafe or Failsafe(), version, tunnels))
    return out


def present_profiles(ep: Endpoint, profiles: dict[str, Profile]) -> list[Profile]:
    """The endpoint's profiles that exist, in its order, each once."""
    return [profiles[name] for name in dict.fromkeys(ep.profiles) if name in profiles]


def dispatchable(ep: Endpoint, node: str) -> bool:
    """Whether a workload endpoint of this node can be policed (its interface is a cali interface)."""
    if ep.node != node or ep.host:
        return False
    if not _IFACE.match(ep.interface):
        log.warning("endpoint %s: interface %r is not a cali interface; not policed", ep.key, ep.interface)
        return False
    return True


def local_endpoints(endpoints: list[Endpoint], node: str) -> list[Endpoint]:
    """This node's endpoints that can be dispatched (a ``cali`` interface), one per interface: of two
    sharing one, the first by key."""
    out: dict[str, Endpoint] = {}
    for ep in sorted(endpoints, key=lambda e: e.key):
        if not dispatchable(ep, node):
            continue
        if ep.interface in out:
            log.warning("endpoints %s and %s share interface %s; using the first", out[ep.interface].key, ep.key,
                        ep.interface)
        else:
            out[ep.interface] = ep
    return [out[i] for i in sorted(out)]


def render_all(local: list[Endpoint], endpoints: list[Endpoint], policies: list[Policy],
               profiles: dict[str, Profile], versions: Iterable[int] = tuple(FAMILIES),
               tiers: dict[str, Tier] | None = None, hosts: dict[str, Endpoint] | None = None,
               failsafe: Failsafe | None = None, tunnels: Tunnels | None = None,
               to_host: str = DEFAULT_ENDPOINT_TO_HOST) -> dict[int, Ruleset]:
    """The rulesets of ``versions`` (selectors evaluated once for all)."""
    matcher = Matcher()
    return {v: render(local, endpoints, policies, profiles, v, matcher, tiers, hosts, failsafe, tunnels, to_host)
            for v in versions}


def render(local: list[Endpoint], endpoints: list[Endpoint], policies: list[Policy],
           profiles: dict[str, Profile], version: int = 4, matcher: Matcher | None = None,
           tiers: dict[str, Tier] | None = None, hosts: dict[str, Endpoint] | None = None,
           failsafe: Failsafe | None = None, tunnels: Tunnels | None = None,
           to_host: str = DEFAULT_ENDPOINT_TO_HOST) -> Ruleset:
    """``version``'s ruleset, from scratch. ``local``: this node's workload endpoints (see
    local_endpoints); ``hosts``: its host endpoints by chain name (hostep.local_host_endpoints);
    ``to_host``: DefaultEndpointToHostAction (Drop, Accept or Return);
    ``endpoints``: the whole cluster's; all with effective labels. Only the policies and profiles
    some local endpoint uses are rendered. (cni_calico.policy.calc keeps the same result up to date
    change by change; this is its reference.)"""
    family = FAMILIES[version]
    matcher = matcher or Matcher()
    rr = RuleRenderer(family)
    ordered = sorted((p for p in policies if p.selector), key=Policy.sort_key)
    chains: dict[str, tuple[str, ...]] = {}
    selecting_by_labels: dict[frozenset, list[Policy]] = {}
    for ep in local:
        labels = frozenset(ep.labels.items())
        if labels not in selecting_by_labels:
            selecting_by_labels[labels] = for_workloads([p for p in ordered if matcher.matches(p.selector, labels)])
        selecting = selecting_by_labels[labels]
        present = present_profiles(ep, profiles)
        chains.update(workload_chains(ep.interface, selecting, present, tiers))
        for name, (direction, source) in body_chains(selecting, present, tiers).items():
            if name not in chains:
                chains[name] = rr.rules_chain(getattr(source, direction))
    owns = {}
    for name, ep in (hosts or {}).items():
        labels = frozenset(ep.labels.items())
        selecting = [p for p in ordered if matcher.matches(p.selector, labels)]
        owns[name], bodies = host_endpoint_chains(name, selecting, present_profiles(ep, profiles), tiers)
        chains.update(owns[name])
        for key, (direction, source) in bodies.items():
            if key not in chains:
                chains[key] = rr.rules_chain(getattr(source, direction))
    summary = host_summary(owns)
    chains.update(fixed_chains([ep.interface for ep in local], version, summary, failsafe, tunnels, to_host))
    groups: dict[frozenset, list[Endpoint]] = {}
    for ep in endpoints:
        groups.setdefault(frozenset(ep.labels.items()), []).append(ep)
    ipsets = {**rr.nets, **(hostep.tunnel_set(tunnels, version) if summary is not None else {})}
    for name, selector in rr.selectors.items():
        members = {a for labels, eps in groups.items() if matcher.matches(selector, labels)
                   for ep in eps for a in ep.addresses if family.holds(a)}
        ipsets[name] = IpSet(SELECTOR_SET, tuple(sorted(members)))
    for name, (selector, protocol, port) in rr.named.items():
        members = {m for labels, eps in groups.items() if matcher.matches(selector, labels)
                   for ep in eps for m in named_port_members(ep, protocol, port, version)}
        ipsets[name] = IpSet(NAMED_PORT_SET, tuple(sorted(members)))
    return Ruleset(dict(sorted(chains.items())), dict(sorted(ipsets.items())), version)
