"""`calico-node --install-cni` into temporary host directories: the bundle swapped in with its links,
the TLS files, the kubeconfig from a service account, the conflist with Calico's placeholders
filled, and the kubeconfig rewritten when the token rotates."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import yaml

from cni_calico.kube import load_kubeconfig
from cni_calico.node.install_cni import InstallConfig, InstallError, install


@pytest.fixture
def host(tmp_path):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("token-1")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    bundle = tmp_path / "bundle"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "calico").write_text("#!/bin/sh\n")
    (bundle / "_internal" / "lib.so").write_text("x")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "etcd-ca").write_text("CA")
    (secrets / "etcd-cert").write_text("CERT")
    (secrets / "etcd-key").write_text("KEY")
    env = {"CNI_BIN_DIR": str(tmp_path / "bin"), "CNI_CONF_DIR": str(tmp_path / "net.d"),
           "CNI_CALICO_BUNDLE": str(bundle), "TLS_ASSETS_DIR": str(secrets), "SLEEP": "false",
           "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "ETCD_ENDPOINTS": "https://10.0.0.5:2379", "KUBERNETES_NODE_NAME": "node-a", "CNI_MTU": "1440"}
    cfg = InstallConfig.from_env(env)
    cfg.sa_dir = str(sa)
    return tmp_path, cfg


def test_installs_bundle_tls_kubeconfig_and_conflist(host):
    tmp, cfg = host
    assert install(cfg) == 0
    assert os.readlink(tmp / "bin" / "calico") == "cni-calico/calico"
    assert os.readlink(tmp / "bin" / "calico-ipam") == "cni-calico/calico"
    assert (tmp / "bin" / "cni-calico" / "_internal" / "lib.so").read_text() == "x"
    assert oct((tmp / "net.d" / "calico-tls" / "etcd-key").stat().st_mode & 0o777) == "0o600"
    conf = json.loads((tmp / "net.d" / "10-calico.conflist").read_text())
    calico = conf["plugins"][0]
    assert [p["type"] for p in conf["plugins"]] == ["calico", "portmap", "bandwidth"]
    assert calico["etcd_endpoints"] == "https://10.0.0.5:2379" and calico["mtu"] == 1440
    assert calico["nodename"] == "node-a"
    assert calico["etcd_key_file"] == "/etc/cni/net.d/calico-tls/etcd-key"  # the host's path
    assert calico["kubernetes"]["kubeconfig"] == "/etc/cni/net.d/calico-kubeconfig"
    kubeconfig = tmp / "net.d" / "calico-kubeconfig"
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    yaml.safe_load(kubeconfig.read_text())
    access = load_kubeconfig(str(kubeconfig))  # the plugin's own reader takes it
    assert access.server == "https://10.96.0.1:443" and access.token == "token-1" and "MIIB" in access.ca_data
    # Installing again swaps the bundle in whole and leaves nothing behind.
    assert install(cfg) == 0
    assert sorted(os.listdir(tmp / "bin")) == ["calico", "calico-ipam", "cni-calico"]


def test_kubeconfig_follows_token_rotation(host):
    tmp, cfg = host
    cfg.sleep = True
    stop = threading.Event()
    thread = threading.Thread(target=install, args=(cfg, stop, 0.05), daemon=True)
    thread.start()
    kubeconfig = tmp / "net.d" / "calico-kubeconfig"
    deadline = time.monotonic() + 10
    while not kubeconfig.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp / "sa" / "token").write_text("token-2")
    while "token-2" not in kubeconfig.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(5)
    assert load_kubeconfig(str(kubeconfig)).token == "token-2"


def test_a_template_that_is_not_json_is_refused(host):
    _, cfg = host
    cfg.template = '{"mtu": __CNI_MTU__, '
    with pytest.raises(InstallError, match="not JSON"):
        install(cfg)
