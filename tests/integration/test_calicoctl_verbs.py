"""calicoctl patch, label, version, get's template outputs, delete -s, datastore migrate, ipam split and
show --show-borrowed, KubeControllersConfiguration and bash completion, run as the real executable
against the session's etcd (empty at the start of each test: the `etcd` fixture)."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import yaml

from cni_calico import __version__
from tests.integration.test_calicoctl import CALICOCTL, KEY, pool_doc, run, write

RES = "/calico/resources/v3/projectcalico.org/"
INFO = RES + "clusterinformations/default"
BLOCKS = "/calico/ipam/v2/assignment/ipv4/block/"


def doc(kind: str, name: str, spec: dict, **meta) -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}


def cluster_info(etcd, ready: bool = True, version: str = "v3.32.0", cluster_type: str = "k8s,bgp") -> None:
    etcd.put_json(INFO, doc("ClusterInformation", "default", {
        "clusterGUID": "ab" * 16, "clusterType": cluster_type, "calicoVersion": version, "datastoreReady": ready}))


def pools(etcd, tmp_path, *docs: dict) -> None:
    r = run(etcd, "create", "-f", write(tmp_path, *docs))
    assert r.returncode == 0, r.stderr


# --- patch -------------------------------------------------------------------------------------------


def test_patch_merges_validates_and_keeps_identity(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16", natOutgoing=True))
    before = etcd.get_json(KEY + "pool1")
    r = run(etcd, "patch", "ippool", "pool1", "-p", '{"spec":{"disabled":true,"natOutgoing":null}}')
    assert (r.returncode, r.stdout, r.stderr) == (0, "Successfully patched 1 'IPPool' resource\n", "")
    after = etcd.get_json(KEY + "pool1")
    assert after["spec"]["disabled"] is True and "natOutgoing" not in after["spec"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]

    r = run(etcd, "patch", "ippool", "pool1", "--type", "json",
            "-p", '[{"op":"add","path":"/metadata/labels","value":{"zone":"a"}}]')
    assert r.returncode == 0, r.stderr
    assert etcd.get_json(KEY + "pool1")["metadata"]["labels"] == {"zone": "a"}


@pytest.mark.parametrize("args, message", [
    (["ippool", "pool1", "-p", '{"spec":{"blockSize":99}}'], "hit error: updating existing resource: "
                                                             "IPPool(pool1): error with field spec.blockSize = '99'"),
    (["ippool", "ghost", "-p", '{"spec":{}}'], "hit error: resource does not exist: IPPool(ghost)"),
    (["ippool", "pool1", "-p", "{not json"], "hit error: performing patch: the patch is not JSON"),
    (["ippool", "pool1", "-p", '{"kind":"Node"}'], "cannot change the kind"),
    (["ippool", "pool1", "-p", '{"metadata":{"name":"other"}}'], "cannot change metadata.name"),
    (["ippool", "pool1", "-t", "json", "-p", '[{"op":"remove","path":"/spec/nope"}]'], "does not exist"),
    (["ippool", "pool1", "-t", "bogus", "-p", "{}"], "unknown patch type 'bogus'"),
])
def test_patch_failures_name_the_problem_and_write_nothing(etcd, tmp_path, args, message):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16"))
    before = etcd.get_json(KEY + "pool1")
    r = run(etcd, "patch", *args)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""
    assert etcd.get_json(KEY + "pool1") == before


def test_patch_and_label_namespaced_resources(etcd, tmp_path):
    pools(etcd, tmp_path, doc("NetworkPolicy", "web", {"selector": "all()"}, namespace="prod"))
    key = RES + "networkpolicies/prod/web"
    r = run(etcd, "patch", "networkpolicy", "web", "-n", "prod", "-p", '{"spec":{"order":5}}')
    assert (r.returncode, r.stdout) == (0, "Successfully patched 1 'NetworkPolicy' resource\n"), r.stderr
    assert etcd.get_json(key)["spec"]["order"] == 5
    r = run(etcd, "patch", "networkpolicy", "web", "-p", '{"spec":{"order":6}}')  # namespace default: not there
    assert r.returncode == 1 and "resource does not exist: NetworkPolicy(default/web)" in r.stderr
    r = run(etcd, "label", "policy", "web", "team=a", "-n", "prod")
    assert (r.returncode, r.stdout) == (0, "Successfully set label team on policy web\n"), r.stderr
    assert etcd.get_json(key)["metadata"]["labels"]["team"] == "a"
    r = run(etcd, "get", "policy", "-A", "-o", "custom-columns=NAME,ORDER")
    assert r.stdout == "NAMESPACE   NAME   ORDER\nprod        web    5\n\n"
    r = run(etcd, "patch", "ippool", "p", "-n", "prod", "-p", "{}")
    assert r.returncode == 1 and "IPPool is not namespaced" in r.stderr


def test_patch_needs_kind_name_and_patch():
    assert run(None, "patch", "ippool").returncode == 1
    assert run(None, "patch", "ippool", "pool1").returncode == 1  # --patch is required


# --- label -------------------------------------------------------------------------------------------


def test_label_set_update_remove_with_calicos_messages(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16"))

    def label(*args: str) -> subprocess.CompletedProcess:
        return run(etcd, "label", "ippools", "pool1", *args)

    r = label("zone=a")
    assert (r.returncode, r.stdout) == (0, "Successfully set label zone on ippools pool1\n")
    r = label("zone=b")
    assert r.returncode == 1
    assert r.stderr.strip() == ("failed to update label of ippools pool1, key zone is already present. "
                                "please use '--overwrite' to set a new value")
    r = label("zone=b", "--overwrite")
    assert (r.returncode, r.stdout) == (0, "Successfully updated label zone on ippools pool1\n")
    assert etcd.get_json(KEY + "pool1")["metadata"]["labels"] == {"zone": "b"}
    r = label("zone", "--remove")
    assert (r.returncode, r.stdout) == (0, "Successfully removed label zone from ippools pool1\n")
    assert "labels" not in etcd.get_json(KEY + "pool1")["metadata"]
    r = label("zone", "--remove")
    assert (r.returncode, r.stderr.strip()) == (1, "cannot remove label of ippools pool1, key zone does not exist")
    r = label("novalue")
    assert (r.returncode, r.stderr.strip()) == (1, "invalid label novalue")
    r = label("bad key!=x")
    assert r.returncode == 1 and "invalid label name" in r.stderr
    r = run(etcd, "label", "ippools", "ghost", "a=b")
    assert (r.returncode, r.stderr.strip()) == (1, "ippools ghost not found")


def test_a_status_calico_wrote_survives_label_patch_and_replace(etcd, tmp_path):
    key = RES + "nodes/n1"
    status = {"podCIDRs": ["10.65.0.0/24"], "wireguardPublicKey": "abc="}
    etcd.put_json(key, {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "n1"},
                        "spec": {"bgp": {"ipv4Address": "192.168.0.1/24"}}, "status": status})
    assert run(etcd, "label", "node", "n1", "zone=a").returncode == 0
    assert run(etcd, "patch", "node", "n1", "-p", '{"spec":{"bgp":{"asNumber":64513}}}').returncode == 0
    shown = run(etcd, "get", "node", "n1", "-o", "yaml").stdout
    assert "wireguardPublicKey: abc=" in shown
    r = run(etcd, "replace", "-f", write(tmp_path, doc("Node", "n1", {"bgp": {"ipv4Address": "192.168.0.1/24"}})))
    assert r.returncode == 0, r.stderr
    assert etcd.get_json(key)["status"] == status
    r = run(etcd, "apply", "-f", write(tmp_path, {**pool_doc("p", "10.9.0.0/16"), "status": {}}))
    assert r.returncode == 1 and "status (unknown or malformed top-level field)" in r.stderr  # IPPool has none


# --- version -----------------------------------------------------------------------------------------


def test_version_prints_client_and_cluster(etcd):
    cluster_info(etcd)
    r = run(etcd, "version")
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr
    assert lines[0] == f"Client Version:    {__version__}"
    assert lines[1].startswith("Git commit:        ")
    assert lines[2:] == ["Cluster Version:   v3.32.0", "Cluster Type:      k8s,bgp"]
    cluster_info(etcd, version="", cluster_type="")
    assert run(etcd, "version").stdout.splitlines()[2:] == ["Cluster Version:   unknown", "Cluster Type:      unknown"]
    r = run(etcd, "version", "--client")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


def test_version_without_cluster_information_fails_after_the_client_lines(etcd):
    r = run(etcd, "version")
    assert r.returncode == 1
    assert r.stdout.startswith("Client Version:")
    assert r.stderr.startswith("unable to retrieve Cluster Version or Type: ")
    assert run(etcd, "version", "--poll", "soon").stderr.strip() == "invalid poll duration specified: soon"


# --- get -o custom-columns / go-template --------------------------------------------------------------


def test_custom_columns(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16", natOutgoing=True), pool_doc("pool2", "10.71.0.0/16"))
    r = run(etcd, "get", "ippools", "-o", "custom-columns=NAME,NAT,CIDR")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("NAME    NAT     CIDR\npool1   true    10.70.0.0/16\npool2   false   10.71.0.0/16\n\n")
    r = run(etcd, "get", "ippools", "-o", "custom-columns=NAME,COLOUR")
    assert r.returncode == 1 and r.stderr.startswith("unknown heading COLOUR, valid values are: NAME, CIDR")
    r = run(etcd, "get", "ippools", "-o", "custom-columns=")
    assert (r.returncode, r.stderr.strip()) == (1, "need to specify at least one column")


def test_go_template_over_a_list_and_named_resources(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16"), pool_doc("pool2", "10.71.0.0/16"))
    listing = '{{range .}}{{range .Items}}{{.Metadata.Name}}={{.Spec.CIDR}} {{end}}{{end}}'
    r = run(etcd, "get", "ippools", "-o", f"go-template={listing}")
    assert (r.returncode, r.stdout) == (0, "pool1=10.70.0.0/16 pool2=10.71.0.0/16 "), r.stderr
    named = "{{range .}}{{.ObjectMeta.Name}}:{{.Spec.BlockSize}}{{end}}"
    r = run(etcd, "get", "ippool", "pool2", "-o", f"go-template={named}")
    assert (r.returncode, r.stdout) == (0, "pool2:26")
    template = tmp_path / "t.tmpl"
    template.write_text('{{range .}}{{range $i, $p := .Items}}{{if $i}},{{end}}{{printf "%s" $p.Name}}{{end}}{{end}}\n')
    r = run(etcd, "get", "ippools", "-o", f"go-template-file={template}")
    assert (r.returncode, r.stdout) == (0, "pool1,pool2\n")


@pytest.mark.parametrize("output, message", [
    ("go-template={{template \"x\"}}", "{{template}} is not supported by this calicoctl"),
    ("go-template={{html .}}", 'function "html" not defined'),
    ("go-template={{range .}}", "unexpected EOF"),
    ("go-template=", "need to specify a template"),
    ("go-template-file=/nonexistent/t", "open /nonexistent/t: No such file or directory"),
    ("xml", "unrecognized output format 'xml'"),
])
def test_bad_templates_are_refused_before_the_datastore(output, message):
    r = run(None, "get", "ippools", "-o", output)  # no etcd: refused before any connection
    assert r.returncode == 1 and message in r.stderr, r.stderr


# --- validate ---------------------------------------------------------------------------------------


def test_validate_is_offline_and_names_the_field(tmp_path):
    good = write(tmp_path, pool_doc("p1", "10.70.0.0/16"), pool_doc("p2", "10.71.0.0/16"), name="good.yaml")
    r = run(None, "validate", "-f", good)  # no etcd at all
    assert (r.returncode, r.stdout) == (0, "Successfully validated 2 'IPPool' resource(s)\n")
    bad = write(tmp_path, pool_doc("p1", "10.70.0.0/16", blockSize=99), name="bad.yaml")
    r = run(None, "validate", "-f", bad)
    assert r.returncode == 1 and "spec.blockSize = '99'" in r.stderr and r.stdout == ""


# --- convert ----------------------------------------------------------------------------------------

V1 = """\
- apiVersion: v1
  kind: ipPool
  metadata: {cidr: 10.1.0.0/16}
  spec: {ipip: {enabled: true, mode: cross-subnet}, nat-outgoing: true}
