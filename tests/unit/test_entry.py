"""`calico -v`, `calico-ipam -v`, `calico-node -v` (and `--version`): the version alone, as Calico's binaries.

Calico's `calico -v` prints just its version string (`v3.27.0`); ours prints the package version
(setup.cfg's, which is `cni_calico.__version__`) in the same shape and exits 0, instead of answering the
flag with a CNI error as a plugin call without CNI_COMMAND would.
"""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from cni_calico import __version__, entry
from tests.lab import REPO


@pytest.mark.parametrize("name", ["calico", "calico-ipam", "calico-node"])
@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_flag_prints_the_version_alone(capsys, monkeypatch, name, flag):
    monkeypatch.delenv("CNI_COMMAND", raising=False)
    assert entry.main([f"/opt/cni/bin/{name}", flag]) == 0
    out = capsys.readouterr()
    assert out.out == f"v{__version__}\n" and not out.err


def test_version_has_calicos_shape_and_is_the_package_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__), __version__
    setup = (REPO / "setup.cfg").read_text()
    assert re.search(r"^version = attr: cni_calico.__version__$", setup, re.M), "setup.cfg takes its version elsewhere"


def test_version_flag_through_python_m_and_the_plain_bundle_name(capsys):
    """`python -m cni_calico calico-ipam -v` (the name as first argument) answers it too."""
    assert entry.main(["cni_calico", "calico-ipam", "-v"]) == 0
    assert capsys.readouterr().out == f"v{__version__}\n"


def test_calico_without_a_flag_is_still_a_cni_plugin(capsys, monkeypatch):
    """No flag: CNI_COMMAND decides as before (VERSION answers the version list, not `v…`)."""
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "1.0.0"}')))
    assert entry.main(["/opt/cni/bin/calico"]) == 0
    assert "1.0.0" in json.loads(capsys.readouterr().out)["supportedVersions"]


def test_calicoctl_keeps_its_own_version_command(capsys):
    """calicoctl has `calicoctl version`, as Calico's; `-v` is not taken by the version shortcut."""
    assert entry.main(["calicoctl", "version", "--client"]) == 0
    assert capsys.readouterr().out == f"Client Version:    {__version__}\nGit commit:        unknown\n"


@pytest.mark.parametrize("name", ["calico", "calico-ipam"])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_plugins_answer_help_with_their_usage(capsys, name, flag):
    """The plugins' --help is argparse-shaped (build/make_man.py makes their man pages from it)."""
    assert entry.main([f"/opt/cni/bin/{name}", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} [-h] [-v]\n\n") and "\noptions:\n" in out and "CNI_COMMAND" in out
    assert max(len(line) for line in out.splitlines()) <= 80
