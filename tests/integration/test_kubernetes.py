"""The pod and its namespace read from the Kubernetes API: pool and address annotations, labels, auth.

These tests run a small HTTPS server of their own, a double that lets them count requests and
inject failures (the real kube-apiserver runs in test_kube_controllers.py and test_cri.py)
(tests/fake_kube_api.py: Python http.server + ssl, with a CA and certificates
made here by openssl through tests.lab.Certs). It answers exactly the two GETs the plugin makes
(GET /api/v1/namespaces/{ns}/pods/{name} and GET /api/v1/namespaces/{ns}) in the API's real JSON
shape (kind Pod / Namespace, apiVersion v1, metadata with name, namespace, uid, labels,
annotations), checks the bearer token (401 Status otherwise) or, without one, the client
certificate. The plugin runs inside a lab node namespace, which cannot reach the host's loopback,
so the fake API runs inside the same node namespace (`ip netns exec <node> python -m
tests.fake_kube_api`) and the kubeconfig points at https://127.0.0.1:<port>; it is stopped by PID.
"""

from __future__ import annotations

import base64
import json
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.helpers import ENDPOINTS, allocated, assert_nothing_left
from tests.lab import REPO, Certs, Lab, add_pool, free_port

TOKEN = "s3cr3t-token-for-tests"
NS, POD = "team-a", "web-0"
ARGS = f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={POD}"
CID = "k8s0000000000001"


class FakeApi:
    """The fake API server in a node namespace, its data file, and the kubeconfigs that reach it."""

    def __init__(self, lab: Lab, node: str, certs: Certs, workdir: Path) -> None:
        self.lab, self.node, self.certs, self.dir = lab, node, certs, workdir
        self.data = workdir / "api-data.json"
        self.requests_log = workdir / "api-requests.jsonl"
        self.set()
        self.requests_log.write_text("")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", node, sys.executable, "-m", "tests.fake_kube_api",
             "--cert", certs.cert("server"), "--key", certs.key("server"), "--client-ca", certs.ca,
             "--token", TOKEN, "--data", str(self.data), "--requests", str(self.requests_log)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=open(workdir / "api.log", "ab"), text=True,
        )
        lab.procs.append(self.proc)  # the lab kills it too, should this fixture not get to
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        assert line.startswith("ready "), f"fake API did not start: {line!r}"
        self.port = int(line.split()[1])
        self.url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc in self.lab.procs:
            self.lab.procs.remove(self.proc)

    def set(self, ns_labels=None, ns_notes=None, pods: dict | None = None) -> None:
        """The namespace NS with labels and annotations, and pods by name: {name: (labels, annotations)}."""
        pods = {POD: ({}, {})} if pods is None else pods
        self.data.write_text(json.dumps({
            "namespaces": {NS: {"labels": ns_labels or {}, "annotations": ns_notes or {}}},
            "pods": {f"{NS}/{name}": {"labels": labels, "annotations": notes}
                     for name, (labels, notes) in pods.items()},
        }))

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.requests_log.read_text().splitlines() if line]

    def kubeconfig(self, auth: str = "token", token: str = TOKEN, server: str = "", name: str = "kubeconfig") -> str:
        """auth: token | token-file | cert-files | cert-data (the CA as a file, or as -data with cert-data)."""
        c = self.certs
        cluster: dict = {"server": server or self.url}
        user: dict = {}
        if auth == "cert-data":
            cluster["certificate-authority-data"] = base64.b64encode(Path(c.ca).read_bytes()).decode()
            user["client-certificate-data"] = base64.b64encode(Path(c.cert()).read_bytes()).decode()
            user["client-key-data"] = base64.b64encode(Path(c.key()).read_bytes()).decode()
        else:
            cluster["certificate-authority"] = c.ca
        if auth == "token":
            user["token"] = token
        elif auth == "token-file":
            (self.dir / "token").write_text(token + "\n")
            user["tokenFile"] = "token"  # relative to the kubeconfig's directory
        elif auth == "cert-files":
            user["client-certificate"] = c.cert()
            user["client-key"] = c.key()
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "other", "cluster": {"server": "https://192.0.2.1:6443"}},
                         {"name": "lab-cluster", "cluster": cluster}],
            "users": [{"name": "lab-user", "user": user}],
            "contexts": [{"name": "other", "context": {"cluster": "other", "user": "lab-user"}},
                         {"name": "lab", "context": {"cluster": "lab-cluster", "user": "lab-user"}}],
        }
        path = self.dir / name
        path.write_text(yaml.safe_dump(doc))
        return str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("kube-certs"))


