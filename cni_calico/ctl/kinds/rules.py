"""Policy rules (Profile, NetworkPolicy, GlobalNetworkPolicy ingress/egress), checked as Calico's validator does.

Pure. `check_rules(path, rules)` returns every FieldError with the full path
of the field (`spec.ingress[0].destination.ports[1]`) and normalises ports in
place (a numeric string "80" becomes 80). What must hold:

- action is one of Allow, Deny, Pass, Log;
- protocol / notProtocol: TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite, or 1-255;
- ports and notPorts only with a protocol that has ports (TCP, UDP, SCTP, UDPLite);
- icmp / notICMP only with ICMP or ICMPv6; type 0-254, code 0-255, code only with a type;
- ipVersion 4 or 6, and then the protocol's ICMP flavour and every CIDR agree with it;
- nets / notNets are CIDRs (or bare addresses); selectors parse (cni_calico.selector).
"""

from __future__ import annotations

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, selector_errors
from cni_calico.v3 import ENTITY_FIELDS, ICMP_FIELDS, PORT_PROTOCOLS, RULE_FIELDS
from cni_calico.v3 import ICMP_PROTOCOL_VERSION as ICMP_VERSION
from cni_calico.v3 import RULE_ACTIONS as ACTIONS
from cni_calico.v3 import RULE_PROTOCOLS as PROTOCOLS

UNCHECKED = "<invalid>"


def check_rules(path: str, rules: object) -> list[FieldError]:
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [FieldError(path, "must be a list of rules", rules)]
    errors: list[FieldError] = []
    for i, rule in enumerate(rules):
        errors += check_rule(f"{path}[{i}]", rule)
    return errors


def check_rule(path: str, rule: object) -> list[FieldError]:
    if not isinstance(rule, dict):
        return [FieldError(path, "a rule must be a mapping", rule)]
    errors = fields.unknown(f"{path}.", rule, RULE_FIELDS)
    action = rule.get("action")
    if action is None:
        errors.append(FieldError(f"{path}.action", f"a rule needs an action: one of {', '.join(ACTIONS)}"))
    else:
        errors += fields.one_of(f"{path}.action", action, ACTIONS)
    protocol = rule.get("protocol")
    bad_protocol = _protocol(f"{path}.protocol", protocol)
    errors += bad_protocol
    if bad_protocol:
        protocol = UNCHECKED  # its own error is enough: no follow-on errors about ports or ICMP
    errors += _protocol(f"{path}.notProtocol", rule.get("notProtocol"))
    version = rule.get("ipVersion")
    if version is not None and version not in (4, 6):
        errors.append(FieldError(f"{path}.ipVersion", "must be 4 or 6", version))
        version = None
    for key in ("icmp", "notICMP"):
        errors += _icmp(path, key, rule.get(key), protocol, version)
    if version and protocol in ICMP_VERSION and ICMP_VERSION[protocol] != version:
        errors.append(FieldError(f"{path}.protocol", f"{protocol} does not go with ipVersion {version}", protocol))
    nets_versions: set[int] = set()
    for side in ("source", "destination"):
        entity, errs = fields.mapping(f"{path}.{side}", rule.get(side))
        errors += errs + _entity(f"{path}.{side}", entity, protocol, nets_versions)
    if len(nets_versions) > 1:
        errors.append(FieldError(path, "a rule cannot mix IPv4 and IPv6 CIDRs"))
    elif version and nets_versions and nets_versions != {version}:
        errors.append(FieldError(f"{path}.ipVersion", f"the rule's CIDRs are IPv{nets_versions.pop()}", version))
    if rule.get("metadata") is not None:
        meta, errs = fields.mapping(f"{path}.metadata", rule["metadata"])
        errors += errs + fields.unknown(f"{path}.metadata.", meta, {"annotations"})
        errors += fields.labels(f"{path}.metadata.annotations", meta.get("annotations"))
    return errors


def _protocol(field: str, value: object) -> list[FieldError]:
    if value is None or (isinstance(value, str) and value in PROTOCOLS):
        return []
    if fields.is_int(value):
        return [] if 1 <= value <= 255 else [FieldError(field, "protocol number must be 1-255", value)]  # type: ignore
    hint = next((p for p in PROTOCOLS if isinstance(value, str) and p.lower() == value.lower()), None)
    return [FieldError(field, f"must be one of {', '.join(PROTOCOLS)} or a number 1-255"
                       + (f" (did you mean {hint}?)" if hint else ""), value)]


def _icmp(path: str, key: str, value: object, protocol: object, version: int | None) -> list[FieldError]:
    if value is None:
        return []
    field = f"{path}.{key}"
    icmp, errors = fields.mapping(field, value)
    if errors:
        return errors
    errors = fields.unknown(f"{field}.", icmp, ICMP_FIELDS) + fields.types(f"{field}.", icmp,
                                                                            {"type": int, "code": int})
    if errors:
        return errors
    if protocol != UNCHECKED and protocol not in ICMP_VERSION:
        errors.append(FieldError(field, "ICMP fields need protocol ICMP or ICMPv6", protocol))
    if icmp.get("type") is not None and not 0 <= icmp["type"] <= 254:
        errors.append(FieldError(f"{field}.type", "ICMP type must be 0-254", icmp["type"]))
    if icmp.get("code") is not None:
        if icmp.get("type") is None:
            errors.append(FieldError(f"{field}.code", "an ICMP code needs an ICMP type", icmp["code"]))
        elif not 0 <= icmp["code"] <= 255:
            errors.append(FieldError(f"{field}.code", "ICMP code must be 0-255", icmp["code"]))
    return errors


def _entity(path: str, entity: dict, protocol: object, versions: set[int]) -> list[FieldError]:
    errors = fields.unknown(f"{path}.", entity, ENTITY_FIELDS)
    for key in ("nets", "notNets"):
        nets = entity.get(key)
        if nets is None:
            continue
        if not isinstance(nets, list):
            errors.append(FieldError(f"{path}.{key}", "must be a list of CIDRs", nets))
            continue
        for i, net in enumerate(nets):
            errs = fields.ip(f"{path}.{key}[{i}]", net, cidr="allowed")
            errors += errs
            if not errs:
                versions.add(fields.cidr_version(net))
    for key in ("selector", "notSelector", "namespaceSelector"):
        errors += selector_errors(f"{path}.{key}", entity.get(key))
    accounts, errs = fields.mapping(f"{path}.serviceAccounts", entity.get("serviceAccounts"))
    errors += errs + fields.unknown(f"{path}.serviceAccounts.", accounts, {"names", "selector"})
    errors += fields.string_list(f"{path}.serviceAccounts.names", accounts.get("names"))
    errors += selector_errors(f"{path}.serviceAccounts.selector", accounts.get("selector"))
    for key in ("ports", "notPorts"):
        if entity.get(key) is None:
            continue
        normal, errs = fields.ports(f"{path}.{key}", entity[key])
        errors += errs
        if not errs:
            entity[key] = normal
        if entity[key] and protocol != UNCHECKED and protocol not in PORT_PROTOCOLS:
            shown = "the rule has no protocol" if protocol is None else f"not {protocol}"
            errors.append(FieldError(f"{path}.{key}", f"ports need protocol TCP, UDP, SCTP or UDPLite: {shown}",
                                     entity[key]))
    return errors
