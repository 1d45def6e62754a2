"""The BGP kinds: Node, BGPPeer, BGPConfiguration (Calico v3 shapes, names and table columns).

Pure. AS numbers are stored as numbers (a dotted "1.10" becomes 65546), as
calico-node reads them. A Node's routeReflectorClusterID is an IPv4 address;
a BGPPeer targets either one node or a node selector, and either one peer IP
(which needs an AS number) or a peer selector; the BGPConfiguration named
"default" is the cluster's, `node.<name>` ones may not set cluster-wide fields.
"""

from __future__ import annotations

from collections.abc import Mapping

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register, selector_errors
from cni_calico.v3 import DEFAULT_AS

LOG_LEVELS = ("Debug", "Info", "Warning", "Error", "Fatal")
SOURCE_ADDRESSES = ("UseNodeIP", "None")
BIND_MODES = ("None", "NodeIP")


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
    "sourceAddress": str, "maxRestartTime": str, "ttlSecurity": int, "reachableBy": str,
}


def _validate_peer(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {**PEER_TYPES, "asNumber": (int, str)})
    if errors:
        return errors
    if spec.get("node"):
        errors += fields.name("spec.node", spec["node"])
    errors += selector_errors("spec.nodeSelector", spec.get("nodeSelector"))
    errors += selector_errors("spec.peerSelector", spec.get("peerSelector"))
    errors += _peer_ip("spec.peerIP", spec.get("peerIP"))
    errors += fields.ip("spec.reachableBy", spec.get("reachableBy"))
    errors += fields.one_of("spec.sourceAddress", spec.get("sourceAddress"), SOURCE_ADDRESSES)
    asn, errs = fields.as_number("spec.asNumber", spec.get("asNumber"))
    errors += errs
    if asn is not None:
        spec["asNumber"] = asn
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
    spec_fields=frozenset({*PEER_TYPES, "asNumber"}),
    headings=("NAME", "PEERIP", "NODE", "ASN"),
    wide_headings=("NAME", "PEERIP", "NODE", "ASN"),
    columns={
        "NAME": lambda r, c: r.name,
        "PEERIP": lambda r, c: str(r.spec.get("peerIP") or ""),
        "NODE": lambda r, c: str(r.spec.get("node") or r.spec.get("nodeSelector") or "(global)"),
        "ASN": lambda r, c: str(r.spec.get("asNumber") if r.spec.get("asNumber") is not None else 0),
    },
    validate_spec=_validate_peer,
))


# --- BGPConfiguration ------------------------------------------------------------------------

CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "logSeverityScreen": str, "nodeToNodeMeshEnabled": bool, "asNumber": (int, str), "listenPort": int,
    "serviceClusterIPs": list, "serviceExternalIPs": list, "serviceLoadBalancerIPs": list, "bindMode": str,
    "communities": list, "prefixAdvertisements": list, "ignoredInterfaces": list,
}
CLUSTER_ONLY = ("nodeToNodeMeshEnabled", "asNumber", "serviceClusterIPs", "serviceExternalIPs",
                "serviceLoadBalancerIPs")


def _validate_config(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, CONFIG_TYPES)
    if errors:
        return errors
    errors += fields.one_of("spec.logSeverityScreen", spec.get("logSeverityScreen"), LOG_LEVELS)
    errors += fields.one_of("spec.bindMode", spec.get("bindMode"), BIND_MODES)
    asn, errs = fields.as_number("spec.asNumber", spec.get("asNumber"))
    errors += errs
    if asn is not None:
        spec["asNumber"] = asn
    if spec.get("listenPort") is not None and not 1 <= spec["listenPort"] <= fields.MAX_PORT:
        errors.append(FieldError("spec.listenPort", "must be 1-65535", spec["listenPort"]))
    for key in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
        for i, entry in enumerate(spec.get(key) or []):
            where = f"spec.{key}[{i}]"
            item, errs = fields.mapping(where, entry)
            errors += errs + fields.unknown(f"{where}.", item, {"cidr"})
            if not errs and "cidr" not in item:
                errors.append(FieldError(f"{where}.cidr", "must be given"))
            errors += fields.ip(f"{where}.cidr", item.get("cidr"), cidr="required")
    errors += fields.string_list("spec.ignoredInterfaces", spec.get("ignoredInterfaces"))
    if res.name.startswith("node."):
        errors += [FieldError(f"spec.{k}", "may be set in the cluster-wide 'default' BGPConfiguration only", spec[k])
                   for k in CLUSTER_ONLY if spec.get(k) is not None]
    return errors


def _dash(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)


BGPCONFIGURATION = register(Kind(
    name="BGPConfiguration",
    plural="bgpconfigurations",
    aliases=("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
    namespaced=False,
    spec_fields=frozenset(CONFIG_TYPES),
    headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
    wide_headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
    columns={
        "NAME": lambda r, c: r.name,
        "LOGSEVERITY": lambda r, c: str(r.spec.get("logSeverityScreen") or ""),
        "MESHENABLED": lambda r, c: _dash(r.spec.get("nodeToNodeMeshEnabled")),
        "ASNUMBER": lambda r, c: _dash(r.spec.get("asNumber")),
    },
    validate_spec=_validate_config,
))
