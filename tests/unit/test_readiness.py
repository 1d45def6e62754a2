"""The readiness file calico-node writes and `calico-node --ready` / `calicoctl node status` read."""

from __future__ import annotations

import os

from cni_calico.node import main, readiness


def test_ready_not_ready_and_not_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CALICO_RUN_DIR", str(tmp_path))
    assert readiness.read(str(tmp_path)) is None and main.ready() == 1
    assert "it is not running" in capsys.readouterr().err
    readiness.write(str(tmp_path), [])
    assert readiness.read(str(tmp_path)) == [] and main.ready() == 0
    readiness.write(str(tmp_path), ["IPIP pool p (10.0.0.0/16) selects this node, but …"])
    assert main.ready() == 1 and "not ready: IPIP pool p (10.0.0.0/16)" in capsys.readouterr().err
    readiness.clear(str(tmp_path))
    readiness.clear(str(tmp_path))  # twice: nothing to remove is fine
    assert readiness.read(str(tmp_path)) is None
    (tmp_path / readiness.FILE).write_text("{not json")
    assert readiness.read(str(tmp_path)) is None


def test_liveness_follows_the_writer_and_its_heartbeat(tmp_path):
    import json
    import subprocess
    import time

    from cni_calico.node import probes

    state = readiness.write(str(tmp_path), [], in_sync=True)
    assert state.alive() and state.live_problems() == [] and probes.felix_live(str(tmp_path)) == []
    assert state.live_problems(now=time.time() + readiness.LIVE_TIMEOUT + 5)[0].startswith(
        "calico-node's loop has not turned for")
    assert probes.felix_ready(str(tmp_path)) == []
    readiness.write(str(tmp_path), [], in_sync=False)
    assert probes.felix_live(str(tmp_path)) == []
    assert probes.felix_ready(str(tmp_path)) == [
        "the dataplane is not in sync with etcd (etcd unreachable or being read)"]
    # A writer that is gone (a SIGKILLed calico-node leaves its file): neither live nor ready.
    child = subprocess.Popen(["sleep", "30"])
    doc = json.loads((tmp_path / readiness.FILE).read_text())
    doc.update(pid=child.pid, startTime=readiness.start_time(child.pid))
    (tmp_path / readiness.FILE).write_text(json.dumps(doc))
    assert probes.felix_live(str(tmp_path)) == []
    child.kill()
    child.wait()
    assert probes.felix_live(str(tmp_path)) == [f"calico-node (pid {child.pid}) is not running"]
    # Same pid, another process (pid reuse): told apart by the start time.
    doc.update(pid=os.getpid(), startTime=readiness.start_time(os.getpid()) - 1)
    (tmp_path / readiness.FILE).write_text(json.dumps(doc))
    assert probes.felix_live(str(tmp_path)) == [f"calico-node (pid {os.getpid()}) is not running"]


def test_bird_readiness_follows_calicos_rule():
    from cni_calico.node.probes import THRESHOLD, bgp_problems

    up, down = ("192.168.0.2", "Established"), ("192.168.0.3", "Connect")
    assert bgp_problems([], False, 1.0) == []  # no peers: ready
    assert bgp_problems([up, down], False, 1.0) == ["BGP not established with 192.168.0.3"]  # at start: all
    assert bgp_problems([up], True, 1.0) == ["graceful restart in progress"]
    assert bgp_problems([up], False, 1.0) == []
    assert bgp_problems([up, down], False, THRESHOLD + 1) == []  # later: one is enough
    assert bgp_problems([down], False, THRESHOLD + 1) == ["BGP not established with 192.168.0.3"]
    assert bgp_problems([up, down], False, THRESHOLD + 1, threshold=THRESHOLD + 10) != []  # -threshold-time


def test_threshold_time_takes_go_durations(capsys):
    import pytest

    from cni_calico.node.probes import parse_duration

    assert [parse_duration(t) for t in ("30s", "1m30s", "500ms", "0", "1.5h", ".5s")] == [30, 90, 0.5, 0, 5400, 0.5]
    for bad in ("30", "abc", "1m-3s", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(SystemExit) as done:
        main.main(["-bird-ready", "-threshold-time", "soon"])
    assert done.value.code == 2 and "'soon' is not a duration" in capsys.readouterr().err


def test_sd_notify_sends_one_datagram(tmp_path):
    import socket

    from cni_calico.node import sdnotify

    assert sdnotify.notify("READY=1", env={}) is False  # not under systemd: nothing
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sdnotify.notify("READY=1\nSTATUS=ok", env={"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    abstract = f"@cni-calico-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract[1:])
        assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": abstract}) is True
        assert sock.recv(64) == b"READY=1"
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


def test_identity_conflicts_and_drift():
    from cni_calico.node.identity import Conflict, conflicts, drifted

    others = {"me": {"ipv4Address": "10.0.0.1/24"}, "a": {"ipv4Address": "10.0.0.1/16"},
              "b": {"ipv6Address": "fd00::1/64"}, "c": None, "d": {"ipv4Address": "garbage"}}
    found = conflicts(others, "me", "10.0.0.1/24", "fd00::1")
    assert found == [Conflict("a", 4, "10.0.0.1"), Conflict("b", 6, "fd00::1")]
    assert str(found[0]) == "Calico node 'a' is already using the IPv4 address 10.0.0.1."
    assert conflicts(others, "me", "10.0.0.2/24", "") == []
    assert drifted({"ipv4Address": "10.0.0.1/24"}, "10.0.0.1/24", "") == {}
    assert drifted({"ipv4Address": "10.9.9.9/24", "asNumber": 1}, "10.0.0.1/24", "fd00::1/64") == {
        "ipv4Address": "10.0.0.1/24", "ipv6Address": "fd00::1/64"}
    assert drifted(None, "", "") == {}
