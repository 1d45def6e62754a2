"""The workload's links, addresses, routes and sysctls, through netlink (cni_calico.netlink); knows nothing of etcd.

Runs in the node's network namespace (the one the plugin was started in) and
reaches into the pod's namespace by path. `setup` leaves nothing behind when
it fails; `teardown` succeeds when things are already gone.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from cni_calico.errors import ADDRESS_CONFLICT, DATAPLANE_FAILURE, INVALID_ENV, CniError
from cni_calico.netlink import FAMILY, Rtnl

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
# The host veth's IPv6 link-local address, EUI-64 from HOST_MAC: the pods' IPv6 gateway.
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
SCOPE_LINK = 253
HOST_SYSCTLS_V4 = (
    "net/ipv4/conf/{if}/proxy_arp=1",
    "net/ipv4/neigh/{if}/proxy_delay=0",
    "net/ipv4/conf/{if}/forwarding=1",
    "net/ipv4/conf/{if}/route_localnet=1",
)
HOST_SYSCTLS_V6 = (
    "net/ipv6/conf/{if}/accept_dad=0",  # the link-local gateway is usable at once
    "net/ipv6/conf/{if}/accept_ra=0",
    "net/ipv6/conf/{if}/proxy_ndp=1",
    "net/ipv6/conf/{if}/forwarding=1",
)
POD_SYSCTLS_V6 = (
    "net/ipv6/conf/all/disable_ipv6=0",
    "net/ipv6/conf/default/disable_ipv6=0",
    "net/ipv6/conf/{if}/disable_ipv6=0",
    "net/ipv6/conf/{if}/accept_dad=0",  # the pod's /128 is usable at once
)
LINK_READY_TIMEOUT = 3.0


def families(addresses: list[str]) -> set[int]:
    return {ipaddress.ip_interface(a).version for a in addresses}


def result_routes(addresses: list[str]) -> list[tuple[str, str]]:
    """(destination, gateway) of the default routes a pod with these addresses gets."""
    have = families(addresses)
    return [r for r, family in ((("0.0.0.0/0", GATEWAY_V4), 4), (("::/0", GATEWAY_V6), 6)) if family in have]


@dataclass
class Workload:
    netns: str  # path of the pod's network namespace
    host_ifname: str  # cali…
    ifname: str  # CNI_IFNAME inside the pod
    addresses: list[str]  # CIDRs: "10.0.0.5/32"
    mtu: int = 1500
    allow_ip_forwarding: bool = False
    mac: str = ""  # the pod side's MAC; chosen up front so the endpoint record can be written first
    owner: str = ""  # the container ID, kept as the host veth's alias: who the link belongs to
    same_pod_name: bool = False  # the veth name is derived from the pod: an existing one is a stale sandbox


def random_mac() -> str:
    """A locally administered unicast MAC, as the kernel would pick for a veth."""
    first, *rest = os.urandom(6)
    return ":".join(f"{b:02x}" for b in ((first & 0xFE) | 0x02, *rest))


CLONE_NEWNET = 0x40000000


class HostNetlink:
    """Netlink sockets in the node's namespace, one per thread, each kept for its thread's next call.

    The host that runs the plugin owns one (cni_calico.host): the agent's worker threads live
    long, so they skip making a socket per request. A socket that failed other than by a kernel
    error reply is dropped, not reused."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def __call__(self) -> Iterator[Rtnl]:
        ipr = getattr(self._local, "socket", None)
        if ipr is None:
            ipr = self._local.socket = Rtnl()
        try:
            yield ipr
        except (NetlinkError, CniError):
            raise
        except BaseException:
            self._local.socket = None
            ipr.close()
            raise


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> Rtnl:
    """A netlink socket inside the namespace at `path` (never creates a namespace).

    The socket is made by this thread after joining the namespace, then the thread goes back:
    a socket stays in the namespace it was made in. (pyroute2's own netns= forks a helper
    process for this, which in a busy multi-threaded agent costs far more than the ADD.)"""
    if not os.path.exists(path):
        raise CniError(INVALID_ENV, f"CNI_NETNS {path} does not exist")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise CniError(INVALID_ENV, f"CNI_NETNS {path} cannot be opened: {exc.strerror}") from None
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise CniError(INVALID_ENV, f"CNI_NETNS {path} is not a network namespace: {exc.strerror}") from None
        try:
            return Rtnl()
        finally:
            _setns(own)  # back home before anything else runs on this thread
    finally:
        os.close(target)
        os.close(own)


def _index(ipr: Rtnl, ifname: str) -> int | None:
    """One RTM_GETLINK by name: the kernel answers for that link alone (a dump of every link
    grows with the pods on the node)."""
    link = ipr.get_link(ifname)
    return None if link is None else link["index"]


def write_sysctl(setting: str) -> None:
    """`net/ipv4/conf/x/forwarding=1` under /proc/sys of the calling thread's namespace."""
    key, _, value = setting.partition("=")
    with open(f"/proc/sys/{key}", "w") as f:
        f.write(value)


