"""What `calicoctl ipam check` finds: IPAM records and the workloads they should match, from one snapshot.

`load` reads blocks, handles, WorkloadEndpoints, Nodes and pools at one etcd
revision (so they agree with each other); `analyse` is pure. An allocation is
*in use* when a WorkloadEndpoint lists its address and belongs to the
allocation's container (or a Node names it as its tunnel address); otherwise
it is an orphan (leaked: e.g. a plugin killed between IPAM and the endpoint).
Also found: endpoint addresses not allocated to that endpoint, and handles
whose block counts do not match the blocks (a handle holding nothing is
leaked). Addresses released but still cooling down (ipCooldownSeconds) are listed as such, never as
leaks, as real calicoctl does (`coolingDown: true`); one released in the future says the clocks
disagree, which real calicoctl calls an invalid block. The report (`-o FILE`, JSON) lists the
orphans with handle, node and the handle's revision, which `ipam release --from-report` re-checks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field

from cni_calico import __version__, keys
from cni_calico.ctl.kinds.bgp import NODE
from cni_calico.ctl.kinds.workload import WORKLOADENDPOINT
from cni_calico.resources import IPPOOL, Resource, from_stored
from cni_calico.v3 import timestamp
from ipam.allocator import Block
from ipam.store import Handle

log = logging.getLogger(__name__)


@dataclass
class Allocation:
    ip: str
    block: str
    handle: str
    node: str = ""
    containerID: str = ""  # noqa: N815 - the report's JSON field names
    pod: str = ""
    namespace: str = ""
    creationTimestamp: str = ""  # noqa: N815
    handleRevision: int = 0  # noqa: N815
    owners: list[str] = field(default_factory=list)


@dataclass
class Cooling:
    """A released address resting for ipCooldownSeconds before it can be assigned again."""

    ip: str
    block: str
    releasedAt: str  # noqa: N815
    coolingDown: bool = True  # noqa: N815 - real calicoctl's report field


@dataclass
class Snapshot:
    revision: int
    blocks: list[Block]
    handles: list[Handle]
    endpoints: list[Resource]
    nodes: list[Resource]
    pools: list[Resource]
    reserved: list = field(default_factory=list)  # the IPReservations' networks (ipaddress), collapsed


@dataclass
class Findings:
    allocations: list[Allocation]
    orphans: list[Allocation]
    endpoint_problems: list[dict]  # {ip, endpoint, problem}
    handle_problems: list[dict]  # {handle, problem}
    leaked_handles: list[Handle]
    cooling: list[Cooling] = field(default_factory=list)
    block_problems: list[dict] = field(default_factory=list)  # {block, problem}

    @property
    def problems(self) -> int:
        return len(self.orphans) + len(self.endpoint_problems) + len(self.handle_problems) + len(self.block_problems)


def load(ds) -> Snapshot:
    """Everything the check compares, read at one revision."""
    revision = ds.revision()

    def listing(prefix: str):
        return ds.list(prefix, revision=revision)

    blocks = [Block.from_dict(kv.value) for f in (4, 6) for kv in listing(keys.block_dir(f))]
    handles = [Handle.from_kv(kv) for kv in listing(keys.handle_dir())]
    weps, nodes, pools = ([from_stored(kind, kv.value, kv.mod_revision)
                           for kv in listing(keys.resource_dir(kind.plural))]
                          for kind in (WORKLOADENDPOINT, NODE, IPPOOL))
    nets = []
    for kv in listing(keys.resource_dir("ipreservations")):
        for cidr in (kv.value.get("spec") or {}).get("reservedCIDRs") or []:
            try:
                nets.append(ipaddress.ip_network(str(cidr), strict=False))
            except ValueError:
                log.warning("ignoring IPReservation entry %r: not a CIDR", cidr)
    reserved = [*ipaddress.collapse_addresses(n for n in nets if n.version == 4),
                *ipaddress.collapse_addresses(n for n in nets if n.version == 6)]
    return Snapshot(revision, blocks, handles, weps, nodes, pools, reserved)


def endpoint_ips(wep: Resource) -> list[str]:
    out = []
    for net in wep.spec.get("ipNetworks") or []:
        try:
            out.append(str(ipaddress.ip_interface(str(net)).ip))
        except ValueError:
            log.warning("%s has a malformed address %r", wep.ident, net)
    return out


def node_tunnel_ips(node: Resource) -> list[str]:
    bgp = node.spec.get("bgp") if isinstance(node.spec.get("bgp"), dict) else {}
    out = []
    for value in (node.spec.get("ipv4VXLANTunnelAddr"), node.spec.get("ipv6VXLANTunnelAddr"),
                  bgp.get("ipv4IPIPTunnelAddr")):
        if not value:
            continue
        try:
            out.append(str(ipaddress.ip_interface(str(value)).ip))
        except ValueError:
            log.warning("%s has a malformed tunnel address %r", node.ident, value)
    return out


def container_of(handle: str) -> str:
    """The container of a CNI handle, `<network>.<container ID>` (Calico records no containerID)."""
    return handle.split(".", 1)[1] if "." in handle else ""


def belongs(alloc: Allocation, container_id: str) -> bool:
    """Whether an endpoint of this container is the allocation's owner."""
    if not container_id:
        return False
    return alloc.containerID == container_id or alloc.handle.endswith(f".{container_id}")


