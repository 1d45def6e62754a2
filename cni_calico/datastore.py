"""The datastore layer: the only module that talks to etcd (v3, through python-etcd3's API as `pyetcd`).

It owns its configuration (`EtcdConf`, `parse_endpoints`), its errors (`DatastoreError`: unreachable
or gave up, try again later; `DatastoreConfigError`: the settings are wrong; `ConflictError`: a
guarded write lost a race), the unit of work (`Txn`) and the one conflict-retry policy
(`retry_on_conflict`, `transact`). Nothing here knows CNI, Calico's kinds or IPAM.

Values are JSON objects. Every write that must not lose a race is one `Txn` committed in one
transaction: guarded by each key's mod revision (0 = must not exist); `commit` reports success
instead of raising, so callers re-read and retry. Every call has a per-RPC timeout and fails over
across the configured endpoints until an overall deadline, then raises `DatastoreError`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
RPC_TIMEOUT = 3.0
DEADLINE = 10.0
PAGE = 500
CONFLICT_ATTEMPTS = 100  # the one bound on re-reading after lost races, everywhere
COMPACT_REV_KEY = "compact_rev_key"  # kube-apiserver's compactors' turn key, shared by every compactor
_URL = re.compile(r"^https?://([^/\s:\[\]]+|\[[0-9a-fA-F:.]+\])(:\d{1,5})?/?$")


class Failure(Exception):
    """A library's error for its caller: a message a user can act on, and details (the layers' own
    errors derive from it; the CNI edge maps them to codes, calicoctl and calico-node print them)."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class DatastoreError(Failure):
    """etcd is unreachable, timed out, refused, or kept conflicting: the caller may try again later."""


class DatastoreConfigError(DatastoreError):
    """The etcd settings are wrong (a bad URL, an unreadable TLS file): retrying will not help."""


class ConflictError(Exception):
    """A guarded write lost a race: re-read and retry (never shown to users)."""


class DatastoreRefused(DatastoreError):
    """etcd answered and refused the request itself (a value over its request size limit, an invalid
    argument): trying again or elsewhere cannot help."""


class TooManyConflicts(DatastoreError):
    """`retry_on_conflict` lost every one of its races: others keep changing the same keys."""


class WatchLost(DatastoreError):
    """A watch stream ended (the member went away, or cancelled it): reconnect, or read afresh."""


class Compacted(WatchLost):
    """The revision a watch asked for is older than etcd keeps: only a fresh read can catch up."""

    def __init__(self, msg: str, revision: int = 0) -> None:
        super().__init__(msg)
        self.revision = revision


@dataclass
class EtcdConf:
    endpoints: list[str]
    key_file: str = ""
    cert_file: str = ""
    ca_cert_file: str = ""


def parse_endpoints(text: str, source: str = "etcd_endpoints") -> list[str]:
    """`http(s)://host:port[,…]` as a list; DatastoreConfigError naming `source` when malformed."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise DatastoreConfigError(f"{source} {text!r} names no etcd endpoint (e.g. http://127.0.0.1:2379)")
    for url in urls:
        if not _URL.match(url):
            raise DatastoreConfigError(f"etcd endpoint {url!r} (from {source}) is not a URL like http://127.0.0.1:2379")
        port = re.search(r":(\d{1,5})/?$", url)
        if port and not 0 < int(port.group(1)) <= 65535:
            raise DatastoreConfigError(f"etcd endpoint {url!r} (from {source}) has port {port.group(1)}: "
                                       "a port is 1 to 65535")
    return urls


@dataclass
class KV:
    key: str
    value: dict
    mod_revision: int


@dataclass
class WatchEvent:
    """One change, as an etcd watch reports it: a put (value) or a delete (value None)."""

    key: str
    value: dict | None
    mod_revision: int

    @property
    def deleted(self) -> bool:
        return self.value is None


@dataclass
class Txn:
    """A unit of work: guards, puts, deletes and create-if-absent writes, committed once by the caller.

    Each part of a change (IPAM's block and handle, the plugin's endpoint) contributes its own
    operations; `Datastore.commit` applies all of them in one etcd transaction or none."""

    guards: dict[str, int] = field(default_factory=dict)  # key -> mod revision it must still have (0: absent)
    puts: dict[str, dict] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    if_absent: dict[str, dict] = field(default_factory=dict)  # written only where the key does not exist
    otherwise: dict[str, dict] = field(default_factory=dict)  # written instead when a guard fails

    def guard(self, key: str, mod_revision: int) -> Txn:
        self.guards[key] = mod_revision
        return self

    def put(self, key: str, value: dict, mod_revision: int | None = None) -> Txn:
        """Writes `value`; with `mod_revision`, only if the key still has it (0: creates it)."""
        if mod_revision is not None:
            self.guards[key] = mod_revision
        self.puts[key] = value
        return self

    def delete(self, key: str, mod_revision: int | None = None) -> Txn:
        if mod_revision is not None:
            self.guards[key] = mod_revision
        self.puts.pop(key, None)
        if key not in self.deletes:
            self.deletes.append(key)
        return self

    def put_if_absent(self, key: str, value: dict) -> Txn:
        """Rides along a successful commit without guarding it: written only where there is none."""
        self.if_absent[key] = value
        return self

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.if_absent or self.otherwise)


class Store(Protocol):
    """What the layers above use; `Datastore` (etcd) and the tests' in-memory double implement it."""

    def get(self, key: str) -> KV | None: ...
    def list(self, prefix: str, keys_only: bool = False, revision: int | None = None) -> list[KV]: ...
    def multi_get(self, keys_: list[str], prefixes: Iterable[str] = ()) -> dict[str, list[KV]]: ...
    def commit(self, txn: Txn) -> bool: ...
    def revision(self) -> int: ...


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DatastoreConfigError(f"cannot read etcd {what} {path}: {exc.strerror}") from None


