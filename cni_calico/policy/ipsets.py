"""ipset members added and removed over netlink, many in one send (NFNL_SUBSYS_IPSET).

calico-node changes a set's members for every pod of the cluster that comes, goes or is
relabelled. Starting `ipset restore` costs ~1.5 ms of CPU a time and pyroute2's IPSet ~0.4 ms a
member (an asyncio round per call); one netlink buffer of small messages with their acks costs
a few µs a member. Sets are created, filled, swapped and destroyed with the `ipset` command
(cni_calico.policy.iptables): only membership changes come here.

The messages are the ones `ipset add/del -exist` sends: protocol 6, the set's name, and one
address, with its prefix length when the member is a network (hash:net; without one the kernel takes
a full-length network), or with its port and protocol when the member is ``"<address>,<proto>:<port>"``
(hash:ip,port: named ports). No NLM_F_EXCL, so adding a present member or deleting an absent one is
not an error.
A socket belongs to the network namespace of the thread that made it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from cni_calico.policy.layout import NAMED_PORT_PROTOCOLS

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD, IPSET_CMD_DEL = 9, 10
IPSET_PROTOCOL = 6
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_DATA = 1, 2, 7
ATTR_IP, ATTR_CIDR, ATTR_PORT, ATTR_PROTO, ATTR_IPADDR_IPV4, ATTR_IPADDR_IPV6 = 1, 3, 4, 7, 1, 2
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
HEADER = struct.Struct("=IHHII")  # nlmsghdr
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian, 0 here)
ATTR = struct.Struct("=HH")
CHUNK = 256  # messages a send (~80 bytes each, well inside the socket's buffers)


class IpsetError(OSError):
    """The kernel refused a change; `member` and `set_name` say which."""


def _attr(kind: int, payload: bytes) -> bytes:
    data = ATTR.pack(ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


class MemberSocket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.settimeout(10.0)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _message(self, set_name: str, member: str, add: bool) -> bytes:
        member, _, port = member.partition(",")
        family = socket.AF_INET6 if ":" in member else socket.AF_INET
        ip_kind = ATTR_IPADDR_IPV6 if family == socket.AF_INET6 else ATTR_IPADDR_IPV4
        text, _, length = member.partition("/")
        address = _attr(ip_kind | NLA_F_NET_BYTEORDER, socket.inet_pton(family, text))
        data = _attr(ATTR_IP | NLA_F_NESTED, address) + (_attr(ATTR_CIDR, bytes([int(length)])) if length else b"")
        if port:
            protocol, _, number = port.partition(":")
            data += _attr(ATTR_PORT | NLA_F_NET_BYTEORDER, struct.pack(">H", int(number)))
            data += _attr(ATTR_PROTO, bytes([NAMED_PORT_PROTOCOLS[protocol]]))
        body = NFGEN.pack(family, 0, 0) + _attr(ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
        body += _attr(ATTR_SETNAME, set_name.encode() + b"\0")
        body += _attr(ATTR_DATA | NLA_F_NESTED, data)
        self.seq += 1
        kind = (NFNL_SUBSYS_IPSET << 8) | (IPSET_CMD_ADD if add else IPSET_CMD_DEL)
        return HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body

    def change(self, changes: list[tuple[str, str, bool]]) -> None:
        """Applies (set, member, add?) changes in order, a few hundred a send; raises IpsetError
        naming the first the kernel refused (the ones before it are applied)."""
        for start in range(0, len(changes), CHUNK):
            self._send(changes[start:start + CHUNK])

    def _send(self, changes: list[tuple[str, str, bool]]) -> None:
        first = self.seq + 1
        self.sock.send(b"".join(self._message(name, member, add) for name, member, add in changes))
        pending = set(range(first, self.seq + 1))
        failure: IpsetError | None = None
        while pending:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, kind, _, seq, _ = HEADER.unpack_from(data, offset)
                if length < HEADER.size:
                    raise IpsetError(errno.EBADMSG, "malformed netlink message")
                if kind == NLMSG_ERROR and seq in pending:
                    pending.discard(seq)
                    code = -struct.unpack_from("=i", data, offset + HEADER.size)[0]
                    if code and failure is None:
                        name, member, add = changes[seq - first]
                        failure = IpsetError(code, f"ipset {'add' if add else 'del'} {name} {member}: "
                                                   f"{os.strerror(code) if code < 4096 else f'ipset error {code}'}")
                offset += (length + 3) & ~3
        if failure is not None:
            raise failure
