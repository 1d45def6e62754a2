"""The pure parts of calicoctl's newer verbs: go-template subset, merge and JSON patches, CIDR
splitting, Go durations, the KubeControllersConfiguration checks and the completion script's data."""

from __future__ import annotations

import pytest

from cni_calico.ctl import CommandError
from cni_calico.ctl.ipam_split import split_cidr
from cni_calico.ctl.kinds.kubecontrollers import KUBECONTROLLERSCONFIGURATION
from cni_calico.ctl.patch import PatchError, json_patch, merge_patch
from cni_calico.ctl.templates import TemplateError, execute
from cni_calico.resources import Resource, ValidationError, validate
from cni_calico.v3 import go_duration

POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "p1", "labels": {"b": "2", "a": "1"}},
        "spec": {"cidr": "10.0.0.0/16", "ipipMode": "Never", "blockSize": 26, "allowedUses": ["Workload", "Tunnel"]}}
LIST = [{"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "metadata": {}, "items": [POOL]}]


@pytest.mark.parametrize("template, out", [
    ("{{range .}}{{range .Items}}{{.Metadata.Name}}{{end}}{{end}}", "p1"),
    ("{{range .}}{{range .Items}}{{.ObjectMeta.Name}} {{.Name}} {{.Spec.CIDR}}{{end}}{{end}}", "p1 p1 10.0.0.0/16"),
    ("{{range .}}{{range .Items}}{{.Spec.IPIPMode}}/{{.Spec.VXLANMode}}/{{end}}{{end}}", "Never//"),
    ("{{range .}}{{range .Items}}{{join .Spec.AllowedUses \",\"}} {{join .Labels \";\"}}{{end}}{{end}}",
     "Workload,Tunnel a=1;b=2"),
    ("{{range .}}{{range .Items}}{{joinAndTruncate .Labels \",\" 5}}{{end}}{{end}}", "a=..."),
    ("{{range $k, $v := (index . 0).Items}}{{$k}}={{$v.Kind}}{{end}}", "0=IPPool"),
    ("{{with index . 0}}{{len .Items}}{{end}}", "1"),
    ("{{range .}}{{range .Items}}{{.Labels}}{{end}}{{end}}", "map[a:1 b:2]"),
    ("{{range .}}{{range .Items}}{{.Spec.AllowedUses}}{{end}}{{end}}", "[Workload Tunnel]"),
    ('{{printf "%-4s|%3d|%v|%q" "ab" 7 true "x"}}', 'ab  |  7|true|"x"'),
    ("{{if eq 1 2}}a{{else if ne 1 1}}b{{else}}c{{end}}", "c"),
    ("{{range .Missing}}x{{else}}none{{end}}", "none"),
    ("a  {{- 1 -}}  b", "a1b"),
    ("{{/* a comment */}}{{$x := 2}}{{$x = 3}}{{$x}}", "3"),
    ("{{and 1 0}}{{or 0 \"y\"}}{{not false}}", "0ytrue"),
    ("{{(index . 0).Kind | printf \"<%s>\"}}", "<IPPoolList>"),
    ('{{`raw "x"`}}', 'raw "x"'),
])
def test_template_subset(template, out):
    assert execute(template, LIST) == out


@pytest.mark.parametrize("template, message", [
    ('{{define "x"}}{{end}}', "{{define}} is not supported"),
    ("{{template \"x\"}}", "{{template}} is not supported"),
    ("{{html .}}", 'function "html" not defined'),
    ("{{if 1}}", "has no {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{else}}", "unexpected {{else}}"),
    ("{{.Items", "unclosed action"),
    ("{{$y}}", "undefined variable: $y"),
    ("{{$y = 1}}", "undefined variable: $y"),
    ("{{range 3}}{{end}}", "range can't iterate over 3"),
    ("{{index . 9}}", "error calling index"),
    ("{{(1}}", "unclosed left paren"),
    ("{{. 1}}", "can't give argument to non-function"),
])
def test_template_errors(template, message):
    with pytest.raises(TemplateError, match="^template: get:") as exc:
        execute(template, LIST)
    assert message in str(exc.value)


def test_merge_patch_is_rfc_7386():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "x": None}) == {"a": {"c": 2, "d": 3}, "l": [3]}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "x": 1}  # not changed in place


