"""The node controller: a deleted Kubernetes Node takes its Calico node and IPAM with it.

As Calico's (etcd mode): a Calico node belongs to the Kubernetes Node its `spec.orchRefs` names
(orchestrator k8s; calico-node writes it from CALICO_K8S_NODE_REF). When that Node is gone — a
DELETED event, or absent from a list (the controller was down when it went) — the Calico node is
deleted after a grace period, once the API shows no running pod still scheduled there (a pod
that still exists may still use its address). The clean-up itself is `calicoctl delete node`'s
(cni_calico.ctl.cleanup.delete_node): the endpoints' addresses and tunnel addresses released,
endpoints deleted, block affinities released (empty blocks deleted), the node's BGP peers and
configuration deleted, the Node last.

IPAM garbage collection: an allocation whose attributes name a Kubernetes pod (calico-ipam
writes `namespace` and `pod`) that the API no longer has is released once it has been seen
missing for the leak grace period in two checks (a pod being created has its allocation before
the API shows it to a list that raced it; the grace covers that). As Calico's: the grace is
KubeControllersConfiguration's controllers.node.leakGracePeriod, the collection runs every half of
it (every 5 minutes when it is 0 or unset), and there is none when it is 0 or unset.

Label sync (`NodeLabels`, syncLabels Enabled, etcd mode): a Kubernetes Node's labels are copied
onto the Calico Node that refers to it; the annotation `projectcalico.org/kube-labels` (the
Node's labels as JSON) remembers which labels came from Kubernetes, so one removed there is
removed here, and a label set on the Calico Node by other means is kept. On every Node event, on
every list, and every reconciler period (Calico's 5-minute timer).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from cni_calico import keys
from cni_calico.ctl.cleanup import delete_node, holders
from cni_calico.ctl.config import ResourceStore
from cni_calico.ctl.kinds.bgp import NODE
from cni_calico.datastore import DatastoreError, Store
from cni_calico.kube import KubeError
from cni_calico.kubecontrollers.client import KubeApi, WatchEvent
from cni_calico.resources import DoesNotExist, Resource, ResourceError
from cni_calico.v3 import Resource as StoredResource

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")


def k8s_node_of(calico_node: dict) -> str:
    """The Kubernetes Node a stored Calico Node refers to ("" when none)."""
    for ref in StoredResource.from_value(calico_node).spec.get("orchRefs") or []:
        if isinstance(ref, dict) and ref.get("orchestrator") == "k8s" and ref.get("nodeName"):
            return str(ref["nodeName"])
    return ""


@dataclass
class NodeController:
    ds: Store
    api: KubeApi
    grace: float = 60.0  # seconds a deleted Node's Calico node is kept
    # Seconds a pod's allocation is kept after the pod is gone (leakGracePeriod); None or 0: no
    # IPAM garbage collection.
    leak_grace: float | None = 900.0
    # Seconds between IPAM garbage collections: each reads every block and lists every pod, too
    # much for every tick on a large cluster (Calico's: half the leak grace).
    gc_period: float = 450.0
    _last_gc: float | None = None
    known: set[str] | None = None  # the Kubernetes Nodes, once listed
    pending: dict[str, float] = field(default_factory=dict)  # Calico node → when it may go
    missing_pods: dict[str, float] = field(default_factory=dict)  # "ip handle" → first seen missing
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the Node feed ----------------------------------------------------------------------------

    def resync(self, items: list[dict]) -> None:
        with self.lock:
            self.known = {str((n.get("metadata") or {}).get("name")) for n in items}
            self._schedule_orphans()

    def event(self, event: WatchEvent) -> None:
        name = str((event.object.get("metadata") or {}).get("name"))
        with self.lock:
            if self.known is None:
                return
            if event.type == "DELETED":
                self.known.discard(name)
                self._schedule_orphans()
            elif event.type in ("ADDED", "MODIFIED"):
                self.known.add(name)

    def _calico_nodes(self) -> dict[str, str]:
        """Calico node → the Kubernetes Node it refers to (only those that refer to one)."""
        out = {}
        for kv in self.ds.list(keys.resource_dir("nodes")):
            ref = k8s_node_of(kv.value)
            if ref:
                out[kv.key.rsplit("/", 1)[-1]] = ref
        return out

    def _schedule_orphans(self) -> None:
        now = time.monotonic()
        for calico, ref in self._calico_nodes().items():
            if self.known is not None and ref not in self.known and calico not in self.pending:
                log.info("Kubernetes node %s is gone: Calico node %s will be deleted in %.0f s unless it "
                         "comes back", ref, calico, self.grace)
                self.pending[calico] = now + self.grace

    # --- the periodic work ------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            due = [n for n, when in self.pending.items() if when <= now]
        for calico in due:
            self._delete_if_orphan(calico, now)
        if self.leak_grace and (self._last_gc is None or now - self._last_gc >= self.gc_period):
            self._last_gc = now
            self._collect_ipam(now)

    def _pods(self, field_selector: str = "") -> list[dict] | None:
        try:
            path = "/api/v1/pods" + (f"?fieldSelector={quote(field_selector)}" if field_selector else "")
            items, _ = self.api.list(path) if not field_selector else (self.api.get(path).get("items") or [], "")
        except KubeError as exc:
            log.warning("cannot list pods: %s", exc)
            return None
        return [p for p in items if (p.get("status") or {}).get("phase") not in TERMINAL_PHASES]

    def _delete_if_orphan(self, calico: str, now: float) -> None:
        with self.lock:
            ref = self._calico_nodes().get(calico)
            if ref is None or self.known is None or ref in self.known:
                self.pending.pop(calico, None)  # came back, or no longer a Kubernetes node
                return
        pods = self._pods(f"spec.nodeName={ref}")
        if pods is None or pods:
            if pods:
                log.info("Calico node %s kept: %d pods are still scheduled on %s", calico, len(pods), ref)
            with self.lock:
                self.pending[calico] = now + min(self.grace, 30.0)
            return
        try:
            _, summary = delete_node(ResourceStore(self.ds), Resource(NODE, {"name": calico}, {}))
            log.info("deleted Calico node %s (Kubernetes node %s is gone)%s", calico, ref,
                     f"; {summary}" if summary else "")
        except DoesNotExist:
            pass
        except (ResourceError, DatastoreError) as exc:
            log.warning("deleting Calico node %s failed, will retry: %s", calico, exc)
            with self.lock:
                self.pending[calico] = now + min(self.grace, 30.0)
            return
        with self.lock:
            self.pending.pop(calico, None)

    def _collect_ipam(self, now: float) -> None:
        from ipam.store import IpamStore

        ipam = IpamStore(self.ds)
        held = {ip: h for ip, h in holders(ipam).items() if h[1].get("pod") and h[1].get("namespace")}
        if not held:
            self.missing_pods.clear()
            return
        pods = self._pods()
        if pods is None:
            return
        live = {((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name")) for p in pods}
        seen: set[str] = set()
        for ip, (handle, attrs) in held.items():
            if (attrs["namespace"], attrs["pod"]) in live:
                continue
            mark = f"{ip} {handle}"
            seen.add(mark)
            first = self.missing_pods.setdefault(mark, now)
            if now - first >= (self.leak_grace or 0) and ipam.release_ip_of_handle(ip, handle):
                log.info("released %s: its pod %s/%s no longer exists (handle %s)", ip, attrs["namespace"],
                         attrs["pod"], handle)
                seen.discard(mark)
        self.missing_pods = {m: t for m, t in self.missing_pods.items() if m in seen}

    def run(self, stop: threading.Event, period: float) -> None:
        while not stop.wait(period):
            try:
                self.tick()
            except Exception:  # the next tick tries again
                log.exception("node controller tick failed")


LABELS_ANNOTATION = "projectcalico.org/kube-labels"  # Calico's nodeLabelAnnotation


def synced_labels(calico_node: dict, k8s_labels: dict) -> dict | None:
    """The Calico Node's new value with the Kubernetes Node's labels synced (Calico's
    syncNodeLabels), or None when its labels need no change."""
    import json

    from cni_calico.datastore import encode

    res = StoredResource.from_value(calico_node, "Node")
    labels = dict(res.metadata.get("labels") or {})
    annotations = dict(res.metadata.get("annotations") or {})
    try:
        before = json.loads(annotations.get(LABELS_ANNOTATION) or "{}")
    except ValueError:
        log.error("Calico node %s: annotation %s is not JSON; not syncing its labels", res.name, LABELS_ANNOTATION)
        return None
    changed = False
    for key, value in k8s_labels.items():
        if labels.get(key) != value:
            labels[key], changed = value, True
    for key in before if isinstance(before, dict) else {}:
        if key not in k8s_labels and key in labels:
            del labels[key]
            changed = True
    if not changed:
        return None
    annotations[LABELS_ANNOTATION] = encode(dict(sorted(k8s_labels.items())))
    return StoredResource("Node", {**res.metadata, "labels": labels, "annotations": annotations}, res.spec,
                          res.other).to_value()


@dataclass
class NodeLabels:
    """The Node feed's handler for syncLabels: every Kubernetes Node's labels onto its Calico Node."""

    ds: Store
    nodes: dict[str, dict] = field(default_factory=dict)  # Kubernetes Node → its labels
    seen: set[str] | None = None  # the Calico nodes' keys at the last check (`check_new`)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_new(self) -> None:
        """A Calico node that appeared since the last check (calico-node registering after its
        Kubernetes Node exists) synced now, not at the next period (Calico's syncer does the same)."""
        now = {kv.key for kv in self.ds.list(keys.resource_dir("nodes"), keys_only=True)}
        new = now - self.seen if self.seen is not None else set()
        self.seen = now
        if new:
            self.reconcile(only_keys=new)

    def resync(self, items: list[dict]) -> None:
        with self.lock:
            self.nodes = {str((n.get("metadata") or {}).get("name")): dict((n.get("metadata") or {}).get("labels")
                                                                           or {}) for n in items}
        self.reconcile()

    def event(self, event: WatchEvent) -> None:
        meta = event.object.get("metadata") or {}
        name = str(meta.get("name"))
        labels = dict(meta.get("labels") or {})
        with self.lock:
            if event.type == "DELETED":
                self.nodes.pop(name, None)
                return
            if self.nodes.get(name) == labels:
                return  # a status update (the kubelet's heartbeats): nothing for the labels
            self.nodes[name] = labels
        self.reconcile(name)

    def reconcile(self, only: str = "", only_keys: set[str] | None = None) -> None:
        from cni_calico.datastore import Txn, transact

        found = (self.ds.get(k) for k in sorted(only_keys)) if only_keys else self.ds.list(keys.resource_dir("nodes"))
        for kv in found:
            if kv is None:
                continue
            ref = k8s_node_of(kv.value)
            with self.lock:
                labels = self.nodes.get(ref)
            if not ref or labels is None or (only and ref != only):
                continue

            def attempt(key=kv.key, labels=labels) -> tuple[Txn, bool]:
                current = self.ds.get(key)
                value = synced_labels(current.value, labels) if current else None
                return (Txn().put(key, value, current.mod_revision), True) if value else (Txn(), False)

            if transact(self.ds, attempt, f"syncing the labels of {kv.key}"):
                log.info("synced the labels of Kubernetes node %s onto Calico node %s", ref, kv.key.rsplit("/", 1)[-1])
