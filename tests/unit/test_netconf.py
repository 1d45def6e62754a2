"""Network config validation: the classic Calico config and every field's checks (cni_calico.netconf)."""

from __future__ import annotations

import builtins
import copy
import os

import pytest

from cni_calico import logsetup, netconf  # noqa: F401 - logsetup imported before open() is watched
from cni_calico.errors import CniError
from cni_calico.result import SUPPORTED_VERSIONS, IPConfig, Result, Route

KUBECONFIG = "/opt/rainbond/etc/kubernetes/kubecfg/admin.kubeconfig"
CLASSIC = {
    "name": "calico-k8s-network",
    "cniVersion": "0.1.0",
    "type": "calico",
    "etcd_endpoints": "http://127.0.0.1:2379",
    "log_level": "info",
    "ipam": {"type": "calico-ipam"},
    "kubernetes": {"kubeconfig": KUBECONFIG},
}


@pytest.fixture(autouse=True)
def no_etcd_env(monkeypatch):
    for var in ("ETCD_ENDPOINTS", "ETCD_KEY_FILE", "ETCD_CERT_FILE", "ETCD_CA_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)


def conf(**changes) -> dict:
    """The classic config with top-level changes; a value of ... removes the key."""
    out = copy.deepcopy(CLASSIC)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def ipam(**fields) -> dict:
    return conf(ipam={"type": "calico-ipam", **fields})


def error(data, **kw) -> CniError:
    with pytest.raises(CniError) as info:
        netconf.parse(data, **kw)
    return info.value


# --- the classic config -------------------------------------------------------------------------


def test_classic_config_parses(monkeypatch):
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def watch_open(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    def watch_os_open(path, *a, **kw):
        opened.append(str(path))
        return real_os_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", watch_open)
    monkeypatch.setattr(os, "open", watch_os_open)
    parsed = netconf.parse(copy.deepcopy(CLASSIC))
    assert KUBECONFIG not in opened, "the kubeconfig must not be read while parsing"
    assert parsed.name == "calico-k8s-network"
    assert parsed.cni_version == "0.1.0"
    assert parsed.type == "calico"
    assert parsed.etcd.endpoints == ["http://127.0.0.1:2379"]
    assert parsed.log_level == "info"
    assert parsed.ipam.type == "calico-ipam"
    assert parsed.ipam.assign_ipv4 is True and parsed.ipam.assign_ipv6 is False
    assert parsed.ipam.ipv4_pools == [] and parsed.ipam.ipv6_pools == []
    assert parsed.kubeconfig == KUBECONFIG
    assert parsed.mtu == 0  # unset: the plugin takes calico-node's mtu file, else 1500
    assert parsed.nodename_file == netconf.DEFAULT_NODENAME_FILE
    assert parsed.log_file_path == netconf.DEFAULT_LOG_FILE
    assert parsed.prev_result is None
    assert parsed.raw == CLASSIC


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_supported_version_parses(version):
    assert netconf.parse(conf(cniVersion=version)).cni_version == version


def test_not_an_object_is_code_7():
    for data in (None, [], "conf", 3):
        assert error(data).code == 7


# --- name, version, type ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [..., "", None, 5, ["n"]])
def test_missing_name_is_code_7(name):
    err = error(conf(name=name))
    assert err.code == 7 and "name" in err.msg


@pytest.mark.parametrize("name", ["bad name", "-net", ".net", "net/1", "net:1", "nét", "net;rm"])
def test_bad_name_is_code_7(name):
    err = error(conf(name=name))
    assert err.code == 7 and repr(name) in err.msg


def test_name_with_a_trailing_newline_is_code_7():
    assert error(conf(name="calico-k8s-network\n")).code == 7


@pytest.mark.parametrize("name", ["k8s-pod-network", "net_1.2", "0net"])
def test_good_names(name):
    assert netconf.parse(conf(name=name)).name == name


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "1.0", "v1.0.0", "latest"])
def test_unsupported_cni_version_is_code_1(version):
    err = error(conf(cniVersion=version))
    assert err.code == 1
    assert repr(version) in err.msg
    assert "1.1.0" in err.details


