"""Logging as operators expect it: levels, one line per operation, size rotation, nothing secret, clean stdout.

Calico's keys: `log_level`, `log_file_path`, `log_file_max_size` (MB; a fraction such as 0.001 is
allowed, for these tests), `log_file_max_count`, `log_file_max_age` (days).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest

from cni_calico import logsetup
from tests.integration.helpers import assert_nothing_left
from tests.lab import REPO, Lab, netconf

CID = "log0000000000001"
ARGS = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"


def _cycle(node: str, conf: dict, pod: str, cid: str = CID) -> list:
    """ADD, CHECK, DEL; each must succeed."""
    add = Lab.run_plugin(node, "ADD", conf, cid, Lab.netns_path(pod), args=ARGS)
    assert add.rc == 0, add.stdout + add.stderr[-2000:]
    check = Lab.run_plugin(node, "CHECK", {**conf, "prevResult": add.out}, cid, Lab.netns_path(pod), args=ARGS)
    assert check.rc == 0, check.stdout + check.stderr[-2000:]
    delete = Lab.run_plugin(node, "DEL", conf, cid, Lab.netns_path(pod), args=ARGS)
    assert delete.rc == 0, delete.stdout + delete.stderr[-2000:]
    return [add, check, delete]


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- levels and the per-operation lines ------------------------------------------------------------


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_level_decides_what_lands_in_the_file(level, lab, node, make_pod, pool, conf, etcd, tmp_path):
    log_file = tmp_path / "cni.log"
    netconf_ = conf(log_level=level, log_file_path=str(log_file))
    add, check, _ = _cycle(node, netconf_, make_pod())
    address = add.out["ips"][0]["address"]
    failed = Lab.run_plugin(node, "ADD", conf(log_level=level, log_file_path=str(log_file),
                                              ipam={"type": "calico-ipam", "ipv4_pools": ["nope"]}),
                            "log-fails", Lab.netns_path(make_pod()), args=ARGS)
    assert failed.rc != 0 and failed.out["code"] == 7
    lines = _lines(log_file)
    levels = {re.search(r"\[(\w+)\]", line).group(1) for line in lines if re.search(r"\[(\w+)\]", line)}
    op_line = re.compile(r"\]\[\d+\] cni_calico/plugin\.py \d+: (ADD|CHECK|DEL) container=")
    ops = [line for line in lines if op_line.search(line)]
    assert any("ADD failed" in line and "nope" in line for line in lines if "[ERROR]" in line)
    if level == "debug":
        assert "DEBUG" in levels and len(ops) == 3
    elif level == "info":
        assert "DEBUG" not in levels and len(ops) == 3
    else:
        assert levels <= {"WARNING", "ERROR", "FATAL"} and ops == []
    if ops:
        add_line, check_line, del_line = ops
        for line, op in ((add_line, "ADD"), (check_line, "CHECK"), (del_line, "DEL")):
            assert re.search(rf"{op} container={CID} pod=shop/cart-1 address={re.escape(address)} .*took \d+ ms$",
                             line), line
        assert "[INFO]" in add_line and "[INFO]" in check_line and "[INFO]" in del_line
        # Calico's shape: `2024-06-13 11:13:52.121 [INFO][8] startup/startup.go 425: message`
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[INFO\]\[\d+\] cni_calico/plugin\.py \d+: ADD ",
                        add_line), add_line
    assert_nothing_left(lab, node, etcd)


# --- rotation --------------------------------------------------------------------------------------


def test_tiny_max_size_rotates_into_numbered_files_keeping_max_count(lab, node, make_pod, pool, conf, etcd,
                                                                      tmp_path):
    log_file = tmp_path / "rot" / "cni.log"
    netconf_ = conf(log_level="debug", log_file_path=str(log_file), log_file_max_size=0.0005, log_file_max_count=2)
    for i in range(3):
        _cycle(node, netconf_, make_pod(), cid=f"rot{i:013d}")
    names = sorted(os.listdir(log_file.parent))
    assert names == ["cni.log", "cni.log.1", "cni.log.2"], names
    longest = max(len(line) + 1 for n in names for line in (log_file.parent / n).read_text().splitlines())
    for name in names:  # 524 bytes at most, unless one line alone is longer (a line never splits)
        size = (log_file.parent / name).stat().st_size
        assert 0 < size <= max(524, longest), (name, size)
    everything = "".join((log_file.parent / n).read_text() for n in names)
    assert "DEL container=rot0000000000002" in everything  # the newest lines survive
    assert "ADD container=rot0000000000000" not in everything  # the oldest were rotated out
    assert_nothing_left(lab, node, etcd)


def test_rotation_removes_files_past_max_age_and_past_max_count(lab, node, make_pod, pool, conf, etcd, tmp_path):
    log_file = tmp_path / "cni.log"
    log_file.write_text("x" * 3000 + "\n")  # full already: the first line rotates
    old, young, beyond = (tmp_path / "cni.log.1"), (tmp_path / "cni.log.2"), (tmp_path / "cni.log.7")
    for path, days in ((old, 40), (young, 1), (beyond, 1)):
        path.write_text(f"{path.name}\n")
        stamp = time.time() - days * 86400
        os.utime(path, (stamp, stamp))
    (tmp_path / "cni.log.keep").write_text("not ours\n")
    netconf_ = conf(log_level="info", log_file_path=str(log_file), log_file_max_size=0.002, log_file_max_count=3,
                    log_file_max_age=30)
    _cycle(node, netconf_, make_pod())
    names = sorted(os.listdir(tmp_path))
    # cni.log.1 was the full file; the 40-day-old one (moved to .2) is gone, the young one is .3,
    # and .7 (past max_count) is gone.
    assert [n for n in names if n.startswith("cni.log")] == ["cni.log", "cni.log.1", "cni.log.3", "cni.log.keep"]
    assert (tmp_path / "cni.log.1").read_text().startswith("xxx")
    assert (tmp_path / "cni.log.3").read_text() == "cni.log.2\n"
    assert "ADD container=" in log_file.read_text()
    assert_nothing_left(lab, node, etcd)


@pytest.mark.parametrize(("key", "value"), [("log_file_max_size", 0), ("log_file_max_size", "10"),
                                            ("log_file_max_count", 0), ("log_file_max_count", 1.5),
                                            ("log_file_max_age", -1)])
def test_bad_rotation_settings_are_code_7(key, value, node, conf, make_pod):
    run = Lab.run_plugin(node, "ADD", conf(**{key: value}), CID, Lab.netns_path(make_pod()))
    assert run.rc != 0 and run.out["code"] == 7 and key in run.out["msg"]


# --- nothing secret; stdout stays one JSON document --------------------------------------------------


def test_log_never_holds_the_etcd_key(lab, tls_etcd, tls_node, make_pod, tmp_path):
    certs = tls_etcd.tls
    log_file = tmp_path / "cni.log"
    conf = netconf(tls_etcd, etcd_ca_cert_file=certs.ca, etcd_cert_file=certs.cert(), etcd_key_file=certs.key(),
                   log_level="debug", log_file_path=str(log_file))
    runs = _cycle(tls_node, conf, make_pod())
    # a failing call too, after the key was used
    runs.append(Lab.run_plugin(tls_node, "ADD", {**conf, "ipam": {"type": "calico-ipam", "ipv4_pools": ["nope"]}},
                               "log-fails", Lab.netns_path(make_pod()), args=ARGS))
    assert runs[-1].rc != 0
    text = log_file.read_text()
    assert "ADD container=" in text
    key_lines = {line for name in ("client", "server") for line in open(certs.key(name)).read().splitlines()
                 if line and "-----" not in line}
    for out in [text] + [r.stderr + r.stdout for r in runs]:
        assert not any(line in out for line in key_lines)
        assert "PRIVATE KEY" not in out
    assert_nothing_left(lab, tls_node, tls_etcd)


def test_private_keys_in_a_message_are_redacted(tmp_path):
    """Defence in depth, in-process: even a line quoting a key does not carry it to the file."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logsetup._file_handler, logsetup._file_settings)
    log_file = tmp_path / "cni.log"
    try:
        logsetup.configure("info", str(log_file))
        key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
        logging.getLogger("cni_calico.test").warning("bad file %s", key)
        logsetup._file_handler.flush()
    finally:
        if logsetup._file_handler is not None:
            root.removeHandler(logsetup._file_handler)
            logsetup._file_handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
        logsetup._file_handler, logsetup._file_settings = saved[2], saved[3]
    text = log_file.read_text()
    assert "bad file [private key redacted]" in text and "MIIEvQ" not in text


