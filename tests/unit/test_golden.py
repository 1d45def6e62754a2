"""Golden values: the bytes Calico writes under /calico/, field by field, from its Go types and writers
(projectcalico/calico at 87c1590, the v3.32 datastore format: api/pkg/apis/projectcalico/v3,
libcalico-go/lib/backend/model, clientv3's metadata rules, calico-ipam's attributes, calico-node's
start-up). Both directions: what we write is those bytes (up to the values that differ by nature:
uid, timestamps, sequence seeds), and what real Calico writes is read by our code and written back
without losing a field.

Go's encoding/json: struct fields in declaration order, map keys sorted, compact, `<>&` escaped,
whole floats without `.0`, omitempty fields left out when empty (cni_calico.datastore.encode and
cni_calico.v3.layout)."""

from __future__ import annotations

import json
import re

import pytest

from cni_calico import keys
from cni_calico.datastore import KV, encode
from cni_calico.endpoints import EndpointId, build, confirmed, default_profile
from cni_calico.node.config import from_env
from cni_calico.node.startup import ensure_initialized, register_node
from cni_calico.resources import IPPOOL, Resource, validate
from cni_calico.v3 import IPAMConfig, go_time, new_resource, pool_spec
from cni_calico.v3 import Resource as V3Resource
from ipam.allocator import Block
from ipam.assign import AssignArgs, auto_assign
from ipam.store import Handle, IpamStore
from tests.memstore import MemStore

UID = re.compile(r'"uid":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"')
TIME = re.compile(r'"(creationTimestamp|affinity_claim_time)":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"')


def normal(text: str) -> str:
    """The bytes with the values that differ by nature (a uid, a timestamp) replaced by placeholders."""
    return TIME.sub(r'"\1":"T"', UID.sub('"uid":"U"', text))


# --- what we write --------------------------------------------------------------------------------


def test_the_cni_plugins_workload_endpoint_and_profile():
    eid = EndpointId("node1", "3b5a" * 16, "eth0")
    wep = confirmed(build(eid, "cali3b5a3b5a3b5", "0a:58:0a:f4:01:05", ["10.244.1.5/32"], ["net1"]))
    assert normal(encode(wep.to_value())) == (
        '{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"node1-cni-'
        + "3b5a" * 16 + '-eth0","namespace":"default","uid":"U","creationTimestamp":"T","labels":{'
        '"projectcalico.org/namespace":"default","projectcalico.org/orchestrator":"cni"}},"spec":{'
        '"orchestrator":"cni","node":"node1","containerID":"' + "3b5a" * 16 + '","endpoint":"eth0",'
        '"ipNetworks":["10.244.1.5/32"],"profiles":["net1"],"interfaceName":"cali3b5a3b5a3b5",'
        '"mac":"0a:58:0a:f4:01:05"}}')
    assert normal(encode(default_profile("net1").to_value())) == (
        '{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"net1","uid":"U",'
        '"creationTimestamp":"T"},"spec":{"ingress":[{"action":"Allow","source":{"selector":"has(net1)"}}],'
        '"egress":[{"action":"Allow"}],"labelsToApply":{"net1":""}}}')


def test_a_pods_workload_endpoint_ports_as_libcalico_go_writes_them():
    from cni_calico.kube import pod_ports

    eid = EndpointId("node1", "c1", "eth0", "default", "web")
    ports = pod_ports({"spec": {"containers": [{"name": "c", "ports": [
        {"name": "http", "containerPort": 80}, {"containerPort": 8443, "hostPort": 443, "protocol": "TCP"},
        {"name": "dns", "containerPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1", "hostPort": 53}]}]}})
    wep = confirmed(build(eid, "cali12345678901", "ee:ee:ee:ee:ee:ee", ["10.244.1.5/32"], ["kns.default"], {},
                          ports))
    assert encode(wep.to_value()["spec"]).endswith(
        '"interfaceName":"cali12345678901","mac":"ee:ee:ee:ee:ee:ee","ports":['
        '{"name":"http","protocol":"TCP","port":80,"hostPort":0,"hostIP":""},'
        '{"name":"","protocol":"TCP","port":8443,"hostPort":443,"hostIP":""},'
        '{"name":"dns","protocol":"UDP","port":53,"hostPort":53,"hostIP":"10.0.0.1"}]}')
    # Read back in another field order (another writer's): written again as the same bytes.
    value = json.loads(encode(wep.to_value()))
    value["spec"]["ports"] = [dict(reversed(p.items())) for p in value["spec"]["ports"]]
    assert encode(V3Resource.from_value(value).to_value()) == encode(wep.to_value())


