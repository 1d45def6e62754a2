"""cni_calico.kube without a network: the decision, the kubeconfig, the pod's annotations and labels.

The hot-path rule is checked in a fresh interpreter: parsing a config and deciding what Kubernetes
is needed for must neither read the kubeconfig nor import PyYAML, ssl or http.client.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from cni_calico import kube, netconf
from cni_calico.errors import CniError
from tests.lab import REPO

BASE = {"name": "net1", "cniVersion": "1.0.0", "type": "calico", "etcd_endpoints": "http://127.0.0.1:2379",
        "ipam": {"type": "calico-ipam"}}
POD_ARGS = {"K8S_POD_NAMESPACE": "ns1", "K8S_POD_NAME": "web-0"}


def parse(**extra):
    return netconf.parse({**BASE, **extra})


# --- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "args", "want"), [
    ({}, POD_ARGS, kube.NOTHING),
    ({"kubernetes": {"kubeconfig": "/k"}}, {}, kube.NOTHING),
    ({"kubernetes": {"kubeconfig": "/k"}}, {"K8S_POD_NAME": "web-0"}, kube.NOTHING),
    ({"kubernetes": {"kubeconfig": "/k"}}, POD_ARGS, kube.API),
    ({"kubernetes": {"kubeconfig": "/k"}, "policy": {"type": "k8s"}}, POD_ARGS, kube.API),
    ({"kubernetes": {"kubeconfig": "/k"}, "policy": {"type": "k8s"}}, {}, kube.KUBECONFIG_ONLY),
    ({"policy": {"type": "k8s"}}, POD_ARGS, kube.KUBECONFIG_ONLY),
])
def test_plan(extra, args, want):
    assert kube.plan(parse(**extra), args) == want


HOT_PATH = textwrap.dedent("""
    import json, sys
    kubeconfig = sys.argv[1]
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    from cni_calico import kube, netconf, plugin  # noqa: F401
    base = {"name": "n", "cniVersion": "1.0.0", "type": "calico", "etcd_endpoints": "http://127.0.0.1:2379",
            "ipam": {"type": "calico-ipam"}}
    decisions = []
    for extra, args in (({}, {"K8S_POD_NAMESPACE": "a", "K8S_POD_NAME": "b"}),
                        ({"kubernetes": {"kubeconfig": kubeconfig}}, {}),
                        ({"kubernetes": {"kubeconfig": kubeconfig}}, {"K8S_POD_NAME": "b"})):
        conf = netconf.parse({**base, **extra})
        decisions.append(kube.plan(conf, args))
        conf2, info = kube.apply_pod(conf, args)
        assert conf2 is conf and info == kube.PodInfo()
    heavy = sorted(m for m in ("yaml", "ssl", "_ssl", "http.client", "base64") if m in sys.modules)
    print(json.dumps({"decisions": decisions, "heavy": heavy, "read": kubeconfig in opened}))
