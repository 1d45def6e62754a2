"""WorkloadEndpoint (the CNI plugin's record of a pod: get, and delete for clean-up) and IPAMConfig.

Pure. IPAMConfig is not stored as a resource: it is Calico's IPAM config JSON
at /calico/ipam/v2/config ({"strict_affinity", "auto_allocate_blocks",
"max_blocks_per_host"}), which calico-ipam reads; calicoctl shows it as the one
resource `IPAMConfig default` and converts in both directions.
"""

from __future__ import annotations

from cni_calico import keys
from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register
from cni_calico.v3 import IPAM_CONFIG_DEFAULTS, IPAM_CONFIG_FIELDS

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

IPAM_FIELDS = IPAM_CONFIG_FIELDS
IPAM_DEFAULTS = {key: IPAM_CONFIG_DEFAULTS[stored] for key, stored in IPAM_FIELDS.items()}
MAX_BLOCKS = 2**31 - 1


def _validate_ipam(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"strictAffinity": bool, "autoAllocateBlocks": bool,
                                          "maxBlocksPerHost": int})
    if not errors and spec.get("maxBlocksPerHost") is not None and not 0 <= spec["maxBlocksPerHost"] <= MAX_BLOCKS:
        errors.append(FieldError("spec.maxBlocksPerHost", f"must be 0 (no limit) to {MAX_BLOCKS}",
                                 spec["maxBlocksPerHost"]))
    if not errors:
        for key, default in IPAM_DEFAULTS.items():
            spec.setdefault(key, default)
    return errors


def ipam_encode(res: Resource) -> dict:
    return {stored: res.spec.get(key, IPAM_DEFAULTS[key]) for key, stored in IPAM_FIELDS.items()}


def ipam_decode(value: dict) -> dict:
    spec = {key: value.get(stored, IPAM_DEFAULTS[key]) for key, stored in IPAM_FIELDS.items()}
    return {"metadata": {"name": "default"}, "spec": spec}


IPAMCONFIG = register(Kind(
    name="IPAMConfig",
    plural="ipamconfigs",
    aliases=("ipamconfig", "ipamconfigs", "ipamconfiguration", "ipamconfigurations"),
    namespaced=False,
    spec_fields=frozenset(IPAM_FIELDS),
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
