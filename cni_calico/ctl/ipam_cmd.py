"""calicoctl ipam show / check / release / configure: Calico IPAM in etcd, for the operator.

Reads go straight to the blocks, handles and resources; every write is an
`ipam.store.IpamStore` guarded transaction. Release is careful by design: an
address is never released while a WorkloadEndpoint lists it, and a release
from a report re-checks each address against etcd first (same handle, handle
unchanged since the report, no endpoint now), so a report that went stale
while a pod was being set up cannot take that pod's address.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging

from cni_calico import __version__, keys
from cni_calico.ctl import CommandError, config, ipam_check, output
from cni_calico.ctl.kinds.workload import WORKLOADENDPOINT
from cni_calico.datastore import Txn, transact
from cni_calico.resources import Resource, from_stored
from cni_calico.v3 import IPAMConfig

log = logging.getLogger(__name__)


def _connect(args: argparse.Namespace):
    return config.connect(config.load(args.config))


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CommandError(f"invalid IP address: {text!r}") from None


def _pct(n: int, total: int) -> str:
    return f"{n:.5g} ({100 * n / total:.0f}%)" if total else "0"


# --- show --------------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    ds = _connect(args)
    try:
        if args.ip:
            return _show_ip(ds, _address(args.ip))
        if args.show_borrowed:
            from cni_calico.ctl import ipam_split

            print(ipam_split.show_borrowed(ds), end="")
            return 0
        if args.show_configuration:
            kv = ds.get(keys.ipam_config())
            value = IPAMConfig.from_value(kv.value if kv else None)
            rows = [["StrictAffinity", str(value.strict_affinity).lower()],
                    ["AutoAllocateBlocks", str(value.auto_allocate_blocks).lower()],
                    ["MaxBlocksPerHost", str(value.max_blocks_per_host)],
                    ["IPCooldownSeconds", str(value.ip_cooldown_seconds)]]
            print(output.box(["PROPERTY", "VALUE"], rows), end="")
            return 0
        snap = ipam_check.load(ds)
    finally:
        ds.close()
    print(_usage_table(snap, args.show_blocks), end="")
    return 0


def _usage_table(snap: ipam_check.Snapshot, show_blocks: bool) -> str:
    """Real calicoctl's table (GetUtilization): IN USE counts allocated addresses (cooling ones too),
    RESERVED those an IPReservation covers, FREE those that are neither; a pool's figures cover its
    whole CIDR, blocks carved from it or not."""
    nets = []
    for pool in snap.pools:
        try:
            nets.append(ipaddress.ip_network(str(pool.spec.get("cidr")), strict=False))
        except ValueError:
            log.warning("ignoring %s: its cidr %r is not a network", pool.ident, pool.spec.get("cidr"))
    blocks = sorted(snap.blocks, key=lambda b: (ipaddress.ip_network(b.cidr).version, ipaddress.ip_network(b.cidr)))
    rows: list[list[str]] = []

    def row(group: str, cidr: str, total: int, used: int, reserved: int, free: int) -> None:
        rows.append([group, cidr, f"{total:.5g}", _pct(used, total), _pct(reserved, total), _pct(free, total)])

    def reserved_in(net) -> int:
        return sum(_overlap(net, r) for r in snap.reserved)

    def is_reserved(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in r for r in snap.reserved)

    def block_figures(b) -> tuple[int, int, int, int]:
        size = len(b.allocations)
        free = sum(not is_reserved(b.ip_at(o)) for o in b.unallocated) if snap.reserved else b.free
        return size, size - b.free, reserved_in(ipaddress.ip_network(b.cidr)), free

    placed: set[str] = set()
    for net in sorted(nets, key=lambda n: (n.version, n)):
        inside = [b for b in blocks if _within(b.cidr, net)]
        figures = [block_figures(b) for b in inside]
        carved = sum(f[0] for f in figures)
        reserved = reserved_in(net)
        reserved_carved = sum(f[2] for f in figures)
        free = sum(f[3] for f in figures) + (net.num_addresses - carved) - (reserved - reserved_carved)
        row("IP Pool", str(net), net.num_addresses, sum(f[1] for f in figures), reserved, free)
        for b, f in zip(inside, figures, strict=True) if show_blocks else []:
            row("Block", b.cidr, *f)
        placed.update(b.cidr for b in inside)
    for b in (b for b in blocks if b.cidr not in placed) if show_blocks else []:  # the pool is gone
        row("Block", b.cidr, *block_figures(b))
    headings = ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"]
    return output.box(headings, rows, right=frozenset(range(2, 6)))


def _overlap(a, b) -> int:
    """Addresses two CIDRs share (CIDRs nest or are disjoint)."""
    if a.version != b.version or not a.overlaps(b):
        return 0
    return min(a.num_addresses, b.num_addresses)


def _within(cidr: str, net) -> bool:
    block = ipaddress.ip_network(cidr)
    return block.version == net.version and block.subnet_of(net)


def _show_ip(ds, ip: str) -> int:
    from ipam.store import IpamStore

    store = IpamStore(ds)
    for block, _ in store.blocks():
        if _within(f"{ip}/{32 if ':' not in ip else 128}", ipaddress.ip_network(block.cidr)):
            index = block.allocations[block.ordinal_of(ip)]
            if index is None:
                break
            attrs = block.attributes[index] if index < len(block.attributes or []) else {}
            print(f"IP {ip} is in use")
            print(f"Handle ID: {attrs.get('handle_id') or '<none>'}")
            secondary = attrs.get("secondary") or {}
            print("Active Owner Attributes:" if secondary else "No Active Owner attributes defined")
            for key in sorted(secondary):
                print(f"  {key}: {secondary[key]}")
            print(f"Block: {block.cidr} (affinity: {block.node or '<none>'})")
            owners = [w.ident for w in _endpoints(ds) if ip in ipam_check.endpoint_ips(w)]
            print(f"Workload endpoint: {', '.join(owners) or '<none> (ipam check reports the address as leaked)'}")
            return 0
    print(f"{ip} is not assigned")
    return 0


def _endpoints(ds) -> list[Resource]:
    return [from_stored(WORKLOADENDPOINT, kv.value, kv.mod_revision)
            for kv in ds.list(keys.resource_dir(WORKLOADENDPOINT.plural))]


# --- check -------------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    ds = _connect(args)
    try:
        snap = ipam_check.load(ds)
    finally:
        ds.close()
    found = ipam_check.analyse(snap, args.unfinished_grace)
    ipam_check.print_check(snap, found, args.show_all_ips)
    if args.output:
        ipam_check.write_report(args.output, ipam_check.report(snap, found))
        print(f"Report written to {args.output} ({len(found.orphans)} leaked IPs, "
              f"{len(found.leaked_handles)} leaked handles).")
    return 0


# --- release -----------------------------------------------------------------------------------


def run_release(args: argparse.Namespace) -> int:
    if bool(args.ip) == bool(args.from_report):
        raise CommandError("give either --ip=IP or --from-report=FILE (see calicoctl ipam release --help)")
    reports = [_read_report(path) for path in args.from_report or []]
    ip = _address(args.ip) if args.ip else ""
    for path, doc in zip(args.from_report or [], reports, strict=True):
        if doc.get("version") != __version__ and not args.force:
            raise CommandError(f"the report {path} was written by calicoctl {doc.get('version')} (this is "
                               f"{__version__}); refusing to release: run ipam check again, or use --force")
    ds = _connect(args)
    try:
        if ip:
            return _release_ip(ds, ip)
        return _release_reports(ds, args.from_report, reports)
    finally:
        ds.close()


def _release_ip(ds, ip: str) -> int:
    from ipam.store import IpamStore

    owners = [w.ident for w in _endpoints(ds) if ip in ipam_check.endpoint_ips(w)]
    if owners:
        raise CommandError(f"IP address {ip} is in use by {', '.join(owners)}: not released (delete the workload, "
                           "or its endpoint if it is gone, first)")
    if not IpamStore(ds).release_ips([ip]):
        raise CommandError(f"IP address {ip} is not assigned")
    print(f"Successfully released IP address {ip}")
    return 0


def _read_report(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise CommandError(f"cannot read report {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CommandError(f"report {path} is not JSON: {exc}") from None
    orphans = doc.get("orphans") if isinstance(doc, dict) else None
    if not isinstance(orphans, list) or not all(
            isinstance(o, dict) and isinstance(o.get("ip"), str) and isinstance(o.get("handle"), str)
            for o in orphans):
        raise CommandError(f"{path} is not a report of calicoctl ipam check -o (no valid 'orphans' list)")
    for o in orphans:
        _address(o["ip"])
    if not isinstance(doc.get("leakedHandles", []), list):
        raise CommandError(f"{path}: 'leakedHandles' must be a list")
    return doc


def _common(reports: list[dict], key: str, ident) -> list[dict]:
    """Entries present, unchanged, in every report (the last report's copy)."""
    common = {ident(e): e for e in reports[0].get(key) or []}
    for doc in reports[1:]:
        common = {ident(e): e for e in doc.get(key) or [] if ident(e) in common}
    return list(common.values())


def _release_reports(ds, paths: list[str], reports: list[dict]) -> int:
    from ipam.store import IpamStore

    store = IpamStore(ds)
    orphans = _common(reports, "orphans", lambda o: (o["ip"], o["handle"], o.get("handleRevision", 0)))
    handles = _common(reports, "leakedHandles", lambda h: (h.get("handle"), h.get("revision")))
    print(f"Releasing {len(orphans)} leaked IPs from {', '.join(paths)}...")
    released = skipped = 0
    for o in orphans:
        why = _still_leaked(ds, store, o)
        if not why and store.release_ip_of_handle(o["ip"], o["handle"]):
            released += 1
            print(f"  {o['ip']} released (handle {o['handle']}, node {o.get('node') or '-'})")
        else:
            skipped += 1
            print(f"  {o['ip']} skipped: {why or 'no longer held by handle ' + o['handle']}")
    print(f"Released {released} IPs; skipped {skipped}.")
    if handles:
        done = 0
        for h in handles:
            current = store.get_handle(str(h.get("handle")))
            if current and current.mod_revision == h.get("revision") and not store.ips_by_handle(current.handle_id) \
                    and store.delete_handle(current.handle_id, current.mod_revision):
                done += 1
        print(f"Deleted {done} leaked handles; skipped {len(handles) - done} (gone or changed since the report).")
    return 0


def _still_leaked(ds, store, orphan: dict) -> str:
    """"" when the address is still the report's orphan; else why it must be left alone."""
    ip, handle = orphan["ip"], orphan["handle"]
    # An abandoned endpoint (its ADD never finished) goes with its address; a live one keeps it.
    holders = [w for w in _endpoints(ds) if ip in ipam_check.endpoint_ips(w)]
    owners = [w.ident for w in holders if not ipam_check.abandoned(w, 0.0)]
    if owners:
        return f"in use by {', '.join(owners)} now"
    current = store.get_handle(handle)
    if (current.mod_revision if current else 0) != orphan.get("handleRevision", 0):
        return f"handle {handle} changed since the report"
    for wep in holders:
        key = keys.resource(WORKLOADENDPOINT.plural, wep.name, wep.namespace)
        rev = int(wep.metadata.get("resourceVersion") or 0)
        if rev and ds.commit(Txn().delete(key, rev)):
            print(f"  {ip}: deleted the abandoned endpoint {wep.ident}")
    return ""


# --- configure ---------------------------------------------------------------------------------


def run_configure(args: argparse.Namespace) -> int:
    changes: dict = {}
    if args.strictaffinity is not None:
        if args.strictaffinity.lower() not in ("true", "false"):
            raise CommandError("invalid value for --strictaffinity: use true or false")
        changes["strict_affinity"] = args.strictaffinity.lower() == "true"
    for flag, name in (("max_blocks_per_host", "max_blocks_per_host"), ("ip_cooldown_seconds", "ip_cooldown_seconds")):
        value = getattr(args, flag, None)
        if value is not None:
            if not value.isdigit():
                raise CommandError(f"invalid value for --{flag.replace('_', '-')}: use a number of 0 or more")
            changes[name] = int(value)
    if not changes:
        raise CommandError("at least one configuration option must be specified (--strictaffinity, "
                           "--max-blocks-per-host, --ip-cooldown-seconds)")
    ds = _connect(args)

    def attempt() -> tuple[Txn, None]:
        kv = ds.get(keys.ipam_config())
        config = dataclasses.replace(IPAMConfig.from_value(kv.value if kv else None), **changes)
        problems = config.problems()
        if problems:
            raise CommandError("; ".join(problems))
        return Txn().put(keys.ipam_config(), config.to_value(), kv.mod_revision if kv else 0), None

    try:
        transact(ds, attempt, "updating the IPAM configuration")
    finally:
        ds.close()
    for key, label in (("strict_affinity", "StrictAffinity"), ("max_blocks_per_host", "MaxBlocksPerHost"),
                       ("ip_cooldown_seconds", "IPCooldownSeconds")):
        if key in changes:
            print(f"Successfully set {label} to: {str(changes[key]).lower()}")
    return 0
