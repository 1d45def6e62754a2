"""The controllers' Kubernetes client and reflector against a real kube-apiserver: paged lists with a
resourceVersion, a streaming watch from it, bookmarks, 410 Gone for a compacted version (and the
reflector's relist), a token file re-read when it rotates, and an exec plugin's client certificate
(renewed when it expires)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from cni_calico.kube import ApiAccess, KubeError
from cni_calico.kubecontrollers import client as kclient
from cni_calico.kubecontrollers.client import Gone, KubeApi
from cni_calico.kubecontrollers.reflector import Reflector
from tests.lab import wait_for


def test_list_pages_then_watch_from_its_version(kube_apiserver, monkeypatch):
    api = kube_apiserver.api()
    tag = uuid.uuid4().hex[:6]
    names = [f"page-{tag}-{i}" for i in range(5)]
    for name in names:
        api.namespace(name, {"tag": tag})
    monkeypatch.setattr(kclient, "LIST_PAGE", 2)  # five namespaces and more: at least three pages
    items, version = api.client.list("/api/v1/namespaces", labelSelector=f"tag={tag}")
    assert sorted(i["metadata"]["name"] for i in items) == names and version
    events = []

    def follow() -> None:
        for event in api.client.watch("/api/v1/namespaces", version, timeout_seconds=5):
            events.append(event)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    api.merge_patch(f"/api/v1/namespaces/{names[0]}", {"metadata": {"labels": {"changed": "yes"}}})
    thread.join(20)
    assert any(e.type == "MODIFIED" and e.object["metadata"]["name"] == names[0] for e in events)


def compact(etcd) -> None:
    """etcd compacted to its current revision: older resourceVersions are gone (410), as after
    kube-apiserver's own periodic compaction."""
    revision = json.loads(etcd.ctl("get", "/", "-w", "json"))["header"]["revision"]
    etcd.ctl("compact", str(revision))


def configmap(api, name: str) -> None:
    api.create("/api/v1/namespaces/default/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                         "metadata": {"name": name}, "data": {"k": "v"}})


def test_too_old_version_is_gone_and_the_reflector_resumes(kube_apiserver):
    """ConfigMaps bypass the watch cache (see tests/kube_apiserver.py): etcd compacted past a
    version makes a watch from it 410 Gone. The reflector lists once, then follows the watch and
    resumes it when the server ends it without listing again (its relist after a 410 is
    tests/unit/test_kube_reflector.py's, on a scripted API)."""
    api = kube_apiserver.api()
    configmap(api, f"old-{uuid.uuid4().hex[:6]}")
    _, version = api.client.list("/api/v1/configmaps")
    for _ in range(2):  # a watch resumes at version + 1: compact beyond that
        configmap(api, f"new-{uuid.uuid4().hex[:6]}")
    compact(kube_apiserver.etcd)
    with pytest.raises(Gone):
        list(api.client.watch("/api/v1/configmaps", version, timeout_seconds=5))

    class Rec:
        def __init__(self) -> None:
            self.synced, self.events = [], []

        def resync(self, items):
            self.synced.append(len(items))

        def event(self, event):
            self.events.append(event.object["metadata"]["name"])

    rec, stop = Rec(), threading.Event()
    reflector = Reflector(api.client, "/api/v1/configmaps", rec, stop, watch_seconds=2)
    reflector.start()
    try:
        wait_for(lambda: rec.synced, 20, "the first list")
        name = f"refl-{uuid.uuid4().hex[:6]}"
        configmap(api, name)
        wait_for(lambda: name in rec.events, 20, "the watch event")
        time.sleep(5)  # the server ends the watch (timeoutSeconds): resumed without a new list
        assert reflector.lists == 1
    finally:
        stop.set()


def test_token_file_reread_when_rotated(kube_apiserver, tmp_path):
    token = tmp_path / "token"
    token.write_text("not-a-valid-token")
    api = KubeApi(ApiAccess(server=kube_apiserver.url, ca_file=kube_apiserver.certs.ca, token_file=str(token)))
    with pytest.raises(KubeError, match="401"):
        api.get("/api/v1/namespaces/default")
    time.sleep(0.01)
    token.write_text(kube_apiserver.token + "\n")  # the kubelet's rotation: a new file content
    assert api.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"


def _client_cert(certs_dir, name: str) -> tuple[str, str]:
    """A client certificate for user `name` in system:masters, signed by the apiserver's client CA."""
    from tests.lab import sh

    key, csr, pem = (str(certs_dir / f"{name}.{ext}") for ext in ("key", "csr", "pem"))
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/O=system:masters/CN={name}", "-keyout", key,
       "-out", csr)
    ext = certs_dir / f"{name}.ext"
    ext.write_text("extendedKeyUsage=clientAuth\n")
    sh("openssl", "x509", "-req", "-in", csr, "-CA", str(certs_dir / "ca.pem"), "-CAkey", str(certs_dir / "ca.key"),
       "-CAcreateserial", "-days", "1", "-out", pem, "-extfile", str(ext))
    return open(pem).read(), open(key).read()


