"""The `calico` CNI plugin: ADD, DEL, CHECK, STATUS and GC, with rollback on failure.

ADD order: validate everything local, allocate, build the dataplane, write the
endpoint. A failure at any step undoes the ones before it, so nothing leaks.
DEL is idempotent and never touches a re-created pod's live veth or record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cni_calico import logsetup, netconf, skel
from cni_calico.errors import DATAPLANE_FAILURE, PLUGIN_NOT_AVAILABLE, CniError
from cni_calico.netconf import NetConf
from cni_calico.result import Interface, IPConfig, Result, Route

log = logging.getLogger(__name__)

CALICO_IPAM = "calico-ipam"


@dataclass
class Context:
    """What every handler derives from the request, once."""

    req: skel.Request
    conf: NetConf
    node: str
    namespace: str
    pod: str
    host_ifname: str

    def endpoint_id(self):
        from cni_calico.endpoints import EndpointId

        return EndpointId(self.node, self.req.container_id, self.req.ifname, self.namespace, self.pod)


def _context(req: skel.Request) -> Context:
    from cni_calico.names import host_veth_name
    from cni_calico.nodename import determine

    conf = netconf.parse(req.conf)
    logsetup.configure_from(conf)
    pod = req.args.get("K8S_POD_NAME", "")
    namespace = req.args.get("K8S_POD_NAMESPACE", "") or "default"
    host_ifname = host_veth_name(req.container_id, namespace if pod else "", pod)
    return Context(req, conf, determine(conf), namespace, pod, host_ifname)


_shared: dict | None = None  # the agent keeps warm clients here; a plugin process makes one per call


def share_datastores() -> None:
    """Called by the agent: reuse one etcd client per etcd configuration across requests."""
    global _shared
    _shared = {}


def _datastore(conf: NetConf):
    from cni_calico.datastore import Datastore

    if _shared is None:
        ds = Datastore(conf.etcd)
    else:
        ident = (tuple(conf.etcd.endpoints), conf.etcd.key_file, conf.etcd.cert_file, conf.etcd.ca_cert_file)
        ds = _shared.get(ident)
        if ds is None:
            ds = _shared[ident] = Datastore(conf.etcd)
    ds.reset_calls()
    return ds


def _allocate(ctx: Context, ds, riders=None) -> tuple[list[str], bool]:
    """Addresses for the workload, and whether `riders` (the endpoint) went into IPAM's transaction."""
    if ctx.conf.ipam.type == CALICO_IPAM:
        from ipam.plugin import assign

        return assign(ctx.conf, ctx.req, ds, ctx.node, riders)
    from cni_calico.delegate import invoke

    result = invoke(ctx.conf.ipam.type, "ADD", ctx.req)
    if result is None or not result.ips:
        raise CniError(DATAPLANE_FAILURE, f"IPAM plugin {ctx.conf.ipam.type} returned no address")
    # The address is the workload's own: /32 (or /128) whatever the IPAM's prefix.
    return [f"{ip.address.split('/')[0]}/{32 if ip.family == 4 else 128}" for ip in result.ips], False


def _release(ctx: Context, ds, known=None, also_delete: dict[str, int] | None = None) -> bool:
    """Frees the container's addresses; True when `also_delete` went in the same transaction."""
    if ctx.conf.ipam.type == CALICO_IPAM:
        from ipam.plugin import release

        return release(ctx.conf, ctx.req, ds, known, also_delete)[1]
    from cni_calico.delegate import invoke

    invoke(ctx.conf.ipam.type, "DEL", ctx.req)
    return False


