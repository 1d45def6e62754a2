"""calico-kube-controllers and its KubeControllersConfiguration, end to end: the real process (in a
network namespace of its own), the real kube-apiserver, etcd, and calicoctl as the executable.

- `default` is created with Calico's defaults, byte for byte as clientv3 writes it, and its status
  written (runningConfig, environmentVars); the health status file and Prometheus' /metrics served.
- A change restarts the process in place: a controller whose section is removed stops acting, one
  added starts; reconcilerPeriod, leakGracePeriod, syncLabels and etcdV3CompactionPeriod do what
  Calico's do; an environment variable wins over the resource and is recorded in the status.
- calicoctl refuses what calico-kube-controllers would not do, naming the field.
- The controllers reach the API with an exec credential plugin's client certificate.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

from cni_calico.datastore import encode
from cni_calico.kubecontrollers.runconfig import default_spec
from tests.integration.test_kube_controllers import start_controllers
from tests.lab import add_pool, plugin_dir, sh, wait_for

RES = "/calico/resources/v3/projectcalico.org"
KCC = f"{RES}/kubecontrollersconfigurations/default"


def calicoctl(etcd, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCD_ENDPOINTS": etcd.url,
           **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})}
    return subprocess.run([os.path.join(plugin_dir(), "calicoctl"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env)


def apply(etcd, spec: dict) -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
           "metadata": {"name": "default"}, "spec": spec}
    r = calicoctl(etcd, "apply", "-f", "-", stdin=json.dumps(doc))
    assert r.returncode == 0, r.stderr


def raw_at(etcd, key: str, revision: int = 0) -> tuple[str, int]:
    """(the value's bytes as text, its create revision), at `revision` (0: now)."""
    out = json.loads(etcd.ctl("get", key, "-w", "json", *([f"--rev={revision}"] if revision else [])))
    kv = out["kvs"][0]
    return base64.b64decode(kv["value"]).decode(), int(kv["create_revision"])


def restarted(workdir, times: int) -> bool:
    text = (workdir / "kube-controllers.log").read_text(errors="replace")
    return text.count("Getting initial config snapshot") >= times + 1


def test_default_created_as_calico_writes_it_status_health_metrics_and_compaction(lab, etcd, kube_apiserver,
                                                                                    tmp_path):
    kubeconfig = kube_apiserver.kubeconfig(tmp_path / "kubeconfig")
    proc = start_controllers(lab, etcd, kube_apiserver, kubeconfig, tmp_path)
    try:
        check_default_status_health_metrics_and_compaction(etcd, proc, tmp_path)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def check_default_status_health_metrics_and_compaction(etcd, proc, tmp_path) -> None:
    stored = wait_for(lambda: (etcd.get_json(KCC) or {}).get("status"), 30, "the status of default")
    # Created as Calico's clientv3 creates it: these very bytes, at its create revision.
    _, created = raw_at(etcd, KCC)
    first, _ = raw_at(etcd, KCC, created)
    meta = json.loads(first)["metadata"]
    assert first == encode({"kind": "KubeControllersConfiguration", "apiVersion": "projectcalico.org/v3",
                            "metadata": {"name": "default", "uid": meta["uid"],
                                         "creationTimestamp": meta["creationTimestamp"]},
                            "spec": default_spec(), "status": {}})
    # The status as Calico's: what runs, and the variable set (LOG_LEVEL=debug wins over Info).
    assert stored == {"runningConfig": {
        "logSeverityScreen": "Debug", "healthChecks": "Enabled", "etcdV3CompactionPeriod": "10m0s",
        "controllers": {"node": {"reconcilerPeriod": "5m0s", "syncLabels": "Enabled",
                                 "hostEndpoint": {"autoCreate": "Disabled", "createDefaultHostEndpoint": "Enabled"},
                                 "leakGracePeriod": "15m0s"},
                        "policy": {"reconcilerPeriod": "5m0s"}, "workloadEndpoint": {"reconcilerPeriod": "5m0s"},
                        "serviceAccount": {"reconcilerPeriod": "5m0s"}, "namespace": {"reconcilerPeriod": "5m0s"}}},
        "environmentVars": {"LOG_LEVEL": "debug"}}
    # healthChecks: Calico's status file; prometheusMetricsPort 9094 (in the process' own namespace).
    status = wait_for(lambda: (tmp_path / "status.json").exists() and json.loads((tmp_path / "status.json")
                                                                                  .read_text()), 20, "status.json")
    assert status == {"Readiness": {"Startup": {"Ready": True, "Reason": ""},
                                    "CalicoDatastore": {"Ready": True, "Reason": ""},
                                    "KubeAPIServer": {"Ready": True, "Reason": ""}}}
    metrics = sh("ip", "netns", "exec", proc.netns, "python3", "-c",
                 "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9094/metrics').read()"
                 ".decode())").stdout
    assert "process_cpu_seconds_total" in metrics or "python_info" in metrics

    # etcdV3CompactionPeriod 2s: the process restarts in place and compacts etcd every 2 s, taking
    # turns through compact_rev_key (as kube-apiserver's compactor does).
    spec = default_spec()
    spec["etcdV3CompactionPeriod"] = "2s"
    apply(etcd, spec)
    wait_for(lambda: restarted(tmp_path, 1), 20, "the restart")
    assert proc.poll() is None, "restarted in place (exec), not exited"
    wait_for(lambda: (etcd.get_json(KCC) or {}).get("status", {}).get("runningConfig", {}).get(
        "etcdV3CompactionPeriod") == "2s", 20, "the new running config")
    etcd.put_json("/calico/test/mark", {"n": 1})
    _, mark = raw_at(etcd, "/calico/test/mark")

    def compacted_past_mark() -> bool:
        r = subprocess.run(["etcdctl", "--endpoints", etcd.url, "get", "/calico/test/mark", f"--rev={mark}"],
                           capture_output=True, text=True)
        return "compacted" in r.stderr

    wait_for(compacted_past_mark, 30, "etcd compacted past the mark", interval=0.5)
    assert int(etcd.ctl("get", "compact_rev_key", "--print-value-only").strip()) >= mark

    # etcdV3CompactionPeriod 0s: no more compaction.
    spec["etcdV3CompactionPeriod"] = "0s"
    apply(etcd, spec)
    wait_for(lambda: restarted(tmp_path, 2), 20, "the second restart")
    time.sleep(1)
    before = etcd.ctl("get", "compact_rev_key", "-w", "json")
    time.sleep(5)
    assert json.loads(etcd.ctl("get", "compact_rev_key", "-w", "json"))["kvs"][0]["version"] == \
        json.loads(before)["kvs"][0]["version"]
    assert "Disabling periodic etcdv3 compaction" in (tmp_path / "kube-controllers.log").read_text()

    # default deleted: created again with Calico's defaults (and, since that changes what runs, a restart).
    etcd.ctl("del", KCC)
    wait_for(lambda: (etcd.get_json(KCC) or {}).get("spec") == default_spec(), 20, "default created again")
    wait_for(lambda: restarted(tmp_path, 3), 20, "the third restart")
    assert proc.poll() is None


def test_controllers_follow_the_resource_and_the_environment_wins(lab, etcd, kube_apiserver, tmp_path):
    import yaml

    from cni_calico.datastore import Datastore, EtcdConf
    from ipam.assign import AssignArgs, auto_assign
    from ipam.store import IpamStore
    from tests.integration.test_kube_client import _exec_plugin

    api = kube_apiserver.api()
    # The controllers authenticate with an exec plugin's client certificate, valid 14 s (renewed
    # 10 s early on the next request; test_kube_client checks the renewal itself).
    plugin, runs = _exec_plugin(tmp_path, kube_apiserver.certs.directory, lifetime=14)
    kubeconfig = str(tmp_path / "kubeconfig")
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": kube_apiserver.url,
                                                 "certificate-authority": kube_apiserver.certs.ca}}],
        "users": [{"name": "lab", "user": {"exec": plugin}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
    # Only the namespace and node controllers; namespace's period 5m, which RECONCILER_PERIOD overrides.
    apply(etcd, {"etcdV3CompactionPeriod": "0s", "prometheusMetricsPort": 0, "healthChecks": "Disabled",
                 "controllers": {"namespace": {"reconcilerPeriod": "5m"},
                                 "node": {"syncLabels": "Enabled", "leakGracePeriod": "4s"}}})
    # A Kubernetes Node with labels and the Calico node that refers to it (calico-node writes orchRefs).
    api.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                 "metadata": {"name": "k8s-n1", "labels": {"zone": "a", "role": "web"}}})
    etcd.put_json(f"{RES}/nodes/n1", {"kind": "Node", "apiVersion": "projectcalico.org/v3",
                                      "metadata": {"name": "n1", "labels": {"own": "x"}},
                                      "spec": {"orchRefs": [{"nodeName": "k8s-n1", "orchestrator": "k8s"}]}})
    # An address held for a pod the API does not have: a leak.
    add_pool(etcd, "pool", "10.62.0.0/24", 26)
    ds = Datastore(EtcdConf([etcd.url]))
    (tmp_path / "run").mkdir()
    assert auto_assign(ds, AssignArgs("k8s.leaked", "n1", str(tmp_path / "run"), {"namespace": "x", "pod": "gone"}))
    api.namespace("team-a")
    api.apply_yaml("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: team-a}
spec: {podSelector: {}, policyTypes: [Ingress]}
""")
    proc = start_controllers(lab, etcd, kube_apiserver, kubeconfig, tmp_path, RECONCILER_PERIOD="2s")
    try:
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/kns.team-a"), 30, "profile kns.team-a")
        status = wait_for(lambda: (etcd.get_json(KCC) or {}).get("status"), 20, "the status")
        assert status["environmentVars"] == {"LOG_LEVEL": "debug", "RECONCILER_PERIOD": "2s"}
        assert status["runningConfig"]["controllers"] == {
            "node": {"syncLabels": "Enabled", "leakGracePeriod": "4s"}, "namespace": {"reconcilerPeriod": "2s"}}
        assert not (tmp_path / "status.json").exists(), "healthChecks Disabled: no status file"

        # reconcilerPeriod (2 s, from the environment): a profile deleted behind its back comes back.
        etcd.ctl("del", f"{RES}/profiles/kns.team-a")
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/kns.team-a"), 10, "kns.team-a written again")

        # syncLabels: the Node's labels copied, the Calico node's own kept; a change follows.
        def labels() -> dict:
            return (etcd.get_json(f"{RES}/nodes/n1") or {}).get("metadata", {}).get("labels") or {}

        wait_for(lambda: labels() == {"own": "x", "zone": "a", "role": "web"}, 20, "the node's labels")
        api.merge_patch("/api/v1/nodes/k8s-n1", {"metadata": {"labels": {"role": None, "zone": "b"}}})
        wait_for(lambda: labels() == {"own": "x", "zone": "b"}, 20, "the node's labels to follow")
        annotations = etcd.get_json(f"{RES}/nodes/n1")["metadata"]["annotations"]
        assert json.loads(annotations["projectcalico.org/kube-labels"]) == {"zone": "b"}
        # A Calico node registered after its Kubernetes Node exists gets the labels too (no Node event).
        api.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                     "metadata": {"name": "k8s-n2", "labels": {"zone": "z"}}})
        time.sleep(1)
        etcd.put_json(f"{RES}/nodes/n2", {"kind": "Node", "apiVersion": "projectcalico.org/v3",
                                          "metadata": {"name": "n2"},
                                          "spec": {"orchRefs": [{"nodeName": "k8s-n2", "orchestrator": "k8s"}]}})
        wait_for(lambda: (etcd.get_json(f"{RES}/nodes/n2") or {}).get("metadata", {}).get("labels") == {"zone": "z"},
                 10, "the late Calico node's labels")

        # leakGracePeriod 4s (collection every 2 s): the leaked address released.
        ipam = IpamStore(ds)
        wait_for(lambda: ipam.ips_by_handle("k8s.leaked") == [], 30, "the leaked address released")

        # policy has no section: its controller does not run.
        time.sleep(2)
        assert etcd.keys(f"{RES}/networkpolicies/") == []

        # The resource changed: policy added, namespace removed; the process restarts in place.
        apply(etcd, {"etcdV3CompactionPeriod": "0s", "prometheusMetricsPort": 0, "healthChecks": "Disabled",
                     "controllers": {"policy": {}, "node": {"syncLabels": "Disabled"}}})
        wait_for(lambda: restarted(tmp_path, 1), 20, "the restart")
        assert proc.poll() is None
        wait_for(lambda: etcd.get_json(f"{RES}/networkpolicies/team-a/knp.default.deny"), 30, "the policy converted")
        api.namespace("team-b")
        api.merge_patch("/api/v1/nodes/k8s-n1", {"metadata": {"labels": {"zone": "c"}}})
        time.sleep(4)
        assert etcd.get_json(f"{RES}/profiles/kns.team-b") is None, "namespace controller disabled"
        assert labels()["zone"] == "b", "syncLabels Disabled"
        status = etcd.get_json(KCC)["status"]
        assert status["runningConfig"]["controllers"] == {
            "node": {"syncLabels": "Disabled", "leakGracePeriod": "15m0s"}, "policy": {"reconcilerPeriod": "2s"}}

        # Re-enabled: the namespace controller acts again.
        apply(etcd, {"etcdV3CompactionPeriod": "0s", "prometheusMetricsPort": 0, "healthChecks": "Disabled",
                     "controllers": {"policy": {}, "namespace": {}, "node": {"syncLabels": "Disabled"}}})
        wait_for(lambda: etcd.get_json(f"{RES}/profiles/kns.team-b"), 30, "kns.team-b once re-enabled")
        assert len(runs.read_text().splitlines()) >= 3, "the exec plugin ran at each (re)start at least"
        assert "401" not in (tmp_path / "kube-controllers.log").read_text()
    finally:
        stop(proc)
        ds.close()


def test_calicoctl_refuses_what_kube_controllers_would_not_do(etcd):
    for spec, field in [
        ({"debugProfilePort": 6060}, "spec.debugProfilePort"),
        ({"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}},
         "spec.controllers.node.hostEndpoint.autoCreate"),
        ({"controllers": {"node": {"hostEndpoint": {"templates": [{"generateName": "t", "interfacePattern": "e.*"}]}}}},
         "spec.controllers.node.hostEndpoint.templates"),
        ({"controllers": {"loadBalancer": {"assignIPs": "RequestedServicesOnly"}}}, "spec.controllers.loadBalancer"),
        ({"controllers": {"migration": {"policyNameMigrator": "Disabled"}}}, "spec.controllers.migration"),
    ]:
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
               "metadata": {"name": "default"}, "spec": spec}
        r = calicoctl(etcd, "create", "-f", "-", stdin=json.dumps(doc))
        assert r.returncode == 1 and field in r.stderr and "not honoured" in r.stderr, r.stderr
    # Calico's own default (what its kube-controllers creates) is accepted as it is.
    apply(etcd, default_spec())
    assert etcd.get_json(KCC)["spec"] == default_spec()
