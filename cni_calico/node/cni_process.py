"""The CNI server runs in a child process of calico-node, started and restarted by it.

Why a process and not a thread: calico-node's own work (a policy sync whenever a pod's veth
appears, BIRD config, polling) is CPU-bound Python, and in one interpreter it held the GIL
while the pod's ADD waited: ~6 ms of a ~25 ms ADD, measured. In its own process the ADD only
shares the CPUs. The child dies with calico-node (PR_SET_PDEATHSIG), as the thread did, so
a killed calico-node never leaves a server applying requests behind it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

PARENT_ENV = "CALICO_NODE_PARENT_PID"
SERVE_FLAG = "--serve-cni"
STOP_TIMEOUT = 35.0  # an ADD in flight may wait up to ~30 s on a sick etcd
RESTART_BACKOFF = 1.0
PR_SET_PDEATHSIG = 1


def command() -> list[str]:
    """The argv that, run by sys.executable, is this very calico-node as the CNI server."""
    if getattr(sys, "frozen", False):  # the PyInstaller bundle dispatches on argv[0]
        return ["calico-node", SERVE_FLAG]
    return [sys.executable, "-m", "cni_calico", "calico-node", SERVE_FLAG]


class CniServerProcess:
    """calico-node's side: start the child, start it again if it dies, stop it on shutdown."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.proc: subprocess.Popen | None = None
        self.next_start = 0.0

    def start(self) -> None:
        env = {**os.environ, "CALICO_RUN_DIR": self.run_dir, PARENT_ENV: str(os.getpid())}
        # stdout/stderr inherited: the child's lines land in calico-node's log.
        self.proc = subprocess.Popen(command(), executable=sys.executable, env=env, stdin=subprocess.DEVNULL)
        log.info("CNI server process %d started", self.proc.pid)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is None or time.monotonic() < self.next_start:
            return
        log.error("CNI server process %d exited with %s; starting it again", self.proc.pid, self.proc.returncode)
        self.next_start = time.monotonic() + RESTART_BACKOFF
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # the child stops accepting, finishes what it holds, exits
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(run_dir: str) -> int:
    """The child's main: serve until SIGTERM, or until calico-node is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(PARENT_ENV):
        return 1  # calico-node died before the line above took effect
    from cni_calico.node.cni_server import CniServer

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = CniServer(run_dir)
    server.start()
    while not stopping.wait(1.0):
        pass
    server.stop(wait=True)
    log.info("CNI server stopped after %d requests", server.served)
    return 0
