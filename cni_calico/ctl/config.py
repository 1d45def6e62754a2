"""calicoctl's datastore: where to find it, the connection, and the resources in it.

As Calico's calicoctl: `--config FILE` (a CalicoAPIConfig in YAML or JSON) when
given, else /etc/calico/calicoctl.cfg when it exists, else the environment
(DATASTORE_TYPE, ETCD_ENDPOINTS, ETCD_KEY_FILE, ETCD_CERT_FILE,
ETCD_CA_CERT_FILE). A file is used alone, never merged with the environment.
Only the etcdv3 datastore exists here; anything else is refused before any
connection. The connection gives up well within 10 s, so an unreachable etcd
is a prompt one-line error rather than a hang.

`ResourceStore` writes resources as single etcd transactions guarded by the
key's mod revision (create: must not exist), so a concurrent change is never
overwritten: a stale metadata.resourceVersion is refused, and a write without
one re-reads and retries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cni_calico import keys
from cni_calico.datastore import (
    ConflictError,
    DatastoreConfigError,
    EtcdConf,
    TooManyConflicts,
    Txn,
    parse_endpoints,
    retry_on_conflict,
)
from cni_calico.resources import (
    AlreadyExists,
    DoesNotExist,
    FieldError,
    Kind,
    Resource,
    UpdateConflict,
    ValidationError,
    from_stored,
    lookup,
)
from cni_calico.v3 import API_VERSION, new_uid, timestamp

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/calico/calicoctl.cfg"
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DATASTORE = "etcdv3"
RPC_TIMEOUT = 2.0  # per call; an unanswering endpoint costs this much at most
DEADLINE = 6.0  # all endpoints, all retries: start-up plus this stays under 10 s
SPEC_FIELDS = ("datastoreType", "etcdEndpoints", "etcdKeyFile", "etcdCertFile", "etcdCACertFile")


class ConfigError(Exception):
    """The datastore configuration is missing, unreadable or unsupported."""


@dataclass
class ClientConfig:
    datastore_type: str
    etcd: EtcdConf
    source: str  # "environment" or the file's path, for messages


def load(path: str | None, env: Mapping[str, str] | None = None) -> ClientConfig:
    env = os.environ if env is None else env
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is not None:
        return _from_file(path)
    return _build(
        "environment",
        env.get("DATASTORE_TYPE") or DATASTORE,
        env.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS,
        env.get("ETCD_KEY_FILE", ""),
        env.get("ETCD_CERT_FILE", ""),
        env.get("ETCD_CA_CERT_FILE", ""),
    )


def _from_file(path: str) -> ClientConfig:
    import yaml  # deferred: calicoctl only

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "CalicoAPIConfig":
        raise ConfigError(f"config file {path} is not a CalicoAPIConfig (expected 'kind: CalicoAPIConfig')")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"config file {path}: apiVersion must be {API_VERSION}, not {doc.get('apiVersion')!r}")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"config file {path}: 'spec' must be a mapping")
    for key, value in spec.items():
        if key not in SPEC_FIELDS:
            raise ConfigError(
                f"config file {path}: spec.{key} is not supported (supported: {', '.join(SPEC_FIELDS)})"
            )
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: spec.{key} must be a string")
    return _build(
        path,
        spec.get("datastoreType") or DATASTORE,
        spec.get("etcdEndpoints") or DEFAULT_ENDPOINTS,
        spec.get("etcdKeyFile", ""),
        spec.get("etcdCertFile", ""),
        spec.get("etcdCACertFile", ""),
    )


def _build(source: str, datastore: str, endpoints: str, key: str, cert: str, ca: str) -> ClientConfig:
    if datastore != DATASTORE:
        raise ConfigError(
            f"datastore type {datastore!r} (from {source}) is not supported: this calicoctl supports {DATASTORE} only"
        )
    try:
        urls = parse_endpoints(endpoints, source)
    except DatastoreConfigError as exc:
        raise ConfigError(exc.msg) from None
    if bool(key) != bool(cert):
        raise ConfigError(f"etcd key file and certificate file must be given together (from {source})")
    log.debug("datastore from %s: %s", source, urls)
    return ClientConfig(datastore, EtcdConf(urls, key, cert, ca), source)


def connect(config: ClientConfig):
    """A Datastore on the configured endpoints, with calicoctl's short deadline."""
    # gRPC's C core writes its own connection errors to stderr; ours is the one line that counts.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from cni_calico.datastore import Datastore

    return Datastore(config.etcd, rpc_timeout=RPC_TIMEOUT, deadline=DEADLINE)