""")


def test_no_kubeconfig_read_nor_heavy_import_when_not_needed(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    out = subprocess.run([sys.executable, "-c", HOT_PATH, str(kubeconfig)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    assert got == {"decisions": ["", "", ""], "heavy": [], "read": False}


# --- the kubeconfig ---------------------------------------------------------------------------


def write_kubeconfig(tmp_path, user: dict, cluster: dict | None = None, current: str | None = "main") -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c-other", "cluster": {"server": "https://10.0.0.1:6443"}},
                     {"name": "c-main", "cluster": cluster or {"server": "https://127.0.0.1:6443/",
                                                               "certificate-authority": "ca.pem"}}],
        "users": [{"name": "u-main", "user": user}],
        "contexts": [{"name": "other", "context": {"cluster": "c-other", "user": "u-main"}},
                     {"name": "main", "context": {"cluster": "c-main", "user": "u-main"}}],
    }
    if current:
        doc["current-context"] = current
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_current_context_with_token_and_relative_ca(tmp_path):
    access = kube.load_kubeconfig(write_kubeconfig(tmp_path, {"token": "abc"}))
    assert access.server == "https://127.0.0.1:6443"
    assert access.ca_file == str(tmp_path / "ca.pem")
    assert access.token == "abc" and not access.cert_file


def test_other_context_is_honoured(tmp_path):
    access = kube.load_kubeconfig(write_kubeconfig(tmp_path, {"token": "abc"}, current="other"))
    assert access.server == "https://10.0.0.1:6443"


def test_token_file_relative_to_kubeconfig(tmp_path):
    (tmp_path / "tok").write_text("from-file\n")
    assert kube.load_kubeconfig(write_kubeconfig(tmp_path, {"tokenFile": "tok"})).token == "from-file"


def test_missing_token_file_is_named(tmp_path):
    with pytest.raises(kube.KubeError, match="nope"):
        kube.load_kubeconfig(write_kubeconfig(tmp_path, {"tokenFile": "nope"}))


def test_certificate_data(tmp_path):
    cluster = {"server": "https://127.0.0.1:6443", "certificate-authority-data": base64.b64encode(b"CA").decode()}
    user = {"client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}
    access = kube.load_kubeconfig(write_kubeconfig(tmp_path, user, cluster))
    assert (access.ca_data, access.cert_data, access.key_data) == ("CA", b"CERT", b"KEY")


def test_certificate_files(tmp_path):
    access = kube.load_kubeconfig(write_kubeconfig(tmp_path, {"client-certificate": "/abs/c.pem",
                                                              "client-key": "k.pem"}))
    assert access.cert_file == "/abs/c.pem" and access.key_file == str(tmp_path / "k.pem")


@pytest.mark.parametrize(("user", "cluster", "current", "words"), [
    ({"token": "t"}, None, "missing", "no context named 'missing'"),
    ({"token": "t"}, {"server": "127.0.0.1:6443"}, "main", "https://"),
    ({"auth-provider": {"name": "gcp"}}, None, "main", "auth-provider"),
    ({"exec": {"args": ["x"]}}, None, "main", "no command"),
    ({"client-key-data": "%%%"}, None, "main", "base64"),
])
def test_kubeconfig_errors_say_what(tmp_path, user, cluster, current, words):
    with pytest.raises(kube.KubeError, match=words):
        kube.load_kubeconfig(write_kubeconfig(tmp_path, user, cluster, current))


def test_exec_credential_plugin_token_and_its_expiry(tmp_path):
    """client-go's exec protocol: KUBERNETES_EXEC_INFO in, an ExecCredential out; run again once expired."""
    calls = tmp_path / "calls"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os, sys\n"
        f"open({str(calls)!r}, 'a').write(json.loads(os.environ['KUBERNETES_EXEC_INFO'])['kind'] + '\\n')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "  'status': {'token': 'tok-' + os.environ['WHO'] + sys.argv[1],\n"
        "             'expirationTimestamp': '2000-01-01T00:00:00Z'}}))\n")
    access = kube.load_kubeconfig(write_kubeconfig(tmp_path, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": [str(plugin), "-1"], "env": [{"name": "WHO", "value": "me"}]}}))
    assert access.bearer() == "tok-me-1"
    assert access.bearer() == "tok-me-1"  # expired (in 2000): run again
    assert calls.read_text().split() == ["ExecCredential", "ExecCredential"]
    failing = kube.load_kubeconfig(write_kubeconfig(tmp_path, {"exec": {"command": "/bin/false"}}))
    with pytest.raises(kube.KubeError, match="exited 1"):
        failing.bearer()


def test_no_current_context_with_two_contexts(tmp_path):
    with pytest.raises(kube.KubeError, match="current-context"):
        kube.load_kubeconfig(write_kubeconfig(tmp_path, {"token": "t"}, current=None))


def test_not_yaml(tmp_path):
    path = tmp_path / "kc"
    path.write_text("{{{: [")
    with pytest.raises(kube.KubeError, match=str(path)):
        kube.load_kubeconfig(str(path))


def test_unreadable_kubeconfig_is_code_103_naming_it():
    with pytest.raises(CniError) as info:
        kube.load_kubeconfig("/nonexistent/kc")
    assert info.value.code == 103 and "/nonexistent/kc" in info.value.msg


# --- what is taken from the pod ---------------------------------------------------------------


def pod(labels=None, notes=None, account="sa1") -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web-0", "namespace": "ns1", "labels": labels or {}, "annotations": notes or {}},
            "spec": {"serviceAccountName": account}}


def namespace(labels=None, notes=None) -> dict:
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": "ns1", "labels": labels or {}, "annotations": notes or {}}}


POOLS = "cni.projectcalico.org/ipv4pools"
ADDRS = "cni.projectcalico.org/ipAddrs"


def test_labels_pod_namespace_and_service_account():
    info = kube.pod_info(pod({"app": "web"}), namespace({"team": "a"}))
    assert info.labels == {"app": "web", "pcns.team": "a", "projectcalico.org/serviceaccount": "sa1"}


def test_ports_as_libcalico_go_writes_them():
    spec = {"containers": [
        {"name": "web", "ports": [
            {"name": "http", "containerPort": 8080},  # no protocol: TCP
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"containerPort": 9000},  # neither a name nor a hostPort: left out
            {"containerPort": 8443, "hostPort": 443, "hostIP": "10.0.0.1", "protocol": "TCP"},  # unnamed hostPort
            {"name": "x", "containerPort": 7, "protocol": "UDPLite"},  # a protocol Kubernetes does not have
            {"name": "sig", "containerPort": 5060, "protocol": "SCTP", "hostPort": 5060}]},
        {"name": "sidecar"}],
        "initContainers": [{"name": "init", "ports": [{"name": "warm", "containerPort": 81}]}]}
    assert kube.pod_ports({"spec": spec}) == [
        {"name": "http", "protocol": "TCP", "port": 8080, "hostPort": 0, "hostIP": ""},
        {"name": "dns", "protocol": "UDP", "port": 53, "hostPort": 0, "hostIP": ""},
        {"name": "", "protocol": "TCP", "port": 8443, "hostPort": 443, "hostIP": "10.0.0.1"},
        {"name": "sig", "protocol": "SCTP", "port": 5060, "hostPort": 5060, "hostIP": ""},
        {"name": "warm", "protocol": "TCP", "port": 81, "hostPort": 0, "hostIP": ""}]
    assert kube.pod_info({"spec": spec}, namespace()).ports == kube.pod_ports({"spec": spec})
    assert kube.pod_ports({"spec": {"containers": [{"name": "c"}]}}) == [] == kube.pod_ports({})