def cooling(snap: Snapshot, now: float | None = None) -> tuple[list[Cooling], list[dict]]:
    """The cooling-down addresses, and the blocks with a release in the future (clock skew)."""
    import time

    from cni_calico.v3 import parse_timestamp

    now = time.time() if now is None else now
    out, problems = [], []
    for block in snap.blocks:
        future = ""
        for ordinal in range(len(block.allocations)):
            released = block.cooling(ordinal)
            if released:
                out.append(Cooling(block.ip_at(ordinal), block.cidr, released))
                if parse_timestamp(released) > now + 1:
                    future = released
        if future:
            problems.append({"block": block.cidr, "problem": f"has an address released in the future ({future}): "
                             "are the nodes' clocks skewed?"})
    return out, problems


def allocations(snap: Snapshot) -> list[Allocation]:
    revisions = {h.handle_id: h.mod_revision for h in snap.handles}
    out = []
    for block in snap.blocks:
        for ordinal, index in enumerate(block.allocations):
            if index is None or block.cooling(ordinal):
                continue  # free, or released and cooling down (ipCooldownSeconds): not a leak
            attrs = block.attributes[index] if index < len(block.attributes or []) else {}
            extra = dict(attrs.get("secondary") or {})
            handle = str(attrs.get("handle_id") or "")
            out.append(Allocation(
                ip=block.ip_at(ordinal), block=block.cidr, handle=handle,
                node=str(extra.get("node") or block.node or ""),
                containerID=str(extra.get("containerID") or container_of(str(handle or ""))),
                pod=str(extra.get("pod") or ""),
                namespace=str(extra.get("namespace") or ""), creationTimestamp=str(extra.get("timestamp") or ""),
                handleRevision=revisions.get(handle, 0)))
    return out


UNFINISHED_GRACE = 60.0  # seconds an ADD may take before its unfinished endpoint counts as abandoned


def abandoned(wep: Resource, grace: float = UNFINISHED_GRACE, now: float | None = None) -> bool:
    """An endpoint written by an ADD that never finished (killed after its IPAM commit): it does
    not own its addresses. Younger than `grace` seconds it may still be an ADD in progress."""
    import calendar
    import time

    from cni_calico.endpoints import unfinished_since

    since = unfinished_since({"metadata": wep.metadata})
    if not since:
        return False
    try:
        written = calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return True
    return (time.time() if now is None else now) - written >= grace


def analyse(snap: Snapshot, grace: float = UNFINISHED_GRACE) -> Findings:
    allocs = allocations(snap)
    by_ip = {a.ip: a for a in allocs}
    endpoint_problems = []
    for wep in snap.endpoints:
        if abandoned(wep, grace):
            continue  # its addresses are leaked (an ADD killed after its commit): reported as orphans
        who = f"Workload({wep.namespace}/{wep.name})"
        container = str(wep.spec.get("containerID") or "")
        for ip in endpoint_ips(wep):
            alloc = by_ip.get(ip)
            if alloc is None:
                endpoint_problems.append({"ip": ip, "endpoint": who, "problem": "not allocated in IPAM"})
            elif belongs(alloc, container):
                alloc.owners.append(who)
            else:
                endpoint_problems.append({"ip": ip, "endpoint": who,
                                          "problem": f"allocated to another handle ({alloc.handle})"})
    for node in snap.nodes:
        for ip in node_tunnel_ips(node):
            alloc = by_ip.get(ip)
            if alloc and (alloc.node == node.name or alloc.handle.endswith(f"-tunnel-addr-{node.name}")):
                alloc.owners.append(f"Node({node.name})")
    orphans = [a for a in allocs if not a.owners]
    handle_problems, leaked = _check_handles(snap, allocs)
    resting, block_problems = cooling(snap)
    return Findings(allocs, orphans, endpoint_problems, handle_problems, leaked, resting, block_problems)


