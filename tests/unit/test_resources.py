"""Calico v3 resources without etcd: kinds, defaults, validation, documents in, tables and YAML out, config."""

from __future__ import annotations

import json

import pytest
import yaml

from cni_calico.ctl import config, output
from cni_calico.resources import (
    IPPOOL,
    DocumentError,
    Resource,
    ValidationError,
    from_stored,
    lookup,
    validate,
)


def pool(name: str = "pool1", **spec) -> Resource:
    return Resource(IPPOOL, {"name": name}, dict(spec))


def errors_of(res: Resource) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate(res)
    return [(e.field, e.reason) for e in info.value.errors]


# --- kinds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ippool", "IPPool", "ippools", "IPPOOLS", "pool", "pools", "ipp", "ipps"])
def test_lookup_accepts_calicoctl_names(name):
    assert lookup(name) is IPPOOL


def test_lookup_refuses_unknown_kind():
    with pytest.raises(DocumentError, match="resource type 'ippol' is not supported"):
        lookup("ippol")


def test_ippool_row():
    assert (IPPOOL.plural, IPPOOL.namespaced) == ("ippools", False)
    assert IPPOOL.headings == ("NAME", "CIDR", "SELECTOR")
    assert IPPOOL.wide_headings == ("NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT",
                                    "SELECTOR", "ASSIGNMENTMODE")


# --- defaults and normalisation ----------------------------------------------------------------


def test_defaults_filled_on_write_v4():
    res = pool(cidr="10.0.0.0/16")
    validate(res)
    assert res.spec == {"cidr": "10.0.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never",
                        "natOutgoing": False, "disabled": False, "nodeSelector": "all()",
                        "allowedUses": ["Workload", "Tunnel"], "assignmentMode": "Automatic"}
    # Stored as Calico's clientv3 stores it: Go's field order, false left out.
    assert res.to_stored()["spec"] == {"cidr": "10.0.0.0/16", "vxlanMode": "Never", "ipipMode": "Never",
                                       "blockSize": 26, "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"],
                                       "assignmentMode": "Automatic"}


def test_defaults_filled_on_write_v6_and_cidr_normalised():
    res = pool(cidr="fd00:0:0:1::/64", nodeSelector="")
    validate(res)
    assert (res.spec["cidr"], res.spec["blockSize"], res.spec["nodeSelector"]) == ("fd00:0:0:1::/64", 122, "all()")
    res = pool(cidr="FD00:0000::/64")
    validate(res)
    assert res.spec["cidr"] == "fd00::/64"


def test_explicit_values_are_kept():
    res = pool(cidr="10.1.0.0/24", blockSize=28, ipipMode="CrossSubnet", natOutgoing=True, disabled=True,
               nodeSelector="zone == 'a'", disableBGPExport=True, allowedUses=["Workload"])
    validate(res)
    assert res.spec["blockSize"] == 28 and res.spec["ipipMode"] == "CrossSubnet"
    assert res.spec["disableBGPExport"] is True and res.spec["allowedUses"] == ["Workload"]


def test_read_defaults_for_pools_stored_without_them():
    res = from_stored(IPPOOL, {"metadata": {"name": "p"}, "spec": {"cidr": "fd00::/48"}}, 42)
    assert res.resource_version == "42"
    assert (res.spec["blockSize"], res.spec["ipipMode"], res.spec["vxlanMode"]) == (122, "Never", "Never")