@pytest.mark.parametrize("version", [1.0, "1.0", "0.5.0"])
def test_bad_cni_version_is_code_1(version):
    assert error(conf(cniVersion=version)).code == 1


@pytest.mark.parametrize("version", [..., "", None])
def test_missing_cni_version_reads_as_0_1_0(version):
    # As libcni's ConfigDecoder: no cniVersion means a 0.1.0 config.
    assert netconf.parse(conf(cniVersion=version)).cni_version == "0.1.0"


def test_type_must_be_a_string():
    assert error(conf(type=["calico"])).code == 7


# --- mtu -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [68, 1440, 9000, 65535])
def test_mtu_in_range(mtu):
    assert netconf.parse(conf(mtu=mtu)).mtu == mtu


@pytest.mark.parametrize("mtu", [0, None])
def test_mtu_zero_or_null_means_unset(mtu):
    assert netconf.parse(conf(mtu=mtu)).mtu == 0


def test_pod_mtu_from_config_file_or_default(tmp_path):
    from cni_calico.nodename import pod_mtu

    parsed = netconf.parse(conf(nodename_file=str(tmp_path / "nodename")))
    assert pod_mtu(parsed) == 1500
    (tmp_path / "mtu").write_text("1450\n")
    assert pod_mtu(parsed) == 1450
    assert pod_mtu(netconf.parse(conf(mtu=1400, nodename_file=str(tmp_path / "nodename")))) == 1400
    (tmp_path / "mtu").write_text("junk")
    assert pod_mtu(parsed) == 1500


@pytest.mark.parametrize("mtu", [67, 65536, -1, 1 << 40, True, "1500", "big", 1500.0, [1500]])
def test_bad_mtu_is_code_7(mtu):
    err = error(conf(mtu=mtu))
    assert err.code == 7 and "mtu" in err.msg


@pytest.mark.parametrize("mtu", [False, "", []])
def test_falsy_non_number_mtu_is_code_7(mtu):
    assert error(conf(mtu=mtu)).code == 7


# --- log level ------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["debug", "info", "warning", "warn", "error", "fatal", "panic", "DEBUG", "Info"])
def test_log_levels(level):
    assert netconf.parse(conf(log_level=level)).log_level == level


@pytest.mark.parametrize("level", ["", None])
def test_empty_log_level_means_info(level):
    assert netconf.parse(conf(log_level=level)).log_level == "info"


@pytest.mark.parametrize("level", ["verbose", "trace", "5", 5, ["info"]])
def test_bad_log_level_is_code_7(level):
    err = error(conf(log_level=level))
    assert err.code == 7 and "log_level" in err.msg


# --- etcd ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "127.0.0.1:2379",
        "ftp://127.0.0.1:2379",
        "http://",
        "http://127.0.0.1:port",
        "http://127.0.0.1:2379/v3/kv",
        "http://my host:2379",
        "etcd",
        "http://127.0.0.1:2379,etcd2:2379",
    ],
)
def test_etcd_endpoint_that_is_not_a_url_is_code_7(endpoint):
    err = error(conf(etcd_endpoints=endpoint))
    assert err.code == 7 and "etcd endpoint" in err.msg


@pytest.mark.parametrize(
    "endpoints,expected",
    [
        ("http://127.0.0.1:2379", ["http://127.0.0.1:2379"]),
        ("https://etcd.example.com:2379/", ["https://etcd.example.com:2379/"]),
        ("http://etcd", ["http://etcd"]),
        ("http://[fd00::1]:2379", ["http://[fd00::1]:2379"]),
        (
            "http://10.0.0.1:2379,https://10.0.0.2:2379, http://10.0.0.3:2379 ",
            ["http://10.0.0.1:2379", "https://10.0.0.2:2379", "http://10.0.0.3:2379"],
        ),
        ("http://10.0.0.1:2379,", ["http://10.0.0.1:2379"]),
    ],
)
def test_etcd_endpoints(endpoints, expected):
    assert netconf.parse(conf(etcd_endpoints=endpoints)).etcd.endpoints == expected


