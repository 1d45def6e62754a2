"""`calicoctl convert -f FILE [-o yaml|json] [--ignore-validation]`: Calico v1 resources to v3.

As the convert command calicoctl had until Calico removed it (commands/convert.go with
libcalico-go/lib/upgrade/converters): offline, each v1 document (`apiVersion: v1`) becomes its v3
resource, validated as create validates it (`--ignore-validation` prints it anyway), printed as
YAML or JSON; several as a `List`. Converted: `ipPool` (named from its CIDR, `10-1-0-0-16`; ipip
enabled gives Always, or CrossSubnet with `mode: cross-subnet`; nat-outgoing, disabled), `bgpPeer`
(global: named from the peer IP; node scope: `<node>.<ip>` with spec.node) and `node` (BGP
addresses, AS number, orchestrator references; the name normalised as Calico normalises it).
Policies, profiles, endpoints, tiers and Kubernetes NetworkPolicies are refused with Calico's
"conversion for the resource type … is not supported": write them as v3 resources.
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
Converted kinds: ipPool, bgpPeer, node.

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


CONVERTERS = {"ippool": ("IPPool", _pool), "bgppeer": ("BGPPeer", _peer), "node": ("Node", _node)}


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
    return Resource(KINDS[kind_name], {"name": converted["name"]}, converted["spec"])


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
