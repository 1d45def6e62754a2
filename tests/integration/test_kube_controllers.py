"""calico-kube-controllers end to end against a real kube-apiserver (tests/kube_apiserver.py).

Two nodes (calico-node + BIRD each, CALICO_K8S_NODE_REF set as the DaemonSet sets it), namespaces
and pods created through the API, the pods networked by the plugin as the kubelet would run it
(K8S_POD_NAMESPACE / K8S_POD_NAME in CNI_ARGS, `kubernetes.kubeconfig` reaching the API through
the node's bridge), calico-kube-controllers running on the host. Then, with real pings between
pod namespaces across the two nodes: a Kubernetes NetworkPolicy is enforced as Calico converts
it, a namespace relabelled into the policy's namespaceSelector is let in, a pod relabelled out of
its podSelector is shut out, the policy deleted opens everything again; and a Kubernetes Node
deleted takes its Calico node, endpoints, addresses and block affinities with it. And with real TCP:
a pod's named container port, written into its WorkloadEndpoint by the plugin, is the one port a
Kubernetes NetworkPolicy allowing that name opens.
"""

from __future__ import annotations

import os
import subprocess

from tests.integration.cluster import Cluster
from tests.integration.test_policy import expect, serve, tcp
from tests.lab import Lab, add_pool, netconf, plugin_dir, python_path, wait_for

RES = "/calico/resources/v3/projectcalico.org"
SETTLE = 20.0  # seconds: API watch → etcd → every calico-node's rules


def start_controllers(lab: Lab, etcd, kube_apiserver, kubeconfig: str, workdir, **env: str | None
                      ) -> subprocess.Popen:
    """The real calico-kube-controllers in a network namespace of its own (it serves Prometheus
    metrics on every address, 9094 by Calico's default) reaching etcd and the API through bridges;
    `env` adds (or, with None, removes) variables. This worktree's code first on its path."""
    ns = lab.netns("kcc")
    lab.bridge_etcd(ns, etcd)
    kube_apiserver.bridge(ns)
    log = open(workdir / "kube-controllers.log", "ab")
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCD_ENDPOINTS": etcd.url, "KUBECONFIG": kubeconfig,
            "LOG_LEVEL": "debug", "CALICO_NODE_DELETION_GRACE": "2", "CALICO_NODE_CHECK_PERIOD": "1",
            **python_path(), **env}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, os.path.join(plugin_dir(), "calico-kube-controllers"),
         "--status-file", str(workdir / "status.json")],
        env={k: v for k, v in full.items() if v is not None}, stdout=log, stderr=subprocess.STDOUT)
    proc.netns = ns  # type: ignore[attr-defined]
    lab.procs.append(proc)  # the lab kills it should the test not get to
    return proc


def start_nodes(cluster: Cluster, kube_apiserver, cidr: str, tmp_path) -> str:
    """A pool, and node1 and node2 known to the API (their calico-node naming their Node), reaching it
    through their bridge, BGP established; the kubeconfig the plugin reads."""
    add_pool(cluster.etcd, "pool", cidr, 26)
    for index in (1, 2):
        name = f"node{index}"
        kube_apiserver.api().node(name)
        cluster.add_node(index, CALICO_K8S_NODE_REF=name)
        kube_apiserver.bridge(cluster.ns[name])
    cluster.wait_established()
    return kube_apiserver.kubeconfig(tmp_path / "kubeconfig")


