"""WorkloadEndpoint resources: built from a request, written on ADD, removed on DEL.

A DEL removes the endpoint only when it still names the DEL's container: a
stale DEL for a re-created pod must not take the live pod's record.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import KV, Datastore

API_VERSION = "projectcalico.org/v3"


@dataclass
class EndpointId:
    node: str
    container_id: str
    ifname: str
    namespace: str = "default"
    pod: str = ""

    @property
    def orchestrator(self) -> str:
        return "k8s" if self.pod else "cni"

    @property
    def name(self) -> str:
        from cni_calico.names import endpoint_name

        return endpoint_name(self.node, self.container_id, self.ifname, self.pod)

    @property
    def key(self) -> str:
        return keys.resource("workloadendpoints", self.name, self.namespace)


ADDING = "cni.projectcalico.org/adding"  # set while the ADD that wrote the endpoint is unfinished


def build(eid: EndpointId, host_ifname: str, mac: str, ip_networks: list[str], profiles: list[str],
          labels: dict[str, str] | None = None, adding: bool = False) -> dict:
    """`labels`: the pod's own and its namespace's (`pcns.` prefixed); the two system labels win.
    `adding`: the record goes in with the address, before the dataplane, marked unfinished; the
    ADD confirms it at the end. One still marked long after is a killed ADD's: `calicoctl ipam
    check` reports its address as leaked."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resource = {
        "kind": "WorkloadEndpoint",
        "apiVersion": API_VERSION,
        "metadata": {
            "name": eid.name,
            "namespace": eid.namespace,
            "creationTimestamp": now,
            "labels": {
                **(labels or {}),
                "projectcalico.org/namespace": eid.namespace,
                "projectcalico.org/orchestrator": eid.orchestrator,
            },
        },
        "spec": {
            "orchestrator": eid.orchestrator,
            "node": eid.node,
            "containerID": eid.container_id,
            "pod": eid.pod,
            "endpoint": eid.ifname,
            "interfaceName": host_ifname,
            "mac": mac,
            "ipNetworks": ip_networks,
            "profiles": profiles,
        },
    }
    if adding:
        resource["metadata"]["annotations"] = {ADDING: now}
    return resource


def unfinished_since(resource: dict) -> str:
    """The UTC time an unfinished ADD wrote this endpoint, or "" for a finished one."""
    return str(((resource.get("metadata") or {}).get("annotations") or {}).get(ADDING) or "")


def default_profile(network: str) -> dict:
    """The network's own profile: its endpoints carry the label `<network>` and accept traffic only
    from endpoints with that label; egress is open. Two networks are two isolated tenants."""
    return {
        "kind": "Profile",
        "apiVersion": API_VERSION,
        "metadata": {"name": network},
        "spec": {
            "ingress": [{"action": "Allow", "source": {"selector": f"has({network})"}}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": {network: ""},
        },
    }


def write(ds: Datastore, eid: EndpointId, resource: dict, network: str = "") -> None:
    """Writes the endpoint, and the network's default profile when there is none, in one transaction."""
    if not network:
        ds.put(eid.key, resource)
        return
    profile_key = keys.resource("profiles", network)
    ds.commit({profile_key: 0}, {eid.key: resource, profile_key: default_profile(network)},
              otherwise={eid.key: resource})


def get(ds: Datastore, eid: EndpointId) -> KV | None:
    return ds.get(eid.key)


def delete_if_owned(ds: Datastore, eid: EndpointId, current: KV | None) -> bool:
    """Deletes the endpoint if it belongs to eid's container; True if it was removed."""
    if current is None or current.value.get("spec", {}).get("containerID") != eid.container_id:
        return False
    return ds.commit({eid.key: current.mod_revision}, deletes=[eid.key])
