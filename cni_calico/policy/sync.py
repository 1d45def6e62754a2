"""calico-node's policy component: read policy state from etcd at one revision, render, program.

What holds: everything one sync renders comes from a single etcd revision (the snapshot the agent
loaded), so endpoints, profiles and policies always agree with each other; the dataplane is touched
only when the rendered result differs from what is programmed; an etcd error propagates (the agent
keeps the last programmed rules and retries), and so does a PolicyError (the next sync rewrites all).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import Datastore
from cni_calico.policy import model, render
from cni_calico.policy.iptables import Dataplane

log = logging.getLogger(__name__)


@dataclass
class PolicyState:
    endpoints: list[model.Endpoint]  # with effective labels
    policies: list[model.Policy]
    profiles: dict[str, model.Profile]


def load(ds: Datastore, revision: int | None = None) -> PolicyState:
    def listing(plural: str) -> list[dict]:
        return [kv.value for kv in ds.list(keys.resource_dir(plural), revision=revision)]

    profiles = {}
    for resource in listing("profiles"):
        profile = model.profile_from_resource(resource)
        profiles[profile.name] = profile
    policies = [model.policy_from_resource(r, namespaced=True) for r in listing("networkpolicies")]
    policies += [model.policy_from_resource(r, namespaced=False) for r in listing("globalnetworkpolicies")]
    endpoints = [model.endpoint_from_resource(r) for r in listing("workloadendpoints")]
    return PolicyState(model.with_effective_labels(endpoints, profiles), policies, profiles)


def render_state(state: PolicyState, nodename: str) -> render.Ruleset:
    local = render.local_endpoints(state.endpoints, nodename)
    return render.render(local, state.endpoints, state.policies, state.profiles)


class PolicySync:
    def __init__(self, ds: Datastore, nodename: str, dataplane: Dataplane | None = None) -> None:
        self.ds, self.nodename = ds, nodename
        self.dataplane = dataplane or Dataplane()
        self.last_timings: dict[str, float] = {}

    def sync(self, revision: int | None = None) -> bool:
        """Programs the policy of etcd's ``revision``; True if the kernel was changed."""
        t0 = time.monotonic()
        state = load(self.ds, revision)
        t1 = time.monotonic()
        ruleset = render_state(state, self.nodename)
        t2 = time.monotonic()
        changed = self.dataplane.apply(ruleset)
        t3 = time.monotonic()
        self.last_timings = {"load": t1 - t0, "render": t2 - t1, "apply": t3 - t2}
        if changed:
            log.debug("policy sync at revision %s: load %.3f s, render %.3f s, apply %.3f s", revision,
                      t1 - t0, t2 - t1, t3 - t2)
        return changed