def pod(cluster: Cluster, api, kubeconfig: str, node: str, namespace: str, name: str, labels: dict,
        ports: list[dict] | None = None) -> tuple[str, str]:
    """The pod created through the API (its container's `ports`), then ADDed by the plugin on its
    node; (netns, address)."""
    api.pod(namespace, name, node, labels, ports=ports)
    netns = cluster.pod()
    cid = f"{name}".ljust(20, "0")
    conf = netconf(cluster.etcd, name="k8s", node=node, kubernetes={"kubeconfig": kubeconfig},
                   policy={"type": "k8s"})
    run = Lab.run_plugin(cluster.ns[node], "ADD", conf, cid, Lab.netns_path(netns),
                         args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
    assert run.rc == 0, run.stdout + run.stderr[-1000:]
    address = run.out["ips"][0]["address"].split("/")[0]
    cluster.pods.append((node, netns, cid, address))
    return netns, address


def reaches(lab: Lab, src: str, dst: str, expected: bool) -> bool:
    """Within SETTLE seconds the ping's outcome becomes `expected` (and, for False, stays so twice)."""
    try:
        wait_for(lambda: lab.ping_once(src, dst, timeout=1) == expected, SETTLE, f"ping {dst} -> {expected}",
                 interval=0.3)
    except TimeoutError:
        return not expected
    return expected if expected else not lab.ping_once(src, dst, timeout=1)


POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-team-a-clients, namespace: team-a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: client}}
"""


def test_network_policy_namespace_and_pod_labels_and_node_deletion(lab, etcd, kube_apiserver, cluster, tmp_path):
    api = kube_apiserver.api()
    kubeconfig = start_nodes(cluster, kube_apiserver, "10.61.0.0/24", tmp_path)
    api.namespace("team-a", {"team": "a"})
    api.namespace("team-b", {"team": "b"})

    web, web_ip = pod(cluster, api, kubeconfig, "node1", "team-a", "web", {"app": "web"})
    a_client, _ = pod(cluster, api, kubeconfig, "node2", "team-a", "a-client", {"app": "client"})
    b_client, _ = pod(cluster, api, kubeconfig, "node2", "team-b", "b-client", {"app": "client"})
    proc = start_controllers(lab, etcd, kube_apiserver, kubeconfig, tmp_path)
    try:
        # Reconciled on start: the namespaces' and service accounts' profiles.
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/kns.team-a"), 20, "profile kns.team-a")
        assert etcd.get_json(f"{RES}/profiles/kns.team-a")["spec"]["labelsToApply"] == {
            "pcns.kubernetes.io/metadata.name": "team-a", "pcns.projectcalico.org/name": "team-a", "pcns.team": "a"}
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/ksa.team-b.default"), 20, "profile ksa.team-b.default")
        assert reaches(lab, a_client, web_ip, True) and reaches(lab, b_client, web_ip, True)

        # The Kubernetes NetworkPolicy, converted as Calico converts it, and enforced.
        api.apply_yaml(POLICY)
        key = f"{RES}/networkpolicies/team-a/knp.default.web-from-team-a-clients"
        stored = wait_for(lambda: etcd.get_json(key), 20, "the converted policy")
        assert stored["spec"] == {
            "tier": "default", "order": 1000,
            "ingress": [{"action": "Allow", "source": {
                "selector": "projectcalico.org/orchestrator == 'k8s' && app == 'client'",
                "namespaceSelector": "team == 'a'"}}],
            "selector": "projectcalico.org/orchestrator == 'k8s' && app == 'web'", "types": ["Ingress"]}
        assert reaches(lab, b_client, web_ip, False), "team-b's client must be shut out"
        assert reaches(lab, a_client, web_ip, True), "team-a's client must be let in"

        # team-b relabelled team=a: its endpoints' pcns. labels follow, and its client is let in.
        api.merge_patch("/api/v1/namespaces/team-b", {"metadata": {"labels": {"team": "a"}}})
        assert reaches(lab, b_client, web_ip, True), "a relabelled namespace must be let in"

        # a pod relabelled out of the podSelector is shut out.
        api.merge_patch("/api/v1/namespaces/team-a/pods/a-client", {"metadata": {"labels": {"app": "other"}}})
        assert reaches(lab, a_client, web_ip, False), "a relabelled pod must be shut out"
        weps = [etcd.get_json(k) for k in etcd.keys(f"{RES}/workloadendpoints/team-a/")]
        assert {w["spec"]["pod"]: w["metadata"]["labels"].get("app") for w in weps} == {"web": "web",
                                                                                        "a-client": "other"}

        # Deleting the Kubernetes NetworkPolicy deletes the Calico one: open again.
        api.delete("/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/web-from-team-a-clients")
        wait_for(lambda: etcd.get_json(key) is None, 20, "the converted policy to go")
        assert reaches(lab, a_client, web_ip, True)

        # node2 lost: its pods gone from the API, its Node deleted → Calico node, endpoints,
        # addresses and affinities released after the grace period.
        cluster.calico["node2"].stop(graceful=False)
        for name, ns in (("a-client", "team-a"), ("b-client", "team-b")):
            # Forced, as kube-controller-manager's pod GC does for a lost node's pods (no kubelet
            # would ever confirm a graceful deletion).
            api.delete(f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0")
        assert etcd.keys("/calico/ipam/v2/host/node2/")
        api.delete("/api/v1/nodes/node2")
        wait_for(lambda: etcd.get_json(f"{RES}/nodes/node2") is None, 30, "Calico node node2 to be deleted")
        assert etcd.keys("/calico/ipam/v2/host/node2/") == []
        assert [w for k in etcd.keys(f"{RES}/workloadendpoints/")
                if (w := etcd.get_json(k))["spec"]["node"] == "node2"] == []
        # calico-node wrote the reference to its Kubernetes Node (CALICO_K8S_NODE_REF), as Calico's does.
        assert etcd.get_json(f"{RES}/nodes/node1")["spec"]["orchRefs"] == [{"nodeName": "node1",
                                                                           "orchestrator": "k8s"}]

    finally:
        proc.terminate()
        proc.wait(10)
        lab.procs.remove(proc)
        print((tmp_path / "kube-controllers.log").read_text()[-4000:])


HTTP_ONLY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-only, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports: [{port: http}]
"""


