"""`calicoctl convert -f FILE [-o yaml|json] [--ignore-validation]`: Calico v1 resources to v3.

As the convert command calicoctl had until Calico removed it (commands/convert.go with
libcalico-go/lib/upgrade/converters): offline, each v1 document (`apiVersion: v1`) becomes its v3
resource, validated as create validates it (`--ignore-validation` prints it anyway), printed as
YAML or JSON; several as a `List`. Converted: `ipPool` (named from its CIDR, `10-1-0-0-16`; ipip
enabled gives Always, or CrossSubnet with `mode: cross-subnet`; nat-outgoing, disabled), `bgpPeer`
(global: named from the peer IP; node scope: `<node>.<ip>` with spec.node), `node` (BGP
addresses, AS number, orchestrator references; the name normalised as Calico normalises it),
`policy` (a GlobalNetworkPolicy `<tier>.<name>`: rules with actions and protocols in v3's case,
`net`/`nets` merged, a `tag` as a `<tag> == ''` label test, `calico/k8s_ns` as
`projectcalico.org/namespace`; applyOnForward set with doNotTrack or preDNAT; types defaulted as
Calico's) and `profile` (tags join the labels as labelsToApply; `k8s_ns.` becomes `kns.`).
Endpoints, tiers and Kubernetes NetworkPolicies are refused with Calico's "conversion for the
resource type … is not supported": write them as v3 resources. One difference: the default tier
is left out of spec.tier (our store's way of naming it), never the tier label.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys

from cni_calico.ctl import CommandError
from cni_calico.resources import KINDS, DocumentError, Resource, ValidationError, validate

HELP = """\
Convert config files from Calico v1 to Calico v3 API versions. Both YAML and
JSON formats are accepted. The default output is printed to stdout in YAML.
Converted kinds: ipPool, bgpPeer, node, policy (as a GlobalNetworkPolicy
named <tier>.<name>), profile (tags become labelsToApply).

examples:
  # Convert the contents of pools.yaml to Calico v3 IP pools.
  calicoctl convert -f ./pools.yaml -o yaml

  # Convert resources passed as JSON on stdin.
  cat pools.json | calicoctl convert -f -
"""
_NON_NAME = re.compile(r"[^-.a-z0-9]+")
_DOT_DASH = re.compile(r"[.-]*[.][.-]*")


def node_name(v1_name: str) -> str:
    """Calico's ConvertNodeName: lower case, `/` as `.`, other characters as `-`, no dots or dashes at the ends."""
    name = _NON_NAME.sub("-", v1_name.lower().replace("/", "."))
    return _DOT_DASH.sub(".", name).strip(".-")


def cidr_name(cidr: str) -> str:
    """Calico's CIDRToName: 10.1.0.0/16 -> 10-1-0-0-16."""
    return str(ipaddress.ip_network(cidr, strict=False)).replace(".", "-").replace(":", "-").replace("/", "-")


