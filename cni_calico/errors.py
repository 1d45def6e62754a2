"""CNI error codes, the CNI edge's exception, and the one place library errors become CNI codes.

Only `skel` turns a `CniError` into the error JSON on stdout. The layers below the CNI
handlers raise their own errors (the datastore's, IPAM's); `cni_error` maps them, and
`at_cni_edge` applies the mapping to a handler, so no library needs to know CNI.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

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


def cni_error(exc: BaseException) -> CniError | None:
    """The CNI error a library error stands for; None for anything else (a bug: code 999)."""
    from cni_calico.datastore import DatastoreConfigError, DatastoreError, DatastoreRefused
    from ipam.errors import AddressInUse, InvalidRequest, IpamError, PoolExhausted

    if isinstance(exc, CniError):
        return exc
    if isinstance(exc, DatastoreConfigError | DatastoreRefused):  # retrying cannot help: the request is wrong
        return CniError(INVALID_CONFIG, exc.msg, exc.details)
    if isinstance(exc, DatastoreError):
        return CniError(TRY_AGAIN_LATER, exc.msg, exc.details)
    if isinstance(exc, IpamError):
        code = {PoolExhausted: POOL_EXHAUSTED, AddressInUse: ADDRESS_CONFLICT, InvalidRequest: INVALID_CONFIG}
        return CniError(code.get(type(exc), INVALID_CONFIG), exc.msg, exc.details)
    return None


H = TypeVar("H", bound=Callable)


def at_cni_edge(handler: H) -> H:
    """`handler`, with the datastore's and IPAM's errors raised as the CNI errors they stand for."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except CniError:
            raise
        except Exception as exc:
            mapped = cni_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapped  # type: ignore[return-value]
