"""The controllers' Kubernetes client and reflector against a real kube-apiserver: paged lists with a
resourceVersion, a streaming watch from it, bookmarks, 410 Gone for a compacted version (and the
reflector's relist), and a token file re-read when it rotates."""

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
