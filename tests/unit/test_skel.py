"""The CNI protocol layer: env + stdin into a Request, VERSION, error JSON, and run() in-process (cni_calico.skel)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from cni_calico import skel
from cni_calico.errors import CniError
from cni_calico.result import LATEST_VERSION, SUPPORTED_VERSIONS, IPConfig, Result

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "calico"}
ALL_ENV = {
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/pod1",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}


def env_for(command: str, **overrides: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, **ALL_ENV, **overrides}
    return {k: v for k, v in env.items() if v is not None}


def conf_bytes(**overrides) -> bytes:
    return json.dumps({**CONF, **overrides}).encode()


def read_error(env: dict[str, str], stdin: bytes) -> CniError:
    with pytest.raises(CniError) as info:
        skel.read_request(env, stdin)
    return info.value


# --- read_request ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_read_request_full(command):
    req = skel.read_request(env_for(command, CNI_ARGS="K8S_POD_NAME=p1;K8S_POD_NAMESPACE=ns1"), conf_bytes())
    assert req.command == command
    assert req.container_id == "abc123"
    assert req.netns == "/var/run/netns/pod1"
    assert req.ifname == "eth0"
    assert req.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert req.args == {"K8S_POD_NAME": "p1", "K8S_POD_NAMESPACE": "ns1"}
    assert req.conf == CONF
    assert req.stdin == conf_bytes()
    assert req.version == "1.0.0"


def test_request_version_defaults_to_0_1_0_when_the_config_has_none():
    # libcni's ConfigDecoder reads a config without cniVersion as 0.1.0.
    req = skel.read_request(env_for("DEL"), b'{"name": "n"}')
    assert req.version == "0.1.0"


@pytest.mark.parametrize(
    "command,var",
    [(cmd, var) for cmd, needs in skel.REQUIRED_ENV.items() for var in needs],
)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_each_missing_required_variable_is_code_4_and_named(command, var, how):
    env = env_for(command)
    if how == "unset":
        del env[var]
    else:
        env[var] = ""
    err = read_error(env, conf_bytes(cniVersion="1.1.0"))
    assert err.code == 4
    assert var in err.msg


def test_required_env_table_matches_the_spec():
    assert set(skel.REQUIRED_ENV["ADD"]) == {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"}
    assert set(skel.REQUIRED_ENV["CHECK"]) == set(skel.REQUIRED_ENV["ADD"])
    # DEL must work after the namespace is gone.
    assert "CNI_NETNS" not in skel.REQUIRED_ENV["DEL"]


def test_del_without_netns_is_accepted():
    env = env_for("DEL")
    del env["CNI_NETNS"]
    req = skel.read_request(env, conf_bytes())
    assert req.netns == ""


def test_all_missing_variables_are_named_at_once():
    err = read_error({"CNI_COMMAND": "ADD"}, conf_bytes())
    assert err.code == 4
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        assert var in err.msg


def test_missing_command_is_code_4():
    err = read_error({**ALL_ENV}, conf_bytes())
    assert err.code == 4 and "CNI_COMMAND" in err.msg


@pytest.mark.parametrize("command", ["add", "FOO", "VERSIONS", " ADD"])
def test_unknown_command_is_code_4(command):
    err = read_error(env_for(command), conf_bytes())
    assert err.code == 4
    assert repr(command) in err.msg


@pytest.mark.parametrize("ifname", ["", "a" * 16, "eth/0", "eth:0", "eth 0", "eth\t0", "eth0\n", ".", ".."])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_bad_ifname_is_code_4(command, ifname):
    err = read_error(env_for(command, CNI_IFNAME=ifname), conf_bytes())
    assert err.code == 4
    assert "CNI_IFNAME" in err.msg


@pytest.mark.parametrize("ifname", ["eth0", "a" * 15, "net1.100", "eth-0_x", "..."])
def test_good_ifname_is_accepted(ifname):
    assert skel.read_request(env_for("ADD", CNI_IFNAME=ifname), conf_bytes()).ifname == ifname


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a:b", "a b", ".", "..", "%d", "eth%d", "a%"])
def test_validate_ifname_rejects(name):
    with pytest.raises(CniError) as info:
        skel.validate_ifname(name)
    assert info.value.code == 4


@pytest.mark.parametrize("cid", ["-abc", "_abc", ".abc", "abc/def", "abc def", "abc;rm", "ab:c", "ab\nc", "ünïcode"])
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_invalid_container_id_is_code_4(command, cid):
    err = read_error(env_for(command, CNI_CONTAINERID=cid), conf_bytes())
    assert err.code == 4
    assert "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_container_id_with_a_trailing_newline_is_code_4(command):
    err = read_error(env_for(command, CNI_CONTAINERID="abc123\n"), conf_bytes())
    assert err.code == 4


@pytest.mark.parametrize("cid", ["a", "0123456789abcdef" * 4, "pod_1.2-x", "A-b_C.d"])
def test_valid_container_id(cid):
    assert skel.read_request(env_for("ADD", CNI_CONTAINERID=cid), conf_bytes()).container_id == cid


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("", {}),
        ("A=1", {"A": "1"}),
        ("A=1;B=2", {"A": "1", "B": "2"}),
        ("A=1;;B=2;", {"A": "1", "B": "2"}),
        ("IgnoreUnknown=1;K8S_POD_NAME=p", {"IgnoreUnknown": "1", "K8S_POD_NAME": "p"}),
        ("A=", {"A": ""}),
        ("A=x=y", {"A": "x=y"}),
        ("A=1;A=2", {"A": "2"}),
    ],
)
def test_cni_args_parsing(raw, expected):
    assert skel.parse_cni_args(raw) == expected
    assert skel.read_request(env_for("ADD", CNI_ARGS=raw), conf_bytes()).args == expected


@pytest.mark.parametrize("raw", ["A", "A=1;B", "=1", "A=1;=2"])
def test_cni_args_element_without_key_value_is_code_4(raw):
    err = read_error(env_for("ADD", CNI_ARGS=raw), conf_bytes())
    assert err.code == 4
    assert "CNI_ARGS" in err.msg


@pytest.mark.parametrize("stdin", [b"", b"{", b"{'a': 1}", b"not json", b"\xff\xfe\x00", b'{"a": 1} trailing'])
def test_invalid_json_is_code_6(stdin):
    err = read_error(env_for("ADD"), stdin)
    assert err.code == 6


@pytest.mark.parametrize("stdin", [b"[]", b"[1, 2]", b'"conf"', b"42", b"null", b"true"])
def test_non_object_json_is_code_6(stdin):
    err = read_error(env_for("ADD"), stdin)
    assert err.code == 6
    assert "object" in err.msg


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_check_needs_0_4_0(version):
    stdin = conf_bytes(cniVersion=version)
    if version in ("0.1.0", "0.2.0", "0.3.0", "0.3.1"):
        err = read_error(env_for("CHECK"), stdin)
        assert err.code == 1
        assert version in err.msg and "CHECK" in err.msg
    else:
        assert skel.read_request(env_for("CHECK"), stdin).command == "CHECK"


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_status_and_gc_need_1_1_0(command, version):
    stdin = conf_bytes(cniVersion=version)
    env = {"CNI_COMMAND": command}  # neither needs any other variable
    if version == "1.1.0":
        req = skel.read_request(env, stdin)
        assert req.command == command and req.container_id == "" and req.ifname == ""
    else:
        err = read_error(env, stdin)
        assert err.code == 1
        assert command in err.msg


@pytest.mark.parametrize("command", ["ADD", "DEL"])
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_and_del_allowed_in_every_version(command, version):
    assert skel.read_request(env_for(command), conf_bytes(cniVersion=version)).version == version


def test_status_with_a_bad_ifname_is_still_rejected():
    err = read_error({"CNI_COMMAND": "STATUS", "CNI_IFNAME": "a/b"}, conf_bytes(cniVersion="1.1.0"))
    assert err.code == 4


def test_version_command_ignores_env_and_stdin():
    req = skel.read_request({"CNI_COMMAND": "VERSION"}, b"garbage")
    assert req.command == "VERSION"
    assert req.conf == {}


# --- version_info and error_json ----------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_info_echoes_the_asked_version(version):
    info = skel.version_info(json.dumps({"cniVersion": version}).encode())
    assert info == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("stdin", [b"", b"{}", b"junk", b"[]", b"null", b'{"cniVersion": 4}', b'{"cniVersion": ""}'])
def test_version_info_defaults_to_latest(stdin):
    info = skel.version_info(stdin)
    assert info["cniVersion"] == LATEST_VERSION
    assert info["supportedVersions"] == list(SUPPORTED_VERSIONS)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_error_json_fields(version):
    out = json.loads(skel.error_json(CniError(7, "bad config", "field x"), version))
    assert out == {"cniVersion": version, "code": 7, "msg": "bad config", "details": "field x"}


@pytest.mark.parametrize("version", ["", "9.9.9", "0.3", "abc"])
def test_error_json_unsupported_version_falls_back_to_latest(version):
    out = json.loads(skel.error_json(CniError(11, "etcd down"), version))
    assert out == {"cniVersion": LATEST_VERSION, "code": 11, "msg": "etcd down", "details": ""}


def test_cni_error_str():
    assert str(CniError(7, "msg", "details")) == "msg: details"
    assert str(CniError(7, "msg")) == "msg"


# --- run() in-process --------------------------------------------------------------------------


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def run(monkeypatch, capsys):
    """run(handlers, env, stdin) -> (exit status, the one JSON document on stdout or None)."""

    def go(handlers, env, stdin: bytes = b""):
        monkeypatch.setattr(sys, "stdin", FakeStdin(stdin))
        status = skel.run(handlers, env=env)
        out = capsys.readouterr().out
        if not out:
            return status, None
        doc, end = json.JSONDecoder().raw_decode(out)
        assert out[end:] == "\n", f"stdout holds more than one JSON document: {out!r}"
        return status, doc

    return go


def result_handler(req):
    return Result(ips=[IPConfig("10.60.0.5/32")])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_run_add_prints_the_result_in_the_configs_version(run, version):
    seen = []

    def add(req):
        seen.append(req)
        return result_handler(req)

    status, doc = run({"ADD": add}, env_for("ADD"), conf_bytes(cniVersion=version))
    assert status == 0
    assert doc == Result(ips=[IPConfig("10.60.0.5/32")]).to_dict(version)
    assert seen[0].container_id == "abc123"


def test_run_handler_returning_none_prints_nothing(run):
    status, doc = run({"DEL": lambda req: None}, env_for("DEL"), conf_bytes())
    assert status == 0
    assert doc is None


@pytest.mark.parametrize("version", ["0.2.0", "0.4.0", "1.1.0"])
def test_run_exception_in_handler_is_code_999(run, version, caplog):
    def boom(req):
        raise RuntimeError("kaboom")

    status, doc = run({"ADD": boom}, env_for("ADD"), conf_bytes(cniVersion=version))
    assert status == 1
    assert doc["code"] == 999
    assert doc["cniVersion"] == version
    assert "kaboom" in doc["msg"] and "RuntimeError" in doc["msg"]
    assert set(doc) == {"cniVersion", "code", "msg", "details"}
    assert "Traceback" not in json.dumps(doc)
    assert any(r.exc_info for r in caplog.records), "the traceback belongs in the log"


@pytest.mark.parametrize("code", [1, 3, 7, 11, 101, 103])
def test_run_preserves_a_cni_errors_code(run, code):
    def fail(req):
        raise CniError(code, "it failed", "because")

    status, doc = run({"ADD": fail, "DEL": fail}, env_for("DEL"), conf_bytes(cniVersion="0.3.1"))
    assert status == 1
    assert doc == {"cniVersion": "0.3.1", "code": code, "msg": "it failed", "details": "because"}


def test_run_env_error_gives_code_4_json(run):
    status, doc = run({"ADD": result_handler}, {"CNI_COMMAND": "ADD"}, conf_bytes())
    assert status == 1
    assert doc["code"] == 4
    assert doc["cniVersion"] == json.loads(conf_bytes())["cniVersion"]  # errors speak the config's version


def test_run_decode_error_gives_code_6_json(run):
    status, doc = run({"ADD": result_handler}, env_for("ADD"), b"{nope")
    assert status == 1 and doc["code"] == 6


def test_run_command_without_handler_is_code_4(run):
    status, doc = run({"ADD": result_handler}, env_for("DEL"), conf_bytes())
    assert status == 1
    assert doc["code"] == 4 and "DEL" in doc["msg"]


def test_run_unsupported_version_in_error_falls_back_to_latest(run):
    def fail(req):
        raise CniError(1, "unsupported")

    status, doc = run({"ADD": fail}, env_for("ADD"), conf_bytes(cniVersion="7.0.0"))
    assert status == 1 and doc["cniVersion"] == LATEST_VERSION and doc["code"] == 1


def test_run_non_string_version_still_gives_json(run):
    def fail(req):
        raise CniError(7, "bad")

    status, doc = run({"ADD": fail}, env_for("ADD"), conf_bytes(cniVersion=4))
    assert status == 1
    assert doc["cniVersion"] == LATEST_VERSION and doc["code"] == 1 and "4" in doc["msg"]


def test_run_unknown_version_is_refused_before_the_handler(run):
    # A version we do not speak cannot render a result: skel refuses it (code 1), one document on stdout.
    status, doc = run({"ADD": result_handler}, env_for("ADD"), conf_bytes(cniVersion="0.5.0"))
    assert status == 1
    assert doc["code"] == 1


def test_run_version_command(run):
    status, doc = run({}, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert status == 0
    assert doc == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_run_check_with_old_version_is_code_1(run):
    status, doc = run({"CHECK": lambda req: None}, env_for("CHECK"), conf_bytes(cniVersion="0.3.1"))
    assert status == 1 and doc["code"] == 1


def test_run_reads_no_stdin_from_a_tty(monkeypatch, capsys):
    class Tty(FakeStdin):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty(b'{"cniVersion": "0.4.0"}'))
    assert skel.run({}, env={"CNI_COMMAND": "VERSION"}) == 0
    assert json.loads(capsys.readouterr().out)["cniVersion"] == LATEST_VERSION
