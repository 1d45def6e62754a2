"""calico-node's policy follows etcd by snapshot and watch, change by change (issue 13), on real etcd,
iptables and ipset in a namespace:

- random sequences of endpoint (workload and host), profile and policy updates, with the watch broken
  in the middle (resumed from its last revision) or broken while etcd compacts (a fresh snapshot):
  after each sequence the kernel (filter, mangle and raw tables, ipsets) holds exactly what a
  from-scratch render of the same etcd state gives;
- a real calico-node: a remote endpoint reaches the ipsets without a resync, drift (a flushed chain,
  a deleted member, a lost FORWARD jump) is put back within the refresh interval (FelixConfiguration
  iptablesRefreshInterval) and logged, and at rest it sends etcd no requests at all (only the watch
  stream and its keep-alive).
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cni_calico.datastore import Datastore, EtcdConf, Txn
from cni_calico.node.syncer import Syncer
from cni_calico.policy.iptables import Dataplane, cali_chains, canonical, saved_filter, saved_sets
from cni_calico.policy.layout import FAMILIES, TABLES, qualified
from cni_calico.policy.sync import PolicySync
from tests.lab import etcdctl, netns_runner, wait_for
from tests.policy_cases import NODE, OPS, World, etcd_key, stored

RESOURCES = "/calico/resources/v3/projectcalico.org/"


class Rig:
    """etcd, a namespace's iptables and ipsets, and the policy component fed by a Syncer."""

    def __init__(self, lab, etcd) -> None:
        self.etcd = etcd
        self.ns = lab.netns("watch")
        self.run = netns_runner(self.ns)
        self.ds = Datastore(EtcdConf([etcd.url]))
        self.sync = PolicySync(NODE, Dataplane(self.run), ipv6=True)
        self.syncer = Syncer(self.ds, self.sync.reset, self.sync.update)
        self.syncer.resync()
        self.sync.flush()

    def write(self, op) -> None:
        key = etcd_key(op)
        self.ds.commit(Txn().delete(key) if op[2] is None else Txn().put(key, stored(op)))

    def catch_up(self) -> None:
        target = self.ds.revision()
        def caught_up() -> bool:
            return self.syncer.revision >= target or (self.syncer.poll(0.2) >= 0 and self.syncer.revision >= target)

        wait_for(caught_up, 30, "the watch to catch up")
        self.sync.flush()

    def kernel(self, version: int) -> tuple[dict, dict]:
        family = FAMILIES[version]
        chains: dict[str, list[str]] = {}
        for table in TABLES:  # host endpoints' chains are in mangle and raw too
            lines = saved_filter(self.run, family, table)
            chains.update({qualified(table, c): [] for c in cali_chains(lines)})
            for line in lines:
                parts = line.split(" ", 2)
                if parts[0] == "-A" and qualified(table, parts[1]) in chains:
                    chains[qualified(table, parts[1])].append(canonical(parts[2]))
        return chains, saved_sets(self.run, family)

    def close(self) -> None:
        self.syncer.close()
        self.ds.close()


def expected(world: World, version: int) -> tuple[dict, dict]:
    rs = world.render()[version]
    return {c: [canonical(r) for r in rules] for c, rules in rs.chains.items()}, rs.ipsets


@pytest.fixture(scope="module")
def rig(lab):
    etcd = lab.etcd()  # the module's own: the property test compacts it
    rig = Rig(lab, etcd)
    try:
        yield rig
    finally:
        rig.close()
        lab.remove_netns(rig.ns)
        etcd.stop()


# No shrinking: each example costs real iptables and etcd round trips; the failing one is printed whole.
@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, cut=st.integers(0, 25), break_with=st.sampled_from(["nothing", "resume", "compaction"]))
def test_the_kernel_always_ends_as_a_render_from_scratch(rig, ops, cut, break_with):
    for kv in rig.ds.list(RESOURCES, keys_only=True):
        rig.ds.commit(Txn().delete(kv.key))
    rig.catch_up()
    world = World()
    resyncs, resumes = rig.syncer.resyncs, rig.syncer.resumes
    behind = rig.syncer.revision
    for i, op in enumerate(ops):
        if i == cut and break_with != "nothing":
            rig.syncer.watch.cancel()  # the stream is gone; what comes next is read by a new watch
            behind = rig.syncer.revision
        rig.write(op)
        world.apply(op)
        if i < cut or break_with == "nothing":
            rig.catch_up()  # change by change
    now = rig.ds.revision()
    if break_with == "compaction" and cut < len(ops):
        etcdctl(rig.etcd.url, "compaction", str(now))
    rig.catch_up()
    # The watch needs compacted revisions: those below `now`, and `now` itself, whose deletions the
    # compaction dropped (a watch from the compaction's revision would miss them).
    if break_with == "compaction" and cut < len(ops) and behind < now:
        assert rig.syncer.resyncs == resyncs + 1
    elif break_with == "resume" and cut < len(ops) and now > behind:  # (deletes of absent keys change nothing)
        assert rig.syncer.resumes == resumes + 1 and rig.syncer.resyncs == resyncs
    for version in (4, 6):
        chains, sets = rig.kernel(version)
        want_chains, want_sets = expected(world, version)
        assert chains == want_chains
        assert sets == want_sets


