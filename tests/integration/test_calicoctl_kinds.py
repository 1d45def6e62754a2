"""calicoctl for every kind beyond IPPool, run as the real executable against the session's etcd.

Each kind goes through create, get (tables, YAML, JSON), replace with the current and a stale
resourceVersion, create-again and delete; invalid fields, namespaces, WorkloadEndpoints (read and
delete only) and IPAMConfig (Calico's IPAM config JSON) have their own tests.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from cni_calico.v3 import WITH_STATUS
from tests.integration.test_calicoctl import mod_revision, run, write
from tests.lab import free_port

RES = "/calico/resources/v3/projectcalico.org/"
IPAM_CONFIG = "/calico/ipam/v2/config"


def doc(kind: str, name: str, spec: dict, namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


WEB_SOURCE = {"selector": "role == 'web'", "serviceAccounts": {"names": ["web"], "selector": "team == 'x'"}}
# kind, document, its key in etcd, spec stored (defaults filled, normalised), `get -o wide` rows
SAMPLES = {
    "Node": (
        doc("Node", "node-a", {"bgp": {"ipv4Address": "192.168.200.1/24", "asNumber": "1.10",
                                       "routeReflectorClusterID": "224.0.0.1"},
                               "ipv4VXLANTunnelAddr": "10.65.0.1", "vxlanTunnelMACAddr": "66:2f:0e:aa:bb:cc",
                               "orchRefs": [{"nodeName": "node-a", "orchestrator": "k8s"}]}),
        RES + "nodes/node-a",
        {"bgp": {"ipv4Address": "192.168.200.1/24", "asNumber": 65546, "routeReflectorClusterID": "224.0.0.1"},
         "ipv4VXLANTunnelAddr": "10.65.0.1", "vxlanTunnelMACAddr": "66:2f:0e:aa:bb:cc",
         "orchRefs": [{"nodeName": "node-a", "orchestrator": "k8s"}]},
        [["NAME", "ASN", "IPV4", "IPV6"], ["node-a", "65546", "192.168.200.1/24"]],
    ),
    "BGPPeer": (
        doc("BGPPeer", "rack1-tor", {"peerIP": "192.168.200.254", "asNumber": 65001, "node": "node-a"}),
        RES + "bgppeers/rack1-tor",
        {"peerIP": "192.168.200.254", "asNumber": 65001, "node": "node-a"},
        [["NAME", "PEERIP", "NODE", "ASN"], ["rack1-tor", "192.168.200.254", "node-a", "65001"]],
    ),
    "BGPConfiguration": (
        doc("BGPConfiguration", "default", {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": False,
                                            "asNumber": 64513, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}),
        RES + "bgpconfigurations/default",
        {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": False, "asNumber": 64513,
         "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]},
        [["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"], ["default", "Info", "false", "64513"]],
    ),
    "BGPFilter": (
        doc("BGPFilter", "no-test-net", {"exportV4": [{"cidr": "10.50.0.0/16", "matchOperator": "In",
                                                       "action": "Reject"}]}),
        RES + "bgpfilters/no-test-net",
        {"exportV4": [{"cidr": "10.50.0.0/16", "matchOperator": "In", "action": "Reject"}]},
        [["NAME", "EXPORTV4", "IMPORTV4", "EXPORTV6", "IMPORTV6"], ["no-test-net", "1", "0", "0", "0"]],
    ),
    "Profile": (
        doc("Profile", "net1", {"labelsToApply": {"team": "web"}, "egress": [{"action": "Allow"}],
                                "ingress": [{"action": "Allow", "protocol": "TCP",
                                             "destination": {"ports": [80, "8000:8080", "http", "443"]}}]}),
        RES + "profiles/net1",
        {"labelsToApply": {"team": "web"}, "egress": [{"action": "Allow"}],
         "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "8000:8080", "http", 443]}}]},
        [["NAME", "LABELS"], ["net1", "team=web"]],
    ),
    "NetworkPolicy": (
        doc("NetworkPolicy", "allow-db", {"order": 100, "selector": "role == 'db'", "ingress": [
            {"action": "Allow", "protocol": "TCP", "source": WEB_SOURCE,
             "destination": {"ports": [5432]}}]}),
        RES + "networkpolicies/default/allow-db",
        {"order": 100, "selector": "role == 'db'", "types": ["Ingress"], "ingress": [
            {"action": "Allow", "protocol": "TCP", "source": WEB_SOURCE,
             "destination": {"ports": [5432]}}]},
        [["NAME", "TIER", "ORDER", "SELECTOR"], ["allow-db", "default", "100", "role", "==", "'db'"]],
    ),
    "GlobalNetworkPolicy": (
        doc("GlobalNetworkPolicy", "deny-ping", {"order": 10.5, "selector": "all()", "ingress": [
            {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}], "egress": [
            {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}}]}),
        RES + "globalnetworkpolicies/deny-ping",
        {"order": 10.5, "selector": "all()", "types": ["Ingress", "Egress"],
         "ingress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}],
         "egress": [{"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}}]},
        [["NAME", "TIER", "ORDER", "SELECTOR"], ["deny-ping", "default", "10.5", "all()"]],
    ),
    "GlobalNetworkSet": (
        doc("GlobalNetworkSet", "world", {"nets": ["198.51.100.0/24", "203.0.113.7", "2001:db8::/32"]}),
        RES + "globalnetworksets/world",
        {"nets": ["198.51.100.0/24", "203.0.113.7", "2001:db8::/32"]},
        [["NAME", "NETS"], ["world", "198.51.100.0/24,203.0.113.7,2001:db8::/32"]],
    ),
    "NetworkSet": (
        doc("NetworkSet", "partners", {"nets": ["192.0.2.0/24"]}),
        RES + "networksets/default/partners",
        {"nets": ["192.0.2.0/24"]},
        [["NAME", "NETS"], ["partners", "192.0.2.0/24"]],
    ),
    "HostEndpoint": (
        doc("HostEndpoint", "node1-eth0", {"interfaceName": "eth0", "node": "node1",
                                           "expectedIPs": ["192.168.200.1", "fd00:200::1"], "profiles": ["p1"]}),
        RES + "hostendpoints/node1-eth0",
        {"node": "node1", "interfaceName": "eth0", "expectedIPs": ["192.168.200.1", "fd00:200::1"],
         "profiles": ["p1"]},
        [["NAME", "NODE", "INTERFACE", "IPS", "PROFILES"], ["node1-eth0", "node1", "eth0",
                                                           "192.168.200.1,fd00:200::1", "p1"]],
    ),
}


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_kind_create_get_replace_delete(etcd, tmp_path, kind):
    document, key, stored_spec, wide = SAMPLES[kind]
    r = run(etcd, "create", "-f", write(tmp_path, document))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"Successfully created 1 '{kind}' resource(s)\n", "")
    stored = etcd.get_json(key)
    assert (stored["kind"], stored["spec"]) == (kind, stored_spec)
    assert stored["metadata"]["uid"] and "resourceVersion" not in stored["metadata"]

    table = run(etcd, "get", kind.lower(), "-o", "wide")
    assert table.returncode == 0, table.stderr
    assert [line.split() for line in table.stdout.splitlines() if line] == wide
    got = yaml.safe_load(run(etcd, "get", kind, document["metadata"]["name"], "-o", "yaml").stdout)
    # as calicoctl shows them: the kinds with a status (Node, Tier) show it, `status: {}` when empty
    assert list(got) == ["apiVersion", "kind", "metadata", "spec", *(["status"] if kind in WITH_STATUS else [])]
    assert got["metadata"]["resourceVersion"] == str(mod_revision(etcd, key))
    plural = key[len(RES):].split("/")[0]
    listed = json.loads(run(etcd, "get", plural, "-o", "json").stdout)
    assert listed["kind"] == f"{kind}List" and len(listed["items"]) == 1

    r = run(etcd, "create", "-f", write(tmp_path, document))
    assert r.returncode == 1 and "resource already exists" in r.stderr

    changed = dict(got, metadata={**got["metadata"], "labels": {"changed": "yes"}})
    r = run(etcd, "replace", "-f", write(tmp_path, changed, name="current.yaml"))
    assert (r.returncode, r.stdout) == (0, f"Successfully replaced 1 '{kind}' resource(s)\n"), r.stderr
    after = etcd.get_json(key)
    tier = {"projectcalico.org/tier": "default"} if kind in ("NetworkPolicy", "GlobalNetworkPolicy") else {}
    assert after["metadata"]["labels"] == {"changed": "yes", **tier}  # policies: Calico's tier label, always
    assert after["metadata"]["uid"] == stored["metadata"]["uid"]
    latest = mod_revision(etcd, key)
    r = run(etcd, "replace", "-f", write(tmp_path, changed, name="stale.yaml"))
    assert r.returncode == 1
    assert f"out of date (latest: {latest})" in r.stderr and "update conflict" in r.stderr
    assert mod_revision(etcd, key) == latest

    name = document["metadata"]["name"]
    r = run(etcd, "delete", kind.lower(), name)  # (a Node with no IPAM, endpoints or peers: nothing else to say)
    assert (r.returncode, r.stdout) == (0, f"Successfully deleted 1 '{kind}' resource(s)\n"), r.stderr
    assert etcd.get_json(key) is None
    r = run(etcd, "delete", kind.lower(), name)
    assert r.returncode == 1 and f"resource does not exist: {kind}(" in r.stderr


@pytest.mark.parametrize(("kind", "aliases"), [
    ("Node", ["node", "nodes", "no"]), ("BGPPeer", ["bgppeer", "bgppeers", "bgpp"]),
    ("BGPConfiguration", ["bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"]),
    ("BGPFilter", ["bgpfilter", "bgpfilters"]),
    ("Profile", ["profile", "profiles", "pro"]),
    ("NetworkPolicy", ["networkpolicy", "networkpolicies", "policy", "np"]),
    ("GlobalNetworkPolicy", ["globalnetworkpolicy", "globalnetworkpolicies", "gnp"]),
    ("WorkloadEndpoint", ["workloadendpoint", "workloadendpoints", "wep"]),
    ("IPAMConfig", ["ipamconfig", "ipamconfigs"]),
    ("GlobalNetworkSet", ["globalnetworkset", "globalnetworksets", "gnetsets"]),
    ("NetworkSet", ["networkset", "networksets", "netsets"]),
    ("HostEndpoint", ["hostendpoint", "hostendpoints", "hep", "heps"]),
])
def test_calico_names_for_every_kind(etcd, kind, aliases):
    for alias in aliases:
        r = run(etcd, "get", alias, "-o", "json")
        assert r.returncode == 0, (alias, r.stderr)
        assert json.loads(r.stdout)["kind"] == f"{kind}List"


INVALID = [
    ("Node", {"bgp": {"asNumber": 0}}, "spec.bgp.asNumber = '0'", "AS number must be 1-4294967295"),
    ("Node", {"bgp": {"asNumber": "70000.1"}}, "spec.bgp.asNumber = '70000.1'", "dotted"),
    ("Node", {"bgp": {"ipv4Address": "fd00::1/64"}}, "spec.bgp.ipv4Address", "must be an IPv4 address"),
    ("Node", {"bgp": {"routeReflectorClusterID": "1.2.3"}}, "spec.bgp.routeReflectorClusterID = '1.2.3'",
     "IPv4 address"),
    ("Node", {"vxlanTunnelMACAddr": "ee:ee"}, "spec.vxlanTunnelMACAddr", "MAC address"),
    ("Node", {"bgp": {"asn": 1}}, "spec.bgp.asn", "unknown field"),
    ("BGPPeer", {"peerIP": "10.0.0.300", "asNumber": 65000}, "spec.peerIP = '10.0.0.300'", "IP address"),
    ("BGPPeer", {"peerIP": "10.0.0.3"}, "spec.asNumber", "needs the peer's AS number"),
    ("BGPPeer", {"peerIP": "10.0.0.3", "asNumber": 4294967296}, "spec.asNumber = '4294967296'", "AS number"),
    ("BGPPeer", {"peerSelector": "rr == ", "asNumber": 1}, "spec.peerSelector = 'rr == '", "invalid selector"),
    ("BGPConfiguration", {"logSeverityScreen": "Loud"}, "spec.logSeverityScreen = 'Loud'", "one of Debug"),
    ("BGPConfiguration", {"nodeToNodeMeshEnabled": "yes"}, "spec.nodeToNodeMeshEnabled = 'yes'", "true or false"),
    ("BGPConfiguration", {"ipv4NormalRoutePriority": 512}, "spec.ipv4NormalRoutePriority = '512'",
     "not supported by this calico-node"),
    ("BGPPeer", {"peerIP": "10.0.0.3", "asNumber": 65000, "password": {"secretKeyRef": {"name": "s"}}},
     "spec.password.secretKeyRef.key", "must be a secret's name / key"),
    ("BGPFilter", {"importV4": [{"action": "Accept", "priority": 5}]}, "spec.importV4[0].priority = '5'",
     "not supported by this calico-node"),
    ("Profile", {"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]},
     "spec.ingress[0].destination.ports[0] = '90:80'", "low <= high"),
    ("Profile", {"egress": [{"action": "Accept"}]}, "spec.egress[0].action = 'Accept'",
     "one of Allow, Deny, Pass, Log"),
    ("GlobalNetworkPolicy", {"selector": "role == "}, "spec.selector = 'role == '",
     "invalid selector: expected string at position 8"),
    ("GlobalNetworkPolicy", {"ingress": [{"action": "Allow", "protocol": "ICMP", "destination": {"ports": [80]}}]},
     "spec.ingress[0].destination.ports", "ports need protocol TCP, UDP, SCTP or UDPLite"),
    ("GlobalNetworkPolicy", {"ingress": [{"action": "Allow", "protocol": 256}]}, "spec.ingress[0].protocol = '256'",
     "1-255"),
    ("GlobalNetworkPolicy", {"preDNAT": True}, "spec.applyOnForward", "must be true when doNotTrack or preDNAT"),
    ("NetworkPolicy", {"types": ["Egress"], "ingress": [{"action": "Allow"}]}, "spec.ingress",
     "spec.types does not include Ingress"),
    ("NetworkPolicy", {"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"selector": "team =="}}}]},
     "spec.ingress[0].source.serviceAccounts.selector = 'team =='", "invalid selector"),
    ("NetworkPolicy", {"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"name": ["a"]}}}]},
     "spec.ingress[0].source.serviceAccounts.name", "unknown field"),
    ("NetworkPolicy", {"ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}]},
     "spec.ingress[0].source.nets[0] = '10.0.0.0/33'", "valid IP"),
    ("GlobalNetworkSet", {"nets": ["10.0.0.0/8", "10.0.0.300"]}, "spec.nets[1] = '10.0.0.300'", "valid IP"),
    ("GlobalNetworkSet", {"nets": "10.0.0.0/8"}, "spec.nets = '10.0.0.0/8'", "must be a list"),
    ("NetworkSet", {"cidrs": ["10.0.0.0/8"]}, "spec.cidrs", "unknown field"),
    ("HostEndpoint", {"node": "node1"}, "spec.interfaceName", "at least one of interfaceName or expectedIPs"),
    ("HostEndpoint", {"interfaceName": "eth0"}, "spec.node", "must name the node"),
    ("HostEndpoint", {"node": "node1", "expectedIPs": ["10.0.0.0/8"]}, "spec.expectedIPs[0] = '10.0.0.0/8'",
     "valid IP address"),
]


@pytest.mark.parametrize(("kind", "spec", "field", "reason"), INVALID,
                         ids=[f"{k}-{f.split(' ')[0]}" for k, _, f, _ in INVALID])
def test_invalid_fields_are_named_and_nothing_is_written(etcd, tmp_path, kind, spec, field, reason):
    r = run(etcd, "apply", "-f", write(tmp_path, doc(kind, "bad", spec)))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"Failed to apply '{kind}' resource: [{kind}(")
    assert field in r.stderr and reason in r.stderr, r.stderr
    assert etcd.keys(RES) == []


def test_namespaced_policies(etcd, tmp_path):
    policy = doc("NetworkPolicy", "web", {"selector": "app == 'web'"})
    assert run(etcd, "create", "-f", write(tmp_path, policy)).returncode == 0  # no namespace: default
    assert run(etcd, "create", "-f", write(tmp_path, policy), "-n", "prod").returncode == 0
    r = run(etcd, "create", "-f", write(tmp_path, doc("NetworkPolicy", "db", {}, namespace="prod")))
    assert r.returncode == 0, r.stderr
    assert sorted(etcd.keys(RES)) == [RES + "networkpolicies/default/web", RES + "networkpolicies/prod/db",
                                      RES + "networkpolicies/prod/web"]
    assert run(etcd, "get", "policy").stdout == "NAME   TIER\nweb    default\n\n"
    # as calicoctl: -n (like -A) adds the NAMESPACE column
    assert run(etcd, "get", "np", "-n", "prod").stdout == (
        "NAMESPACE   NAME   TIER\nprod        db     default\nprod        web    default\n\n")
    assert run(etcd, "get", "networkpolicies", "-A").stdout == (
        "NAMESPACE   NAME   TIER\ndefault     web    default\nprod        db     default\n"
        "prod        web    default\n\n")
    r = run(etcd, "create", "-f", write(tmp_path, doc("NetworkPolicy", "x", {}, namespace="prod")), "-n", "dev")
    assert r.returncode == 1 and "does not match client namespace (dev)" in r.stderr
    r = run(etcd, "get", "policy", "web", "-n", "prod", "-o", "yaml")
    assert yaml.safe_load(r.stdout)["metadata"]["namespace"] == "prod"
    assert run(etcd, "get", "policy", "db").returncode == 1  # db lives in prod only
    assert run(etcd, "delete", "policy", "web", "-n", "prod").returncode == 0
    assert run(etcd, "get", "ippool", "-n", "prod").returncode == 1  # IPPool is not namespaced
    r = run(etcd, "create", "-f", write(tmp_path, doc("NetworkPolicy", "y", {}, namespace="Bad_NS")))
    assert r.returncode == 1 and "metadata.namespace = 'Bad_NS'" in r.stderr


def wep(name: str, namespace: str, node: str, ip: str, pod: str = "", container: str = "c0ffee") -> dict:
    return {"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"orchestrator": "k8s" if pod else "cni", "node": node, "containerID": container,
                     "pod": pod, "endpoint": "eth0", "interfaceName": "cali0123456789a", "mac": "ee:ee:ee:ee:ee:ee",
                     "ipNetworks": [f"{ip}/32"], "profiles": ["net1"]}}


def test_workload_endpoints_are_read_and_deleted_only(etcd, tmp_path):
    etcd.put_json(RES + "workloadendpoints/default/node1-k8s-web-eth0",
                  wep("node1-k8s-web-eth0", "default", "node1", "10.60.0.1", pod="web"))
    etcd.put_json(RES + "workloadendpoints/prod/node2-cni-abcd-eth0", wep("node2-cni-abcd-eth0", "prod", "node2",
                                                                           "10.60.0.70", container="abcd"))
    r = run(etcd, "get", "wep")
    assert r.stdout.splitlines() == ["WORKLOAD   NODE    NETWORKS       INTERFACE",
                                     "web        node1   10.60.0.1/32   cali0123456789a", ""]
    wide = [line.split() for line in run(etcd, "get", "weps", "-A", "-o", "wide").stdout.splitlines() if line]
    assert wide == [["NAMESPACE", "NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"],
                    ["default", "node1-k8s-web-eth0", "web", "node1", "10.60.0.1/32", "cali0123456789a", "net1"],
                    ["prod", "node2-cni-abcd-eth0", "abcd", "node2", "10.60.0.70/32", "cali0123456789a", "net1"]]
    dumped = run(etcd, "get", "wep", "node2-cni-abcd-eth0", "-n", "prod", "-o", "yaml").stdout
    r = run(etcd, "apply", "-f", "-", stdin=dumped)
    assert r.returncode == 1 and "written by the CNI plugin: calicoctl can only get and delete them" in r.stderr
    r = run(etcd, "delete", "-f", "-", stdin=dumped)
    assert (r.returncode, r.stdout) == (0, "Successfully deleted 1 'WorkloadEndpoint' resource(s)\n"), r.stderr
    assert run(etcd, "delete", "wep", "node1-k8s-web-eth0").returncode == 0  # namespace default
    assert etcd.keys(RES) == []


def test_ipamconfig_is_calicos_ipam_config_json(etcd, tmp_path):
    assert run(etcd, "get", "ipamconfig", "default").returncode == 1  # nothing stored yet
    r = run(etcd, "apply", "-f", write(tmp_path, doc("IPAMConfig", "default", {"strictAffinity": True})))
    assert r.returncode == 0, r.stderr
    # Calico's model.IPAMConfig: these names exactly, zero values left out
    assert etcd.get_json(IPAM_CONFIG) == {"strict_affinity": True, "auto_allocate_blocks": True}
    r = run(etcd, "get", "ipamconfigs", "-o", "wide")
    assert r.stdout.split("\n")[1].split() == ["default", "true", "true", "0"]
    r = run(etcd, "ipam", "configure", "--strictaffinity=false", "--max-blocks-per-host", "4")
    assert r.returncode == 1 and "maxBlocksPerHost can only be set with strictAffinity true" in r.stderr
    r = run(etcd, "ipam", "configure", "--max-blocks-per-host", "4")
    assert r.stdout == "Successfully set MaxBlocksPerHost to: 4\n"
    assert etcd.get_json(IPAM_CONFIG) == {"strict_affinity": True, "auto_allocate_blocks": True, "maxBlocksPerHost": 4}
    got = yaml.safe_load(run(etcd, "get", "ipamconfig", "default", "-o", "yaml").stdout)
    assert got["spec"] == {"strictAffinity": True, "autoAllocateBlocks": True, "maxBlocksPerHost": 4,
                           "ipCooldownSeconds": 0}
    got["spec"]["maxBlocksPerHost"] = 8
    assert run(etcd, "replace", "-f", write(tmp_path, got)).returncode == 0
    r = run(etcd, "replace", "-f", write(tmp_path, got))  # the same resourceVersion again: stale
    assert r.returncode == 1 and "update conflict: IPAMConfig(default)" in r.stderr
    r = run(etcd, "create", "-f", write(tmp_path, doc("IPAMConfig", "other", {})))
    assert r.returncode == 1 and "metadata.name = 'other' (the only IPAMConfig is named 'default')" in r.stderr
    r = run(etcd, "apply", "-f", write(tmp_path, doc("IPAMConfig", "default", {"maxBlocksPerHost": -1})))
    assert r.returncode == 1 and "spec.maxBlocksPerHost = '-1'" in r.stderr
    assert run(etcd, "ipam", "configure", "--strictaffinity=maybe").returncode == 1
    assert run(etcd, "delete", "ipamconfig", "default").returncode == 0
    assert etcd.get_json(IPAM_CONFIG) is None


def test_node_asn_column_shows_the_default(etcd, tmp_path):
    r = run(etcd, "create", "-f", write(tmp_path, doc("Node", "plain", {"bgp": {"ipv4Address": "10.0.0.1/24"}}),
                                        doc("Node", "v6", {"bgp": {"ipv6Address": "fd00::1/64", "asNumber": 65010}})))
    assert r.returncode == 0, r.stderr
    assert run(etcd, "get", "nodes").stdout == "NAME\nplain\nv6\n\n"
    rows = [line.split() for line in run(etcd, "get", "nodes", "-o", "wide").stdout.splitlines() if line]
    assert rows == [["NAME", "ASN", "IPV4", "IPV6"], ["plain", "(64512)", "10.0.0.1/24"],
                    ["v6", "65010", "fd00::1/64"]]
    run(etcd, "create", "-f", write(tmp_path, doc("BGPConfiguration", "default", {"asNumber": 65000})))
    assert "(65000)" in run(etcd, "get", "nodes", "-o", "wide").stdout


def test_mixed_file_reports_each_kind(etcd, tmp_path):
    path = write(tmp_path, SAMPLES["Node"][0], SAMPLES["BGPPeer"][0], SAMPLES["Profile"][0])
    r = run(etcd, "apply", "-f", path)
    assert (r.returncode, r.stdout) == (0, "Successfully applied 3 resource(s)\n")
    tables = run(etcd, "get", "-f", path).stdout
    assert tables == "NAME\nnode-a\n\nNAME        PEERIP            NODE     ASN\n" \
                     "rack1-tor   192.168.200.254   node-a   65001\n\nNAME\nnet1\n\n"


@pytest.mark.parametrize("args", [("get", "nodes"), ("ipam", "show"), ("ipam", "check"),
                                  ("ipam", "configure", "--strictaffinity=true"), ("delete", "node", "n1")])
def test_unreachable_etcd_fails_in_one_line(args):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = run(None, *args, env={"ETCD_ENDPOINTS": closed})
    assert time.monotonic() - started < 10
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert closed in r.stderr and "unreachable" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("command", [["ipam"], ["ipam", "show"], ["ipam", "check"], ["ipam", "release"],
                                     ["ipam", "configure"], ["node"], ["node", "status"]])
def test_help_with_examples(command):
    r = run(None, *command, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: calicoctl") and "example" in r.stdout


def test_tiers_and_policies_in_them_as_calico_stores_them(etcd, tmp_path):
    r = run(etcd, "create", "-f", write(tmp_path, doc("Tier", "security", {"order": 100, "defaultAction": "Pass"})))
    assert r.returncode == 0, r.stderr
    tier = etcd.get_json(RES + "tiers/security")
    assert tier["spec"] == {"order": 100, "defaultAction": "Pass"} and tier["status"] == {}
    r = run(etcd, "create", "-f", write(tmp_path, doc("Tier", "defaults", {})))
    assert etcd.get_json(RES + "tiers/defaults")["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    assert run(etcd, "get", "tiers", "-o", "wide").stdout.split("\n")[1:3] == [  # by order, as calicoctl
        "security   100", "defaults   1000000"]
    assert run(etcd, "get", "tiers", "-o", "custom-columns=NAME,DEFAULTACTION").stdout.split("\n")[1:3] == [
        "security   Pass", "defaults   Deny"]
    gnp = doc("GlobalNetworkPolicy", "security.gate", {"tier": "security", "selector": "all()",
                                                       "ingress": [{"action": "Pass"}]})
    assert run(etcd, "create", "-f", write(tmp_path, gnp)).returncode == 0
    stored = etcd.get_json(RES + "globalnetworkpolicies/security.gate")
    assert stored["metadata"]["labels"] == {"projectcalico.org/tier": "security"}
    assert stored["metadata"]["annotations"] == {"projectcalico.org/metadata": '{"name": "security.gate"}'}
    assert list(stored["spec"]) == ["tier", "ingress", "selector", "types"]  # Go's field order
    shown = yaml.safe_load(run(etcd, "get", "gnp", "security.gate", "-o", "yaml").stdout)
    assert "annotations" not in shown["metadata"] and shown["spec"]["tier"] == "security"
    ghost = doc("GlobalNetworkPolicy", "ghost.p", {"tier": "ghost", "selector": "all()"})
    r = run(etcd, "create", "-f", write(tmp_path, ghost))
    assert r.returncode == 1 and "spec.tier = 'ghost' (tier 'ghost' does not exist)" in r.stderr
    r = run(etcd, "delete", "tier", "security")
    assert r.returncode == 1 and "tier security still has policies: GlobalNetworkPolicy(security.gate)" in r.stderr
    assert run(etcd, "delete", "gnp", "security.gate").returncode == 0
    assert run(etcd, "delete", "tier", "security").returncode == 0
    etcd.put_json(RES + "tiers/default", {"kind": "Tier", "apiVersion": "projectcalico.org/v3",
                                         "metadata": {"name": "default"}, "spec": {"order": 1000000}})
    r = run(etcd, "delete", "tier", "default")
    assert r.returncode == 1 and "the default tier is Calico's own and cannot be deleted" in r.stderr


def test_clusterinformation_is_shown_not_written(etcd, tmp_path):
    etcd.put_json(RES + "clusterinformations/default", {
        "kind": "ClusterInformation", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "default"},
        "spec": {"clusterGUID": "9f0c" * 8, "clusterType": "k8s,bgp", "calicoVersion": "v3.32.0",
                 "datastoreReady": True}})
    table = run(etcd, "get", "clusterinformation").stdout.split("\n")
    assert table[0].split() == ["NAME", "CLUSTERGUID", "CLUSTERTYPE", "CALICOVERSION", "DATASTOREREADY"]
    assert table[1].split() == ["default", "9f0c" * 8, "k8s,bgp", "v3.32.0", "true"]
    r = run(etcd, "apply", "-f", write(tmp_path, doc("ClusterInformation", "default", {"clusterType": "x"})))
    assert r.returncode == 1 and "operation create or apply is not supported on ClusterInformation" in r.stderr
    r = run(etcd, "delete", "clusterinformation", "default")
    assert r.returncode == 1 and "operation delete is not supported on ClusterInformation" in r.stderr
    assert etcd.get_json(RES + "clusterinformations/default") is not None


def test_felixconfiguration_takes_what_calico_node_honours_and_refuses_the_rest(etcd, tmp_path):
    spec = {"iptablesRefreshInterval": "30s", "logSeverityScreen": "Warning", "reportingInterval": "0s",
            "floatingIPs": "Disabled", "bpfLogLevel": "", "ipipEnabled": False, "vxlanEnabled": True,
            "healthEnabled": True, "healthHost": "127.0.0.1", "healthPort": 9099, "prometheusMetricsEnabled": False,
            "prometheusMetricsPort": 9091}
    r = run(etcd, "apply", "-f", write(tmp_path, doc("FelixConfiguration", "default", spec)))
    assert r.returncode == 0, r.stderr
    assert etcd.get_json(RES + "felixconfigurations/default")["spec"]["iptablesRefreshInterval"] == "30s"
    assert run(etcd, "get", "felixconfig", "-o", "wide").stdout.split("\n")[1].split() == ["default", "30s", "Warning"]
    r = run(etcd, "create", "-f", write(tmp_path, doc("FelixConfiguration", "node.node1", {
        "iptablesRefreshInterval": "soon", "logSeverityScreen": "Chatty", "floatingIPs": "Enabled",
        "bpfEnabled": True, "natOutgoingAddress": "fd00::1", "vxlanEnabled": "yes", "healthPort": 70000,
        "healthHost": "any", "prometheusMetricsPort": 0,
        "failsafeInboundHostPorts": [{"protocol": "ICMP", "port": 1}]})))
    assert r.returncode == 1
    for problem in ("spec.iptablesRefreshInterval = 'soon' ('soon' is not a duration",
                    "spec.natOutgoingAddress = 'fd00::1' (must be an IPv4 address)",
                    "spec.logSeverityScreen = 'Chatty' (must be one of Debug, Info, Warning, Error, Fatal)",
                    "spec.floatingIPs = 'Enabled' (not supported by this calico-node: only 'Disabled'",
                    "spec.vxlanEnabled = 'yes' (must be true or false)",
                    "spec.healthPort = '70000' (must be a port, 1-65535)",
                    "spec.healthHost = 'any' (must be an IP address or localhost)",
                    "spec.prometheusMetricsPort = '0' (must be a port, 1-65535)",
                    "spec.failsafeInboundHostPorts",
                    "spec.bpfEnabled = 'true' (not supported by this calico-node (it honours iptablesRefreshInterval"):
        assert problem in r.stderr, r.stderr
    r = run(etcd, "create", "-f", write(tmp_path, doc("FelixConfiguration", "nodes.x", {})))
    assert r.returncode == 1 and "a FelixConfiguration is named default or node.<node name>" in r.stderr


def test_bind_mode_node_ip_refuses_peers_without_a_source_address(etcd, tmp_path):
    """BIRD 2 cannot bind some sessions to the node IP and others to every address: refused both ways."""
    config = doc("BGPConfiguration", "default", {"bindMode": "NodeIP"})
    peer = doc("BGPPeer", "unbound", {"peerIP": "10.0.0.3", "asNumber": 65000, "sourceAddress": "None"})
    try:
        assert run(etcd, "apply", "-f", write(tmp_path, config)).returncode == 0
        r = run(etcd, "apply", "-f", write(tmp_path, peer, name="peer.yaml"))
        assert r.returncode == 1 and "spec.sourceAddress" in r.stderr and "bindMode NodeIP" in r.stderr, r.stderr
        assert etcd.get_json(RES + "bgppeers/unbound") is None
        assert run(etcd, "delete", "bgpconfig", "default").returncode == 0
        assert run(etcd, "apply", "-f", write(tmp_path, peer, name="peer.yaml")).returncode == 0
        r = run(etcd, "apply", "-f", write(tmp_path, config))
        assert r.returncode == 1 and "spec.bindMode" in r.stderr and "unbound" in r.stderr, r.stderr
    finally:
        run(etcd, "delete", "bgppeer", "unbound")
        run(etcd, "delete", "bgpconfig", "default")