@pytest.fixture
def api(lab, node, certs, tmp_path):
    fake = FakeApi(lab, node, certs, tmp_path)
    yield fake
    fake.stop()


@pytest.fixture
def pools(etcd, pool):
    add_pool(etcd, "blue", "10.61.0.0/24")
    add_pool(etcd, "green", "10.62.0.0/24")


def _k8s_conf(conf, api: FakeApi, auth: str = "token", **extra) -> dict:
    return conf(kubernetes={"kubeconfig": api.kubeconfig(auth)}, **extra)


def _add(node: str, netconf: dict, pod_ns: str, cid: str = CID, pod: str = POD, **kw):
    return Lab.run_plugin(node, "ADD", netconf, cid, Lab.netns_path(pod_ns),
                          args=f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}", **kw)


def _del(node: str, netconf: dict, pod_ns: str, cid: str = CID, pod: str = POD):
    run = Lab.run_plugin(node, "DEL", netconf, cid, Lab.netns_path(pod_ns),
                         args=f"K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod}")
    assert run.rc == 0, run.stdout + run.stderr
    return run


def _address(run) -> str:
    assert run.rc == 0, run.stdout + run.stderr[-3000:]
    return run.out["ips"][0]["address"].split("/")[0]


def _endpoint(etcd, pod: str = POD) -> dict:
    (key,) = [k for k in etcd.keys(ENDPOINTS) if f"-k8s-{pod.replace('-', '--')}-" in k]
    return etcd.get_json(key)


# --- pools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "cidr"])
def test_pool_annotation_pod_over_namespace_over_config(by, lab, node, make_pod, pools, conf, etcd, api):
    blue, green = ("blue", "green") if by == "name" else ("10.61.0.0/24", "10.62.0.0/24")
    notes = {"cni.projectcalico.org/ipv4pools": json.dumps([blue])}
    api.set(ns_notes={"cni.projectcalico.org/ipv4pools": json.dumps([green])},
            pods={"annotated": ({}, notes), "plain": ({}, {})})
    netconf = _k8s_conf(conf, api, ipam={"type": "calico-ipam", "ipv4_pools": ["pool1"]})
    pod_a, pod_b = make_pod(), make_pod()
    assert _address(_add(node, netconf, pod_a, "k8s-annotated", "annotated")).startswith("10.61.0.")
    assert _address(_add(node, netconf, pod_b, "k8s-plain", "plain")).startswith("10.62.0.")
    assert [r["path"] for r in api.requests()[:2]] == [f"/api/v1/namespaces/{NS}/pods/annotated",
                                                       f"/api/v1/namespaces/{NS}"]
    api.set(pods={"bare": ({}, {})})  # no annotation anywhere: the config's pool
    pod_c = make_pod()
    assert _address(_add(node, netconf, pod_c, "k8s-bare", "bare")).startswith("10.60.0.")
    for pod_ns, cid, name in ((pod_a, "k8s-annotated", "annotated"), (pod_b, "k8s-plain", "plain"),
                              (pod_c, "k8s-bare", "bare")):
        _del(node, netconf, pod_ns, cid, name)
    assert_nothing_left(lab, node, etcd)