def _warn_if_shared(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("etcd key file %s is readable by users other than its owner; chmod 600 it", path)


_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                             "\u2029": "\\u2029"})


def _go_numbers(value):
    """Whole floats as integers: Go writes 1000000, Python 1000000.0 (a policy's order, a tier's)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def encode(value: dict) -> str:
    """A value as Go's encoding/json writes it, as Calico's own writers do: compact, UTF-8 as is, `<`, `>`,
    `&`, U+2028 and U+2029 escaped, whole floats without `.0`. Keys keep the caller's order (the
    model gives struct fields in Go's declaration order and sorts what Go holds in maps)."""
    return json.dumps(_go_numbers(value), separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


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
            raise DatastoreConfigError("etcd_key_file and etcd_cert_file must be given together")
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
            from urllib.parse import urlsplit

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
                code = exc.code() if isinstance(exc, self._grpc.RpcError) and callable(getattr(exc, "code", None)) \
                    else None
                if code in (self._grpc.StatusCode.INVALID_ARGUMENT, self._grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise DatastoreRefused(f"etcd at {self.urls[self._current]} refused the {what}",
                                           _describe(exc)) from None
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
        """The store's current revision."""
        resp = self._call("revision", lambda c: c.get_range_response(b"/calico/", b"/calico0", count_only=True))
        return int(resp.header.revision)

    def list(self, prefix: str, keys_only: bool = False, revision: int | None = None) -> list[KV]:
        """Every key under prefix, read in pages so a large store never makes one huge reply.

        With `revision`, reads that snapshot (several lists then agree with each other)."""
        return list(self.pages(prefix, keys_only, revision))

    def pages(self, prefix: str, keys_only: bool = False, revision: int | None = None) -> Iterator[KV]:
        """`list`, one page at a time: a large listing is never all in memory as raw replies."""
        from pyetcd import utils

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
                yield KV(kv.key.decode(), {} if keys_only else json.loads(kv.value), kv.mod_revision)
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    def commit(self, txn: Txn) -> bool:
        """One transaction: if every guarded key still has its mod revision (0: absent), apply all.

        `txn.otherwise` is written instead when a guard fails (etcd's else branch), so "create X if
        absent, and always write Y" is still one round trip; `txn.if_absent` rides along a
        successful commit as a nested transaction (each key written only if it does not exist)."""
        t = self._txn
        compare = [t.Version(k) == 0 if rev == 0 else t.Mod(k) == rev for k, rev in txn.guards.items()]
        success = [t.Put(k, encode(v)) for k, v in txn.puts.items()] + [t.Delete(k) for k in txn.deletes]
        for k, v in txn.if_absent.items():
            success.append(t.Txn(compare=[t.Version(k) == 0], success=[t.Put(k, encode(v))], failure=[]))
        failure = [t.Put(k, encode(v)) for k, v in txn.otherwise.items()]
        ok, _ = self._call("transaction", lambda c: c.transaction(compare=compare, success=success, failure=failure))
        return bool(ok)

    def multi_get(self, keys_: list[str], prefixes: Iterable[str] = ()) -> dict[str, list[KV]]:
        """Several keys and prefixes read in one round trip (one snapshot): {key or prefix: [KV]}."""
        from pyetcd import utils

        prefixes = list(prefixes)
        t = self._txn
        ops = [t.Get(k) for k in keys_]
        ops += [t.Get(p, utils.prefix_range_end(p.encode())) for p in prefixes]
        _, responses = self._call("multi-get", lambda c: c.transaction(compare=[], success=ops, failure=[]))
        out: dict[str, list[KV]] = {}
        for name, kvs in zip([*keys_, *prefixes], responses, strict=True):
            out[name] = [KV(meta.key.decode(), json.loads(value), meta.mod_revision) for value, meta in kvs]
        return out

    def compact_step(self, seen: int, revision: int) -> tuple[int, int]:
        """One round of kube-apiserver's etcd compactor (k8s.io/apiserver storage/etcd3/compact.go),
        which Calico's kube-controllers runs too: every compactor of a cluster takes turns through
        the version of the key `compact_rev_key`. If that version is still `seen`, this one wins the
        round: it records the current revision there and compacts etcd to `revision` (what the
        previous round saw, so one period of history is kept; nothing on the first round). Returns
        the (version, revision) to pass next time."""
        from pyetcd import etcdrpc

        key = COMPACT_REV_KEY.encode()

        def txn(c):
            compare = etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.VERSION, key=key,
                                      version=seen)
            put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=str(revision).encode()))
            get = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
            return c.kvstub.Txn(etcdrpc.TxnRequest(compare=[compare], success=[put], failure=[get]), c.timeout,
                                credentials=c.call_credentials, metadata=c.metadata)

        resp = self._call("compaction turn", txn)
        current = int(resp.header.revision)
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            return (int(kvs[0].version) if kvs else 0), current
        if revision:
            grpc = self._grpc

            def compact(c) -> bool:
                try:
                    c.compact(revision)
                    return True
                except grpc.RpcError as exc:  # already compacted past it (another compactor): fine
                    if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                        return False
                    raise

            if self._call("compaction", compact):
                log.info("compacted etcd to revision %d", revision)
        return seen + 1, current

    def watch(self, prefixes: list[str], start_revision: int) -> Watch:
        """Every change under `prefixes` from `start_revision` on, in revision order (see `Watch`).

        One watcher covers the range from the lowest prefix to the end of the highest, so the
        changes of every prefix come in one ordered stream: keys between them arrive too, and
        the caller skips what it does not want."""
        watch = Watch(self, min(prefixes), max(prefixes), start_revision)
        if start_revision > 1 and self.compacted_since(start_revision - 1):
            watch.cancel()
            raise Compacted(f"etcd has compacted revision {start_revision}: its deletions are gone")
        return watch

    def compacted_since(self, revision: int) -> bool:
        """Whether etcd has compacted past `revision`. A compaction at C drops the tombstones of
        revision C itself, so a watch from C would silently miss those deletions while etcd still
        accepts it (it refuses only revisions below C): a watch from S is exact only if revision S - 1
        can still be read, which this asks with one count-only read."""
        grpc = self._grpc

        def read(c) -> bool:
            try:
                c.get_range_response(b"/calico/", b"/calico0", count_only=True, revision=revision)
                return False
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    return True
                raise

        return self._call("compaction check", read)

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real outcome
                pass
        self._clients.clear()


