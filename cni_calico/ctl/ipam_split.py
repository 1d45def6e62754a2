"""`calicoctl ipam split N --name POOL | --cidr CIDR` and `ipam show --show-borrowed`.

Split, as Calico's (commands/ipam/split.go): only while the datastore is locked (`datastore
migrate lock`), N a power of two the pool's CIDR can hold; the pool is replaced by N pools
`split-<name>-<i>` of equal size, each a copy of its spec with its own CIDR and enabled, and the
original deleted. Ours does it in one etcd transaction guarded by the original's revision
(Calico's disables the pool, then creates and deletes one by one, so a failure midway leaves it
half done), and checks N and each new pool before anything is written (a blockSize larger than
the new pools is named). Blocks already carved from the pool stay as they are: each lies within
one of the new pools.

Borrowed, as Calico's (commands/ipam/show.go): every allocated address whose `node` attribute
names another node than its block's affinity (or whose block has none), with its allocation type
and owner; addresses allocated without a node attribute cannot be classified and are counted in a
note. Addresses cooling down after release are not allocations and are left out.
"""

from __future__ import annotations

import argparse
import ipaddress

from cni_calico import keys
from cni_calico.ctl import CommandError, config, output
from cni_calico.resources import IPPOOL, Resource, ValidationError, validate
from cni_calico.v3 import new_uid, timestamp

MAX_NAME = 253


def split_cidr(cidr: str, parts: int) -> list[str]:
    """The CIDR cut into `parts` equal networks, in address order (Calico's splitCIDR)."""
    if parts < 2 or parts & (parts - 1):
        raise CommandError(f"error splitting the CIDR {cidr} into {parts} CIDRs: number to split CIDR into is not "
                           f"a valid power of 2: {parts}")
    net = ipaddress.ip_network(cidr, strict=False)
    power = parts.bit_length() - 1
    if net.prefixlen + power > net.max_prefixlen:
        raise CommandError(f"error splitting the CIDR {cidr} into {parts} CIDRs: the CIDR {cidr} is not large "
                           f"enough to be split into {parts} parts")
    return [str(n) for n in net.subnets(prefixlen_diff=power)]


def run_split(args: argparse.Namespace) -> int:
    from cni_calico.ctl.datastore_cmd import CLUSTER_INFO
    from cni_calico.datastore import Txn

    try:
        parts = int(args.number, 10)
    except ValueError:
        raise CommandError(f"error reading number to split IP pools into. {args.number} is not a valid number: "
                           f'strconv.Atoi: parsing "{args.number}": invalid syntax') from None
    if not args.cidr and not args.name:
        raise CommandError("no name or CIDR provided. Provide a name or CIDR to denote the IP pool to split")
    ds = config.connect(config.load(args.config))
    try:
        info = ds.get(CLUSTER_INFO)
        if info is None:
            raise CommandError("error while checking if datastore was locked: error retrieving ClusterInformation: "
                               "resource does not exist: ClusterInformation(default)")
        if (info.value.get("spec") or {}).get("datastoreReady") is not False:
            raise CommandError("datastore is not locked. Run the `calicoctl datastore migrate lock` command in order "
                               "split the IP pools")
        store = config.ResourceStore(ds)
        pool = _find(store, args.name, args.cidr)
        new = _split(pool, split_cidr(str(pool.spec["cidr"]), parts))
        txn = Txn().delete(store.key(pool), int(pool.resource_version))
        for res in new:
            stored = Resource(IPPOOL, {**res.metadata, "uid": new_uid(), "creationTimestamp": timestamp()}, res.spec)
            txn.put(store.key(res), store.value(stored), 0)
        if not ds.commit(txn):
            raise CommandError(f"error splitting IP pool {pool.name}: it changed meanwhile, or a pool named "
                               f"{new[0].name}… exists already")
    finally:
        ds.close()
    print(f"IP Pool {pool.name} was successfully split into {parts} smaller pools.")
    for res in new:
        print(f"Created {res.name} with CIDR {res.spec['cidr']}.")
    print("Please refer to the documentation for final steps.")
    return 0


def _find(store: config.ResourceStore, name: str, cidr: str) -> Resource:
    if name:
        pool = store.get(Resource(IPPOOL, {"name": name}, {}))
        if pool is None:
            raise CommandError(f"unable to find IP pool with name {name}: resource does not exist: IPPool({name})")
        return pool
    found = [p for p in store.list(IPPOOL) if p.spec.get("cidr") == cidr]
    if not found:
        raise CommandError(f"unable to find IP pool  covering the specified CIDR {cidr}")
    return found[-1]


def _split(pool: Resource, cidrs: list[str]) -> list[Resource]:
    out, errors = [], []
    for i, cidr in enumerate(cidrs):
        name = f"split-{pool.name}-{i}"
        if len(name) > MAX_NAME:
            name = f"split-{pool.name[:245]}-{i}"
        meta = {k: v for k, v in pool.metadata.items() if k in ("labels", "annotations")}
        res = Resource(IPPOOL, {"name": name, **meta}, {**pool.spec, "cidr": cidr, "disabled": False})
        try:
            validate(res)
        except ValidationError as exc:
            errors.append(str(exc))
        out.append(res)
    if errors:
        raise CommandError(f"error splitting IP pool {pool.name}: {'; '.join(errors)}")
    return out


# --- show --show-borrowed ----------------------------------------------------------------------------


def borrowed(ds) -> tuple[list[list[str]], int]:
    """Rows of Calico's borrowed table (IP, BORROWING-NODE, BLOCK, BLOCK OWNER, TYPE, ALLOCATED-TO) and
    how many allocations have no node attribute."""
    from ipam.allocator import Block

    rows, unclassified = [], 0
    for kv in ds.list(f"{keys.IPAM}/assignment/"):
        block = Block.from_dict(kv.value)
        owner = (block.affinity or "").split(":", 1)[-1] if block.affinity else ""
        attributes = block.attributes or []
        for ordinal, index in enumerate(block.allocations):
            if index is None or index >= len(attributes):
                continue
            attr = attributes[index] or {}
            if "releasedAt" in attr and not attr.get("handle_id"):
                continue  # cooling down after release: not an allocation
            owners = attr.get("secondary") or {}
            node = owners.get("node")
            if node is None:
                unclassified += 1
                continue
            if node == owner:
                continue
            kind, allocated_to = "", ""
            namespace = owners.get("namespace", "")
            if "vmi-name" in owners:
                kind, allocated_to = "vmi", f"{namespace}/{owners['vmi-name']}"
            elif "pod" in owners:
                kind, allocated_to = "pod", f"{namespace}/{owners['pod']}"
            elif "type" in owners:
                kind = owners["type"]
            rows.append([block.ip_at(ordinal), node, block.cidr, owner, kind, allocated_to])
    return rows, unclassified


def show_borrowed(ds) -> str:
    rows, unclassified = borrowed(ds)
    text = output.box(["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"], rows, pretty=True)
    if unclassified:
        text += (f"\nNote: found {unclassified} IP allocations without an explicit node association. Unable to "
                 "determine if they are borrowed.\n")
    return text
