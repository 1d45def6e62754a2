"""The agent side of the fast path: CNI requests on a root-only unix socket, run with warm clients.

Requests run the very handlers the `calico` executable runs (cni_calico.plugin through
skel.execute): one implementation, two hosts. Each request has its own thread; requests for
the same container are serialised, others run side by side. A request from another build is
refused before anything is done, so the plugin does the work itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict

from cni_calico.agent_client import PROTOCOL, socket_path
from cni_calico.build_id import build_id

log = logging.getLogger(__name__)


class CniServer:
    def __init__(self, run_dir: str) -> None:
        self.path = socket_path({"CALICO_RUN_DIR": run_dir})
        self.sock: socket.socket | None = None
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self.served = 0
        from cni_calico import logsetup, plugin

        logsetup.agent_mode()
        plugin.share_datastores()
        self.handlers = plugin.HANDLERS

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

    def stop(self) -> None:
        if self.sock is not None:
            try:
                os.unlink(self.path)  # new calls go in-process from now on
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _container_lock(self, container_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[container_id]

    def _serve(self, conn: socket.socket) -> None:
        from cni_calico import skel
        from cni_calico.agent_client import _readline

        with conn:
            try:
                conn.settimeout(5.0)
                request = json.loads(_readline(conn))
                conn.settimeout(None)
            except (OSError, ValueError):
                return
            if request.get("protocol") != PROTOCOL or request.get("build") != build_id():
                reason = f"agent is build {build_id()} protocol {PROTOCOL}"
                log.warning("refusing a request from build %s: %s", request.get("build"), reason)
                conn.sendall(json.dumps({"accepted": False, "reason": reason}).encode() + b"\n")
                return
            env = {k: str(v) for k, v in (request.get("env") or {}).items()}
            stdin = str(request.get("stdin", "")).encode("latin-1")
            try:
                conn.sendall(b'{"accepted": true}\n')
            except OSError:
                return
            started = time.monotonic()
            with self._container_lock(env.get("CNI_CONTAINERID", "")):
                status, out = skel.execute(self.handlers, env, stdin)
            self.served += 1
            log.debug("%s %s: %d in %.1f ms", env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID"), status,
                      (time.monotonic() - started) * 1000)
            try:
                conn.sendall(json.dumps({"status": status, "stdout": out}).encode() + b"\n")
            except OSError:
                log.warning("the plugin for %s went away before its answer", env.get("CNI_CONTAINERID"))
