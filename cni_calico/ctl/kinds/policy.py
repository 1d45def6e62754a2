"""The policy kinds: Profile, NetworkPolicy (namespaced), GlobalNetworkPolicy.

Pure. Rules are checked by `rules.check_rules`. As Calico, a policy written
without `types` gets them from its rules ([Ingress] unless it has egress rules
only; both when it has both), and rules of a direction the types leave out
are refused. A GlobalNetworkPolicy with doNotTrack or preDNAT must apply on
forward, cannot be both, and preDNAT policies have no egress side.
"""

from __future__ import annotations

from collections.abc import Mapping

from cni_calico.ctl.kinds import fields, rules
from cni_calico.resources import DNS1123_LABEL, FieldError, Kind, Resource, register, selector_errors

POLICY_TYPES = ("Ingress", "Egress")
POLICY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "tier": str, "order": (int, float), "selector": str, "types": list, "ingress": list, "egress": list,
    "serviceAccountSelector": str,
}
TIER_LABEL = "projectcalico.org/tier"
NAME_ANNOTATION = "projectcalico.org/metadata"  # Calico keeps the policy's name as given here
GLOBAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    **POLICY_FIELDS, "namespaceSelector": str, "doNotTrack": bool, "preDNAT": bool, "applyOnForward": bool,
}


def _validate_policy(res: Resource) -> list[FieldError]:
    spec = res.spec
    wanted = GLOBAL_FIELDS if res.kind is GLOBALNETWORKPOLICY else POLICY_FIELDS
    errors = fields.types("spec.", spec, wanted)
    if errors:
        return errors
    for key in ("selector", "serviceAccountSelector", "namespaceSelector"):
        errors += selector_errors(f"spec.{key}", spec.get(key))
    if spec.get("tier") is not None and not DNS1123_LABEL.match(spec["tier"]):
        errors.append(FieldError("spec.tier", "a tier's name is a lowercase RFC 1123 label", spec["tier"]))
    errors += rules.check_rules("spec.ingress", spec.get("ingress"))
    errors += rules.check_rules("spec.egress", spec.get("egress"))
    errors += _types(spec)
    if res.kind is GLOBALNETWORKPOLICY:
        errors += _global_flags(spec)
    return errors


def _types(spec: dict) -> list[FieldError]:
    types = spec.get("types")
    if not types:
        ingress, egress = bool(spec.get("ingress")), bool(spec.get("egress"))
        spec["types"] = ["Ingress", "Egress"] if ingress and egress else ["Egress"] if egress else ["Ingress"]
        return []
    errors = []
    for i, value in enumerate(types):
        errors += fields.one_of(f"spec.types[{i}]", value, POLICY_TYPES)
    if len(set(map(str, types))) != len(types):
        errors.append(FieldError("spec.types", "may not repeat a type", ", ".join(map(str, types))))
    for key, name in (("ingress", "Ingress"), ("egress", "Egress")):
        if spec.get(key) and name not in types:
            errors.append(FieldError(f"spec.{key}", f"{key} rules given but spec.types does not include {name}"))
    return errors


def _global_flags(spec: dict) -> list[FieldError]:
    errors = []
    if spec.get("doNotTrack") and spec.get("preDNAT"):
        errors.append(FieldError("spec.preDNAT", "cannot be true together with spec.doNotTrack", True))
    if (spec.get("doNotTrack") or spec.get("preDNAT")) and not spec.get("applyOnForward"):
        errors.append(FieldError("spec.applyOnForward", "must be true when doNotTrack or preDNAT is true",
                                 bool(spec.get("applyOnForward"))))
    if spec.get("preDNAT") and (spec.get("egress") or "Egress" in (spec.get("types") or [])):
        errors.append(FieldError("spec.egress", "a preDNAT policy has ingress rules only"))
    return errors


def _policy_encode(res: Resource) -> dict:
    """As Calico's clientv3 and etcd backend store a policy: the tier label always, and the name as
    given in the projectcalico.org/metadata annotation."""
    import json

    meta = dict(res.metadata)
    meta["labels"] = {**(meta.get("labels") or {}), TIER_LABEL: res.spec.get("tier") or "default"}
    meta["annotations"] = {**(meta.get("annotations") or {}), NAME_ANNOTATION: json.dumps({"name": res.name})}
    return Resource(res.kind, meta, res.spec).to_stored()


def _policy_decode(value: dict) -> dict:
    """The stored policy as calicoctl shows it: the name annotation is the store's, not the user's."""
    meta = dict(value.get("metadata") or {})
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != NAME_ANNOTATION}
    meta["annotations"] = notes
    if not notes:
        del meta["annotations"]
    return {**value, "metadata": meta}


def _policy_references(res: Resource) -> list[tuple[str, str, str]]:
    tier = res.spec.get("tier") or "default"
    return [] if tier == "default" else [("tiers", tier, "spec.tier")]


def _order(res: Resource, ctx: Mapping) -> str:
    order = res.spec.get("order")
    if isinstance(order, float) and order.is_integer():
        order = int(order)
    return "" if order is None else str(order)


NETWORKPOLICY = register(Kind(
    name="NetworkPolicy",
    plural="networkpolicies",
    aliases=("networkpolicy", "networkpolicies", "policy", "policies", "np", "nps", "pol", "pols"),
    namespaced=True,
    spec_fields=frozenset(POLICY_FIELDS),
    headings=("NAME", "TIER"),  # as calicoctl's
    wide_headings=("NAME", "TIER", "ORDER", "SELECTOR"),
    columns={
        "NAME": lambda r, c: r.name,
        "TIER": lambda r, c: str(r.spec.get("tier") or "default"),  # Calico's reads fill in the default tier
        "ORDER": _order,
        "SELECTOR": lambda r, c: str(r.spec.get("selector") or ""),
    },
    validate_spec=_validate_policy,
    encode=_policy_encode,
    decode=_policy_decode,
    references=_policy_references,
))

GLOBALNETWORKPOLICY = register(Kind(
    name="GlobalNetworkPolicy",
    plural="globalnetworkpolicies",
    aliases=("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"),
    namespaced=False,
    spec_fields=frozenset(GLOBAL_FIELDS),
    headings=("NAME", "TIER"),
    wide_headings=("NAME", "TIER", "ORDER", "SELECTOR"),
    columns=NETWORKPOLICY.columns,
    validate_spec=_validate_policy,
    encode=_policy_encode,
    decode=_policy_decode,
    references=_policy_references,
))


# --- Profile -----------------------------------------------------------------------------------


def _validate_profile(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"ingress": list, "egress": list, "labelsToApply": dict})
    if errors:
        return errors
    errors += rules.check_rules("spec.ingress", spec.get("ingress"))
    errors += rules.check_rules("spec.egress", spec.get("egress"))
    errors += fields.labels("spec.labelsToApply", spec.get("labelsToApply"))
    return errors


PROFILE = register(Kind(
    name="Profile",
    plural="profiles",
    aliases=("profile", "profiles", "pro", "pros"),
    namespaced=False,
    spec_fields=frozenset({"ingress", "egress", "labelsToApply"}),
    headings=("NAME",),
    wide_headings=("NAME", "LABELS"),
    columns={
        "NAME": lambda r, c: r.name,
        "LABELS": lambda r, c: ",".join(f"{k}={v}" for k, v in sorted((r.spec.get("labelsToApply") or {}).items())),
    },
    validate_spec=_validate_profile,
))
