"""The controllers that mirror Kubernetes objects into Calico resources, and the endpoint labels.

Mirror: one Kubernetes collection → the resources one `Owned` writer owns (policy: NetworkPolicy →
`knp.default.*`; namespace: Namespace → `kns.*`; service account: ServiceAccount → `ksa.*`). A
whole list reconciles (start, relist after 410); an event writes or deletes one resource.

WorkloadLabels: a pod's WorkloadEndpoints carry the labels the plugin gave them at ADD
(cni_calico.kube.pod_labels: the pod's, its namespace's as `pcns.`, its service account, and the
two system labels); when the pod's or its namespace's labels change, the endpoints follow. It
keeps the last pods and namespaces it saw (two reflectors feed it, hence the lock) and writes an
endpoint only when its labels differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cni_calico import keys
from cni_calico.datastore import Store, Txn, transact
from cni_calico.kube import pod_labels
from cni_calico.kubecontrollers.client import WatchEvent
from cni_calico.kubecontrollers.writer import Ident, Owned
from cni_calico.v3 import Resource

log = logging.getLogger(__name__)

NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"


def _name(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass
class Mirror:
    """Kubernetes objects → owned Calico resources through `convert(obj) -> (ident, spec)`."""

    owned: Owned
    convert: Callable[[dict], tuple[Ident, dict]]
    # What each Kubernetes object became (its ident), to delete the right resource on DELETED.
    made: dict[tuple[str, str], Ident] = field(default_factory=dict)
    # What the Kubernetes objects ask for now: the reconciler period brings etcd back to it.
    desired: dict[Ident, dict] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resync(self, items: list[dict]) -> None:
        with self.lock:
            desired, made = {}, {}
            for obj in items:
                ident, spec = self.convert(obj)
                desired[ident] = spec
                made[_name(obj)] = ident
            self.owned.reconcile(desired)
            self.made, self.desired = made, desired

    def event(self, event: WatchEvent) -> None:
        with self.lock:
            if event.type == "DELETED":
                ident = self.made.pop(_name(event.object), None)
                if ident is None:
                    ident, _ = self.convert(event.object)
                if self.desired is not None:
                    self.desired.pop(ident, None)
                self.owned.remove(ident)
            elif event.type in ("ADDED", "MODIFIED"):
                ident, spec = self.convert(event.object)
                self.made[_name(event.object)] = ident
                if self.desired is not None:
                    self.desired[ident] = spec
                self.owned.ensure(ident, spec)

    def reconcile(self) -> None:
        """etcd brought back to what the Kubernetes objects last seen ask for (Calico's reconciler
        period): an owned resource edited or deleted behind our back is written again."""
        with self.lock:
            if self.desired is not None:
                self.owned.reconcile(self.desired)


def endpoint_labels(pod: dict, namespace: dict) -> dict[str, str]:
    """What the plugin writes as a Kubernetes pod's endpoint labels (cni_calico.endpoints.build)."""
    ns = _name(pod)[0]
    return {**pod_labels(pod, namespace), NAMESPACE_LABEL: ns, ORCHESTRATOR_LABEL: "k8s"}


@dataclass
class WorkloadLabels:
    ds: Store
    pods: dict[tuple[str, str], dict] = field(default_factory=dict)
    namespaces: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the two feeds ---------------------------------------------------------------------------

    def resync(self, items: list[dict]) -> None:  # pods
        with self.lock:
            self.pods = {_name(p): p for p in items}
            self._update(lambda ns, pod: True)

    def event(self, event: WatchEvent) -> None:  # a pod
        with self.lock:
            key = _name(event.object)
            if event.type == "DELETED":
                self.pods.pop(key, None)  # the plugin's DEL removes the endpoint
                return
            self.pods[key] = event.object
            self._update(lambda ns, pod: (ns, pod) == key, key[0])

    def reconcile(self) -> None:
        """Every endpoint brought to its pod's labels again. Run periodically: a pod relabelled
        between the plugin's read of it and its endpoint's write is an event that found no endpoint
        to change (we follow the API, not etcd's endpoints)."""
        with self.lock:
            self._update(lambda ns, pod: True)

    def namespaces_feed(self) -> _NamespaceFeed:
        return _NamespaceFeed(self)

    # --- the endpoints ---------------------------------------------------------------------------

    def _update(self, wanted: Callable[[str, str], bool], namespace: str = "") -> None:
        """Brings the labels of the endpoints of the wanted pods (of `namespace`, or of all) to what
        their pod and namespace say."""
        for kv in self.ds.list(keys.resource_dir("workloadendpoints", namespace)):
            res = Resource.from_value(kv.value, "WorkloadEndpoint")
            if res.spec.get("orchestrator") != "k8s" or not wanted(res.namespace, str(res.spec.get("pod"))):
                continue
            pod = self.pods.get((res.namespace, str(res.spec.get("pod"))))
            namespace = self.namespaces.get(res.namespace)
            if pod is None or namespace is None:
                continue  # not seen yet: the other feed's list brings it here again
            self._relabel(kv.key, endpoint_labels(pod, namespace))

    def _relabel(self, key: str, labels: dict[str, str]) -> None:
        def attempt() -> tuple[Txn, bool]:
            kv = self.ds.get(key)
            if kv is None:
                return Txn(), False
            res = Resource.from_value(kv.value, "WorkloadEndpoint")
            if res.labels == labels:
                return Txn(), False
            new = Resource(res.kind, {**res.metadata, "labels": labels}, res.spec, res.other)
            return Txn().put(key, new.to_value(), kv.mod_revision), True

        if transact(self.ds, attempt, f"relabelling {key}"):
            log.info("relabelled %s: %s", key.rsplit("/", 2)[-2:], labels)


@dataclass
class _NamespaceFeed:
    """The namespaces reflector's handler for WorkloadLabels."""

    owner: WorkloadLabels

    def resync(self, items: list[dict]) -> None:
        with self.owner.lock:
            self.owner.namespaces = {_name(n)[1]: n for n in items}
            self.owner._update(lambda ns, pod: True)

    def event(self, event: WatchEvent) -> None:
        with self.owner.lock:
            name = _name(event.object)[1]
            if event.type == "DELETED":
                self.owner.namespaces.pop(name, None)
                return
            self.owner.namespaces[name] = event.object
            self.owner._update(lambda ns, pod: ns == name, name)
