"""The agent side of the fast path: CNI requests on a root-only unix socket, run with warm clients.

Requests run the very handlers the `calico` executable runs (cni_calico.plugin through
skel.execute): one implementation, two hosts. Requests are served by a pool of long-lived
threads (a thread keeps its netlink socket between requests); requests
for the same container are serialised, others run side by side. A request from another
build or protocol is refused before anything is done, so the plugin does the work itself.
The wire format is agent_client's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from cni_calico.agent_client import PROTOCOL, FieldReader, decode_env, frame, socket_path
from cni_calico.build_id import build_id

log = logging.getLogger(__name__)

# Enough that a burst of pods is acknowledged well inside the plugin's ACCEPT_TIMEOUT
# (idle threads are reused, so a quiet node keeps only a few).
MAX_WORKERS = 128
# What ADD/DEL/CHECK import on first use (~200 ms: pyroute2, grpc): loaded before the socket
# exists, so the first pod is as fast as the next (until then, plugins work in-process).
WARM = ("cni_calico.dataplane", "cni_calico.endpoints", "cni_calico.datastore", "cni_calico.nodename",
        "cni_calico.names", "cni_calico.keys", "cni_calico.netconf", "ipam.assign", "ipam.store")


class CniServer:
    def __init__(self, run_dir: str) -> None:
        self.path = socket_path({"CALICO_RUN_DIR": run_dir})
        self.sock: socket.socket | None = None
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}  # container ID -> (lock, [users])
        self._locks_guard = threading.Lock()
        self.served = 0
        self.workers = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="cni")
        import importlib

        from cni_calico import plugin
        from cni_calico.host import AgentHost

        # Metrics are recorded under calico-node (which names their directory), not in other hosts.
        self.metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR") is not None
        for module in WARM + (("cni_calico.node.metrics", "prometheus_client") if self.metrics else ()):
            importlib.import_module(module)
        self.host = AgentHost(run_dir)
        self.handlers = plugin.handlers(self.host)
        self._round_trips = None

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # root-only from the first moment, not after a chmod
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(256)
        self.sock = sock
        threading.Thread(target=self._accept, name="cni-accept", daemon=True).start()
        log.info("serving CNI requests on %s", self.path)

    def stop(self, wait: bool = False) -> None:
        """No new requests from now on; with `wait`, also until those in flight have answered."""
        if self.sock is not None:
            try:
                os.unlink(self.path)  # new calls go in-process from now on
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        self.workers.shutdown(wait=wait)  # requests in flight finish either way; idle threads go

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self.workers.submit(self._serve, conn)
            except RuntimeError:  # stopping: the plugin sees the connection close and works in-process
                conn.close()
                return

    @contextmanager
    def _serialised(self, container_id: str):
        """One request per container at a time; the entry goes when its last user does (no growth)."""
        with self._locks_guard:
            lock, users = self._locks.setdefault(container_id, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[container_id]

    def _record(self, command: str, status: int, out: str, seconds: float) -> None:
        from cni_calico.node import metrics

        try:
            metrics.observe_request(command, status, out, seconds)
            if self._round_trips is None:
                self._round_trips = metrics.Delta()
            metrics.metrics().round_trips.labels("cni-server").inc(self._round_trips.take(self.host.round_trips()))
        except Exception:  # noqa: BLE001 - figures are never worth a failed request
            log.exception("recording the metrics of a %s request failed", command)

    def _serve(self, conn: socket.socket) -> None:
        from cni_calico import skel

        with conn:
            reader = FieldReader(conn)
            try:
                conn.settimeout(5.0)
                protocol, build, env_blob, stdin = [reader.field() for _ in range(4)]
                conn.settimeout(None)
            except (OSError, ValueError):
                return  # not our protocol (an older plugin falls back on the closed connection)
            if protocol != b"%d" % PROTOCOL or build.decode(errors="replace") != build_id():
                reason = f"agent is build {build_id()} protocol {PROTOCOL}"
                log.warning("refusing a request from build %s: %s", build.decode(errors="replace"), reason)
                try:
                    conn.sendall(frame(b"0", reason.encode()))
                except OSError:
                    pass
                return
            env = decode_env(env_blob)
            try:
                conn.sendall(frame(b"1"))
            except OSError:
                return
            started = time.monotonic()
            with self._serialised(env.get("CNI_CONTAINERID", "")):
                status, out = skel.execute(self.handlers, env, stdin)
            self.served += 1
            took = time.monotonic() - started
            log.debug("%s %s: %d in %.1f ms", env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID"), status, took * 1000)
            try:
                conn.sendall(frame(b"%d" % status, out.encode()))
            except OSError:
                log.warning("the plugin for %s went away before its answer", env.get("CNI_CONTAINERID"))
            if self.metrics:  # after the answer: the runtime never waits for the figures
                self._record(env.get("CNI_COMMAND", ""), status, out, took)
