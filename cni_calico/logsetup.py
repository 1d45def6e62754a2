"""Logging for the plugin executables: stderr always, a rotated file when configured.

stdout is the runtime's channel and never receives a log line. The file takes Calico's keys:
`log_level`, `log_file_path`, `log_file_max_size` (MB), `log_file_max_count` (rotated files
kept as <path>.1 … <path>.N) and `log_file_max_age` (days a rotated file survives). Many plugin
processes append to one file: rotation happens under a lock on the directory, once, and a process
whose file was rotated away by another reopens the path before its next line. No record carrying
a PEM private key is written out as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
# Calico's line: `2024-06-13 11:13:52.121 [INFO][8] startup/startup.go 425: message` (logrus with
# Calico's formatter): what operators' log tooling parses. Ours names the Python file the same way.
CALICO_LEVELS = {"CRITICAL": "FATAL"}
MAX_SIZE_MB = 100
MAX_COUNT = 5
MAX_AGE_DAYS = 30

_file_handler: logging.Handler | None = None
NOISY = ("pyroute2", "asyncio", "grpc")


class CalicoFormatter(logging.Formatter):
    """One line per record in Calico's shape: local time with milliseconds, `[LEVEL][pid]`, the
    source as `<package>/<file> <line>`, then the message (a traceback, if any, on the lines after)."""

    def format(self, record: logging.LogRecord) -> str:
        import time

        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = CALICO_LEVELS.get(record.levelname, record.levelname)
        parts = record.pathname.replace("\\", "/").rsplit("/", 2)
        source = "/".join(parts[-2:])
        line = f"{stamp}.{int(record.msecs):03d} [{level}][{record.process}] {source} {record.lineno}: " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _QuietLibraries(logging.Filter):
    """Library chatter (every netlink message) drowns our own debug lines: only their warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(NOISY)


class _NoPrivateKeys(logging.Filter):
    """Defence in depth: a line quoting a PEM private key (an etcd or kubeconfig key) is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "PRIVATE KEY-----" in text:
            import re

            record.msg = re.sub(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
                                "[private key redacted]", text, flags=re.S)
            record.args = ()
        return True


def setup_stderr(level: str = "warning") -> None:
    """Called first, before any config is read, so early errors are logged too."""
    root = logging.getLogger()
    if not any(getattr(h, "_cni_stderr", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(CalicoFormatter())
        handler.addFilter(_QuietLibraries())
        handler.addFilter(_NoPrivateKeys())
        handler._cni_stderr = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.WARNING))


_file_settings: tuple | None = None
_file_lock = threading.Lock()  # the agent configures from several request threads


def configure_from(conf, root_level: bool = True) -> None:
    """Applies a parsed network config's logging keys (see the module docstring); `root_level`: the
    config's level is the process's (the plugin), not only its file's (calico-node's CNI server)."""
    configure(conf.log_level, conf.log_file_path, conf.log_file_max_size, conf.log_file_max_count,
              conf.log_file_max_age, root_level)


def configure(level: str, file_path: str, max_size_mb: float = MAX_SIZE_MB, max_count: int = MAX_COUNT,
              max_age_days: float = MAX_AGE_DAYS, root_level: bool = True) -> None:
    """Applies `log_level` and the log file with its rotation; a changed file or rotation (the agent
    serving several configs) replaces the handler, the same one is kept."""
    global _file_handler, _file_settings
    lvl = LEVELS.get(level.lower(), logging.INFO)
    root = logging.getLogger()
    if root_level:
        root.setLevel(lvl)
    settings = (file_path, max_size_mb, max_count, max_age_days)
    with _file_lock:
        if settings != _file_settings:
            if _file_handler is not None:
                root.removeHandler(_file_handler)
                _file_handler.close()
                _file_handler = None
            _file_settings = settings
            if file_path:
                _file_handler = _open_file(file_path, max_size_mb, max_count, max_age_days)
        if _file_handler is not None:
            _file_handler.setLevel(lvl)


def _open_file(file_path: str, max_size_mb: float, max_count: int, max_age_days: float) -> logging.Handler | None:
    from cni_calico.logfile import SharedRotatingFile

    try:
        os.makedirs(os.path.dirname(file_path) or ".", exist_ok=True)
        handler = SharedRotatingFile(file_path, max(1, int(max_size_mb * 1024 * 1024)), max_count,
                                     max_age_days * 86400)
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot log to %s: %s", file_path, exc)
        return None
    handler.setFormatter(CalicoFormatter())
    handler.addFilter(_QuietLibraries())
    handler.addFilter(_NoPrivateKeys())
    logging.getLogger().addHandler(handler)
    return handler
