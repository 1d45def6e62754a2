"""Synchronous rtnetlink for the pod's dataplane: pyroute2's messages on a plain blocking socket.

pyroute2's IPRoute runs every call through an asyncio event loop and its request filters:
~0.6 ms a call, and an ADD makes about ten (the kernel's own work for the whole ADD is
~1.2 ms, measured). Here pyroute2 still encodes and decodes every message (no attribute
numbers of our own); only the round trip is ours, at ~0.1 ms a call.

calico-node's tunnel routes use it too: tens of thousands of routes are written one call each, and
read back by `route_table`, which takes the three fields it needs from each dumped message with
struct (the layout and attribute numbers are pyroute2's own definitions) instead of decoding every
message whole (~0.25 ms each).

A socket belongs to the network namespace of the thread that made it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence, port
RT_HEADER = struct.Struct("=" + "".join(kind for _, kind in rtmsg.fields))  # struct rtmsg, pyroute2's layout
RT_ATTR = struct.Struct("=HH")  # struct rtattr: length, type
RTA = {name: number for number, (name, _) in enumerate(rtmsg.nla_map)}  # pyroute2's attribute numbering
ERROR_CODE = struct.Struct("=i")
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` and pyroute2 use by default
RTN_UNICAST = 1
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
TIMEOUT = 10.0  # the kernel always answers; this only bounds the unforeseen (socket.timeout is an OSError)


class Rtnl:
    """One NETLINK_ROUTE socket; each method is one request and its answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self.sock.settimeout(TIMEOUT)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the round trip --------------------------------------------------------------

    def _request(self, msg, kind: int, flags: int = 0, dump: bool = False) -> list[bytes]:
        """Sends `msg`; returns the raw replies. A dump ends with NLMSG_DONE, anything else with
        the kernel's ack (NLMSG_ERROR, code 0); a non-zero code raises NetlinkError.
        (`dump` is its own argument: NLM_F_DUMP shares its bits with NLM_F_EXCL|NLM_F_REPLACE.)"""
        self.seq += 1
        header = msg["header"]
        header["type"], header["sequence_number"], header["pid"] = kind, self.seq, 0
        header["flags"] = NLM_F_REQUEST | flags | (NLM_F_DUMP if dump else NLM_F_ACK)
        msg.encode()
        self.sock.send(msg.data)
        replies: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 18)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, kind_, _, seq, _ = HEADER.unpack_from(data, offset)
                if length < HEADER.size:
                    raise NetlinkError(errno.EBADMSG, "malformed netlink message")
                chunk = data[offset:offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue  # left over from a request that was given up on
                if kind_ == NLMSG_ERROR:
                    code = -ERROR_CODE.unpack_from(chunk, HEADER.size)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies
                if kind_ == NLMSG_DONE:
                    return replies
                replies.append(chunk)

    # --- links -----------------------------------------------------------------------

    def get_link(self, name: str = "", index: int = 0) -> ifinfmsg | None:
        """The link by name or index; None when there is no such link."""
        msg = ifinfmsg()
        msg["index"] = index
        if name:
            msg["attrs"] = [["IFLA_IFNAME", name]]
        try:
            replies = self._request(msg, RTM_GETLINK)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if not replies:
            return None
        link = ifinfmsg(replies[0])
        link.decode()
        return link

    def add_veth(self, name: str, mac: str, mtu: int, peer: dict) -> None:
        """`peer`: the other end's IFLA_* attributes by short name (ifname, net_ns_fd, mtu, address)."""
        msg = ifinfmsg()
        peer_attrs = [[f"IFLA_{k.upper()}", v] for k, v in peer.items()]
        msg["attrs"] = [
            ["IFLA_IFNAME", name],
            ["IFLA_ADDRESS", mac],
            ["IFLA_MTU", mtu],
            ["IFLA_LINKINFO", {"attrs": [
                ["IFLA_INFO_KIND", "veth"],
                ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", {"attrs": peer_attrs}]]}],
            ]}],
        ]
        self._request(msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def set_link(self, index: int, up: bool | None = None, alias: str | None = None) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        if up is not None:
            msg["change"] = IFF_UP
            msg["flags"] = IFF_UP if up else 0
        if alias is not None:
            msg["attrs"] = [["IFLA_IFALIAS", alias]]
        self._request(msg, RTM_NEWLINK)

    def del_link(self, index: int) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        self._request(msg, RTM_DELLINK)

    # --- addresses and routes ------------------------------------------------------------

    def add_address(self, index: int, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        msg = ifaddrmsg()
        msg["family"], msg["prefixlen"], msg["index"] = FAMILY[iface.version], iface.network.prefixlen, index
        address = str(iface.ip)
        msg["attrs"] = [["IFA_ADDRESS", address]] + ([["IFA_LOCAL", address]] if iface.version == 4 else [])
        self._request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def add_route(self, dst: str, oif: int, gateway: str = "", scope: int = 0, replace: bool = False,
                  proto: int = RTPROT_BOOT, flags: int = 0) -> None:
        """`dst` a CIDR ("0.0.0.0/0" for the default route); `replace` overwrites an existing one;
        `flags` the rtmsg flags (RTNH_F_ONLINK: the gateway is on the link whatever its address)."""
        network = ipaddress.ip_network(dst)
        msg = rtmsg()
        msg["family"], msg["dst_len"] = FAMILY[network.version], network.prefixlen
        msg["table"], msg["proto"], msg["scope"], msg["type"] = RT_TABLE_MAIN, proto, scope, RTN_UNICAST
        msg["flags"] = flags
        attrs = [["RTA_DST", str(network.network_address)]] if network.prefixlen else []
        if gateway:
            attrs.append(["RTA_GATEWAY", gateway])
        msg["attrs"] = attrs + [["RTA_OIF", oif]]
        self._request(msg, RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL))

    def del_route(self, dst: str, oif: int, proto: int) -> None:
        network = ipaddress.ip_network(dst)
        msg = rtmsg()
        msg["family"], msg["dst_len"] = FAMILY[network.version], network.prefixlen
        msg["table"], msg["proto"], msg["type"] = RT_TABLE_MAIN, proto, RTN_UNICAST
        msg["attrs"] = ([["RTA_DST", str(network.network_address)]] if network.prefixlen else []) + [["RTA_OIF", oif]]
        self._request(msg, RTM_DELROUTE)

    def route_table(self, family: int, oif: int, proto: int) -> dict[str, str]:
        """{destination CIDR: gateway ("" for none)} of the main table's routes through `oif` that
        `proto` made."""
        msg = rtmsg()
        msg["family"] = family
        width = 4 if family == socket.AF_INET else 16
        out: dict[str, str] = {}
        for raw in self._request(msg, RTM_GETROUTE, dump=True):
            fields = RT_HEADER.unpack_from(raw, HEADER.size)
            if fields[5] != proto or fields[4] != RT_TABLE_MAIN:  # rtm_protocol, rtm_table
                continue
            attrs, offset = {}, HEADER.size + RT_HEADER.size
            while offset + RT_ATTR.size <= len(raw):
                length, kind = RT_ATTR.unpack_from(raw, offset)
                if length < RT_ATTR.size:
                    break
                attrs[kind] = raw[offset + RT_ATTR.size:offset + length]
                offset += (length + 3) & ~3
            out_if = attrs.get(RTA["RTA_OIF"])
            if out_if is None or struct.unpack("=I", out_if)[0] != oif:
                continue
            dst = attrs.get(RTA["RTA_DST"], bytes(width))
            gateway = attrs.get(RTA["RTA_GATEWAY"])
            address = socket.inet_ntop(family, dst[:width])
            out[f"{address}/{fields[1]}"] = socket.inet_ntop(family, gateway[:width]) if gateway else ""
        return out

    def addresses(self, index: int, family: int = 0) -> list[ifaddrmsg]:
        return self._dump(ifaddrmsg, RTM_GETADDR, family, lambda a: a["index"] == index)

    def routes(self, family: int, oif: int) -> list[rtmsg]:
        return self._dump(rtmsg, RTM_GETROUTE, family, lambda r: r.get_attr("RTA_OIF") == oif)

    def route_oif(self, dst: str) -> int | None:
        """The interface of the main table's route to exactly `dst` (a CIDR), if there is one."""
        network = ipaddress.ip_network(dst)
        address = str(network.network_address)
        found = self._dump(rtmsg, RTM_GETROUTE, FAMILY[network.version],
                           lambda r: r["dst_len"] == network.prefixlen and r.get_attr("RTA_DST") == address
                           and r.get_attr("RTA_TABLE") in (None, RT_TABLE_MAIN))
        return found[0].get_attr("RTA_OIF") if found else None

    def _dump(self, cls, kind: int, family: int, keep) -> list:
        """Every object of `kind` in `family` (0: all) for which keep(decoded message) holds."""
        msg = cls()
        msg["family"] = family
        found = []
        for raw in self._request(msg, kind, dump=True):
            item = cls(raw)
            item.decode()
            if keep(item):
                found.append(item)
        return found
