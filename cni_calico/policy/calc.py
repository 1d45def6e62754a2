"""A node's policy, kept up to date change by change: chains and ipsets for each IP family (pure).

The result is always what cni_calico.policy.render would render from scratch for the same
endpoints, profiles and policies (`ruleset` gives it whole; tests hold the two equal), but each
update touches only what depends on it:

- a remote endpoint: the selector index (cni_calico.policy.index) says which active selector sets
  and named-port sets (keyed by their selector too) it joins or leaves; only those sets' members
  change, and in the sets it stays in only when its addresses or named ports changed;
- a local endpoint (this node's, with a cali interface): its own chains, the chains they jump to,
  and the dispatch chains when its interface comes or goes;
- a policy or profile: its chains where a local endpoint uses them, the local endpoints it
  selects (a policy) or labels (a profile's labelsToApply: its endpoints are re-indexed);
- a tier: the local endpoints' own chains (tiers are few and rarely change);
- a local host endpoint (cni_calico.policy.hostep; its node is this one and it names an interface,
  or one of the node's interfaces holds an address it expects: `set_interface_addresses`): its own
  chains, re-rendered whole when it, a policy selecting it, its profile, a tier or the failsafe
  ports change (a node has a few), and the fixed host endpoint chains when the set of them changes;
- DefaultEndpointToHostAction (`set_endpoint_to_host`), failsafe ports, tunnels: the fixed chains;
- nothing else: endpoint updates never re-render policy chains, and nothing re-renders BIRD.

Set and chain lifetimes are reference counts: a policy or profile chain lives while some local
endpoint's chain jumps to it; a set lives while some live chain names it, and its selector is in
the index only while some family's set (selector or named-port) lives. `take_changes` hands the
accumulated difference to the dataplane (cni_calico.policy.iptables), one family at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cni_calico.policy import hostep, model
from cni_calico.policy.hostep import Failsafe, Tunnels
from cni_calico.policy.index import SelectorIndex, discard
from cni_calico.policy.layout import (
    FAMILIES,
    NAMED_PORT_SET,
    SELECTOR_SET,
    TABLES,
    IpSet,
    Ruleset,
    qualified,
    split_key,
)
from cni_calico.policy.render import (
    DIRECTIONS,
    RuleRenderer,
    body_chains,
    dispatchable,
    fixed_chains,
    for_workloads,
    host_endpoint_chains,
    host_summary,
    policy_chain,
    present_profiles,
    profile_chain,
    workload_chains,
)
from cni_calico.selector import matches
from cni_calico.v3 import DEFAULT_ENDPOINT_TO_HOST

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """What one family's kernel state must do to match: chains to write (None: remove), sets to create
    (with their kind and members), members to add and delete, sets to destroy."""

    chains: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    created: dict[str, IpSet] = field(default_factory=dict)
    added: dict[str, set[str]] = field(default_factory=dict)
    deleted: dict[str, set[str]] = field(default_factory=dict)
    destroyed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.chains or self.created or self.added or self.deleted or self.destroyed)


class _Family:
    """One family's desired chains and sets, with reference counts and the pending changes."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.family = FAMILIES[version]
        self.chains: dict[str, tuple[str, ...]] = {}
        self.chain_refs: dict[str, int] = {}  # body chain -> local endpoint chains jumping to it
        self.chain_sets: dict[str, set[str]] = {}  # body chain -> the sets it names
        self.set_refs: dict[str, int] = {}  # set -> live chains naming it
        self.set_kind: dict[str, str] = {}
        self.selector_of: dict[str, str] = {}  # selector and named-port set -> its selector
        self.named_of: dict[str, tuple[str, str]] = {}  # named-port set -> (protocol, port name)
        self.members: dict[str, dict[str, int]] = {}  # set -> member -> endpoints holding it (selector and
        # named-port sets)
        self.static: dict[str, tuple[str, ...]] = {}  # net set -> members
        self.fixed: set[str] = set()  # the fixed chains written (render.fixed_chains)
        self.fixed_sets: dict[str, tuple[str, ...]] = {}  # the sets they name (hostep.tunnel_set) -> members
        self.pending = Changes()

    def contribution(self, name: str, ep: model.Endpoint | None) -> set[str]:
        """What an endpoint its selector matches puts in a selector or named-port set."""
        if ep is None:
            return set()
        named = self.named_of.get(name)
        if named is None:
            return {a for a in ep.addresses if self.family.holds(a)}
        return set(model.named_port_members(ep, *named, self.version))

    def write(self, name: str, rules: tuple[str, ...]) -> None:
        if self.chains.get(name) != rules:
            self.chains[name] = rules
            self.pending.chains[name] = rules

    def remove(self, name: str) -> None:
        if self.chains.pop(name, None) is not None:
            self.pending.chains[name] = None

    def add_member(self, name: str, address: str) -> None:
        counts = self.members[name]
        counts[address] = counts.get(address, 0) + 1
        if counts[address] == 1:
            if address in self.pending.deleted.get(name, ()):
                self.pending.deleted[name].discard(address)
            elif name in self.pending.created:
                pass  # filled when the changes are taken
            else:
                self.pending.added.setdefault(name, set()).add(address)

    def drop_member(self, name: str, address: str) -> None:
        counts = self.members[name]
        counts[address] -= 1
        if counts[address] == 0:
            del counts[address]
            if address in self.pending.added.get(name, ()):
                self.pending.added[name].discard(address)
            elif name not in self.pending.created:
                self.pending.deleted.setdefault(name, set()).add(address)