def test_stdout_is_exactly_one_json_document_at_debug(lab, node, make_pod, pool, conf, etcd, tmp_path):
    netconf_ = conf(log_level="debug", log_file_path=str(tmp_path / "cni.log"))
    add, check, delete = _cycle(node, netconf_, make_pod())
    json.loads(add.stdout)  # the whole of stdout parses: one document, no log line around it
    assert add.stdout.count("\n") == 1 and add.stdout.endswith("}\n")
    assert check.stdout == "" and delete.stdout == ""
    assert "[DEBUG]" in add.stderr  # the log went to stderr (and the file) instead
    failed = Lab.run_plugin(node, "ADD", {**netconf_, "ipam": {"type": "calico-ipam", "ipv4_pools": ["nope"]}},
                            "log-bad", Lab.netns_path(make_pod()), args=ARGS)
    assert failed.rc != 0 and set(json.loads(failed.stdout)) == {"cniVersion", "code", "msg", "details"}
    assert failed.stdout.count("\n") == 1
    version = Lab.run_plugin(node, "VERSION", netconf_)
    assert json.loads(version.stdout)["supportedVersions"] and version.stdout.count("\n") == 1
    assert_nothing_left(lab, node, etcd)


WRITER = """
import logging, sys
from cni_calico import logsetup
logsetup.configure("info", sys.argv[1], 0.002, 200, 30)
log = logging.getLogger("writer")
for i in range(200):
    log.info("writer %s line %03d %s", sys.argv[2], i, "y" * 40)
"""


def test_many_processes_share_one_rotating_file(tmp_path):
    """Eight writers at once: every line lands exactly once, files stay about max size, numbers have no gap."""
    log_file = tmp_path / "cni.log"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log_file), str(w)], cwd=REPO) for w in range(8)]
    assert all(p.wait(60) == 0 for p in procs)
    names = sorted(os.listdir(tmp_path), key=lambda n: int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0)
    assert names == ["cni.log"] + [f"cni.log.{i}" for i in range(1, len(names))] and len(names) > 10
    lines = [line for n in names for line in (tmp_path / n).read_text().splitlines()]
    written = [re.search(r"writer (\d) line (\d+)", line).groups() for line in lines]
    assert sorted(written) == sorted((str(w), f"{i:03d}") for w in range(8) for i in range(200))
    line_size = max(len(line) + 1 for line in lines)
    for n in names:
        assert (tmp_path / n).stat().st_size <= 2097 + 8 * line_size, n
