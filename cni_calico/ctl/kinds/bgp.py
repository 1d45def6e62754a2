"""The BGP kinds Node and BGPPeer (Calico v3 shapes, names and table columns), and the checks the BGP kinds
share (secret references, durations, fields refused as not supported).

Pure. AS numbers are stored as numbers (a dotted "1.10" becomes 65546), as
calico-node reads them. A Node's routeReflectorClusterID is an IPv4 address;
a BGPPeer targets either one node or a node selector, and either one peer IP
(which needs an AS number) or a peer selector. Every field is one calico-node renders into BIRD's config (see
cni_calico.node.birdconf) or is refused as "not supported", naming the field
and why: never stored and ignored. Passwords (`secretKeyRef`) are read by each
calico-node from `<CALICO_SECRETS_DIR>/<name>/<key>` (cni_calico.node.secrets).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register, selector_errors
from cni_calico.v3 import DEFAULT_AS, NEXT_HOP_MODES, SOURCE_ADDRESSES, parse_duration

LOG_LEVELS = ("Debug", "Info", "Warning", "Error", "Fatal")
_SECRET_PART = re.compile(r"^[-._a-zA-Z0-9]+$")


# --- Node ------------------------------------------------------------------------------------

NODE_FIELDS = frozenset({"bgp", "ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "ipv6VXLANTunnelAddr",
                         "vxlanTunnelMACAddrV6", "orchRefs", "addresses", "wireguard"})
NODE_BGP_FIELDS = frozenset({"ipv4Address", "ipv6Address", "asNumber", "routeReflectorClusterID",
                             "ipv4IPIPTunnelAddr"})


def _validate_node(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"orchRefs": list, "addresses": list, "wireguard": dict})
    bgp, errs = fields.mapping("spec.bgp", spec.get("bgp"))
    errors += errs + fields.unknown("spec.bgp.", bgp, NODE_BGP_FIELDS)
    errors += fields.ip("spec.bgp.ipv4Address", bgp.get("ipv4Address"), 4, cidr="allowed")
    errors += fields.ip("spec.bgp.ipv6Address", bgp.get("ipv6Address"), 6, cidr="allowed")
    errors += fields.ip("spec.bgp.ipv4IPIPTunnelAddr", bgp.get("ipv4IPIPTunnelAddr"), 4)
    errors += fields.ip("spec.bgp.routeReflectorClusterID", bgp.get("routeReflectorClusterID"), 4)
    asn, errs = fields.as_number("spec.bgp.asNumber", bgp.get("asNumber"))
    errors += errs
    if asn is not None:
        bgp["asNumber"] = asn
    errors += fields.ip("spec.ipv4VXLANTunnelAddr", spec.get("ipv4VXLANTunnelAddr"), 4)
    errors += fields.ip("spec.ipv6VXLANTunnelAddr", spec.get("ipv6VXLANTunnelAddr"), 6)
    errors += fields.mac("spec.vxlanTunnelMACAddr", spec.get("vxlanTunnelMACAddr"))
    errors += fields.mac("spec.vxlanTunnelMACAddrV6", spec.get("vxlanTunnelMACAddrV6"))
    for i, ref in enumerate(spec.get("orchRefs") or []):
        where = f"spec.orchRefs[{i}]"
        ref_map, errs = fields.mapping(where, ref)
        errors += errs + fields.unknown(f"{where}.", ref_map, {"nodeName", "orchestrator"})
        errors += fields.types(f"{where}.", ref_map, {"nodeName": str, "orchestrator": str})
        if ref_map and not ref_map.get("orchestrator"):
            errors.append(FieldError(f"{where}.orchestrator", "must be given (e.g. k8s)"))
    for i, entry in enumerate(spec.get("addresses") or []):
        where = f"spec.addresses[{i}]"
        addr, errs = fields.mapping(where, entry)
        errors += errs + fields.unknown(f"{where}.", addr, {"address", "type"})
        errors += fields.ip(f"{where}.address", addr.get("address"), cidr="allowed")
    return errors


def _node_asn(res: Resource, ctx: Mapping) -> str:
    bgp = res.spec.get("bgp")
    if not isinstance(bgp, dict):
        return ""
    return str(bgp["asNumber"]) if bgp.get("asNumber") else f"({ctx.get('asnumber', DEFAULT_AS)})"


NODE = register(Kind(
    name="Node",
    plural="nodes",
    aliases=("node", "nodes", "no", "nos"),
    namespaced=False,
    spec_fields=NODE_FIELDS,
    headings=("NAME",),
    wide_headings=("NAME", "ASN", "IPV4", "IPV6"),
    columns={
        "NAME": lambda r, c: r.name,
        "ASN": _node_asn,
        "IPV4": lambda r, c: str((r.spec.get("bgp") or {}).get("ipv4Address") or ""),
        "IPV6": lambda r, c: str((r.spec.get("bgp") or {}).get("ipv6Address") or ""),
    },
    validate_spec=_validate_node,
))


# --- BGPPeer ---------------------------------------------------------------------------------

PEER_TYPES: dict[str, type | tuple[type, ...]] = {
    "node": str, "peerIP": str, "nodeSelector": str, "peerSelector": str, "keepOriginalNextHop": bool,
    "sourceAddress": str, "maxRestartTime": str, "ttlSecurity": int, "reachableBy": str, "nextHopMode": str,
    "password": dict, "keepaliveTime": str, "numAllowedLocalASNumbers": int, "filters": list, "reversePeering": str,
}
# Calico's BGPPeer fields this calico-node does not render, and why.
PEER_NOT_SUPPORTED = {
    "localWorkloadSelector": "peering with local workloads needs Calico's local BGP peer watcher",
}


def not_supported(spec: Mapping, table: Mapping[str, str]) -> list[FieldError]:
    return [FieldError(f"spec.{k}", f"not supported by this calico-node: {why}", spec[k])
            for k, why in table.items() if spec.get(k) is not None]


def secret_ref(field: str, value: object) -> list[FieldError]:
    """A password: {secretKeyRef: {name, key}}, read by calico-node from <CALICO_SECRETS_DIR>/<name>/<key>."""
    if value is None:
        return []
    ref = value.get("secretKeyRef") if isinstance(value, dict) else None
    if not isinstance(value, dict) or set(value) != {"secretKeyRef"} or not isinstance(ref, dict):
        return [FieldError(field, "must be {secretKeyRef: {name, key}}", value)]
    errors = fields.unknown(f"{field}.secretKeyRef.", ref, {"name", "key", "optional"})
    for part in ("name", "key"):
        if not isinstance(ref.get(part), str) or not _SECRET_PART.match(ref[part]) or ref[part] in (".", ".."):
            errors.append(FieldError(f"{field}.secretKeyRef.{part}", "must be a secret's name / key "
                                     "(letters, digits, '-', '_', '.')", ref.get(part)))
    return errors


def duration(field: str, value: object) -> list[FieldError]:
    if value is None:
        return []
    try:
        seconds = parse_duration(str(value))
    except ValueError as exc:
        return [FieldError(field, str(exc), value)]
    return [] if 0 < seconds <= 65535 else [FieldError(field, "must be from 1s to 65535s (BIRD's limit)", value)]


def _validate_peer(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {**PEER_TYPES, "asNumber": (int, str), "localASNumber": (int, str)})
    errors += not_supported(spec, PEER_NOT_SUPPORTED)
    if errors:
        return errors
    if spec.get("node"):
        errors += fields.name("spec.node", spec["node"])
    errors += selector_errors("spec.nodeSelector", spec.get("nodeSelector"))
    errors += selector_errors("spec.peerSelector", spec.get("peerSelector"))
    errors += _peer_ip("spec.peerIP", spec.get("peerIP"))
    errors += fields.ip("spec.reachableBy", spec.get("reachableBy"))
    if spec.get("reachableBy") and not errors:
        errors += _reachable_by(spec)
    errors += fields.one_of("spec.sourceAddress", spec.get("sourceAddress"), SOURCE_ADDRESSES)
    errors += fields.one_of("spec.nextHopMode", spec.get("nextHopMode"), NEXT_HOP_MODES)
    if spec.get("reversePeering") not in (None, "Auto"):
        errors.append(FieldError("spec.reversePeering", "not supported by this calico-node: only Auto (peerings "
                                 "made by a peerSelector are always symmetric here)", spec["reversePeering"]))
    errors += secret_ref("spec.password", spec.get("password"))
    errors += duration("spec.maxRestartTime", spec.get("maxRestartTime"))
    errors += duration("spec.keepaliveTime", spec.get("keepaliveTime"))
    if spec.get("ttlSecurity") is not None and not 0 <= spec["ttlSecurity"] <= 255:
        errors.append(FieldError("spec.ttlSecurity", "must be 0-255 (hops)", spec["ttlSecurity"]))
    if spec.get("numAllowedLocalASNumbers") is not None and not 0 <= spec["numAllowedLocalASNumbers"] <= 10:
        errors.append(FieldError("spec.numAllowedLocalASNumbers", "must be 0-10", spec["numAllowedLocalASNumbers"]))
    for i, name in enumerate(spec.get("filters") or []):
        errors += fields.name(f"spec.filters[{i}]", name)
    for key in ("asNumber", "localASNumber"):
        asn, errs = fields.as_number(f"spec.{key}", spec.get(key))
        errors += errs
        if asn is not None:
            spec[key] = asn
    if spec.get("node") and spec.get("nodeSelector"):
        errors.append(FieldError("spec.nodeSelector", "give either spec.node or spec.nodeSelector, not both",
                                 spec["nodeSelector"]))
    if spec.get("peerIP") and spec.get("peerSelector"):
        errors.append(FieldError("spec.peerSelector", "give either spec.peerIP or spec.peerSelector, not both",
                                 spec["peerSelector"]))
    elif not spec.get("peerIP") and not spec.get("peerSelector"):
        errors.append(FieldError("spec.peerIP", "a BGPPeer needs spec.peerIP (and spec.asNumber) or spec.peerSelector"))
    if spec.get("peerIP") and spec.get("asNumber") is None:
        errors.append(FieldError("spec.asNumber", "a BGPPeer with spec.peerIP needs the peer's AS number"))
    if spec.get("peerSelector") and spec.get("asNumber") is not None:
        errors.append(FieldError("spec.asNumber", "a BGPPeer with spec.peerSelector takes the peers' own AS numbers",
                                 spec["asNumber"]))
    return errors


BIND_CONFLICT = ("in BIRD 2 one local address is both the session's listening and its source address, and a "
                 "session listening on every address cannot open its socket beside ones bound to the node IP")


def _peer_related(res: Resource, listing: Callable[[str], list[Resource]]) -> list[FieldError]:
    """sourceAddress None cannot hold beside BGPConfiguration default's bindMode NodeIP in BIRD 2."""
    if res.spec.get("sourceAddress") != "None":
        return []
    if any(c.name == "default" and c.spec.get("bindMode") == "NodeIP" for c in listing("bgpconfigurations")):
        return [FieldError("spec.sourceAddress", "None is not supported by this calico-node while BGPConfiguration "
                           f"default has bindMode NodeIP: {BIND_CONFLICT}", "None")]
    return []


