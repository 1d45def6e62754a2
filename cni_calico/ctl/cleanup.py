"""`calicoctl delete` for the kinds whose deletion must clean up after them: Node and IPPool.

Node, as Calico's libcalico-go does: release the addresses held for the node's
WorkloadEndpoints (only where the allocation still belongs to that endpoint's
container) and its tunnel addresses, delete those endpoints, release the node's
block affinities (an empty block is deleted; a block still holding addresses
stays, affine to no node, its addresses valid), delete the BGPPeers of that
node and its `node.<name>` BGPConfiguration, and the Node last.

IPPool: refused while any address of the pool is allocated, unless forced.
Then, as Calico: disable the pool (no new allocation), release its blocks'
affinities (deleting the empty blocks), delete the pool. With --force, blocks
that still hold addresses stay (unaffine) so those addresses remain valid and
releasable; `calicoctl ipam show --show-blocks` lists them.

The resource itself is deleted last and every step is a guarded transaction,
so an interrupted delete can simply be run again. A stale resourceVersion is
refused before anything is touched.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from cni_calico.ctl.config import ResourceStore
from cni_calico.ctl.kinds.bgp import BGPPEER, NODE
from cni_calico.ctl.kinds.bgpconfig import BGPCONFIGURATION
from cni_calico.ctl.kinds.workload import WORKLOADENDPOINT
from cni_calico.resources import IPPOOL, DoesNotExist, Resource, ResourceError

log = logging.getLogger(__name__)


class PoolInUse(ResourceError):
    template = "cannot delete {}"


@dataclass
class Cleaned:
    """What a delete cleaned up besides the resource, said in one line."""

    released: list[str] = field(default_factory=list)
    endpoints: int = 0
    affinities: int = 0
    blocks_deleted: int = 0
    blocks_kept: int = 0
    peers: int = 0
    configs: int = 0

    def summary(self, ident: str, addresses: bool = True) -> str:
        """One line of what was cleaned; "" when there was nothing to clean."""
        if not (self.released or self.endpoints or self.affinities or self.blocks_deleted or self.blocks_kept
                or self.peers or self.configs):
            return ""
        parts = [f"released {_count(len(self.released), 'address', 'addresses')}"
                 + (f" ({', '.join(self.released)})" if self.released else "")] if addresses else []
        if self.endpoints:
            parts.append(f"deleted {_count(self.endpoints, 'WorkloadEndpoint')}")
        parts.append(f"released {_count(self.affinities, 'block affinity', 'block affinities')}")
        parts.append(f"deleted {_count(self.blocks_deleted, 'empty block')}")
        if self.blocks_kept:
            parts.append(f"kept {_count(self.blocks_kept, 'block')} still holding addresses (now affine to no node)")
        if self.peers:
            parts.append(f"deleted {_count(self.peers, 'BGPPeer')}")
        if self.configs:
            parts.append(f"deleted {_count(self.configs, 'BGPConfiguration')}")
        return f"{ident}: " + ", ".join(parts)


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def delete(store: ResourceStore, res: Resource, force: bool = False) -> tuple[Resource, str]:
    """Deletes one resource; returns it and what else was cleaned ("" for the plain kinds)."""
    if res.kind is NODE:
        return delete_node(store, res)
    if res.kind is IPPOOL:
        return delete_pool(store, res, force)
    return store.delete(res), ""


def delete_node(store: ResourceStore, res: Resource) -> tuple[Resource, str]:
    from ipam.store import IpamStore

    node = store.current(res)
    ipam = IpamStore(store.ds)
    done = Cleaned()
    held_by = holders(ipam)
    endpoints = [w for w in store.list(WORKLOADENDPOINT) if w.spec.get("node") == node.name]
    for wep in endpoints:
        for ip in _ips(wep.spec.get("ipNetworks")):
            held = held_by.get(ip)
            if held and _belongs(held, str(wep.spec.get("containerID") or "")):
                if ipam.release_ip_of_handle(ip, held[0]):
                    done.released.append(ip)
    bgp = node.spec.get("bgp") if isinstance(node.spec.get("bgp"), dict) else {}
    for ip in _ips([node.spec.get("ipv4VXLANTunnelAddr"), bgp.get("ipv4IPIPTunnelAddr")]):
        held = held_by.get(ip)
        if held and (held[1].get("node") == node.name or held[0].endswith(f"-tunnel-addr-{node.name}")):
            if ipam.release_ip_of_handle(ip, held[0]):
                done.released.append(ip)
    for wep in endpoints:
        if _delete_quietly(store, wep):
            done.endpoints += 1
    for _, cidr in ipam.affinities(node.name):
        _count_affinity(done, ipam.release_affinity(node.name, cidr))
    for peer in store.list(BGPPEER):
        if peer.spec.get("node") == node.name and _delete_quietly(store, peer):
            done.peers += 1
    config = Resource(BGPCONFIGURATION, {"name": f"node.{node.name}"}, {})
    if store.get(config) is not None and _delete_quietly(store, config):
        done.configs += 1
    deleted = store.delete(res)
    return deleted, done.summary(res.ident)


def delete_pool(store: ResourceStore, res: Resource, force: bool) -> tuple[Resource, str]:
    from ipam.store import IpamStore

    pool = store.current(res)
    net = ipaddress.ip_network(str(pool.spec.get("cidr")), strict=False)
    ipam = IpamStore(store.ds)
    blocks = [(b, rev) for b, rev in ipam.blocks() if _within(b.cidr, net)]
    in_use = sum(1 for b, _ in blocks for a in b.allocations if a is not None)
    if in_use and not force:
        used = sum(1 for b, _ in blocks if not b.is_empty())
        raise PoolInUse(res.ident, (
            f"{_count(in_use, 'address', 'addresses')} of {net} {'is' if in_use == 1 else 'are'} still allocated "
            f"(in {_count(used, 'block')}); delete the workloads using them first (see calicoctl ipam show "
            "--show-blocks), or use --force to delete the pool anyway (allocated addresses stay valid until released)"))
    if not pool.spec.get("disabled"):
        pool = store.replace(Resource(IPPOOL, dict(pool.metadata), {**pool.spec, "disabled": True}))
        log.info("disabled %s before deleting it", res.ident)
    done = Cleaned()
    affine = [(node, cidr) for node, cidr in ipam.affinities() if _within(cidr, net)]
    for node, cidr in affine:
        _count_affinity(done, ipam.release_affinity(node, cidr))
    released = {cidr for _, cidr in affine}
    for block, _ in blocks:
        if block.cidr not in released:  # affine to no node (or its affinity key is gone): tidy it too
            _count_affinity(done, ipam.release_affinity(block.node or "", block.cidr), affinity=False)
    deleted = store.delete(Resource(IPPOOL, {"name": res.name}, {}))
    return deleted, done.summary(res.ident, addresses=False)


def _count_affinity(done: Cleaned, outcome: str, affinity: bool = True) -> None:
    if outcome and affinity:
        done.affinities += 1
    if outcome == "deleted":
        done.blocks_deleted += 1
    elif outcome == "unaffine" or (outcome == "" and not affinity):
        done.blocks_kept += 1


def _within(cidr: str, net) -> bool:
    block = ipaddress.ip_network(cidr, strict=False)
    return block.version == net.version and block.subnet_of(net)


def holders(ipam) -> dict[str, tuple[str, dict]]:
    """Every allocated address -> (handle, secondary attributes)."""
    out: dict[str, tuple[str, dict]] = {}
    for block, _ in ipam.blocks():
        for ordinal, index in enumerate(block.allocations):
            if index is not None:
                attrs = block.attributes[index] if index < len(block.attributes or []) else {}
                out[block.ip_at(ordinal)] = (str(attrs.get("handle_id") or ""), dict(attrs.get("secondary") or {}))
    return out


def _belongs(held: tuple[str, dict], container_id: str) -> bool:
    handle, attrs = held
    if not container_id:
        return False
    return attrs.get("containerID") == container_id or handle.endswith(f".{container_id}")


def _ips(values: object) -> list[str]:
    out = []
    for value in values if isinstance(values, list) else []:
        if isinstance(value, str) and value:
            try:
                out.append(str(ipaddress.ip_interface(value).ip))
            except ValueError:
                log.warning("ignoring malformed address %r", value)
    return out


def _delete_quietly(store: ResourceStore, res: Resource) -> bool:
    try:
        store.delete(Resource(res.kind, {"name": res.name, **({"namespace": res.namespace} if res.namespace else {})},
                              {}))
        return True
    except DoesNotExist:
        return False
