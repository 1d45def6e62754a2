"""One node's policy as iptables filter chains and ipsets (pure and deterministic: same input, same text).

Layout (Felix's names and marks)::

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
    policy and profile chains, one rule (or a few, when ports exceed multiport's 15) per Calico rule:
        Allow = set accept mark, RETURN; Deny = DROP; Pass = set pass mark (0x20000), RETURN; Log = LOG

Invariants: every chain is named ``cali-...`` in at most 28 characters and every ipset ``cali40...`` in
at most 31 (longer names are hashed); every chain a rule jumps to and every set a rule names is part of
the same Ruleset. Selector sets (hash:ip) hold the addresses of every endpoint of the cluster that
matches; net sets (hash:net) hold a rule's CIDRs (0.0.0.0/0 as its two halves).

Not policed (Calico's DefaultEndpointToHostAction=ACCEPT): traffic between a workload and its own node
(INPUT, OUTPUT) is left to the host's own rules; we never touch INPUT or OUTPUT.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cni_calico.policy.model import Endpoint, Policy, Profile, Rule
from cni_calico.selector import Selector, parse

log = logging.getLogger(__name__)

ACCEPT_MARK = 0x10000
PASS_MARK = 0x20000
MARKS = ACCEPT_MARK | PASS_MARK
FORWARD_CHAIN = "cali-FORWARD"
FROM_WL = "cali-from-wl-dispatch"
TO_WL = "cali-to-wl-dispatch"
CHAIN_PREFIX = "cali-"
SET_PREFIX = "cali40"
IFACE_PREFIX = "cali"
MAX_CHAIN = 28
MAX_SET = 31
MULTIPORT_SLOTS = 15  # a range takes two
JUMP = f'-m comment --comment "cali:calico-node policy" -j {FORWARD_CHAIN}'
_READABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
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


@dataclass(frozen=True)
class IpSet:
    kind: str  # "hash:ip" or "hash:net"
    members: tuple[str, ...]


@dataclass
class Ruleset:
    chains: dict[str, tuple[str, ...]]  # chain -> its rules, each the text after "-A <chain> "
    ipsets: dict[str, IpSet]

    def text(self) -> str:
        """The whole ruleset as one iptables-restore --noflush transaction (jump inserted at the top)."""
        return restore_text(self.chains, jump=[f"-I FORWARD 1 {JUMP}"])


def _digest(text: str, length: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode()[:length]


def chain_name(prefix: str, name: str) -> str:
    """``prefix + name`` if it is short and plain enough, else ``prefix + "_" + hash`` (28 chars)."""
    if len(prefix) + len(name) <= MAX_CHAIN and _READABLE.match(name):
        return prefix + name
    return prefix + "_" + _digest(name, MAX_CHAIN - len(prefix) - 1)


def set_name(kind: str, key: str) -> str:
    """``cali40<kind>:<hash>``, 31 chars: kind "s" (selector, hash:ip), "n" (nets, hash:net), "t" (temp)."""
    prefix = f"{SET_PREFIX}{kind}:"
    return prefix + _digest(kind + key, MAX_SET - len(prefix))


def restore_text(chains: dict[str, tuple[str, ...]], remove: Iterable[str] = (), jump: Iterable[str] = ()) -> str:
    """An iptables-restore --noflush transaction for the filter table: declare (= flush) every chain
    written or removed, write ``chains``, apply the ``jump`` lines, then delete the ``remove`` chains."""
    remove = sorted(set(remove) - set(chains))
    lines = ["*filter"] + [f":{c} - [0:0]" for c in [*chains, *remove]] + list(jump)
    for chain, rules in chains.items():
        lines += [f"-A {chain} {rule}" for rule in rules]
    lines += [f"-X {c}" for c in remove] + ["COMMIT", ""]
    return "\n".join(lines)


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


def _set_members(nets: Iterable[str]) -> tuple[str, ...]:
    out = set()
    for net in nets:
        out.update(("0.0.0.0/1", "128.0.0.0/1") if net == "0.0.0.0/0" else (net,))  # hash:net has no /0
    return tuple(sorted(out))


class _Renderer:
    """Evaluates selectors once per distinct label set (pods of one workload share theirs)."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.groups: dict[frozenset, list[Endpoint]] = {}
        for ep in endpoints:
            self.groups.setdefault(frozenset(ep.labels.items()), []).append(ep)
        self.ipsets: dict[str, IpSet] = {}
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

    def selector_set(self, selector: str) -> str:
        name = set_name("s", selector)
        if name not in self.ipsets:
            members = {a for labels, eps in self.groups.items() if self.matches(selector, labels)
                       for ep in eps for a in ep.addresses}
            self.ipsets[name] = IpSet("hash:ip", tuple(sorted(members)))
        return name

    def nets_set(self, nets: tuple[str, ...]) -> str:
        name = set_name("n", ",".join(nets))
        self.ipsets.setdefault(name, IpSet("hash:net", _set_members(nets)))
        return name

    def rule(self, rule: Rule) -> list[str]:
        """The iptables rules for one Calico rule (none if it cannot match)."""
        if rule.never:
            return []
        match = []
        if rule.protocol:
            match += ["-p", rule.protocol]
        if rule.not_protocol:
            match += ["!", "-p", rule.not_protocol]
        for side, flag, entity in (("src", "-s", rule.source), ("dst", "-d", rule.destination)):
            if len(entity.nets) == 1 and entity.nets[0] != "0.0.0.0/0":
                match += [flag, entity.nets[0]]
            elif entity.nets and "0.0.0.0/0" not in entity.nets:
                match += ["-m", "set", "--match-set", self.nets_set(entity.nets), side]
            if entity.not_nets:
                match += ["-m", "set", "!", "--match-set", self.nets_set(entity.not_nets), side]
            if entity.selector:
                match += ["-m", "set", "--match-set", self.selector_set(entity.selector), side]
            if entity.not_selector:
                match += ["-m", "set", "!", "--match-set", self.selector_set(entity.not_selector), side]
            for chunk in _port_chunks(entity.not_ports):
                match += ["-m", "multiport", "!", f"--{side[0]}ports", chunk]
        if rule.icmp:
            match += ["-m", "icmp", "--icmp-type", rule.icmp]
        if rule.not_icmp:
            match += ["-m", "icmp", "!", "--icmp-type", rule.not_icmp]
        lines = []
        for sports, dports in itertools.product(_port_chunks(rule.source.ports) or [""],
                                                _port_chunks(rule.destination.ports) or [""]):
            full = list(match)
            if sports:
                full += ["-m", "multiport", "--sports", sports]
            if dports:
                full += ["-m", "multiport", "--dports", dports]
            head, *tail = _ACTIONS[rule.action]
            lines += [" ".join([*full, head]), *tail]
        return lines

    def rules_chain(self, rules: tuple[Rule, ...]) -> tuple[str, ...]:
        return tuple(line for r in rules for line in self.rule(r))


