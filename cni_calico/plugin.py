"""The `calico` CNI plugin: ADD, DEL, CHECK, STATUS and GC, with rollback on failure.

ADD order: validate everything local, allocate, build the dataplane, write the
endpoint. A failure at any step undoes the ones before it, so nothing leaks.
DEL is idempotent and never touches a re-created pod's live veth or record.

The handlers take the request and the host that runs them (cni_calico.host): the plugin
process or calico-node's CNI server. Each etcd change is one unit of work (a `Txn`) to which
IPAM and the endpoint code both contribute: ADD costs one read, one commit (addresses, handle,
the endpoint marked unfinished, the network's profile) and the endpoint's confirmation; DEL one
read (endpoint and handle), the handle's blocks, and one commit.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from cni_calico import skel
from cni_calico.errors import ADDRESS_CONFLICT, DATAPLANE_FAILURE, PLUGIN_NOT_AVAILABLE, CniError, at_cni_edge
from cni_calico.host import PluginHost
from cni_calico.ipam_cni import CALICO_IPAM
from cni_calico.netconf import NetConf
from cni_calico.result import Interface, IPConfig, Result, Route

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every handler derives from the request, once."""

    req: skel.Request
    host: PluginHost
    conf: NetConf
    node: str
    namespace: str
    pod: str
    host_ifname: str

    def endpoint_id(self):
        from cni_calico.endpoints import EndpointId

        return EndpointId(self.node, self.req.container_id, self.req.ifname, self.namespace, self.pod)

    def datastore(self):
        ds = self.host.datastore(self.conf.etcd)
        ds.reset_calls()
        return ds


def _context(req: skel.Request, host: PluginHost) -> Context:
    from cni_calico import netconf
    from cni_calico.names import host_veth_name
    from cni_calico.nodename import determine

    conf = netconf.parse(req.conf, req.env)
    host.configure_logging(conf)
    pod = req.args.get("K8S_POD_NAME", "")
    namespace = req.args.get("K8S_POD_NAMESPACE", "") or "default"
    host_ifname = host_veth_name(req.container_id, namespace if pod else "", pod)
    return Context(req, host, conf, determine(conf), namespace, pod, host_ifname)


def _delegated_addresses(ctx: Context) -> list[str]:
    """Addresses from an IPAM plugin other than calico-ipam, as the workload's own /32 or /128."""
    from cni_calico.delegate import invoke

    result = invoke(ctx.conf.ipam.type, "ADD", ctx.req)
    if result is None or not result.ips:
        raise CniError(DATAPLANE_FAILURE, f"IPAM plugin {ctx.conf.ipam.type} returned no address")
    return [f"{ip.address.split('/')[0]}/{32 if ip.family == 4 else 128}" for ip in result.ips]