def test_missing_etcd_endpoints_is_code_7():
    err = error(conf(etcd_endpoints=...))
    assert err.code == 7 and "etcd_endpoints" in err.msg


def test_empty_etcd_endpoints_is_code_7():
    assert error(conf(etcd_endpoints="")).code == 7


@pytest.mark.parametrize("endpoints", [",", " ", " , "])
def test_etcd_endpoints_without_any_url_is_code_7(endpoints):
    assert error(conf(etcd_endpoints=endpoints)).code == 7


def test_etcd_endpoints_from_the_requests_environment_not_the_process(monkeypatch):
    env = {"ETCD_ENDPOINTS": "http://10.1.1.1:2379,http://10.1.1.2:2379", "ETCD_CA_CERT_FILE": "/etc/calico/ca.pem"}
    parsed = netconf.parse(conf(etcd_endpoints=...), env)
    assert parsed.etcd.endpoints == ["http://10.1.1.1:2379", "http://10.1.1.2:2379"]
    assert parsed.etcd.ca_cert_file == "/etc/calico/ca.pem"
    # The process's own environment (calico-node's, when its CNI server runs the request) is not read.
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://10.9.9.9:2379")
    with pytest.raises(CniError):
        netconf.parse(conf(etcd_endpoints=...), {})


def test_config_endpoints_win_over_environment():
    assert netconf.parse(conf(), {"ETCD_ENDPOINTS": "http://10.1.1.1:2379"}).etcd.endpoints == ["http://127.0.0.1:2379"]


def test_invalid_endpoint_from_environment_is_code_7():
    err = error(conf(etcd_endpoints=...), env={"ETCD_ENDPOINTS": "10.1.1.1:2379"})
    assert err.code == 7 and "10.1.1.1:2379" in err.msg


def test_etcd_authority_is_the_old_form():
    parsed = netconf.parse(conf(etcd_endpoints=..., etcd_authority="10.0.0.9:2379"))
    assert parsed.etcd.endpoints == ["http://10.0.0.9:2379"]


def test_etcd_tls_files():
    parsed = netconf.parse(conf(etcd_key_file="/k.pem", etcd_cert_file="/c.pem", etcd_ca_cert_file="/ca.pem"))
    assert (parsed.etcd.key_file, parsed.etcd.cert_file, parsed.etcd.ca_cert_file) == ("/k.pem", "/c.pem", "/ca.pem")


def test_etcd_endpoints_must_be_a_string():
    assert error(conf(etcd_endpoints=["http://127.0.0.1:2379"])).code == 7


def test_etcd_not_needed():
    parsed = netconf.parse(conf(etcd_endpoints=...), need_etcd=False)
    assert parsed.etcd.endpoints == []


@pytest.mark.parametrize("datastore", ["kubernetes", "etcdv2", "etcd"])
def test_other_datastore_type_is_refused(datastore):
    err = error(conf(datastore_type=datastore))
    assert err.code == 7 and repr(datastore) in err.msg


@pytest.mark.parametrize("datastore", ["etcdv3", "", None])
def test_etcdv3_datastore(datastore):
    assert netconf.parse(conf(datastore_type=datastore)).etcd.endpoints == ["http://127.0.0.1:2379"]


# --- ipam --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [..., None, "calico-ipam", ["calico-ipam"], {}])
def test_ipam_missing_or_not_an_object_is_code_7(value):
    assert error(conf(ipam=value)).code == 7


@pytest.mark.parametrize("ipam_conf", [{}, {"type": ""}, {"type": None}, {"type": 1}, {"subnet": "10.0.0.0/24"}])
def test_ipam_without_type_is_code_7(ipam_conf):
    err = error(conf(ipam=ipam_conf))
    assert err.code == 7 and "ipam.type" in err.msg


@pytest.mark.parametrize("ipam_type", ["../bin/sh", "calico ipam", "/opt/cni/bin/host-local"])
def test_ipam_type_must_be_a_plugin_name(ipam_type):
    assert error(conf(ipam={"type": ipam_type})).code == 7