class PolicyCalculator:
    def __init__(self, nodename: str, versions: tuple[int, ...] = (4, 6), failsafe: Failsafe | None = None,
                 to_host: str = DEFAULT_ENDPOINT_TO_HOST) -> None:
        self.nodename = nodename
        self.failsafe = failsafe or Failsafe()
        self.to_host = to_host  # DefaultEndpointToHostAction: Drop, Accept or Return
        self.tunnels = Tunnels()
        self.endpoints: dict[str, model.Endpoint] = {}  # key -> endpoint, own labels (effective: in the index)
        self.by_profile: dict[str, set[str]] = {}  # profile -> endpoints naming it
        self.profiles: dict[str, model.Profile] = {}
        self.policies: dict[str, model.Policy] = {}
        self.tiers: dict[str, model.Tier] = {}
        self.ordered: list[model.Policy] = []  # policies with a selector, in Felix's order
        self.index = SelectorIndex()
        self.by_interface: dict[str, set[str]] = {}  # local interface -> endpoints claiming it
        self.local: dict[str, str] = {}  # local interface -> the endpoint that has it (first by key)
        # local interface (workloads), "host:<name>" (host endpoints) -> the body chains its chains jump to
        self.jumps: dict[str, dict] = {}
        self.owned: dict[str, tuple[str, ...]] = {}  # the same keys -> its own chains
        self.host_claims: dict[str, set[str]] = {}  # host endpoint chain name (hostep.iface_key) -> claimants
        self.hosts: dict[str, str] = {}  # host endpoint chain name -> the host endpoint that has it
        self.host_owns: dict[str, dict[str, tuple[str, ...]]] = {}  # chain name -> its own chains
        self.host_names: dict[str, set[str]] = {}  # host endpoint -> the chain names it claims
        self.interface_addresses: dict[str, frozenset[str]] = {}  # this node's interfaces' addresses
        self.unnamed_hosts: set[str] = set()  # this node's host endpoints found by their expectedIPs alone
        self.families = {v: _Family(v) for v in versions}
        self._dirty_local: set[str] = set()
        self._dirty_hosts: set[str] = set()
        self._summary: hostep.HostSummary | None = None
        self._sets_of: dict[str, list[tuple[_Family, str]]] = {}  # active selector -> its live sets
        self._write_fixed()

    # --- updates -------------------------------------------------------------------------------

    def update_endpoint(self, key: str, ep: model.Endpoint | None) -> None:
        old = self.endpoints.pop(key, None)
        if old is not None:
            for name in model.label_profiles(old):
                discard(self.by_profile, name, key)
            self._unclaim(key, old)
        if ep is None:
            left = self.index.remove(key)
            self._move_members(old, None, left, set(), set())
        else:
            self.endpoints[key] = ep
            for name in model.label_profiles(ep):
                self.by_profile.setdefault(name, set()).add(key)
            self._relabel(key, old)
            if dispatchable(ep, self.nodename):
                self.by_interface.setdefault(ep.interface, set()).add(key)
                self._claim(ep.interface)
        if (old is not None and old.host) or (ep is not None and ep.host):
            self._claim_hosts(key, self._host_names(ep) if ep is not None else set())
            if ep is not None and not ep.interface and hostep.policed(ep, self.nodename):
                self.unnamed_hosts.add(key)
            else:
                self.unnamed_hosts.discard(key)
        self._refresh_locals()

    def set_interface_addresses(self, addresses: dict[str, frozenset[str]]) -> None:
        """This node's interfaces and their addresses: host endpoints without an interfaceName police
        the interfaces that hold one of their expectedIPs."""
        if addresses == self.interface_addresses:
            return
        self.interface_addresses = dict(addresses)
        for key in sorted(self.unnamed_hosts):
            self._claim_hosts(key, self._host_names(self.endpoints[key]))
        self._refresh_locals()

    @property
    def wants_addresses(self) -> bool:
        """Whether some host endpoint of this node is found by its expectedIPs alone."""
        return bool(self.unnamed_hosts)

    def update_profile(self, name: str, profile: model.Profile | None) -> None:
        old = self.profiles.pop(name, None)
        if profile is not None:
            self.profiles[name] = profile
        if (old.labels if old else {}) != (profile.labels if profile else {}):
            for key in sorted(self.by_profile.get(name, ())):
                self._relabel(key, self.endpoints[key])
        # Its chains change text, and local endpoints naming it change chains (present or not).
        self._rerender_body(name, profile, is_policy=False)
        for iface, key in self.local.items():
            if name in self.endpoints[key].profiles:
                self._dirty_local.add(iface)
        for host, key in self.hosts.items():
            if name in self.endpoints[key].profiles:
                self._dirty_hosts.add(host)
        self._refresh_locals()

    def update_policy(self, key: str, policy: model.Policy | None) -> None:
        old = self.policies.pop(key, None)
        if policy is not None:
            self.policies[key] = policy
        self.ordered = sorted((p for p in self.policies.values() if p.selector), key=model.Policy.sort_key)
        self._rerender_body(key, policy, is_policy=True)
        for iface, ep_key in self.local.items():
            labels = self.index.labels(ep_key)
            if any(p is not None and p.selector and matches(p.selector, labels) for p in (old, policy)):
                self._dirty_local.add(iface)
        for host, ep_key in self.hosts.items():
            labels = self.index.labels(ep_key)
            if any(p is not None and p.selector and matches(p.selector, labels) for p in (old, policy)):
                self._dirty_hosts.add(host)
        self._refresh_locals()

    def update_tier(self, name: str, tier: model.Tier | None) -> None:
        """A tier's order or default action shapes every local endpoint's chains (tiers are few and rare)."""
        if tier is None:
            self.tiers.pop(name, None)
        else:
            self.tiers[name] = tier
        self._dirty_local.update(self.local)
        self._dirty_hosts.update(self.hosts)
        self._refresh_locals()

    def set_tunnels(self, tunnels: Tunnels) -> None:
        """The pools' encapsulations and the nodes' addresses (host endpoints let tunnels through)."""
        if tunnels != self.tunnels:
            self.tunnels = tunnels
            self._write_fixed()

    def set_failsafe(self, failsafe: Failsafe) -> None:
        """FelixConfiguration's (or the environment's) failsafe ports: the failsafe chains change."""
        if failsafe != self.failsafe:
            self.failsafe = failsafe
            self._write_fixed()

    def set_endpoint_to_host(self, to_host: str) -> None:
        """DefaultEndpointToHostAction (Drop, Accept or Return): cali-wl-to-host's last rule changes."""
        if to_host != self.to_host:
            self.to_host = to_host
            self._write_fixed()

    # --- the result ----------------------------------------------------------------------------

    def take_changes(self, version: int) -> Changes:
        """The changes accumulated for one family since the last call (new sets with their members)."""
        fam = self.families[version]
        changes, fam.pending = fam.pending, Changes()
        for name in changes.created:
            changes.created[name] = self._ipset(fam, name)
        for name in list(changes.added):
            if not changes.added[name] or name not in fam.set_refs:
                del changes.added[name]
        for name in list(changes.deleted):
            if not changes.deleted[name] or name not in fam.set_refs:
                del changes.deleted[name]
        return changes

    def ruleset(self, version: int) -> Ruleset:
        """The family's whole desired state (as render.render would give it)."""
        fam = self.families[version]
        sets = {name: self._ipset(fam, name) for name in fam.set_refs}
        return Ruleset(dict(sorted(fam.chains.items())), dict(sorted(sets.items())), version)

    def _ipset(self, fam: _Family, name: str) -> IpSet:
        if name in fam.static:
            return IpSet("hash:net", fam.static[name])
        return IpSet(NAMED_PORT_SET if name in fam.named_of else SELECTOR_SET, tuple(sorted(fam.members[name])))

    # --- endpoints and labels ------------------------------------------------------------------

    def _relabel(self, key: str, old: model.Endpoint | None) -> None:
        """(Re)computes an endpoint's effective labels and moves it between selector and named-port
        sets (``old``: the endpoint as the sets hold it now)."""
        ep = self.endpoints[key]
        before = self.index.selectors(key)
        joined, left = self.index.update(key, model.effective_labels(ep, self.profiles))
        self._move_members(old, ep, left, joined, before - left)
        if self.local.get(ep.interface) == key:
            self._dirty_local.add(ep.interface)
        for name in self.host_names.get(key, ()):
            if self.hosts.get(name) == key:
                self._dirty_hosts.add(name)

    def _move_members(self, old: model.Endpoint | None, new: model.Endpoint | None, left: set[str],
                      joined: set[str], stayed: set[str]) -> None:
        """An endpoint's members out of the sets of the selectors it ``left``, into those it ``joined``,
        and, where its addresses or ports changed, changed in those it ``stayed`` in."""
        for selector in left:
            self._each_set(selector, lambda fam, name: [fam.drop_member(name, m) for m in fam.contribution(name, old)])
        for selector in joined:
            self._each_set(selector, lambda fam, name: [fam.add_member(name, m) for m in fam.contribution(name, new)])
        if old is None or new is None or (old.addresses, old.ports) != (new.addresses, new.ports):
            def move(fam: _Family, name: str) -> None:
                before, after = fam.contribution(name, old), fam.contribution(name, new)
                for member in before - after:
                    fam.drop_member(name, member)
                for member in after - before:
                    fam.add_member(name, member)

            for selector in stayed:
                self._each_set(selector, move)

    def _each_set(self, selector: str, fn) -> None:
        for fam, name in self._sets_of.get(selector, ()):
            fn(fam, name)

    # --- local endpoints -----------------------------------------------------------------------

    def _claim(self, iface: str) -> None:
        owner = min(self.by_interface[iface])
        if self.local.get(iface) != owner:
            if iface in self.local:
                log.warning("endpoints %s and %s share interface %s; using the first", owner, self.local[iface], iface)
            self.local[iface] = owner
        self._dirty_local.add(iface)

    def _unclaim(self, key: str, ep: model.Endpoint) -> None:
        claimants = self.by_interface.get(ep.interface)
        if claimants is None or key not in claimants:
            return
        claimants.discard(key)
        if claimants:
            self.local[ep.interface] = min(claimants)
        else:
            del self.by_interface[ep.interface]
            self.local.pop(ep.interface, None)
        self._dirty_local.add(ep.interface)

    def _host_names(self, ep: model.Endpoint) -> set[str]:
        if not hostep.policed(ep, self.nodename):
            return set()
        return hostep.interfaces_of(ep, self.interface_addresses)

    def _claim_hosts(self, key: str, names: set[str]) -> None:
        """A host endpoint now claims `names` (chain names); each name goes to its first claimant by key."""
        old = self.host_names.pop(key, set())
        if names:
            self.host_names[key] = names
        for name in old - names:
            self.host_claims[name].discard(key)
        for name in names - old:
            self.host_claims.setdefault(name, set()).add(key)
        for name in old | names:  # the endpoint changed: its names re-render even when it keeps them
            claimants = self.host_claims.get(name)
            if claimants:
                self.hosts[name] = min(claimants)
            else:
                self.host_claims.pop(name, None)
                self.hosts.pop(name, None)
            self._dirty_hosts.add(name)

    def _refresh_hosts(self) -> bool:
        """Re-renders the dirty host endpoints' chains; True when the fixed chains must follow."""
        dirty, self._dirty_hosts = self._dirty_hosts, set()
        for name in sorted(dirty):
            key = self.hosts.get(name)
            if key is None:
                self._set_jumps(f"host:{name}", {}, None)
                self.host_owns.pop(name, None)
                continue
            ep, labels = self.endpoints[key], self.index.labels(key)
            selecting = [p for p in self.ordered if matches(p.selector, labels)]
            own, bodies = host_endpoint_chains(name, selecting, present_profiles(ep, self.profiles), self.tiers)
            self._set_jumps(f"host:{name}", bodies, own)
            self.host_owns[name] = own
        summary = host_summary(self.host_owns)
        changed, self._summary = summary != self._summary, summary
        return changed

    def _write_fixed(self) -> None:
        for fam in self.families.values():
            sets = hostep.tunnel_set(self.tunnels, fam.version) if self._summary is not None else {}
            self._fixed_sets(fam, {name: s.members for name, s in sets.items()})
            chains = fixed_chains(sorted(self.local), fam.version, self._summary, self.failsafe, self.tunnels,
                                  self.to_host)
            for name in fam.fixed - set(chains):
                fam.remove(name)
            for name, rules in chains.items():
                fam.write(name, rules)
            fam.fixed = set(chains)

    def _fixed_sets(self, fam: _Family, wanted: dict[str, tuple[str, ...]]) -> None:
        """The fixed chains' sets: made, refilled and destroyed with them (one reference each)."""
        for name in set(fam.fixed_sets) - set(wanted):
            del fam.fixed_sets[name]
            self._unref_set(fam, name)
        for name, members in wanted.items():
            old = fam.fixed_sets.get(name)
            if old == members:
                continue
            fam.fixed_sets[name] = members
            if old is None:
                fam.set_refs[name] = fam.set_refs.get(name, 0) + 1
                fam.pending.destroyed.discard(name)
                fam.pending.created[name] = IpSet("hash:net", members)
            elif name not in fam.pending.created:
                for member in set(members) - set(old):
                    self._pending_member(fam, name, member, True)
                for member in set(old) - set(members):
                    self._pending_member(fam, name, member, False)
            fam.static[name] = members

    @staticmethod
    def _pending_member(fam: _Family, name: str, member: str, add: bool) -> None:
        undo, do = (fam.pending.deleted, fam.pending.added) if add else (fam.pending.added, fam.pending.deleted)
        if member in undo.get(name, ()):
            undo[name].discard(member)
        else:
            do.setdefault(name, set()).add(member)

    def _refresh_locals(self) -> None:
        dirty, self._dirty_local = self._dirty_local, set()
        interfaces_changed = False
        for iface in sorted(dirty):
            key = self.local.get(iface)
            if key is None:
                interfaces_changed |= iface in self.jumps
                self._set_jumps(iface, {}, None)
                continue
            interfaces_changed |= iface not in self.jumps
            ep, labels = self.endpoints[key], self.index.labels(key)
            selecting = for_workloads([p for p in self.ordered if matches(p.selector, labels)])
            present = present_profiles(ep, self.profiles)
            self._set_jumps(iface, body_chains(selecting, present, self.tiers),
                            workload_chains(iface, selecting, present, self.tiers))
        if self._refresh_hosts() or interfaces_changed:
            self._write_fixed()

    def _set_jumps(self, key: str, bodies: dict, own: dict[str, tuple[str, ...]] | None) -> None:
        """An endpoint's own chains (None: it is gone) and the body chains they jump to."""
        before = self.jumps.get(key, {})
        old_own = self.owned.pop(key, ())
        for fam in self.families.values():
            for name in set(bodies) - set(before):
                self._ref_body(fam, name, *bodies[name])
            for name in set(before) - set(bodies):
                self._unref_body(fam, name)
            for name in old_own:
                if own is None or name not in own:
                    fam.remove(name)
            for name, rules in (own or {}).items():
                fam.write(name, rules)
        if own is None:
            self.jumps.pop(key, None)
        else:
            self.jumps[key] = bodies
            self.owned[key] = tuple(own)

    # --- policy and profile chains -------------------------------------------------------------

    def _ref_body(self, fam: _Family, name: str, direction: str, source) -> None:
        fam.chain_refs[name] = fam.chain_refs.get(name, 0) + 1
        if fam.chain_refs[name] == 1:
            self._render_body(fam, name, getattr(source, direction))

    def _unref_body(self, fam: _Family, name: str) -> None:
        fam.chain_refs[name] -= 1
        if fam.chain_refs[name] == 0:
            del fam.chain_refs[name]
            fam.remove(name)
            for set_name_ in fam.chain_sets.pop(name, set()):
                self._unref_set(fam, set_name_)

    def _render_body(self, fam: _Family, name: str, rules) -> None:
        rr = RuleRenderer(fam.family)
        fam.write(name, rr.rules_chain(rules))
        old_sets = fam.chain_sets.get(name, set())
        new_sets = rr.sets()
        fam.chain_sets[name] = new_sets
        for set_name_ in new_sets - old_sets:
            self._ref_set(fam, set_name_, rr)
        for set_name_ in old_sets - new_sets:
            self._unref_set(fam, set_name_)

    def _rerender_body(self, name: str, source, is_policy: bool) -> None:
        """A policy's or profile's chains, where they are live, after its rules changed."""
        for fam in self.families.values():
            for direction, letter, _, _ in DIRECTIONS:
                if source is None:
                    continue
                chain = split_key(policy_chain(source, letter) if is_policy else profile_chain(source, letter))[1]
                rules = getattr(source, direction)
                for table in TABLES:  # a normal policy's chains are in mangle too (DNATed host traffic)
                    if qualified(table, chain) in fam.chain_refs and rules is not None:
                        self._render_body(fam, qualified(table, chain), rules)
        # Chains that disappear (a policy losing a direction, or deleted) go when their endpoints drop
        # them: the callers mark those endpoints dirty.

    def _ref_set(self, fam: _Family, name: str, rr: RuleRenderer) -> None:
        fam.set_refs[name] = fam.set_refs.get(name, 0) + 1
        if fam.set_refs[name] > 1:
            return
        if name in fam.pending.destroyed:  # destroyed and made again in one batch: keep and refill
            fam.pending.destroyed.discard(name)
        if name in rr.nets:
            fam.static[name] = rr.nets[name].members
            fam.pending.created[name] = rr.nets[name]
            return
        if name in rr.named:
            selector, protocol, port = rr.named[name]
            fam.named_of[name] = (protocol, port)
        else:
            selector = rr.selectors[name]
        fam.selector_of[name] = selector
        self._sets_of.setdefault(selector, []).append((fam, name))
        counts = fam.members[name] = {}
        for key in self.index.add_selector(selector):
            for member in fam.contribution(name, self.endpoints[key]):
                counts[member] = counts.get(member, 0) + 1
        fam.pending.created[name] = IpSet(SELECTOR_SET, ())
        fam.pending.added.pop(name, None)
        fam.pending.deleted.pop(name, None)

    def _unref_set(self, fam: _Family, name: str) -> None:
        fam.set_refs[name] -= 1
        if fam.set_refs[name]:
            return
        del fam.set_refs[name]
        fam.static.pop(name, None)
        fam.members.pop(name, None)
        fam.named_of.pop(name, None)
        selector = fam.selector_of.pop(name, None)
        if name in fam.pending.created:
            del fam.pending.created[name]
        else:
            fam.pending.destroyed.add(name)
        fam.pending.added.pop(name, None)
        fam.pending.deleted.pop(name, None)
        if selector is not None:
            self._sets_of[selector] = [(f, n) for f, n in self._sets_of[selector] if n != name]
            if not self._sets_of[selector]:
                del self._sets_of[selector]
                self.index.remove_selector(selector)

