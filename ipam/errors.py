"""IPAM's own errors: the library reports in its words; the CNI edge maps them to codes."""

from __future__ import annotations


class IpamError(Exception):
    """Something IPAM cannot do for this request; the message says what and where."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class PoolExhausted(IpamError):
    """No free address in the pools the request may use."""


class AddressInUse(IpamError):
    """A requested address is held by someone else."""


class InvalidRequest(IpamError):
    """The request names a pool or address IPAM cannot use (missing, disabled, outside every pool)."""
