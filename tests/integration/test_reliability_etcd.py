"""Issue 6, property 1: a 3-member etcd cluster under the plugin; members die, ADDs go on.

Every member is bridged into the node on its own port and `etcd_endpoints` lists all three.
- One member SIGKILLed during a burst of ADDs (the leader first, then each other member, one
  at a time), then the first-listed member frozen (SIGSTOP: a hung machine): no ADD is lost —
  every one succeeds with its own address and endpoint — and DEL fails over too.
- Two members down: ADDs fail cleanly with CNI code 11 within 30 s and leave nothing.
- Quorum back (the members restarted with their data dirs): ADDs work again with nothing
  restarted on the node, and what the failed ADDs attempted never shows up.

The timings (ADD latencies around each kill, time to the code-11 answer, time to the first
ADD after quorum returns) are printed and attached to the test's report.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest

from tests.fuzz.driver import Driver
from tests.integration.helpers import ENDPOINTS, HANDLES, allocated, assert_nothing_left
from tests.lab import EtcdCluster, EtcdMember, Lab, add_pool, netconf, plugin_dir

pytestmark = pytest.mark.reliability

BURST = 8  # ADDs started before the kill; half as many more start right after it
NODE = "ha1"


def _add(node: str, conf: dict, cid: str, pod: str):
    return Lab.run_plugin(node, "ADD", conf, cid, Lab.netns_path(pod))


def _address(run) -> str:
    return run.out["ips"][0]["address"].split("/")[0]


def _burst_with_kill(lab: Lab, node: str, conf: dict, victim: EtcdMember, tag: str,
                     freeze: bool = False) -> tuple[list, dict]:
    """BURST ADDs; when the first is done the victim is killed (or frozen) and BURST/2 more start."""
    pods = [lab.pod() for _ in range(BURST + BURST // 2)]
    cids = [f"{tag}{i:03d}".ljust(16, "0") for i in range(len(pods))]
    with ThreadPoolExecutor(len(pods)) as ex:
        started = time.monotonic()
        first = [ex.submit(_add, node, conf, c, p) for c, p in zip(cids[:BURST], pods[:BURST], strict=True)]
        wait(first, return_when=FIRST_COMPLETED)
        killed_at = time.monotonic()
        victim.freeze() if freeze else victim.kill()
        late = [ex.submit(_add, node, conf, c, p) for c, p in zip(cids[BURST:], pods[BURST:], strict=True)]
        runs = [f.result() for f in first + late]
        ended = time.monotonic()
    failed = [(c, r.stdout, r.stderr[-400:]) for c, r in zip(cids, runs, strict=True) if r.rc != 0]
    assert failed == [], f"ADDs lost while {victim.name} was down: {failed}"
    figures = {
        "victim": victim.name + (" (frozen)" if freeze else ""),
        "kill_after_s": round(killed_at - started, 2),
        "add_median_s": round(statistics.median(r.seconds for r in runs), 2),
        "add_max_s": round(max(r.seconds for r in runs), 2),
        "started_after_kill_max_s": round(max(r.seconds for r in runs[BURST:]), 2),
        "burst_s": round(ended - started, 2),
    }
    return [(c, p, _address(r)) for c, p, r in zip(cids, pods, runs, strict=True)], figures


def _run_env(cid: str, pod: str, command: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
            "CNI_NETNS": Lab.netns_path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": plugin_dir(),
            "CALICO_RUN_DIR": os.environ["CALICO_RUN_DIR"]}


def test_one_member_down_loses_no_add_two_down_fail_cleanly_and_quorum_heals(lab, tmp_path, record_property):
    cluster: EtcdCluster = lab.etcd_cluster(3)
    made: list[str] = []
    try:
        add_pool(cluster, "ha", "10.73.0.0/22", 26)
        node = lab.node(None, index=9)
        made.append(node)
        lab.bridge_etcd_cluster(node, cluster)
        log_path = tmp_path / "cni.log"  # debug: the datastore logs every call that fails over
        conf = netconf(cluster, node=NODE, log_level="debug", log_file_path=str(log_path))
        assert conf["etcd_endpoints"].count(",") == 2

        # --- one member down at a time, during a burst: the leader, then the others -------
        live: list[tuple[str, str, str]] = []
        rounds = []
        leader = cluster.leader()
        for n, victim in enumerate([leader, *[m for m in cluster.members if m is not leader]]):
            added, figures = _burst_with_kill(lab, node, conf, victim, f"ha{n}x")
            made += [p for _, p, _ in added]
            live += added
            rounds.append(figures)
            victim.start()
            cluster.wait_healthy()
        # A hung member (SIGSTOP: it takes connections, answers nothing), the first one every client tries.
        frozen = cluster.members[0]
        added, figures = _burst_with_kill(lab, node, conf, frozen, "ha3x", freeze=True)
        made += [p for _, p, _ in added]
        live += added
        rounds.append(figures)
        frozen.thaw()
        cluster.wait_healthy()
        failed_over = len(re.findall(r"etcd \S+ at \S+ failed", log_path.read_text(errors="replace")))
        assert failed_over > 0  # the kills did hit calls in flight or first tries, which went elsewhere
        addresses = [a for _, _, a in live]
        assert len(set(addresses)) == len(live)
        assert sorted(allocated(cluster)) == sorted(addresses)
        assert len(cluster.keys(ENDPOINTS)) == len(live)
        assert lab.ping(node, addresses[0]) and lab.ping(node, addresses[-1])
        assert lab.ping(live[0][1], addresses[-1])

        # --- DEL fails over too: the first listed member is down while every pod goes --------
        first_listed = cluster.members[0]
        first_listed.kill()
        started = time.monotonic()
        with Driver(node, str(tmp_path / "driver.err")) as driver:
            replies = [driver.run("calico", _run_env(c, p, "DEL"), json.dumps(conf).encode()) for c, p, _ in live]
        del_seconds = time.monotonic() - started
        assert [r["stdout"] for r in replies if r["status"] != 0] == []
        first_listed.start()
        cluster.wait_healthy()
        assert_nothing_left(lab, node, cluster)

        # --- two members down: code 11 within 30 s, nothing left ----------------------------
        leader = cluster.leader()
        down = [leader, next(m for m in cluster.members if m is not leader)]
        for m in down:
            m.kill()
        time.sleep(2.5)  # past the election timeout: the survivor knows it has no quorum
        pods = [lab.pod() for _ in range(3)]
        made += pods
        with ThreadPoolExecutor(len(pods)) as ex:
            refused = list(ex.map(lambda a: _add(node, conf, *a),
                                  [(f"noquorum{i}".ljust(16, "0"), p) for i, p in enumerate(pods)]))
        for run in refused:
            assert run.rc == 1, run.stdout + run.stderr[-400:]
            assert set(run.out) == {"cniVersion", "code", "msg", "details"} and run.out["code"] == 11, run.stdout
            assert len(run.stdout.strip().splitlines()) == 1 and "Traceback" not in run.stdout
            assert run.seconds < 30
        assert [link for link in lab.links(node) if link.startswith("cali")] == []
        assert [r for r in lab.routes(node) if "cali" in r] == []
        assert all("eth0" not in lab.links(p) for p in pods)

        # --- quorum back: the same node, the same bridges and config, ADDs work at once ---------
        for m in down:
            m.start()
        restarted = time.monotonic()
        back = _add(node, conf, "quorum0".ljust(16, "0"), pods[0])
        first_ok = time.monotonic() - restarted
        assert back.rc == 0, back.stdout + back.stderr[-400:]
        more = [_add(node, conf, f"quorum{i}".ljust(16, "0"), p) for i, p in enumerate(pods[1:], 1)]
        assert [r.stdout for r in more if r.rc != 0] == []
        cluster.wait_healthy()
        # Nothing the refused ADDs attempted surfaced when quorum returned.
        assert sorted(cluster.keys(HANDLES)) == sorted(f"{HANDLES}net1.{f'quorum{i}'.ljust(16, '0')}" for i in range(3))
        assert sorted(allocated(cluster)) == sorted(_address(r) for r in [back, *more])
        assert len(cluster.keys(ENDPOINTS)) == 3
        assert lab.ping(node, _address(back))
        for i, p in enumerate(pods):
            assert Lab.run_plugin(node, "DEL", conf, f"quorum{i}".ljust(16, "0"), Lab.netns_path(p)).rc == 0
        assert_nothing_left(lab, node, cluster)

        figures = {
            "adds_during_member_loss": len(live), "lost": 0, "rounds": rounds, "failed_over_calls": failed_over,
            "dels_with_first_endpoint_down_s": round(del_seconds, 2), "dels": len(live),
            "no_quorum_code11_s": [round(r.seconds, 2) for r in refused],
            "first_add_after_quorum_returns_s": round(first_ok, 2),
        }
        print("\nRELIABILITY etcd-failover", json.dumps(figures))
        record_property("etcd_failover", json.dumps(figures))
    finally:
        for ns in made:
            lab.remove_netns(ns)
        cluster.stop()
