"""Fixtures over tests/lab.py: a real etcd per session (wiped per test), nodes and pods per test.

Everything is torn down in the fixtures' finalisers, also when a test fails.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab import Certs, Etcd, Lab, add_pool, netconf

NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="namespace tests need root (CI runs as root)")


def pytest_collection_modifyitems(config, items):
    missing = [tool for tool in ("etcd", "ip", "socat", "ping") if shutil.which(tool) is None]
    for item in items:
        if "integration" in str(item.fspath) and missing:
            item.add_marker(pytest.mark.skip(reason=f"missing tools {missing}: run `make deps`"))


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("calico-run")
    os.environ["CALICO_RUN_DIR"] = str(run_dir)
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="session")
def etcd_server(lab) -> Etcd:
    return lab.etcd()


@pytest.fixture
def etcd(etcd_server) -> Etcd:
    """The session's etcd, empty at the start of each test."""
    etcd_server.wipe()
    yield etcd_server
    etcd_server.wipe()


def _fresh_node(lab: Lab, etcd: Etcd):
    ns = lab.node(etcd)
    yield ns
    _remove(lab, ns)


@pytest.fixture
def node(lab, etcd):
    """A fresh node namespace with etcd bridged in; removed after the test."""
    yield from _fresh_node(lab, etcd)


@pytest.fixture(scope="module")
def tls_etcd(lab, tmp_path_factory):
    """An etcd of the module's own that takes mutual TLS only (certificates made by the test), with a pool."""
    etcd = lab.etcd(tls=Certs(tmp_path_factory.mktemp("certs")))
    add_pool(etcd, "tls-pool", "10.70.0.0/24")
    yield etcd
    etcd.stop()


@pytest.fixture
def tls_node(lab, tls_etcd):
    """A fresh node namespace with the TLS etcd bridged in."""
    yield from _fresh_node(lab, tls_etcd)


@pytest.fixture
def make_pod(lab):
    made: list[str] = []

    def make() -> str:
        ns = lab.pod()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        _remove(lab, ns)


@pytest.fixture
def pool(etcd):
    add_pool(etcd, "pool1", "10.60.0.0/24", 26)
    return "10.60.0.0/24"


@pytest.fixture
def conf(etcd):
    def make(**kw) -> dict:
        return netconf(etcd, **kw)

    return make


def _remove(lab: Lab, ns: str) -> None:
    from tests.lab import sh

    # Stop what runs inside (the etcd bridge) before the namespace goes.
    for proc in list(lab.procs):
        if proc.args and ns in proc.args and proc.poll() is None:
            proc.kill()
            proc.wait()
            lab.procs.remove(proc)
    sh("ip", "netns", "del", ns, check=False)
    if ns in lab.namespaces:
        lab.namespaces.remove(ns)
