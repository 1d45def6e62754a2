"""Felix's health endpoint for calico-node: GET /liveness and /readiness answer 200 when live or
ready and 503 otherwise (a line per problem in the body), on FELIX_HEALTHHOST:FELIX_HEALTHPORT
(default 127.0.0.1:9099 here; Felix's host default is localhost).

stdlib http.server on a daemon thread; it only reads the State the agent last wrote, so a stuck
agent loop shows as a stale heartbeat (not live), never as a hung probe.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cni_calico.node.readiness import State

log = logging.getLogger(__name__)


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HealthServer:
    def __init__(self, host: str, port: int, state: Callable[[], State | None]) -> None:
        self.state = state
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path not in ("/liveness", "/readiness"):
                    self._answer(404, "not found: /liveness or /readiness\n")
                    return
                problems = owner.problems(path == "/readiness")
                self._answer(503 if problems else 200, "".join(f"{p}\n" for p in problems) or "ok\n")

            def _answer(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # probes every few seconds: not worth a log line each
                pass

        server_class = _Server6 if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def problems(self, ready: bool) -> list[str]:
        state = self.state()
        if state is None:
            return ["calico-node is starting"]
        return state.ready_problems() if ready else state.live_problems()

    def start(self) -> HealthServer:
        self.thread.start()
        host, port = self.server.server_address[:2]
        log.info("health endpoint on http://%s:%d/liveness and /readiness", host, port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