def cmd_add(req: skel.Request) -> Result:
    from cni_calico import dataplane, endpoints
    from cni_calico.names import alternate_veth_name
    from cni_calico.nodename import pod_mtu

    started = time.monotonic()
    ctx = _context(req)
    labels: dict[str, str] = {}
    if ctx.conf.kubeconfig or ctx.conf.policy_type == "k8s":
        from cni_calico.kube import apply_pod

        ctx.conf, labels = apply_pod(ctx.conf, req.args)  # the pod's pools, ipAddrs and labels
    if ctx.conf.ipam.type != CALICO_IPAM:
        from cni_calico.delegate import find

        find(ctx.conf.ipam.type, req.path)  # a missing IPAM plugin fails before anything is done
    dataplane.check_pod_ifname_free(req.netns, req.ifname)
    ctx.host_ifname = dataplane.choose_host_ifname(ctx.host_ifname, alternate_veth_name(req.container_id),
                                                   req.container_id, bool(ctx.pod))
    ds = _datastore(ctx.conf)
    eid = ctx.endpoint_id()
    mac = dataplane.random_mac()

    def endpoint(addresses: list[str], adding: bool) -> dict:
        return endpoints.build(eid, ctx.host_ifname, mac, addresses, [ctx.conf.name], labels, adding=adding)

    def endpoint_riders(addresses: list[str]):
        from cni_calico import keys
        from ipam.store import Riders

        resource = endpoint(addresses, adding=True)
        profile = {keys.resource("profiles", ctx.conf.name): endpoints.default_profile(ctx.conf.name)}
        return Riders(puts={eid.key: resource}, create_if_absent=profile)

    # The endpoint record rides in IPAM's transaction, marked unfinished: calico-node programs the
    # pod's policy before its veth exists, and an ADD killed after this commit leaves a record
    # that `calicoctl ipam check` recognises (still unfinished long after) and DEL or GC remove.
    addresses, endpoint_written = _allocate(ctx, ds, endpoint_riders)
    workload = dataplane.Workload(
        req.netns, ctx.host_ifname, req.ifname, addresses, pod_mtu(ctx.conf), ctx.conf.allow_ip_forwarding, mac,
        owner=req.container_id, same_pod_name=bool(ctx.pod),
    )
    try:
        _fault_point(req, "after-ipam")
        if not endpoint_written:  # another IPAM plugin, a repeated ADD, or the pod's ipAddrs
            endpoints.write(ds, eid, endpoint(addresses, adding=True), network=ctx.conf.name)
        _fault_point(req, "after-endpoint")
        dataplane.setup(workload)
        _fault_point(req, "after-dataplane")
        endpoints.write(ds, eid, endpoint(addresses, adding=False))
    except BaseException:
        _undo_add(ctx, ds, workload, eid)
        raise
    log.info(
        "ADD container=%s pod=%s/%s address=%s interface=%s etcd_round_trips=%d took %.0f ms",
        req.container_id, ctx.namespace, ctx.pod or "-", ",".join(addresses), ctx.host_ifname,
        ds.calls(), (time.monotonic() - started) * 1000,
    )
    return Result(
        interfaces=[Interface(ctx.host_ifname, dataplane.HOST_MAC), Interface(req.ifname, mac, req.netns)],
        ips=[IPConfig(a, interface=1) for a in addresses],
        routes=[Route(dst, gw) for dst, gw in dataplane.result_routes(addresses)],
    )


def _fault_point(req: skel.Request, name: str) -> None:
    """Test hook: CNI_CALICO_FAIL_AT=<name> makes ADD fail here, so tests can prove the rollback."""
    if req.env.get("CNI_CALICO_FAIL_AT") == name:
        raise CniError(DATAPLANE_FAILURE, f"injected failure at {name} (CNI_CALICO_FAIL_AT)")


def _undo_add(ctx: Context, ds, workload, eid) -> None:
    """Best effort, each step on its own: one failing must not stop the others."""
    from cni_calico import dataplane, endpoints

    for what, step in (
        ("host veth", lambda: dataplane.teardown_host(workload.host_ifname, workload.owner)),
        ("endpoint", lambda: endpoints.delete_if_owned(ds, eid, endpoints.get(ds, eid))),
        ("address", lambda: _release(ctx, ds)),
    ):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - keep undoing; the original error is what the user sees
            log.error("rolling back ADD of %s: removing the %s failed: %s", ctx.req.container_id, what, exc)


