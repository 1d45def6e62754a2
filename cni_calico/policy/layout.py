"""The fixed parts of the policy dataplane: chain and ipset names, marks, the two IP families, and the
text of an iptables-restore / ip6tables-restore transaction (pure, no I/O).

What holds:

- Both families use the same chain names, marks and layout (see cni_calico.policy.render); only the
  table's tools, the ipset family and name prefix, the ICMP spelling and "any address" differ (``Family``).
- Host endpoints (cni_calico.policy.hostep) add chains to the mangle and raw tables too: a chain of those
  is keyed ``"<table>:<chain>"`` in a Ruleset (``qualified``); a filter chain by its bare name (chain
  names never hold a colon). Our chains are entered from the built-in chains by ``HOOKS``, one jump each,
  present exactly when the hooked chain is in the Ruleset.
- Every chain is named ``cali-...`` in at most 28 characters; every ipset ``cali40...`` (IPv4, family
  inet) or ``cali60...`` (IPv6, family inet6) in at most 31 (longer names are hashed), so the two
  families' sets never share a name. The policy's sets are ``cali40<kind>:…`` (``policy_set``); outgoing
  NAT's (cni_calico.policy.natout) are named as Felix names them, with no colon.
- Kinds: ``s`` selector sets (hash:net), ``n`` a rule's nets (hash:net) and named-port sets
  (hash:ip,port, ``named_port_set``: ``n`` is Felix's prefix for them; the digest covers the set type,
  so a nets set and a named-port set never share a name), ``h`` host endpoints' tunnel peers
  (cni_calico.policy.hostep), ``t`` the temporary set of a swap.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

ACCEPT_MARK = 0x10000
PASS_MARK = 0x20000
MARKS = ACCEPT_MARK | PASS_MARK
FORWARD_CHAIN = "cali-FORWARD"
FROM_WL = "cali-from-wl-dispatch"
TO_WL = "cali-to-wl-dispatch"
CHAIN_PREFIX = "cali-"
SET_PREFIX = "cali40"  # IPv4; the IPv6 one is V6.set_prefix
IFACE_PREFIX = "cali"
MAX_CHAIN = 28
MAX_SET = 31
JUMP = f'-m comment --comment "cali:calico-node policy" -j {FORWARD_CHAIN}'
INPUT_CHAIN = "cali-INPUT"
OUTPUT_CHAIN = "cali-OUTPUT"
PREROUTING_CHAIN = "cali-PREROUTING"
POSTROUTING_CHAIN = "cali-POSTROUTING"  # in mangle (the nat table's is cni_calico.policy.natout's)
WL_TO_HOST = "cali-wl-to-host"  # workload -> its own host: its egress policy, then DefaultEndpointToHostAction
TABLES = ("filter", "mangle", "raw")  # ours to program (the nat table's chains are cni_calico.policy.natout's)
# (table, built-in chain) -> our chain its first rule jumps to, when that chain is rendered.
HOOKS = {("filter", "FORWARD"): FORWARD_CHAIN, ("filter", "INPUT"): INPUT_CHAIN, ("filter", "OUTPUT"): OUTPUT_CHAIN,
         ("mangle", "PREROUTING"): PREROUTING_CHAIN, ("raw", "PREROUTING"): PREROUTING_CHAIN,
         ("mangle", "POSTROUTING"): POSTROUTING_CHAIN, ("raw", "OUTPUT"): OUTPUT_CHAIN}
ND_TYPES = (133, 134, 135, 136)  # router solicitation/advertisement, neighbour solicitation/advertisement
# What a workload may always send its host (Felix's ICMPv6Filter): multicast listener query, report and
# done, router solicitation, neighbour solicitation and advertisement.
WL_TO_HOST_ICMPV6 = (130, 131, 132, 133, 135, 136)
_READABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class Family:
    version: int  # 4 or 6
    save: str  # "iptables-save"
    restore: str  # "iptables-restore"
    iptables: str  # "iptables" (asked for its --version: legacy or nf_tables)
    set_prefix: str  # "cali40"
    ipset_family: str  # "inet"
    nft_family: str  # "ip": the nf_tables family of its tables
    any_net: str  # "0.0.0.0/0"
    halves: tuple[str, str]  # any_net as two nets (hash:net holds no /0)
    icmp: str  # the ICMP protocol's spelling in this table
    icmp_match: str  # "-m icmp"
    icmp_type: str  # its option for a type or type/code ("--icmp-type")
    label: str  # prefix of what cleanup reports ("" or "ip6 ")

    def holds(self, address: str) -> bool:
        """Whether an address or network (as normalised by the ipaddress module) is of this family."""
        return (":" in address) == (self.version == 6)


V4 = Family(4, "iptables-save", "iptables-restore", "iptables", SET_PREFIX, "inet", "ip", "0.0.0.0/0",
            ("0.0.0.0/1", "128.0.0.0/1"), "icmp", "-m icmp", "--icmp-type", "")
V6 = Family(6, "ip6tables-save", "ip6tables-restore", "ip6tables", "cali60", "inet6", "ip6", "::/0",
            ("::/1", "8000::/1"), "ipv6-icmp", "-m icmp6", "--icmpv6-type", "ip6 ")
FAMILIES = {4: V4, 6: V6}


@dataclass(frozen=True)
class IpSet:
    kind: str  # "hash:ip" or "hash:net"
    members: tuple[str, ...]


@dataclass
class Ruleset:
    """One family's filter chains and ipsets."""

    chains: dict[str, tuple[str, ...]]  # chain -> its rules, each the text after "-A <chain> "
    ipsets: dict[str, IpSet]
    version: int = 4

    def text(self) -> str:
        """The whole ruleset as one *-restore --noflush transaction per table (jumps inserted at the top)."""
        return "".join(restore_text(chains, jump=[f"-I {builtin} 1 {jump_rule(chain)}"
                                                  for builtin, chain in hooks(table, chains)], table=table)
                       for table, chains in by_table(self.chains).items())


