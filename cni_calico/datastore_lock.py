"""Calico's datastore lock: ClusterInformation `default` with `datastoreReady: false` (what
`calicoctl datastore migrate lock` writes) stops the CNI plugin and calico-node, as Calico's do.

The plugin refuses ADD, DEL and CHECK with Calico's message (CNI code 11, try again later: kubelet
retries); calico-node keeps following etcd but programs nothing until the flag is back. A cluster
with no ClusterInformation at all (a plugin-only setup, before any calico-node ran) counts as ready:
Calico's plugin would refuse it, our tests and plugin-only users run that way.
"""

from __future__ import annotations

from cni_calico import keys

KEY = keys.resource("clusterinformations", "default")
NOT_READY = "Calico is currently not ready to process requests"  # Calico's plugin says so


def locked(value: dict | None) -> bool:
    """Whether a ClusterInformation value says the datastore is locked (only `false` locks)."""
    spec = value.get("spec") if isinstance(value, dict) else None
    return isinstance(spec, dict) and spec.get("datastoreReady") is False


def check_read(read: dict[str, list]) -> None:
    """`check` on the lock as a multi-key read (Store.multi_get) that included KEY found it."""
    check(read[KEY][0].value if read[KEY] else None)


def check(value: dict | None) -> None:
    """Raises the CNI error when the value locks the datastore."""
    if locked(value):
        from cni_calico.errors import TRY_AGAIN_LATER, CniError

        raise CniError(TRY_AGAIN_LATER, NOT_READY,
                       "ClusterInformation default has datastoreReady false (calicoctl datastore migrate lock): "
                       "an upgrade or migration may be in progress; `calicoctl datastore migrate unlock` ends it")
