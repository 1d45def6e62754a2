"""The plugin's fast path: hand the CNI request to the calico-node agent over its unix socket.

This runs at the start of every `calico` call, so it imports only os and _socket (the C
module: `socket` pulls in enum, `json` pulls in re; together ~15 ms of a ~30 ms start-up).
The wire format is therefore length-prefixed fields, not JSON (see `frame`). Rules:
- no socket, no answer within ACCEPT_TIMEOUT, or an agent of another build or protocol:
  return None and the caller does the work itself (the plugin never depends on the agent);
- once the agent has accepted the request it owns it: never fall back after that (the work
  might be half done); a lost answer is a CNI error 11, and the runtime retries.

Exchange: request = frame(protocol, build, env, stdin) + b"\\n"; the agent answers
frame(b"1") (accepted) or frame(b"0", reason), then frame(status, stdout). The trailing
newline makes an agent of the older JSON-lines protocol reject the request at once.
"""

from __future__ import annotations

import _socket
import os

PROTOCOL = 2
ACCEPT_TIMEOUT = 2.0  # the agent acks at once; under a burst its threads may wait for the GIL
RESULT_TIMEOUT = 120.0
FORWARDED_PREFIXES = ("CNI_", "CALICO_", "ETCD_", "K8S_")
MAX_FIELD = 16 << 20  # a CNI config is kilobytes; anything near this is not ours


def socket_path(env: dict[str, str]) -> str:
    return env.get("CALICO_CNI_SOCKET") or os.path.join(env.get("CALICO_RUN_DIR", "/var/run/calico"), "cni.sock")


def frame(*fields: bytes) -> bytes:
    """Each field as b"<length>\\n<bytes>": any bytes survive, and no parser is needed."""
    return b"".join(b"%d\n%s" % (len(f), f) for f in fields)


class FieldReader:
    """Reads `frame`d fields off a socket (a `socket.socket` or an `_socket.socket`)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        self.buf += chunk

    def field(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 20:
                raise ValueError("not a length-prefixed field")
            self._fill()
        head, _, self.buf = self.buf.partition(b"\n")
        size = int(head)  # ValueError for anything but digits
        if not 0 <= size <= MAX_FIELD:
            raise ValueError(f"field of {size} bytes")
        while len(self.buf) < size:
            self._fill()
        value, self.buf = self.buf[:size], self.buf[size:]
        return value


def encode_env(env: dict[str, str]) -> bytes:
    """The variables the plugin reads, as NUL-separated NAME=value (a value cannot hold NUL)."""
    return b"\0".join(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items()
                      if k.startswith(FORWARDED_PREFIXES))


def decode_env(blob: bytes) -> dict[str, str]:
    pairs = (item.decode("utf-8", "surrogateescape").partition("=") for item in blob.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def forward(env: dict[str, str], stdin: bytes, build: str) -> tuple[int, bytes] | None:
    """(exit status, stdout bytes) from the agent, or None: do it in-process."""
    if env.get("CALICO_CNI_AGENT", "") == "off":
        return None
    path = socket_path(env)
    if not os.path.exists(path):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(ACCEPT_TIMEOUT)
        reader = FieldReader(sock)
        try:
            sock.connect(path)
            sock.sendall(frame(b"%d" % PROTOCOL, build.encode(), encode_env(env), stdin) + b"\n")
            if reader.field() != b"1":
                return None  # another build or protocol: never let it apply our request
        except (OSError, ValueError):
            return None
        sock.settimeout(RESULT_TIMEOUT)
        try:
            status = int(reader.field())
            return status, reader.field()
        except (OSError, ValueError) as exc:
            return 1, _lost_answer(stdin, exc)
    finally:
        sock.close()


def _lost_answer(stdin: bytes, exc: Exception) -> bytes:
    import json  # the rare path only

    try:
        version = str(json.loads(stdin).get("cniVersion") or "1.1.0")
    except (ValueError, AttributeError, RecursionError):
        version = "1.1.0"
    error = {
        "cniVersion": version,
        "code": 11,
        "msg": "calico-node accepted the request but gave no answer; try again",
        "details": f"{type(exc).__name__}: {exc}",
    }
    return (json.dumps(error) + "\n").encode()