- apiVersion: v1
  kind: bgpPeer
  metadata: {peerIP: 192.168.1.1, scope: node, node: Rack1/Host1}
  spec: {asNumber: 63400}
- apiVersion: v1
  kind: bgpPeer
  metadata: {peerIP: "fd00::1", scope: global}
  spec: {asNumber: 64000}
- apiVersion: v1
  kind: node
  metadata: {name: Node_1.example}
  spec: {bgp: {asNumber: 64512, ipv4Address: 10.0.0.1/24}}
"""


def test_convert_v1_to_v3_and_create_the_result(etcd, tmp_path):
    r = run(None, "convert", "-f", "-", stdin=V1)  # offline
    assert r.returncode == 0, r.stderr
    converted = yaml.safe_load(r.stdout)
    assert converted["kind"] == "List"
    names = [(i["kind"], i["metadata"]["name"]) for i in converted["items"]]
    assert names == [("IPPool", "10-1-0-0-16"), ("BGPPeer", "rack1.host1.192-168-1-1"),
                     ("BGPPeer", "fd00-0000-0000-0000-0000-0000-0000-0001"), ("Node", "node-1.example")]
    pool = converted["items"][0]["spec"]
    assert (pool["ipipMode"], pool["natOutgoing"], pool["blockSize"]) == ("CrossSubnet", True, 26)
    assert converted["items"][1]["spec"]["node"] == "rack1.host1"
    out = tmp_path / "v3.yaml"
    out.write_text(r.stdout)
    r = run(etcd, "create", "-f", str(out))
    assert (r.returncode, r.stdout) == (0, "Successfully created 4 resource(s)\n"), r.stderr
    one = run(None, "convert", "-f", "-", "-o", "json", stdin=V1.split("- apiVersion: v1\n  kind: bgpPeer")[0])
    assert json.loads(one.stdout)["kind"] == "IPPool"


V1_POLICY = """\
- apiVersion: v1
  kind: policy
  metadata: {name: Allow_DB, annotations: {owner: ops}}
  spec:
    order: 100
    selector: role == 'db' && calico/k8s_ns == 'prod'
    ingress:
    - {action: allow, protocol: tcp, source: {tag: web, net: 10.1.2.3/8}, destination: {ports: [5432]}}
    - {action: next-tier}
    egress:
    - {action: deny, protocol: icmp, icmp: {type: 8}}