def test_unknown_pool_in_annotation_is_code_7(lab, node, make_pod, pools, conf, etcd, api):
    api.set(pods={POD: ({}, {"cni.projectcalico.org/ipv4pools": '["nope"]'})})
    run = _add(node, _k8s_conf(conf, api), make_pod())
    assert run.rc != 0 and run.out["code"] == 7 and "nope" in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


def test_malformed_annotation_is_code_7(lab, node, make_pod, pools, conf, etcd, api):
    api.set(pods={POD: ({}, {"cni.projectcalico.org/ipv4pools": "blue"})})
    run = _add(node, _k8s_conf(conf, api), make_pod())
    assert run.rc != 0 and run.out["code"] == 7 and "ipv4pools" in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


# --- ipAddrs -------------------------------------------------------------------------------------


def _ip_addrs(*addresses: str) -> dict:
    return {"cni.projectcalico.org/ipAddrs": json.dumps(list(addresses))}


def test_ip_addrs_is_honoured(lab, node, make_pod, pools, conf, etcd, api):
    api.set(pods={POD: ({"app": "db"}, _ip_addrs("10.61.0.77"))})
    netconf = _k8s_conf(conf, api)
    pod = make_pod()
    run = _add(node, netconf, pod)
    assert _address(run) == "10.61.0.77"
    assert "inet 10.61.0.77/32" in lab.in_ns(pod, "ip", "-4", "addr", "show", "eth0").stdout
    wep = _endpoint(etcd)
    assert wep["spec"]["ipNetworks"] == ["10.61.0.77/32"] and wep["metadata"]["labels"]["app"] == "db"
    assert allocated(etcd) == ["10.61.0.77"]
    assert lab.ping(node, "10.61.0.77")
    check = Lab.run_plugin(node, "CHECK", {**netconf, "prevResult": run.out}, CID, Lab.netns_path(pod), args=ARGS)
    assert check.rc == 0, check.stdout + check.stderr
    _del(node, netconf, pod)
    assert_nothing_left(lab, node, etcd)


def test_ip_addrs_taken_is_code_102(lab, node, make_pod, pools, conf, etcd, api):
    api.set(pods={"first": ({}, _ip_addrs("10.60.0.9")), "second": ({}, _ip_addrs("10.60.0.9"))})
    netconf = _k8s_conf(conf, api)
    first, second = make_pod(), make_pod()
    assert _address(_add(node, netconf, first, "k8s-first", "first")) == "10.60.0.9"
    run = _add(node, netconf, second, "k8s-second", "second")
    assert run.rc != 0 and run.out["code"] == 102 and "10.60.0.9" in run.out["msg"], run.stdout
    assert len(etcd.keys(ENDPOINTS)) == 1 and allocated(etcd) == ["10.60.0.9"]
    assert "eth0" not in lab.links(second)
    _del(node, netconf, first, "k8s-first", "first")
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("case", ["no-pool", "not-the-annotated-pool"])
def test_ip_addrs_outside_usable_pools_is_code_7(case, lab, node, make_pod, pools, conf, etcd, api):
    notes = _ip_addrs("10.99.0.5") if case == "no-pool" else {
        **_ip_addrs("10.60.0.5"), "cni.projectcalico.org/ipv4pools": '["blue"]'}
    api.set(pods={POD: ({}, notes)})
    run = _add(node, _k8s_conf(conf, api), make_pod())
    assert run.rc != 0 and run.out["code"] == 7 and "outside" in run.out["msg"], run.stdout
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("point", ["after-ipam", "after-endpoint", "after-dataplane"])
def test_ip_addrs_rolled_back_on_failure(point, lab, node, make_pod, pools, conf, etcd, api):
    api.set(pods={POD: ({}, _ip_addrs("10.62.0.33"))})
    run = _add(node, _k8s_conf(conf, api), make_pod(), extra_env={"CNI_CALICO_FAIL_AT": point})
    assert run.rc != 0 and point in run.out["msg"]
    assert_nothing_left(lab, node, etcd)


