"""calico-node's policy component: read policy state from etcd at one revision, render, program, for
IPv4 (iptables) and IPv6 (ip6tables; where the kernel and tools have it, see ``ipv6_available``).

What holds: everything one sync renders comes from a single etcd revision, so endpoints, profiles and
policies always agree with each other; syncs are serialised (the agent's loop and the link watcher
both call in) and each reads the revision current when it starts, so what is programmed never goes
back to an older state; the dataplane is touched only when the rendered result differs from what is
programmed; an etcd error propagates (the agent keeps the last programmed rules and retries), and so
does a PolicyError (the next sync rewrites everything). The families are applied one after the other
(IPv4 first), each with its own Dataplane: one family's failure does not stop the other's apply.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import Datastore
from cni_calico.policy import model, render
from cni_calico.policy.iptables import Dataplane, ipv6_available

log = logging.getLogger(__name__)


@dataclass
class PolicyState:
    endpoints: list[model.Endpoint]  # with effective labels
    policies: list[model.Policy]
    profiles: dict[str, model.Profile]
    fingerprint: tuple[tuple[str, int], ...] = ()  # (key, mod revision) of everything it was built from


def load(ds: Datastore, revision: int | None = None) -> PolicyState:
    seen: list[tuple[str, int]] = []

    def listing(plural: str) -> list[dict]:
        kvs = ds.list(keys.resource_dir(plural), revision=revision)
        seen.extend((kv.key, kv.mod_revision) for kv in kvs)
        return [kv.value for kv in kvs]

    profiles = {}
    for resource in listing("profiles"):
        profile = model.profile_from_resource(resource)
        profiles[profile.name] = profile
    policies = [model.policy_from_resource(r, namespaced=True) for r in listing("networkpolicies")]
    policies += [model.policy_from_resource(r, namespaced=False) for r in listing("globalnetworkpolicies")]
    endpoints = [model.endpoint_from_resource(r) for r in listing("workloadendpoints")]
    return PolicyState(model.with_effective_labels(endpoints, profiles), policies, profiles, tuple(seen))


class PolicySync:
    def __init__(self, ds: Datastore, nodename: str, dataplane: Dataplane | None = None,
                 ipv6: bool | None = None) -> None:
        """``dataplane``: the IPv4 one; the IPv6 one uses its runner. ``ipv6``: None = where available."""
        self.ds, self.nodename = ds, nodename
        self.dataplane = dataplane or Dataplane()
        self.dataplanes = [self.dataplane]
        if ipv6 or (ipv6 is None and ipv6_available()):
            self.dataplanes.append(Dataplane(self.dataplane.run, version=6))
        self.last_timings: dict[str, float] = {}
        self.fingerprint: tuple[tuple[str, int], ...] | None = None  # of the state last programmed
        self.interfaces: frozenset[str] = frozenset()  # local endpoints' interfaces, as last programmed
        self.lock = threading.Lock()

    def watch_links(self) -> None:
        """Program a new pod's endpoint as soon as its interface appears (see cni_calico.policy.links)."""
        from cni_calico.policy.links import LinkWatcher

        LinkWatcher(self._on_new_link).start()

    def _on_new_link(self, name: str) -> None:
        if name not in self.interfaces:
            self.sync()

    def sync(self) -> bool:
        """Programs the policy of etcd's current revision; True if the kernel was changed. When none of
        the resources policy is made of changed since the last successful sync, nothing is rendered."""
        with self.lock:
            return self._sync()

    def _sync(self) -> bool:
        t0 = time.monotonic()
        revision = self.ds.revision()
        state = load(self.ds, revision)
        t1 = time.monotonic()
        if state.fingerprint == self.fingerprint and all(d.programmed for d in self.dataplanes):
            self.last_timings = {"load": t1 - t0, "render": 0.0, "apply": 0.0}
            return False
        local = render.local_endpoints(state.endpoints, self.nodename)
        rulesets = render.render_all(local, state.endpoints, state.policies, state.profiles,
                                     [d.family.version for d in self.dataplanes])
        t2 = time.monotonic()
        changed, failure = False, None
        for dataplane in self.dataplanes:
            try:
                changed = dataplane.apply(rulesets[dataplane.family.version]) or changed
            except Exception as exc:  # noqa: BLE001 - re-raised once the other family is applied
                failure = failure or exc
        if failure is not None:
            raise failure
        self.fingerprint = state.fingerprint
        self.interfaces = frozenset(ep.interface for ep in local)
        t3 = time.monotonic()
        self.last_timings = {"load": t1 - t0, "render": t2 - t1, "apply": t3 - t2}
        if changed:
            log.debug("policy sync at revision %s: load %.3f s, render %.3f s, apply %.3f s", revision,
                      t1 - t0, t2 - t1, t3 - t2)
        return changed
