"""calico-node's start-up input: booleans, TLS files, the node name's sources, the --help list."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest

from cni_calico.node import config
from cni_calico.node.config import VARIABLES, NodeConfigError, from_env

GOOD = {"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379", "IP": "192.168.0.1/24"}


@pytest.mark.parametrize("raw,value", [("true", True), ("True", True), ("1", True), ("t", True), ("TRUE", True),
                                       ("false", False), ("0", False), ("F", False), ("", False), ("  ", False)])
def test_booleans_take_go_parsebool_forms(raw, value):
    assert from_env({**GOOD, "NO_DEFAULT_POOLS": raw}).no_default_pools is value


@pytest.mark.parametrize("name", ["NO_DEFAULT_POOLS", "CALICO_IPV4POOL_NAT_OUTGOING", "CALICO_CNI_SERVER",
                                  "DISABLE_NODE_IP_CHECK", "FELIX_HEALTHENABLED"])
@pytest.mark.parametrize("raw", ["maybe", "yes please", "2"])
def test_a_bad_boolean_is_refused_naming_it(name, raw):
    with pytest.raises(NodeConfigError) as err:
        from_env({**GOOD, name: raw})
    assert str(err.value).startswith(f"{name}={raw!r} is not a boolean")


@pytest.mark.parametrize("name", ["ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"])
def test_a_missing_tls_file_is_refused_naming_it(name, tmp_path):
    other = tmp_path / "other.pem"
    other.write_text("x")
    env = {**GOOD, "ETCD_CERT_FILE": str(other), "ETCD_KEY_FILE": str(other), name: "/nonexistent"}
    with pytest.raises(NodeConfigError) as err:
        from_env(env)
    assert str(err.value) == f"{name}='/nonexistent': cannot read it: No such file or directory"


def test_an_unreadable_tls_file_and_a_directory_are_refused(tmp_path):
    with pytest.raises(NodeConfigError, match="ETCD_CA_CERT_FILE=.*cannot read it: Is a directory"):
        from_env({**GOOD, "ETCD_CA_CERT_FILE": str(tmp_path)})
    key = tmp_path / "key.pem"
    key.write_text("k")
    with pytest.raises(NodeConfigError, match="ETCD_KEY_FILE and ETCD_CERT_FILE must be set together"):
        from_env({**GOOD, "ETCD_KEY_FILE": str(key)})
    cfg = from_env({**GOOD, "ETCD_KEY_FILE": str(key), "ETCD_CERT_FILE": str(key), "ETCD_CA_CERT_FILE": str(key)})
    assert (cfg.etcd.key_file, cfg.etcd.ca_cert_file) == (str(key), str(key))


def test_health_defaults_and_settings():
    cfg = from_env(GOOD)
    assert (cfg.health_enabled, cfg.health_host, cfg.health_port) == (True, "127.0.0.1", 9099)
    cfg = from_env({**GOOD, "FELIX_HEALTHENABLED": "false", "FELIX_HEALTHHOST": "::1", "FELIX_HEALTHPORT": "9199"})
    assert (cfg.health_enabled, cfg.health_host, cfg.health_port) == (False, "::1", 9199)


def test_node_name_in_calicos_order(tmp_path, monkeypatch):
    env = {"ETCD_ENDPOINTS": "http://127.0.0.1:2379", "CALICO_LIB_DIR": str(tmp_path)}
    monkeypatch.setattr(socket, "gethostname", lambda: "Host-A ")
    cfg = from_env(env)
    assert (cfg.nodename, cfg.nodename_source) == ("host-a", "the host name (lowercased)")
    cfg = from_env({**env, "HOSTNAME": "Web-1"})
    assert (cfg.nodename, cfg.nodename_source) == ("web-1", "HOSTNAME (lowercased)")
    (tmp_path / "nodename").write_text("stored\n")
    cfg = from_env({**env, "HOSTNAME": "web-1"})
    assert (cfg.nodename, cfg.nodename_source) == ("stored", f"the nodename file {tmp_path}/nodename")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("other")
    cfg = from_env({**env, "CALICO_NODENAME_FILE": str(elsewhere)})
    assert cfg.nodename == "other" and cfg.nodename_file == str(elsewhere)
    assert from_env({**env, "NODENAME": "n1"}).nodename_source == "NODENAME"
    with pytest.raises(NodeConfigError, match="NODENAME is unset and the nodename file .* cannot be read"):
        from_env({**env, "CALICO_NODENAME_FILE": str(tmp_path)})  # a directory


def _variables_read(path: Path) -> set[str]:
    """Every string constant passed as the first argument to env.get / env[...] / a helper taking (env, NAME)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            is_get = isinstance(func, ast.Attribute) and func.attr == "get" and getattr(func.value, "id", "") == "env"
            takes_env = isinstance(func, ast.Name) and getattr(node.args[0], "id", "") == "env" and len(node.args) > 1
            arg = node.args[0] if is_get else node.args[1] if takes_env else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isupper():
                names.add(arg.value)
        elif isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "env":
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