def cmd_add(req: skel.Request, host: PluginHost) -> Result:
    from cni_calico import dataplane, datastore_lock, endpoints
    from cni_calico.datastore import Txn, transact
    from cni_calico.names import alternate_veth_name
    from cni_calico.nodename import pod_mtu

    started = time.monotonic()
    ctx = _context(req, host)
    labels: dict[str, str] = {}
    ports: list[dict] = []
    if ctx.conf.kubeconfig or ctx.conf.policy_type == "k8s":
        from cni_calico.kube import apply_pod

        ctx.conf, info = apply_pod(ctx.conf, req.args)  # the pod's pools, ipAddrs, labels and ports
        labels, ports = info.labels, info.ports
    if ctx.conf.ipam.type != CALICO_IPAM:
        from cni_calico.delegate import find

        find(ctx.conf.ipam.type, req.path)  # a missing IPAM plugin fails before anything is done
    ds = ctx.datastore()
    eid = ctx.endpoint_id()
    if dataplane.pod_has_interface(req.netns, req.ifname):
        existing = _repeated_add(ctx, ds, eid)  # the runtime asked again: the same answer, nothing new
        if existing is not None:
            return existing
        raise CniError(ADDRESS_CONFLICT, f"interface {req.ifname} already exists in {req.netns}")
    if dataplane.host_owner(host.netlink, ctx.host_ifname) == req.container_id:
        raise CniError(ADDRESS_CONFLICT, f"container {req.container_id} already has an interface through "
                       f"{ctx.host_ifname}: a second interface ({req.ifname}) would take its host veth",
                       "one interface per container and network, as Calico")
    ctx.host_ifname = dataplane.choose_host_ifname(host.netlink, ctx.host_ifname, alternate_veth_name(req.container_id),
                                                   req.container_id, bool(ctx.pod))
    mac = dataplane.random_mac()
    network = ctx.conf.name

    def endpoint(addresses: list[str]):
        return endpoints.build(eid, ctx.host_ifname, mac, addresses, [network], labels, ports)

    # The endpoint goes in with the addresses, marked unfinished: calico-node programs the pod's
    # policy before its veth exists, and an ADD killed after this commit leaves a record that
    # `calicoctl ipam check` recognises (still unfinished long after) and DEL or GC remove.
    if ctx.conf.ipam.type == CALICO_IPAM:
        from cni_calico.ipam_cni import assign_args
        from ipam.assign import Assigner, Precondition

        unlocked = (Precondition(datastore_lock.KEY, datastore_lock.check),)  # read with IPAM's first read
        with Assigner(ds, assign_args(ctx.conf, req, ctx.node, host, labels), unlocked) as assigner:

            def attempt():
                txn = Txn()
                claim = assigner.prepare(txn)
                written = endpoint(claim.cidrs)
                endpoints.contribute_add(txn, eid, written, network)
                return txn, (claim, written)

            claim, written = transact(ds, attempt, f"assigning an address for {eid.name}")
            assigner.committed(claim)
        addresses = claim.cidrs
    else:
        lock = ds.get(datastore_lock.KEY)
        datastore_lock.check(lock.value if lock else None)
        addresses = _delegated_addresses(ctx)
        written = endpoint(addresses)
        try:
            txn = Txn().guard(datastore_lock.KEY, lock.mod_revision if lock else 0)
            endpoints.contribute_add(txn, eid, written, network)
            transact(ds, lambda: (txn, None), f"writing endpoint {eid.name}")
        except BaseException:
            _release(ctx, ds)
            raise
    workload = dataplane.Workload(
        req.netns, ctx.host_ifname, req.ifname, addresses, pod_mtu(ctx.conf), ctx.conf.allow_ip_forwarding, mac,
        owner=req.container_id, same_pod_name=bool(ctx.pod),
    )
    try:
        _fault_point(req, "after-ipam")
        _fault_point(req, "after-endpoint")
        dataplane.setup(host.netlink, workload)
        _fault_point(req, "after-dataplane")
        confirm = Txn().put(eid.key, endpoints.confirmed(written).to_value())
        transact(ds, lambda: (confirm, None), f"confirming endpoint {eid.name}")
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


def _repeated_add(ctx: Context, ds, eid) -> Result | None:
    """The result of this container's earlier ADD on this interface, if it finished and its dataplane
    is whole (then a repeated ADD returns it, allocating nothing); None otherwise."""
    from cni_calico import dataplane, endpoints
    from cni_calico.v3 import Resource

    current = ds.get(eid.key)
    if endpoints.owner(current) != ctx.req.container_id or endpoints.unfinished_since(current.value):  # type: ignore
        return None
    spec = Resource.from_value(current.value).spec  # type: ignore[union-attr]
    addresses, host_ifname = list(spec.get("ipNetworks") or []), str(spec.get("interfaceName") or "")
    if spec.get("endpoint") != ctx.req.ifname or not addresses:
        return None
    try:
        dataplane.check(ctx.host.netlink, dataplane.Workload(ctx.req.netns, host_ifname, ctx.req.ifname, addresses))
    except CniError as exc:
        log.info("repeated ADD of %s: the earlier one is not whole (%s)", ctx.req.container_id, exc)
        return None
    log.info("ADD container=%s again: returning the earlier result (%s)", ctx.req.container_id, ",".join(addresses))
    return Result(
        interfaces=[Interface(host_ifname, dataplane.HOST_MAC), Interface(ctx.req.ifname, str(spec.get("mac") or ""),
                                                                          ctx.req.netns)],
        ips=[IPConfig(a, interface=1) for a in addresses],
        routes=[Route(dst, gw) for dst, gw in dataplane.result_routes(addresses)],
    )