def _reachable_by(spec: Mapping) -> list[FieldError]:
    """confd's rule: a gateway of the peer's family, for a peer given by address."""
    if not spec.get("peerIP"):
        return [FieldError("spec.reachableBy", "needs spec.peerIP (a route to that address)", spec["reachableBy"])]
    from cni_calico.v3 import split_peer_ip

    peer = ipaddress.ip_address(split_peer_ip(spec["peerIP"])[0])
    if ipaddress.ip_address(spec["reachableBy"]).version != peer.version:
        return [FieldError("spec.reachableBy", "must be of the peer IP's family", spec["reachableBy"])]
    return []


def _peer_ip(field: str, value: str | None) -> list[FieldError]:
    """An address, optionally with a port: 10.0.0.1, 10.0.0.1:179, [fd00::1]:179."""
    if not value:
        return []
    host, port = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest or ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    if port and (not port.isdigit() or not 1 <= int(port) <= fields.MAX_PORT):
        return [FieldError(field, "port must be 1-65535", value)]
    return [FieldError(field, "must be an IP address, optionally with :port", value)] if fields.ip(field, host) else []


BGPPEER = register(Kind(
    name="BGPPeer",
    plural="bgppeers",
    aliases=("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
    namespaced=False,
    spec_fields=frozenset({*PEER_TYPES, *PEER_NOT_SUPPORTED, "asNumber", "localASNumber"}),
    headings=("NAME", "PEERIP", "NODE", "ASN"),
    wide_headings=("NAME", "PEERIP", "NODE", "ASN"),
    columns={
        "NAME": lambda r, c: r.name,
        "PEERIP": lambda r, c: str(r.spec.get("peerIP") or ""),
        "NODE": lambda r, c: str(r.spec.get("node") or r.spec.get("nodeSelector") or "(global)"),
        "ASN": lambda r, c: str(r.spec.get("asNumber") if r.spec.get("asNumber") is not None else 0),
    },
    validate_spec=_validate_peer,
    check_related=_peer_related,
))
