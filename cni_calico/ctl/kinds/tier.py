"""Tier (policies are evaluated tier by tier) and ClusterInformation (calico-node's, read-only here).

Pure. A Tier's order defaults to 1000000 and its defaultAction to Deny, as Calico's
DefaultTierFields; the tiers Calico creates (default, kube-admin, kube-baseline) cannot be
deleted, nor can a tier that still holds policies. ClusterInformation `default` is written by
calico-node (cni_calico.node.startup.ensure_initialized); calicoctl shows it (with real calicoctl's
columns) and, as real calicoctl, refuses to create, replace or delete it; only `datastore migrate
lock/unlock` change it.
"""

from __future__ import annotations

from collections.abc import Callable

from cni_calico.ctl.kinds import fields
from cni_calico.resources import DNS1123_LABEL, FieldError, Kind, Resource, register
from cni_calico.v3 import TIERS

TIER_ACTIONS = ("Deny", "Pass")
DEFAULT_ORDER = 1000000.0


def _validate_tier(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, {"order": (int, float), "defaultAction": str})
    if not DNS1123_LABEL.match(res.name):
        errors.append(FieldError("metadata.name", "a tier's name is a lowercase RFC 1123 label (no dots)", res.name))
    if errors:
        return errors
    spec.setdefault("order", DEFAULT_ORDER)
    spec.setdefault("defaultAction", "Deny")
    errors = fields.one_of("spec.defaultAction", spec["defaultAction"], TIER_ACTIONS)
    if res.name in TIERS:  # Calico's own tiers keep their place and action (the Tier type's CEL rules)
        order, action = TIERS[res.name]
        if spec["order"] != order:
            errors.append(FieldError("spec.order", f"{res.name} tier order must be {order:.0f}", spec["order"]))
        if spec["defaultAction"] != action:
            errors.append(FieldError("spec.defaultAction", f"The '{res.name}' tier must have default action "
                                     f"'{action}'", spec["defaultAction"]))
    return errors


def _tier_check_delete(res: Resource, listing: Callable[[str], list[Resource]]) -> str:
    if res.name in TIERS:
        return f"the {res.name} tier is Calico's own and cannot be deleted"
    users = [p.ident for kind in ("NetworkPolicy", "GlobalNetworkPolicy") for p in listing(kind)
             if (p.spec.get("tier") or "default") == res.name]
    return f"tier {res.name} still has policies: {', '.join(users)}" if users else ""


def _order(res: Resource, ctx) -> str:
    order = res.spec.get("order")
    return str(int(order)) if isinstance(order, float) and order.is_integer() else str(order or "")


TIER = register(Kind(
    name="Tier",
    plural="tiers",
    aliases=("tier", "tiers"),
    namespaced=False,
    spec_fields=frozenset({"order", "defaultAction"}),
    headings=("NAME", "ORDER"),
    wide_headings=("NAME", "ORDER"),  # as calicoctl's; DEFAULTACTION for -o custom-columns
    columns={
        "NAME": lambda r, c: r.name,
        "ORDER": _order,
        "DEFAULTACTION": lambda r, c: str(r.spec.get("defaultAction") or "Deny"),
    },
    validate_spec=_validate_tier,
    check_delete=_tier_check_delete,
    # as calicoctl lists them: by order, a tier without one last
    list_order=lambda r: (not isinstance(r.spec.get("order"), (int, float)), r.spec.get("order") or 0),
))

CLUSTERINFORMATION = register(Kind(
    name="ClusterInformation",
    plural="clusterinformations",
    aliases=("clusterinformation", "clusterinformations", "clusterinfo", "clusterinfos"),
    namespaced=False,
    spec_fields=frozenset({"clusterGUID", "clusterType", "calicoVersion", "datastoreReady", "variant"}),
    headings=("NAME", "CLUSTERGUID", "CLUSTERTYPE", "CALICOVERSION", "DATASTOREREADY"),  # as calicoctl's, both
    wide_headings=("NAME", "CLUSTERGUID", "CLUSTERTYPE", "CALICOVERSION", "DATASTOREREADY"),
    columns={
        "NAME": lambda r, c: r.name,
        "CLUSTERGUID": lambda r, c: str(r.spec.get("clusterGUID") or ""),
        "CALICOVERSION": lambda r, c: str(r.spec.get("calicoVersion") or ""),
        "CLUSTERTYPE": lambda r, c: str(r.spec.get("clusterType") or ""),
        "DATASTOREREADY": lambda r, c: str(r.spec.get("datastoreReady", "")).lower(),
    },
    validate_spec=lambda res: [],
    writable=False,
    writer="calico-node",
    singleton="default",
    check_delete=lambda res, listing: "operation delete is not supported on ClusterInformation",
))
