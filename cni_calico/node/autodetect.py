"""The node's own address: given by IP, or found by IP_AUTODETECTION_METHOD (as calico-node does); the
interfaces' addresses host endpoints are found by."""

from __future__ import annotations

import ipaddress
import re

# Interfaces that never carry the node's address (Calico's defaults).
SKIPPED = re.compile(r"^(lo|docker.*|cali.*|vxlan.*|tunl.*|cni.*|flannel.*|virbr.*|veth.*|kube-ipvs.*|"
                     r"br-.*|weave.*|nodelocaldns.*|dummy.*)$")


class AutodetectError(RuntimeError):
    pass


def _addresses(ipr, family: int) -> list[tuple[str, str]]:
    """(interface name, address/len) for every global address, in interface order."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    out = []
    for addr in sorted(ipr.get_addr(family=family), key=lambda a: a["index"]):
        if addr["scope"] != 0:  # global only
            continue
        out.append((names.get(addr["index"], ""), f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"))
    return out


def interface_addresses() -> dict[str, frozenset[str]]:
    """Every interface of this namespace but workloads' (cali*) with its addresses: where calico-node
    finds the interfaces of host endpoints named by their expectedIPs alone (as Felix)."""
    from pyroute2 import IPRoute

    out: dict[str, set[str]] = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr():
            name = names.get(addr["index"]) or ""
            if name and not name.startswith("cali"):
                out.setdefault(name, set()).add(str(addr.get_attr("IFA_ADDRESS")))
    return {name: frozenset(held) for name, held in out.items()}


def detect(method: str, family: int = 4) -> str:
    """Returns "address/len" for the method, or raises AutodetectError saying what was looked at."""
    from pyroute2 import IPRoute

    fam = 2 if family == 4 else 10
    with IPRoute() as ipr:
        candidates = _addresses(ipr, fam)
        if method.startswith("can-reach="):
            dest = method.split("=", 1)[1]
            try:
                route = ipr.route("get", dst=dest)[0]
            except Exception as exc:  # noqa: BLE001 - any netlink failure means "cannot reach"
                raise AutodetectError(f"no route to {dest} ({exc})") from None
            src = route.get_attr("RTA_PREFSRC")
            for _, cidr in candidates:
                if cidr.split("/")[0] == src:
                    return cidr
            raise AutodetectError(f"the route to {dest} uses source {src}, which is on no interface")
    if method.startswith("interface="):
        pattern = re.compile(method.split("=", 1)[1])
        chosen = [c for name, c in candidates if pattern.fullmatch(name)]
    elif method.startswith("skip-interface="):
        pattern = re.compile(method.split("=", 1)[1])
        chosen = [c for name, c in candidates if not pattern.fullmatch(name) and not SKIPPED.match(name)]
    else:
        chosen = [c for name, c in candidates if not SKIPPED.match(name)]
    chosen = [c for c in chosen if not ipaddress.ip_interface(c).ip.is_link_local]
    if not chosen:
        seen = ", ".join(f"{n} {c}" for n, c in candidates) or "no global addresses"
        raise AutodetectError(f"{method} found no IPv{family} address (saw: {seen})")
    return chosen[0]
