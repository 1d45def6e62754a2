"""Mutual TLS to etcd with certificates made here by openssl: the right ones work, wrong ones say which file."""

from __future__ import annotations

import os

from tests.integration.helpers import assert_nothing_left
from tests.lab import Certs, Lab, netconf

CID = "tls0000000000001"


def _conf(etcd, **tls):
    certs = etcd.tls
    conf = netconf(etcd, etcd_ca_cert_file=certs.ca, etcd_cert_file=certs.cert(), etcd_key_file=certs.key())
    conf.update(tls)
    return conf


def test_right_certificates_work(lab, tls_etcd, tls_node, make_pod):
    pod = make_pod()
    add = Lab.run_plugin(tls_node, "ADD", _conf(tls_etcd), CID, Lab.netns_path(pod))
    assert add.rc == 0, add.stdout + add.stderr[-1000:]
    assert add.out["ips"][0]["address"].startswith("10.70.0.")
    assert Lab.run_plugin(tls_node, "DEL", _conf(tls_etcd), CID, Lab.netns_path(pod)).rc == 0
    assert_nothing_left(lab, tls_node, tls_etcd)


def test_missing_key_file_is_named(lab, tls_etcd, tls_node, make_pod):
    run = Lab.run_plugin(tls_node, "ADD", _conf(tls_etcd, etcd_key_file="/nonexistent/client.key"), CID,
                         Lab.netns_path(make_pod()))
    assert run.rc != 0 and run.out["code"] == 7
    assert "/nonexistent/client.key" in run.out["msg"]
    assert_nothing_left(lab, tls_node, tls_etcd)


def test_wrong_ca_is_a_clear_error_naming_the_file(lab, tls_etcd, tls_node, make_pod, tmp_path):
    other = Certs(tmp_path / "other")
    run = Lab.run_plugin(tls_node, "ADD", _conf(tls_etcd, etcd_ca_cert_file=other.ca), CID, Lab.netns_path(make_pod()))
    assert run.rc != 0 and run.out["code"] == 11
    assert other.ca in run.out["msg"]
    assert_nothing_left(lab, tls_node, tls_etcd)


def test_key_never_logged_and_loose_permissions_warned(lab, tls_etcd, tls_node, make_pod, tmp_path):
    key = tmp_path / "loose.key"
    key.write_bytes(open(tls_etcd.tls.key(), "rb").read())
    os.chmod(key, 0o644)
    pod = make_pod()
    conf = _conf(tls_etcd, etcd_key_file=str(key), log_file_path=str(tmp_path / "cni.log"))
    add = Lab.run_plugin(tls_node, "ADD", conf, CID, Lab.netns_path(pod))
    assert add.rc == 0, add.stdout
    assert "readable by users other than its owner" in add.stderr and str(key) in add.stderr
    secret = open(key).read().splitlines()[1]  # a line of the key's base64 body
    logged = (tmp_path / "cni.log").read_text() + add.stderr + add.stdout
    assert secret not in logged
    assert Lab.run_plugin(tls_node, "DEL", conf, CID, Lab.netns_path(pod)).rc == 0