def qualified(table: str, chain: str) -> str:
    """A chain's key in a Ruleset: the bare name in the filter table, ``"<table>:<chain>"`` elsewhere."""
    return chain if table == "filter" else f"{table}:{chain}"


def split_key(key: str) -> tuple[str, str]:
    """(table, chain) of a Ruleset key."""
    table, sep, chain = key.partition(":")
    return (table, chain) if sep else ("filter", key)


def by_table(chains: dict[str, tuple[str, ...]]) -> dict[str, dict[str, tuple[str, ...]]]:
    """A Ruleset's chains split by table (filter first, tables without chains left out)."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for key, rules in chains.items():
        table, chain = split_key(key)
        out.setdefault(table, {})[chain] = rules
    return {t: out[t] for t in TABLES if t in out}


def jump_rule(chain: str) -> str:
    """Our one jump from a built-in chain to ``chain`` (as iptables-save prints it)."""
    return f'-m comment --comment "cali:calico-node policy" -j {chain}'


def hooks(table: str, chains: Iterable[str]) -> list[tuple[str, str]]:
    """(built-in, our chain) for each jump the table needs, given the chains (bare names) it holds."""
    present = set(chains)
    return [(builtin, ours) for (t, builtin), ours in HOOKS.items() if t == table and ours in present]


def _digest(text: str, length: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode()[:length]


def chain_name(prefix: str, name: str) -> str:
    """``prefix + name`` if it is short and plain enough, else ``prefix + "_" + hash`` (28 chars)."""
    if len(prefix) + len(name) <= MAX_CHAIN and _READABLE.match(name):
        return prefix + name
    return prefix + "_" + _digest(name, MAX_CHAIN - len(prefix) - 1)


SELECTOR_SET = "hash:net"  # as Felix: a selector matches endpoints' addresses and network sets' CIDRs
NAMED_PORT_SET = "hash:ip,port"  # as Felix: members "<address>,<proto>:<port>"
NAMED_PORT_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}  # a named-port member's protocols (Felix's ipsetmember)


def set_name(kind: str, key: str, version: int = 4) -> str:
    """``cali40<kind>:<hash>`` (``cali60`` for IPv6), 31 chars: kind "s" (selector), "n" (nets), "t"
    (temp); all hash:net. The digest covers the set type: selector sets were hash:ip before network
    sets, and ipset cannot swap sets of different types, so after an upgrade the new sets have new
    names and the old ones go as stale once no rule names them."""
    prefix = f"{FAMILIES[version].set_prefix}{kind}:"
    salt = SELECTOR_SET if kind == "s" else ""
    return prefix + _digest(kind + salt + key, MAX_SET - len(prefix))


def named_port_set(selector: str, protocol: str, name: str, version: int = 4) -> str:
    """A named-port set's name, ``cali40n:<hash>`` (Felix's prefix ``n``): one per (the rule side's
    scoped selector, "all()" without one; the protocol, "any" without one; the port name), as Felix's
    rule scanner keys them."""
    prefix = f"{FAMILIES[version].set_prefix}n:"
    return prefix + _digest("n" + NAMED_PORT_SET + f"{selector},{protocol},{name}", MAX_SET - len(prefix))


def set_member(net: str) -> str:
    """A hash:net member as the kernel prints it: a full-length network is its bare address."""
    address, _, length = net.partition("/")
    return address if length in ("32", "128") and (length == "128") == (":" in address) else net


def policy_set(name: str, family: Family) -> bool:
    """Whether an ipset is the policy's (``cali40<kind>:…``), not outgoing NAT's (``cali40masq-ipam-pools``)."""
    prefix = family.set_prefix
    return name.startswith(prefix) and name[len(prefix) + 1:len(prefix) + 2] == ":"


def restore_text(chains: dict[str, tuple[str, ...]], remove: Iterable[str] = (), jump: Iterable[str] = (),
                 table: str = "filter") -> str:
    """A *-restore --noflush transaction for one table: declare (= flush) every chain written or
    removed, write ``chains``, apply the ``jump`` lines, then delete the ``remove`` chains."""
    remove = sorted(set(remove) - set(chains))
    lines = [f"*{table}"] + [f":{c} - [0:0]" for c in [*chains, *remove]] + list(jump)
    for chain, rules in chains.items():
        lines += [f"-A {chain} {rule}" for rule in rules]
    lines += [f"-X {c}" for c in remove] + ["COMMIT", ""]
    return "\n".join(lines)
