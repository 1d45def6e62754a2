"""WorkloadEndpoint resources: built from a request, contributed to the ADD's and DEL's units of work.

A DEL removes the endpoint only when it still names the DEL's container: a
stale DEL for a re-created pod must not take the live pod's record.
"""

from __future__ import annotations

from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import KV, Txn
from cni_calico.v3 import Resource, new_resource

ADDING = "cni.projectcalico.org/adding"  # set while the ADD that wrote the endpoint is unfinished


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


def build(eid: EndpointId, host_ifname: str, mac: str, ip_networks: list[str], profiles: list[str],
          labels: dict[str, str] | None = None, ports: list[dict] | None = None) -> Resource:
    """The endpoint as an ADD first writes it: with the address, before the dataplane, marked
    unfinished (`confirmed` drops the mark at the end). `labels`: the pod's own and its namespace's
    (`pcns.` prefixed); the two system labels win. `ports`: the pod's named and host ports
    (cni_calico.kube.pod_ports). One still marked long after is a killed ADD's: `calicoctl ipam
    check` reports its address as leaked."""
    res = new_resource("WorkloadEndpoint", eid.name, {
        "orchestrator": eid.orchestrator,
        "node": eid.node,
        "containerID": eid.container_id,
        "pod": eid.pod,
        "endpoint": eid.ifname,
        "interfaceName": host_ifname,
        "mac": mac,
        "ipNetworks": ip_networks,
        "profiles": profiles,
        "ports": ports or [],
    }, namespace=eid.namespace, labels={
        **(labels or {}),
        "projectcalico.org/namespace": eid.namespace,
        "projectcalico.org/orchestrator": eid.orchestrator,
    })
    res.metadata["annotations"] = {ADDING: res.metadata["creationTimestamp"]}
    return res


def confirmed(res: Resource) -> Resource:
    """The same endpoint, its ADD finished."""
    notes = {k: v for k, v in res.annotations.items() if k != ADDING}
    return Resource(res.kind, {**res.metadata, "annotations": notes}, res.spec, res.other)


def unfinished_since(value: dict) -> str:
    """The UTC time an unfinished ADD wrote this endpoint, or "" for a finished one."""
    return Resource.from_value(value).annotations.get(ADDING, "")


def owner(current: KV | None) -> str | None:
    """The container an endpoint record belongs to (None: no record)."""
    return None if current is None else str(Resource.from_value(current.value).spec.get("containerID") or "")


def default_profile(network: str) -> Resource:
    """The network's own profile: its endpoints carry the label `<network>` and accept traffic only
    from endpoints with that label; egress is open. Two networks are two isolated tenants."""
    return new_resource("Profile", network, {
        "ingress": [{"action": "Allow", "source": {"selector": f"has({network})"}}],
        "egress": [{"action": "Allow"}],
        "labelsToApply": {network: ""},
    })


def contribute_add(txn: Txn, eid: EndpointId, res: Resource, network: str) -> None:
    """The endpoint, and the network's default profile where there is none, into the ADD's unit of work."""
    txn.put(eid.key, res.to_value())
    txn.put_if_absent(keys.resource("profiles", network), default_profile(network).to_value())


def contribute_delete(txn: Txn, eid: EndpointId, current: KV | None) -> bool:
    """The endpoint's removal, if it still belongs to eid's container (guarded by its revision)."""
    if current is None or owner(current) != eid.container_id:
        return False
    txn.delete(eid.key, current.mod_revision)
    return True
