"""calico-ipam: the CNI IPAM plugin, standalone (through CNI_PATH) or in-process from `calico`.

`assign` and `release` are the one implementation; the handlers below only
adapt them to the CNI protocol.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Callable

from cni_calico import keys, skel
from cni_calico.datastore import Datastore
from cni_calico.errors import DATAPLANE_FAILURE, CniError
from cni_calico.names import handle_id
from cni_calico.netconf import NetConf
from cni_calico.result import IPConfig, Result
from ipam.allocator import Block
from ipam.lock import node_file, node_lock
from ipam.pools import select_pools
from ipam.store import Handle, IpamStore, Riders

log = logging.getLogger(__name__)


def _attrs(node: str, req: skel.Request) -> dict:
    attrs = {
        "node": node,
        "containerID": req.container_id,
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if req.args.get("K8S_POD_NAME"):
        attrs["namespace"] = req.args.get("K8S_POD_NAMESPACE", "default")
        attrs["pod"] = req.args["K8S_POD_NAME"]
    return attrs


def _read_hint(path: str) -> list[str]:
    """Blocks the node's last ADDs used: only a hint (a listed block is read, not trusted)."""
    try:
        with open(path) as f:
            hint = json.load(f)
    except (OSError, ValueError):
        return []
    return [c for c in hint if isinstance(c, str)][:8] if isinstance(hint, list) else []


def _write_hint(path: str, blocks: list[str]) -> None:
    try:
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(blocks[-8:], f)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write the block hint %s: %s", path, exc)


def assign(
    conf: NetConf, req: skel.Request, ds: Datastore, node: str, riders: Callable[[list[str]], Riders] | None = None
) -> tuple[list[str], bool]:
    """Addresses (as /32 or /128 CIDRs) for the request's container; the same ones on a repeat.

    Pools and the node's affine blocks come in one read; `riders(addresses)` are written in the
    last assignment's own transaction. Returns (addresses, whether the riders were written)."""
    store = IpamStore(ds)
    handle = handle_id(conf.name, req.container_id)
    families = [f for f, want in ((4, conf.ipam.assign_ipv4), (6, conf.ipam.assign_ipv6)) if want]
    exact = {6 if ":" in ip else 4: ip for ip in conf.ipam.ip_addrs}  # the pod's ipAddrs: these, no others
    if exact:
        families = sorted(exact)
    if not families:
        raise CniError(7, "ipam assigns no address: both assign_ipv4 and assign_ipv6 are false")
    out: list[str] = []
    rode = False
    run_dir = req.env.get("CALICO_RUN_DIR") or None
    hint_path = node_file(node, "blocks", run_dir)
    pools_dir = keys.resource_dir("ippools")
    prefixes = [pools_dir] + [keys.affinity_dir(node, f) for f in families]
    used: set[str] = set()
    with node_lock(node, run_dir):
        # Under the node's lock, so no other ADD of this node moves the blocks between this read and
        # the commit. The blocks the last ADDs used come in the same read (a hint file names them):
        # the common path is this read and one commit.
        hinted = _read_hint(hint_path)
        read = ds.multi_get([keys.block(c) for c in hinted], prefixes)
        blocks = {kv.value["cidr"]: (Block.from_dict(kv.value), kv.mod_revision)
                  for c in hinted for kv in read[keys.block(c)]}
        pools = store.parse_pools(read[pools_dir])
        # Node labels cost a read: only when some pool selects nodes by label.
        selective = any(p.node_selector.strip() not in ("", "all()", "!all()") for p in pools)
        labels = store.node_labels(node) if selective else {}
        try:
            for i, family in enumerate(families):
                requested = conf.ipam.ipv4_pools if family == 4 else conf.ipam.ipv6_pools
                chosen = select_pools(pools, requested, family, labels)
                if family in exact:  # not riding: the caller writes the endpoint itself
                    got = store.assign_ip(handle, _attrs(node, req), node, exact[family], chosen)
                    out.append(f"{got.ip}/{32 if family == 4 else 128}")
                    continue
                affine = [keys.cidr_from_block_key(kv.key) for kv in read[keys.affinity_dir(node, family)]]
                last = i == len(families) - 1

                def ride(ip: str, family: int = family) -> Riders:
                    addrs = [*out, f"{ip}/{32 if family == 4 else 128}"]
                    return riders(addrs) if riders else Riders()

                got = store.auto_assign(handle, _attrs(node, req), node, chosen, affine,
                                        ride if (last and riders) else None, blocks)
                out.append(f"{got.ip}/{32 if family == 4 else 128}")
                used.add(got.block)
                rode = last and got.fresh and riders is not None
        except BaseException:
            # All or nothing: a failed second family returns the first one's address.
            if out:
                store.release_by_handle(handle)
            raise
    if used and not used <= set(hinted):
        _write_hint(hint_path, sorted(used | {c for c in hinted if c in blocks}))
    log.debug("assigned %s to %s (%d conflicts)", out, handle, store.conflicts)
    return out, rode


def release(conf: NetConf, req: skel.Request, ds: Datastore, known: Handle | None = None,
            also_delete: dict[str, int] | None = None) -> tuple[list[str], bool]:
    return IpamStore(ds).release_by_handle(handle_id(conf.name, req.container_id), known, also_delete)


def owned(conf: NetConf, req: skel.Request, ds: Datastore) -> list[str]:
    return [a.ip for a in IpamStore(ds).ips_by_handle(handle_id(conf.name, req.container_id))]


# --- the standalone plugin ---------------------------------------------------------


def _open(req: skel.Request) -> tuple[NetConf, Datastore]:
    from cni_calico import logsetup, netconf

    conf = netconf.parse(req.conf)
    logsetup.configure_from(conf)
    return conf, Datastore(conf.etcd)


def cmd_add(req: skel.Request) -> Result:
    from cni_calico.nodename import determine

    conf, ds = _open(req)
    addresses, _ = assign(conf, req, ds, determine(conf))
    return Result(ips=[IPConfig(a) for a in addresses])


def cmd_del(req: skel.Request) -> None:
    conf, ds = _open(req)
    release(conf, req, ds)


def cmd_check(req: skel.Request) -> None:
    conf, ds = _open(req)
    if not owned(conf, req, ds):
        raise CniError(DATAPLANE_FAILURE, f"no address is allocated to {handle_id(conf.name, req.container_id)}")


def main() -> int:
    from cni_calico import logsetup

    logsetup.setup_stderr()
    return skel.run({"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check})
