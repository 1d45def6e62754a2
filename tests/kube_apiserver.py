"""A real kube-apiserver for the tests: built by `make kube-apiserver`, run on loopback.

It stores into the lab's etcd under a prefix of its own (`/kube-<hex>/`, never under /calico, which
the per-test wipe clears), serves https on a free 127.0.0.1 port with the lab CA's server
certificate, authenticates a static token the tests make (user `cni-calico-tests` in
`system:masters`, so RBAC allows everything) and signs service-account tokens with a key made
here (so TokenRequest works and a test can act as a service account under RBAC). ConfigMaps skip
the watch cache (`--watch-cache-sizes=configmaps#0`) so that a test can get a real 410 Gone by
compacting etcd: the cache itself answers an old version with the objects it holds instead. No other
Kubernetes component runs: pods are created with `spec.nodeName` set (no scheduler), a
namespace's `default` service account is created by `namespace()` (no controller-manager), and
pods stay Pending (no kubelet) — the plugin is run by the tests, as the runtime would.

A node namespace cannot reach the host's loopback, so `bridge(ns)` makes the API reachable at
127.0.0.1:<port> inside a node (socat, as the lab does for etcd); the certificate names
127.0.0.1, so TLS verifies there too. Stopped by PID.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import ssl
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cni_calico.kubecontrollers.client import KubeApi
from tests.lab import Certs, Etcd, Lab, free_port, port_open, sh, wait_for

KUBE_VERSION = "v1.37.2"
KUBE_CACHE = os.environ.get("KUBE_CACHE", "/var/cache/cni-calico")


def binary() -> str:
    """The built kube-apiserver ($KUBE_APISERVER, else the Makefile's cache path; "" when absent)."""
    path = os.environ.get("KUBE_APISERVER") or f"{KUBE_CACHE}/kube-apiserver-{KUBE_VERSION}"
    return path if os.access(path, os.X_OK) else ""


@dataclass
class KubeApiServer:
    lab: Lab
    etcd: Etcd
    dir: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    prefix: str = field(default_factory=lambda: f"/kube-{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen | None = None
    socket_path: str = ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> KubeApiServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = Certs(self.dir / "certs")
        sa_key = self.dir / "sa.key"
        sh("openssl", "genrsa", "-out", str(sa_key), "2048")
        (self.dir / "tokens.csv").write_text(f'{self.token},cni-calico-tests,uid-tests,"system:masters"\n')
        log = open(self.dir / "kube-apiserver.log", "ab")
        self.proc = subprocess.Popen([
            binary(),
            "--etcd-servers", self.etcd.url, "--etcd-prefix", self.prefix,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(self.port),
            "--tls-cert-file", self.certs.cert("server"), "--tls-private-key-file", self.certs.key("server"),
            "--client-ca-file", self.certs.ca,
            "--token-auth-file", str(self.dir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(sa_key), "--service-account-signing-key-file", str(sa_key),
            "--api-audiences", "https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range", "10.96.0.0/24",
            "--endpoint-reconciler-type", "none",  # it refuses a loopback advertise address
            "--allow-privileged=true",  # as every cluster running a CNI DaemonSet
            # ConfigMaps (which nothing here uses) bypass the watch cache, so a watch from a
            # compacted version reaches etcd and answers 410 Gone, as a cache past its window does.
            "--watch-cache-sizes", "configmaps#0",
            "--cert-dir", str(self.dir / "cert-dir"),
            "--enable-priority-and-fairness=false",  # fewer moving parts and goroutines on 2 shared cores
            "--profiling=false", "--v=1",
        ], stdout=log, stderr=subprocess.STDOUT)
        self.lab.procs.append(self.proc)  # registered first: the lab kills it should we not get to
        wait_for(lambda: self.proc.poll() is not None or self._ready(), timeout, "kube-apiserver /readyz",
                 interval=0.5)
        assert self.proc.poll() is None, f"kube-apiserver exited: {self.log()[-3000:]}"
        # The bridge for node namespaces: host side (a Unix socket forwarding to the port).
        self.socket_path = str(self.dir / "apiserver.sock")
        bridge = subprocess.Popen(["socat", f"UNIX-LISTEN:{self.socket_path},fork,reuseaddr",
                                   f"TCP:127.0.0.1:{self.port},nodelay"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.lab.procs.append(bridge)
        wait_for(lambda: os.path.exists(self.socket_path), 10, "the API server bridge socket")
        return self

    def _ready(self) -> bool:
        """/readyz answers 200 (plain text, not JSON: asked directly)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                           context=ssl.create_default_context(cafile=self.certs.ca))
        try:
            conn.request("GET", "/readyz", headers={"Authorization": f"Bearer {self.token}"})
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log(self) -> str:
        try:
            return (self.dir / "kube-apiserver.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s (the lab kills it at close too, should we not get here)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # --- clients ------------------------------------------------------------------------------

    def kubeconfig(self, path: Path | None = None, token: str = "") -> str:
        path = path or self.dir / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": self.url, "certificate-authority": self.certs.ca}}],
            "users": [{"name": "lab", "user": {"token": token or self.token}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        }))
        return str(path)

    def api(self):
        from cni_calico.kube import ApiAccess

        return _Api(KubeApi(ApiAccess(server=self.url, ca_file=self.certs.ca, token=self.token)))

    def bridge(self, ns: str) -> None:
        """The API at 127.0.0.1:<port> inside node namespace `ns`."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "socat",
                                 f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                                 f"UNIX-CONNECT:{self.socket_path}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.lab.procs.append(proc)
        wait_for(lambda: port_open(self.port, ns), 10, f"the API server bridge in {ns}")


@dataclass
class _Api:
    """Test-side helpers over the project's client (cni_calico.kubecontrollers.client.KubeApi)."""

    client: KubeApi

    def get(self, path: str):
        return self.client.get(path)

    def create(self, path: str, obj: dict) -> dict:
        return self.client.request("POST", path, obj)

    def delete(self, path: str) -> dict:
        return self.client.request("DELETE", path)

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self.client.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def apply_yaml(self, text: str) -> None:
        for doc in yaml.safe_load_all(text):
            if doc:
                self.create(collection(doc), doc)

    def namespace(self, name: str, labels: dict | None = None) -> None:
        self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": name, "labels": labels or {}}})
        # What kube-controller-manager's service account controller would do.
        self.create(f"/api/v1/namespaces/{name}/serviceaccounts",
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})

    def node(self, name: str) -> None:
        """The Node, unless an earlier test of the module (one API server each) left it there."""
        from cni_calico.kubecontrollers.client import ApiStatus

        try:
            self.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        except ApiStatus as exc:
            if exc.code != 409:
                raise

    def pod(self, namespace: str, name: str, node: str, labels: dict | None = None,
            service_account: str = "default", ports: list[dict] | None = None) -> dict:
        """A pod of one container (its container ports: `ports`)."""
        return self.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "busybox", **({"ports": ports} if ports else {})}]}})


PLURALS = {"NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"), "Namespace": ("/api/v1", "namespaces"),
           "Pod": ("/api/v1", "pods"), "ServiceAccount": ("/api/v1", "serviceaccounts"), "Node": ("/api/v1", "nodes"),
           "ConfigMap": ("/api/v1", "configmaps"), "Secret": ("/api/v1", "secrets"),
           "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles"),
           "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
           "DaemonSet": ("/apis/apps/v1", "daemonsets"), "Deployment": ("/apis/apps/v1", "deployments")}


def collection(doc: dict) -> str:
    base, plural = PLURALS[doc["kind"]]
    ns = (doc.get("metadata") or {}).get("namespace")
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
