"""The choice of IP pools for one request (pure): named pools, or every enabled pool selecting the node."""

from __future__ import annotations

import logging

from cni_calico.v3 import ALL, IPPool
from ipam.allocator import network
from ipam.errors import InvalidRequest

log = logging.getLogger(__name__)


def parse_pools(values: list[tuple[str, dict]]) -> list[IPPool]:
    """Pools from (key, stored value) pairs; a malformed one is logged and left out."""
    out = []
    for key, value in values:
        try:
            out.append(IPPool.from_value(value))
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("ignoring malformed IPPool at %s: %s", key, exc)
    return out


def selects(selector: str, labels: dict[str, str]) -> bool:
    """A pool's nodeSelector in Calico's selector language; one that does not parse selects no node,
    so a pool is never used by mistake."""
    if selector.strip() in ("", ALL):
        return True  # the common case, without loading the selector parser on the plugin's hot path
    from cni_calico.selector import SelectorError, matches

    try:
        return matches(selector or ALL, labels)
    except SelectorError:
        return False


def selects_by_label(pools: list[IPPool]) -> bool:
    """Whether choosing among these pools needs the node's labels (a read the common path skips)."""
    return any(p.node_selector.strip() not in ("", ALL, "!all()") for p in pools)


def select_pools(pools: list[IPPool], requested: list[str], family: int, node_labels: dict[str, str],
                 use: str = "Workload", namespace_labels: dict[str, str] | None = None) -> list[IPPool]:
    """Pools named (by name or CIDR) in `requested`, else every enabled pool selecting this node that
    allows `use` (an IPPool's allowedUses: Workload, Tunnel) and is assigned from automatically
    (assignmentMode Automatic; a Manual pool only when named); with the namespace's labels known (a
    Kubernetes pod), its namespaceSelector must select the namespace too."""
    same_family = [p for p in pools if p.family == family]
    if requested:
        chosen = []
        for want in requested:
            match = [p for p in same_family if want in (p.name, p.cidr) or _same_cidr(want, p.cidr)]
            if not match:
                known = ", ".join(f"{p.name} ({p.cidr})" for p in same_family) or "none"
                raise InvalidRequest(f"requested IPv{family} pool {want!r} does not exist", f"pools: {known}")
            if match[0].disabled:
                raise InvalidRequest(f"requested IPv{family} pool {want!r} is disabled")
            if use not in match[0].allowed_uses:
                raise InvalidRequest(f"requested IPv{family} pool {want!r} does not allow {use} addresses",
                                     f"its allowedUses: {', '.join(match[0].allowed_uses)}")
            chosen.append(match[0])
        return chosen
    return [p for p in same_family if not p.disabled and use in p.allowed_uses and p.assignment_mode == "Automatic"
            and selects(p.node_selector, node_labels)
            and (namespace_labels is None or not p.namespace_selector
                 or selects(p.namespace_selector, namespace_labels))]


def _same_cidr(a: str, b: str) -> bool:
    try:
        return network(a) == network(b)
    except ValueError:
        return False