def test_a_deletion_at_the_compaction_revision_is_not_lost(lab):
    """etcd's compaction at revision C drops C's own tombstones but still accepts a watch from C: a
    syncer that lost its watch just before a deletion at C must read a snapshot, not resume and miss
    it (found by the property test above: a host endpoint's chains outlived its deletion)."""
    from cni_calico.datastore import Compacted

    etcd = lab.etcd()
    ds = Datastore(EtcdConf([etcd.url]))
    try:
        seen: dict[str, dict | None] = {}
        syncer = Syncer(ds, seen.clear, seen.__setitem__)
        syncer.resync()
        key = f"{RESOURCES}globalnetworksets/gone"
        ds.commit(Txn().put(key, {"kind": "GlobalNetworkSet", "metadata": {"name": "gone"}, "spec": {}}))
        wait_for(lambda: syncer.poll(0.2) >= 0 and key in seen, 10, "the set seen")
        syncer.watch.cancel()
        ds.commit(Txn().delete(key))
        deleted_at = ds.revision()
        etcdctl(etcd.url, "compaction", str(deleted_at))
        with pytest.raises(Compacted):
            ds.watch(["/calico/resources/"], deleted_at)  # etcd itself would accept it
        resyncs = syncer.resyncs
        wait_for(lambda: syncer.poll(0.2) >= 0 and syncer.revision >= deleted_at, 10, "the syncer caught up")
        assert seen.get(key) is None and syncer.resyncs == resyncs + 1
        syncer.close()
    finally:
        ds.close()
        etcd.stop()


# --- a real calico-node ------------------------------------------------------------------------------


def etcd_requests(etcd) -> dict[str, float]:
    """etcd's count of unary requests handled, per method (its own Prometheus metrics)."""
    text = urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'grpc_server_handled_total\{grpc_code="[^"]+",grpc_method="([^"]+)",'
                         r'grpc_service="[^"]+",grpc_type="unary"\} (\S+)', text):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def test_a_real_calico_node_follows_repairs_and_rests(lab, etcd, node):
    wep = f"{RESOURCES}workloadendpoints/default/"
    profile = {"kind": "Profile", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "k8s"},
               "spec": {"ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}}
    etcd.put_json(f"{RESOURCES}profiles/k8s", profile)

    def endpoint(name: str, node_name: str, ip: str, labels: dict) -> dict:
        return {"kind": "WorkloadEndpoint", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": name, "namespace": "default", "labels": labels},
                "spec": {"node": node_name, "interfaceName": f"cali{name[-4:]}", "ipNetworks": [f"{ip}/32"],
                         "profiles": ["k8s"]}}

    etcd.put_json(wep + "local-0001", endpoint("local-0001", "node1", "10.50.0.1", {}))
    # The drift check's interval from FelixConfiguration (node.<name> wins over default, field by field).
    felix = f"{RESOURCES}felixconfigurations/"
    etcd.put_json(felix + "default", {"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
                                      "metadata": {"name": "default"}, "spec": {"iptablesRefreshInterval": "1m"}})
    etcd.put_json(felix + "node.node1", {"kind": "FelixConfiguration", "apiVersion": "projectcalico.org/v3",
                                         "metadata": {"name": "node.node1"}, "spec": {"iptablesRefreshInterval": "1s"}})
    calico = lab.calico_node(node, etcd, "node1", IP="none", CALICO_NETWORKING_BACKEND="none",
                             CALICO_NODE_LOG_LEVEL="info")
    run = netns_runner(node)

    def in_set(ip: str) -> bool:
        return any(ip in s.members for name, s in saved_sets(run).items() if name.startswith("cali40s"))

    wait_for(lambda: "cali-tw-cali0001" in run(["iptables-save", "-t", "filter"]).stdout, 30, "the local chains")
    etcd.put_json(wep + "remote-0002", endpoint("remote-0002", "node9", "10.50.0.2", {"app": "web"}))
    wait_for(lambda: in_set("10.50.0.2"), 10, "the remote endpoint in the ipset")
    etcd.put_json(wep + "remote-0002", endpoint("remote-0002", "node9", "10.50.0.2", {"app": "db"}))
    wait_for(lambda: not in_set("10.50.0.2"), 10, "the relabelled endpoint out of the ipset")
    etcd.put_json(wep + "remote-0003", endpoint("remote-0003", "node9", "10.50.0.3", {"app": "web"}))
    wait_for(lambda: in_set("10.50.0.3"), 10, "another remote endpoint in the ipset")
    assert "snapshot of etcd" in calico.log() and calico.log().count("snapshot of etcd") == 1  # no resync

    # Drift: someone flushes our chain, deletes a member and our FORWARD jump.
    name = next(n for n, s in saved_sets(run).items() if "10.50.0.3" in s.members)
    run(["ipset", "del", name, "10.50.0.3"])
    run(["iptables", "-F", "cali-tw-cali0001"])
    run(["iptables", "-D", "FORWARD", "1"])
    wait_for(lambda: in_set("10.50.0.3") and "cali-pri-k8s" in run(["iptables", "-S", "cali-tw-cali0001"]).stdout
             and "cali-FORWARD" in run(["iptables", "-S", "FORWARD"]).stdout, 10, "the drift to be repaired")
    assert "policy drift repaired (IPv4): chain cali-tw-cali0001" in calico.log()
    assert "policy drift check every 1 s (FelixConfiguration iptablesRefreshInterval)" in calico.log()

    # At rest: the watch stream and its keep-alive only, no request (the refresh reads the kernel, not etcd).
    before = etcd_requests(etcd)
    time.sleep(3)  # three refresh intervals
    assert etcd_requests(etcd) == before
