"""FelixConfiguration: `default` for every node, `node.<name>` for one (it wins field by field).

Pure. calico-node honours iptablesRefreshInterval (the drift check's interval), logSeverityScreen
(its log level), natOutgoingAddress (outgoing NAT's source address), ipipEnabled / vxlanEnabled
(false: that encapsulation is never programmed, whatever the pools say; true or unset: programmed
when a pool that selects the node needs it, as Felix), prometheusMetricsEnabled /
prometheusMetricsPort (the metrics exporter), healthEnabled / healthHost / healthPort (the health
endpoint), failsafeInboundHostPorts / failsafeOutboundHostPorts (the ports no host endpoint
policy can close: a list of {protocol: TCP|UDP|SCTP, port, net}; `[]` for none) and
defaultEndpointToHostAction (Drop, Accept or Return, any case as Calico's validator: what becomes of a
workload's traffic to its own host once its egress policy allowed it; unset: Drop, as Felix). Where
calico-node's environment sets the same thing (FELIX_IPTABLESREFRESHINTERVAL, a log level variable,
FELIX_PROMETHEUSMETRICS*, FELIX_HEALTH*, FELIX_FAILSAFEINBOUNDHOSTPORTS /
FELIX_FAILSAFEOUTBOUNDHOSTPORTS, FELIX_DEFAULTENDPOINTTOHOSTACTION) the environment wins, as Felix's
does. A few fields are accepted at the one value that says what calico-node does anyway (Calico's
start-up writes them so: see cni_calico.v3.FELIX_INERT); every other field is refused naming it, never
stored and ignored.
clientv3's defaults (cni_calico.v3.FELIX_DEFAULTS) are filled in on every write, as Calico's are.
"""

from __future__ import annotations

import re

from cni_calico.resources import FieldError, Kind, Resource, register
from cni_calico.v3 import (
    ENDPOINT_TO_HOST_ACTIONS,
    FELIX_DEFAULTS,
    FELIX_HONOURED,
    FELIX_INERT,
    LOG_SEVERITIES,
    endpoint_to_host_action,
    ipv4_address,
    listen_host,
    parse_duration,
    port_number,
    proto_ports_from_config,
)

NAME = re.compile(r"^(default|node\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?)$")


def _validate(res: Resource) -> list[FieldError]:
    errors = []
    if not NAME.match(res.name):
        errors.append(FieldError("metadata.name", "a FelixConfiguration is named default or node.<node name>",
                                 res.name))
    for key, value in res.spec.items():
        if key == "iptablesRefreshInterval":
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                errors.append(FieldError(f"spec.{key}", str(exc), value))
                continue
            if not 0.5 <= seconds <= 86400:
                errors.append(FieldError(f"spec.{key}", "must be from 500ms to 24h", value))
        elif key == "natOutgoingAddress":
            if not ipv4_address(str(value)):
                errors.append(FieldError(f"spec.{key}", "must be an IPv4 address", value))
        elif key == "healthHost":
            if not isinstance(value, str) or not listen_host(value):
                errors.append(FieldError(f"spec.{key}", "must be an IP address or localhost", value))
        elif key in ("prometheusMetricsPort", "healthPort"):
            if port_number(value) is None:
                errors.append(FieldError(f"spec.{key}", "must be a port, 1-65535", value))
        elif key in ("ipipEnabled", "vxlanEnabled", "prometheusMetricsEnabled", "healthEnabled"):
            if not isinstance(value, bool):
                errors.append(FieldError(f"spec.{key}", "must be true or false", value))
        elif key in ("failsafeInboundHostPorts", "failsafeOutboundHostPorts"):
            try:
                proto_ports_from_config(value)
            except ValueError as exc:
                errors.append(FieldError(f"spec.{key}", str(exc), value))
        elif key == "defaultEndpointToHostAction":
            if value != "" and endpoint_to_host_action(value) is None:
                errors.append(FieldError(f"spec.{key}", f"must be one of {', '.join(ENDPOINT_TO_HOST_ACTIONS)}",
                                         value))
        elif key == "logSeverityScreen":
            if value not in LOG_SEVERITIES:
                errors.append(FieldError(f"spec.{key}", f"must be one of {', '.join(LOG_SEVERITIES)}", value))
        elif key in FELIX_INERT:
            if value != FELIX_INERT[key]:
                errors.append(FieldError(f"spec.{key}", f"not supported by this calico-node: only "
                                         f"{FELIX_INERT[key]!r}, what it does", value))
        else:
            errors.append(FieldError(f"spec.{key}", "not supported by this calico-node (it honours "
                                     f"{', '.join(FELIX_HONOURED)})", value))
    for key, value in FELIX_DEFAULTS.items():
        res.spec.setdefault(key, value)
    return errors


FELIXCONFIGURATION = register(Kind(
    name="FelixConfiguration",
    plural="felixconfigurations",
    aliases=("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs"),
    namespaced=False,
    spec_fields=None,
    headings=("NAME",),
    wide_headings=("NAME", "REFRESH", "LOGSEVERITY"),
    columns={
        "NAME": lambda r, c: r.name,
        "REFRESH": lambda r, c: str(r.spec.get("iptablesRefreshInterval") or ""),
        "LOGSEVERITY": lambda r, c: str(r.spec.get("logSeverityScreen") or ""),
    },
    validate_spec=_validate,
))