def test_stored_form_never_carries_resource_version():
    res = Resource(IPPOOL, {"name": "p", "resourceVersion": "7", "uid": "u"}, {"cidr": "10.0.0.0/24"})
    stored = res.to_stored()
    assert stored["metadata"] == {"name": "p", "uid": "u"}
    assert list(res.to_dict()) == ["apiVersion", "kind", "metadata", "spec"]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({}, "spec.cidr", "IPPool CIDR must be specified"),
    ({"cidr": "10.0.0.0"}, "spec.cidr", "valid subnet"),
    ({"cidr": "300.0.0.0/8"}, "spec.cidr", "valid subnet"),
    ({"cidr": "10.0.0.5/24"}, "spec.cidr", "not strictly masked: did you mean 10.0.0.0/24?"),
    ({"cidr": "fd00::1/64"}, "spec.cidr", "not strictly masked: did you mean fd00::/64?"),
    ({"cidr": "10.0.0.0/16", "blockSize": 19}, "spec.blockSize", "IPv4 block size must be between 20 and 32"),
    ({"cidr": "10.0.0.0/16", "blockSize": 33}, "spec.blockSize", "IPv4 block size must be between 20 and 32"),
    ({"cidr": "fd00::/64", "blockSize": 129}, "spec.blockSize", "IPv6 block size must be between 116 and 128"),
    ({"cidr": "fd00::/64", "blockSize": 26}, "spec.blockSize", "IPv6 block size must be between 116 and 128"),
    ({"cidr": "10.0.0.0/27", "blockSize": 26}, "spec.blockSize", "does not fit in the /27 pool"),
    ({"cidr": "10.0.0.0/16", "blockSize": "26"}, "spec.blockSize", "must be an integer"),
    ({"cidr": "10.0.0.0/16", "blockSize": True}, "spec.blockSize", "must be an integer"),
    ({"cidr": "10.0.0.0/16", "ipipMode": "Sometimes"}, "spec.ipipMode", "must be one of Always, CrossSubnet, Never"),
    ({"cidr": "10.0.0.0/16", "vxlanMode": "never"}, "spec.vxlanMode", "must be one of Always, CrossSubnet, Never"),
    ({"cidr": "10.0.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}, "spec.vxlanMode",
     "cannot enable both VXLAN and IPIP on the same IPPool"),
    ({"cidr": "fd00::/64", "ipipMode": "CrossSubnet"}, "spec.ipipMode", "IPIP is not supported on an IPv6 IP pool"),
    ({"cidr": "10.0.0.0/16", "natOutgoing": "true"}, "spec.natOutgoing", "must be true or false"),
    ({"cidr": "10.0.0.0/16", "disabled": 1}, "spec.disabled", "must be true or false"),
    ({"cidr": "10.0.0.0/16", "nodeSelector": 5}, "spec.nodeSelector", "must be a string"),
    ({"cidr": "10.0.0.0/16", "allowedUses": ["Everything"]}, "spec.allowedUses", "must be among"),
    ({"cidr": "169.254.0.0/24"}, "spec.cidr", "link local range 169.254.0.0/16"),
    ({"cidr": "fe80::/64"}, "spec.cidr", "link local range fe80::/10"),
    ({"cidr": "10.0.0.0/16", "blocksize": 26}, "spec.blocksize", "unknown field"),
])
def test_spec_errors_name_the_field(spec, field, reason):
    found = errors_of(pool(**spec))
    assert any(f == field and reason in r for f, r in found), found


def test_disabled_pool_may_be_smaller_than_a_block():
    validate(pool(cidr="10.0.0.0/28", blockSize=26, disabled=True))  # as Calico: only enabled pools need a block


@pytest.mark.parametrize(("metadata", "field"), [
    ({}, "metadata.name"),
    ({"name": "Upper"}, "metadata.name"),
    ({"name": "under_score"}, "metadata.name"),
    ({"name": "-lead"}, "metadata.name"),
    ({"name": "a" * 254}, "metadata.name"),
    ({"name": "ok", "namespace": "default"}, "metadata.namespace"),
    ({"name": "ok", "owner": "me"}, "metadata.owner"),
    ({"name": "ok", "labels": {"a": 1}}, "metadata.labels"),
])
def test_metadata_errors_name_the_field(metadata, field):
    res = Resource(IPPOOL, metadata, {"cidr": "10.0.0.0/16"})
    assert field in [f for f, _ in errors_of(res)]


def test_good_names_pass():
    for name in ("pool1", "default-ipv4-ippool", "a.b-c.d", "x" * 253):
        validate(Resource(IPPOOL, {"name": name}, {"cidr": "10.0.0.0/16"}))


def test_every_error_is_reported_at_once_with_the_resource():
    res = Resource(IPPOOL, {"name": "Bad"}, {"cidr": "10.0.0.1/16", "blockSize": 40, "colour": "red"})
    with pytest.raises(ValidationError) as info:
        validate(res)
    fields = [e.field for e in info.value.errors]
    assert {"metadata.name", "spec.colour", "spec.cidr", "spec.blockSize"} <= set(fields)
    assert str(info.value).startswith("IPPool(Bad): error with fields ")


def test_immutable_fields_on_update():
    old, new = pool(cidr="10.0.0.0/16"), pool(cidr="10.0.0.0/16")
    validate(old)
    validate(new)
    assert IPPOOL.check_update(old, new) == []
    new.spec.update(cidr="10.0.0.0/15", blockSize=27)
    assert [e.field for e in IPPOOL.check_update(old, new)] == ["spec.cidr", "spec.blockSize"]


def test_overlap_on_create():
    existing = [pool("big", cidr="10.0.0.0/8"), pool("v6", cidr="fd00::/48")]
    assert [e.field for e in IPPOOL.check_create(pool("new", cidr="10.5.0.0/16"), existing)] == ["spec.cidr"]
    assert IPPOOL.check_create(pool("new", cidr="11.0.0.0/16"), existing) == []
    assert IPPOOL.check_create(pool("big", cidr="10.0.0.0/8"), existing) == []  # itself: "already exists" instead
    err = IPPOOL.check_create(pool("new6", cidr="fd00:0:0:1::/64"), existing)[0]
    assert "IPPool(new6) CIDR overlaps with IPPool(v6) CIDR fd00::/48" in err.reason


# --- documents in ------------------------------------------------------------------------------

POOL_A = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "a"},
          "spec": {"cidr": "10.0.0.0/24"}}