class Background:
    """fn() on a thread of its own, started at once; join() waits and raises what fn raised."""

    def __init__(self, fn) -> None:
        self.error: BaseException | None = None

        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                self.error = exc

        self.thread = threading.Thread(target=target)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def run_in_netns(path: str, fn) -> None:
    """Runs fn in a thread that has joined the namespace at path (setns is per thread)."""

    def joined() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd)
            fn()
        finally:
            os.close(fd)

    Background(joined).join()


def pod_has_interface(netns: str, ifname: str) -> bool:
    with open_netns(netns) as pod:
        return _index(pod, ifname) is not None


def host_owner(host_netlink: HostNetlink, host_ifname: str) -> str | None:
    """The container a host veth belongs to (its alias; "" if unknown), or None when there is none."""
    with host_netlink() as host:
        index = _index(host, host_ifname)
        return None if index is None else _alias(host, index)


def choose_host_ifname(host_netlink: HostNetlink, primary: str, alternate: str, owner: str,
                       same_pod_name: bool) -> str:
    """The host veth's name: `primary`, unless another container's veth holds it (then `alternate`).

    A pod-derived name is the pod's own (an existing one is a stale sandbox, replaced)."""
    if same_pod_name:
        return primary
    with host_netlink() as host:
        for name in (primary, alternate):
            index = _index(host, name)
            if index is None or _alias(host, index) in ("", owner):
                return name
    raise CniError(ADDRESS_CONFLICT, f"host interfaces {primary} and {alternate} both belong to other containers")


def setup(host_netlink: HostNetlink, w: Workload) -> str:
    """Creates the veth pair and everything around it; returns the pod-side MAC."""
    try:
        return _setup(host_netlink, w)
    except (NetlinkError, OSError) as exc:
        teardown_host(host_netlink, w.host_ifname, w.owner)
        raise CniError(DATAPLANE_FAILURE, f"setting up {w.host_ifname} for {w.netns} failed: {exc}") from None
    except BaseException:
        teardown_host(host_netlink, w.host_ifname, w.owner)
        raise


def _setup(host_netlink: HostNetlink, w: Workload) -> str:
    # (The pod's interface name was checked before IPAM; one that appeared since makes the add
    # below fail with EEXIST, reported as the same conflict.)
    with host_netlink() as host, open_netns(w.netns) as pod:
        stale = _index(host, w.host_ifname)
        if stale is not None:
            holder = _alias(host, stale)
            if not (w.same_pod_name or holder in ("", w.owner)):
                # Without Kubernetes the name is the container ID's first 11 characters: another
                # container sharing them must keep its veth.
                raise CniError(ADDRESS_CONFLICT, f"host interface {w.host_ifname} belongs to container {holder}",
                               f"container IDs {w.owner} and {holder} share their first 11 characters")
            # A previous sandbox of the same pod (or this container's leftover): Calico replaces it.
            log.info("removing stale host interface %s (of %s)", w.host_ifname, holder or "unknown")
            host.del_link(stale)
        fd = os.open(w.netns, os.O_RDONLY)
        try:
            peer = {"ifname": w.ifname, "net_ns_fd": fd, "mtu": w.mtu, **({"address": w.mac} if w.mac else {})}
            host.add_veth(w.host_ifname, HOST_MAC, w.mtu, peer=peer)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise CniError(ADDRESS_CONFLICT, f"interface {w.ifname} already exists in {w.netns}") from None
            raise
        finally:
            os.close(fd)
        created = host.get_link(w.host_ifname)
        host_index = created["index"]
        # A veth's IFLA_LINK is its peer's index, in the peer's namespace: no lookup in the pod.
        pod_index = created.get_attr("IFLA_LINK")
        have = families(w.addresses)
        settings = (HOST_SYSCTLS_V4 if 4 in have else ()) + (HOST_SYSCTLS_V6 if 6 in have else ())
        for setting in settings:  # before the link is up: IPv6 must not start DAD on it
            write_sysctl(setting.format(**{"if": w.host_ifname}))
        host.set_link(host_index, up=True, alias=w.owner or None)

        # One visit to the pod's namespace for its sysctls. As Calico, forwarding is set either way
        # (an image may come with it on); IPv6 before its address is added (no DAD for the /128).
        pod_sysctls = [x.format(**{"if": w.ifname}) for x in POD_SYSCTLS_V6] if 6 in have else []
        pod_sysctls.append(f"net/ipv4/ip_forward={1 if w.allow_ip_forwarding else 0}")
        run_in_netns(w.netns, lambda: [write_sysctl(x) for x in pod_sysctls])
        pod.set_link(pod_index, up=True)
        mac = w.mac or pod.get_link(index=pod_index).get_attr("IFLA_ADDRESS")
        for cidr in w.addresses:
            pod.add_address(pod_index, cidr)
        if 4 in have:
            pod.add_route(f"{GATEWAY_V4}/32", pod_index, scope=SCOPE_LINK)
            pod.add_route("0.0.0.0/0", pod_index, gateway=GATEWAY_V4)
        if 6 in have:
            _wait_link_local(host, host_index, w.host_ifname)
            pod.add_route("::/0", pod_index, gateway=GATEWAY_V6)
        for cidr in w.addresses:
            iface = ipaddress.ip_interface(cidr)
            _add_host_route(host, f"{iface.ip}/{32 if iface.version == 4 else 128}", host_index, w)
    return mac