@pytest.mark.parametrize(("pod_notes", "ns_notes", "want"), [
    ({POOLS: '["p1"]'}, {POOLS: '["n1"]'}, {4: ["p1"]}),
    ({}, {POOLS: '["n1", "10.0.0.0/24"]'}, {4: ["n1", "10.0.0.0/24"]}),
    ({}, {}, {}),
    ({"cni.projectcalico.org/ipv6pools": '["fd00::/64"]'}, {POOLS: '["n1"]'}, {4: ["n1"], 6: ["fd00::/64"]}),
])
def test_pool_annotations_pod_over_namespace(pod_notes, ns_notes, want):
    assert kube.pod_info(pod(notes=pod_notes), namespace(notes=ns_notes)).pools == want


@pytest.mark.parametrize("value", ['"p1"', "[]", "[1]", "not json", '[""]'])
def test_malformed_pool_annotation_is_code_7(value):
    with pytest.raises(CniError) as info:
        kube.pod_info(pod(notes={POOLS: value}), namespace())
    assert info.value.code == 7 and POOLS in info.value.msg


def test_ip_addrs():
    assert kube.pod_info(pod(notes={ADDRS: '["10.0.0.5"]'}), namespace()).ip_addrs == ["10.0.0.5"]
    assert kube.pod_info(pod(notes={ADDRS: '["10.0.0.5", "fd00::5"]'}), namespace()).ip_addrs == [
        "10.0.0.5", "fd00::5"]


def test_ip_addrs_of_the_namespace_are_ignored():
    assert kube.pod_info(pod(), namespace(notes={ADDRS: '["10.0.0.5"]'})).ip_addrs == []


@pytest.mark.parametrize("value", ['["10.0.0.300"]', '["10.0.0.5", "10.0.0.6"]', '["10.0.0.0/24"]', "10.0.0.5"])
def test_bad_ip_addrs_is_code_7(value):
    with pytest.raises(CniError) as info:
        kube.pod_info(pod(notes={ADDRS: value}), namespace())
    assert info.value.code == 7 and ADDRS in info.value.msg


# --- apply_pod: required or optional -------------------------------------------------------------


def test_apply_pod_replaces_pools_and_addresses(monkeypatch):
    monkeypatch.setattr(kube, "read_pod", lambda *a: (pod({"app": "x"}, {POOLS: '["p1"]', ADDRS: '["10.0.0.5"]'}),
                                                      namespace()))
    conf = parse(kubernetes={"kubeconfig": "/k"}, ipam={"type": "calico-ipam", "ipv4_pools": ["cfg"]})
    new, info = kube.apply_pod(conf, POD_ARGS)
    assert new.ipam.ipv4_pools == ["p1"] and new.ipam.ip_addrs == ["10.0.0.5"] and info.labels["app"] == "x"
    assert conf.ipam.ipv4_pools == ["cfg"] and conf.ipam.ip_addrs == []  # the parsed config is untouched


def _fail(*_):
    raise kube.KubeError("cannot reach the Kubernetes API at https://127.0.0.1:1: refused")


def test_api_failure_is_code_103_with_policy_k8s(monkeypatch):
    monkeypatch.setattr(kube, "read_pod", _fail)
    with pytest.raises(CniError) as info:
        kube.apply_pod(parse(kubernetes={"kubeconfig": "/k"}, policy={"type": "k8s"}), POD_ARGS)
    assert info.value.code == 103 and "https://127.0.0.1:1" in info.value.msg


def test_api_failure_is_a_warning_without_policy(monkeypatch, caplog):
    monkeypatch.setattr(kube, "read_pod", _fail)
    conf = parse(kubernetes={"kubeconfig": "/k"})
    assert kube.apply_pod(conf, POD_ARGS) == (conf, kube.PodInfo())
    assert any(r.levelname == "WARNING" and "https://127.0.0.1:1" in r.getMessage() for r in caplog.records)


def test_ip_addrs_need_calico_ipam(monkeypatch):
    monkeypatch.setattr(kube, "read_pod", lambda *a: (pod(notes={ADDRS: '["10.0.0.5"]'}), namespace()))
    with pytest.raises(CniError) as info:
        kube.apply_pod(parse(kubernetes={"kubeconfig": "/k"}, ipam={"type": "host-local"}), POD_ARGS)
    assert info.value.code == 7
