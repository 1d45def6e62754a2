"""WorkloadEndpoint (the CNI plugin's record of a pod: get, and delete for clean-up), IPAMConfig and
IPReservation (addresses IPAM never hands out automatically).

Pure. IPAMConfig is not stored as a resource: it is Calico's IPAM config JSON
(cni_calico.v3.IPAMConfig, at keys.ipam_config()), which IPAM reads in etcd mode; calicoctl shows
it as the one resource `IPAMConfig default` and converts in both directions, refusing what
Calico's SetIPAMConfig refuses.
"""

from __future__ import annotations

from cni_calico import keys
from cni_calico.ctl.kinds import fields
from cni_calico.ctl.templates import join_and_truncate
from cni_calico.resources import FieldError, Kind, Resource, register
from cni_calico.v3 import IPAMConfig

WEP_FIELDS = frozenset({"orchestrator", "workload", "node", "containerID", "pod", "endpoint", "interfaceName",
                        "mac", "ipNetworks", "ipNATs", "ipv4Gateway", "ipv6Gateway", "profiles", "ports",
                        "serviceAccountName", "allowSpoofedSourcePrefixes"})


def _join(value: object) -> str:
    if isinstance(value, list):
        return ",".join(f"{v.get('internalIP')}->{v.get('externalIP')}" if isinstance(v, dict) else str(v)
                        for v in value)
    return ""


WORKLOADENDPOINT = register(Kind(
    name="WorkloadEndpoint",
    plural="workloadendpoints",
    aliases=("workloadendpoint", "workloadendpoints", "wep", "weps"),
    namespaced=True,
    spec_fields=WEP_FIELDS,
    headings=("WORKLOAD", "NODE", "NETWORKS", "INTERFACE"),
    wide_headings=("NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"),
    columns={
        "NAME": lambda r, c: r.name,
        "WORKLOAD": lambda r, c: str(r.spec.get("workload") or r.spec.get("pod") or r.spec.get("containerID") or ""),
        "NODE": lambda r, c: str(r.spec.get("node") or ""),
        "NETWORKS": lambda r, c: _join(r.spec.get("ipNetworks")),
        "INTERFACE": lambda r, c: str(r.spec.get("interfaceName") or ""),
        "PROFILES": lambda r, c: _join(r.spec.get("profiles")),
        "NATS": lambda r, c: _join(r.spec.get("ipNATs")),
    },
    validate_spec=lambda res: [],
    writable=False,
))


# --- IPAMConfig --------------------------------------------------------------------------------

IPAM_SPEC = ("strictAffinity", "autoAllocateBlocks", "maxBlocksPerHost", "ipCooldownSeconds")
MAX_INT32 = 2**31 - 1


def _validate_ipam(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"strictAffinity": bool, "autoAllocateBlocks": bool,
                                          "maxBlocksPerHost": int, "ipCooldownSeconds": int})
    for key in ("maxBlocksPerHost", "ipCooldownSeconds"):
        if not errors and spec.get(key) is not None and not 0 <= spec[key] <= MAX_INT32:
            errors.append(FieldError(f"spec.{key}", f"must be 0 to {MAX_INT32}", spec[key]))
    if not errors:
        defaults = ipam_spec(IPAMConfig())
        for key, default in defaults.items():
            spec.setdefault(key, default)
        errors += [FieldError("spec", problem) for problem in _config(spec).problems()]
    return errors


def _config(spec: dict) -> IPAMConfig:
    return IPAMConfig(bool(spec.get("strictAffinity")), bool(spec.get("autoAllocateBlocks", True)),
                      int(spec.get("maxBlocksPerHost") or 0), int(spec.get("ipCooldownSeconds") or 0))


def ipam_spec(config: IPAMConfig) -> dict:
    return {"strictAffinity": config.strict_affinity, "autoAllocateBlocks": config.auto_allocate_blocks,
            "maxBlocksPerHost": config.max_blocks_per_host, "ipCooldownSeconds": config.ip_cooldown_seconds}


def ipam_encode(res: Resource) -> dict:
    return _config(res.spec).to_value()


def ipam_decode(value: dict) -> dict:
    return {"metadata": {"name": "default"}, "spec": ipam_spec(IPAMConfig.from_value(value))}


IPAMCONFIG = register(Kind(
    name="IPAMConfig",
    plural="ipamconfigs",
    aliases=("ipamconfig", "ipamconfigs", "ipamconfiguration", "ipamconfigurations"),
    namespaced=False,
    spec_fields=frozenset(IPAM_SPEC),
    headings=("NAME", "STRICTAFFINITY", "AUTOALLOCATEBLOCKS"),
    wide_headings=("NAME", "STRICTAFFINITY", "AUTOALLOCATEBLOCKS", "MAXBLOCKSPERHOST"),
    columns={
        "NAME": lambda r, c: r.name,
        "STRICTAFFINITY": lambda r, c: str(bool(r.spec.get("strictAffinity"))).lower(),
        "AUTOALLOCATEBLOCKS": lambda r, c: str(bool(r.spec.get("autoAllocateBlocks", True))).lower(),
        "MAXBLOCKSPERHOST": lambda r, c: str(r.spec.get("maxBlocksPerHost") or 0),
    },
    validate_spec=_validate_ipam,
    singleton="default",
    store_key=lambda res: keys.ipam_config(),
    encode=ipam_encode,
    decode=ipam_decode,
))


# --- IPReservation -----------------------------------------------------------------------------


def _validate_reservation(res: Resource) -> list[FieldError]:
    cidrs = res.spec.get("reservedCIDRs")
    if not isinstance(cidrs, list) or not cidrs:
        return [FieldError("spec.reservedCIDRs", "must be a list of at least one CIDR or address", cidrs)]
    errors: list[FieldError] = []
    for i, cidr in enumerate(cidrs):
        errors += fields.ip(f"spec.reservedCIDRs[{i}]", cidr, cidr="allowed")
    return errors


IPRESERVATION = register(Kind(
    name="IPReservation",
    plural="ipreservations",
    aliases=("ipreservation", "ipreservations", "ipr", "iprs", "reservation", "reservations"),
    namespaced=False,
    spec_fields=frozenset({"reservedCIDRs"}),
    headings=("NAME",),  # as calicoctl's: the CIDRs in wide, cut at 80 characters
    wide_headings=("NAME", "CIDRS"),
    columns={
        "NAME": lambda r, c: r.name,
        "CIDRS": lambda r, c: join_and_truncate([str(x) for x in r.spec.get("reservedCIDRs") or []], ",", 80),
    },
    validate_spec=_validate_reservation,
))
