"""Policy records parsed from Calico v3 resources: Endpoint, Rule, Policy, Profile (pure, no I/O).

What holds for every record built here:

- Every selector is already scoped by namespace and canonical (see cni_calico.policy.scope): equal
  strings select equal endpoint sets, so a string can name an ipset.
- ``Endpoint.labels`` are the effective labels (see ``effective_labels``).
- Records hold both IP families: ``Endpoint.addresses`` and ``Entity.nets`` mix IPv4 and IPv6, and
  ``Rule.ip_version`` says which families' tables a rule belongs in (0: both). It is narrowed by the
  rule's ``ipVersion``, by its protocol (ICMP / 1: IPv4 only; ICMPv6 / 58: IPv6 only) and by the nets of
  each side (a side whose nets are all IPv4 keeps the rule out of the IPv6 table, and vice versa).
- Parsing never raises on bad data read from etcd: a policy whose selector does not parse selects
  nothing (``selector == ""``); a rule that cannot match anything in either table (bad selector,
  numeric ports without a port protocol, named ports with a protocol that has no ports, unknown action
  or protocol, ipVersion / protocol / nets that leave no family) is kept with ``never=True`` and is not
  rendered. Each such case is logged.
- Named ports (Felix's): an entity's ``named_ports`` / ``not_named_ports`` are port names, ORed with its
  numeric ``ports`` (and, negated, ANDed with ``not_ports``); a rule with named ports needs no protocol
  (Calico's validator: without one, every port must be named). ``Endpoint.ports`` are the (name,
  protocol, port) an endpoint declares (a WorkloadEndpoint's or HostEndpoint's ``ports`` with a name);
  ``named_port_protocol`` and ``named_port_members`` say which of them a rule's named port matches.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from sys import intern

from cni_calico.policy.layout import NAMED_PORT_PROTOCOLS, set_member
from cni_calico.policy.scope import (
    NAMESPACE_LABEL,
    NS_NAME_LABEL,
    NS_PREFIX,
    SERVICE_ACCOUNT_LABEL,
    applies_to,
    scoped_selector,
    service_accounts,
)
from cni_calico.selector import SelectorError, parse
from cni_calico.v3 import ICMP_PROTOCOL_VERSION, KNS_PREFIX, KSA_PREFIX, PORT_PROTOCOLS, RULE_ACTIONS, RULE_PROTOCOLS

log = logging.getLogger(__name__)

DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1000000.0

# The v3 schema's names (cni_calico.v3), as this parser spells them: lower case, numbers as strings.
ACTIONS = RULE_ACTIONS
PROTOCOLS = {p.lower(): p.lower() for p in RULE_PROTOCOLS}
LOWER_PORT_PROTOCOLS = frozenset(str(p).lower() for p in PORT_PROTOCOLS)
ICMP_PROTOCOLS = {v: frozenset(str(p).lower() for p, pv in ICMP_PROTOCOL_VERSION.items() if pv == v) for v in (4, 6)}


@dataclass(frozen=True)
class Entity:
    """One side of a rule (``source`` or ``destination``); empty fields match anything."""

    nets: tuple[str, ...] = ()  # normalised CIDRs, IPv4 and IPv6
    not_nets: tuple[str, ...] = ()
    selector: str = ""  # scoped, canonical
    not_selector: str = ""
    ports: tuple[str, ...] = ()  # "80" or "1000:2000"
    not_ports: tuple[str, ...] = ()
    named_ports: tuple[str, ...] = ()  # port names ("http"), ORed with ports
    not_named_ports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str = ""  # lower-case name ("tcp", "icmpv6") or a number ("47"); "" = any
    not_protocol: str = ""
    icmp: str = ""  # "8" or "8/0"
    not_icmp: str = ""
    source: Entity = Entity()
    destination: Entity = Entity()
    never: bool = False  # cannot match: not rendered
    ip_version: int = 0  # 4 or 6: only in that family's table; 0: in both


@dataclass(frozen=True)
class Policy:
    """A NetworkPolicy (``key`` = "<ns>/<name>") or GlobalNetworkPolicy (``key`` = "<name>")."""

    key: str
    order: float | None
    selector: str  # scoped, canonical; "" selects nothing
    ingress: tuple[Rule, ...] | None  # None: the policy's types leave Ingress out
    egress: tuple[Rule, ...] | None
    tier: str = DEFAULT_TIER
    # GlobalNetworkPolicy only (Felix's meaning): doNotTrack policies apply to host endpoints in the
    # raw table, preDNAT ones in the mangle table (ingress only); neither ever applies to a workload.
    # applyOnForward: a normal policy applies to traffic forwarded through a host endpoint too.
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False

    @property
    def kind(self) -> str:
        """Which of Felix's policy lists it joins: "untracked", "prednat" or "normal" (doNotTrack wins
        over preDNAT, as in Felix's tierInfoToProtoTierInfo)."""
        return "untracked" if self.do_not_track else "prednat" if self.pre_dnat else "normal"

    def sort_key(self) -> tuple:
        """Lower order first; no order after every ordered policy; then by name (as Felix)."""
        return (self.order is None, self.order or 0.0, self.key)


