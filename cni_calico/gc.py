"""CNI 1.1 GC: release what this network holds on this node for attachments no runtime knows."""

from __future__ import annotations

import logging

from cni_calico import endpoints, keys
from cni_calico.datastore import Store, Txn
from cni_calico.errors import INVALID_CONFIG, CniError
from cni_calico.netconf import NetConf

log = logging.getLogger(__name__)
FIELD = "cni.dev/valid-attachments"


def valid_container_ids(attachments: object) -> set[str]:
    """The containers of `cni.dev/valid-attachments`: a list of {containerID, ifname} (null: none).

    Anything else is refused before GC touches anything: read loosely, a malformed list (an object,
    a string, entries without a containerID) would make every live attachment look stale."""
    if attachments is None:
        return set()
    if not isinstance(attachments, list):
        raise CniError(INVALID_CONFIG, f"network config field '{FIELD}' must be a list of "
                       f"{{containerID, ifname}} objects, got {type(attachments).__name__}")
    out = set()
    for entry in attachments:
        cid = entry.get("containerID") if isinstance(entry, dict) else None
        if not isinstance(cid, str) or not cid:
            raise CniError(INVALID_CONFIG, f"'{FIELD}' entry {entry!r} has no containerID")
        out.add(cid)
    return out


def collect(ds: Store, conf: NetConf, node: str, valid_attachments: object) -> tuple[list[str], list[str]]:
    """Returns (released handles, deleted endpoint keys)."""
    from ipam.store import IpamStore

    valid = valid_container_ids(valid_attachments)
    store = IpamStore(ds)
    prefix = keys.handle(f"{conf.name}.")
    released: list[str] = []
    for kv in ds.list(prefix, keys_only=True):
        handle_id = keys.handle_id_of(kv.key)
        container_id = handle_id[len(conf.name) + 1:]
        if container_id in valid or not _held_on_node(store, handle_id, node):
            continue
        freed = store.release_by_handle(handle_id)
        log.info("GC released %s (%s): no valid attachment", handle_id, ", ".join(freed))
        released.append(handle_id)
    deleted: list[str] = []
    for kv in ds.list(keys.resource_dir("workloadendpoints")):
        spec = kv.value.get("spec", {})
        if spec.get("node") != node or conf.name not in (spec.get("profiles") or []):
            continue
        if endpoints.owner(kv) in valid:
            continue
        if ds.commit(Txn().delete(kv.key, kv.mod_revision)):
            log.info("GC deleted endpoint %s: no valid attachment", kv.key)
            deleted.append(kv.key)
    return released, deleted


def _held_on_node(store, handle_id: str, node: str) -> bool:
    handle = store.get_handle(handle_id)
    if handle is None:
        return False
    for cidr in handle.blocks:
        got = store.get_block(cidr)
        if got is None:
            continue
        block = got[0]
        for ordinal in range(len(block.allocations)):
            if block.handle_of(ordinal) == handle_id:
                attrs = (block.attributes or [])[block.allocations[ordinal]].get("secondary") or {}  # type: ignore[index]
                return attrs.get("node", block.node) == node
    return False