def _exec_plugin(tmp_path, certs_dir, lifetime: int) -> tuple[dict, object]:
    """An exec credential plugin handing out a client certificate valid `lifetime` seconds: user
    exec-user-1 on its first run, exec-user-2 on every later one; it counts its runs in a file."""
    import os

    for n in (1, 2):
        cert, key = _client_cert(certs_dir, f"exec-user-{n}")
        (tmp_path / f"cred-{n}.json").write_text(json.dumps({"cert": cert, "key": key}))
    runs = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    script.write_text(f"""#!/usr/bin/env python3
import datetime, json, os, sys
runs = {str(runs)!r}
n = len(open(runs).read().splitlines()) + 1 if os.path.exists(runs) else 1
open(runs, "a").write(os.environ.get("KUBERNETES_EXEC_INFO", "") + "\\n")
cred = json.load(open({str(tmp_path)!r} + f"/cred-{{min(n, 2)}}.json"))
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={lifetime})
json.dump({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {{
    "clientCertificateData": cred["cert"], "clientKeyData": cred["key"],
    "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}, sys.stdout)
""")
    os.chmod(script, 0o755)
    return {"command": str(script), "apiVersion": "client.authentication.k8s.io/v1"}, runs


def _whoami(api: KubeApi) -> str:
    review = api.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return review["status"]["userInfo"]["username"]


def test_exec_plugin_client_certificate_authenticates_and_is_renewed(kube_apiserver, tmp_path):
    """client-go's exec credential with a client certificate: TLS client auth with the plugin's PEM
    certificate and key; once its expirationTimestamp passes, the plugin runs again and new
    connections use the new certificate (kube-apiserver names the user from its CN)."""
    spec, runs = _exec_plugin(tmp_path, kube_apiserver.certs.directory, lifetime=14)  # renewed 10 s early
    api = KubeApi(ApiAccess(server=kube_apiserver.url, ca_file=kube_apiserver.certs.ca, exec_plugin=spec))
    assert _whoami(api) == "exec-user-1"
    assert _whoami(api) == "exec-user-1"
    assert len(runs.read_text().splitlines()) == 1, "ran once while its certificate is valid"
    assert json.loads(runs.read_text().splitlines()[0])["apiVersion"] == "client.authentication.k8s.io/v1"
    time.sleep(5)
    assert _whoami(api) == "exec-user-2", "an expired certificate is renewed by running the plugin again"
    assert len(runs.read_text().splitlines()) == 2
    for _ in api.watch("/api/v1/namespaces", api.list("/api/v1/namespaces")[1], timeout_seconds=1):
        pass  # a watch (a connection of its own) authenticates with the renewed certificate too


def test_exec_plugin_client_certificate_in_a_kubeconfig(kube_apiserver, tmp_path):
    """The plugin's path (cni_calico.kube.ApiClient from a kubeconfig's users[].user.exec)."""
    import yaml

    from cni_calico.kube import ApiClient, load_kubeconfig

    spec, runs = _exec_plugin(tmp_path, kube_apiserver.certs.directory, lifetime=3600)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": kube_apiserver.url,
                                                 "certificate-authority": kube_apiserver.certs.ca}}],
        "users": [{"name": "lab", "user": {"exec": spec}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
    client = ApiClient(load_kubeconfig(str(path)))
    try:
        assert client.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
    finally:
        client.close()
    assert len(runs.read_text().splitlines()) == 1


def test_exec_plugin_run_again_after_401(kube_apiserver, tmp_path):
    """A credential the API refuses (401) is asked of the plugin again on the next request, as
    client-go's exec round tripper does: here its first answer is a bogus token, its second a
    client certificate."""
    import os

    cert, key = _client_cert(kube_apiserver.certs.directory, "exec-user-401")
    runs = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    first = {"token": "bogus"}
    later = {"clientCertificateData": cert, "clientKeyData": key}
    script.write_text(f"""#!/usr/bin/env python3
import json, os, sys
n = len(open({str(runs)!r}).read().splitlines()) + 1 if os.path.exists({str(runs)!r}) else 1
open({str(runs)!r}, "a").write("run\\n")
json.dump({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
           "status": {json.dumps(first)} if n == 1 else {json.dumps(later)}}}, sys.stdout)
""")
    os.chmod(script, 0o755)
    spec = {"command": str(script), "apiVersion": "client.authentication.k8s.io/v1"}
    api = KubeApi(ApiAccess(server=kube_apiserver.url, ca_file=kube_apiserver.certs.ca, exec_plugin=spec))
    with pytest.raises(KubeError, match="401"):
        _whoami(api)
    assert _whoami(api) == "exec-user-401"
    assert len(runs.read_text().splitlines()) == 2
