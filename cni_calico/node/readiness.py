"""The node's health, as calico-node last wrote it to `$CALICO_RUN_DIR/readiness.json`: who it is
(pid and the process's start time, so a reused pid is not taken for it), when its loop last turned
(the heartbeat), whether the dataplane is in sync with etcd, and what it knows it cannot do (a pool
it must serve needs a kernel driver this kernel lacks, …).

Read by `calico-node --ready` / `-felix-ready` / `-felix-live` (probes, as Calico's), by the HTTP
health endpoint's twin in-process, and by `calicoctl node status`. Live: the process that wrote
the file is still there and its loop turned within LIVE_TIMEOUT. Ready: live, in sync, no problem.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

FILE = "readiness.json"
# Felix's dataplane watchdog default (dataplaneWatchdogTimeout 90 s): a loop that has not turned for
# that long is stuck, not busy.
LIVE_TIMEOUT = 90.0


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass
class State:
    problems: list[str] = field(default_factory=list)
    in_sync: bool = True  # the dataplane holds what etcd says (first snapshot applied, watch followed)
    beat: float = 0.0  # wall-clock time of the last loop turn
    pid: int = 0
    started: int | None = None  # the pid's start time, see start_time()

    @classmethod
    def mine(cls, problems: list[str], in_sync: bool) -> State:
        pid = os.getpid()
        return cls(list(problems), in_sync, time.time(), pid, start_time(pid))

    def alive(self) -> bool:
        """The writer still runs (same pid, same start time: not a reused pid)."""
        return self.pid > 0 and self.started is not None and start_time(self.pid) == self.started

    def live_problems(self, now: float | None = None) -> list[str]:
        if not self.alive():
            return [f"calico-node (pid {self.pid}) is not running"]
        idle = (time.time() if now is None else now) - self.beat
        if idle > LIVE_TIMEOUT:
            return [f"calico-node's loop has not turned for {idle:.0f} s"]
        return []

    def ready_problems(self, now: float | None = None) -> list[str]:
        out = self.live_problems(now)
        if out:
            return out
        if not self.in_sync:
            out.append("the dataplane is not in sync with etcd (etcd unreachable or being read)")
        return out + self.problems


def write(run_dir: str, problems: list[str], in_sync: bool = True) -> State:
    from cni_calico.node.startup import write_file

    state = State.mine(problems, in_sync)
    doc = {"ready": not problems and in_sync, "problems": state.problems, "inSync": in_sync,
           "heartbeat": state.beat, "pid": state.pid, "startTime": state.started}
    write_file(os.path.join(run_dir, FILE), json.dumps(doc))
    return state


def clear(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, FILE))
    except FileNotFoundError:
        pass


def read_state(run_dir: str) -> State | None:
    """What calico-node last wrote; None when there is no readable file (it never ran, or stopped)."""
    try:
        with open(os.path.join(run_dir, FILE), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    problems = doc.get("problems") if isinstance(doc, dict) else None
    if not isinstance(problems, list):
        return None
    try:
        return State([str(p) for p in problems], bool(doc.get("inSync", True)), float(doc.get("heartbeat") or 0),
                     int(doc.get("pid") or 0), doc.get("startTime"))
    except (TypeError, ValueError):
        return None


def read(run_dir: str) -> list[str] | None:
    """The problems calico-node reported ([] when ready); None when it has not reported (not running)."""
    state = read_state(run_dir)
    return None if state is None else state.problems
