"""Runs many CNI invocations in one process inside a node's network namespace (fuzzing, bulk DELs).

Child side: `ip netns exec <node> python -m tests.fuzz.driver` reads one JSON case per line on
stdin — {"id", "plugin": "calico"|"calico-ipam", "env": {...}, "stdin": <base64>} — runs it
through `cni_calico.skel.execute` with that plugin's handlers, exactly as the executable does
after start-up, and answers one JSON line: {"id", "status", "stdout", "seconds", "stray"}.
`stray` is anything else that reached stdout meanwhile (Python prints or raw writes to fd 1):
the runtime's channel must carry the one document only. The process is already inside the
node's namespace, so the dataplane lands there, never in the machine's own namespace.

Each case sees its env as os.environ too (the executable would), and every etcd client it made
is closed afterwards. A case with "kill_before_dataplane" SIGKILLs the driver where the plugin
would start on the veth — right after IPAM's commit — as a deterministic "plugin killed there".
`--rpc-timeout`/`--deadline` shorten the datastore's limits so cases with unreachable etcd end
quickly.

Parent side: `Driver` starts the child and runs cases with a per-case timeout (a hang is a
finding, not a stuck test); `close()` stops it by PID.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from tests.lab import REPO

# --- child ----------------------------------------------------------------------------


def _handlers(plugin: str):
    from cni_calico.host import PluginHost

    if plugin == "calico-ipam":
        from cni_calico import ipam_cni

        return ipam_cni.handlers(PluginHost())
    from cni_calico import plugin as calico

    return calico.handlers(PluginHost())


def serve(rpc_timeout: float, deadline: float) -> int:
    from cni_calico import datastore, logsetup, skel

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    stray_file = tempfile.TemporaryFile()
    os.dup2(stray_file.fileno(), 1)  # anything written to fd 1 from now on is a stray line
    logsetup.setup_stderr()
    made: list = []
    original_init = datastore.Datastore.__init__

    def tracking_init(self, conf, rpc_timeout=rpc_timeout, deadline=deadline):
        original_init(self, conf, rpc_timeout, deadline)
        made.append(self)

    datastore.Datastore.__init__ = tracking_init
    base_env = dict(os.environ)
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        stdin = base64.b64decode(case.get("stdin", ""))
        env = {str(k): str(v) for k, v in case.get("env", {}).items()}
        os.environ.clear()
        os.environ.update(env)
        if case.get("kill_before_dataplane"):
            from cni_calico import dataplane

            dataplane.setup = lambda *_a, **_k: os.kill(os.getpid(), signal.SIGKILL)
        captured = io.StringIO()
        sys.stdout = captured
        before = stray_file.seek(0, io.SEEK_END)
        started = time.monotonic()
        try:
            status, out = skel.execute(_handlers(case.get("plugin", "calico")), env, stdin)
        finally:
            seconds = time.monotonic() - started
            sys.stdout = sys.__stdout__
            os.environ.clear()
            os.environ.update(base_env)
            for ds in made:
                ds.close()
            made.clear()
        stray_file.seek(before)
        stray = captured.getvalue() + stray_file.read().decode(errors="replace")
        replies.write(json.dumps({"id": case.get("id"), "status": status, "stdout": out, "seconds": seconds,
                                  "stray": stray}) + "\n")
    return 0


# --- parent ---------------------------------------------------------------------------


class DriverError(Exception):
    pass


class Driver:
    """A driver process in node namespace `ns`; `run(case)` returns its reply or raises on a hang."""

    def __init__(self, ns: str, stderr_path: str, rpc_timeout: float = 3.0, deadline: float = 10.0) -> None:
        self.ns, self.stderr_path = ns, stderr_path
        self.args = ["--rpc-timeout", str(rpc_timeout), "--deadline", str(deadline)]
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._ids = 0
        self.start()

    def start(self) -> None:
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.fuzz.driver", *self.args],
            cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(REPO)},
        )
        err.close()
        self._buf = b""

    def run(self, plugin: str, env: dict[str, str], stdin: bytes, timeout: float = 30.0, **extra) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        case = {"id": self._ids, "plugin": plugin, "env": env, "stdin": base64.b64encode(stdin).decode(), **extra}
        try:
            self.proc.stdin.write(json.dumps(case).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise DriverError(f"the driver died before case {case}") from None
        reply = json.loads(self._readline(timeout, case))
        if reply.get("id") != self._ids:
            raise DriverError(f"reply {reply} does not answer case {self._ids}")
        return reply

    def _readline(self, timeout: float, case: dict) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.restart()
                    raise DriverError(f"case hung for more than {timeout} s: {case}")
                if sel.select(left):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise DriverError(f"the driver died during case {case}")
                    self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout) if self.proc else ():
            if stream:
                stream.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc-timeout", type=float, default=3.0)
    parser.add_argument("--deadline", type=float, default=10.0)
    args = parser.parse_args(argv)
    return serve(args.rpc_timeout, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
