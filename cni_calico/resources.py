"""Calico v3 resources: the kinds registry, the resource record, documents in, validation.

Pure: no I/O and no etcd (calicoctl reads the files and owns the writes). One
`Kind` row per resource kind holds its names (as calicoctl accepts them), its
etcd plural (keys.py builds the key), whether it is namespaced, its table
columns and its checks; IPPool is the first row, other kinds slot in beside it.

Invariants: `validate` fills the kind's defaults and normalises the spec before
anything is written, and reports every problem as a `FieldError` naming the
field; a resource read back from etcd carries its mod revision as
`metadata.resourceVersion`, which is never stored in the value itself.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cni_calico import v3
from cni_calico.v3 import ALLOWED_USES, API_VERSION, DEFAULT_BLOCK_SIZE, ENCAP_MODES

log = logging.getLogger(__name__)

TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec"})
METADATA = frozenset({"name", "namespace", "resourceVersion", "uid", "creationTimestamp", "labels", "annotations"})
STORED_METADATA = ("name", "namespace", "uid", "creationTimestamp", "labels", "annotations")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    value: object = None

    def __str__(self) -> str:
        where = self.field if self.value is None else f"{self.field} = '{_show(self.value)}'"
        return f"{where} ({self.reason})"


class ResourceError(Exception):
    """Something wrong with one resource; calicoctl reports it and carries on with the next."""

    template = "{}"

    def __init__(self, ident: str, detail: str = "") -> None:
        super().__init__(self.template.format(ident) + (f": {detail}" if detail else ""))


class AlreadyExists(ResourceError):
    template = "resource already exists: {}"


class DoesNotExist(ResourceError):
    template = "resource does not exist: {}"


class UpdateConflict(ResourceError):
    template = "update conflict: {}"


class ValidationError(ResourceError):
    def __init__(self, ident: str, errors: list[FieldError]) -> None:
        self.errors = errors
        plural = "" if len(errors) == 1 else "s"
        super().__init__(ident, f"error with field{plural} " + "; ".join(str(e) for e in errors))


class DocumentError(Exception):
    """A file or argument that cannot be read as resources at all (nothing is processed)."""


@dataclass(frozen=True)
class Kind:
    name: str  # as in `kind:`, e.g. IPPool
    plural: str  # the etcd directory, e.g. ippools
    aliases: tuple[str, ...]  # what `calicoctl get <KIND>` accepts, lower case
    namespaced: bool
    spec_fields: frozenset[str] | None  # None: validate_spec judges every field (FelixConfiguration)
    headings: tuple[str, ...]
    wide_headings: tuple[str, ...]
    columns: Mapping[str, Callable[[Resource, Mapping], str]]  # (resource, context such as the default ASN)
    validate_spec: Callable[[Resource], list[FieldError]]  # fills defaults, normalises
    check_update: Callable[[Resource, Resource], list[FieldError]] = lambda old, new: []
    check_create: Callable[[Resource, list[Resource]], list[FieldError]] = lambda new, existing: []
    read_defaults: Callable[[dict], None] = lambda spec: None
    writable: bool = True  # False: calicoctl gets and deletes it only (WorkloadEndpoint: the plugin's)
    writer: str = "the CNI plugin"  # who writes it when calicoctl may not (in calicoctl's refusal)
    list_order: Callable[[Resource], object] | None = None  # how a listing is sorted (stable), if not by name
    singleton: str = ""  # the one name the kind may have (IPAMConfig: "default")
    store_key: Callable[[Resource], str] | None = None  # where it lives, when not keys.resource(...)
    encode: Callable[[Resource], dict] | None = None  # the stored value, when not Resource.to_stored()
    decode: Callable[[dict], dict] | None = None  # stored value -> {"metadata", "spec"}
    # Resources that must exist for this one to be written: (plural, name, the field that names it).
    references: Callable[[Resource], list[tuple[str, str, str]]] = lambda res: []
    # Why this resource may not be deleted, given a lister of other kinds' resources ("" if it may).
    check_delete: Callable[[Resource, Callable[[str], list[Resource]]], str] = lambda res, listing: ""
    # What this resource, as written, would contradict in other kinds' resources (given the same lister).
    check_related: Callable[[Resource, Callable[[str], list[Resource]]], list[FieldError]] = lambda res, listing: []


@dataclass
class Resource:
    kind: Kind
    metadata: dict
    spec: dict
    extra: dict = field(default_factory=dict)  # unknown top-level keys, reported by validate
    status: dict | None = None  # what Calico's components report (a Node's, kube-controllers'): kept as read

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def resource_version(self) -> str:
        return str(self.metadata.get("resourceVersion") or "")

    @property
    def ident(self) -> str:
        name = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind.name}({name})"

    def to_dict(self) -> dict:
        out = {"apiVersion": API_VERSION, "kind": self.kind.name, "metadata": dict(self.metadata), "spec": self.spec}
        if self.status is not None:
            out["status"] = self.status
        return out

    def to_stored(self) -> dict:
        meta = {k: self.metadata[k] for k in STORED_METADATA if k in self.metadata}
        other = {} if self.status is None else {"status": self.status}
        return v3.Resource(self.kind.name, meta, self.spec, other).to_value()


KINDS: dict[str, Kind] = {}
_BY_ALIAS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    for alias in (kind.name.lower(), kind.plural, *kind.aliases):
        _BY_ALIAS[alias.lower()] = kind
    return kind


def lookup(name: str) -> Kind:
    """A kind by any of its names, case-insensitive (`ippool`, `IPPools`, `pool`)."""
    kind = _BY_ALIAS.get(name.lower())
    if kind is None:
        raise DocumentError(f"resource type '{name}' is not supported")
    return kind


def from_stored(kind: Kind, value: dict, mod_revision: int) -> Resource:
    status = value.get("status") if isinstance(value.get("status"), dict) else None
    if kind.decode is not None:
        value = kind.decode(value)
    metadata = dict(value.get("metadata") or {})
    metadata["resourceVersion"] = str(mod_revision)
    spec = dict(value.get("spec") or {})
    kind.read_defaults(spec)
    return Resource(kind, metadata, spec, status=status)


def validate(res: Resource) -> None:
    """Checks metadata and spec, filling defaults; raises ValidationError naming every bad field."""
    errors = [FieldError(k, "unknown or malformed top-level field") for k in res.extra]
    errors += [FieldError(f"metadata.{k}", "unknown field") for k in res.metadata if k not in METADATA]
    name = res.metadata.get("name")
    if not name:
        errors.append(FieldError("metadata.name", "resource name may not be empty"))
    elif not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(FieldError("metadata.name", "must be a lowercase RFC 1123 subdomain", name))
    elif res.kind.singleton and name != res.kind.singleton:
        errors.append(FieldError("metadata.name", f"the only {res.kind.name} is named '{res.kind.singleton}'", name))
    if res.namespace and not res.kind.namespaced:
        errors.append(FieldError("metadata.namespace", f"{res.kind.name} is not namespaced", res.namespace))
    elif res.namespace and not DNS1123_LABEL.match(res.namespace):
        errors.append(FieldError("metadata.namespace", "must be a lowercase RFC 1123 label", res.namespace))
    for key in ("labels", "annotations"):
        value = res.metadata.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            errors.append(FieldError(f"metadata.{key}", "must map strings to strings"))
    if res.kind.spec_fields is not None:
        errors += [FieldError(f"spec.{k}", "unknown field") for k in res.spec if k not in res.kind.spec_fields]
    errors += res.kind.validate_spec(res)
    if errors:
        raise ValidationError(res.ident, errors)


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def selector_errors(field: str, value: object) -> list[FieldError]:
    """A Calico label selector, checked by cni_calico.selector; the error gives the position."""
    if value is None:
        return []
    if not isinstance(value, str):
        return [FieldError(field, "must be a selector string", value)]
    from cni_calico.selector import SelectorError, parse

    try:
        parse(value)
    except SelectorError as exc:
        return [FieldError(field, f"invalid selector: {exc}", value)]
    except ValueError as exc:  # a bad label key, found while building the expression
        return [FieldError(field, f"invalid selector: {exc}", value)]
    return []


# --- IPPool -----------------------------------------------------------------------------------

BLOCK_SIZES = v3.BLOCK_SIZE_RANGE
LINK_LOCAL = {4: "169.254.0.0/16", 6: "fe80::/10"}
_POOL_TYPES: dict[str, tuple[type, str]] = {
    "cidr": (str, "a string"), "blockSize": (int, "an integer"), "ipipMode": (str, "a string"),
    "vxlanMode": (str, "a string"), "natOutgoing": (bool, "true or false"), "disabled": (bool, "true or false"),
    "nodeSelector": (str, "a string"), "disableBGPExport": (bool, "true or false"), "allowedUses": (list, "a list"),
    "assignmentMode": (str, "a string"), "namespaceSelector": (str, "a string"),
}


def _network(cidr: object):
    try:
        return ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return None


def _pool_read_defaults(spec: dict) -> None:
    """What Calico fills in when it reads a pool written without some fields."""
    net = _network(spec.get("cidr"))
    if net is not None and not spec.get("blockSize"):
        spec["blockSize"] = DEFAULT_BLOCK_SIZE[net.version]
    for key, default in (("ipipMode", "Never"), ("vxlanMode", "Never"), ("nodeSelector", "all()"),
                         ("allowedUses", list(v3.DEFAULT_ALLOWED_USES)), ("assignmentMode", "Automatic")):
        if not spec.get(key):
            spec[key] = default


def _validate_pool(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = [
        FieldError(f"spec.{key}", f"must be {what}", spec[key])
        for key, (typ, what) in _POOL_TYPES.items()
        if spec.get(key) is not None
        and (not isinstance(spec[key], typ) or (typ is int and isinstance(spec[key], bool)))
    ]
    if errors:
        return errors
    cidr = spec.get("cidr")
    if not cidr:
        return [FieldError("spec.cidr", "IPPool CIDR must be specified")]
    net = _network(cidr)
    if net is None or "/" not in cidr:
        return [FieldError("spec.cidr", "IPPool CIDR must be a valid subnet such as 10.0.0.0/16", cidr)]
    if net.network_address != ipaddress.ip_address(cidr.split("/")[0]):
        errors.append(FieldError("spec.cidr", f"IPPool CIDR is not strictly masked: did you mean {net}?", cidr))
    spec["cidr"] = str(net)
    _pool_read_defaults(spec)
    spec.setdefault("natOutgoing", False)
    spec.setdefault("disabled", False)
    low, high = BLOCK_SIZES[net.version]
    size = spec["blockSize"]
    if not low <= size <= high:
        reason = f"IPv{net.version} block size must be between {low} and {high}"
        errors.append(FieldError("spec.blockSize", reason, size))
    elif size < net.prefixlen and not spec["disabled"]:
        errors.append(FieldError(
            "spec.blockSize", f"a /{size} block does not fit in the /{net.prefixlen} pool: use {net.prefixlen} or more",
            size))
    for key in ("ipipMode", "vxlanMode"):
        if spec[key] not in ENCAP_MODES:
            errors.append(FieldError(f"spec.{key}", f"must be one of {', '.join(ENCAP_MODES)}", spec[key]))
    if spec["ipipMode"] != "Never" and spec["vxlanMode"] != "Never":
        reason = "cannot enable both VXLAN and IPIP on the same IPPool"
        errors.append(FieldError("spec.vxlanMode", reason, spec["vxlanMode"]))
    if net.version == 6 and spec["ipipMode"] != "Never":
        errors.append(FieldError("spec.ipipMode", "IPIP is not supported on an IPv6 IP pool", spec["ipipMode"]))
    if net.overlaps(ipaddress.ip_network(LINK_LOCAL[net.version])):
        errors.append(FieldError("spec.cidr", f"overlaps with the link local range {LINK_LOCAL[net.version]}", cidr))
    errors += selector_errors("spec.nodeSelector", spec["nodeSelector"])
    for use in spec.get("allowedUses") or []:
        if use not in ALLOWED_USES:
            errors.append(FieldError("spec.allowedUses", f"must be among {', '.join(ALLOWED_USES)}", use))
    if "LoadBalancer" in spec["allowedUses"] and len(spec["allowedUses"]) > 1:
        errors.append(FieldError("spec.allowedUses", "LoadBalancer cannot be combined with other uses",
                                 ",".join(spec["allowedUses"])))
    if spec["assignmentMode"] not in v3.ASSIGNMENT_MODES:
        errors.append(FieldError("spec.assignmentMode", f"must be one of {', '.join(v3.ASSIGNMENT_MODES)}",
                                 spec["assignmentMode"]))
    errors += selector_errors("spec.namespaceSelector", spec.get("namespaceSelector"))
    return errors


def _pool_check_update(old: Resource, new: Resource) -> list[FieldError]:
    same_cidr = _network(old.spec.get("cidr")) == _network(new.spec.get("cidr"))
    same_size = old.spec.get("blockSize") == new.spec.get("blockSize")
    return [
        FieldError(f"spec.{key}", f"IPPool {what} cannot be modified: it is {old.spec.get(key)}", new.spec.get(key))
        for key, what, same in (("cidr", "CIDR", same_cidr), ("blockSize", "BlockSize", same_size))
        if not same
    ]


def _pool_check_create(new: Resource, existing: list[Resource]) -> list[FieldError]:
    net = _network(new.spec["cidr"])
    return [
        FieldError("spec.cidr", f"IPPool({new.name}) CIDR overlaps with IPPool({other.name}) CIDR {other.spec['cidr']}",
                   new.spec["cidr"])
        for other in existing
        if other.name != new.name and (o := _network(other.spec.get("cidr"))) is not None
        and o.version == net.version and o.overlaps(net)
    ]


IPPOOL = register(Kind(
    name="IPPool",
    plural="ippools",
    aliases=("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
    namespaced=False,
    spec_fields=frozenset(_POOL_TYPES),
    headings=("NAME", "CIDR", "SELECTOR"),
    wide_headings=("NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR",
                   "ASSIGNMENTMODE"),
    columns={
        "NAME": lambda r, c: r.name,
        "CIDR": lambda r, c: str(r.spec.get("cidr", "")),
        "NAT": lambda r, c: _show(bool(r.spec.get("natOutgoing"))),
        "IPIPMODE": lambda r, c: str(r.spec.get("ipipMode") or "Never"),
        "VXLANMODE": lambda r, c: str(r.spec.get("vxlanMode") or "Never"),
        "DISABLED": lambda r, c: _show(bool(r.spec.get("disabled"))),
        "DISABLEBGPEXPORT": lambda r, c: _show(bool(r.spec.get("disableBGPExport"))),
        "SELECTOR": lambda r, c: str(r.spec.get("nodeSelector") or ""),
        "ASSIGNMENTMODE": lambda r, c: str(r.spec.get("assignmentMode") or "Automatic"),
    },
    validate_spec=_validate_pool,
    check_update=_pool_check_update,
    check_create=_pool_check_create,
    read_defaults=_pool_read_defaults,
))