def test_ipam_raw_keeps_extras():
    parsed = netconf.parse(ipam(subnet="usePodCidr", ranges=[[{"subnet": "10.0.0.0/24"}]]))
    assert parsed.ipam.raw["subnet"] == "usePodCidr"


@pytest.mark.parametrize(
    "value,expected", [("true", True), ("false", False), ("TRUE", True), ("False", False), (True, True), (False, False)]
)
def test_assign_flags(value, expected):
    parsed = netconf.parse(ipam(assign_ipv4=value, assign_ipv6=value))
    assert parsed.ipam.assign_ipv4 is expected
    assert parsed.ipam.assign_ipv6 is expected


@pytest.mark.parametrize("value", ["yes", "1", "", 1, 0, ["true"], "truee"])
@pytest.mark.parametrize("key", ["assign_ipv4", "assign_ipv6"])
def test_assign_flag_junk_is_code_7(key, value):
    err = error(ipam(**{key: value}))
    assert err.code == 7 and key in err.msg


def test_pools():
    parsed = netconf.parse(ipam(ipv4_pools=["pool1", "10.0.0.0/16"], ipv6_pools=["fd00::/64"]))
    assert parsed.ipam.ipv4_pools == ["pool1", "10.0.0.0/16"]
    assert parsed.ipam.ipv6_pools == ["fd00::/64"]


@pytest.mark.parametrize("value", ["pool1", {"name": "pool1"}, [1], [""], ["pool1", None], 5])
@pytest.mark.parametrize("key", ["ipv4_pools", "ipv6_pools"])
def test_pools_not_a_list_of_names_is_code_7(key, value):
    err = error(ipam(**{key: value}))
    assert err.code == 7 and f"ipam.{key}" in err.msg


# --- other sections ----------------------------------------------------------------------------------


def test_unknown_keys_are_tolerated():
    parsed = netconf.parse(conf(something_new={"x": 1}, capabilities={"portMappings": True}, args={"a": 1}))
    assert parsed.raw["something_new"] == {"x": 1}


@pytest.mark.parametrize("section", ["kubernetes", "policy", "container_settings"])
def test_sections_must_be_objects(section):
    err = error(conf(**{section: "x"}))
    assert err.code == 7 and section in err.msg


def test_policy_nodename_and_forwarding():
    parsed = netconf.parse(
        conf(
            policy={"type": "k8s"},
            nodename="node-1",
            nodename_file="/tmp/nodename",
            container_settings={"allow_ip_forwarding": "true"},
            log_file_path="/tmp/cni.log",
        )
    )
    assert parsed.policy_type == "k8s"
    assert parsed.nodename == "node-1"
    assert parsed.nodename_file == "/tmp/nodename"
    assert parsed.allow_ip_forwarding is True
    assert parsed.log_file_path == "/tmp/cni.log"


def test_forwarding_junk_is_code_7():
    assert error(conf(container_settings={"allow_ip_forwarding": "maybe"})).code == 7


# --- prevResult --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_prev_result_is_parsed_into_a_result(version):
    prev = Result(ips=[IPConfig("10.60.0.5/32")], routes=[Route("0.0.0.0/0")]).to_dict(version)
    parsed = netconf.parse(conf(cniVersion=version, prevResult=prev))
    assert isinstance(parsed.prev_result, Result)
    assert [ip.address for ip in parsed.prev_result.ips] == ["10.60.0.5/32"]
    assert [r.dst for r in parsed.prev_result.routes] == ["0.0.0.0/0"]


@pytest.mark.parametrize(
    "prev",
    [
        "10.0.0.1/32",
        [{"address": "10.0.0.1/32"}],
        {"ips": [{"gateway": "10.0.0.1"}]},
        {"ips": "10.0.0.1/32"},
        {"ip4": {"gateway": "10.0.0.1"}},
        {"interfaces": [{"name": "eth0", "mtu": "x"}]},
    ],
)
def test_malformed_prev_result_is_code_7(prev):
    err = error(conf(cniVersion="1.0.0", prevResult=prev))
    assert err.code == 7 and "prevResult" in err.msg
