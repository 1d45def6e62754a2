"""The readiness file calico-node writes and `calico-node --ready` / `calicoctl node status` read."""

from __future__ import annotations

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