# HTTP/2 pings on the watch's channel: a member that stops answering (frozen, cut off) fails the
# stream within ~keepalive time + timeout, rather than leaving a silent watch. etcd refuses pings
# more often than every 5 s (--grpc-keepalive-min-time).
WATCH_KEEPALIVE = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
                   ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


class Watch:
    """A watch of a key range from a revision on, on one etcd member (the first that accepts, from
    the datastore's current one). Responses are queued by the client's thread and taken by the
    caller's with `get`; a stream that fails raises WatchLost there (Compacted when the revision
    is gone), once, and the watch is over: the caller starts a new one from `revision` + 1.

    `revision` is the revision up to which the member has delivered every change (its response
    headers), so a new watch from `revision + 1` misses nothing and repeats nothing; `member_id`
    says which member it was."""

    def __init__(self, ds: Datastore, first: str, last_prefix: str, start_revision: int) -> None:
        import queue

        from pyetcd import events, exceptions

        self._queue: queue.Queue = queue.Queue()
        self._exceptions, self._events = exceptions, events
        self.revision = start_revision - 1
        self.member_id = 0
        self.url = ""
        self._client = None
        self._ids: list[int] = []
        last: Exception | None = None
        for attempt in range(len(ds.urls)):
            index = (ds._current + attempt) % len(ds.urls)
            try:
                self._start(ds, index, first, last_prefix, start_revision)
                ds._current = index
                return
            except exceptions.RevisionCompactedError as exc:
                self.cancel()
                raise Compacted(f"etcd has compacted revision {start_revision}", exc.compacted_revision) from None
            except Exception as exc:  # noqa: BLE001 - any failure to start: try the next member
                last = exc
                self.cancel()
        raise WatchLost(f"cannot watch etcd at {', '.join(ds.urls)}", _describe(last))

    def _start(self, ds: Datastore, index: int, first: str, last_prefix: str, start_revision: int) -> None:
        from urllib.parse import urlsplit

        from pyetcd import utils

        url = urlsplit(ds.urls[index])
        secure = url.scheme == "https"
        endpoint = ds._pyetcd.Endpoint(url.hostname, url.port or 2379, secure=secure,
                                       creds=ds._creds if secure else None, time_retry=0, opts=WATCH_KEEPALIVE)
        self._client = ds._pyetcd.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=ds.rpc_timeout)
        self.url = ds.urls[index]
        end = utils.prefix_range_end(last_prefix.encode())
        self._ids.append(self._client.add_watch_callback(first, self._queue.put, range_end=end,
                                                         start_revision=start_revision))

    def get(self, timeout: float | None = None) -> list[WatchEvent] | None:
        """The events of every response queued now (waiting up to `timeout` for the first); None
        when nothing came. Raises WatchLost (or Compacted) when the stream is over."""
        import queue

        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        out: list[WatchEvent] = []
        item = first
        while True:
            self._take(item, out)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out

    def _take(self, response, out: list[WatchEvent]) -> None:
        if isinstance(response, self._exceptions.RevisionCompactedError):
            raise Compacted(f"etcd compacted the watched revisions (now {response.compacted_revision})",
                            response.compacted_revision)
        if isinstance(response, WatchLost):
            raise response
        if isinstance(response, BaseException):
            raise WatchLost(f"the watch on etcd at {self.url} ended", _describe(response))  # type: ignore[arg-type]
        header = response.header
        self.member_id = self.member_id or int(header.member_id)
        for event in response.events:
            deleted = isinstance(event, self._events.DeleteEvent)
            out.append(WatchEvent(event.key.decode(), None if deleted else json.loads(event.value), event.mod_revision))
        self.revision = max(self.revision, int(header.revision))

    def cancel(self) -> None:
        """Ends the watch; a later `get` raises WatchLost (as for a stream that broke)."""
        self._queue.put(WatchLost(f"the watch on etcd at {self.url} was cancelled"))
        if self._client is not None:
            for watch_id in self._ids:
                try:
                    self._client.cancel_watch(watch_id)
                except Exception:  # noqa: BLE001 - the stream may already be gone
                    pass
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
        self._ids = []


def retry_on_conflict(fn: Callable[[], T], what: str, attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Re-runs a read-modify-commit until it wins (fn raises ConflictError when it loses), at most
    `attempts` times with a growing pause; then DatastoreError (try again later)."""
    for attempt in range(attempts):
        try:
            return fn()
        except ConflictError:
            time.sleep(min(0.001 * (attempt + 1), 0.05))
    raise TooManyConflicts(f"{what}: gave up after {attempts} conflicting concurrent updates")


def transact(store: Store, attempt: Callable[[], tuple[Txn, T]], what: str) -> T:
    """Builds a unit of work with `attempt()` (reads, decides, returns the Txn and the outcome) and
    commits it, re-running `attempt` after a lost race under the one retry policy."""

    def once() -> T:
        txn, outcome = attempt()
        if txn and not store.commit(txn):
            raise ConflictError(what)
        return outcome

    return retry_on_conflict(once, what)


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