def cmd_del(req: skel.Request) -> None:
    from cni_calico import dataplane, endpoints, keys
    from cni_calico.names import alternate_veth_name, handle_id

    started = time.monotonic()
    ctx = _context(req)
    ds = _datastore(ctx.conf)
    eid = ctx.endpoint_id()
    handle_key = keys.handle(handle_id(ctx.conf.name, req.container_id))
    read = ds.multi_get([eid.key, handle_key])  # the endpoint and the handle in one round trip
    current = read[eid.key][0] if read[eid.key] else None
    owner = current.value.get("spec", {}).get("containerID") if current else None

    def teardown() -> None:
        # The pod's own end goes with its namespace; the host end only when no newer
        # sandbox of the same pod (same veth name) owns the endpoint now.
        dataplane.teardown_pod(req.netns, req.ifname)
        if owner in (None, req.container_id):
            dataplane.teardown_host(ctx.host_ifname, req.container_id) or (
                not ctx.pod and dataplane.teardown_host(alternate_veth_name(req.container_id), req.container_id))
        else:
            log.info("DEL for %s: endpoint now belongs to %s, leaving its veth alone", req.container_id, owner)

    # The kernel takes ~20 ms to unregister a veth (RCU grace periods); etcd's release runs meanwhile.
    # A released address joins the back of its block's free queue, and a pod that still got it would
    # `replace` its /32 route onto its own veth, which the old veth's removal does not touch.
    links = dataplane.Background(teardown)
    try:
        known = None
        if read[handle_key]:
            from ipam.store import Handle

            kv = read[handle_key][0]
            known = Handle(kv.key[len(keys.handle_dir()):], dict(kv.value.get("block") or {}), kv.mod_revision)
        mine = {eid.key: current.mod_revision} if current is not None and owner == req.container_id else {}
        gone = _release(ctx, ds, known, mine) if (known or ctx.conf.ipam.type != CALICO_IPAM) else False
        if mine and not gone:
            endpoints.delete_if_owned(ds, eid, endpoints.get(ds, eid))
    finally:
        links.join()
    freed = ",".join((current.value.get("spec") or {}).get("ipNetworks") or []) if mine else ""
    log.info("DEL container=%s pod=%s/%s address=%s etcd_round_trips=%d took %.0f ms", req.container_id,
             ctx.namespace, ctx.pod or "-", freed or "-", ds.calls(), (time.monotonic() - started) * 1000)


def cmd_check(req: skel.Request) -> None:
    from cni_calico import dataplane, endpoints

    started = time.monotonic()
    ctx = _context(req)
    ds = _datastore(ctx.conf)
    current = endpoints.get(ds, ctx.endpoint_id())
    if current is None or current.value.get("spec", {}).get("containerID") != req.container_id:
        raise CniError(DATAPLANE_FAILURE, f"no workload endpoint for container {req.container_id}")
    addresses = list(current.value["spec"].get("ipNetworks") or [])
    if ctx.conf.ipam.type == CALICO_IPAM:
        from ipam.plugin import owned

        held = set(owned(ctx.conf, req, ds))
        for cidr in addresses:
            if cidr.split("/")[0] not in held:
                raise CniError(DATAPLANE_FAILURE, f"address {cidr} is no longer allocated to {req.container_id}")
    if ctx.conf.prev_result is not None:
        expected = {ip.address.split("/")[0] for ip in ctx.conf.prev_result.ips}
        if expected != {a.split("/")[0] for a in addresses}:
            raise CniError(DATAPLANE_FAILURE, f"addresses {sorted(expected)} of prevResult differ from {addresses}")
    host_ifname = current.value["spec"].get("interfaceName") or ctx.host_ifname
    dataplane.check(dataplane.Workload(req.netns, host_ifname, req.ifname, addresses))
    log.info("CHECK container=%s pod=%s/%s address=%s interface=%s took %.0f ms", req.container_id, ctx.namespace,
             ctx.pod or "-", ",".join(addresses), ctx.host_ifname, (time.monotonic() - started) * 1000)


def cmd_status(req: skel.Request) -> None:
    conf = netconf.parse(req.conf)
    logsetup.configure_from(conf)
    from cni_calico.datastore import Datastore
    from cni_calico.errors import DatastoreError

    try:
        ds = Datastore(conf.etcd, deadline=5.0)
        if conf.ipam.type == CALICO_IPAM:
            from ipam.store import IpamStore

            if not [p for p in IpamStore(ds).pools() if not p.disabled]:
                raise CniError(PLUGIN_NOT_AVAILABLE, "no enabled IP pool: create one with calicoctl")
    except DatastoreError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from None


def cmd_gc(req: skel.Request) -> None:
    """Releases this network's allocations and endpoints on this node that no valid attachment holds."""
    from cni_calico.gc import collect

    ctx = _context(req)
    collect(_datastore(ctx.conf), ctx.conf, ctx.node, req.conf.get("cni.dev/valid-attachments"))


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def main(stdin: bytes | None = None) -> int:
    logsetup.setup_stderr()
    return skel.run(HANDLERS, stdin=stdin)