- apiVersion: v1
  kind: profile
  metadata: {name: k8s_ns.prod, tags: [web], labels: {team: a}}
  spec:
    ingress: [{action: allow}]
"""


def test_convert_v1_policy_and_profile(etcd, tmp_path):
    r = run(None, "convert", "-f", "-", stdin=V1_POLICY)
    assert r.returncode == 0, r.stderr
    policy, profile = yaml.safe_load(r.stdout)["items"]
    assert (policy["kind"], policy["metadata"]["name"]) == ("GlobalNetworkPolicy", "default.allow-db-" +
                                                             hashlib.sha1(b"Allow_DB").hexdigest()[:8])
    assert policy["metadata"]["annotations"] == {"owner": "ops"}
    assert policy["spec"]["selector"] == "role == 'db' && projectcalico.org/namespace == 'prod'"
    assert policy["spec"]["ingress"] == [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.0.0.0/8"], "selector": "web == ''"},
         "destination": {"ports": [5432]}}, {"action": "Pass"}]
    assert policy["spec"]["egress"] == [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}]
    assert policy["spec"]["types"] == ["Ingress", "Egress"]
    assert (profile["metadata"]["name"], profile["spec"]["labelsToApply"]) == ("kns.prod", {"team": "a", "web": ""})
    out = tmp_path / "v3.yaml"
    out.write_text(r.stdout)
    etcd.put_json(RES + "tiers/default", doc("Tier", "default", {"order": 1000000, "defaultAction": "Deny"}))
    r = run(etcd, "create", "-f", str(out))
    assert (r.returncode, r.stdout) == (0, "Successfully created 2 resource(s)\n"), r.stderr


@pytest.mark.parametrize("document, message", [
    ("apiVersion: v1\nkind: workloadEndpoint\nmetadata: {name: p}\n",
     "failed to convert resource: conversion for the resource type 'workloadEndpoint' is not supported"),
    ("apiVersion: v1\nkind: policy\nmetadata: {name: p}\nspec: {types: [sideways]}\n",
     "invalid policy type: 'sideways'"),
    ("apiVersion: v1\nkind: profile\nmetadata: {name: p, tags: [a], labels: {a: x}}\n",
     "Tag: 'a' and Label 'a == x' have the same value"),
    ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n", "only Calico v1 resources"),
    ("apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 10.0.0.0/31}\n",
     "converted manifest resource(s) failed validation"),
    ("", "no resources specified"),
])
def test_convert_refusals(document, message):
    r = run(None, "convert", "-f", "-", stdin=document)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_convert_ignore_validation_prints_anyway():
    r = run(None, "convert", "-f", "-", "--ignore-validation", stdin="apiVersion: v1\nkind: ipPool\n"
            "metadata: {cidr: 10.0.0.0/31}\n")
    assert r.returncode == 0 and "name: 10-0-0-0-31" in r.stdout


# --- -R, --skip-empty, get --export ------------------------------------------------------------------


def test_recursive_directories_and_skip_empty(etcd, tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, pool_doc("top", "10.70.0.0/16"), name="top.yaml")
    write(tmp_path / "sub", pool_doc("deep", "10.71.0.0/16"), name="deep.yaml")
    (tmp_path / "empty.yaml").write_text("")
    r = run(etcd, "create", "-f", str(tmp_path))
    assert r.returncode == 1 and "No resources specified in file" in r.stderr
    r = run(etcd, "create", "-f", str(tmp_path), "--skip-empty")
    assert (r.returncode, r.stdout) == (0, "Successfully created 1 'IPPool' resource(s)\n"), r.stderr
    r = run(etcd, "apply", "-f", str(tmp_path), "--skip-empty", "-R")
    assert (r.returncode, r.stdout) == (0, "Successfully applied 2 'IPPool' resource(s)\n"), r.stderr
    assert sorted(k.rsplit("/", 1)[1] for k in etcd.keys(KEY)) == ["deep", "top"]
    r = run(etcd, "create", "-f", str(tmp_path / "empty.yaml"), "--skip-empty")
    assert (r.returncode, r.stdout) == (0, "No resources specified\n")


def test_get_export_strips_the_clusters_own_metadata(etcd, tmp_path):
    pools(etcd, tmp_path, doc("NetworkPolicy", "web", {"selector": "all()"}, namespace="prod"))
    shown = run(etcd, "get", "policy", "web", "-n", "prod", "-o", "yaml", "--export").stdout
    assert "uid:" not in shown and "resourceVersion" not in shown and "namespace:" not in shown
    assert "name: web" in shown
    listed = run(etcd, "get", "policy", "-n", "prod", "-o", "yaml", "--export").stdout
    assert "uid:" in listed  # a listing is never exported, as calicoctl


# --- delete -s ---------------------------------------------------------------------------------------


def test_delete_short_skip_not_exists(etcd):
    r = run(etcd, "delete", "ippool", "ghost", "-s")
    assert (r.returncode, r.stdout) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")
    assert run(etcd, "delete", "ippool", "ghost").returncode == 1


# --- KubeControllersConfiguration ----------------------------------------------------------------------


def test_kubecontrollersconfiguration_defaults_and_fields(etcd, tmp_path):
    spec = {"logSeverityScreen": "Info", "healthChecks": "Enabled", "etcdV3CompactionPeriod": "10m",
            "controllers": {"node": {"reconcilerPeriod": "5m", "syncLabels": "Enabled"},
                            "policy": {"reconcilerPeriod": "1h30m"}, "loadBalancer": {}}}
    r = run(etcd, "apply", "-f", write(tmp_path, doc("KubeControllersConfiguration", "default", spec)))
    assert r.returncode == 0, r.stderr
    stored = etcd.get_json(RES + "kubecontrollersconfigurations/default")
    assert stored["spec"] == {"logSeverityScreen": "Info", "healthChecks": "Enabled", "etcdV3CompactionPeriod": "10m0s",
                              "prometheusMetricsPort": 9094,
                              "controllers": {"node": {"reconcilerPeriod": "5m0s", "syncLabels": "Enabled",
                                                       "leakGracePeriod": "15m0s"},
                                              "policy": {"reconcilerPeriod": "1h30m0s"},
                                              "loadBalancer": {"assignIPs": "AllServices"}}}
    r = run(etcd, "get", "kubecontrollersconfigs")
    assert r.stdout == "NAME\ndefault\n\n"


@pytest.mark.parametrize("name, spec, field", [
    ("default", {"healthChecks": "On"}, "spec.healthChecks = 'On'"),
    ("default", {"logSeverityScreen": "Loud"}, "spec.logSeverityScreen = 'Loud'"),
    ("default", {"etcdV3CompactionPeriod": "often"}, "spec.etcdV3CompactionPeriod = 'often'"),
    ("default", {"prometheusMetricsPort": 70000}, "spec.prometheusMetricsPort = '70000'"),
    ("default", {"controllers": {"node": {"syncLabels": "yes"}}}, "spec.controllers.node.syncLabels = 'yes'"),
    ("default", {"controllers": {"namespace": {"reconcilerPeriod": "x"}}},
     "spec.controllers.namespace.reconcilerPeriod = 'x'"),
    ("default", {"controllers": {"serviceAccount": {"period": "5m"}}}, "spec.controllers.serviceAccount.period"),
    ("default", {"controllers": {"workloadEndpoint": {"reconcilerPeriod": 5}}},
     "spec.controllers.workloadEndpoint.reconcilerPeriod"),
    ("default", {"controllers": {"loadBalancer": {"assignIPs": "Some"}}}, "spec.controllers.loadBalancer.assignIPs"),
    ("default", {"controllers": {"cron": {}}}, "spec.controllers.cron (unknown field)"),
    ("default", {"controllers": {"node": {"hostEndpoint": {"templates": [{"generateName": "t"}]}}}},
     "InterfaceCIDRs or InterfacePattern must be specified"),
    ("default", {"colour": "blue"}, "spec.colour (unknown field)"),
    ("other", {}, "metadata.name = 'other'"),
])
def test_kubecontrollersconfiguration_invalid_fields_are_named(etcd, tmp_path, name, spec, field):
    r = run(etcd, "create", "-f", write(tmp_path, doc("KubeControllersConfiguration", name, spec)))
    assert r.returncode == 1 and field in r.stderr, r.stderr
    assert etcd.keys(RES) == []


# --- IPReservation, ClusterInformation: calicoctl's columns ------------------------------------------------


def test_ipreservation_columns_names_and_fields(etcd, tmp_path):
    cidrs = [f"10.{i}.0.0/16" for i in range(8)]
    pools(etcd, tmp_path, doc("IPReservation", "r1", {"reservedCIDRs": cidrs}))
    assert run(etcd, "get", "reservations").stdout == "NAME\nr1\n\n"
    row = run(etcd, "get", "ipreservation", "-o", "wide").stdout.splitlines()[1].split()
    assert row == ["r1", ",".join(cidrs)[:77] + "..."]  # calicoctl's joinAndTruncate at 80
    r = run(etcd, "create", "-f", write(tmp_path, doc("IPReservation", "r2", {"reservedCIDRs": ["10.0.0.0/33"]})))
    assert r.returncode == 1 and "spec.reservedCIDRs[0] = '10.0.0.0/33'" in r.stderr


@pytest.mark.parametrize("name, spec, message", [
    ("default", {"order": 5}, "spec.order = '5' (default tier order must be 1000000)"),
    ("kube-admin", {"order": 1000}, "spec.defaultAction = 'Deny' (The 'kube-admin' tier must have default action "
                                    "'Pass')"),
    ("kube-baseline", {"order": 1000, "defaultAction": "Pass"}, "kube-baseline tier order must be 10000000"),
])
def test_calicos_own_tiers_keep_their_order_and_action(etcd, tmp_path, name, spec, message):
    r = run(etcd, "apply", "-f", write(tmp_path, doc("Tier", name, spec)))
    assert r.returncode == 1 and message in r.stderr, r.stderr
    r = run(etcd, "apply", "-f", write(tmp_path, doc("Tier", "default", {"order": 1000000})))
    assert r.returncode == 0, r.stderr


def test_clusterinformation_cannot_be_patched_or_labelled(etcd):
    cluster_info(etcd)
    r = run(etcd, "patch", "clusterinfo", "default", "-p", '{"spec":{"datastoreReady":false}}')
    assert r.returncode == 1 and "operation apply or replace is not supported on ClusterInformation" in r.stderr
    r = run(etcd, "label", "clusterinfo", "default", "a=b")
    assert r.returncode == 1 and "operation apply or replace is not supported on ClusterInformation" in r.stderr
    assert etcd.get_json(INFO)["spec"]["datastoreReady"] is True


# --- datastore migrate ----------------------------------------------------------------------------------


def test_lock_unlock(etcd):
    r = run(etcd, "datastore", "migrate", "lock")
    assert (r.returncode, r.stdout) == (0, "Datastore locked.\n")
    info = etcd.get_json(INFO)
    assert info["spec"]["datastoreReady"] is False and len(info["spec"]["clusterGUID"]) == 32
    r = run(etcd, "datastore", "migrate", "unlock")
    assert (r.returncode, r.stdout) == (0, "Datastore unlocked.\n")
    assert etcd.get_json(INFO)["spec"]["datastoreReady"] is True
    assert etcd.get_json(INFO)["spec"]["clusterGUID"] == info["spec"]["clusterGUID"]


def test_export_then_import_into_an_empty_datastore(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16"),
          doc("Tier", "web", {"order": 100}), doc("NetworkPolicy", "allow", {"tier": "web", "selector": "all()"},
                                                 namespace="prod"))
    cluster_info(etcd)
    etcd.put_json(BLOCKS + "10.70.0.0-26", {"cidr": "10.70.0.0/26", "affinity": "host:n1", "allocations": [None] * 64,
                                            "unallocated": list(range(64)), "attributes": None})
    etcd.put_json("/calico/ipam/v2/host/n1/ipv4/block/10.70.0.0-26", {"state": "confirmed", "deleted": False})
    r = run(etcd, "datastore", "migrate", "export")
    assert r.returncode == 1
    assert r.stderr.strip() == ("datastore is not locked. Run the `calicoctl datastore migrate lock` command in "
                                "order to begin migration")
    assert run(etcd, "datastore", "migrate", "lock").returncode == 0
    r = run(etcd, "datastore", "migrate", "export")
    assert r.returncode == 0, r.stderr
    resources, info, ipam = r.stdout.split("===\n")
    assert "kind: IPPoolList" in resources and "uid:" not in resources and "creationTimestamp" not in resources
    assert json.loads(info)["spec"]["clusterGUID"] == "ab" * 16
    ipam = json.loads(ipam)
    assert [e["key"] for e in ipam["blocks"]] == [BLOCKS + "10.70.0.0-26"]
    before = {k: etcd.get_json(k) for k in etcd.keys("/calico/ipam")}
    export = tmp_path / "export.yaml"
    export.write_text(r.stdout)

    r = run(etcd, "datastore", "migrate", "import", "-f", str(export))  # not empty: refused
    assert r.returncode == 1 and r.stderr.startswith("datastore already has Calico resources"), r.stderr
    etcd.wipe()
    r = run(etcd, "datastore", "migrate", "import", "-f", str(export))
    assert r.returncode == 0, r.stderr
    assert "Successfully applied 3 resource(s)" in r.stdout and "Successfully applied 2 IPAM resource(s)" in r.stdout
    assert {k: etcd.get_json(k) for k in etcd.keys("/calico/ipam")} == before
    assert etcd.get_json(KEY + "pool1")["spec"]["cidr"] == "10.70.0.0/16"
    assert etcd.get_json(RES + "networkpolicies/prod/allow")["spec"]["tier"] == "web"
    info = etcd.get_json(INFO)["spec"]
    assert (info["clusterGUID"], info["datastoreReady"]) == ("ab" * 16, False)  # left locked


def test_import_refuses_a_bad_file_and_writes_nothing(etcd, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("just text\n")
    r = run(etcd, "datastore", "migrate", "import", "-f", str(bad))
    assert r.returncode == 1 and "is improperly formatted" in r.stderr
    bad.write_text(f"---\n{json.dumps(pool_doc('p', '10.0.0.0/16', blockSize=99))}\n===\n{{}}\n===\n{{}}\n")
    r = run(etcd, "datastore", "migrate", "import", "-f", str(bad))
    assert r.returncode == 1 and "spec.blockSize = '99'" in r.stderr
    assert etcd.keys("/calico") == []


# --- ipam split / show --show-borrowed ------------------------------------------------------------------


def test_ipam_split_needs_a_locked_datastore_and_a_power_of_two(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("pool1", "10.70.0.0/16", natOutgoing=True))
    cluster_info(etcd)
    r = run(etcd, "ipam", "split", "4", "--name", "pool1")
    assert (r.returncode, r.stderr.strip()) == (1, "datastore is not locked. Run the `calicoctl datastore migrate "
                                                   "lock` command in order split the IP pools")
    assert run(etcd, "datastore", "migrate", "lock").returncode == 0
    for number, message in (("3", "not a valid power of 2: 3"), ("x", "x is not a valid number"),
                            ("131072", "not large enough to be split into 131072 parts")):
        r = run(etcd, "ipam", "split", number, "--name", "pool1")
        assert r.returncode == 1 and message in r.stderr, r.stderr
    r = run(etcd, "ipam", "split", "2")
    assert "no name or CIDR provided" in r.stderr
    r = run(etcd, "ipam", "split", "2", "--name", "ghost")
    assert r.returncode == 1 and "unable to find IP pool with name ghost" in r.stderr
    assert sorted(k.rsplit("/", 1)[1] for k in etcd.keys(KEY)) == ["pool1"]

    r = run(etcd, "ipam", "split", "4", "--cidr", "10.70.0.0/16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["IP Pool pool1 was successfully split into 4 smaller pools.",
                                     "Created split-pool1-0 with CIDR 10.70.0.0/18.",
                                     "Created split-pool1-1 with CIDR 10.70.64.0/18.",
                                     "Created split-pool1-2 with CIDR 10.70.128.0/18.",
                                     "Created split-pool1-3 with CIDR 10.70.192.0/18.",
                                     "Please refer to the documentation for final steps."]
    assert sorted(k.rsplit("/", 1)[1] for k in etcd.keys(KEY)) == [f"split-pool1-{i}" for i in range(4)]
    spec = etcd.get_json(KEY + "split-pool1-2")["spec"]
    assert (spec["cidr"], spec["natOutgoing"], spec.get("disabled")) == ("10.70.128.0/18", True, None)


def test_ipam_split_refuses_pools_too_small_for_their_blocks(etcd, tmp_path):
    pools(etcd, tmp_path, pool_doc("small", "10.70.0.0/24"))
    cluster_info(etcd, ready=False)
    r = run(etcd, "ipam", "split", "8", "--name", "small")
    assert r.returncode == 1 and "split-small-0" in r.stderr and "spec.blockSize" in r.stderr
    assert [k.rsplit("/", 1)[1] for k in etcd.keys(KEY)] == ["small"]


def test_ipam_show_borrowed(etcd):
    def attrs(node: str | None, **extra) -> dict:
        secondary = {**({"node": node} if node else {}), **extra}
        return {"handle_id": f"h-{node}", "secondary": secondary or None}

    allocations = [0, 1, 2, 3] + [None] * 60
    etcd.put_json(BLOCKS + "10.70.0.0-26", {
        "cidr": "10.70.0.0/26", "affinity": "host:n1", "allocations": allocations,
        "unallocated": list(range(4, 64)),
        "attributes": [attrs("n1", pod="a", namespace="ns"), attrs("n2", pod="b", namespace="ns"),
                       attrs("n3", type="vxlanTunnelAddress"), attrs(None)]})
    r = run(etcd, "ipam", "show", "--show-borrowed")
    assert r.returncode == 0, r.stderr
    assert r.stdout == """\