def test_ipam_values_after_the_first_address_of_a_node(tmp_path):
    store = MemStore()
    store.put(keys.resource("ippools", "p"), new_resource("IPPool", "p", pool_spec("10.244.1.0/24", 26)).to_value())
    attrs = {"node": "node1", "timestamp": go_time(1787405600123456700)}
    claim = auto_assign(store, AssignArgs("net1.cid", "node1", str(tmp_path), attrs))
    assert claim.cidrs == ["10.244.1.0/32"]  # ordinal 0 first, as Calico's newBlock queue
    block = store.value(keys.block("10.244.1.0/26"))
    seq = block["sequenceNumber"]
    assert normal(encode(block)) == (
        '{"cidr":"10.244.1.0/26","affinity":"host:node1","affinity_claim_time":"T","allocations":[0'
        + ",null" * 63 + '],"unallocated":[' + ",".join(map(str, range(1, 64))) + '],"attributes":[{'
        '"handle_id":"net1.cid","secondary":{"node":"node1","timestamp":"2026-08-22 13:33:20.1234567 +0000 UTC"}}],'
        f'"sequenceNumber":{seq},"sequenceNumberForAllocation":{{"0":{seq - 1}}},"deleted":false}}')
    assert encode(store.value(keys.handle("net1.cid"))) == '{"block":{"10.244.1.0/26":1},"deleted":false}'
    assert encode(store.value(keys.affinity("node1", "10.244.1.0/26"))) == '{"state":"confirmed","deleted":false}'
    IpamStore(store).release_by_handle("net1.cid")
    released = store.value(keys.block("10.244.1.0/26"))
    assert released["attributes"] == [] and released["unallocated"][-1] == 0
    assert released["sequenceNumber"] == seq + 1 and released["sequenceNumberForAllocation"] == {}


def test_ipam_config():
    assert encode(IPAMConfig(strict_affinity=True).to_value()) == '{"strict_affinity":true,"auto_allocate_blocks":true}'
    assert encode(IPAMConfig(True, True, 4, 30).to_value()) == (
        '{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4,"ipCooldownSeconds":30}')
    assert IPAMConfig.from_value(None).auto_allocate_blocks and IPAMConfig.from_value(None).max_blocks == 20
    assert not IPAMConfig.from_value({"strict_affinity": True}).auto_allocate_blocks  # omitempty: absent = false


def test_calicoctl_create_of_a_pool():
    pool = Resource(IPPOOL, {"name": "default-ipv4-ippool"}, {"cidr": "192.168.0.0/16", "ipipMode": "Always",
                                                              "natOutgoing": True})
    validate(pool)
    pool.metadata.update({"uid": "u", "creationTimestamp": "2026-08-22T13:33:20Z"})
    assert encode(pool.to_stored()) == (
        '{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool","uid":"u",'
        '"creationTimestamp":"2026-08-22T13:33:20Z"},"spec":{"cidr":"192.168.0.0/16","vxlanMode":"Never",'
        '"ipipMode":"Always","natOutgoing":true,"blockSize":26,"nodeSelector":"all()",'
        '"allowedUses":["Workload","Tunnel"],"assignmentMode":"Automatic"}}')