@dataclass(frozen=True)
class Tier:
    """A Calico Tier: policies are evaluated tier by tier, lowest order first; a packet no policy of a
    tier decides meets the tier's default action (Deny: dropped; Pass: on to the next tier)."""

    name: str
    order: float | None = DEFAULT_TIER_ORDER
    default_action: str = "Deny"

    def sort_key(self) -> tuple:
        return (self.order is None, self.order or 0.0, self.name)


def tier_from_resource(resource: dict) -> Tier:
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    action = "Pass" if str(spec.get("defaultAction") or "Deny") == "Pass" else "Deny"
    return Tier(str(meta.get("name") or ""), _order(spec.get("order")) if "order" in spec else DEFAULT_TIER_ORDER,
                action)


@dataclass(frozen=True)
class Profile:
    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A workload endpoint, a host endpoint or a network set: what a rule's selector can match (network
    sets have no node nor interface, so they are never policed themselves)."""

    key: str  # "<ns>/<name>"; "hostendpoint:<name>"; "networkset:<ns>/<name>", "globalnetworkset:<name>"
    namespace: str  # "" for a host endpoint and a global network set
    node: str
    interface: str
    addresses: tuple[str, ...]  # bare IPv4 and IPv6 addresses; a network set's nets (layout.set_member)
    profiles: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    host: bool = False  # a HostEndpoint: policed by cni_calico.policy.hostep, never as a workload
    ports: tuple[tuple[str, str, int], ...] = ()  # named ports: (name, protocol as `_protocol` spells it, port)


# --- rules -----------------------------------------------------------------------------------------


def _protocol(value: object) -> str | None:
    """A Calico protocol, lower case ("" = any); None for an unknown name or a number outside 1-255."""
    if value is None or value == "":
        return ""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return str(int(value)) if 1 <= int(value) <= 255 else None
    return PROTOCOLS.get(str(value).lower())


def _icmp(value: object) -> str | None:
    """ "type" or "type/code"; "" when absent; None when malformed (Calico's validator refuses those)."""
    if value is None or (isinstance(value, dict) and value.get("type") is None and value.get("code") is None):
        return ""
    try:
        kind, code = int(value["type"]), value.get("code")  # type: ignore[index, union-attr]
        code = None if code is None else int(code)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if not 0 <= kind <= 255 or not 0 <= (code or 0) <= 255:
        return None
    return f"{kind}" if code is None else f"{kind}/{code}"


_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")  # Kubernetes' IsValidPortName, less its "--" rule


def _ports(values: object) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """Numeric ports and ranges as "a" / "a:b", port names (each once, in order); the flag says an
    invalid entry was dropped."""
    out, named, dropped = [], [], False
    for value in values if isinstance(values, list) else []:
        text = str(value).strip()
        first, _, last = text.partition(":")
        last = last or first
        if first.isdigit() and last.isdigit() and int(first) <= int(last) <= 65535:
            out.append(str(int(first)) if int(first) == int(last) else f"{int(first)}:{int(last)}")
        elif isinstance(value, str) and _PORT_NAME.match(text) and re.search("[a-z]", text) and "--" not in text:
            named.append(text)
        else:
            dropped = True
    return tuple(out), tuple(dict.fromkeys(named)), dropped


# Felix's named-port protocols (ipsetmember.Protocol) as rules spell them: by name or by number.
_PORT_PROTOCOL_NUMBERS = {name: str(number) for name, number in NAMED_PORT_PROTOCOLS.items()}


def named_port_protocol(protocol: str) -> str:
    """The protocol of a rule's named-port sets (Felix's ProtocolFrom): "udp" and "sctp" by name or
    number, "any" without a protocol, "tcp" for anything else (UDPLite too, as Felix)."""
    if not protocol:
        return "any"
    return next((name for name, number in _PORT_PROTOCOL_NUMBERS.items() if protocol in (name, number)), "tcp")


def _port_matches(protocol: str, declared: str) -> bool:
    """Whether a named-port set of ``protocol`` takes a declared port of protocol ``declared``."""
    return protocol == "any" or declared in (protocol, _PORT_PROTOCOL_NUMBERS.get(protocol))


def named_port_members(ep: Endpoint, protocol: str, name: str, version: int) -> list[str]:
    """An endpoint's members of a named-port set (hash:ip,port, ``protocol`` as `named_port_protocol`
    gives it): ``"<address>,<proto>:<port>"`` for each of its ``version`` addresses and each port it
    declares under ``name`` with a protocol the set takes (Felix's CalculateEndpointContribution)."""
    out = []
    for port_name, declared, number in ep.ports:
        if port_name == name and _port_matches(protocol, declared):
            member_protocol = named_port_protocol(declared) if declared else "tcp"
            out += [f"{a},{member_protocol}:{number}" for a in ep.addresses if (":" in a) == (version == 6)]
    return out


def _endpoint_ports(values: object) -> tuple[tuple[str, str, int], ...]:
    """An endpoint's named ports (name, protocol, port); unnamed ones (a hostPort's) and malformed
    ones are left out, as libcalico-go hands them to Felix."""
    out = []
    for value in values if isinstance(values, list) else []:
        if not isinstance(value, dict) or not value.get("name"):
            continue
        protocol, port = _protocol(value.get("protocol")), value.get("port")
        if protocol is None or isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            continue
        out.append((intern(str(value["name"])), protocol, port))
    return tuple(dict.fromkeys(out))


def _nets(values: object) -> tuple[tuple[str, ...], bool]:
    """Normalised CIDRs of either family; the flag says some entry (unparseable) was dropped."""
    out, dropped = [], False
    for value in values if isinstance(values, list) else []:
        try:
            out.append(str(ipaddress.ip_network(str(value), strict=False)))
        except ValueError:
            dropped = True
    return tuple(sorted(set(out))), dropped


def _entity(data: object, namespace: str) -> tuple[Entity, str]:
    """An Entity and, if it can never match, why."""
    data = data if isinstance(data, dict) else {}
    why = ""
    nets, dropped = _nets(data.get("nets"))
    if dropped and not nets:
        why = "nets hold no valid network"
    not_nets, _ = _nets(data.get("notNets"))
    ports, named, dropped = _ports(data.get("ports"))
    if dropped and not ports and not named:
        why = "ports hold no valid port"
    not_ports, not_named, _ = _ports(data.get("notPorts"))
    selector = str(data.get("selector") or "")
    not_selector = str(data.get("notSelector") or "")
    ns_selector = str(data.get("namespaceSelector") or "")
    accounts = data.get("serviceAccounts") if isinstance(data.get("serviceAccounts"), dict) else {}
    try:
        names = accounts.get("names") if isinstance(accounts.get("names"), list) else []
        scoped = scoped_selector(selector, namespace, ns_selector, not_selector,
                                 service_accounts([str(n) for n in names], str(accounts.get("selector") or "")))
        negative = str(parse(not_selector)) if not_selector else ""
    except (SelectorError, ValueError) as exc:
        return Entity(), f"bad selector: {exc}"
    return Entity(nets, not_nets, scoped, negative, ports, not_ports, named, not_named), why


def rule_from_dict(data: object, namespace: str = "") -> Rule:
    """A Calico v3 rule; ``namespace`` scopes its selectors (a NetworkPolicy's namespace)."""
    if not isinstance(data, dict):
        return Rule("Deny", never=True)
    action = str(data.get("action") or "")
    action = next((a for a in ACTIONS if a.lower() == action.lower()), action)
    protocol, not_protocol = _protocol(data.get("protocol")), _protocol(data.get("notProtocol"))
    source, why_src = _entity(data.get("source"), namespace)
    destination, why_dst = _entity(data.get("destination"), namespace)
    icmp, not_icmp = _icmp(data.get("icmp")), _icmp(data.get("notICMP"))
    rule = Rule(action, protocol or "", not_protocol or "", icmp or "", not_icmp or "", source, destination)
    why = why_src or why_dst
    if icmp is None or not_icmp is None:
        why = "malformed icmp / notICMP"
    elif action not in ACTIONS:
        why = f"unknown action {action!r}"
    elif protocol is None or not_protocol is None:
        why = "unknown protocol"
    elif str(data.get("ipVersion") or 4) not in ("4", "6"):
        why = "ipVersion must be 4 or 6"
    elif rule.protocol and rule.protocol == rule.not_protocol:
        why = "protocol and notProtocol are equal"
    elif (rule.icmp or rule.not_icmp) and rule.protocol not in ICMP_PROTOCOLS[4] | ICMP_PROTOCOLS[6]:
        why = "icmp fields need protocol ICMP or ICMPv6"
    elif any((e.ports or e.not_ports) for e in (source, destination)) and rule.protocol not in LOWER_PORT_PROTOCOLS:
        why = "numeric ports need protocol TCP, UDP, SCTP or UDPLite"
    elif (any((e.named_ports or e.not_named_ports) for e in (source, destination))
          and rule.protocol not in LOWER_PORT_PROTOCOLS | {""}):
        why = "named ports need protocol TCP, UDP, SCTP, UDPLite or none"
    elif not (families := _families(data.get("ipVersion"), rule)):
        why = "its ipVersion, protocol and nets leave no IP version"
    else:
        rule = dataclasses.replace(rule, ip_version=0 if len(families) == 2 else families.pop())
    if rule.protocol and rule.not_protocol:
        rule = dataclasses.replace(rule, not_protocol="")  # implied by the protocol
    if why:
        log.warning("policy rule %s can never match: %s", data, why)
        return dataclasses.replace(rule, never=True)
    return rule


def _families(ip_version: object, rule: Rule) -> set[int]:
    """The IP versions whose tables ``rule`` belongs in (as Felix splits a rule per version)."""
    families = {int(str(ip_version))} if ip_version else {4, 6}
    for version, icmp in ICMP_PROTOCOLS.items():
        if rule.protocol in icmp:
            families &= {version}
    for entity in (rule.source, rule.destination):
        if entity.nets:
            families &= {6 if ":" in net else 4 for net in entity.nets}
    return families


def _rules(values: object, namespace: str) -> tuple[Rule, ...]:
    return tuple(rule_from_dict(r, namespace) for r in values) if isinstance(values, list) else ()


# --- resources -------------------------------------------------------------------------------------


def _order(value: object) -> float | None:
    try:
        return None if value is None or value == "" else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def policy_from_resource(resource: dict, namespaced: bool) -> Policy:
    """A NetworkPolicy (``namespaced``) or GlobalNetworkPolicy resource."""
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    namespace = str(meta.get("namespace") or "default") if namespaced else ""
    name = str(meta.get("name") or "")
    key = f"{namespace}/{name}" if namespaced else name
    ingress, egress = _rules(spec.get("ingress"), namespace), _rules(spec.get("egress"), namespace)
    types = spec.get("types")
    if not types:  # Calico's default: Egress alone only for a policy with egress rules only
        types = ["Ingress", "Egress"] if ingress and egress else ["Egress"] if egress else ["Ingress"]
    types = {str(t).lower() for t in types}
    try:
        selector = applies_to(str(spec.get("selector") or ""), namespace,
                              "" if namespaced else str(spec.get("namespaceSelector") or ""),
                              str(spec.get("serviceAccountSelector") or ""))
    except (SelectorError, ValueError) as exc:
        log.warning("policy %s selects nothing: bad selector: %s", key, exc)
        selector = ""
    tier = str(spec.get("tier") or DEFAULT_TIER)
    flags = [not namespaced and spec.get(name) is True for name in ("doNotTrack", "preDNAT", "applyOnForward")]
    if flags[1] and not flags[0]:
        egress = None  # a preDNAT policy polices ingress only (Felix drops its egress side)
    return Policy(key, _order(spec.get("order")), selector,
                  ingress if "ingress" in types else None, egress if "egress" in types else None, tier, *flags)


def profile_from_resource(resource: dict) -> Profile:
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    labels = spec.get("labelsToApply") or {}
    return Profile(str(meta.get("name") or ""), _rules(spec.get("ingress"), ""), _rules(spec.get("egress"), ""),
                   {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})


def endpoint_from_resource(resource: dict) -> Endpoint:
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    addresses = [a for a in map(_address, spec.get("ipNetworks") or []) if a]
    labels = meta.get("labels") or {}
    # Interned: a cluster's endpoints share a few namespaces, nodes, profiles and label words, and
    # calico-node keeps every endpoint of the cluster.
    return Endpoint(
        key=f"{namespace}/{meta.get('name') or ''}",
        namespace=intern(namespace),
        node=intern(str(spec.get("node") or "")),
        interface=str(spec.get("interfaceName") or ""),
        addresses=tuple(sorted(set(addresses))),
        profiles=tuple(intern(str(p)) for p in spec.get("profiles") or []),
        labels={intern(str(k)): intern(str(v)) for k, v in labels.items()} if isinstance(labels, dict) else {},
        ports=_endpoint_ports(spec.get("ports")),
    )


def network_set_from_resource(resource: dict, namespaced: bool) -> Endpoint:
    """A NetworkSet (``namespaced``) or GlobalNetworkSet as libcalico-go hands it to Felix: its nets
    (an unparseable one is logged and skipped), its labels, and for a NetworkSet its namespace and
    the namespace's profile ``kns.<ns>``, so it carries the namespace's labels as a pod does."""
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "default") if namespaced else ""
    key = f"networkset:{namespace}/{name}" if namespaced else f"globalnetworkset:{name}"
    members: set[str] = set()
    for value in spec.get("nets") or []:
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            log.warning("%s: ignoring invalid net %r", key, value)
            continue
        if net.prefixlen == 0:  # hash:net holds no /0: its two halves
            members.update(str(half) for half in net.subnets())
        else:
            members.add(set_member(str(net)))
    labels = meta.get("labels") or {}
    return Endpoint(key=key, namespace=namespace, node="", interface="", addresses=tuple(sorted(members)),
                    profiles=(f"{KNS_PREFIX}{namespace}",) if namespaced else (),
                    labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})