POOL_B = {**POOL_A, "metadata": {"name": "b"}}


@pytest.mark.parametrize("text", [
    yaml.safe_dump_all([POOL_A, POOL_B]),
    yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [POOL_A, POOL_B]}),
    yaml.safe_dump({"apiVersion": "projectcalico.org/v3", "kind": "IPPoolList", "items": [POOL_A, POOL_B]}),
    json.dumps([POOL_A, POOL_B]),
    json.dumps(POOL_A) + "\n---\n" + json.dumps(POOL_B),
    "---\n" + yaml.safe_dump(POOL_A) + "---\n---\n" + yaml.safe_dump(POOL_B),
])
def test_documents_several_ways(text):
    assert [r.name for r in output.parse_documents(text, "f")] == ["a", "b"]


@pytest.mark.parametrize(("text", "message"), [
    ("kind: IPPool\nmetadata: [x\n", "cannot parse f"),
    (yaml.safe_dump({**POOL_A, "apiVersion": "v1"}), "unknown resource type (IPPool) and/or version (v1)"),
    (yaml.safe_dump({**POOL_A, "kind": "Widget"}), "unknown resource type (Widget)"),
    ("just a string\n", "expected a resource"),
    (yaml.safe_dump({"metadata": {"name": "x"}}), "has no 'kind'"),
])
def test_bad_documents(text, message):
    with pytest.raises(DocumentError) as info:
        output.parse_documents(text, "f")
    assert message in str(info.value)


def test_unknown_top_level_field_is_a_validation_error():
    (res,) = output.parse_documents(yaml.safe_dump({**POOL_A, "status": {}}), "f")
    assert ("status", "unknown or malformed top-level field") in errors_of(res)


# --- output ------------------------------------------------------------------------------------


def test_table_is_aligned_like_calicoctl():
    res = [from_stored(IPPOOL, {"metadata": {"name": n}, "spec": {"cidr": c}}, 1)
           for n, c in (("p", "10.0.0.0/8"), ("long-name", "fd00::/64"))]
    assert output.render(res, "ps") == (
        "NAME        CIDR         SELECTOR\n"
        "p           10.0.0.0/8   all()\n"
        "long-name   fd00::/64    all()\n\n"
    )
    assert output.render([], "ps", listed=IPPOOL) == "NAME   CIDR   SELECTOR\n\n"
    assert output.render([], "yaml") == ""


def test_yaml_and_json_key_order():
    res = from_stored(IPPOOL, {"metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/8"}}, 3)
    text = output.render([res], "yaml")
    assert [line for line in text.splitlines() if not line.startswith(" ")] == [
        "apiVersion: projectcalico.org/v3", "kind: IPPool", "metadata:", "spec:"]
    assert yaml.safe_load(text)["metadata"]["resourceVersion"] == "3"
    listed = json.loads(output.render([res], "json", listed=IPPOOL))
    assert (list(listed), listed["kind"]) == (["apiVersion", "items", "kind", "metadata"], "IPPoolList")


# --- datastore configuration -------------------------------------------------------------------


def test_config_from_environment():
    cfg = config.load(None, {"ETCD_ENDPOINTS": "http://10.0.0.1:2379, https://[fd00::1]:2379",
                             "ETCD_KEY_FILE": "k", "ETCD_CERT_FILE": "c", "ETCD_CA_CERT_FILE": "ca"})
    assert cfg.etcd.endpoints == ["http://10.0.0.1:2379", "https://[fd00::1]:2379"]
    assert (cfg.etcd.key_file, cfg.etcd.cert_file, cfg.etcd.ca_cert_file) == ("k", "c", "ca")
    assert config.load(None, {}).etcd.endpoints == ["http://127.0.0.1:2379"]


@pytest.mark.parametrize(("env", "message"), [
    ({"DATASTORE_TYPE": "kubernetes"}, "datastore type 'kubernetes'"),
    ({"ETCD_ENDPOINTS": "127.0.0.1:2379"}, "is not a URL"),
    ({"ETCD_KEY_FILE": "k"}, "must be given together"),
])
def test_config_errors(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(None, env)


def test_config_file(tmp_path):
    path = tmp_path / "calicoctl.cfg"
    path.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\nspec:\n"
                    "  datastoreType: etcdv3\n  etcdEndpoints: http://1.2.3.4:2379\n  etcdCACertFile: /ca.pem\n")
    cfg = config.load(str(path), {"ETCD_ENDPOINTS": "http://9.9.9.9:2379"})
    assert (cfg.etcd.endpoints, cfg.etcd.ca_cert_file, cfg.source) == (["http://1.2.3.4:2379"], "/ca.pem", str(path))
    path.write_text("apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  etcdUsername: me\n")
    with pytest.raises(config.ConfigError, match="spec.etcdUsername is not supported"):
        config.load(str(path))
    path.write_text("kind: Something\n")
    with pytest.raises(config.ConfigError, match="not a CalicoAPIConfig"):
        config.load(str(path))
