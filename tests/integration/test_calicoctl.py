"""calicoctl for IPPool resources, run as the real executable against the session's etcd.

No namespaces: calicoctl runs in the machine's own namespace and etcd is on
127.0.0.1. Every test starts from an empty /calico (the `etcd` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from cni_calico import __version__
from tests.lab import add_pool, free_port, plugin_dir

KEY = "/calico/resources/v3/projectcalico.org/ippools/"
CALICOCTL = os.path.join(plugin_dir(), "calicoctl")


def run(etcd, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCD_ENDPOINTS": etcd.url if etcd else ""}
    return subprocess.run(
        [CALICOCTL, *args], input=stdin, capture_output=True, text=True, timeout=60, env={**base, **(env or {})}
    )


def pool_doc(name: str, cidr: str, **spec) -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, **spec}}


def write(tmp_path, *docs: dict, name: str = "pools.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(path)


def mod_revision(etcd, key: str) -> int:
    return json.loads(etcd.ctl("get", key, "-w", "json"))["kvs"][0]["mod_revision"]


def pool_keys(etcd) -> list[str]:
    return etcd.keys(KEY)


# --- the happy paths -------------------------------------------------------------------------


def test_create_fills_defaults_and_get_delete_round_trip(etcd, tmp_path):
    path = write(tmp_path, pool_doc("pool1", "10.70.0.0/16"))
    r = run(etcd, "create", "-f", path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "Successfully created 1 'IPPool' resource(s)\n", "")
    stored = etcd.get_json(KEY + "pool1")
    assert stored["kind"] == "IPPool" and stored["apiVersion"] == "projectcalico.org/v3"
    # Calico's clientv3 defaults, in Go's field order, false left out (omitempty)
    assert list(stored["spec"].items()) == [("cidr", "10.70.0.0/16"), ("vxlanMode", "Never"), ("ipipMode", "Never"),
                                            ("blockSize", 26), ("nodeSelector", "all()"),
                                            ("allowedUses", ["Workload", "Tunnel"]), ("assignmentMode", "Automatic")]
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"].endswith("Z")
    assert "resourceVersion" not in stored["metadata"]

    r = run(etcd, "get", "ippool")
    assert r.returncode == 0
    assert r.stdout == "NAME    CIDR           SELECTOR\npool1   10.70.0.0/16   all()\n\n"

    r = run(etcd, "delete", "ippool", "pool1")
    assert (r.returncode, r.stdout) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")
    assert pool_keys(etcd) == []


def test_ipv6_pool_defaults_to_block_122(etcd, tmp_path):
    r = run(etcd, "create", "-f", write(tmp_path, pool_doc("v6", "fd00:70:0::/64")))
    assert r.returncode == 0, r.stderr
    spec = etcd.get_json(KEY + "v6")["spec"]
    assert (spec["cidr"], spec["blockSize"]) == ("fd00:70::/64", 122)


def test_get_output_formats(etcd, tmp_path):
    path = write(tmp_path, pool_doc("pool-a", "10.71.0.0/24", natOutgoing=True),
                 pool_doc("pool-b", "10.72.0.0/16", blockSize=28, vxlanMode="CrossSubnet", nodeSelector="zone == 'a'"))
    assert run(etcd, "create", "-f", path).stdout == "Successfully created 2 'IPPool' resource(s)\n"

    wide = run(etcd, "get", "ippools", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT",
                               "SELECTOR", "ASSIGNMENTMODE"]
    assert wide[1].split() == ["pool-a", "10.71.0.0/24", "true", "Never", "Never", "false", "false", "all()",
                               "Automatic"]
    assert wide[2].split()[:7] == ["pool-b", "10.72.0.0/16", "false", "Never", "CrossSubnet", "false", "false"]
    assert wide[2].endswith("zone == 'a'   Automatic")
    assert wide[1].index("10.71") == wide[0].index("CIDR") == wide[2].index("10.72")

    one = yaml.safe_load(run(etcd, "get", "ippool", "pool-b", "-o", "yaml").stdout)
    assert list(one) == ["apiVersion", "kind", "metadata", "spec"]
    assert one["metadata"]["resourceVersion"] == str(mod_revision(etcd, KEY + "pool-b"))
    assert one["spec"]["blockSize"] == 28 and one["spec"]["vxlanMode"] == "CrossSubnet"

    listed = yaml.safe_load(run(etcd, "get", "ippools", "-o", "yaml").stdout)
    assert listed["kind"] == "IPPoolList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["pool-a", "pool-b"]

    as_json = json.loads(run(etcd, "get", "ippool", "pool-a", "-o", "json").stdout)
    assert list(as_json) == ["apiVersion", "kind", "metadata", "spec"]
    assert as_json["spec"]["natOutgoing"] is True

    several = json.loads(run(etcd, "get", "ippool", "pool-a", "pool-b", "-o", "json").stdout)
    assert several["kind"] == "List" and len(several["items"]) == 2


@pytest.mark.parametrize("kind", ["ippool", "ippools", "pool", "IPPool", "IPPOOLS", "ipp"])
def test_kind_names_are_case_insensitive_aliases(etcd, kind):
    add_pool(etcd, "pool1", "10.73.0.0/24")
    r = run(etcd, "get", kind, "pool1", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metadata"]["name"] == "pool1"


def test_unknown_kind_is_refused(etcd):
    r = run(etcd, "get", "widgets")
    assert r.returncode == 1 and r.stderr == "resource type 'widgets' is not supported\n"


def test_multi_document_file_and_list(etcd, tmp_path):
    multi = write(tmp_path, pool_doc("m1", "10.74.0.0/24"), pool_doc("m2", "10.74.1.0/24"), name="multi.yaml")
    r = run(etcd, "create", "-f", multi)
    assert (r.returncode, r.stdout) == (0, "Successfully created 2 'IPPool' resource(s)\n")
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [pool_doc("l1", "10.75.0.0/24"), pool_doc("l2", "10.75.1.0/24"),
                         pool_doc("m1", "10.74.0.0/24")]}
    r = run(etcd, "apply", "-f", write(tmp_path, listing, name="list.yaml"))
    assert (r.returncode, r.stdout) == (0, "Successfully applied 3 'IPPool' resource(s)\n")
    assert sorted(k.rsplit("/", 1)[1] for k in pool_keys(etcd)) == ["l1", "l2", "m1", "m2"]


def test_json_from_stdin(etcd):
    r = run(etcd, "create", "-f", "-", stdin=json.dumps(pool_doc("j1", "10.76.0.0/24", blockSize=28)))
    assert r.returncode == 0, r.stderr
    assert etcd.get_json(KEY + "j1")["spec"]["blockSize"] == 28


def test_get_output_reads_back_as_input(etcd, tmp_path):
    add_pool(etcd, "pool1", "10.77.0.0/24")
    dumped = run(etcd, "get", "ippools", "-o", "yaml").stdout
    assert run(etcd, "delete", "ippool", "pool1").returncode == 0
    r = run(etcd, "create", "-f", "-", stdin=dumped)
    assert (r.returncode, r.stdout) == (0, "Successfully created 1 'IPPool' resource(s)\n")
    assert etcd.get_json(KEY + "pool1")["spec"]["cidr"] == "10.77.0.0/24"


# --- create / apply / replace / delete semantics ----------------------------------------------


def test_create_existing_fails_unless_skip_exists(etcd, tmp_path):
    path = write(tmp_path, pool_doc("pool1", "10.78.0.0/24"))
    assert run(etcd, "create", "-f", path).returncode == 0
    before = etcd.get_json(KEY + "pool1")
    r = run(etcd, "create", "-f", path)
    assert r.returncode == 1
    assert r.stderr == "Failed to create 'IPPool' resource: [resource already exists: IPPool(pool1)]\n"
    assert etcd.get_json(KEY + "pool1") == before
    r = run(etcd, "create", "-f", path, "--skip-exists")
    assert (r.returncode, r.stdout) == (0, "Successfully created 1 'IPPool' resource(s)\n")


def test_partial_failure_reports_the_failed_resource_and_the_count(etcd, tmp_path):
    add_pool(etcd, "old", "10.79.0.0/24")
    path = write(tmp_path, pool_doc("old", "10.79.0.0/24"), pool_doc("new", "10.79.1.0/24"))
    r = run(etcd, "create", "-f", path)
    assert r.returncode == 1
    assert r.stdout == "Partial success: created 1 out of 2 'IPPool' resource(s)\n"
    assert "Failed to create 'IPPool' resource: [resource already exists: IPPool(old)]" in r.stderr
    assert etcd.get_json(KEY + "new") is not None


def test_apply_creates_then_updates_keeping_identity(etcd, tmp_path):
    r = run(etcd, "apply", "-f", write(tmp_path, pool_doc("pool1", "10.80.0.0/24")))
    assert (r.returncode, r.stdout) == (0, "Successfully applied 1 'IPPool' resource(s)\n")
    created = etcd.get_json(KEY + "pool1")
    r = run(etcd, "apply", "-f", write(tmp_path, pool_doc("pool1", "10.80.0.0/24", natOutgoing=True, disabled=True)))
    assert r.returncode == 0, r.stderr
    updated = etcd.get_json(KEY + "pool1")
    assert updated["spec"]["natOutgoing"] is True and updated["spec"]["disabled"] is True
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]


def test_replace_with_current_version_then_stale_version(etcd, tmp_path):
    add_pool(etcd, "pool1", "10.81.0.0/24")
    current = yaml.safe_load(run(etcd, "get", "ippool", "pool1", "-o", "yaml").stdout)
    current["spec"]["natOutgoing"] = True
    r = run(etcd, "replace", "-f", write(tmp_path, current))
    assert (r.returncode, r.stdout) == (0, "Successfully replaced 1 'IPPool' resource(s)\n")
    assert etcd.get_json(KEY + "pool1")["spec"]["natOutgoing"] is True

    stale = dict(current, spec={**current["spec"], "disabled": True})  # still carries the old resourceVersion
    latest = mod_revision(etcd, KEY + "pool1")
    r = run(etcd, "replace", "-f", write(tmp_path, stale))
    assert r.returncode == 1
    assert "update conflict: IPPool(pool1)" in r.stderr
    assert f"'{current['metadata']['resourceVersion']}' is out of date (latest: {latest})" in r.stderr
    assert "disabled" not in etcd.get_json(KEY + "pool1")["spec"]  # false: left out, as Go does
    assert mod_revision(etcd, KEY + "pool1") == latest


def test_replace_missing_fails(etcd, tmp_path):
    r = run(etcd, "replace", "-f", write(tmp_path, pool_doc("nope", "10.82.0.0/24")))
    assert r.returncode == 1
    assert r.stderr == "Failed to replace 'IPPool' resource: [resource does not exist: IPPool(nope)]\n"
    assert pool_keys(etcd) == []


def test_delete_missing_fails_unless_skip_not_exists(etcd, tmp_path):
    r = run(etcd, "delete", "ippool", "ghost")
    assert r.returncode == 1
    assert r.stderr == "Failed to delete 'IPPool' resource: [resource does not exist: IPPool(ghost)]\n"
    r = run(etcd, "delete", "pool", "ghost", "--skip-not-exists")
    assert (r.returncode, r.stdout) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")
    add_pool(etcd, "p1", "10.83.0.0/24")
    r = run(etcd, "delete", "-f", write(tmp_path, pool_doc("p1", "10.83.0.0/24")))
    assert (r.returncode, r.stdout) == (0, "Successfully deleted 1 'IPPool' resource(s)\n")
    assert pool_keys(etcd) == []


def test_get_missing_name_fails(etcd):
    add_pool(etcd, "here", "10.84.0.0/24")
    r = run(etcd, "get", "ippool", "here", "gone", "-o", "yaml")
    assert r.returncode == 1
    assert r.stderr == "resource does not exist: IPPool(gone)\n"
    assert yaml.safe_load(r.stdout)["metadata"]["name"] == "here"


def test_pools_written_by_others_show_calico_defaults(etcd):
    etcd.put_json(KEY + "bare", {"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                                 "metadata": {"name": "bare"}, "spec": {"cidr": "10.85.0.0/24"}})
    spec = yaml.safe_load(run(etcd, "get", "ippool", "bare", "-o", "yaml").stdout)["spec"]
    assert (spec["blockSize"], spec["ipipMode"], spec["vxlanMode"], spec["nodeSelector"]) == (26, "Never", "Never",
                                                                                              "all()")


# --- validation: the field is named and nothing is written -------------------------------------

INVALID = [
    ({"metadata": {"name": "Pool_1"}}, "metadata.name = 'Pool_1'", "RFC 1123"),
    ({"metadata": {}}, "metadata.name", "may not be empty"),
    ({"spec": {"cidr": "10.86.0.1/24"}}, "spec.cidr = '10.86.0.1/24'",
     "not strictly masked: did you mean 10.86.0.0/24"),
    ({"spec": {"cidr": "10.86.0.0/33"}}, "spec.cidr = '10.86.0.0/33'", "valid subnet"),
    ({"spec": {"cidr": "banana"}}, "spec.cidr = 'banana'", "valid subnet"),
    ({"spec": {"blockSize": 26}}, "spec.cidr", "must be specified"),
    ({"spec": {"cidr": "10.86.0.0/16", "blockSize": 19}}, "spec.blockSize = '19'", "between 20 and 32"),
    ({"spec": {"cidr": "10.86.0.0/16", "blockSize": 33}}, "spec.blockSize = '33'", "between 20 and 32"),
    ({"spec": {"cidr": "fd00:86::/64", "blockSize": 115}}, "spec.blockSize = '115'", "between 116 and 128"),
    ({"spec": {"cidr": "10.86.0.0/28", "blockSize": 26}}, "spec.blockSize = '26'", "does not fit in the /28 pool"),
    ({"spec": {"cidr": "10.86.0.0/16", "ipipMode": "Sometimes"}}, "spec.ipipMode = 'Sometimes'", "one of Always"),
    ({"spec": {"cidr": "10.86.0.0/16", "vxlanMode": "always"}}, "spec.vxlanMode = 'always'", "one of Always"),
    ({"spec": {"cidr": "10.86.0.0/16", "ipipMode": "Always", "vxlanMode": "CrossSubnet"}},
     "spec.vxlanMode = 'CrossSubnet'", "cannot enable both VXLAN and IPIP"),
    ({"spec": {"cidr": "fd00:86::/64", "ipipMode": "Always"}}, "spec.ipipMode = 'Always'", "not supported on an IPv6"),
    ({"spec": {"cidr": "10.86.0.0/16", "natOutgoing": "yes please"}}, "spec.natOutgoing = 'yes please'",
     "true or false"),
    ({"spec": {"cidr": "10.86.0.0/16", "ipip": {"enabled": True}}}, "spec.ipip", "unknown field"),
    ({"spec": {"cidr": "169.254.0.0/16"}}, "spec.cidr = '169.254.0.0/16'", "link local"),
]


@pytest.mark.parametrize(("change", "field", "reason"), INVALID, ids=[c[1].split(" ")[0] + "-" + c[2][:12]
                                                                     for c in INVALID])
def test_validation_names_resource_and_field_and_writes_nothing(etcd, tmp_path, change, field, reason):
    doc = pool_doc("pool1", "10.86.0.0/16")
    doc["metadata"] = change.get("metadata", doc["metadata"])
    doc["spec"] = change.get("spec", doc["spec"])
    for command in ("create", "apply"):
        r = run(etcd, command, "-f", write(tmp_path, doc))
        assert r.returncode == 1
        assert r.stderr.startswith(f"Failed to {command} 'IPPool' resource: [IPPool(")
        assert field in r.stderr and reason in r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert pool_keys(etcd) == []


def test_one_invalid_document_stops_the_whole_file(etcd, tmp_path):
    path = write(tmp_path, pool_doc("good", "10.87.0.0/24"), pool_doc("bad", "10.87.1.0/24", blockSize=8))
    r = run(etcd, "create", "-f", path)
    assert r.returncode == 1
    assert "IPPool(bad): error with field spec.blockSize = '8'" in r.stderr
    assert "Nothing was created: 1 of 2 resources are invalid" in r.stderr
    assert pool_keys(etcd) == []


def test_unreadable_documents_are_one_line_errors(etcd, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: IPPool\nmetadata: [unclosed\n")
    r = run(etcd, "create", "-f", str(broken))
    assert r.returncode == 1 and r.stderr.startswith("cannot parse ") and r.stderr.count("\n") == 1
    wrong = write(tmp_path, {**pool_doc("p", "10.88.0.0/24"), "apiVersion": "projectcalico.org/v1"})
    r = run(etcd, "create", "-f", wrong)
    assert r.returncode == 1 and "unknown resource type (IPPool) and/or version (projectcalico.org/v1)" in r.stderr
    r = run(etcd, "create", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert pool_keys(etcd) == []


def test_overlapping_pool_is_refused(etcd, tmp_path):
    add_pool(etcd, "big", "10.89.0.0/16")
    for command in ("create", "apply"):
        r = run(etcd, command, "-f", write(tmp_path, pool_doc("small", "10.89.4.0/24")))
        assert r.returncode == 1
        assert "spec.cidr = '10.89.4.0/24'" in r.stderr
        assert "IPPool(small) CIDR overlaps with IPPool(big) CIDR 10.89.0.0/16" in r.stderr
    assert pool_keys(etcd) == [KEY + "big"]
    r = run(etcd, "create", "-f", write(tmp_path, pool_doc("v6", "fd00:89::/64")))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("spec", "field"), [
    ({"cidr": "10.90.0.0/23"}, "spec.cidr = '10.90.0.0/23' (IPPool CIDR cannot be modified: it is 10.90.0.0/24)"),
    ({"cidr": "10.90.0.0/24", "blockSize": 28},
     "spec.blockSize = '28' (IPPool BlockSize cannot be modified: it is 26)"),
])
def test_cidr_and_block_size_are_immutable(etcd, tmp_path, spec, field):
    add_pool(etcd, "pool1", "10.90.0.0/24")
    before = mod_revision(etcd, KEY + "pool1")
    for command in ("replace", "apply"):
        r = run(etcd, command, "-f", write(tmp_path, pool_doc("pool1", **spec)))
        assert r.returncode == 1
        assert f"Failed to {command} 'IPPool' resource: [IPPool(pool1): error with field {field}]" in r.stderr
    assert mod_revision(etcd, KEY + "pool1") == before


# --- the datastore and the command line ------------------------------------------------------


def test_unreachable_etcd_is_one_line_within_ten_seconds(etcd, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (("get", "ippools"), ("create", "-f", write(tmp_path, pool_doc("p", "10.91.0.0/24")))):
        started = time.monotonic()
        r = run(None, *args, env={"ETCD_ENDPOINTS": closed})
        assert time.monotonic() - started < 10
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and closed in r.stderr and "unreachable" in r.stderr
        assert "Traceback" not in r.stderr


def test_config_file_is_used_instead_of_the_environment(etcd, tmp_path):
    cfg = tmp_path / "calicoctl.cfg"
    cfg.write_text(f"apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {{}}\n"
                   f"spec:\n  datastoreType: etcdv3\n  etcdEndpoints: {etcd.url}\n")
    closed = {"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}"}
    r = run(None, "create", "--config", str(cfg), "-f", write(tmp_path, pool_doc("cfg", "10.92.0.0/24")), env=closed)
    assert (r.returncode, r.stdout) == (0, "Successfully created 1 'IPPool' resource(s)\n")
    r = run(None, "get", "ippools", "-c", str(cfg), env=closed)
    assert r.returncode == 0 and "10.92.0.0/24" in r.stdout

    cfg.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  datastoreType: kubernetes\n")
    r = run(etcd, "get", "ippools", "--config", str(cfg))
    assert r.returncode == 1 and "datastore type 'kubernetes'" in r.stderr and "etcdv3" in r.stderr


def test_only_etcdv3_datastore_is_accepted(etcd):
    r = run(etcd, "get", "ippools", env={"DATASTORE_TYPE": "kubernetes"})
    assert r.returncode == 1
    assert r.stderr == "datastore type 'kubernetes' (from environment) is not supported: " \
                       "this calicoctl supports etcdv3 only\n"
    assert run(etcd, "get", "ippools", env={"DATASTORE_TYPE": "etcdv3"}).returncode == 0


@pytest.mark.parametrize("command", [[], ["create"], ["apply"], ["replace"], ["delete"], ["get"], ["version"]])
def test_help_for_every_command(command):
    r = run(None, *command, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: calicoctl")
    assert "example" in r.stdout


def test_version_and_usage_errors(etcd):
    r = run(None, "version", "--client")
    assert (r.returncode, r.stdout) == (0, f"Client Version:    {__version__}\nGit commit:        unknown\n")
    assert run(None, "frobnicate").returncode == 1
    assert run(None, "create").returncode == 1  # -f is required
    r = run(etcd, "get", "ippools", "-o", "xml")
    assert r.returncode == 1 and "unrecognized output format 'xml'" in r.stderr
