"""Fixtures over tests/lab.py: a real etcd per session (wiped per test), nodes and pods per test.

Everything is torn down in the fixtures' finalisers, also when a test fails.
Helpers belong in tests/lab.py (or tests/integration/helpers.py, cluster.py);
this file defines fixtures only.

Fixtures:
    lab          (session) the `Lab`; CALICO_RUN_DIR points at a fresh temporary directory.
    etcd_server  (session) the lab's one etcd on loopback.
    etcd         the session's etcd, emptied of /calico before and after each test.
    node         a fresh node namespace with `etcd` bridged in; removed after the test.
    tls_etcd     (module) an etcd of the module's own that takes mutual TLS only, with pool tls-pool.
    tls_node     a fresh node namespace with `tls_etcd` bridged in; removed after the test.
    cluster      a simulated cluster (tests/integration/cluster.py); afterwards the machine's own iptables
                 and ipsets are checked to hold nothing of ours. Some modules define their own.
    make_pod     a factory: each call makes a pod namespace; all are removed after the test.
    pool         pool1 = 10.60.0.0/24 (blocks of /26) in `etcd`; the value is its CIDR.
    conf         a factory: conf(**kw) is `netconf(etcd, **kw)`, the plugin's network config.
    kube_apiserver (module) a real kube-apiserver (tests/kube_apiserver.py) on loopback, storing into
                 the session's etcd under its own prefix; skipped when `make kube-apiserver` has not
                 built it. Started once, stopped by PID at the end of the session.

Hook: pytest_collection_modifyitems skips the integration tests when etcd, ip, socat or ping is missing.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab import Certs, Etcd, Lab, add_pool, netconf


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


@pytest.fixture
def node(lab, etcd):
    """A fresh node namespace with etcd bridged in; removed after the test."""
    ns = lab.node(etcd)
    yield ns
    lab.remove_netns(ns)


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
    ns = lab.node(tls_etcd)
    yield ns
    lab.remove_netns(ns)


@pytest.fixture
def cluster(lab, etcd):
    """A simulated cluster (tests/integration/cluster.py), checked afterwards to have left the machine's own
    iptables and ipsets alone. Some test modules define their own."""
    from tests.integration.cluster import checked_cluster

    yield from checked_cluster(lab, etcd)


@pytest.fixture
def make_pod(lab):
    made: list[str] = []

    def make() -> str:
        ns = lab.pod()
        made.append(ns)
        return ns

    yield make
    for ns in made:
        lab.remove_netns(ns)


@pytest.fixture
def pool(etcd):
    add_pool(etcd, "pool1", "10.60.0.0/24", 26)
    return "10.60.0.0/24"


@pytest.fixture
def conf(etcd):
    def make(**kw) -> dict:
        return netconf(etcd, **kw)

    return make



# Module-scoped: a kube-apiserver reads the session's etcd on its own (leases, compaction checks), and the
# tests after the Kubernetes ones count etcd's requests to prove calico-node quiet at rest.
@pytest.fixture(scope="module")
def kube_apiserver(lab, etcd_server, tmp_path_factory):
    from tests.kube_apiserver import KubeApiServer, binary

    if not binary():
        pytest.skip("no kube-apiserver: run `make kube-apiserver` (builds it from k8s.io/kubernetes with Go)")
    server = KubeApiServer(lab, etcd_server, tmp_path_factory.mktemp("kube-apiserver"))
    try:
        yield server.start()
    finally:
        server.stop()