def test_json_patch_operations():
    doc = {"spec": {"a": 1, "list": [1, 2]}}
    ops = [{"op": "add", "path": "/spec/b", "value": 2}, {"op": "replace", "path": "/spec/a", "value": 9},
           {"op": "add", "path": "/spec/list/-", "value": 3}, {"op": "remove", "path": "/spec/list/0"},
           {"op": "copy", "from": "/spec/b", "path": "/spec/c"}, {"op": "move", "from": "/spec/c", "path": "/spec/d"},
           {"op": "test", "path": "/spec/d", "value": 2}]
    assert json_patch(doc, ops) == {"spec": {"a": 9, "b": 2, "list": [2, 3], "d": 2}}
    for bad in ({"op": "remove", "path": "/spec/zz"}, {"op": "test", "path": "/spec/a", "value": 2},
                {"op": "frob", "path": "/spec"}, {"op": "add", "path": "spec"}, {"op": "add", "path": "/spec/x"}):
        with pytest.raises(PatchError):
            json_patch(doc, [bad])
    with pytest.raises(PatchError):
        json_patch(doc, {"op": "add"})


def test_split_cidr():
    assert split_cidr("10.0.0.0/16", 4) == ["10.0.0.0/18", "10.0.64.0/18", "10.0.128.0/18", "10.0.192.0/18"]
    assert split_cidr("fd00::/120", 2) == ["fd00::/121", "fd00::80/121"]
    for parts in (0, 1, 3, 6):
        with pytest.raises(CommandError, match="not a valid power of 2"):
            split_cidr("10.0.0.0/16", parts)
    with pytest.raises(CommandError, match="not large enough"):
        split_cidr("10.0.0.0/31", 4)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (900, "15m0s"), (90, "1m30s"), (3600, "1h0m0s"),
                                           (5400.5, "1h30m0.5s"), (0.5, "500ms"), (1.5, "1.5s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text


def test_kubecontrollers_host_endpoint_templates():
    spec = {"controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled", "templates": [
        {"generateName": "web", "interfaceCIDRs": ["10.0.0.0/8"], "labels": {"a": "b"}},
        {"generateName": "web", "interfacePattern": "eth["},
    ]}}}}
    res = Resource(KUBECONTROLLERSCONFIGURATION, {"name": "default"}, spec)
    with pytest.raises(ValidationError) as exc:
        validate(res)
    text = str(exc.value)
    assert "spec.controllers.node.hostEndpoint.templates[1].generateName = 'web' (Template name must be unique)" in text
    assert "spec.controllers.node.hostEndpoint.templates[1].interfacePattern" in text
    assert spec["controllers"]["node"]["hostEndpoint"]["templates"][0]["nodeSelector"] == "all()"


def test_git_commit_comes_from_the_bundle(monkeypatch):
    import sys
    import types

    from cni_calico.ctl.version_cmd import git_commit

    monkeypatch.setitem(sys.modules, "_cni_calico_build", None)  # not a bundle
    assert git_commit() == "unknown"
    monkeypatch.setitem(sys.modules, "_cni_calico_build", types.SimpleNamespace(BUILD="x", GIT_COMMIT="95bf897"))
    assert git_commit() == "95bf897"


def test_kubecontrollers_stored_as_go_writes_it():
    """Go's field order, `controllers` always (not omitempty), `status: {}` (a struct)."""
    from cni_calico.datastore import encode

    res = Resource(KUBECONTROLLERSCONFIGURATION, {"name": "default"},
                   {"controllers": {"policy": {"reconcilerPeriod": "5m"}}, "healthChecks": "Enabled",
                    "logSeverityScreen": "Info", "etcdV3CompactionPeriod": "10m"})
    validate(res)
    assert encode(res.to_stored()) == (
        '{"kind":"KubeControllersConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},'
        '"spec":{"logSeverityScreen":"Info","healthChecks":"Enabled","etcdV3CompactionPeriod":"10m0s",'
        '"prometheusMetricsPort":9094,"controllers":{"policy":{"reconcilerPeriod":"5m0s"}}},"status":{}}')