+-----------+----------------+--------------+-------------+--------------------+--------------+
| IP        | BORROWING-NODE | BLOCK        | BLOCK OWNER | TYPE               | ALLOCATED-TO |
+-----------+----------------+--------------+-------------+--------------------+--------------+
| 10.70.0.1 | n2             | 10.70.0.0/26 | n1          | pod                | ns/b         |
| 10.70.0.2 | n3             | 10.70.0.0/26 | n1          | vxlanTunnelAddress |              |
+-----------+----------------+--------------+-------------+--------------------+--------------+

Note: found 1 IP allocations without an explicit node association. Unable to determine if they are borrowed.
"""


# --- completion --------------------------------------------------------------------------------------


def complete(script: str, *words: str) -> list[str]:
    array = " ".join(f"'{w}'" for w in words)
    bash = (f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _calicoctl; "
            'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "--norc", "-c", bash], capture_output=True, text=True, check=True).stdout
    return [w for w in out.splitlines() if w]


def test_bash_completion(tmp_path):
    r = subprocess.run([CALICOCTL, "completion", "bash"], capture_output=True, text=True)
    assert r.returncode == 0 and "complete -o default -F _calicoctl calicoctl" in r.stdout
    script = tmp_path / "calicoctl.bash"
    script.write_text(r.stdout)
    top = complete(script, "calicoctl", "")
    assert {"create", "apply", "replace", "delete", "get", "patch", "label", "validate", "ipam", "node", "datastore",
            "version", "completion"} <= set(top)
    assert complete(script, "calicoctl", "ipam", "") == ["check", "configure", "release", "show", "split"]
    assert complete(script, "calicoctl", "datastore", "migrate", "") == ["export", "import", "lock", "unlock"]
    assert complete(script, "calicoctl", "get", "ippo") == ["ippool", "ippools"]
    assert "kubecontrollersconfiguration" in complete(script, "calicoctl", "label", "kube")
    assert complete(script, "calicoctl", "get", "-o", "") == ["ps", "wide", "yaml", "json", "custom-columns=",
                                                              "go-template=", "go-template-file="]
    assert complete(script, "calicoctl", "get", "-n", "prod", "ippool", "") == []  # NAME: nothing to offer
    assert complete(script, "calicoctl", "delete", "--skip-n") == ["--skip-not-exists"]
    assert complete(script, "calicoctl", "ipam", "show", "--show-b") == ["--show-blocks", "--show-borrowed"]
    assert complete(script, "calicoctl", "patch", "ippool", "p1", "--type", "") == ["strategic", "merge", "json"]
    assert complete(script, "calicoctl", "convert", "-o", "") == ["yaml", "json"]
    assert complete(script, "calicoctl", "-l", "") == ["debug", "info", "warning", "error", "fatal", "panic"]
    (tmp_path / "pools.yaml").write_text("")
    assert complete(script, "calicoctl", "apply", "-f", str(tmp_path / "poo")) == [str(tmp_path / "pools.yaml")]


@pytest.mark.parametrize("command", [
    ["patch"], ["label"], ["validate"], ["convert"], ["version"], ["completion"], ["datastore"],
    ["datastore", "migrate"],
    ["datastore", "migrate", "export"], ["datastore", "migrate", "import"], ["datastore", "migrate", "lock"],
    ["datastore", "migrate", "unlock"], ["ipam", "split"],
])
def test_help_for_the_new_commands(command):
    r = run(None, *command, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: calicoctl") and "example" in r.stdout