def _add_host_route(host: Rtnl, dst: str, index: int, w: Workload) -> None:
    """The workload's /32 (/128) through its host veth. A route to that address through another
    container's interface (or any interface not ours) is refused, never moved: two workloads cannot
    have one address. Our own container's leftover (a veth of an earlier attempt) is replaced."""
    try:
        host.add_route(dst, index, scope=SCOPE_LINK)
        return
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    holder = host.route_oif(dst)
    if holder not in (None, index):
        link = host.get_link(index=holder)
        if link is not None and (link.get_attr("IFLA_IFALIAS") or "") != w.owner:
            name = link.get_attr("IFLA_IFNAME")
            raise CniError(ADDRESS_CONFLICT, f"route {dst} already exists for an interface other than "
                           f"{w.host_ifname}: {name} (container {link.get_attr('IFLA_IFALIAS') or 'unknown'})",
                           "the address is in use on this node; it is not taken over")
    host.add_route(dst, index, scope=SCOPE_LINK, replace=True)


def _wait_link_local(host: Rtnl, index: int, name: str) -> None:
    """The pods' IPv6 gateway is the host veth's link-local address: wait until the kernel has it."""
    import time

    deadline = time.monotonic() + LINK_READY_TIMEOUT
    while time.monotonic() < deadline:
        if any(a.get_attr("IFA_ADDRESS") == GATEWAY_V6 for a in host.addresses(index, FAMILY[6])):
            return
        time.sleep(0.01)
    raise CniError(DATAPLANE_FAILURE, f"{name} has no link-local address {GATEWAY_V6} after {LINK_READY_TIMEOUT} s "
                   "(is IPv6 disabled on the node?)")


def _alias(ipr: Rtnl, index: int) -> str:
    link = ipr.get_link(index=index)
    return (link.get_attr("IFLA_IFALIAS") or "") if link is not None else ""


def teardown_host(host_netlink: HostNetlink, host_ifname: str, owner: str = "") -> bool:
    """Deletes the host end (the kernel drops the peer and the routes with it) — only when it is
    `owner`'s (its alias), so a DEL never takes another container's veth of the same name."""
    with host_netlink() as host:
        index = _index(host, host_ifname)
        if index is None:
            return False
        if owner and _alias(host, index) not in ("", owner):
            log.info("leaving %s alone: it belongs to %s, not %s", host_ifname, _alias(host, index), owner)
            return False
        return _delete_link(host, index, host_ifname)


def _delete_link(ipr: Rtnl, index: int, what: str) -> bool:
    """False when it was already gone (a concurrent DEL, or its namespace went)."""
    try:
        ipr.del_link(index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise CniError(DATAPLANE_FAILURE, f"deleting {what} failed: {exc}") from None
        return False
    return True


def teardown_pod(netns: str, ifname: str) -> bool:
    """Deletes the pod's interface when the namespace is still there; a gone netns is fine."""
    if not netns or not os.path.exists(netns):
        return False
    try:
        pod = open_netns(netns)
    except CniError:
        return False
    with pod:
        index = _index(pod, ifname)
        return index is not None and _delete_link(pod, index, f"{ifname} in {netns}")


def check(host_netlink: HostNetlink, w: Workload) -> None:
    """Raises CniError naming the first piece of the workload's dataplane that is missing."""
    with host_netlink() as host, open_netns(w.netns) as pod:
        host_index = _index(host, w.host_ifname)
        if host_index is None:
            raise CniError(DATAPLANE_FAILURE, f"host interface {w.host_ifname} is missing")
        pod_index = _index(pod, w.ifname)
        if pod_index is None:
            raise CniError(DATAPLANE_FAILURE, f"interface {w.ifname} is missing in {w.netns}")
        have = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in pod.addresses(pod_index)
        }
        for cidr in w.addresses:
            if str(ipaddress.ip_interface(cidr)) not in have:
                raise CniError(DATAPLANE_FAILURE, f"address {cidr} is missing on {w.ifname} in {w.netns}")
        host_routes = {
            (r.get_attr("RTA_DST"), r["dst_len"])
            for r in host.routes(0, host_index)
            if r.get_attr("RTA_DST")
        }
        for cidr in w.addresses:
            iface = ipaddress.ip_interface(cidr)
            if (str(iface.ip), 32 if iface.version == 4 else 128) not in host_routes:
                raise CniError(DATAPLANE_FAILURE, f"route {iface.ip} dev {w.host_ifname} is missing")
        for family, gateway in ((4, GATEWAY_V4), (6, GATEWAY_V6)):
            if family not in families(w.addresses):
                continue
            defaults = [r for r in pod.routes(FAMILY[family], pod_index)
                        if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == gateway]
            if not defaults:
                raise CniError(DATAPLANE_FAILURE, f"default route via {gateway} is missing in {w.netns}")