def _check_handles(snap: Snapshot, allocs: list[Allocation]) -> tuple[list[dict], list[Handle]]:
    held: dict[str, dict[str, int]] = {}
    for a in allocs:
        counts = held.setdefault(a.handle, {})
        counts[a.block] = counts.get(a.block, 0) + 1
    blocks = {b.cidr for b in snap.blocks}
    known = {h.handle_id for h in snap.handles}
    problems, leaked = [], []
    for h in snap.handles:
        actual = held.get(h.handle_id, {})
        if not actual:
            leaked.append(h)
            problems.append({"handle": h.handle_id, "problem": "holds no address in any block (leaked handle)"})
            continue
        for cidr, count in sorted(h.blocks.items()):
            if cidr not in blocks:
                problems.append({"handle": h.handle_id, "problem": f"points at block {cidr}, which does not exist"})
            elif actual.get(cidr, 0) != count:
                problems.append({"handle": h.handle_id, "problem": (
                    f"counts {count} address(es) in block {cidr}, which holds {actual.get(cidr, 0)} for it")})
        for cidr in sorted(set(actual) - set(h.blocks)):
            problems.append({"handle": h.handle_id, "problem": f"holds addresses in block {cidr} it does not list"})
    for handle in sorted(set(held) - known):
        problems.append({"handle": handle, "problem": "is used in blocks but has no handle record"})
    return problems, leaked


def report(snap: Snapshot, found: Findings) -> dict:
    return {
        "version": __version__,
        "revision": snap.revision,
        "generated": timestamp(),
        "orphans": [{k: v for k, v in asdict(a).items() if k != "owners"} for a in found.orphans],
        "leakedHandles": [{"handle": h.handle_id, "revision": h.mod_revision} for h in found.leaked_handles],
        "endpointProblems": found.endpoint_problems,
        "handleProblems": found.handle_problems,
        "coolingDown": [asdict(c) for c in found.cooling],
        "blockProblems": found.block_problems,
    }


def print_check(snap: Snapshot, found: Findings, show_all: bool = False) -> None:
    active = [p for p in snap.pools if not p.spec.get("disabled")]
    workload_ips = sum(len(endpoint_ips(w)) for w in snap.endpoints)
    tunnel_ips = sum(len(node_tunnel_ips(n)) for n in snap.nodes)
    print("Checking IPAM for inconsistencies...\n")
    print(f"Found {len(snap.blocks)} IPAM blocks recording {len(found.allocations)} allocations.")
    if show_all:
        for a in found.allocations:
            print(f"  {a.ip} allocated; handle {a.handle}, node {a.node or '-'}, used by {', '.join(a.owners) or '-'}")
    print(f"Found {len(active)} active IP pools, {len(snap.handles)} handles.")
    print(f"Found {workload_ips} workload IPs and {tunnel_ips} node tunnel IPs.\n")
    print("Scanning for IPs that are allocated but not actually in use...")
    for a in found.orphans:
        print(f"  {a.ip} leaked; handle {a.handle}, node {a.node or '-'}"
              + (f", pod {a.namespace}/{a.pod}" if a.pod else f", container {a.containerID or '-'}"))
    print(f"Found {len(found.orphans)} IPs that are allocated in IPAM but not actually in use.")
    if show_all:
        for c in found.cooling:
            print(f"  {c.ip} cooling down since {c.releasedAt}")
    print(f"Found {len(found.cooling)} IPs released and cooling down (ipCooldownSeconds); not leaks.")
    print("Scanning for IPs that are in use by a workload but not allocated to it in IPAM...")
    for p in found.endpoint_problems:
        print(f"  {p['ip']} in use by {p['endpoint']}: {p['problem']}")
    print(f"Found {len(found.endpoint_problems)} in-use IPs that have no matching IPAM allocation.")
    print("Scanning for IPAM handles that do not match their blocks...")
    for p in found.handle_problems:
        print(f"  handle {p['handle']} {p['problem']}")
    print(f"Found {len(found.handle_problems)} handle problems ({len(found.leaked_handles)} handles hold no address).")
    for p in found.block_problems:
        print(f"  block {p['block']} {p['problem']}")
    print(f"Check complete; found {found.problems} problems.")


def write_report(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
