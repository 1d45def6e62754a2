"""The layers and the model: who may import whom, the one place errors become CNI codes, keys built
and parsed in one module, and the v3 model's lossless round trip."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cni_calico import keys, v3
from cni_calico.datastore import ConflictError, DatastoreConfigError, DatastoreError, TooManyConflicts, Txn
from cni_calico.errors import CniError, at_cni_edge, cni_error
from ipam.errors import AddressInUse, InvalidRequest, PoolExhausted

ROOT = Path(__file__).resolve().parents[2]
CNI_PROTOCOL = {"cni_calico.skel", "cni_calico.netconf", "cni_calico.result", "cni_calico.plugin",
                "cni_calico.delegate", "cni_calico.errors", "cni_calico.ipam_cni", "cni_calico.host",
                "cni_calico.versions"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "ipam").glob("*.py")), ids=lambda p: p.name)
def test_ipam_is_a_library_that_never_imports_the_cni_side(path):
    assert not imports(path) & CNI_PROTOCOL


@pytest.mark.parametrize("module", ["datastore", "keys", "v3"])
def test_the_bottom_layers_import_nothing_above_them(module):
    ours = {m for m in imports(ROOT / "cni_calico" / f"{module}.py") if m.startswith(("cni_calico", "ipam"))}
    allowed = {"cni_calico"} if module == "v3" else set()
    assert ours <= allowed


@pytest.mark.parametrize("path", sorted((ROOT / "cni_calico").glob("*/**/*.py")), ids=lambda p: str(p.parent.name + "/"
                                                                                                     + p.name))
def test_calicoctl_and_calico_node_never_use_cni_errors(path):
    assert "cni_calico.errors" not in imports(path) and "cni_calico.errors.CniError" not in imports(path)


def test_no_module_outside_keys_builds_an_etcd_key():
    """No string literal (or f-string) elsewhere starts with `/calico/`: keys come from cni_calico.keys."""
    for path in [*(ROOT / "cni_calico").rglob("*.py"), *(ROOT / "ipam").glob("*.py")]:
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr) and node.values:
                node = node.values[0]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("/calico/"), f"{path}:{node.lineno}: {node.value!r}"


@pytest.mark.parametrize("error,code", [
    (DatastoreError("etcd at x unreachable after 10 s"), 11),
    (TooManyConflicts("gave up"), 11),
    (DatastoreConfigError("cannot read etcd key file"), 7),
    (PoolExhausted("pool p (10.0.0.0/30) is exhausted"), 101),
    (AddressInUse("requested address 10.0.0.1 is already in use"), 102),
    (InvalidRequest("requested IPv4 pool 'x' does not exist"), 7),
])
def test_library_errors_map_to_cni_codes_in_one_place(error, code):
    mapped = cni_error(error)
    assert mapped is not None and mapped.code == code and mapped.msg == error.msg

    @at_cni_edge
    def handler():
        raise error

    with pytest.raises(CniError) as raised:
        handler()
    assert raised.value.code == code


def test_anything_else_is_left_for_the_internal_error_path():
    assert cni_error(ValueError("bug")) is None and cni_error(ConflictError("x")) is None


def test_keys_build_and_parse_each_other():
    key = keys.resource("workloadendpoints", "n1-k8s-pod-eth0", "ns1")
    assert keys.parse_resource(key) == keys.ResourceKey("workloadendpoints", "n1-k8s-pod-eth0", "ns1")
    assert keys.parse_resource(keys.resource("nodes", "n1")) == keys.ResourceKey("nodes", "n1")
    assert keys.parse_resource(keys.resource("nodes", "n1") + "/extra") is None
    assert keys.parse_affinity(keys.affinity("n1", "fd00::/122")) == ("n1", "fd00::/122")
    assert keys.parse_affinity(keys.block("10.0.0.0/26")) is None
    assert keys.cidr_from_block_key(keys.block("10.0.0.64/26")) == "10.0.0.64/26"
    assert keys.handle_id_of(keys.handle("net1.abc")) == "net1.abc"


def test_the_envelope_keeps_what_it_does_not_know_and_never_stores_a_resource_version():
    value = {"kind": "Node", "apiVersion": "projectcalico.org/v3", "status": {"podCIDRs": ["x"]},
             "metadata": {"name": "n1", "uid": "u", "resourceVersion": "12", "generation": 3},
             "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}, "wireguard": {"interfaceIPv4Address": "1.2.3.4"}}}
    res = v3.Resource.from_value(value)
    res.spec["bgp"]["asNumber"] = 65001
    out = res.to_value()
    assert out["status"] == {"podCIDRs": ["x"]} and out["spec"]["wireguard"] == value["spec"]["wireguard"]
    assert out["metadata"] == {"name": "n1", "uid": "u", "generation": 3}
    assert list(out)[:4] == ["kind", "apiVersion", "metadata", "spec"]


def test_new_resources_carry_calicos_metadata():
    res = v3.new_resource("Profile", "net1", {"labelsToApply": {}})
    meta = res.to_value()["metadata"]
    assert meta["name"] == "net1" and len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert "resourceVersion" not in meta


def test_a_txn_collects_one_unit_of_work():
    txn = Txn().put("/a", {"x": 1}, 0).put_if_absent("/p", {}).delete("/b", 7).guard("/c", 3)
    assert txn.guards == {"/a": 0, "/b": 7, "/c": 3} and txn.deletes == ["/b"] and txn.if_absent == {"/p": {}}
    assert bool(txn) and not Txn().guard("/c", 3)
    txn.delete("/a")
    assert "/a" not in txn.puts and txn.deletes == ["/b", "/a"]
