"""calico-node's policy component: etcd's policy resources in, the node's iptables/ip6tables chains and
ipsets out, one update at a time (cni_calico.policy.calc), for IPv4 and, where the kernel and tools
have it, IPv6 (``ipv6_available``).

What holds: `reset` (or `load`) starts from a snapshot (start-up, or a resync after etcd compacted what the
watch needed): the calculator is rebuilt and the next `flush` makes the kernel hold its whole state
(diffing against what is programmed: nothing opens on the way). `update` feeds one watched change;
`flush` programs what changed since the last one, in one ipset and one iptables-restore
transaction per family, so a burst of changes costs one apply. A failed apply forgets what the
kernel holds; the next flush is a whole apply. `repair` compares the kernel with the desired state
and puts back what someone else changed. The families are applied one after the other (IPv4
first), each with its own Dataplane: one family's failure does not stop the other's apply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from cni_calico import keys
from cni_calico.policy import model
from cni_calico.policy.calc import PolicyCalculator
from cni_calico.policy.hostep import Failsafe, Tunnels
from cni_calico.policy.iptables import Dataplane, ipv6_available
from cni_calico.v3 import DEFAULT_ENDPOINT_TO_HOST

log = logging.getLogger(__name__)

PLURALS = ("workloadendpoints", "profiles", "networkpolicies", "globalnetworkpolicies", "tiers", "networksets",
           "globalnetworksets", "hostendpoints")


class PolicySync:
    def __init__(self, nodename: str, dataplane: Dataplane | None = None, ipv6: bool | None = None) -> None:
        """``dataplane``: the IPv4 one; the IPv6 one uses its runner. ``ipv6``: None = where available."""
        self.nodename = nodename
        self.dataplane = dataplane or Dataplane()
        self.dataplanes = [self.dataplane]
        if ipv6 or (ipv6 is None and ipv6_available()):
            self.dataplanes.append(Dataplane(self.dataplane.run, version=6))
        self.versions = tuple(d.family.version for d in self.dataplanes)
        self.failsafe = Failsafe()
        self.tunnels = Tunnels()
        self.addresses: dict[str, frozenset[str]] = {}  # this node's interfaces' (host endpoints by expectedIPs)
        self.to_host = DEFAULT_ENDPOINT_TO_HOST
        self.calc = PolicyCalculator(nodename, self.versions, self.failsafe, self.to_host)
        self.whole = True  # the next flush applies the whole state (start, resync, after a failure)
        self.updates = 0  # updates fed since start (for tests and benchmarks)
        self.last_timings: dict[str, float] = {}

    @staticmethod
    def wants(key: str) -> bool:
        parsed = keys.parse_resource(key)
        return parsed is not None and parsed.plural in PLURALS

    def reset(self) -> None:
        """A snapshot follows (its keys come as updates): start from nothing; the next flush makes the
        kernel hold the whole new state, diffed against what it holds now."""
        self.calc = PolicyCalculator(self.nodename, self.versions, self.failsafe, self.to_host)  # old one goes first
        self.calc.set_interface_addresses(self.addresses)
        self.calc.set_tunnels(self.tunnels)
        self.whole = True

    @property
    def wants_addresses(self) -> bool:
        """Whether a host endpoint of this node is found by its expectedIPs (then feed the addresses)."""
        return self.calc.wants_addresses

    def set_interface_addresses(self, addresses: dict[str, frozenset[str]]) -> None:
        """This node's interfaces and their addresses; kept across resets."""
        self.addresses = addresses
        self.calc.set_interface_addresses(addresses)

    def set_tunnels(self, tunnels: Tunnels) -> None:
        """The pools' encapsulations and the nodes' addresses (from the routing view); kept across resets."""
        self.tunnels = tunnels
        self.calc.set_tunnels(tunnels)

    def set_failsafe(self, failsafe: Failsafe) -> None:
        """The failsafe ports changed (FelixConfiguration or the environment); kept across resets."""
        self.failsafe = failsafe
        self.calc.set_failsafe(failsafe)

    def set_endpoint_to_host(self, to_host: str) -> None:
        """DefaultEndpointToHostAction changed (FelixConfiguration or the environment); kept across resets."""
        self.to_host = to_host
        self.calc.set_endpoint_to_host(to_host)

    def load(self, items: Iterable[tuple[str, dict]]) -> None:
        """`reset`, then every (key, value) of a snapshot."""
        self.reset()
        for key, value in items:
            self.update(key, value)

    def update(self, key: str, value: dict | None) -> None:
        """One watched change (value None: deleted); keys that are not policy resources are ignored."""
        parsed = keys.parse_resource(key)
        if parsed is None or parsed.plural not in PLURALS:
            return
        self.updates += 1
        name = f"{parsed.namespace}/{parsed.name}" if parsed.namespace else parsed.name
        try:
            if parsed.plural == "workloadendpoints":
                self.calc.update_endpoint(name, None if value is None else model.endpoint_from_resource(value))
            elif parsed.plural in ("networksets", "globalnetworksets"):
                # A network set is matched by selectors as an endpoint is (model.network_set_from_resource).
                namespaced = parsed.plural == "networksets"
                key = f"{'networkset' if namespaced else 'globalnetworkset'}:{name}"
                self.calc.update_endpoint(key, None if value is None else
                                          model.network_set_from_resource(value, namespaced=namespaced))
            elif parsed.plural == "hostendpoints":
                self.calc.update_endpoint(f"hostendpoint:{name}", None if value is None else
                                          model.host_endpoint_from_resource(value))
            elif parsed.plural == "profiles":
                self.calc.update_profile(name, None if value is None else model.profile_from_resource(value))
            elif parsed.plural == "tiers":
                self.calc.update_tier(name, None if value is None else model.tier_from_resource(value))
            else:
                namespaced = parsed.plural == "networkpolicies"
                policy = None if value is None else model.policy_from_resource(value, namespaced=namespaced)
                self.calc.update_policy(name, policy)
        except (AttributeError, TypeError, ValueError) as exc:  # a value no Calico tool would write
            log.warning("ignoring malformed %s %s: %s", parsed.plural, name, exc)

    def flush(self) -> bool:
        """Programs what changed since the last flush; True if the kernel was changed."""
        t0 = time.monotonic()
        changed, failure = False, None
        whole, self.whole = self.whole, False
        for dataplane in self.dataplanes:
            version = dataplane.family.version
            changes = self.calc.take_changes(version)
            try:
                if whole or not dataplane.programmed:
                    changed = dataplane.apply(self.calc.ruleset(version)) or changed
                else:
                    changed = dataplane.apply_changes(changes) or changed
            except Exception as exc:  # noqa: BLE001 - re-raised once the other family is applied
                failure = failure or exc
        self.last_timings = {"apply": time.monotonic() - t0}
        if failure is not None:
            raise failure
        return changed

    def repair(self) -> list[str]:
        """Puts back what differs between the kernel and the desired state (see Dataplane.repair)."""
        repaired: list[str] = []
        for dataplane in self.dataplanes:
            repaired += dataplane.repair(self.calc.ruleset(dataplane.family.version))
        return repaired

    def ruleset(self, version: int = 4):
        return self.calc.ruleset(version)
