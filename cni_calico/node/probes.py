"""`calico-node -felix-live | -felix-ready | -bird-live | -bird-ready | -bird6-live | -bird6-ready`:
Kubernetes-style exec probes, exit 0 or 1 as Calico's (node/pkg/health).

- felix-live: calico-node runs (the pid in readiness.json, with its start time) and its loop turned
  within readiness.LIVE_TIMEOUT; felix-ready: live, the dataplane in sync with etcd, no problem
  reported (a pool this node cannot serve…). Read from $CALICO_RUN_DIR/readiness.json, so they work
  with the HTTP endpoint switched off.
- bird-live / bird6-live: calico-node is live and BIRD answers on its control socket. One BIRD 2
  serves both families here, so the two differ only in the family they name.
- bird-ready / bird6-ready: Calico's rule. No BGP peer of the family: ready. Within THRESHOLD seconds
  of calico-node's start (the nodename file's mtime) every peer must be Established and no graceful
  restart in progress; after that one Established peer is enough, so one node down does not make the
  whole mesh unready. THRESHOLD is Calico's -threshold-time (a Go duration, default 30s).
"""

from __future__ import annotations

import os
import re
import sys
import time

from cni_calico.node import readiness

THRESHOLD = 30.0  # Calico's -threshold-time default
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration forms (`30s`, `1m30s`, `500ms`; `0` alone) in seconds; ValueError else."""
    text = text.strip()
    if text == "0":
        return 0.0
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 30s, 1m30s or 500ms")
    return sum(float(n) * _UNITS[u] for n, u in parts)
CHECKS = ("felix-live", "felix-ready", "bird-live", "bird-ready", "bird6-live", "bird6-ready")


def felix_live(run_dir: str) -> list[str]:
    state = readiness.read_state(run_dir)
    if state is None:
        return [f"it is not running (no {readiness.FILE} in {run_dir})"]
    return state.live_problems()


def felix_ready(run_dir: str) -> list[str]:
    state = readiness.read_state(run_dir)
    if state is None:
        return [f"it is not running (no {readiness.FILE} in {run_dir})"]
    return state.ready_problems()


def bird_live(run_dir: str) -> list[str]:
    problems = felix_live(run_dir)
    if problems:
        return problems
    from cni_calico.ctl.node_cmd import NotRunning, birdc

    try:
        birdc(os.path.join(run_dir, "bird.ctl"), "show", "status")
    except NotRunning as exc:
        return [str(exc)]
    return []


def bird_ready(run_dir: str, version: int, nodename_file: str, now: float | None = None,
               threshold: float = THRESHOLD) -> list[str]:
    from cni_calico.ctl.node_cmd import NotRunning, birdc, status

    try:
        started = os.stat(nodename_file).st_mtime
    except OSError as exc:
        return [f"cannot stat the nodename file {nodename_file}: {exc.strerror}"]
    try:
        peers = [p for p in status(run_dir) if p.version == version]
        recovering = bool(peers) and "Graceful restart recovery in progress" in birdc(
            os.path.join(run_dir, "bird.ctl"), "show", "status")
    except NotRunning as exc:
        return [str(exc)]
    return bgp_problems([(p.address, p.info) for p in peers], recovering,
                        (time.time() if now is None else now) - started, threshold)


def bgp_problems(peers: list[tuple[str, str]], recovering: bool, since_start: float,
                 threshold: float = THRESHOLD) -> list[str]:
    """Calico's checkBIRDReady on (address, info) pairs; [] when ready."""
    down = [address for address, info in peers if not info.startswith("Established")]
    if not peers:
        return []
    if since_start < threshold:
        if down:
            return [f"BGP not established with {','.join(down)}"]
        return ["graceful restart in progress"] if recovering else []
    if len(down) < len(peers):
        return []
    return [f"BGP not established with {','.join(down)}"]


def run(checks: list[str], env: dict[str, str] | None = None, threshold: float = THRESHOLD) -> int:
    """Runs the named checks (CHECKS); each failure is a line on stderr; exit status 0 or 1."""
    from cni_calico.host import DEFAULT_RUN_DIR

    env = dict(os.environ if env is None else env)
    run_dir = env.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR
    lib_dir = env.get("CALICO_LIB_DIR") or "/var/lib/calico"
    nodename_file = env.get("CALICO_NODENAME_FILE") or os.path.join(lib_dir, "nodename")
    failed = False
    for check in checks:
        if check == "felix-live":
            problems, what = felix_live(run_dir), "Felix is not live"
        elif check == "felix-ready":
            problems, what = felix_ready(run_dir), "Felix is not ready"
        elif check in ("bird-live", "bird6-live"):
            problems, what = bird_live(run_dir), f"{check.split('-')[0]} is not live"
        else:
            version = 6 if check.startswith("bird6") else 4
            problems = bird_ready(run_dir, version, nodename_file, threshold=threshold)
            what = "BIRD6 is not ready" if version == 6 else "BIRD is not ready"
        for problem in problems:
            sys.stderr.write(f"calico-node is not ready: {what}: {problem}\n")
        failed = failed or bool(problems)
    return 1 if failed else 0