def ip_name(ip: str) -> str:
    """Calico's convertIpToName: dashes for an IPv4 address, eight 4-digit groups for IPv6."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return str(addr).replace(".", "-")
    packed = addr.packed
    return "-".join(f"{packed[i]:02x}{packed[i + 1]:02x}" for i in range(0, 16, 2))


def _pool(meta: dict, spec: dict) -> dict:
    net = ipaddress.ip_network(str(meta.get("cidr")), strict=False)
    ipip = spec.get("ipip") or {}
    mode = "Never"
    if ipip.get("enabled"):
        mode = "CrossSubnet" if str(ipip.get("mode") or "").lower() == "cross-subnet" else "Always"
    return {"name": cidr_name(str(net)), "spec": {
        "cidr": str(net), "ipipMode": mode, "vxlanMode": "Never", "natOutgoing": bool(spec.get("nat-outgoing")),
        "disabled": bool(spec.get("disabled")), "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"],
        "assignmentMode": "Automatic", "blockSize": 26 if net.version == 4 else 122}}


def _peer(meta: dict, spec: dict) -> dict:
    ip = str(ipaddress.ip_address(str(meta.get("peerIP"))))
    out: dict = {"peerIP": ip, "asNumber": spec.get("asNumber")}
    scope = str(meta.get("scope") or "global").lower()
    if scope == "node":
        node = node_name(str(meta.get("node") or ""))
        return {"name": f"{node}.{ip_name(ip)}", "spec": {"node": node, **out}}
    if scope != "global":
        raise ValueError(f"scope must be global or node, not {scope!r}")
    return {"name": ip_name(ip), "spec": out}


def _node(meta: dict, spec: dict) -> dict:
    out: dict = {}
    bgp = spec.get("bgp") or {}
    if bgp.get("ipv4Address") or bgp.get("ipv6Address"):
        out["bgp"] = {k: v for k, v in (("asNumber", bgp.get("asNumber")), ("ipv4Address", bgp.get("ipv4Address")),
                                         ("ipv6Address", bgp.get("ipv6Address"))) if v}
    if spec.get("orchRefs"):
        out["orchRefs"] = [{k: r[k] for k in ("nodeName", "orchestrator") if r.get(k)} for r in spec["orchRefs"]]
    return {"name": node_name(str(meta.get("name") or "")), "spec": out}


# --- policy and profile rules (converters/rule.go) -----------------------------------------------------

PROTOCOLS = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
ACTIONS = ("Allow", "Deny", "Log", "Pass")


def _name(v1_name: str, dots: bool = True) -> str:
    """Calico's convertName / convertNameNoDots: normalised, with 8 hex of sha1 when that changed it."""
    import hashlib

    name = node_name(v1_name)
    if not dots:
        name = name.replace(".", "-")
    return v1_name if name == v1_name else f"{name}-{hashlib.sha1(v1_name.encode()).hexdigest()[:8]}"


def _selector(selector: object, tag: object = "") -> str:
    """v1's namespace label as v3's; a v1 tag becomes a label test merged in (mergeTagsAndSelectors)."""
    sel = str(selector or "").replace("calico/k8s_ns", "projectcalico.org/namespace")
    if tag:
        sel = f"({sel}) && {tag} == ''" if sel else f"{tag} == ''"
    return sel


def _nets(single: object, many: object) -> list[str]:
    nets = ([single] if single else []) + list(many or [])
    return [str(ipaddress.ip_network(str(n), strict=False)) for n in nets]


def _entity(v1: dict) -> dict:
    out = {"nets": _nets(v1.get("net"), v1.get("nets")), "selector": _selector(v1.get("selector"), v1.get("tag")),
           "ports": v1.get("ports"), "notNets": _nets(v1.get("notNet"), v1.get("notNets")),
           "notSelector": _selector(v1.get("notSelector"), v1.get("notTag")), "notPorts": v1.get("notPorts")}
    return {k: v for k, v in out.items() if v}


def _protocol(value: object) -> object:
    if isinstance(value, str):
        return next((p for p in PROTOCOLS if p.lower() == value.lower()), value)
    return value


def _action(value: object) -> str:
    text = str(value or "")
    if not text:
        return "Allow"
    if text == "next-tier":
        return "Pass"
    return next((a for a in ACTIONS if a.lower() == text.lower()), text)


def _rule(v1: object) -> dict:
    if not isinstance(v1, dict):
        raise ValueError(f"a rule must be a mapping, not {v1!r}")
    out: dict = {"action": _action(v1.get("action"))}
    for key in ("ipVersion", "icmp", "notICMP"):
        if v1.get(key) is not None:
            out[key] = v1[key]
    for key in ("protocol", "notProtocol"):
        if v1.get(key) is not None:
            out[key] = _protocol(v1[key])
    for side in ("source", "destination"):
        entity = _entity(v1.get(side) or {})
        if entity:
            out[side] = entity
    return out


def _rules(spec: dict, key: str) -> list[dict]:
    return [_rule(r) for r in spec.get(key) or []]


def _policy(meta: dict, spec: dict) -> dict:
    tier = _name(str(meta.get("tier") or ""), dots=False) or "default"
    out: dict = {"order": spec.get("order"), "selector": _selector(spec.get("selector")),
                 "ingress": _rules(spec, "ingress"), "egress": _rules(spec, "egress"),
                 "doNotTrack": bool(spec.get("doNotTrack")), "preDNAT": bool(spec.get("preDNAT")),
                 "applyOnForward": bool(spec.get("applyOnForward") or spec.get("doNotTrack") or spec.get("preDNAT"))}
    types = spec.get("types") or (["ingress"] if spec.get("preDNAT") else ["ingress", "egress"])
    out["types"] = [{"ingress": "Ingress", "egress": "Egress"}.get(str(t).lower()) or _bad_type(t) for t in types]
    if tier != "default":  # our store names the default tier by leaving spec.tier out
        out["tier"] = tier
    return {"name": f"{tier}.{_name(str(meta.get('name') or ''), dots=False)}",
            "annotations": meta.get("annotations"), "spec": {k: v for k, v in out.items() if v is not None}}


