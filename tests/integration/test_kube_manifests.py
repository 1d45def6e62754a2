"""examples/kubernetes/calico-etcd.yaml is what the Kubernetes API accepts: every object sent to a real
kube-apiserver as a server-side dry run (`dryRun=All`: validated and defaulted, never stored) with
strict field validation (an unknown or duplicated field is an error, not a warning)."""

from __future__ import annotations

import pytest
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


def test_manifest_rbac_lets_each_component_do_its_job_and_no_more(kube_apiserver, tmp_path):
    """The manifest's service accounts, roles and bindings created for real; a token minted for each
    (TokenRequest, as the kubelet mounts one); with it, every request the component makes passes
    RBAC, and a request outside its job is refused (403)."""
    api = kube_apiserver.api()
    wanted = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    made = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] in wanted]
    for doc in made:
        api.create(collection(doc), doc)
    try:
        check_access(kube_apiserver, api)
    finally:  # the session's API server stays as it was (the dry-run test creates these names too)
        for doc in made:
            api.delete(f"{collection(doc)}/{doc['metadata']['name']}")


def check_access(kube_apiserver, api) -> None:
    from cni_calico.kube import ApiAccess
    from cni_calico.kubecontrollers.client import ApiStatus, KubeApi
    from cni_calico.kubecontrollers.main import PATHS

    def as_account(name: str) -> KubeApi:
        answer = api.create(f"/api/v1/namespaces/kube-system/serviceaccounts/{name}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 600}})
        return KubeApi(ApiAccess(server=kube_apiserver.url, ca_file=kube_apiserver.certs.ca,
                                 token=answer["status"]["token"]))

    controllers = as_account("calico-kube-controllers")
    for path in PATHS.values():
        _, version = controllers.list(path)
        assert list(controllers.watch(path, version, timeout_seconds=1)) is not None
    node = as_account("calico-node")
    assert node.get("/api/v1/namespaces/kube-system")["metadata"]["name"] == "kube-system"
    for client, path in ((controllers, "/api/v1/secrets"), (node, "/api/v1/pods")):
        with pytest.raises(ApiStatus) as info:
            client.list(path)
        assert info.value.code == 403