def test_calico_node_start_up():
    store = MemStore()
    cfg = from_env({"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379", "AS": "65001",
                    "CLUSTER_TYPE": "k8s,bgp"})
    register_node(store, cfg, "10.0.0.5/24")
    assert normal(encode(store.value(keys.resource("nodes", "node1")))) == (
        '{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node1","uid":"U",'
        '"creationTimestamp":"T","labels":{"kubernetes.io/hostname":"node1"}},"spec":{"bgp":{"asNumber":65001,'
        '"ipv4Address":"10.0.0.5/24"}},"status":{}}')
    ensure_initialized(store, cfg.cluster_type, "node1")
    info = store.value(keys.resource("clusterinformations", "default"))
    assert list(info["spec"]) == ["clusterGUID", "clusterType", "calicoVersion", "datastoreReady"]
    assert re.fullmatch(r"[0-9a-f]{32}", info["spec"]["clusterGUID"])
    assert (info["spec"]["clusterType"], info["spec"]["calicoVersion"], info["spec"]["datastoreReady"]) == (
        "k8s,bgp", "v3.32.0", True)
    tiers = {name: normal(encode(store.value(keys.resource("tiers", name))))
             for name in ("default", "kube-admin", "kube-baseline")}
    assert tiers["default"] == ('{"kind":"Tier","apiVersion":"projectcalico.org/v3","metadata":{"name":"default",'
                                '"uid":"U","creationTimestamp":"T"},"spec":{"order":1000000,"defaultAction":"Deny"},'
                                '"status":{}}')
    assert '"spec":{"order":1000,"defaultAction":"Pass"}' in tiers["kube-admin"]
    assert '"spec":{"order":10000000,"defaultAction":"Pass"}' in tiers["kube-baseline"]
    assert store.value(keys.resource("bgpconfigurations", "default"))["spec"] == {}
    felix = {name: normal(encode(store.value(keys.resource("felixconfigurations", name))))
             for name in ("default", "node.node1")}
    assert felix["default"] == (
        '{"kind":"FelixConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default","uid":"U",'
        '"creationTimestamp":"T"},"spec":{"logSeverityScreen":"Info","reportingInterval":"0s","bpfLogLevel":"",'
        '"bpfConnectTimeLoadBalancing":"TCP","bpfHostNetworkedNATWithoutCTLB":"Enabled","floatingIPs":"Disabled"}}')
    assert felix["node.node1"] == (
        '{"kind":"FelixConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"node.node1","uid":"U",'
        '"creationTimestamp":"T"},"spec":{"defaultEndpointToHostAction":"Return","bpfLogLevel":"",'
        '"bpfConnectTimeLoadBalancing":"TCP","bpfHostNetworkedNATWithoutCTLB":"Enabled","floatingIPs":"Disabled"}}')
    # Again, with another cluster type: the GUID stays, the types merge, nothing else moves.
    guid = info["spec"]["clusterGUID"]
    ensure_initialized(store, "k8s,kubeadm")
    again = store.value(keys.resource("clusterinformations", "default"))["spec"]
    assert again["clusterGUID"] == guid and again["clusterType"] == "k8s,bgp,kubeadm"


def test_start_up_keeps_an_operators_felix_configuration_and_fills_only_what_it_lacks():
    store = MemStore()
    mine = new_resource("FelixConfiguration", "default", {"iptablesRefreshInterval": "30s",
                                                          "logSeverityScreen": "Debug"})
    store.put(keys.resource("felixconfigurations", "default"), mine.to_value())
    ensure_initialized(store, "k8s", "node1")
    spec = store.value(keys.resource("felixconfigurations", "default"))["spec"]
    assert list(spec) == ["iptablesRefreshInterval", "logSeverityScreen", "reportingInterval", "bpfLogLevel",
                          "bpfConnectTimeLoadBalancing", "bpfHostNetworkedNATWithoutCTLB", "floatingIPs"]
    assert spec["logSeverityScreen"] == "Debug" and spec["reportingInterval"] == "0s"
    revision = store.get(keys.resource("felixconfigurations", "default")).mod_revision
    ensure_initialized(store, "k8s", "node1")  # complete now: not written again
    assert store.get(keys.resource("felixconfigurations", "default")).mod_revision == revision


def test_calicoctl_write_of_a_felix_configuration_gets_clientv3s_defaults():
    from cni_calico.ctl.kinds.felix import FELIXCONFIGURATION

    felix = Resource(FELIXCONFIGURATION, {"name": "default"}, {"natOutgoingAddress": "192.168.200.101",
                                                               "iptablesRefreshInterval": "1m0s"})
    validate(felix)
    felix.metadata.update({"uid": "u", "creationTimestamp": "2026-08-22T13:33:20Z"})
    assert encode(felix.to_stored()) == (
        '{"kind":"FelixConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default","uid":"u",'
        '"creationTimestamp":"2026-08-22T13:33:20Z"},"spec":{"iptablesRefreshInterval":"1m0s",'
        '"natOutgoingAddress":"192.168.200.101","bpfLogLevel":"",'
        '"bpfConnectTimeLoadBalancing":"TCP","bpfHostNetworkedNATWithoutCTLB":"Enabled","floatingIPs":"Disabled"}}')


