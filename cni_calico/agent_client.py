"""The plugin's fast path: hand the CNI request to the calico-node agent over its unix socket.

Imports only os, socket and json: this runs at the start of every `calico` call. Rules:
- no socket, no answer within ACCEPT_TIMEOUT, or an agent of another build: return None and
  the caller does the work itself (the plugin never depends on the agent being up);
- once the agent has accepted the request it owns it: never fall back after that (the work
  might be half done); a lost answer is a CNI error 11, and the runtime retries.
"""

from __future__ import annotations

import json
import os
import socket

PROTOCOL = 1
ACCEPT_TIMEOUT = 2.0  # the agent acks at once; under a burst its threads may wait for the GIL
RESULT_TIMEOUT = 120.0
FORWARDED_PREFIXES = ("CNI_", "CALICO_", "ETCD_", "K8S_")


def socket_path(env: dict[str, str]) -> str:
    return env.get("CALICO_CNI_SOCKET") or os.path.join(env.get("CALICO_RUN_DIR", "/var/run/calico"), "cni.sock")


def _readline(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("agent closed the connection")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def forward(env: dict[str, str], stdin: bytes, build: str) -> tuple[int, str] | None:
    """(exit status, stdout) from the agent, or None: do it in-process."""
    if env.get("CALICO_CNI_AGENT", "") == "off":
        return None
    path = socket_path(env)
    if not os.path.exists(path):
        return None
    request = {
        "protocol": PROTOCOL,
        "build": build,
        "env": {k: v for k, v in env.items() if k.startswith(FORWARDED_PREFIXES)},
        "stdin": stdin.decode("latin-1"),  # any bytes survive the trip
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ACCEPT_TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            ack = json.loads(_readline(sock))
        except (OSError, ValueError):
            return None
        if not ack.get("accepted"):
            return None  # another build or protocol: never let it apply our request
        sock.settimeout(RESULT_TIMEOUT)
        try:
            reply = json.loads(_readline(sock))
            return int(reply["status"]), str(reply["stdout"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            error = {
                "cniVersion": _version(stdin),
                "code": 11,
                "msg": "calico-node accepted the request but gave no answer; try again",
                "details": f"{type(exc).__name__}: {exc}",
            }
            return 1, json.dumps(error) + "\n"
    finally:
        sock.close()


def _version(stdin: bytes) -> str:
    try:
        return str(json.loads(stdin).get("cniVersion") or "1.1.0")
    except (ValueError, AttributeError):
        return "1.1.0"