def host_endpoint_from_resource(resource: dict) -> Endpoint:
    """A HostEndpoint as libcalico-go hands it to Felix: its node, interface ("*": every interface;
    "": none named), its expectedIPs (which join selector sets as an endpoint's addresses; an
    unparseable one is skipped), profiles and labels; no namespace (a global thing)."""
    meta, spec = resource.get("metadata") or {}, resource.get("spec") or {}
    labels = meta.get("labels") or {}
    ips = [ip for ip in spec.get("expectedIPs") or [] if "/" not in str(ip)]  # addresses, never CIDRs
    addresses = [a for a in map(_address, ips) if a]
    return Endpoint(
        key=f"hostendpoint:{meta.get('name') or ''}",
        namespace="",
        node=str(spec.get("node") or ""),
        interface=str(spec.get("interfaceName") or ""),
        addresses=tuple(sorted(set(addresses))),
        profiles=tuple(str(p) for p in spec.get("profiles") or []),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        host=True,
        ports=_endpoint_ports(spec.get("ports")),
    )


def _address(net: object) -> str:
    """The canonical address of an ipNetworks entry ("" if malformed), without ipaddress's cost:
    calico-node parses every endpoint of the cluster."""
    text = str(net).partition("/")[0]
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return ""


def label_profiles(endpoint: Endpoint) -> tuple[str, ...]:
    """The profiles whose labelsToApply an endpoint carries: its own, and its service account's
    `ksa.<ns>.<account>` (calico-kube-controllers writes it; Calico lists it in a pod's endpoint)."""
    account = endpoint.labels.get(SERVICE_ACCOUNT_LABEL)
    return (*endpoint.profiles, f"{KSA_PREFIX}{endpoint.namespace}.{account}") if account and endpoint.namespace \
        else endpoint.profiles


def effective_labels(endpoint: Endpoint, profiles: dict[str, Profile]) -> dict[str, str]:
    """Profiles' labelsToApply (in order; the service account's last), then the endpoint's own labels,
    then the labels the system owns: its namespace, and the namespace's labels under ``pcns.``."""
    labels: dict[str, str] = {}
    for name in label_profiles(endpoint):
        if name in profiles:
            labels.update(profiles[name].labels)
    labels.update(endpoint.labels)
    if endpoint.namespace:  # not a global network set
        labels[NAMESPACE_LABEL] = endpoint.namespace
        labels[NS_PREFIX + NS_NAME_LABEL] = endpoint.namespace
    return labels


def with_effective_labels(endpoints: list[Endpoint], profiles: dict[str, Profile]) -> list[Endpoint]:
    return [dataclasses.replace(ep, labels=effective_labels(ep, profiles)) for ep in endpoints]
