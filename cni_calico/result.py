"""CNI results: held in the newest spec's shape, rendered once per caller's version.

Versions 0.1.0/0.2.0 carry `ip4`/`ip6` objects; 0.3.x/0.4.0 carry `interfaces`
and `ips` with a `version` field; 1.x drops `version`. `from_dict` reads any of
them back (a `prevResult`, or a delegated IPAM plugin's output).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cni_calico.versions import LATEST_VERSION, SUPPORTED_VERSIONS  # noqa: F401 - re-exported


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def is_legacy(version: str) -> bool:
    """True for 0.1.0/0.2.0, whose results have `ip4`/`ip6` instead of `ips`."""
    return version_tuple(version) < (0, 3, 0)


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0


@dataclass
class IPConfig:
    address: str  # CIDR notation: "10.0.0.5/32"
    gateway: str = ""
    interface: int | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass
class Route:
    dst: str
    gw: str = ""

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict = field(default_factory=dict)

    def to_dict(self, version: str) -> dict:
        if is_legacy(version):
            return self._legacy_dict(version)
        out: dict = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_interface_dict(i, version) for i in self.interfaces]
        out["ips"] = [_ip_dict(ip, version) for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_dict(r) for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    def _legacy_dict(self, version: str) -> dict:
        out: dict = {"cniVersion": version}
        for family in (4, 6):
            ips = [ip for ip in self.ips if ip.family == family]
            if not ips:
                continue
            # The old shape has room for one address per family: the first one.
            entry: dict = {"ip": ips[0].address}
            if ips[0].gateway:
                entry["gateway"] = ips[0].gateway
            routes = [_route_dict(r) for r in self.routes if r.family == family]
            if routes:
                entry["routes"] = routes
            out[f"ip{family}"] = entry
        out["dns"] = dict(self.dns)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        """Reads a result of any supported version (raises KeyError/TypeError/ValueError on junk)."""
        if not isinstance(data, dict):
            raise TypeError("a result must be a JSON object")
        result = cls(dns=dict(data.get("dns") or {}))
        if "ips" in data or "interfaces" in data:
            for i in data.get("interfaces") or []:
                result.interfaces.append(
                    Interface(str(i["name"]), str(i.get("mac", "")), str(i.get("sandbox", "")), int(i.get("mtu", 0)))
                )
            for ip in data.get("ips") or []:
                result.ips.append(IPConfig(_cidr(ip["address"]), str(ip.get("gateway", "")), ip.get("interface")))
            for r in data.get("routes") or []:
                result.routes.append(Route(str(r["dst"]), str(r.get("gw", ""))))
            return result
        for family in ("ip4", "ip6"):
            entry = data.get(family)
            if not entry:
                continue
            result.ips.append(IPConfig(_cidr(entry["ip"]), str(entry.get("gateway", ""))))
            for r in entry.get("routes") or []:
                result.routes.append(Route(str(r["dst"]), str(r.get("gw", ""))))
        return result


def _cidr(value: object) -> str:
    """An address in CIDR form, checked (raises ValueError on anything else)."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not an address in CIDR notation")
    ipaddress.ip_interface(value)
    return value


def _interface_dict(iface: Interface, version: str) -> dict:
    out = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if iface.mtu and version_tuple(version) >= (1, 1, 0):
        out["mtu"] = iface.mtu
    return out


def _ip_dict(ip: IPConfig, version: str) -> dict:
    out: dict = {}
    if version_tuple(version) < (1, 0, 0):
        out["version"] = str(ip.family)
    out["address"] = ip.address
    if ip.gateway:
        out["gateway"] = ip.gateway
    if ip.interface is not None:
        out["interface"] = ip.interface
    return out


def _route_dict(route: Route) -> dict:
    out = {"dst": route.dst}
    if route.gw:
        out["gw"] = route.gw
    return out
