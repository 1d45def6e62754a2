"""The BGPFilter kind (Calico v3 shape): import and export rules per family, used by the BGPPeers that name
the filter in `spec.filters`.

Pure. Each rule has an action (Accept or Reject) and matches on any of: a CIDR
with matchOperator (Equal, NotEqual, In, NotIn) and an optional prefixLength
{min, max}, source RemotePeers, interface (a name or pattern), peerType (eBGP,
iBGP), communities {values: [one community]}, asPathPrefix; Accept rules may
carry operations (addCommunity, prependASPath). calico-node renders them as
confd does (cni_calico.node.bgpfilters). Rule priorities (`priority`,
`setPriority`) are refused as not supported: routes here carry BIRD's metric,
not Calico's route priorities.
"""

from __future__ import annotations

import re

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register
from cni_calico.v3 import FILTER_ACTIONS, FILTER_DIRECTIONS, FILTER_OPERATORS, is_community

RULE_FIELDS = frozenset({"cidr", "prefixLength", "source", "interface", "matchOperator", "peerType", "communities",
                         "asPathPrefix", "priority", "action", "operations"})
_INTERFACE = re.compile(r"^[a-zA-Z0-9_.*?-]{1,15}$")


def _as_list(where: str, value: object) -> list[FieldError]:
    if not isinstance(value, list) or not value:
        return [FieldError(where, "must list AS numbers", value)]
    return [e for i, asn in enumerate(value) for e in fields.as_number(f"{where}[{i}]", asn)[1]]


def _operations(where: str, ops: object, action: object) -> list[FieldError]:
    if ops is None:
        return []
    if not isinstance(ops, list):
        return [FieldError(where, "must be a list", ops)]
    errors = []
    if ops and action != "Accept":
        errors.append(FieldError(where, "only Accept rules may have operations", ops))
    for i, op in enumerate(ops):
        at = f"{where}[{i}]"
        item, errs = fields.mapping(at, op)
        errors += errs
        if errs:
            continue
        if "setPriority" in item:
            errors.append(FieldError(f"{at}.setPriority", "not supported by this calico-node: routes carry BIRD's "
                                     "metric here, not Calico's route priorities", item["setPriority"]))
        errors += fields.unknown(f"{at}.", item, {"addCommunity", "prependASPath", "setPriority"})
        if len(item) != 1:
            errors.append(FieldError(at, "must have exactly one of addCommunity, prependASPath", op))
        add = item.get("addCommunity")
        if add is not None and not (isinstance(add, dict) and is_community(str(add.get("value") or ""))):
            errors.append(FieldError(f"{at}.addCommunity.value", "must be a community aa:nn or aa:nn:mm", add))
        prepend = item.get("prependASPath")
        if prepend is not None:
            errors += _as_list(f"{at}.prependASPath.prefix", prepend.get("prefix") if isinstance(prepend, dict)
                               else None)
    return errors


def _rule(where: str, rule: object, family: int) -> list[FieldError]:
    item, errors = fields.mapping(where, rule)
    if errors or not item:
        return errors or [FieldError(where, "must be a mapping with an action")]
    errors += fields.unknown(f"{where}.", item, RULE_FIELDS)
    errors += fields.one_of(f"{where}.action", item.get("action"), FILTER_ACTIONS)
    if item.get("action") is None:
        errors.append(FieldError(f"{where}.action", "must be given (Accept or Reject)"))
    cidr, op = item.get("cidr"), item.get("matchOperator")
    errors += fields.ip(f"{where}.cidr", cidr, family, cidr="required")
    errors += fields.one_of(f"{where}.matchOperator", op, tuple(FILTER_OPERATORS))
    if bool(cidr) != bool(op):
        errors.append(FieldError(f"{where}.matchOperator", "cidr and matchOperator go together", op))
    length = item.get("prefixLength")
    if length is not None:
        top = 32 if family == 4 else 128
        if not cidr or not isinstance(length, dict) or set(length) - {"min", "max"}:
            errors.append(FieldError(f"{where}.prefixLength", "must be {min, max} beside a cidr", length))
        else:
            for key, value in length.items():
                if not fields.is_int(value) or not 0 <= value <= top:
                    errors.append(FieldError(f"{where}.prefixLength.{key}", f"must be 0-{top}", value))
    errors += fields.one_of(f"{where}.source", item.get("source"), ("RemotePeers",))
    if item.get("interface") is not None and not _INTERFACE.match(str(item["interface"])):
        errors.append(FieldError(f"{where}.interface", "must be an interface name or pattern (* and ?)",
                                 item["interface"]))
    errors += fields.one_of(f"{where}.peerType", item.get("peerType"), ("eBGP", "iBGP"))
    communities = item.get("communities")
    if communities is not None:
        values = communities.get("values") if isinstance(communities, dict) else None
        if not isinstance(values, list) or len(values) != 1 or not is_community(str(values[0])):
            errors.append(FieldError(f"{where}.communities", "must be {values: [one community aa:nn or aa:nn:mm]}",
                                     communities))
    if item.get("asPathPrefix") is not None:
        errors += _as_list(f"{where}.asPathPrefix", item["asPathPrefix"])
    if item.get("priority") is not None:
        errors.append(FieldError(f"{where}.priority", "not supported by this calico-node: routes carry BIRD's metric "
                                 "here, not Calico's route priorities", item["priority"]))
    return errors + _operations(f"{where}.operations", item.get("operations"), item.get("action"))


def _validate(res: Resource) -> list[FieldError]:
    errors = []
    for direction in FILTER_DIRECTIONS:
        rules = res.spec.get(direction)
        if rules is None:
            continue
        if not isinstance(rules, list):
            errors.append(FieldError(f"spec.{direction}", "must be a list of rules", rules))
            continue
        family = 6 if direction.endswith("V6") else 4
        for i, rule in enumerate(rules):
            errors += _rule(f"spec.{direction}[{i}]", rule, family)
    return errors


BGPFILTER = register(Kind(
    name="BGPFilter",
    validate_spec=_validate,
    plural="bgpfilters",
    aliases=("bgpfilter", "bgpfilters", "bgpf", "bgpfs"),
    namespaced=False,
    spec_fields=frozenset(FILTER_DIRECTIONS),
    headings=("NAME",),
    wide_headings=("NAME", "EXPORTV4", "IMPORTV4", "EXPORTV6", "IMPORTV6"),
    columns={
        "NAME": lambda r, c: r.name,
        **{d.upper(): (lambda r, c, d=d: str(len(r.spec.get(d) or []))) for d in FILTER_DIRECTIONS},
    },
))
