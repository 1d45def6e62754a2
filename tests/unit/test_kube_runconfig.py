"""calico-kube-controllers' KubeControllersConfiguration merged with the environment as Calico's
runconfig.go merges them; the node label sync; an exec plugin's client certificate (pure parts)."""

from __future__ import annotations

import json
import os

import pytest

from cni_calico.datastore import encode
from cni_calico.kube import KubeError, run_exec_plugin
from cni_calico.kubecontrollers.nodes import LABELS_ANNOTATION, synced_labels
from cni_calico.kubecontrollers.runconfig import ConfigError, default_spec, merge
from cni_calico.v3 import Resource, new_resource


def test_calicos_default_as_clientv3_writes_it():
    value = new_resource("KubeControllersConfiguration", "default", default_spec(), created="2026-01-01T00:00:00Z")
    value.metadata["uid"] = "u"
    assert encode(value.to_value()) == (
        '{"kind":"KubeControllersConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default",'
        '"uid":"u","creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"logSeverityScreen":"Info",'
        '"healthChecks":"Enabled","etcdV3CompactionPeriod":"10m0s","prometheusMetricsPort":9094,"controllers":{'
        '"node":{"reconcilerPeriod":"5m0s","syncLabels":"Enabled","hostEndpoint":{"autoCreate":"Disabled",'
        '"createDefaultHostEndpoint":"Enabled"},"leakGracePeriod":"15m0s"},"policy":{"reconcilerPeriod":"5m0s"},'
        '"workloadEndpoint":{"reconcilerPeriod":"5m0s"},"serviceAccount":{"reconcilerPeriod":"5m0s"},'
        '"namespace":{"reconcilerPeriod":"5m0s"},"loadBalancer":{"assignIPs":"AllServices"},'
        '"migration":{"policyNameMigrator":"Enabled"}}},"status":{}}')


def test_default_runs_everything_with_calicos_periods():
    run, status, refused = merge({}, default_spec())
    assert run.controllers == ("node", "policy", "workloadendpoint", "serviceaccount", "namespace")
    assert set(run.periods.values()) == {300.0}
    assert (run.log_level, run.compaction_period, run.health, run.prometheus_port, run.sync_labels,
            run.leak_grace) == ("info", 600.0, True, 9094, True, 900.0)
    assert refused == []
    assert encode(status) == (
        '{"runningConfig":{"logSeverityScreen":"Info","healthChecks":"Enabled","etcdV3CompactionPeriod":"10m0s",'
        '"controllers":{"node":{"reconcilerPeriod":"5m0s","syncLabels":"Enabled","hostEndpoint":{"autoCreate":'
        '"Disabled","createDefaultHostEndpoint":"Enabled"},"leakGracePeriod":"15m0s"},"policy":{"reconcilerPeriod":'
        '"5m0s"},"workloadEndpoint":{"reconcilerPeriod":"5m0s"},"serviceAccount":{"reconcilerPeriod":"5m0s"},'
        '"namespace":{"reconcilerPeriod":"5m0s"}}}}')


def test_an_absent_section_disables_its_controller():
    spec = {"logSeverityScreen": "Warning", "etcdV3CompactionPeriod": "0s",
            "controllers": {"policy": {"reconcilerPeriod": "30s"}, "node": {"leakGracePeriod": "1m"}}}
    run, status, _ = merge({}, spec)
    assert run.periods == {"node": 300.0, "policy": 30.0}
    assert (run.log_level, run.compaction_period, run.leak_grace, run.sync_labels) == ("warning", 0.0, 60.0, True)
    assert status["runningConfig"]["controllers"] == {
        "node": {"syncLabels": "Enabled", "leakGracePeriod": "1m0s"}, "policy": {"reconcilerPeriod": "30s"}}


def test_the_environment_wins_and_is_recorded():
    env = {"LOG_LEVEL": "debug", "ENABLED_CONTROLLERS": "node,profile", "RECONCILER_PERIOD": "1m",
           "COMPACTION_PERIOD": "0", "HEALTH_ENABLED": "false", "SYNC_NODE_LABELS": "False", "PATH": "/bin"}
    run, status, _ = merge(env, default_spec())
    assert run.periods == {"node": 300.0, "namespace": 60.0}
    assert (run.log_level, run.compaction_period, run.health, run.sync_labels) == ("debug", 0.0, False, False)
    assert status["environmentVars"] == {k: v for k, v in sorted(env.items()) if k != "PATH"}
    running = status["runningConfig"]
    assert (running["logSeverityScreen"], running["healthChecks"], running["etcdV3CompactionPeriod"]) == (
        "Debug", "Disabled", "0s")
    assert running["controllers"]["namespace"] == {"reconcilerPeriod": "1m0s"}
    assert running["controllers"]["node"]["syncLabels"] == "Disabled"


@pytest.mark.parametrize("name, value", [("LOG_LEVEL", "loud"), ("ENABLED_CONTROLLERS", "node,cron"),
                                         ("ENABLED_CONTROLLERS", "loadbalancer"), ("COMPACTION_PERIOD", "often"),
                                         ("RECONCILER_PERIOD", "5"), ("HEALTH_ENABLED", "yes"),
                                         ("SYNC_NODE_LABELS", "on"), ("AUTO_HOST_ENDPOINTS", "enabled"),
                                         ("AUTO_HOST_ENDPOINTS", "maybe")])
