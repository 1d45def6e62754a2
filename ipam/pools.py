"""IP pools as IPAM sees them, and the choice of pools for one request (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass

from cni_calico.errors import INVALID_CONFIG, CniError
from ipam.allocator import network

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


@dataclass
class Pool:
    name: str
    cidr: str
    block_size: int
    disabled: bool = False
    node_selector: str = "all()"
    ipip_mode: str = "Never"  # Always | CrossSubnet | Never
    vxlan_mode: str = "Never"
    disable_bgp_export: bool = False

    @property
    def family(self) -> int:
        return network(self.cidr).version

    def contains(self, cidr: str) -> bool:
        inner, outer = network(cidr), network(self.cidr)
        return inner.version == outer.version and inner.subnet_of(outer)


def pool_from_resource(resource: dict) -> Pool:
    spec = resource.get("spec") or {}
    cidr = str(network(spec["cidr"]))
    family = network(cidr).version
    return Pool(
        name=resource["metadata"]["name"],
        cidr=cidr,
        block_size=int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE[family]),
        disabled=spec.get("disabled") in (True, "true", "True"),
        node_selector=str(spec.get("nodeSelector") or "all()"),
        ipip_mode=str(spec.get("ipipMode") or "Never"),
        vxlan_mode=str(spec.get("vxlanMode") or "Never"),
        disable_bgp_export=spec.get("disableBGPExport") in (True, "true"),
    )


def node_selected(selector: str, labels: dict[str, str]) -> bool:
    """A pool's nodeSelector in Calico's selector language; one that does not parse selects no node,
    so a pool is never used by mistake."""
    if selector.strip() in ("", "all()"):
        return True  # the common case, without loading the selector parser on the plugin's hot path
    from cni_calico.selector import SelectorError, matches

    try:
        return matches(selector or "all()", labels)
    except SelectorError:
        return False


def select_pools(pools: list[Pool], requested: list[str], family: int, node_labels: dict[str, str]) -> list[Pool]:
    """Pools named (by name or CIDR) in `requested`, else every enabled pool selecting this node."""
    same_family = [p for p in pools if p.family == family]
    if requested:
        chosen = []
        for want in requested:
            match = [p for p in same_family if want in (p.name, p.cidr) or _same_cidr(want, p.cidr)]
            if not match:
                known = ", ".join(f"{p.name} ({p.cidr})" for p in same_family) or "none"
                raise CniError(INVALID_CONFIG, f"requested IPv{family} pool {want!r} does not exist", f"pools: {known}")
            if match[0].disabled:
                raise CniError(INVALID_CONFIG, f"requested IPv{family} pool {want!r} is disabled")
            chosen.append(match[0])
        return chosen
    return [p for p in same_family if not p.disabled and node_selected(p.node_selector, node_labels)]


def _same_cidr(a: str, b: str) -> bool:
    try:
        return network(a) == network(b)
    except ValueError:
        return False
