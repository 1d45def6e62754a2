"""The controllers' datastore side on the in-memory etcd double: reconcile touches only what a
controller owns, writes only differences and keeps uid/creationTimestamp; endpoint labels follow
pods and namespaces; the node controller deletes a Kubernetes-owned Calico node after the grace."""

from __future__ import annotations

from cni_calico import keys
from cni_calico.kubecontrollers import convert
from cni_calico.kubecontrollers.client import WatchEvent
from cni_calico.kubecontrollers.controllers import Mirror, WorkloadLabels
from cni_calico.kubecontrollers.nodes import NodeController
from cni_calico.kubecontrollers.writer import Owned
from tests.memstore import MemStore


def ns(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def ns_mirror(store: MemStore) -> Mirror:
    def conv(obj):
        name, spec = convert.namespace_profile(obj)
        return ("", name), spec

    return Mirror(Owned(store, "Profile", "profiles", "kns."), conv)


def test_reconcile_owns_only_its_prefix_and_writes_only_differences():
    operator = {"kind": "Profile", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "kns-mine"}, "spec": {}}
    stale = {"kind": "Profile", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "kns.gone"}, "spec": {}}
    store = MemStore({keys.resource("profiles", "kns-mine"): operator, keys.resource("profiles", "kns.gone"): stale})
    mirror = ns_mirror(store)
    mirror.resync([ns("a", team="x")])
    assert store.value(keys.resource("profiles", "kns.gone")) is None
    assert store.value(keys.resource("profiles", "kns-mine")) == operator
    first = store.value(keys.resource("profiles", "kns.a"))
    assert first["spec"]["labelsToApply"] == {"pcns.projectcalico.org/name": "a", "pcns.team": "x"}
    commits = store.commits
    mirror.resync([ns("a", team="x")])
    assert store.commits == commits  # nothing differs: nothing written
    mirror.event(WatchEvent("MODIFIED", ns("a", team="y")))
    second = store.value(keys.resource("profiles", "kns.a"))
    assert second["spec"]["labelsToApply"]["pcns.team"] == "y"
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    mirror.event(WatchEvent("DELETED", ns("a")))
    assert store.value(keys.resource("profiles", "kns.a")) is None


def wep(name: str, namespace: str, pod: str, labels: dict) -> dict:
    return {"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"orchestrator": "k8s", "node": "n1", "pod": pod, "containerID": "c1", "profiles": ["k8s"]}}


def test_endpoint_labels_follow_pod_and_namespace():
    key = keys.resource("workloadendpoints", "n1-k8s-web-eth0", "team")
    store = MemStore({key: wep("n1-k8s-web-eth0", "team", "web", {"app": "web"})})
    labels = WorkloadLabels(store)
    labels.namespaces_feed().resync([ns("team", tier="gold")])
    pod = {"metadata": {"name": "web", "namespace": "team", "labels": {"app": "web"}},
           "spec": {"serviceAccountName": "sa1"}}
    labels.resync([pod])
    assert store.value(key)["metadata"]["labels"] == {
        "app": "web", "pcns.tier": "gold", "projectcalico.org/serviceaccount": "sa1",
        "projectcalico.org/namespace": "team", "projectcalico.org/orchestrator": "k8s"}
    labels.event(WatchEvent("MODIFIED", {**pod, "metadata": {**pod["metadata"], "labels": {"app": "api"}}}))
    assert store.value(key)["metadata"]["labels"]["app"] == "api"
    labels.namespaces_feed().event(WatchEvent("MODIFIED", ns("team", tier="silver")))
    assert store.value(key)["metadata"]["labels"]["pcns.tier"] == "silver"
    assert store.value(key)["spec"]["profiles"] == ["k8s"]  # only the labels change


class NoPods:
    def get(self, path):
        return {"items": []}

    def list(self, path):
        return [], "1"


def test_node_controller_deletes_only_kubernetes_nodes_after_the_grace():
    def node(name: str, ref: str = "") -> dict:
        spec = {"orchRefs": [{"nodeName": ref, "orchestrator": "k8s"}]} if ref else {}
        return {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}, "spec": spec}

    store = MemStore({keys.resource("nodes", "n1"): node("n1", "n1"), keys.resource("nodes", "n2"): node("n2", "k2"),
                      keys.resource("nodes", "plain"): node("plain")})
    ctl = NodeController(store, NoPods(), grace=5)
    ctl.resync([{"metadata": {"name": "n1"}}, {"metadata": {"name": "k2"}}])
    assert ctl.pending == {}
    ctl.event(WatchEvent("DELETED", {"metadata": {"name": "k2"}}))
    assert set(ctl.pending) == {"n2"}
    due = ctl.pending["n2"]
    ctl.tick(due - 1)
    assert store.value(keys.resource("nodes", "n2")) is not None
    ctl.tick(due)
    assert store.value(keys.resource("nodes", "n2")) is None
    assert store.value(keys.resource("nodes", "n1")) is not None and store.value(keys.resource("nodes", "plain"))


class Pods:
    def __init__(self, pods: list[tuple[str, str]]) -> None:
        self.pods = [{"metadata": {"namespace": ns, "name": name}, "status": {"phase": "Running"}}
                     for ns, name in pods]

    def get(self, path):
        return {"items": self.pods}

    def list(self, path):
        return self.pods, "1"


def test_ipam_gc_releases_allocations_of_pods_the_api_no_longer_has(tmp_path):
    from ipam.assign import AssignArgs, auto_assign
    from ipam.store import IpamStore
    from tests.lab import pool

    store = MemStore({keys.resource("ippools", "p"): pool("p", "10.9.0.0/24")})
    live = auto_assign(store, AssignArgs("k8s.c1", "n1", str(tmp_path), {"namespace": "a", "pod": "live"}))
    gone = auto_assign(store, AssignArgs("k8s.c2", "n1", str(tmp_path), {"namespace": "a", "pod": "gone"}))
    plain = auto_assign(store, AssignArgs("net.c3", "n1", str(tmp_path), {}))  # not a Kubernetes pod's
    ctl = NodeController(store, Pods([("a", "live")]), grace=5, leak_grace=5, gc_period=0)
    ctl.tick(100.0)  # first seen missing
    ctl.tick(104.0)
    ipam = IpamStore(store)
    assert all(ipam.ips_by_handle(c) for c in ("k8s.c1", "k8s.c2", "net.c3"))
    ctl.tick(105.0)  # missing for the whole grace: released
    assert ipam.ips_by_handle("k8s.c2") == []
    assert ipam.ips_by_handle("k8s.c1") and ipam.ips_by_handle("net.c3")
    assert live and gone and plain
