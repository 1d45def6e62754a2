"""HostEndpoint: a host's own interface ("*": every one) that policy applies to (cni_calico.policy.hostep).

Pure. The spec is Calico's: `node` (required: the calico-node that polices it), `interfaceName`
(a Linux interface name, or "*") and/or `expectedIPs` (addresses that join selector sets; at least
one of the two, as Calico's schema), `profiles` (names) and `ports` (named ports: name, protocol
TCP/UDP/SCTP, port 1-65535). Each field is checked on its own, naming the field. The columns are
real calicoctl's: NAME, NODE; wide NAME, NODE, INTERFACE, IPS, PROFILES.
"""

from __future__ import annotations

import re

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register

SPEC_FIELDS = frozenset({"node", "interfaceName", "expectedIPs", "profiles", "ports"})
INTERFACE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")  # Calico's interfaceRegex; "*" besides
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _validate(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"node": str, "interfaceName": str, "expectedIPs": list, "profiles": list,
                                          "ports": list})
    if errors:
        return errors
    node = spec.get("node")
    if not node:
        errors.append(FieldError("spec.node", "must name the node whose calico-node polices the endpoint"))
    else:
        errors += fields.name("spec.node", node)
    iface = spec.get("interfaceName")
    if iface and iface != "*" and not INTERFACE.match(iface):
        errors.append(FieldError("spec.interfaceName", "must be '*' or an interface name of at most 15 letters, "
                                 "digits, '_', '.' or '-'", iface))
    if not iface and not spec.get("expectedIPs"):
        errors.append(FieldError("spec.interfaceName", "at least one of interfaceName or expectedIPs must be "
                                 "specified"))
    for i, ip in enumerate(spec.get("expectedIPs") or []):
        errors += fields.ip(f"spec.expectedIPs[{i}]", ip)
    for i, profile in enumerate(spec.get("profiles") or []):
        errors += fields.name(f"spec.profiles[{i}]", profile)
    for i, port in enumerate(spec.get("ports") or []):
        errors += _port(f"spec.ports[{i}]", port)
    return errors


def _port(field: str, value: object) -> list[FieldError]:
    if not isinstance(value, dict):
        return [FieldError(field, "must be a mapping of name, protocol and port", value)]
    errors = fields.unknown(f"{field}.", value, {"name", "protocol", "port"})
    name = value.get("name")
    if not isinstance(name, str) or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name) or len(name) > 15:
        errors.append(FieldError(f"{field}.name", "must be a port name (lowercase letters, digits and '-', "
                                 "at most 15)", name))
    errors += fields.one_of(f"{field}.protocol", value.get("protocol"), PORT_PROTOCOLS)
    if value.get("protocol") is None:
        errors.append(FieldError(f"{field}.protocol", "must be one of " + ", ".join(PORT_PROTOCOLS)))
    port = value.get("port")
    if not fields.is_int(port) or not 1 <= port <= fields.MAX_PORT:  # type: ignore[operator]
        errors.append(FieldError(f"{field}.port", f"must be a port 1-{fields.MAX_PORT}", port))
    return errors


def _join(values: object) -> str:
    return ",".join(str(v) for v in values) if isinstance(values, list) else ""


HOSTENDPOINT = register(Kind(
    name="HostEndpoint", plural="hostendpoints", namespaced=False, spec_fields=SPEC_FIELDS, validate_spec=_validate,
    aliases=("hostendpoint", "hostendpoints", "hep", "heps"),
    headings=("NAME", "NODE"), wide_headings=("NAME", "NODE", "INTERFACE", "IPS", "PROFILES"),
    columns={
        "NAME": lambda r, c: r.name,
        "NODE": lambda r, c: str(r.spec.get("node") or ""),
        "INTERFACE": lambda r, c: str(r.spec.get("interfaceName") or ""),
        "IPS": lambda r, c: _join(r.spec.get("expectedIPs")),
        "PROFILES": lambda r, c: _join(r.spec.get("profiles")),
    },
))
