"""The KubeControllersConfiguration `default` in etcd: created with Calico's defaults when absent,
its status written, its changes followed (Calico's RunConfigController, pkg/config/runconfig.go).

What holds:
- Created as Calico's clientv3 creates it (cni_calico.v3's envelope: uid, creationTimestamp,
  `"status":{}`), only where absent (a create that loses a race reads the winner's).
- The status is written only when it differs (our own write comes back through the watch), guarded
  by the key's mod revision; a lost race is re-read on the next event.
- `follow` calls `changed(run)` when the merged running configuration differs from the one the
  process runs; a deleted `default` is created again, as Calico does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cni_calico import keys
from cni_calico.datastore import KV, DatastoreError, Store, Txn
from cni_calico.kubecontrollers.runconfig import KIND, NAME, PLURAL, RunConfig, default_spec, merge
from cni_calico.v3 import Resource, new_resource

log = logging.getLogger(__name__)

KEY = keys.resource(PLURAL, NAME)
BACKOFF = 1.0  # Calico's datastoreBackoff


def get_or_create(ds: Store) -> KV:
    kv = ds.get(KEY)
    if kv is None:
        if ds.commit(Txn().put(KEY, new_resource(KIND, NAME, default_spec()).to_value(), 0)):
            log.info("created KubeControllersConfiguration %s with Calico's defaults", NAME)
        kv = ds.get(KEY)
        if kv is None:
            raise DatastoreError(f"KubeControllersConfiguration {NAME} vanished right after its creation")
    return kv


def spec_of(kv: KV) -> dict:
    return Resource.from_value(kv.value, KIND).spec


def write_status(ds: Store, kv: KV, status: dict) -> bool:
    """The status stored (when it differs); False when the resource changed under us."""
    res = Resource.from_value(kv.value, KIND)
    if res.other.get("status") == status:
        return True
    value = Resource(KIND, res.metadata, res.spec, {**res.other, "status": status}).to_value()
    return ds.commit(Txn().put(KEY, value, kv.mod_revision))


def load(ds: Store, env: dict[str, str]) -> tuple[RunConfig, KV]:
    """Start of day: the running configuration, its status written; retried until etcd answers."""
    while True:
        try:
            kv = get_or_create(ds)
            run, status, _ = merge(env, spec_of(kv))
            if write_status(ds, kv, status):
                return run, ds.get(KEY) or kv  # as stored now, with its status
        except DatastoreError as exc:
            log.warning("unable to get KubeControllersConfiguration(%s): %s", NAME, exc)
        time.sleep(BACKOFF)


def _check(ds: Store, env: dict[str, str], current: RunConfig, changed: Callable[[RunConfig], None]) -> bool:
    """`default` read (created again if deleted), merged, its status written; True (after
    `changed(run)`) when what runs would differ."""
    kv = ds.get(KEY)
    if kv is None:
        log.info("KubeControllersConfiguration %s was deleted: creating it again", NAME)
        kv = get_or_create(ds)
    run, status, _ = merge(env, spec_of(kv))
    write_status(ds, kv, status)
    if run != current:
        changed(run)
        return True
    return False


def follow(ds, env: dict[str, str], current: RunConfig, revision: int, changed: Callable[[RunConfig], None],
           stop: threading.Event) -> None:
    """Watches `default` after `revision`; every change is merged, its status written, and
    `changed(run)` called (once, then it returns) when what runs would differ. A watch that cannot
    start again from where it was (etcd unreachable, or that revision compacted) re-reads the
    resource and watches from then on."""
    while not stop.is_set():
        try:
            watch = ds.watch([KEY], revision + 1)
        except DatastoreError as exc:
            log.warning("unable to watch KubeControllersConfigurations: %s", exc)
            stop.wait(BACKOFF)
            try:
                revision = ds.revision()
                if _check(ds, env, current, changed):
                    return
            except DatastoreError:
                pass
            continue
        try:
            while not stop.is_set():
                events = watch.get(timeout=1.0)
                if not events:
                    continue
                revision = max(revision, max(e.mod_revision for e in events))
                if any(e.key == KEY for e in events) and _check(ds, env, current, changed):
                    return
        except DatastoreError as exc:  # the stream ended (WatchLost): watch again from what we saw
            log.warning("watch of KubeControllersConfiguration %s: %s", NAME, exc)
            stop.wait(BACKOFF)
        finally:
            watch.cancel()