def test_go_encoding_rules():
    assert encode({"selector": "a == 'x' && b < c", "order": 1000000.0, "ratio": 0.5, "name": "é"}) == (
        '{"selector":"a == \'x\' \\u0026\\u0026 b \\u003c c","order":1000000,"ratio":0.5,"name":"é"}')
    assert go_time(1787405600000000000) == "2026-08-22 13:33:20 +0000 UTC"


# --- what real Calico writes, read and written back ----------------------------------------------

REAL_BLOCK = {
    "cidr": "10.244.1.0/26", "affinity": "host:node1", "affinity_claim_time": "2026-08-22T13:33:20Z",
    "allocations": [0, 1] + [None] * 62, "unallocated": list(range(2, 64)),
    "attributes": [
        {"handle_id": "k8s-pod-network.3b5a", "secondary": {"namespace": "default", "node": "node1", "pod": "web-0",
                                                             "timestamp": "2026-08-22 13:33:20.5123456 +0000 UTC"}},
        {"handle_id": "ipip-tunnel-addr-node1", "secondary": {"node": "node1", "type": "ipipTunnelAddress"}}],
    "sequenceNumber": 1787405600123456791, "sequenceNumberForAllocation": {"0": 1787405600123456789,
                                                                          "1": 1787405600123456790},
    "deleted": False,
}
REAL_NODE = {"kind": "Node", "apiVersion": "projectcalico.org/v3",
             "metadata": {"name": "node1", "uid": "3f2b6c1e-1111-4222-8333-944455556666",
                          "creationTimestamp": "2026-08-22T13:33:20Z"},
             "spec": {"bgp": {"ipv4Address": "10.0.0.5/24", "ipv4IPIPTunnelAddr": "10.244.1.1"},
                      "orchRefs": [{"nodeName": "node1", "orchestrator": "k8s"}],
                      "interfaces": [{"name": "eth0", "addresses": ["10.0.0.5"]}]},
             "status": {"wireguardPublicKey": "abc="}}


def test_a_real_block_is_read_and_written_back_whole():
    block = Block.from_dict(json.loads(json.dumps(REAL_BLOCK)))
    assert encode(block.to_dict()) == encode(REAL_BLOCK)
    block.assign(1, "k8s-pod-network.9f", {"node": "node1", "timestamp": "t"})
    out = block.updated()
    assert out["sequenceNumber"] == REAL_BLOCK["sequenceNumber"] + 1
    assert out["sequenceNumberForAllocation"]["2"] == REAL_BLOCK["sequenceNumber"]
    assert out["attributes"][:2] == REAL_BLOCK["attributes"]


def test_a_real_node_survives_our_registration_byte_for_byte_apart_from_what_we_set():
    store = MemStore({keys.resource("nodes", "node1"): REAL_NODE})
    cfg = from_env({"NODENAME": "node1", "ETCD_ENDPOINTS": "http://127.0.0.1:2379"})
    register_node(store, cfg, "10.0.0.5/24")
    after = store.value(keys.resource("nodes", "node1"))
    assert after["metadata"]["uid"] == REAL_NODE["metadata"]["uid"]
    assert after["spec"]["interfaces"] == REAL_NODE["spec"]["interfaces"] and after["status"] == REAL_NODE["status"]
    assert after["spec"]["bgp"]["ipv4IPIPTunnelAddr"] == "10.244.1.1" and after["spec"]["orchRefs"]


def test_a_real_handle_keeps_unknown_fields_and_loses_no_count():
    handle = Handle.from_kv(KV(keys.handle("k8s-pod-network.3b5a"),
                               {"block": {"10.244.1.0/26": 1, "fd00::/122": 1}, "deleted": False}, 7))
    assert encode(handle.to_dict()) == '{"block":{"10.244.1.0/26":1,"fd00::/122":1},"deleted":false}'


@pytest.mark.parametrize("stored", [
    {"strict_affinity": True, "auto_allocate_blocks": True, "kubeVirtVMAddressPersistence": "Enabled"},
    {"auto_allocate_blocks": True},
])
def test_a_real_ipam_config_is_written_back_whole(stored):
    assert IPAMConfig.from_value(stored).to_value() == stored