# --- labels and auth -----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["token", "token-file", "cert-files", "cert-data"])
def test_labels_on_the_endpoint_with_each_kind_of_credentials(auth, lab, node, make_pod, pool, conf, etcd, api):
    api.set(ns_labels={"team": "a", "tier": "gold"},
            pods={POD: ({"app": "web", "projectcalico.org/namespace": "spoofed"}, {})})
    netconf = _k8s_conf(conf, api, auth)
    pod = make_pod()
    _address(_add(node, netconf, pod))
    labels = _endpoint(etcd)["metadata"]["labels"]
    assert labels == {
        "app": "web",
        "pcns.team": "a",
        "pcns.tier": "gold",
        "pcns.kubernetes.io/metadata.name": NS,
        "projectcalico.org/serviceaccount": "default",
        "projectcalico.org/namespace": NS,
        "projectcalico.org/orchestrator": "k8s",
    }
    want = "cert" if auth.startswith("cert") else "token"
    assert [(r["path"], r["auth"]) for r in api.requests()] == [
        (f"/api/v1/namespaces/{NS}/pods/{POD}", want), (f"/api/v1/namespaces/{NS}", want)]
    _del(node, netconf, pod)
    assert_nothing_left(lab, node, etcd)


def test_wrong_token_with_policy_k8s_is_code_103(lab, node, make_pod, pool, conf, etcd, api):
    kubeconfig = api.kubeconfig(token="not-the-token")
    run = _add(node, conf(kubernetes={"kubeconfig": kubeconfig}, policy={"type": "k8s"}), make_pod())
    assert run.rc != 0 and run.out["code"] == 103, run.stdout
    assert api.url in run.out["msg"] and "401" in run.out["msg"]
    assert [r["auth"] for r in api.requests()] == ["refused"]
    assert_nothing_left(lab, node, etcd)


def test_api_down_with_policy_k8s_is_code_103(lab, node, make_pod, pool, conf, etcd, api):
    down = f"https://127.0.0.1:{free_port()}"
    kubeconfig = api.kubeconfig(server=down)
    run = _add(node, conf(kubernetes={"kubeconfig": kubeconfig}, policy={"type": "k8s"}), make_pod())
    assert run.rc != 0 and run.out["code"] == 103 and down in run.out["msg"], run.stdout
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize("failure", ["down", "wrong-token", "unreadable-kubeconfig"])
def test_api_failure_without_policy_is_a_warning(failure, lab, node, make_pod, pool, conf, etcd, api):
    if failure == "down":
        kubeconfig, named = api.kubeconfig(server=f"https://127.0.0.1:{free_port()}"), "127.0.0.1"
    elif failure == "wrong-token":
        kubeconfig, named = api.kubeconfig(token="nope"), api.url
    else:
        kubeconfig = named = "/nonexistent/kubeconfig"
    api.set(pods={POD: ({"app": "web"}, _ip_addrs("10.60.0.200"))})
    netconf = conf(kubernetes={"kubeconfig": kubeconfig}, log_level="info")
    pod = make_pod()
    run = _add(node, netconf, pod)
    address = _address(run)
    assert address != "10.60.0.200"  # the annotations were not read: an ordinary address
    warnings = [line for line in run.stderr.splitlines() if "[WARNING]" in line]
    assert any(named in line and POD in line for line in warnings), run.stderr
    assert "app" not in _endpoint(etcd)["metadata"]["labels"]
    _del(node, netconf, pod)
    assert_nothing_left(lab, node, etcd)


def test_no_pod_args_means_no_api_call(lab, node, make_pod, pool, conf, etcd, api):
    netconf = _k8s_conf(conf, api)
    pod = make_pod()
    run = Lab.run_plugin(node, "ADD", netconf, CID, Lab.netns_path(pod))
    assert run.rc == 0, run.stdout + run.stderr
    assert api.requests() == []
    assert Lab.run_plugin(node, "DEL", netconf, CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, node, etcd)
