"""CNI 1.1 GC: release what this network holds on this node for attachments no runtime knows."""

from __future__ import annotations

import logging

from cni_calico import keys
from cni_calico.datastore import Datastore
from cni_calico.netconf import NetConf

log = logging.getLogger(__name__)


def collect(ds: Datastore, conf: NetConf, node: str, valid_attachments: list) -> tuple[list[str], list[str]]:
    """Returns (released handles, deleted endpoint keys)."""
    from ipam.store import IpamStore

    valid = {a.get("containerID") for a in valid_attachments if isinstance(a, dict)}
    store = IpamStore(ds)
    prefix = keys.handle(f"{conf.name}.")
    released: list[str] = []
    for kv in ds.list(prefix, keys_only=True):
        handle_id = kv.key[len(keys.handle_dir()):]
        container_id = handle_id[len(conf.name) + 1:]
        if container_id in valid or not _held_on_node(store, handle_id, node):
            continue
        freed, _ = store.release_by_handle(handle_id)
        log.info("GC released %s (%s): no valid attachment", handle_id, ", ".join(freed))
        released.append(handle_id)
    deleted: list[str] = []
    for kv in ds.list(keys.resource_dir("workloadendpoints")):
        spec = kv.value.get("spec", {})
        if spec.get("node") != node or conf.name not in (spec.get("profiles") or []):
            continue
        if spec.get("containerID") in valid:
            continue
        if ds.commit({kv.key: kv.mod_revision}, deletes=[kv.key]):
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
                attrs = block.attributes[block.allocations[ordinal]].get("secondary") or {}
                return attrs.get("node", block.node) == node
    return False
