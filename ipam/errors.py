"""IPAM's own errors: the library reports in its words; the CNI edge maps them to codes."""

from __future__ import annotations

from cni_calico.datastore import Failure


class IpamError(Failure):
    """Something IPAM cannot do for this request; the message says what and where."""


class PoolExhausted(IpamError):
    """No free address in the pools the request may use."""


class AddressInUse(IpamError):
    """A requested address is held by someone else."""


class InvalidRequest(IpamError):
    """The request names a pool or address IPAM cannot use (missing, disabled, outside every pool)."""
