"""The BIRD 2 daemon of one node: its config file, control socket and pid file under CALICO_RUN_DIR.

calico-node owns this process: it checks every new config with `bird -p`
before use, starts BIRD in the foreground as its child, reloads it with
`birdc configure`, and starts it again if it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)


class BirdError(RuntimeError):
    pass


class Bird:
    def __init__(self, run_dir: str, bird: str = "bird", birdc: str = "birdc") -> None:
        self.run_dir = run_dir
        self.config_path = os.path.join(run_dir, "bird.cfg")
        self.socket_path = os.path.join(run_dir, "bird.ctl")
        self.pid_path = os.path.join(run_dir, "bird.pid")
        self.log_path = os.path.join(run_dir, "bird.log")
        self.bird, self.birdc = bird, birdc
        self.proc: subprocess.Popen | None = None
        self.config = ""
        self.restarts = 0

    def check(self, text: str) -> None:
        """Raises BirdError with BIRD's own message when `text` does not parse."""
        candidate = self.config_path + ".new"
        # Owner-only: the config holds the sessions' BGP passwords.
        with open(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.chmod(candidate, 0o600)
        result = subprocess.run([self.bird, "-p", "-c", candidate], capture_output=True, text=True)
        if result.returncode != 0:
            raise BirdError(f"BIRD rejects the generated config: {(result.stderr or result.stdout).strip()}")

    def apply(self, text: str) -> bool:
        """Makes BIRD run `text`; returns True when something changed."""
        if text == self.config and self.running():
            return False
        self.check(text)
        os.replace(self.config_path + ".new", self.config_path)
        changed = text != self.config
        was_configured = bool(self.config)
        self.config = text
        if not self.running():
            if was_configured:
                log.warning("BIRD is not running (exit %s); starting it again", self.proc and self.proc.returncode)
                self.restarts += 1
            self.start()
        elif changed:
            self.reload()
        return changed

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill_stale(self) -> None:
        """A BIRD left by a calico-node that died holds our socket and pid file: end it."""
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "bird":
                    return
        except (OSError, ValueError):
            return
        log.info("stopping a stale BIRD (pid %d) from an earlier run", pid)
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.02)

    def start(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        if self.proc is None:
            self._kill_stale()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            # -R: graceful restart recovery — a restarted BIRD keeps the kernel routes the last one
            # left (persist) until its sessions have relearned them, so traffic does not stall.
            [self.bird, "-f", "-R", "-c", self.config_path, "-s", self.socket_path, "-P", self.pid_path],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                raise BirdError(f"BIRD exited at start with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.05)
        log.info("BIRD started (pid %d), control socket %s", self.proc.pid, self.socket_path)

    def ensure_running(self) -> bool:
        """Starts BIRD again if it died; True when it had to."""
        if self.config and not self.running():
            code = self.proc.returncode if self.proc else None
            log.warning("BIRD is not running (exit %s); starting it again", code)
            self.restarts += 1
            self.start()
            return True
        return False

    def reload(self) -> None:
        out = self.birdc_cmd("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise BirdError(f"birdc configure failed: {out.strip()}")
        log.info("BIRD reconfigured")

    def birdc_cmd(self, *args: str) -> str:
        result = subprocess.run([self.birdc, "-s", self.socket_path, *args], capture_output=True, text=True, timeout=10)
        return result.stdout + result.stderr

    def stop(self, graceful: bool = True) -> None:
        """Graceful: BIRD leaves its kernel routes (persist) and peers keep ours (graceful restart)."""
        if not self.running():
            return
        assert self.proc is not None
        if graceful:
            # An abrupt end without a BGP NOTIFICATION: peers that negotiated graceful
            # restart keep our routes as stale until we come back; `persist` keeps the
            # kernel's routes here.
            self.proc.send_signal(signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
