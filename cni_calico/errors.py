"""CNI error codes and the one exception type that business code raises.

Only `skel` turns a `CniError` into the error JSON on stdout; everything else
raises with a message a user can act on.
"""

from __future__ import annotations

# Codes from the CNI spec (SPEC.md, "Error"), plus our own from 100 up.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

DATAPLANE_FAILURE = 100  # netlink or sysctl work on the node or in the pod failed
POOL_EXHAUSTED = 101  # no free address in the selected pools
ADDRESS_CONFLICT = 102  # interface or address already present where we must create it
KUBERNETES_API = 103  # the Kubernetes API could not be read or refused us
INTERNAL = 999  # a bug: the traceback goes to the log, never to stdout


class CniError(Exception):
    """An error the runtime should see: code, message, and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class DatastoreError(CniError):
    """etcd is unreachable, timed out or refused: the caller may try again later."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(TRY_AGAIN_LATER, msg, details)


class ConflictError(Exception):
    """A guarded etcd write lost a race: re-read and retry (never shown to users)."""