def _fault_point(req: skel.Request, name: str) -> None:
    """Test hook: CNI_CALICO_FAIL_AT=<name> makes ADD fail here, so tests can prove the rollback."""
    if req.env.get("CNI_CALICO_FAIL_AT") == name:
        raise CniError(DATAPLANE_FAILURE, f"injected failure at {name} (CNI_CALICO_FAIL_AT)")


def _release(ctx: Context, ds, read: dict | None = None) -> list[str]:
    """Frees the container's addresses and removes its endpoint (if still its own) in one unit of
    work. `read`: the endpoint, handle and IPAM configuration as the caller already read them (first
    attempt only)."""
    from cni_calico import endpoints, keys
    from cni_calico.datastore import Txn, transact
    from cni_calico.names import handle_id

    eid = ctx.endpoint_id()
    handle_key = keys.handle(handle_id(ctx.conf.name, ctx.req.container_id))
    config_key = keys.ipam_config()
    calico_ipam = ctx.conf.ipam.type == CALICO_IPAM
    if not calico_ipam:
        from cni_calico.delegate import invoke

        invoke(ctx.conf.ipam.type, "DEL", ctx.req)
    first = [read]

    def attempt():
        from cni_calico.v3 import IPAMConfig
        from ipam.store import Handle, IpamStore

        got = first.pop() if first and first[0] is not None else ds.multi_get([eid.key, handle_key, config_key])
        first.clear()
        txn = Txn()
        freed: list[str] = []
        if calico_ipam and got[handle_key]:
            config = IPAMConfig.from_value(got[config_key][0].value if got[config_key] else None)
            freed = IpamStore(ds).prepare_release(Handle.from_kv(got[handle_key][0]), txn, config)
        endpoints.contribute_delete(txn, eid, got[eid.key][0] if got[eid.key] else None)
        return txn, freed

    return transact(ds, attempt, f"releasing {eid.name}")


def _undo_add(ctx: Context, ds, workload, eid) -> None:
    """Best effort, each step on its own: one failing must not stop the other."""
    from cni_calico import dataplane

    for what, step in (
        ("host veth", lambda: dataplane.teardown_host(ctx.host.netlink, workload.host_ifname, workload.owner)),
        ("endpoint and address", lambda: _release(ctx, ds)),
    ):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - keep undoing; the original error is what the user sees
            log.error("rolling back ADD of %s: removing the %s failed: %s", ctx.req.container_id, what, exc)


def cmd_del(req: skel.Request, host: PluginHost) -> None:
    from cni_calico import dataplane, datastore_lock, endpoints, keys
    from cni_calico.names import alternate_veth_name, handle_id

    started = time.monotonic()
    ctx = _context(req, host)
    ds = ctx.datastore()
    eid = ctx.endpoint_id()
    handle_key = keys.handle(handle_id(ctx.conf.name, req.container_id))
    # The endpoint, the handle, the IPAM configuration (its cooldown) and the datastore lock in one round trip.
    read = ds.multi_get([eid.key, handle_key, keys.ipam_config(), datastore_lock.KEY])
    datastore_lock.check_read(read)
    current = read[eid.key][0] if read[eid.key] else None
    owner = endpoints.owner(current)

    def teardown() -> None:
        # The pod's own end goes with its namespace; the host end only when no newer
        # sandbox of the same pod (same veth name) owns the endpoint now.
        dataplane.teardown_pod(req.netns, req.ifname)
        if owner in (None, req.container_id):
            dataplane.teardown_host(host.netlink, ctx.host_ifname, req.container_id) or (
                not ctx.pod and dataplane.teardown_host(host.netlink, alternate_veth_name(req.container_id),
                                                        req.container_id))
        else:
            log.info("DEL for %s: endpoint now belongs to %s, leaving its veth alone", req.container_id, owner)

    # The kernel takes ~20 ms to unregister a veth (RCU grace periods); etcd's release runs meanwhile.
    # A released address joins the back of its block's free queue, and a pod that still got it would
    # `replace` its /32 route onto its own veth, which the old veth's removal does not touch.
    links = dataplane.Background(teardown)
    try:
        if read[handle_key] or read[eid.key] or ctx.conf.ipam.type != CALICO_IPAM:
            _release(ctx, ds, read)
    finally:
        links.join()
    freed = ",".join((current.value.get("spec") or {}).get("ipNetworks") or []) if owner == req.container_id else ""
    log.info("DEL container=%s pod=%s/%s address=%s etcd_round_trips=%d took %.0f ms", req.container_id,
             ctx.namespace, ctx.pod or "-", freed or "-", ds.calls(), (time.monotonic() - started) * 1000)


