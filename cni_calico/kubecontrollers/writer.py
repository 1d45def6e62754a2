"""The Calico resources one controller owns in etcd, written only when they differ.

A controller owns the resources of one kind whose names start with its prefix (`knp.default.`,
`kns.`, `ksa.`): reconciling removes the owned ones nothing in Kubernetes asks for any more, and
leaves every other resource alone (an operator's own `kns-team` profile, say). Each write is one
etcd transaction guarded by the key's mod revision, retried on conflict; an update keeps the
resource's uid and creationTimestamp (as clientv3's Update does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import Store, Txn, transact
from cni_calico.v3 import Resource, new_resource

log = logging.getLogger(__name__)

Ident = tuple[str, str]  # (namespace or "", name)


@dataclass
class Owned:
    ds: Store
    kind: str  # NetworkPolicy, Profile
    plural: str
    prefix: str

    def key(self, ident: Ident) -> str:
        return keys.resource(self.plural, ident[1], ident[0])

    def current(self) -> set[Ident]:
        """The owned resources that exist now."""
        out = set()
        for kv in self.ds.list(keys.resource_dir(self.plural), keys_only=True):
            parsed = keys.parse_resource(kv.key)
            if parsed is not None and parsed.name.startswith(self.prefix):
                out.add((parsed.namespace, parsed.name))
        return out

    def ensure(self, ident: Ident, spec: dict) -> bool:
        """The resource with this spec; True when something was written."""
        key = self.key(ident)

        def attempt() -> tuple[Txn, bool]:
            kv = self.ds.get(key)
            if kv is None:
                res = new_resource(self.kind, ident[1], spec, namespace=ident[0])
                return Txn().put(key, res.to_value(), 0), True
            old = Resource.from_value(kv.value, self.kind)
            value = Resource(self.kind, old.metadata, dict(spec), old.other).to_value()
            if value == kv.value:
                return Txn(), False
            return Txn().put(key, value, kv.mod_revision), True

        written = transact(self.ds, attempt, f"writing {self.kind} {'/'.join(filter(None, ident))}")
        if written:
            log.info("wrote %s %s", self.kind, "/".join(filter(None, ident)))
        return written

    def remove(self, ident: Ident) -> bool:
        key = self.key(ident)

        def attempt() -> tuple[Txn, bool]:
            kv = self.ds.get(key)
            return (Txn().delete(key, kv.mod_revision), True) if kv else (Txn(), False)

        removed = transact(self.ds, attempt, f"deleting {self.kind} {'/'.join(filter(None, ident))}")
        if removed:
            log.info("deleted %s %s", self.kind, "/".join(filter(None, ident)))
        return removed

    def reconcile(self, desired: dict[Ident, dict]) -> None:
        """Exactly the desired owned resources: each written where it differs, the rest deleted."""
        for ident, spec in desired.items():
            self.ensure(ident, spec)
        for ident in self.current() - set(desired):
            self.remove(ident)
