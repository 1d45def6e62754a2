"""examples/kubernetes/calico-etcd.yaml is what the Kubernetes API accepts: every object sent to a real
kube-apiserver as a server-side dry run (`dryRun=All`: validated and defaulted, never stored) with
strict field validation (an unknown or duplicated field is an error, not a warning)."""

from __future__ import annotations

import yaml

from tests.kube_apiserver import collection
from tests.lab import REPO

MANIFEST = REPO / "examples" / "kubernetes" / "calico-etcd.yaml"


def test_manifest_objects_validate_against_the_api(kube_apiserver):
    api = kube_apiserver.api()
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert {d["kind"] for d in docs} >= {"DaemonSet", "Deployment", "ClusterRole", "ClusterRoleBinding",
                                         "ServiceAccount", "ConfigMap", "Secret"}
    for doc in docs:
        answer = api.create(collection(doc) + "?dryRun=All&fieldValidation=Strict", doc)
        assert answer["metadata"]["name"] == doc["metadata"]["name"]
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert daemonset["hostNetwork"] is True
    node = next(c for c in daemonset["containers"] if c["name"] == "calico-node")
    assert node["readinessProbe"]["exec"]["command"][-1] == "--ready"
    assert any(e["name"] == "CALICO_K8S_NODE_REF" for e in node["env"])