def _bad_type(value: object) -> str:
    raise ValueError(f"invalid policy type: '{value}'")


def _profile(meta: dict, spec: dict) -> dict:
    name = str(meta.get("name") or "")
    if name.startswith("k8s_ns."):
        name = "kns." + name[len("k8s_ns."):]
    labels = dict(meta.get("labels") or {})
    for tag in meta.get("tags") or []:
        if tag in labels:
            raise ValueError(f"Tag: '{tag}' and Label '{tag} == {labels[tag]}' have the same value for Profile: "
                             f"{_name(name)}. Change the Label key before proceeding")
        labels[tag] = ""
    out = {"ingress": _rules(spec, "ingress"), "egress": _rules(spec, "egress"), "labelsToApply": labels}
    return {"name": _name(name), "spec": {k: v for k, v in out.items() if v}}


CONVERTERS = {"ippool": ("IPPool", _pool), "bgppeer": ("BGPPeer", _peer), "node": ("Node", _node),
              "policy": ("GlobalNetworkPolicy", _policy), "profile": ("Profile", _profile)}


def _documents(text: str, source: str) -> list[dict]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CommandError(f"failed to create resources from file: {' '.join(str(exc).split())}") from None
    out: list[dict] = []
    for doc in docs:
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if not isinstance(item, dict):
                raise CommandError(f"failed to create resources from file: {source}: expected a resource, got {item!r}")
            kind = str(item.get("kind") or "")
            if kind.lower().endswith("list") and isinstance(item.get("items"), list):
                out += [i for i in item["items"] if isinstance(i, dict)]
            else:
                out.append(item)
    if not out:
        raise CommandError(f"failed to create resources from file: no resources specified in file {source}")
    return out


def convert(doc: dict) -> Resource:
    kind = str(doc.get("kind") or "")
    if str(doc.get("apiVersion") or "") != "v1":
        raise CommandError(f"failed to convert resource: conversion for the resource type '{kind}' (apiVersion "
                           f"{doc.get('apiVersion')}) is not supported: only Calico v1 resources are converted")
    if kind.lower() not in CONVERTERS:
        raise CommandError(f"failed to convert resource: conversion for the resource type '{kind}' is not supported")
    kind_name, converter = CONVERTERS[kind.lower()]
    meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    if not isinstance(meta, dict) or not isinstance(spec, dict):
        raise CommandError(f"failed to convert resource: {kind}: metadata and spec must be mappings")
    try:
        converted = converter(meta, spec)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"failed to convert resource: {kind}: {exc}") from None
    meta_out = {"name": converted["name"]}
    if converted.get("annotations"):
        meta_out["annotations"] = converted["annotations"]
    return Resource(KINDS[kind_name], meta_out, converted["spec"])


def run_convert(args: argparse.Namespace) -> int:
    if args.output not in ("yaml", "yml", "json"):
        raise CommandError(f"unrecognized output format '{args.output}'")
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"failed to create resources from file: {getattr(exc, 'strerror', None) or exc}") from None
    results = []
    for doc in _documents(text, "stdin" if args.filename == "-" else args.filename):
        res = convert(doc)
        if not args.ignore_validation:
            try:
                validate(res)
            except ValidationError as exc:
                raise CommandError(f"converted manifest resource(s) failed validation: {exc}. Re-run the command "
                                   "with '--ignore-validation' flag to see the converted output") from None
        results.append(res.to_dict())
    out = results[0] if len(results) == 1 else {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": results}
    if args.output == "json":
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(out, sort_keys=True, default_flow_style=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `convert` to calicoctl's command parser."""
    p = sub.add_parser("convert", help="Convert config files from Calico v1 to v3 API versions.", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", required=True, help='file to convert; "-" reads stdin')
    p.add_argument("-o", "--output", default="yaml", metavar="FORMAT", help="yaml (default) or json")
    p.add_argument("--ignore-validation", action="store_true", help="print the converted resources even if invalid")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_convert)
