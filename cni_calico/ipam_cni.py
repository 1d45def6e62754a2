"""calico-ipam's CNI side: a request and its network config into IPAM's arguments, and the
standalone `calico-ipam` plugin's handlers (through CNI_PATH, under any plugin). The IPAM library
(ipam/) knows nothing of CNI; this module is the adapter."""

from __future__ import annotations

import functools
import logging

from cni_calico import skel
from cni_calico.errors import DATAPLANE_FAILURE, INVALID_CONFIG, CniError, at_cni_edge
from cni_calico.host import PluginHost
from cni_calico.names import handle_id
from cni_calico.netconf import NetConf
from cni_calico.result import IPConfig, Result
from cni_calico.v3 import NS_LABEL_PREFIX, go_time
from ipam.assign import AssignArgs

log = logging.getLogger(__name__)


def network_family(ip: str) -> int:
    return 6 if ":" in ip else 4

CALICO_IPAM = "calico-ipam"


def assign_args(conf: NetConf, req: skel.Request, node: str, host: PluginHost,
                labels: dict[str, str] | None = None) -> AssignArgs:
    """What IPAM is asked for this container: Calico's handle `<network>.<container>`, the
    allocation's attributes, the families and pools of the config, the pod's exact addresses, and
    (a Kubernetes pod read from the API: `labels` hold its namespace's as `pcns.` labels) the
    namespace's labels for pools' namespaceSelector."""
    from cni_calico.netconf import requested_addresses

    ips = requested_addresses(conf, req.args)
    if not (conf.ipam.assign_ipv4 or conf.ipam.assign_ipv6 or ips):
        raise CniError(INVALID_CONFIG, "ipam assigns no address: both assign_ipv4 and assign_ipv6 are false")
    if len({network_family(ip) for ip in ips}) < len(ips):
        raise CniError(INVALID_CONFIG, f"requested addresses {', '.join(ips)}: at most one per IP version")
    attrs = {"node": node, "timestamp": go_time()}  # as Calico's calico-ipam: no containerID
    if req.args.get("K8S_POD_NAME"):
        attrs["namespace"] = req.args.get("K8S_POD_NAMESPACE", "default")
        attrs["pod"] = req.args["K8S_POD_NAME"]
    return AssignArgs(
        handle_id=handle_id(conf.name, req.container_id),
        node=node,
        run_dir=host.ipam_run_dir(req.env),
        attrs=attrs,
        num_ipv4=int(conf.ipam.assign_ipv4),
        num_ipv6=int(conf.ipam.assign_ipv6),
        ipv4_pools=list(conf.ipam.ipv4_pools),
        ipv6_pools=list(conf.ipam.ipv6_pools),
        ips=ips,
        namespace_labels=({k[len(NS_LABEL_PREFIX):]: v for k, v in labels.items() if k.startswith(NS_LABEL_PREFIX)}
                          if labels else None),
    )


# --- the standalone plugin ---------------------------------------------------------


def _open(req: skel.Request, host: PluginHost):
    from cni_calico import netconf
    from ipam.store import IpamStore

    conf = netconf.parse(req.conf, req.env)
    host.configure_logging(conf)
    return conf, IpamStore(host.datastore(conf.etcd))


def cmd_add(req: skel.Request, host: PluginHost) -> Result:
    from cni_calico.nodename import determine
    from ipam.assign import auto_assign

    conf, store = _open(req, host)
    claim = auto_assign(store.ds, assign_args(conf, req, determine(conf), host))
    return Result(ips=[IPConfig(cidr) for cidr in claim.cidrs])


def cmd_del(req: skel.Request, host: PluginHost) -> None:
    conf, store = _open(req, host)
    store.release_by_handle(handle_id(conf.name, req.container_id))


def cmd_check(req: skel.Request, host: PluginHost) -> None:
    conf, store = _open(req, host)
    if not store.ips_by_handle(handle_id(conf.name, req.container_id)):
        raise CniError(DATAPLANE_FAILURE, f"no address is allocated to {handle_id(conf.name, req.container_id)}")


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}


def handlers(host: PluginHost) -> dict[str, skel.Handler]:
    """The standalone plugin's handlers as `host` runs them, with IPAM's errors mapped to CNI codes."""
    return {name: at_cni_edge(functools.partial(fn, host=host)) for name, fn in COMMANDS.items()}


def main() -> int:
    from cni_calico import logsetup

    logsetup.setup_stderr()
    return skel.run(handlers(PluginHost()))