def cmd_check(req: skel.Request, host: PluginHost) -> None:
    from cni_calico import dataplane, datastore_lock, endpoints
    from cni_calico.v3 import Resource

    started = time.monotonic()
    ctx = _context(req, host)
    ds = ctx.datastore()
    eid = ctx.endpoint_id()
    read = ds.multi_get([eid.key, datastore_lock.KEY])
    datastore_lock.check_read(read)
    current = read[eid.key][0] if read[eid.key] else None
    if endpoints.owner(current) != req.container_id:
        raise CniError(DATAPLANE_FAILURE, f"no workload endpoint for container {req.container_id}")
    spec = Resource.from_value(current.value).spec  # type: ignore[union-attr]
    addresses = list(spec.get("ipNetworks") or [])
    if ctx.conf.ipam.type == CALICO_IPAM:
        from cni_calico.names import handle_id
        from ipam.store import IpamStore

        held = {a.ip for a in IpamStore(ds).ips_by_handle(handle_id(ctx.conf.name, req.container_id))}
        for cidr in addresses:
            if cidr.split("/")[0] not in held:
                raise CniError(DATAPLANE_FAILURE, f"address {cidr} is no longer allocated to {req.container_id}")
    if ctx.conf.prev_result is not None:
        expected = {ip.address.split("/")[0] for ip in ctx.conf.prev_result.ips}
        if expected != {a.split("/")[0] for a in addresses}:
            raise CniError(DATAPLANE_FAILURE, f"addresses {sorted(expected)} of prevResult differ from {addresses}")
    host_ifname = spec.get("interfaceName") or ctx.host_ifname
    dataplane.check(host.netlink, dataplane.Workload(req.netns, host_ifname, req.ifname, addresses))
    log.info("CHECK container=%s pod=%s/%s address=%s interface=%s took %.0f ms", req.container_id, ctx.namespace,
             ctx.pod or "-", ",".join(addresses), ctx.host_ifname, (time.monotonic() - started) * 1000)


def cmd_status(req: skel.Request, host: PluginHost) -> None:
    from cni_calico import netconf
    from cni_calico.datastore import Datastore, DatastoreError

    conf = netconf.parse(req.conf, req.env)
    host.configure_logging(conf)
    try:
        ds = Datastore(conf.etcd, deadline=5.0)
        if conf.ipam.type == CALICO_IPAM:
            from ipam.store import IpamStore

            if not [p for p in IpamStore(ds).pools() if not p.disabled]:
                raise CniError(PLUGIN_NOT_AVAILABLE, "no enabled IP pool: create one with calicoctl")
    except DatastoreError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from None


def cmd_gc(req: skel.Request, host: PluginHost) -> None:
    """Releases this network's allocations and endpoints on this node that no valid attachment holds."""
    from cni_calico.gc import collect

    ctx = _context(req, host)
    collect(ctx.datastore(), ctx.conf, ctx.node, req.conf.get("cni.dev/valid-attachments"))


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def handlers(host: PluginHost) -> dict[str, skel.Handler]:
    """The CNI handlers as `host` runs them, with library errors mapped to CNI codes."""
    return {name: at_cni_edge(functools.partial(fn, host=host)) for name, fn in COMMANDS.items()}


def main(stdin: bytes | None = None) -> int:
    from cni_calico import logsetup

    logsetup.setup_stderr()
    return skel.run(handlers(PluginHost()), stdin=stdin)