class ResourceStore:
    """Calico resources in etcd, one guarded transaction per write."""

    def __init__(self, ds) -> None:  # a cni_calico.datastore.Datastore
        self.ds = ds

    @staticmethod
    def key(res: Resource) -> str:
        if res.kind.store_key is not None:
            return res.kind.store_key(res)
        return keys.resource(res.kind.plural, res.name, res.namespace)

    @staticmethod
    def value(res: Resource) -> dict:
        return res.kind.encode(res) if res.kind.encode is not None else res.to_stored()

    def get(self, res: Resource) -> Resource | None:
        if res.kind.singleton and res.name != res.kind.singleton:
            return None
        kv = self.ds.get(self.key(res))
        return None if kv is None else from_stored(res.kind, kv.value, kv.mod_revision)

    def list(self, kind: Kind, namespace: str = "") -> list[Resource]:
        """Every resource of the kind (of one namespace, or of all when namespace is "")."""
        if kind.singleton:
            one = self.get(Resource(kind, {"name": kind.singleton}, {}))
            return [one] if one else []
        kvs = self.ds.list(keys.resource_dir(kind.plural, namespace))
        found = [from_stored(kind, kv.value, kv.mod_revision) for kv in kvs]
        return sorted(found, key=kind.list_order) if kind.list_order else found

    def _check_references(self, res: Resource) -> None:
        missing = [FieldError(field, f"{plural.removesuffix('s')} {name!r} does not exist", name)
                   for plural, name, field in res.kind.references(res)
                   if self.ds.get(keys.resource(plural, name)) is None]
        if missing:
            raise ValidationError(res.ident, missing)
        conflicts = res.kind.check_related(res, lambda kind_name: self.list(lookup(kind_name)))
        if conflicts:
            raise ValidationError(res.ident, conflicts)

    def create(self, res: Resource) -> Resource:
        self._check_references(res)
        errors = res.kind.check_create(res, self.list(res.kind, res.namespace))
        if errors:
            raise ValidationError(res.ident, errors)
        new = Resource(res.kind, {**res.metadata, "uid": new_uid(), "creationTimestamp": timestamp()}, res.spec,
                       status=res.status)
        if not self.ds.commit(Txn().put(self.key(res), self.value(new), 0)):
            raise AlreadyExists(res.ident)
        return new

    def _guarded(self, res: Resource, change, what: str) -> Resource:
        """Runs `change(current) -> (txn, outcome)` under the one retry policy; a write naming a
        resourceVersion is not retried (the user's view is out of date)."""

        def once() -> Resource:
            current = self._current(res)
            txn, outcome = change(current)
            if not self.ds.commit(txn):
                if res.resource_version:
                    raise UpdateConflict(res.ident, "the resource was modified concurrently; get it again and retry")
                raise ConflictError(res.ident)
            return outcome

        try:
            return retry_on_conflict(once, f"{what} {res.ident}")
        except TooManyConflicts as exc:
            raise UpdateConflict(res.ident, exc.msg) from None

    def replace(self, res: Resource) -> Resource:
        self._check_references(res)

        def change(current: Resource):
            errors = res.kind.check_update(current, res)
            if errors:
                raise ValidationError(res.ident, errors)
            kept = {k: current.metadata[k] for k in ("uid", "creationTimestamp") if k in current.metadata}
            # A status (what Calico's components report) given is written; none given keeps the stored one.
            new = Resource(res.kind, {**res.metadata, **kept}, res.spec,
                           status=current.status if res.status is None else res.status)
            return Txn().put(self.key(res), self.value(new), int(current.resource_version)), new

        return self._guarded(res, change, "replacing")

    def apply(self, res: Resource) -> Resource:
        if self.ds.get(self.key(res)) is None:
            try:
                return self.create(res)
            except AlreadyExists:
                log.debug("%s appeared while applying; updating it instead", res.ident)
        return self.replace(res)

    def delete(self, res: Resource) -> Resource:
        why = res.kind.check_delete(res, lambda kind_name: self.list(lookup(kind_name)))
        if why:
            raise ValidationError(res.ident, [FieldError("metadata.name", why, res.name)])
        return self._guarded(res, lambda current: (
            Txn().delete(self.key(res), int(current.resource_version)), current), "deleting")

    def current(self, res: Resource) -> Resource:
        """The stored resource; DoesNotExist, or UpdateConflict when res carries a stale resourceVersion."""
        return self._current(res)

    def _current(self, res: Resource) -> Resource:
        current = self.get(res)
        if current is None:
            raise DoesNotExist(res.ident)
        if res.resource_version and res.resource_version != current.resource_version:
            raise UpdateConflict(
                res.ident,
                f"resource version '{res.resource_version}' is out of date (latest: {current.resource_version}); "
                "update the resource YAML/JSON in order to make changes",
            )
        return current
