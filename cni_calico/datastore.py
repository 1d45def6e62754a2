"""The only module that talks to etcd (v3, through python-etcd3's API as `pyetcd`).

Values are JSON objects. Every write that must not lose a race is a `commit`:
one transaction guarded by each key's mod revision (0 = must not exist), which
reports success instead of raising so callers re-read and retry. Every call has
a per-RPC timeout and fails over across the configured endpoints until an
overall deadline, then raises `DatastoreError` (CNI code 11, try again later).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from cni_calico.errors import INVALID_CONFIG, CniError, DatastoreError
from cni_calico.netconf import EtcdConf

log = logging.getLogger(__name__)

T = TypeVar("T")
RPC_TIMEOUT = 3.0
DEADLINE = 10.0
PAGE = 500


@dataclass
class KV:
    key: str
    value: dict
    mod_revision: int


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CniError(INVALID_CONFIG, f"cannot read etcd {what} {path}: {exc.strerror}") from None


def _warn_if_shared(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("etcd key file %s is readable by users other than its owner; chmod 600 it", path)


class Datastore:
    def __init__(self, conf: EtcdConf, rpc_timeout: float = RPC_TIMEOUT, deadline: float = DEADLINE) -> None:
        import grpc  # deferred: grpc and the protobuf stubs are the costliest imports we have
        import pyetcd
        from pyetcd import transactions

        self._grpc = grpc
        self._pyetcd = pyetcd
        self._txn = transactions
        self.urls = list(conf.endpoints)
        self.rpc_timeout = rpc_timeout
        self.deadline = deadline
        self._creds = None
        self._tls_files = ""
        if any(u.startswith("https://") for u in self.urls) or conf.ca_cert_file:
            self._creds = self._tls_credentials(conf)
            ca, cert = conf.ca_cert_file or "(system)", conf.cert_file or "(none)"
            self._tls_files = f"; TLS with CA {ca}, certificate {cert}"
        self._clients: dict[int, object] = {}
        self._current = 0
        self.round_trips = 0  # every call since start
        self._local = threading.local()  # per-thread count: one agent serves many requests at once

    def _tls_credentials(self, conf: EtcdConf):
        if bool(conf.key_file) != bool(conf.cert_file):
            raise CniError(INVALID_CONFIG, "etcd_key_file and etcd_cert_file must be given together")
        ca = _read_file(conf.ca_cert_file, "CA certificate file") if conf.ca_cert_file else None
        key = cert = None
        if conf.key_file:
            _warn_if_shared(conf.key_file)
            key = _read_file(conf.key_file, "key file")
            cert = _read_file(conf.cert_file, "certificate file")
        return self._grpc.ssl_channel_credentials(ca, key, cert)

    def _client(self, index: int):
        client = self._clients.get(index)
        if client is None:
            url = urlsplit(self.urls[index])
            secure = url.scheme == "https"
            endpoint = self._pyetcd.Endpoint(
                url.hostname, url.port or 2379, secure=secure, creds=self._creds if secure else None, time_retry=0
            )
            client = self._pyetcd.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=self.rpc_timeout)
            self._clients[index] = client
        return client

    def _call(self, what: str, fn: Callable[[object], T]) -> T:
        """Runs fn(client), failing over across endpoints with back-off until the deadline."""
        start = time.monotonic()
        delay = 0.05
        last: Exception | None = None
        tried = 0
        while True:
            client = self._client(self._current)
            try:
                self.round_trips += 1
                self._local.calls = getattr(self._local, "calls", 0) + 1
                return fn(client)
            except (self._grpc.RpcError, self._pyetcd.Etcd3Exception, ValueError) as exc:
                last = exc
                tried += 1
                log.debug("etcd %s at %s failed: %r", what, self.urls[self._current], exc)
                self._current = (self._current + 1) % len(self.urls)
            elapsed = time.monotonic() - start
            if elapsed >= self.deadline:
                break
            # Try every endpoint once at once, then back off between rounds.
            if tried % len(self.urls) == 0:
                time.sleep(min(delay, max(0.0, self.deadline - elapsed)))
                delay = min(delay * 2, 1.0)
        where = ", ".join(self.urls)
        raise DatastoreError(
            f"etcd at {where} unreachable after {self.deadline:.0f} s ({what}{self._tls_files})",
            _describe(last),
        )

    def get(self, key: str) -> KV | None:
        value, meta = self._call("get", lambda c: c.get(key))
        if meta is None:
            return None
        return KV(key, json.loads(value), meta.mod_revision)

    def calls(self) -> int:
        """Round trips this thread made since `reset_calls` (what one CNI operation cost)."""
        return getattr(self._local, "calls", 0)

    def reset_calls(self) -> None:
        self._local.calls = 0

    def revision(self) -> int:
        """The store's current revision: one cheap call that tells whether anything changed."""
        resp = self._call("revision", lambda c: c.get_range_response(b"/calico/", b"/calico0", count_only=True))
        return int(resp.header.revision)

    def list(self, prefix: str, keys_only: bool = False, revision: int | None = None) -> list[KV]:
        """Every key under prefix, read in pages so a large store never makes one huge reply.

        With `revision`, reads that snapshot (several lists then agree with each other)."""
        from pyetcd import utils

        out: list[KV] = []
        start = prefix.encode()
        end = utils.prefix_range_end(start)
        while True:
            resp = self._call(
                "list",
                lambda c, s=start, r=revision: c.get_range_response(
                    s, end, limit=PAGE, revision=r, keys_only=keys_only
                ),
            )
            revision = resp.header.revision  # later pages read the same snapshot
            for kv in resp.kvs:
                value = {} if keys_only else json.loads(kv.value)
                out.append(KV(kv.key.decode(), value, kv.mod_revision))
            if not resp.more or not resp.kvs:
                return out
            start = resp.kvs[-1].key + b"\0"

    def commit(
        self,
        guards: dict[str, int],
        puts: dict[str, dict] | None = None,
        deletes: Iterable[str] = (),
        otherwise: dict[str, dict] | None = None,
        create_if_absent: dict[str, dict] | None = None,
    ) -> bool:
        """One transaction: if every guarded key still has its mod revision (0: absent), apply all.

        `otherwise` is written instead when a guard fails (etcd's else branch), so "create X if
        absent, and always write Y" is still one round trip. `create_if_absent` rides along with a
        successful commit as a nested transaction: each key is written only if it does not exist."""
        t = self._txn

        def put(k: str, v: dict):
            return t.Put(k, json.dumps(v, separators=(",", ":")))

        compare = [t.Version(k) == 0 if rev == 0 else t.Mod(k) == rev for k, rev in guards.items()]
        success = [put(k, v) for k, v in (puts or {}).items()] + [t.Delete(k) for k in deletes]
        for k, v in (create_if_absent or {}).items():
            success.append(t.Txn(compare=[t.Version(k) == 0], success=[put(k, v)], failure=[]))
        failure = [put(k, v) for k, v in (otherwise or {}).items()]
        ok, _ = self._call("transaction", lambda c: c.transaction(compare=compare, success=success, failure=failure))
        return bool(ok)

    def multi_get(self, keys_: list[str], prefixes: list[str] = ()) -> dict[str, list[KV]]:
        """Several keys and prefixes read in one round trip (one snapshot): {key or prefix: [KV]}."""
        from pyetcd import utils

        t = self._txn
        ops = [t.Get(k) for k in keys_]
        ops += [t.Get(p, utils.prefix_range_end(p.encode())) for p in prefixes]
        _, responses = self._call("multi-get", lambda c: c.transaction(compare=[], success=ops, failure=[]))
        out: dict[str, list[KV]] = {}
        for name, kvs in zip([*keys_, *prefixes], responses, strict=True):
            out[name] = [KV(meta.key.decode(), json.loads(value), meta.mod_revision) for value, meta in kvs]
        return out

    def put(self, key: str, value: dict) -> None:
        self._call("put", lambda c: c.put(key, json.dumps(value, separators=(",", ":"))))

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", lambda c: c.delete(key)))

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real outcome
                pass
        self._clients.clear()


def retry_on_conflict(fn: Callable[[], T], what: str, attempts: int = 100) -> T:
    """Re-runs a read-modify-commit until it wins (fn raises ConflictError when it loses)."""
    from cni_calico.errors import ConflictError

    for attempt in range(attempts):
        try:
            return fn()
        except ConflictError:
            time.sleep(min(0.001 * (attempt + 1), 0.05))
    raise DatastoreError(f"{what}: gave up after {attempts} conflicting concurrent updates")


def _describe(exc: Exception | None) -> str:
    if exc is None:
        return ""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            return f"{exc.code().name}: {details()}"  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            pass
    return f"{type(exc).__name__}: {exc}"