def test_help_lists_every_variable_calico_node_reads(capsys):
    read = _variables_read(Path(config.__file__))
    assert {"NODENAME", "ETCD_CA_CERT_FILE", "NO_DEFAULT_POOLS", "FELIX_HEALTHPORT"} <= read
    assert read <= set(VARIABLES), read - set(VARIABLES)
    from cni_calico.node.main import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name, doc in VARIABLES.items():
        assert any(line.split() and line.split()[0] == name and doc in line for line in out.splitlines()), name
    for flag in ("-felix-live", "-felix-ready", "-bird-live", "-bird-ready", "-bird6-live", "-bird6-ready"):
        assert f"{flag}, -{flag}" in out


@pytest.mark.parametrize("name,raw", [("FELIX_HEALTHPORT", "99999"), ("FELIX_HEALTHPORT", "http"),
                                      ("FELIX_HEALTHHOST", "not a host"), ("CALICO_NODE_LOG_LEVEL", "loud"),
                                      ("LOG_LEVEL", "loud"), ("FELIX_LOGSEVERITYSCREEN", "Chatty"),
                                      ("CALICO_STARTUP_LOGLEVEL", "loud"), ("FELIX_PROMETHEUSMETRICSPORT", "0"),
                                      ("FELIX_PROMETHEUSMETRICSENABLED", "maybe"),
                                      ("FELIX_PROMETHEUSMETRICSHOST", "any")])
def test_other_bad_values_name_the_variable(name, raw):
    with pytest.raises(NodeConfigError) as err:
        from_env({**GOOD, name: raw})
    assert str(err.value).startswith(f"{name}={raw!r}")
    with pytest.raises(NodeConfigError, match="^NO_DEFAULT_POOLS=true contradicts CALICO_IPV4POOL_CIDR"):
        from_env({**GOOD, "NO_DEFAULT_POOLS": "true", "CALICO_IPV4POOL_CIDR": "10.0.0.0/16"})


def test_log_level_variables_in_calicos_names_first_set_wins():
    cfg = from_env({**GOOD, "FELIX_LOGSEVERITYSCREEN": "Warning", "CALICO_NODE_LOG_LEVEL": "debug",
                    "LOG_LEVEL": "error"})
    assert (cfg.log_level, cfg.log_level_from_env) == ("warning", True)
    assert from_env({**GOOD, "CALICO_STARTUP_LOGLEVEL": "Error", "LOG_LEVEL": "debug"}).log_level == "error"
    cfg = from_env(GOOD)
    assert (cfg.log_level, cfg.log_level_from_env) == ("info", False)


def test_metrics_variables_unset_leave_it_to_felixconfiguration():
    cfg = from_env(GOOD)
    assert (cfg.metrics_enabled, cfg.metrics_host, cfg.metrics_port) == (None, "", None)
    cfg = from_env({**GOOD, "FELIX_PROMETHEUSMETRICSENABLED": "True", "FELIX_PROMETHEUSMETRICSPORT": "9191",
                    "FELIX_PROMETHEUSMETRICSHOST": "127.0.0.1"})
    assert (cfg.metrics_enabled, cfg.metrics_host, cfg.metrics_port) == (True, "127.0.0.1", 9191)
