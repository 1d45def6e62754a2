"""BGPFilters as BIRD 2 functions, written as Calico's confd writes them (pure).

Each BGPFilter with rules for a direction and family becomes one function,
`'bgp_<name>_importFilterV4'` (names longer than BIRD's 64-character symbols are
cut and given a hash, as confd's TruncateAndHashName does); each rule is one
`if (<matches>) then { <operations> accept|reject; }`. A BGPPeer that lists
filters calls their functions, in its order, at the top of its session's import
or export filter: the first rule that matches decides, and a route no rule
decides goes on to the default (import: accept; export: calico's own export
filter). A function whose rules use `peerType` takes whether the session is
iBGP (same AS) as its argument.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from cni_calico.v3 import FILTER_OPERATORS, BGPFilter, BGPFilterRule

MAX_SYMBOL = 64  # BIRD's longest symbol


def function_name(name: str, direction: str, family: int) -> str:
    """`'bgp_<name>_importFilterV4'`, the name cut to fit BIRD's symbols as confd cuts it."""
    fixed = f"bgp__{direction}FilterV{family}"
    room = MAX_SYMBOL - len(fixed)
    if len(name) > room:
        digest = hashlib.sha256(name.encode()).hexdigest().upper()[:16]
        name = f"{name[:room - 17]}_{digest}"
    return f"'bgp_{name}_{direction}FilterV{family}'"


def _key(direction: str, family: int) -> str:
    return f"{direction}V{family}"


def _community(value: str) -> str:
    return f"({', '.join(value.split(':'))})"


def _community_attr(value: str) -> str:
    return "bgp_large_community" if value.count(":") == 2 else "bgp_community"


def community_add(value: str) -> str:
    """The statement adding a community (aa:nn) or large community (aa:nn:mm) to a route."""
    return f"{_community_attr(value)}.add({_community(value)});"


def _cidr_match(rule: BGPFilterRule) -> str:
    net = rule.cidr
    if rule.prefix_min is not None or rule.prefix_max is not None:
        parsed = ipaddress.ip_network(rule.cidr, strict=False)
        low = max(parsed.prefixlen, rule.prefix_min or 0)
        high = min(parsed.max_prefixlen, rule.prefix_max if rule.prefix_max is not None else parsed.max_prefixlen)
        net = f"[ {rule.cidr}{{{low},{high}}} ]"
    return f"(net {FILTER_OPERATORS[rule.match_operator]} {net})"


def statement(rule: BGPFilterRule) -> str:
    """One rule as confd's filterStatement writes it."""
    # confd's order: CIDR, source, interface, community, AS path; each present match joins with &&.
    conditions = [c for c in (
        _cidr_match(rule) if rule.cidr else "",
        "((defined(source))&&(source ~ [ RTS_BGP ]))" if rule.source == "RemotePeers" else "",
        f'((defined(ifname))&&(ifname ~ "{rule.interface}"))' if rule.interface else "",
        f"({_community(rule.community)} ~ {_community_attr(rule.community)})" if rule.community else "",
        f"(bgp_path ~ [= {' '.join(str(a) for a in rule.as_path_prefix)} * =])" if rule.as_path_prefix else "",
    ) if c]
    body = []
    for kind, value in rule.operations:
        if kind == "addCommunity":
            body.append(community_add(str(value)))
        elif kind == "prependASPath":
            # BIRD prepends one AS at a time: the last prepended ends up first.
            body += [f"bgp_path.prepend({asn});" for asn in reversed(tuple(value))]  # type: ignore[arg-type]
    body.append(f"{rule.action.lower()};")
    text = " ".join(body)
    if conditions:
        text = f"if ({'&&'.join(conditions)}) then {{ {text} }}"
    if rule.peer_type == "iBGP":
        text = f"if (is_same_as) then {{ {text} }}"
    elif rule.peer_type == "eBGP":
        text = f"if (!is_same_as) then {{ {text} }}"
    return text


def functions(filters: Mapping[str, BGPFilter], family: int) -> list[str]:
    """Every BGPFilter's functions for one family (confd's BGPFilterBIRDFuncs)."""
    out = []
    for name in sorted(filters):
        flt = filters[name]
        lines = []
        for direction in ("import", "export"):
            rules = flt.rules.get(_key(direction, family), ())
            if not rules:
                continue
            arg = "bool is_same_as" if any(r.peer_type for r in rules) else ""
            lines.append(f"function {function_name(name, direction, family)}({arg}) {{")
            lines += [f"  {statement(r)}" for r in rules]
            lines.append("}")
        if lines:
            out += [f"# v{family} BGPFilter {name}", *lines]
    return out + [""] if out else []


def calls(names: Iterable[str], filters: Mapping[str, BGPFilter], direction: str, family: int,
          same_as: bool) -> list[str]:
    """The calls a session's import or export filter starts with; filters that do not exist are skipped, as
    confd skips them."""
    out = []
    for name in names:
        flt = filters.get(name)
        rules = flt.rules.get(_key(direction, family), ()) if flt else ()
        if rules:
            arg = str(same_as).lower() if any(r.peer_type for r in rules) else ""
            out.append(f"{function_name(name, direction, family)}({arg});")
    return out