def _endpoint_chain(policies: list[str], profiles: list[str]) -> tuple[str, ...]:
    rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate INVALID -j DROP",
             f"-j MARK --set-xmark 0x0/{MARKS:#x}"]
    for chain in policies:
        rules += [f"{_NOT_PASSED} -j {chain}", f"{_ACCEPTED} -j RETURN"]
    if policies:
        rules.append(f"{_NOT_PASSED} -j DROP")
    for chain in profiles:
        rules += [f"-j {chain}", f"{_ACCEPTED} -j RETURN"]
    return (*rules, "-j DROP")


def local_endpoints(endpoints: list[Endpoint], node: str) -> list[Endpoint]:
    """This node's endpoints that can be dispatched (a ``cali`` interface), one per interface."""
    out: dict[str, Endpoint] = {}
    for ep in sorted(endpoints, key=lambda e: e.key):
        if ep.node != node:
            continue
        if not _IFACE.match(ep.interface):
            log.warning("endpoint %s: interface %r is not a cali interface; not policed", ep.key, ep.interface)
        elif ep.interface in out:
            log.warning("endpoints %s and %s share interface %s; using the first", out[ep.interface].key, ep.key,
                        ep.interface)
        else:
            out[ep.interface] = ep
    return [out[i] for i in sorted(out)]


def render(local: list[Endpoint], endpoints: list[Endpoint], policies: list[Policy],
           profiles: dict[str, Profile]) -> Ruleset:
    """``local``: this node's endpoints (see local_endpoints); ``endpoints``: the whole cluster's; both
    with effective labels. Only the policies and profiles some local endpoint uses are rendered."""
    r = _Renderer(sorted(endpoints, key=lambda e: e.key))
    ordered = sorted((p for p in policies if p.selector), key=Policy.sort_key)
    chains: dict[str, tuple[str, ...]] = {}
    body: dict[str, tuple[str, ...]] = {}  # policy and profile chains, rendered once each
    dispatch_from, dispatch_to = [], []
    selecting_by_labels: dict[frozenset, list[Policy]] = {}
    for ep in local:
        labels = frozenset(ep.labels.items())
        if labels not in selecting_by_labels:
            selecting_by_labels[labels] = [p for p in ordered if r.matches(p.selector, labels)]
        selecting = selecting_by_labels[labels]
        present = [profiles[name] for name in dict.fromkeys(ep.profiles) if name in profiles]
        for direction, dispatch, flag in (("egress", dispatch_from, "-i"), ("ingress", dispatch_to, "-o")):
            letter = "o" if direction == "egress" else "i"
            pol_chains, prof_chains = [], []
            for policy in selecting:
                rules = getattr(policy, direction)
                if rules is not None:
                    name = chain_name(f"cali-p{letter}-", policy.key)
                    pol_chains.append(name)
                    if name not in body:
                        body[name] = r.rules_chain(rules)
            for profile in present:
                name = chain_name(f"cali-pr{letter}-", profile.name)
                prof_chains.append(name)
                if name not in body:
                    body[name] = r.rules_chain(getattr(profile, direction))
            own = chain_name(f"cali-{'fw' if direction == 'egress' else 'tw'}-", ep.interface)
            chains[own] = _endpoint_chain(pol_chains, prof_chains)
            dispatch.append(f"{flag} {ep.interface} -g {own}")
    chains[FROM_WL] = (*dispatch_from, "-j DROP")
    chains[TO_WL] = (*dispatch_to, "-j DROP")
    chains[FORWARD_CHAIN] = (f"-j MARK --set-xmark 0x0/{MARKS:#x}", f"-i {IFACE_PREFIX}+ -j {FROM_WL}",
                             f"-o {IFACE_PREFIX}+ -j {TO_WL}", f"{_ACCEPTED} -j ACCEPT")
    chains.update(sorted(body.items()))
    return Ruleset(dict(sorted(chains.items())), dict(sorted(r.ipsets.items())))
