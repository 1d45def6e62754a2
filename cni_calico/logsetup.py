"""Logging for the plugin executables: stderr always, a rotated file when configured.

stdout is the runtime's channel and never receives a log line.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
FORMAT = "%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"
MAX_BYTES = 100 * 1024 * 1024
BACKUPS = 5

_file_handler: logging.Handler | None = None
NOISY = ("pyroute2", "asyncio", "grpc")


class _QuietLibraries(logging.Filter):
    """Library chatter (every netlink message) drowns our own debug lines: only their warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(NOISY)


def setup_stderr(level: str = "warning") -> None:
    """Called first, before any config is read, so early errors are logged too."""
    root = logging.getLogger()
    if not any(getattr(h, "_cni_stderr", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_QuietLibraries())
        handler._cni_stderr = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(LEVELS.get(level.lower(), logging.WARNING))


def configure(level: str, file_path: str) -> None:
    """Applies the network config's `log_level` and `log_file_path`."""
    global _file_handler
    lvl = LEVELS.get(level.lower(), logging.INFO)
    root = logging.getLogger()
    root.setLevel(lvl)
    if not file_path or _file_handler is not None:
        return
    try:
        os.makedirs(os.path.dirname(file_path) or ".", exist_ok=True)
        from logging.handlers import RotatingFileHandler

        handler = RotatingFileHandler(file_path, maxBytes=MAX_BYTES, backupCount=BACKUPS)
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot log to %s: %s", file_path, exc)
        return
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_QuietLibraries())
    root.addHandler(handler)
    _file_handler = handler
