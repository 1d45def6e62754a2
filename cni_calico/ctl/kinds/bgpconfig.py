"""The BGPConfiguration kind (Calico v3 shape, names and table columns).

Pure. The one named "default" is the cluster's; `node.<name>` ones may set only
what confd reads per node (logSeverityScreen, listenPort, communities,
prefixAdvertisements). Every field is rendered by calico-node into BIRD's config
(cni_calico.node.birdconf) or refused as "not supported", naming the field and
why. nodeMeshPassword's secret is read by each calico-node from
`<CALICO_SECRETS_DIR>/<name>/<key>` (cni_calico.node.secrets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from cni_calico.ctl.kinds import fields
from cni_calico.ctl.kinds.bgp import BIND_CONFLICT, LOG_LEVELS, duration, not_supported, secret_ref
from cni_calico.resources import FieldError, Kind, Resource, register
from cni_calico.v3 import BIND_MODES, is_community

# --- BGPConfiguration ------------------------------------------------------------------------

CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "logSeverityScreen": str, "nodeToNodeMeshEnabled": bool, "asNumber": (int, str), "listenPort": int,
    "serviceClusterIPs": list, "serviceExternalIPs": list, "serviceLoadBalancerIPs": list, "bindMode": str,
    "communities": list, "prefixAdvertisements": list, "ignoredInterfaces": list, "nodeMeshPassword": dict,
    "nodeMeshMaxRestartTime": str, "serviceLoadBalancerAggregation": str,
}
# confd reads these from the `default` BGPConfiguration only.
CLUSTER_ONLY = ("nodeToNodeMeshEnabled", "asNumber", "serviceClusterIPs", "serviceExternalIPs",
                "serviceLoadBalancerIPs", "serviceLoadBalancerAggregation", "bindMode", "ignoredInterfaces",
                "nodeMeshPassword", "nodeMeshMaxRestartTime")
CONFIG_NOT_SUPPORTED = {
    "localWorkloadPeeringIPV4": "peering with local workloads needs Calico's local BGP peer watcher",
    "localWorkloadPeeringIPV6": "peering with local workloads needs Calico's local BGP peer watcher",
    "programClusterRoutes": "cluster routes are always programmed by BIRD here",
    "ipv4NormalRoutePriority": "routes carry BIRD's own metric here; route priorities are not rendered",
    "ipv6NormalRoutePriority": "routes carry BIRD's own metric here; route priorities are not rendered",
}


def _services(spec: Mapping) -> list[FieldError]:
    errors = []
    for key in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
        for i, entry in enumerate(spec.get(key) or []):
            where = f"spec.{key}[{i}]"
            item, errs = fields.mapping(where, entry)
            errors += errs + fields.unknown(f"{where}.", item, {"cidr"})
            if not errs and "cidr" not in item:
                errors.append(FieldError(f"{where}.cidr", "must be given"))
            cidr_errors = fields.ip(f"{where}.cidr", item.get("cidr"), cidr="required")
            errors += cidr_errors
            if (key != "serviceClusterIPs" and not cidr_errors and item.get("cidr")
                    and ipaddress.ip_network(item["cidr"], strict=False).num_addresses == 1):
                errors.append(FieldError(f"{where}.cidr", "not supported by this calico-node: Calico advertises a "
                                         "single address per Service, which needs the Kubernetes API; give a range",
                                         item["cidr"]))
    if spec.get("serviceLoadBalancerAggregation") not in (None, "Enabled"):
        errors.append(FieldError("spec.serviceLoadBalancerAggregation", "not supported by this calico-node: only "
                                 "Enabled (per-Service routes need the Kubernetes API)",
                                 spec["serviceLoadBalancerAggregation"]))
    return errors


def _communities(spec: Mapping) -> list[FieldError]:
    """communities: [{name, value}]; prefixAdvertisements: [{cidr, communities: [value or name]}]."""
    errors, names = [], set()
    for i, entry in enumerate(spec.get("communities") or []):
        where = f"spec.communities[{i}]"
        item, errs = fields.mapping(where, entry)
        errors += errs + fields.unknown(f"{where}.", item, {"name", "value"})
        errors += fields.name(f"{where}.name", item.get("name")) if not errs else []
        if not errs and not is_community(str(item.get("value") or "")):
            errors.append(FieldError(f"{where}.value", "must be a community aa:nn (16-bit parts) or a large "
                                     "community aa:nn:mm (32-bit parts)", item.get("value")))
        names.add(item.get("name"))
    for i, entry in enumerate(spec.get("prefixAdvertisements") or []):
        where = f"spec.prefixAdvertisements[{i}]"
        item, errs = fields.mapping(where, entry)
        errors += errs + fields.unknown(f"{where}.", item, {"cidr", "communities"})
        if errs:
            continue
        if not item.get("cidr"):
            errors.append(FieldError(f"{where}.cidr", "must be given"))
        errors += fields.ip(f"{where}.cidr", item.get("cidr"), cidr="required")
        values = item.get("communities")
        if not isinstance(values, list) or not values:
            errors.append(FieldError(f"{where}.communities", "must list community values or names", values))
            continue
        for j, value in enumerate(values):
            if not (isinstance(value, str) and (is_community(value) or value in names)):
                errors.append(FieldError(f"{where}.communities[{j}]", "must be a community value or the name of "
                                         "one in spec.communities", value))
    return errors


def _validate_config(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, CONFIG_TYPES) + not_supported(spec, CONFIG_NOT_SUPPORTED)
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
    errors += _services(spec) + _communities(spec)
    errors += secret_ref("spec.nodeMeshPassword", spec.get("nodeMeshPassword"))
    errors += duration("spec.nodeMeshMaxRestartTime", spec.get("nodeMeshMaxRestartTime"))
    errors += fields.string_list("spec.ignoredInterfaces", spec.get("ignoredInterfaces"))
    for i, pattern in enumerate(spec.get("ignoredInterfaces") or []):
        if isinstance(pattern, str) and (not pattern or '"' in pattern):
            errors.append(FieldError(f"spec.ignoredInterfaces[{i}]", "must be an interface name or pattern", pattern))
    if res.name.startswith("node."):
        errors += [FieldError(f"spec.{k}", "may be set in the cluster-wide 'default' BGPConfiguration only", spec[k])
                   for k in CLUSTER_ONLY if spec.get(k) is not None]
    return errors


def _config_related(res: Resource, listing: Callable[[str], list[Resource]]) -> list[FieldError]:
    """bindMode NodeIP cannot hold beside BGPPeers with sourceAddress None in BIRD 2."""
    if res.spec.get("bindMode") != "NodeIP":
        return []
    unbound = sorted(p.name for p in listing("bgppeers") if p.spec.get("sourceAddress") == "None")
    if unbound:
        return [FieldError("spec.bindMode", f"NodeIP is not supported by this calico-node while BGPPeers "
                           f"{', '.join(unbound)} have sourceAddress None: {BIND_CONFLICT}", "NodeIP")]
    return []


def _dash(value: object) -> str:
    if value is None or value == "":
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)


BGPCONFIGURATION = register(Kind(
    name="BGPConfiguration",
    plural="bgpconfigurations",
    aliases=("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
    namespaced=False,
    spec_fields=frozenset({*CONFIG_TYPES, *CONFIG_NOT_SUPPORTED}),
    headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
    wide_headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
    columns={
        "NAME": lambda r, c: r.name,
        "LOGSEVERITY": lambda r, c: str(r.spec.get("logSeverityScreen") or ""),
        "MESHENABLED": lambda r, c: _dash(r.spec.get("nodeToNodeMeshEnabled")),
        "ASNUMBER": lambda r, c: _dash(r.spec.get("asNumber")),
    },
    validate_spec=_validate_config,
    check_related=_config_related,
))
