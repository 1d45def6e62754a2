"""An in-memory datastore double for unit tests: etcd's semantics without etcd.

It implements cni_calico.datastore.Store as etcd v3 does for what the product uses: one global
revision that every write advances, per-key mod revisions and versions (a deleted key's version
is 0 again), guarded transactions whose compare failures apply `otherwise` and nothing else,
create-if-absent riders, snapshot reads at an older revision (until compacted), and a history of
changes for watchers (`events_since`, with compaction). Values are stored as JSON text, so a
caller that mutates what it read never changes the store behind its back.

Seams for race tests: `before_commit` runs just before each commit is checked (a test can write
there, as a concurrent node would, and so make the guard fail); `fail` makes every call raise
DatastoreError, as an unreachable etcd does; `calls` counts round trips.

It is a test double by design, not a stand-in for integration tests: those run on real etcd.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from cni_calico.datastore import KV, Compacted, DatastoreError, Txn, WatchEvent


class MemStore:
    def __init__(self, data: dict[str, dict] | None = None) -> None:
        self.rev = 1
        self.data: dict[str, tuple[str, int, int, int]] = {}  # key -> (json, mod revision, create revision, version)
        self.history: list[tuple[str, str | None, int]] = []  # (key, json or None, revision), oldest first
        self.compacted = 0
        self.before_commit: Callable[[MemStore, Txn], None] | None = None
        self.fail = False
        self.calls = 0
        self.commits = 0
        self.failed_commits = 0
        for key, value in (data or {}).items():
            self.put(key, value)

    # --- writes outside the product's API: seeding and concurrent writers ----------------------

    def put(self, key: str, value: dict) -> int:
        self.rev += 1
        self._write(key, json.dumps(value))
        return self.rev

    def delete(self, key: str) -> bool:
        if key not in self.data:
            return False
        self.rev += 1
        self._remove(key)
        return True

    def compact(self, revision: int | None = None) -> None:
        """Forget history up to `revision` (default: now), as etcd's compaction does."""
        self.compacted = self.rev if revision is None else revision
        self.history = [h for h in self.history if h[2] > self.compacted]

    def _write(self, key: str, text: str) -> None:
        _, _, created, version = self.data.get(key, ("", 0, self.rev, 0))
        self.data[key] = (text, self.rev, created, version + 1)
        self.history.append((key, text, self.rev))

    def _remove(self, key: str) -> None:
        del self.data[key]
        self.history.append((key, None, self.rev))

    # --- Store ----------------------------------------------------------------------------------

    def _call(self) -> None:
        self.calls += 1
        if self.fail:
            raise DatastoreError("etcd at memstore unreachable (test)")

    def _kv(self, key: str) -> KV | None:
        got = self.data.get(key)
        return None if got is None else KV(key, json.loads(got[0]), got[1])

    def get(self, key: str) -> KV | None:
        self._call()
        return self._kv(key)

    def revision(self) -> int:
        self._call()
        return self.rev

    def list(self, prefix: str, keys_only: bool = False, revision: int | None = None) -> list[KV]:
        self._call()
        if revision is not None and revision != self.rev:
            return [KV(k, {} if keys_only else json.loads(v), r) for k, (v, r) in sorted(self._at(revision).items())
                    if k.startswith(prefix)]
        return [KV(k, {} if keys_only else json.loads(v[0]), v[1]) for k, v in sorted(self.data.items())
                if k.startswith(prefix)]

    def _at(self, revision: int) -> dict[str, tuple[str, int]]:
        """The store as it was at `revision` (rebuilt from the history; Compacted when gone)."""
        if revision < self.compacted:
            raise Compacted(f"revision {revision} is compacted (now {self.compacted})")
        state = {k: (v[0], v[1]) for k, v in self.data.items()}
        for key, _, rev in reversed(self.history):
            if rev <= revision:
                break
            earlier = [(v, r) for k, v, r in self.history if k == key and r <= revision]
            if earlier and earlier[-1][0] is not None:
                state[key] = (earlier[-1][0], earlier[-1][1])
            else:
                state.pop(key, None)
        return state

    def multi_get(self, keys_: list[str], prefixes: Iterable[str] = ()) -> dict[str, list[KV]]:
        self._call()
        out: dict[str, list[KV]] = {}
        for key in keys_:
            kv = self._kv(key)
            out[key] = [kv] if kv else []
        for prefix in prefixes:
            out[prefix] = [self._kv(k) for k in sorted(self.data) if k.startswith(prefix)]  # type: ignore[misc]
        return out

    def commit(self, txn: Txn) -> bool:
        self._call()
        if self.before_commit is not None:
            hook, self.before_commit = self.before_commit, None  # once: the test re-arms it if it wants
            hook(self, txn)
        self.commits += 1
        ok = all((self.data[k][1] if k in self.data else 0) == rev for k, rev in txn.guards.items())
        if not ok:
            self.failed_commits += 1
            if txn.otherwise:
                self.rev += 1
                for key, value in txn.otherwise.items():
                    self._write(key, json.dumps(value))
            return False
        if txn:
            self.rev += 1  # one transaction, one revision, as etcd
            for key, value in txn.puts.items():
                self._write(key, json.dumps(value))
            for key in txn.deletes:
                if key in self.data:
                    self._remove(key)
            for key, value in txn.if_absent.items():
                if key not in self.data:
                    self._write(key, json.dumps(value))
        return True

    # --- watching ---------------------------------------------------------------------------

    def events_since(self, revision: int) -> list[WatchEvent]:
        """Every change after `revision`, in order (Compacted if some are forgotten)."""
        if revision < self.compacted:
            raise Compacted(f"revision {revision} is compacted (now {self.compacted})")
        return [WatchEvent(k, None if v is None else json.loads(v), r) for k, v, r in self.history if r > revision]

    def value(self, key: str) -> dict | None:
        """The stored value, without counting a round trip (for assertions)."""
        got = self.data.get(key)
        return None if got is None else json.loads(got[0])
