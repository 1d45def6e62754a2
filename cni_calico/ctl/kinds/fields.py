"""Field checks shared by the kinds: types, addresses, AS numbers, ports, names, label maps.

Pure. Each check takes the field's full path (`spec.bgp.asNumber`) and its
value and returns a list of `FieldError`s (empty: fine); the ones that
normalise (AS numbers, ports) return the normal form too, so the kind can
store it: a dotted AS number "1.10" is stored as the number 65546.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from cni_calico.resources import DNS1123_LABEL, DNS1123_SUBDOMAIN, FieldError

MAX_ASN = 4294967295
MAX_PORT = 65535
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TYPE_NAMES = {bool: "true or false", int: "an integer", str: "a string", list: "a list", dict: "a mapping",
               float: "a number"}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def types(prefix: str, data: Mapping, wanted: Mapping[str, type | tuple[type, ...]]) -> list[FieldError]:
    """Each present field of `data` has its wanted type (bool is never an int; an int is a number)."""
    errors = []
    for key, typ in wanted.items():
        value = data.get(key)
        if value is None:
            continue
        options = typ if isinstance(typ, tuple) else (typ,)
        ok = any(
            (is_int(value) or (t is float and isinstance(value, float))) if t in (int, float) else isinstance(value, t)
            for t in options
        )
        if not ok:
            what = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in options)
            errors.append(FieldError(f"{prefix}{key}", f"must be {what}", value))
    return errors


def unknown(prefix: str, data: Mapping, known: frozenset[str] | set[str]) -> list[FieldError]:
    return [FieldError(f"{prefix}{k}", "unknown field") for k in data if k not in known]


def mapping(field: str, value: object) -> tuple[dict, list[FieldError]]:
    """A nested object: ({}, error) when it is something else."""
    if value is None:
        return {}, []
    if not isinstance(value, dict):
        return {}, [FieldError(field, "must be a mapping", value)]
    return value, []


def as_number(field: str, value: object) -> tuple[int | None, list[FieldError]]:
    """1..4294967295, as a number or a string ("64512", or dotted "1.10" = 1*65536+10)."""
    if value is None:
        return None, []
    number: int | None = None
    if is_int(value):
        number = int(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and re.fullmatch(r"\d+", value):
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        high, low = (int(p) for p in value.split("."))
        if high <= 65535 and low <= 65535:
            number = high * 65536 + low
    if number is None or not 1 <= number <= MAX_ASN:
        return None, [FieldError(field, f"AS number must be 1-{MAX_ASN}, or dotted 'a.b' with a and b 0-65535",
                                 value)]
    return number, []


def ip(field: str, value: object, version: int | None = None, cidr: str = "no") -> list[FieldError]:
    """An address; cidr="no": bare only, "allowed": with or without /len, "required": a network."""
    if value is None:
        return []
    family = f"IPv{version} " if version else "IP "
    if not isinstance(value, str) or not value:
        return [FieldError(field, f"must be an {family}address", value)]
    try:
        if "/" in value:
            if cidr == "no":
                raise ValueError
            addr = ipaddress.ip_interface(value)
        elif cidr == "required":
            raise ValueError
        else:
            addr = ipaddress.ip_address(value)
    except ValueError:
        shape = {"no": "address", "allowed": "address (optionally with /prefix)", "required": "CIDR"}[cidr]
        return [FieldError(field, f"must be a valid {family}{shape}", value)]
    if version and addr.version != version:
        return [FieldError(field, f"must be an IPv{version} address, not IPv{addr.version}", value)]
    return []


def cidr_version(value: str) -> int:
    return ipaddress.ip_network(value, strict=False).version


def mac(field: str, value: object) -> list[FieldError]:
    if value is None or (isinstance(value, str) and _MAC.match(value)):
        return []
    return [FieldError(field, "must be a MAC address such as ee:ee:ee:ee:ee:ee", value)]


def name(field: str, value: object, label: bool = False) -> list[FieldError]:
    """A resource name: an RFC 1123 subdomain (or label)."""
    pattern = DNS1123_LABEL if label else DNS1123_SUBDOMAIN
    if isinstance(value, str) and len(value) <= 253 and pattern.match(value):
        return []
    return [FieldError(field, f"must be a lowercase RFC 1123 {'label' if label else 'subdomain'}", value)]


def labels(field: str, value: object) -> list[FieldError]:
    """A label map: keys `[prefix/]name`, values strings of at most 63 characters."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [FieldError(field, "must map label names to strings", value)]
    errors = []
    for key, val in value.items():
        prefix, _, label_name = str(key).rpartition("/")
        if not isinstance(key, str) or not _LABEL_NAME.match(label_name) or (prefix and not DNS1123_SUBDOMAIN.match(
                prefix)):
            errors.append(FieldError(f"{field}", "invalid label name", key))
        elif not isinstance(val, str) or len(val) > 63:
            errors.append(FieldError(f"{field}.{key}", "label value must be a string of at most 63 characters", val))
    return errors


def port(field: str, value: object) -> tuple[int | str | None, list[FieldError]]:
    """A port: 1-65535, "a:b" with 1 <= a <= b <= 65535, or a named port (a lowercase name)."""
    reason = "must be a port 1-65535, a range 'low:high', or a port name"
    if is_int(value):
        if 1 <= value <= MAX_PORT:  # type: ignore[operator]
            return value, []  # type: ignore[return-value]
        return None, [FieldError(field, f"port must be 1-{MAX_PORT}", value)]
    if not isinstance(value, str) or not value:
        return None, [FieldError(field, reason, value)]
    if value.isdigit():
        return port(field, int(value))
    if ":" in value:
        low, _, high = value.partition(":")
        if not (low.isdigit() and high.isdigit()):
            return None, [FieldError(field, reason, value)]
        lo, hi = int(low), int(high)
        if not (1 <= lo <= MAX_PORT and 1 <= hi <= MAX_PORT):
            return None, [FieldError(field, f"port range bounds must be 1-{MAX_PORT}", value)]
        if lo > hi:
            return None, [FieldError(field, "port range must have low <= high", value)]
        return value, []
    if len(value) <= 15 and _PORT_NAME.match(value) and not value.isdigit():
        return value, []
    return None, [FieldError(field, reason, value)]


def ports(field: str, value: object) -> tuple[list, list[FieldError]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [FieldError(field, "must be a list of ports", value)]
    out, errors = [], []
    for i, item in enumerate(value):
        norm, errs = port(f"{field}[{i}]", item)
        out.append(item if norm is None else norm)
        errors += errs
    return out, errors


def one_of(field: str, value: object, allowed: tuple[str, ...]) -> list[FieldError]:
    if value is None or value in allowed:
        return []
    hint = next((a for a in allowed if isinstance(value, str) and a.lower() == value.lower()), None)
    reason = f"must be one of {', '.join(allowed)}" + (f" (did you mean {hint}?)" if hint else "")
    return [FieldError(field, reason, value)]


def string_list(field: str, value: object) -> list[FieldError]:
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return []
    return [FieldError(field, "must be a list of strings", value)]
