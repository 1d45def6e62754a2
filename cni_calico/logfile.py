"""A size-rotated log file shared by many short-lived plugin processes (Calico's log_file_* keys).

What must hold:
- the file is rotated once per overflow, however many processes see it full: rotation runs under
  an flock on the file's directory and first checks that nobody rotated the path meanwhile;
- a process whose file was rotated away by another reopens the path before its next line, so no
  line lands in a rotated file after the fact;
- rotated files are <path>.1 (newest) … <path>.<count>; older numbers, and rotated files older
  than the maximum age, are removed when rotating;
- an empty file is never rotated, even when one line is longer than the maximum size.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from logging.handlers import RotatingFileHandler


class SharedRotatingFile(RotatingFileHandler):
    def __init__(self, path: str, max_bytes: int, count: int, max_age_s: float) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=count, encoding="utf-8")
        self.max_age_s = max_age_s
        self._inode = self._stream_inode()

    def _stream_inode(self) -> int:
        try:
            return os.fstat(self.stream.fileno()).st_ino if self.stream else -1
        except (OSError, ValueError):
            return -1

    def _reopen_if_moved(self) -> None:
        try:
            moved = os.stat(self.baseFilename).st_ino != self._inode
        except OSError:
            moved = True
        if moved or self.stream is None:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
            self._inode = self._stream_inode()

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 - logging's name
        if os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename):
            return False  # /dev/stderr and friends are never rotated
        self._reopen_if_moved()
        size = self.stream.seek(0, 2)
        return size > 0 and size + len(self.format(record)) + 1 > self.maxBytes

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        lock = os.open(os.path.dirname(self.baseFilename) or ".", os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(self.baseFilename)
            except OSError:
                current = None
            if current is None or current.st_ino != self._inode:
                self._reopen_if_moved()  # another process rotated it already
                return
            super().doRollover()
            self._inode = self._stream_inode()
            self._prune()
        finally:
            os.close(lock)

    def _prune(self) -> None:
        directory = os.path.dirname(self.baseFilename) or "."
        prefix = os.path.basename(self.baseFilename) + "."
        oldest = time.time() - self.max_age_s if self.max_age_s > 0 else None
        for name in os.listdir(directory):
            suffix = name[len(prefix):] if name.startswith(prefix) else ""
            if not suffix.isdigit():
                continue
            path = os.path.join(directory, name)
            try:
                if int(suffix) > self.backupCount or (oldest is not None and os.stat(path).st_mtime < oldest):
                    os.remove(path)
            except OSError:
                pass