def test_a_named_container_port_opened_by_a_kubernetes_network_policy(lab, etcd, kube_apiserver, cluster, tmp_path):
    api = kube_apiserver.api()
    kubeconfig = start_nodes(cluster, kube_apiserver, "10.63.0.0/24", tmp_path)
    api.namespace("shop", {})
    web, web_ip = pod(cluster, api, kubeconfig, "node1", "shop", "web", {"app": "web"},
                      ports=[{"name": "http", "containerPort": 8080}, {"containerPort": 9090}])
    plain, plain_ip = pod(cluster, api, kubeconfig, "node1", "shop", "plain", {"app": "plain"})
    client, _ = pod(cluster, api, kubeconfig, "node2", "shop", "client", {"app": "client"})
    # The plugin wrote the pod's named container port (not the unnamed one) as libcalico-go does.
    weps = {w["spec"]["pod"]: w for k in etcd.keys(f"{RES}/workloadendpoints/shop/") if (w := etcd.get_json(k))}
    assert weps["web"]["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080, "hostPort": 0,
                                             "hostIP": ""}]
    assert "ports" not in weps["plain"]["spec"]
    for server in (web, plain):
        serve(lab, server, 8080, 9090)
    checks = [(tcp, client, web_ip, 8080, 1), (tcp, client, web_ip, 9090, 1), (tcp, client, plain_ip, 8080, 1)]
    proc = start_controllers(lab, etcd, kube_apiserver, kubeconfig, tmp_path)
    try:
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/kns.shop"), 20, "profile kns.shop")
        expect(checks, [True, True, True], timeout=SETTLE)
        api.apply_yaml(HTTP_ONLY)
        key = f"{RES}/networkpolicies/shop/knp.default.http-only"
        stored = wait_for(lambda: etcd.get_json(key), 20, "the converted policy")
        assert stored["spec"]["ingress"] == [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]
        # Real TCP: the named port is open on the pod that declares it, and nothing else is.
        expect(checks, [True, False, False], timeout=SETTLE)
    finally:
        proc.terminate()
        proc.wait(10)
        lab.procs.remove(proc)
        print((tmp_path / "kube-controllers.log").read_text()[-4000:])