def test_a_bad_variable_is_refused_by_name(name, value):
    with pytest.raises(ConfigError, match=name):
        merge({name: value}, default_spec())


def test_what_is_not_done_is_reported_and_shown_off():
    spec = default_spec()
    spec["controllers"]["node"]["hostEndpoint"]["autoCreate"] = "Enabled"
    spec["debugProfilePort"] = 6060
    _, status, refused = merge({}, spec)
    assert status["runningConfig"]["controllers"]["node"]["hostEndpoint"]["autoCreate"] == "Disabled"
    assert [r.split(" ")[0] for r in refused] == ["controllers.node.hostEndpoint.autoCreate", "debugProfilePort"]


def node(labels: dict, annotations: dict | None = None) -> dict:
    return Resource("Node", {"name": "n1", "labels": labels, "annotations": annotations or {}},
                    {"orchRefs": [{"orchestrator": "k8s", "nodeName": "k1"}]}).to_value()


def test_node_labels_synced_as_calico_does():
    first = synced_labels(node({"mine": "x"}), {"zone": "a", "role": "web"})
    assert first["metadata"]["labels"] == {"mine": "x", "role": "web", "zone": "a"}
    assert json.loads(first["metadata"]["annotations"][LABELS_ANNOTATION]) == {"role": "web", "zone": "a"}
    assert synced_labels(first, {"zone": "a", "role": "web"}) is None  # nothing to do
    second = synced_labels(first, {"zone": "b"})  # role removed in Kubernetes, zone changed; mine kept
    assert second["metadata"]["labels"] == {"mine": "x", "zone": "b"}


def plugin(tmp_path, status: dict) -> dict:
    script = tmp_path / "plugin"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + json.dumps(
        {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}) + "\nEOF\n")
    os.chmod(script, 0o755)
    return {"command": str(script), "apiVersion": "client.authentication.k8s.io/v1"}


def test_exec_plugin_client_certificate(tmp_path):
    cred = run_exec_plugin(plugin(tmp_path, {"clientCertificateData": "CERT", "clientKeyData": "KEY",
                                             "expirationTimestamp": "2030-01-01T00:00:00Z"}))
    assert (cred.token, cred.cert, cred.key, cred.expiry) == ("", b"CERT", b"KEY", 1893456000.0)
    with pytest.raises(KubeError, match="clientCertificateData and clientKeyData must both"):
        run_exec_plugin(plugin(tmp_path, {"clientCertificateData": "CERT"}))
    with pytest.raises(KubeError, match="neither a token nor a client certificate"):
        run_exec_plugin(plugin(tmp_path, {}))


def test_settings_create_once_and_write_status_only_when_it_differs():
    from cni_calico.kubecontrollers import settings
    from tests.memstore import MemStore

    store = MemStore()
    run, kv = settings.load(store, {"LOG_LEVEL": "warn"})
    assert run.log_level == "warning" and kv.value["spec"] == default_spec()
    assert kv.value["status"]["environmentVars"] == {"LOG_LEVEL": "warn"}
    assert list(kv.value) == ["kind", "apiVersion", "metadata", "spec", "status"]
    revision = store.revision()
    again, kv2 = settings.load(store, {"LOG_LEVEL": "warn"})  # a restart: nothing to write
    assert again == run and store.revision() == revision and kv2.value == kv.value
    # An operator's value is never replaced by the defaults.
    store.put(settings.KEY, {**kv.value, "spec": {"controllers": {"policy": {}}}})
    run, _ = settings.load(store, {})
    assert run.controllers == ("policy",)


@pytest.mark.parametrize("name, says", [("CALICO_IPAM_GC_PERIOD", "leakGracePeriod"),
                                        ("CALICO_LABELS_RESYNC_PERIOD", "workloadEndpoint.reconcilerPeriod"),
                                        ("LOG_LEVEL", "LOG_LEVEL")])
def test_start_refuses_replaced_and_bad_variables(name, says):
    from cni_calico.kubecontrollers.config import from_env

    with pytest.raises(ConfigError, match=says):
        from_env({"ETCD_ENDPOINTS": "http://127.0.0.1:2379", name: "loud"})
    assert from_env({"ETCD_ENDPOINTS": "http://127.0.0.1:2379"}).node_grace == 60.0


def test_follow_rereads_when_its_watch_cannot_resume():
    """A watch that cannot start from where it was (the revision compacted) re-reads the resource:
    a change made meanwhile is not missed."""
    import threading

    from cni_calico.datastore import Compacted
    from cni_calico.kubecontrollers import settings
    from tests.memstore import MemStore

    class Store(MemStore):
        def watch(self, prefixes, start_revision):
            raise Compacted("compacted", 99)

    store = Store()
    run, kv = settings.load(store, {})
    store.put(settings.KEY, {**kv.value, "spec": {"controllers": {"policy": {}}}})
    seen: list = []
    stop = threading.Event()
    settings.follow(store, {}, run, kv.mod_revision, seen.append, stop)
    assert [r.controllers for r in seen] == [("policy",)]
