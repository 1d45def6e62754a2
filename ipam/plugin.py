"""calico-ipam: the CNI IPAM plugin, standalone (through CNI_PATH) or in-process from `calico`.

`assign` and `release` are the one implementation; the handlers below only
adapt them to the CNI protocol.
"""

from __future__ import annotations

import datetime
import logging

from cni_calico import skel
from cni_calico.datastore import Datastore
from cni_calico.errors import DATAPLANE_FAILURE, CniError
from cni_calico.names import handle_id
from cni_calico.netconf import NetConf
from cni_calico.result import IPConfig, Result
from ipam.lock import node_lock
from ipam.pools import select_pools
from ipam.store import IpamStore

log = logging.getLogger(__name__)


def _attrs(node: str, req: skel.Request) -> dict:
    attrs = {
        "node": node,
        "containerID": req.container_id,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if req.args.get("K8S_POD_NAME"):
        attrs["namespace"] = req.args.get("K8S_POD_NAMESPACE", "default")
        attrs["pod"] = req.args["K8S_POD_NAME"]
    return attrs


def assign(conf: NetConf, req: skel.Request, ds: Datastore, node: str) -> list[str]:
    """Addresses (as /32 or /128 CIDRs) for the request's container; the same ones on a repeat."""
    store = IpamStore(ds)
    handle = handle_id(conf.name, req.container_id)
    families = [f for f, want in ((4, conf.ipam.assign_ipv4), (6, conf.ipam.assign_ipv6)) if want]
    if not families:
        raise CniError(7, "ipam assigns no address: both assign_ipv4 and assign_ipv6 are false")
    out: list[str] = []
    with node_lock(node):
        pools = store.pools()
        # Node labels cost a read: only when some pool selects nodes by label.
        selective = any(p.node_selector.strip() not in ("", "all()", "!all()") for p in pools)
        labels = store.node_labels(node) if selective else {}
        try:
            for family in families:
                requested = conf.ipam.ipv4_pools if family == 4 else conf.ipam.ipv6_pools
                chosen = select_pools(pools, requested, family, labels)
                got = store.auto_assign(handle, _attrs(node, req), node, chosen)
                out.append(f"{got.ip}/{32 if family == 4 else 128}")
        except BaseException:
            # All or nothing: a failed second family returns the first one's address.
            if out:
                store.release_by_handle(handle)
            raise
    log.debug("assigned %s to %s (%d conflicts)", out, handle, store.conflicts)
    return out


def release(conf: NetConf, req: skel.Request, ds: Datastore) -> list[str]:
    return IpamStore(ds).release_by_handle(handle_id(conf.name, req.container_id))


def owned(conf: NetConf, req: skel.Request, ds: Datastore) -> list[str]:
    return [a.ip for a in IpamStore(ds).ips_by_handle(handle_id(conf.name, req.container_id))]


# --- the standalone plugin ---------------------------------------------------------


def _open(req: skel.Request) -> tuple[NetConf, Datastore]:
    from cni_calico import logsetup, netconf

    conf = netconf.parse(req.conf)
    logsetup.configure(conf.log_level, conf.log_file_path)
    return conf, Datastore(conf.etcd)


def cmd_add(req: skel.Request) -> Result:
    from cni_calico.nodename import determine

    conf, ds = _open(req)
    addresses = assign(conf, req, ds, determine(conf))
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
