"""Host endpoints as Felix polices them: the chains that apply policy to traffic to, from and through
a host's own interfaces, and the failsafe ports no policy can close (pure, no I/O).

A HostEndpoint of this node names an interface (``interfaceName``; ``*``: every interface, whose chains
carry Felix's name ``any-interface-at-all``), or, without a name, polices each interface that holds one
of its ``expectedIPs`` (the node's interface addresses are an input: ``addresses``); of several host
endpoints for one interface the first by name wins (Felix's rule). Felix sorts each policy selecting it
into one list (``Policy.kind``): doNotTrack ones police it in the raw table, before conntrack (an Allow
also un-tracks the packet: NOTRACK, then ACCEPT); preDNAT ones police its ingress in the mangle table,
before DNAT; the others ("normal") police traffic that ends or starts in the host itself in the filter
table, and those with ``applyOnForward`` also traffic forwarded through the interface. In the raw and
mangle tables a tier's end is Pass (normal policy still follows in the filter table); there are no
profiles and no final drop. A host endpoint with no profile and no policy drops all its traffic to and
from the host but the failsafe ports; forwarded traffic is allowed when no applyOnForward policy selects
it. Traffic between the host and its own workloads (``cali+``) is never policed here (their own chains do
that; forwarded workload traffic meets the ``*`` endpoint's forward and preDNAT policy, as in Felix).
doNotTrack policies do not apply to ``*`` (as Felix: ignored).

Layout (Felix's names), present only while this node has a host endpoint (cali-INPUT's first rules
always are: cni_calico.policy.render)::

    filter INPUT ─ first rule ─> cali-INPUT:  -i cali+ -g cali-wl-to-host (the workload's egress
        policy, then DefaultEndpointToHostAction); accepted in raw/mangle -> ACCEPT;
        [IPv6: neighbour discovery ACCEPT]; clear marks; -> cali-from-host-endpoint; accepted -> ACCEPT
    filter OUTPUT ─> cali-OUTPUT: accepted -> ACCEPT; -o cali+ RETURN; [IPv6 ND]; clear marks;
        not DNAT -> cali-to-host-endpoint; accepted -> ACCEPT
    cali-FORWARD (cni_calico.policy.render) adds cali-from-hep-forward first, cali-to-hep-forward after
        the workloads' dispatch, and at its end marks what goes on as forwarded (not the host's)
    cali-from-host-endpoint: -i <if> -g cali-fh-<if> ... [*: -g cali-fh-any-interface-at-all]
    cali-to-host-endpoint:   -o <if> -g cali-th-<if> ...; cali-from/to-hep-forward: cali-fhfw-/thfw-
    cali-fh-<if> / cali-th-<if>: conntrack; -j cali-failsafe-in / -out; tiers; profiles; DROP
    cali-fhfw-<if> / cali-thfw-<if>: conntrack; tiers of applyOnForward policies (none: accept)
    mangle PREROUTING ─> cali-PREROUTING: ESTABLISHED,RELATED ACCEPT; accepted ACCEPT;
        -> cali-from-host-endpoint (interfaces with preDNAT policy) -> cali-fh-<if>; accepted ACCEPT
    mangle POSTROUTING ─> cali-POSTROUTING: accepted (forwarded) RETURN; clear marks; DNATed (host
        traffic whose interface was only known after filter OUTPUT) -> cali-to-host-endpoint ->
        cali-th-<if>: the normal egress policy again, with the policy and profile chains in mangle too
    raw PREROUTING / OUTPUT ─> cali-PREROUTING / cali-OUTPUT: clear marks; [-i cali+ RETURN];
        -> cali-from/to-host-endpoint (interfaces with doNotTrack policy); accepted -> ACCEPT
    cali-failsafe-in / -out (filter, mangle, raw): ACCEPT the failsafe protocol/ports (raw: the
        other list's source ports too, so replies are not caught by a doNotTrack policy)

Encapsulation (Felix's rules, IPv4): while a pool uses VXLAN (or IPIP), cali-INPUT accepts VXLAN (UDP
4789; IPIP: protocol 4) from any node's address to a local one, and cali-OUTPUT the same from a local
address to any node's, before host endpoint policy: a node's pods stay reachable through its tunnel
whatever the policy of its uplink. The nodes' addresses are the hash:net set ``tunnel_set`` (``Tunnels``).

IPv6: cali-INPUT and cali-OUTPUT accept neighbour discovery (ICMPv6 133-136) before any host endpoint
policy, so that no policy can cut the node off from its neighbours while failsafe ports stay open
(Felix leaves that to the policy: a deliberate difference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cni_calico.policy.layout import (
    ACCEPT_MARK,
    FAMILIES,
    IFACE_PREFIX,
    INPUT_CHAIN,
    MARKS,
    ND_TYPES,
    OUTPUT_CHAIN,
    PASS_MARK,
    POSTROUTING_CHAIN,
    PREROUTING_CHAIN,
    WL_TO_HOST,
    IpSet,
    chain_name,
    qualified,
    set_member,
    set_name,
    split_key,
)
from cni_calico.policy.model import Endpoint, Policy, Profile, Tier
from cni_calico.v3 import FAILSAFE_INBOUND, FAILSAFE_OUTBOUND, ProtoPort

log = logging.getLogger(__name__)

ALL_INTERFACES = "any-interface-at-all"  # Felix's name for the "*" host endpoint's chains
FROM_HEP = "cali-from-host-endpoint"
TO_HEP = "cali-to-host-endpoint"
FROM_HEP_FW = "cali-from-hep-forward"
TO_HEP_FW = "cali-to-hep-forward"
FAILSAFE_IN = "cali-failsafe-in"
FAILSAFE_OUT = "cali-failsafe-out"
TO_HOST_RULE = f"-i {IFACE_PREFIX}+ -g {WL_TO_HOST}"  # cali-INPUT's: workloads' traffic (cni_calico.policy.render)

_ACCEPTED = f"-m mark --mark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}"
_NOT_PASSED = f"-m mark --mark 0x0/{PASS_MARK:#x}"
_CLEAR = f"-j MARK --set-xmark 0x0/{MARKS:#x}"
VXLAN_PORT = 4789  # cni_calico.node.tunnels' (Felix's default)
_CONNTRACK = ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-m conntrack --ctstate INVALID -j DROP")
# mangle POSTROUTING allows by RETURN (the mangle table is for changing packets that go on): marked
_CONNTRACK_RETURN = (
    f"-m conntrack --ctstate RELATED,ESTABLISHED -j MARK --set-xmark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}",
    "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN", "-m conntrack --ctstate INVALID -j DROP")


# --- failsafe ports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failsafe:
    """The failsafe ports (FelixConfiguration failsafeInboundHostPorts / failsafeOutboundHostPorts)."""

    inbound: tuple[ProtoPort, ...] = FAILSAFE_INBOUND
    outbound: tuple[ProtoPort, ...] = FAILSAFE_OUTBOUND


def failsafe_chains(failsafe: Failsafe, version: int, table: str) -> dict[str, tuple[str, ...]]:
    """cali-failsafe-in / -out of one table (Felix's failsafeInChain / failsafeOutChain)."""

    def rules(entries: tuple[ProtoPort, ...], port_flag: str, net_flag: str) -> list[str]:
        out = []
        for e in entries:
            if e.net and (":" in e.net) != (version == 6):
                continue  # the other family's
            net = f"{net_flag} {e.net} " if e.net else ""
            out.append(f"{net}-p {e.protocol} -m multiport {port_flag} {e.port} -j ACCEPT")
        return out

    inbound = rules(failsafe.inbound, "--dports", "-s")
    outbound = rules(failsafe.outbound, "--dports", "-d")
    if table == "raw":  # before conntrack: the replies of the other direction's failsafe connections
        inbound += rules(failsafe.outbound, "--sports", "-s")
        outbound += rules(failsafe.inbound, "--sports", "-d")
    return {qualified(table, FAILSAFE_IN): tuple(inbound), qualified(table, FAILSAFE_OUT): tuple(outbound)}


# --- encapsulation between nodes ------------------------------------------------------------------


@dataclass(frozen=True)
class Tunnels:
    """Which encapsulations this cluster's pools use, and every node's IPv4 address."""

    vxlan: bool = False
    ipip: bool = False
    hosts: tuple[str, ...] = ()


def tunnel_set(tunnels: Tunnels | None, version: int) -> dict[str, IpSet]:
    """The nodes' addresses as the set the encapsulation rules name (IPv4, with some encapsulation)."""
    if tunnels is None or version != 4 or not (tunnels.vxlan or tunnels.ipip):
        return {}
    members = tuple(sorted({set_member(h) for h in tunnels.hosts if ":" not in h}))
    return {set_name("h", "all-hosts", version): IpSet("hash:net", members)}


def _tunnel_rules(tunnels: Tunnels | None, version: int, inbound: bool) -> tuple[str, ...]:
    """Felix's: encapsulated traffic between nodes passes host endpoint policy (IPv4)."""
    sets = tunnel_set(tunnels, version)
    if not sets or tunnels is None:
        return ()
    name = next(iter(sets))
    peer = f"-m set --match-set {name} src -m addrtype --dst-type LOCAL" if inbound else (
        f"-m addrtype --src-type LOCAL -m set --match-set {name} dst")
    rules = [f"-p udp -m multiport --dports {VXLAN_PORT} {peer} -j ACCEPT"] if tunnels.vxlan else []
    return (*rules, *([f"-p 4 {peer} -j ACCEPT"] if tunnels.ipip else []))


# --- which host endpoints, which policies ----------------------------------------------------------


def iface_key(ep: Endpoint) -> str:
    """The name a host endpoint's chains carry: its interface, or Felix's for "*"."""
    return ALL_INTERFACES if ep.interface == "*" else ep.interface


def policed(ep: Endpoint, node: str) -> bool:
    """Whether a host endpoint is this node's and names an interface we can police (or, unnamed,
    expects addresses an interface may hold)."""
    if not ep.host or ep.node != node or not (ep.interface or ep.addresses):
        return False
    if ep.interface.startswith(IFACE_PREFIX):
        log.warning("host endpoint %s: interface %s is a workload's; not policed", ep.key, ep.interface)
        return False
    return True


def interfaces_of(ep: Endpoint, addresses: dict[str, frozenset[str]]) -> set[str]:
    """The chain names a policed host endpoint claims: its interface's, or (no interfaceName) those of
    the interfaces holding one of its expectedIPs (never a workload's)."""
    if ep.interface:
        return {iface_key(ep)}
    wanted = set(ep.addresses)
    return {name for name, held in addresses.items() if held & wanted and not name.startswith(IFACE_PREFIX)}


def local_host_endpoints(endpoints: list[Endpoint], node: str,
                         addresses: dict[str, frozenset[str]] | None = None) -> dict[str, Endpoint]:
    """This node's policed host endpoints by chain name (``iface_key``); of two for one interface, the
    first by name (as Felix). ``addresses``: the node's interfaces' addresses (for expectedIPs)."""
    out: dict[str, Endpoint] = {}
    for ep in sorted(endpoints, key=lambda e: e.key):
        if policed(ep, node):
            for name in interfaces_of(ep, addresses or {}):
                out.setdefault(name, ep)
    return dict(sorted(out.items()))


KINDS = ("normal", "forward", "prednat", "untracked")


def split(selecting: list[Policy]) -> dict[str, list[Policy]]:
    """The selecting policies (in order) as Felix's four lists."""
    out: dict[str, list[Policy]] = {kind: [] for kind in KINDS}
    for policy in selecting:
        out[policy.kind].append(policy)
        if policy.kind == "normal" and policy.apply_on_forward:
            out["forward"].append(policy)
    return out


@dataclass(frozen=True)
class HostSummary:
    """What the fixed chains need to know of this node's host endpoints."""

    interfaces: tuple[str, ...]  # chain names (iface_key), sorted
    prednat: tuple[str, ...]  # those with some preDNAT policy (mangle)
    untracked: tuple[str, ...]  # those with some doNotTrack policy (raw; never "*")


# --- chains ----------------------------------------------------------------------------------------


def host_chain(tiers: list[tuple[Tier, list[str]]], profiles: list[str], kind: str, failsafe: str,
               some_policy: bool = True) -> tuple[str, ...]:
    """One host endpoint chain (Felix's endpointIptablesChain): conntrack (not in raw), the failsafe
    jump, the tiers' policy chains; normal chains end with the profiles and a drop, forward chains
    with a tier's drop only (and accept when no applyOnForward policy selects the endpoint at all:
    ``some_policy`` False), raw and preDNAT ones just return. "dnat" is normal policy in mangle
    POSTROUTING (allowing by RETURN)."""
    rules = [] if kind == "untracked" else list(_CONNTRACK_RETURN if kind == "dnat" else _CONNTRACK)
    if failsafe:
        rules.append(f"-j {failsafe}")
    rules.append(_CLEAR)
    for i, (tier, chains) in enumerate(tiers):
        if i:
            rules.append(f"-j MARK --set-xmark 0x0/{PASS_MARK:#x}")
        for chain in chains:
            rules.append(f"{_NOT_PASSED} -j {chain}")
            if kind == "untracked":
                rules.append(f"{_ACCEPTED} -j NOTRACK")
            rules.append(f"{_ACCEPTED} -j RETURN")
        if kind in ("normal", "forward", "dnat") and tier.default_action == "Deny":
            rules.append(f"{_NOT_PASSED} -j DROP")
    if kind == "forward" and not some_policy:
        rules += [f"-j MARK --set-xmark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}", "-j RETURN"]
    if kind in ("normal", "dnat"):
        for chain in profiles:
            rules += [f"-j {chain}", f"{_ACCEPTED} -j RETURN"]
        rules.append("-j DROP")
    return tuple(rules)


def own_chains(name: str, lists: dict[str, list[tuple[Tier, list[Policy]]]], present: list[Profile],
               policy_chain, profile_chain) -> dict[str, tuple[str, ...]]:
    """One host endpoint's own chains (Ruleset keys), given its policies as tiered lists per kind
    (``lists``), its profiles that exist and the namers of policy and profile chains."""

    def chain_of(kind: str, direction: str, letter: str) -> list[tuple[Tier, list[str]]]:
        out = []
        for tier, policies in lists[kind]:
            chains = [split_key(policy_chain(p, letter))[1] for p in policies if getattr(p, direction) is not None]
            if chains:
                out.append((tier, chains))
        return out

    def some(kind: str, directions: tuple[str, ...] = ("ingress", "egress")) -> bool:
        return any(getattr(p, d) is not None for _, policies in lists[kind] for p in policies for d in directions)

    out: dict[str, tuple[str, ...]] = {}
    sides = (("egress", "o", "th", FAILSAFE_OUT), ("ingress", "i", "fh", FAILSAFE_IN))
    for direction, letter, prefix, failsafe in sides:
        profiles = [profile_chain(p, letter) for p in present]
        out[chain_name(f"cali-{prefix}-", name)] = host_chain(chain_of("normal", direction, letter), profiles,
                                                               "normal", failsafe)
        if direction == "egress":  # DNATed host traffic, in mangle POSTROUTING
            out[qualified("mangle", chain_name("cali-th-", name))] = host_chain(
                chain_of("normal", direction, letter), profiles, "dnat", failsafe)
        out[chain_name(f"cali-{prefix}fw-", name)] = host_chain(chain_of("forward", direction, letter), [],
                                                                 "forward", "", some("forward"))
        if some("untracked") and name != ALL_INTERFACES:
            out[qualified("raw", chain_name(f"cali-{prefix}-", name))] = host_chain(
                chain_of("untracked", direction, letter), [], "untracked", failsafe)
    if some("prednat", ("ingress",)):
        out[qualified("mangle", chain_name("cali-fh-", name))] = host_chain(
            chain_of("prednat", "ingress", "i"), [], "prednat", FAILSAFE_IN)
    return out


def _dispatch(names: tuple[str, ...], flag: str, prefix: str, skip_workloads: bool = False) -> tuple[str, ...]:
    """Goto each named interface's chain; the "*" endpoint's chain is the default for the rest (not for
    traffic to workloads where ``skip_workloads``)."""
    rules = [f"{flag} {n} -g {chain_name(prefix, n)}" for n in names if n != ALL_INTERFACES]
    if ALL_INTERFACES in names:
        rules += [f"-o {IFACE_PREFIX}+ -j RETURN"] if skip_workloads else []
        rules.append(f"-g {chain_name(prefix, ALL_INTERFACES)}")
    return tuple(rules)


def fixed_chains(summary: HostSummary, failsafe: Failsafe, version: int,
                 tunnels: Tunnels | None = None) -> dict[str, tuple[str, ...]]:
    """The chains every host endpoint shares (Ruleset keys); cali-FORWARD's part is render's. The
    encapsulation rules name `tunnel_set`'s set."""
    family = FAMILIES[version]
    nd = tuple(f"-p {family.icmp} {family.icmp_match} {family.icmp_type} {t} -j ACCEPT" for t in ND_TYPES
               if version == 6)
    names, workloads = summary.interfaces, f"{IFACE_PREFIX}+"
    out = {
        INPUT_CHAIN: (*_tunnel_rules(tunnels, version, True), TO_HOST_RULE, f"{_ACCEPTED} -j ACCEPT",
                      *nd, _CLEAR, f"-j {FROM_HEP}", f"{_ACCEPTED} -j ACCEPT"),
        OUTPUT_CHAIN: (f"{_ACCEPTED} -j ACCEPT", f"-o {workloads} -j RETURN", *_tunnel_rules(tunnels, version, False),
                       *nd, _CLEAR,
                       f"-m conntrack ! --ctstate DNAT -j {TO_HEP}", f"{_ACCEPTED} -j ACCEPT"),
        FROM_HEP: _dispatch(names, "-i", "cali-fh-"),
        TO_HEP: _dispatch(names, "-o", "cali-th-"),
        FROM_HEP_FW: _dispatch(names, "-i", "cali-fhfw-"),
        TO_HEP_FW: _dispatch(names, "-o", "cali-thfw-"),
        qualified("mangle", PREROUTING_CHAIN): ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                                                f"{_ACCEPTED} -j ACCEPT", f"-j {FROM_HEP}",
                                                f"{_ACCEPTED} -j ACCEPT"),
        qualified("mangle", FROM_HEP): _dispatch(summary.prednat, "-i", "cali-fh-"),
        qualified("mangle", POSTROUTING_CHAIN): (f"{_ACCEPTED} -j RETURN", _CLEAR,
                                                 f"-m conntrack --ctstate DNAT -j {TO_HEP}", f"{_ACCEPTED} -j RETURN"),
        qualified("mangle", TO_HEP): _dispatch(names, "-o", "cali-th-", skip_workloads=True),
        qualified("raw", PREROUTING_CHAIN): (_CLEAR, f"-i {workloads} -j RETURN", f"-j {FROM_HEP}",
                                             f"{_ACCEPTED} -j ACCEPT"),
        qualified("raw", OUTPUT_CHAIN): (_CLEAR, f"-j {TO_HEP}", f"{_ACCEPTED} -j ACCEPT"),
        qualified("raw", FROM_HEP): _dispatch(summary.untracked, "-i", "cali-fh-"),
        qualified("raw", TO_HEP): _dispatch(summary.untracked, "-o", "cali-th-"),
    }
    for table in ("filter", "mangle", "raw"):
        out.update(failsafe_chains(failsafe, version, table))
    return out


def forward_chain(workload_rules: tuple[str, ...]) -> tuple[str, ...]:
    """cali-FORWARD with host endpoints (Felix's): the accept bit survives (raw or preDNAT policy set
    it), forward policy of the incoming host endpoint first, of the outgoing one after the workloads'."""
    return (f"-j MARK --set-xmark 0x0/{PASS_MARK:#x}", f"-m mark --mark 0x0/{ACCEPT_MARK:#x} -j {FROM_HEP_FW}",
            *workload_rules, f"-j {TO_HEP_FW}", f"{_ACCEPTED} -j ACCEPT",
            # what goes on through FORWARD is forwarded: mangle POSTROUTING applies no host policy to it
            f"-j MARK --set-xmark {ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}")
