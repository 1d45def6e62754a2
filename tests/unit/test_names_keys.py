"""Derived names (host veth, endpoint, handle) and the /calico etcd key layout (cni_calico.names, cni_calico.keys)."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni_calico import keys, names

# --- host veth names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "namespace,pod",
    [("default", "nginx-7c5ddbdf54-x2v9k"), ("kube-system", "coredns-0"), ("rbd-system", "rbd-api-5f8c9d")],
)
def test_k8s_host_veth_name_is_cali_plus_sha1(namespace, pod):
    expected = "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]
    got = names.host_veth_name("0123456789abcdef", namespace, pod)
    assert got == expected
    assert len(got) == 15


def test_known_k8s_host_veth_name():
    digest = hashlib.sha1(b"default.nginx").hexdigest()
    assert names.host_veth_name("cid", "default", "nginx") == "cali" + digest[:11] == "calic440f455693"
    assert names.host_veth_name("cid", "default", "nginx") != names.host_veth_name("cid", "default", "nginx2")
    # The container ID plays no part under Kubernetes: a restarted pod keeps its veth name.
    assert names.host_veth_name("other", "default", "nginx") == names.host_veth_name("cid", "default", "nginx")


def test_non_k8s_host_veth_name_is_container_id_prefix():
    assert names.host_veth_name("0123456789abcdef0123") == "cali0123456789a"
    assert names.host_veth_name("abc") == "caliabc"


@pytest.mark.parametrize("namespace,pod", [("default", ""), ("", "nginx")])
def test_half_k8s_identity_falls_back_to_container_id(namespace, pod):
    assert names.host_veth_name("0123456789abcdef", namespace, pod) == "cali0123456789a"


@given(
    container_id=st.text(alphabet="abcdef0123456789", min_size=1, max_size=64),
    namespace=st.text(min_size=0, max_size=63),
    pod=st.text(min_size=0, max_size=253),
)
def test_host_veth_name_fits_ifnamsiz(container_id, namespace, pod):
    name = names.host_veth_name(container_id, namespace, pod)
    assert name.startswith("cali")
    assert len(name) <= 15


# --- endpoint names and handles --------------------------------------------------------------------


def test_k8s_endpoint_name():
    assert names.endpoint_name("node1", "cid", "eth0", pod="nginx") == "node1-k8s-nginx-eth0"


def test_cni_endpoint_name():
    assert names.endpoint_name("node1", "abc123", "eth0") == "node1-cni-abc123-eth0"


def test_endpoint_name_doubles_dashes_in_every_part():
    assert (
        names.endpoint_name("worker-1", "cid", "net-1", pod="nginx-7c5d-x2v9k")
        == "worker--1-k8s-nginx--7c5d--x2v9k-net--1"
    )
    assert names.endpoint_name("worker-1", "abc-123", "eth-0") == "worker--1-cni-abc--123-eth--0"


def test_endpoint_names_of_different_parts_cannot_collide():
    # Without doubling, ("a-k8s", "b") and ("a", "k8s-b") would both give "a-k8s-k8s-b-eth0".
    first = names.endpoint_name("a-k8s", "c", "eth0", pod="b")
    second = names.endpoint_name("a", "c", "eth0", pod="k8s-b")
    assert first != second


def test_handle_id():
    assert names.handle_id("k8s-pod-network", "0123abc") == "k8s-pod-network.0123abc"


# --- keys ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr,key",
    [
        ("10.0.0.0/26", "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"),
        ("192.168.3.64/26", "/calico/ipam/v2/assignment/ipv4/block/192.168.3.64-26"),
        ("10.0.0.7/32", "/calico/ipam/v2/assignment/ipv4/block/10.0.0.7-32"),
        ("fd00::/122", "/calico/ipam/v2/assignment/ipv6/block/fd00::-122"),
        ("fd00:1:2::40/122", "/calico/ipam/v2/assignment/ipv6/block/fd00:1:2::40-122"),
    ],
)
def test_block_key_round_trip(cidr, key):
    assert keys.block(cidr) == key
    assert keys.cidr_from_block_key(key) == cidr
    assert key.startswith(keys.block_dir(6 if ":" in cidr else 4))


def test_block_dirs():
    assert keys.block_dir(4) == "/calico/ipam/v2/assignment/ipv4/block/"
    assert keys.block_dir(6) == "/calico/ipam/v2/assignment/ipv6/block/"


def test_affinity_keys():
    assert keys.affinity("node1", "10.0.0.64/26") == "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.64-26"
    assert keys.affinity("node1", "fd00::40/122") == "/calico/ipam/v2/host/node1/ipv6/block/fd00::40-122"
    assert keys.affinity_dir("node-2", 6) == "/calico/ipam/v2/host/node-2/ipv6/block/"
    assert keys.cidr_from_block_key(keys.affinity("node1", "10.0.0.64/26")) == "10.0.0.64/26"


def test_handle_and_config_keys():
    assert keys.handle("k8s-pod-network.abc") == "/calico/ipam/v2/handle/k8s-pod-network.abc"
    assert keys.handle_dir() == "/calico/ipam/v2/handle/"
    assert keys.ipam_config() == "/calico/ipam/v2/config"


def test_namespaced_resource_keys():
    base = "/calico/resources/v3/projectcalico.org"
    wep = keys.resource("workloadendpoints", "n1-k8s-p-eth0", "default")
    assert wep == f"{base}/workloadendpoints/default/n1-k8s-p-eth0"
    assert keys.resource("networkpolicies", "allow", "ns1") == f"{base}/networkpolicies/ns1/allow"
    assert keys.resource_dir("workloadendpoints", "ns1") == f"{base}/workloadendpoints/ns1/"
    # Without a namespace: the directory of every namespace's resources.
    assert keys.resource_dir("workloadendpoints") == f"{base}/workloadendpoints/"


def test_cluster_scoped_resource_keys_ignore_a_namespace():
    base = "/calico/resources/v3/projectcalico.org"
    assert keys.resource("ippools", "pool1") == f"{base}/ippools/pool1"
    assert keys.resource("ippools", "pool1", "default") == f"{base}/ippools/pool1"
    assert keys.resource("nodes", "node1") == f"{base}/nodes/node1"
    assert keys.resource_dir("globalnetworkpolicies", "ns") == f"{base}/globalnetworkpolicies/"


@given(st.ip_addresses(v=4), st.integers(min_value=8, max_value=32))
def test_v4_block_key_round_trip_property(addr, prefix):
    cidr = str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
    assert keys.cidr_from_block_key(keys.block(cidr)) == cidr


@given(st.ip_addresses(v=6), st.integers(min_value=64, max_value=128))
def test_v6_block_key_round_trip_property(addr, prefix):
    cidr = str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
    assert keys.block(cidr).startswith(keys.block_dir(6))
    assert keys.cidr_from_block_key(keys.block(cidr)) == cidr
