"""NetworkSet and GlobalNetworkSet: named lists of external networks that policy rules select by label.

Pure. `spec.nets` is a list of CIDRs or bare addresses of either family (as Calico's validator: each
must parse, an address counts as its full-length network); nothing else is in the spec. The
columns are real calicoctl's (`NETS` joined with commas, cut at 80 characters as its
joinAndTruncate).
"""

from __future__ import annotations

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register

NETS_WIDTH = 80


def _validate(res: Resource) -> list[FieldError]:
    nets = res.spec.get("nets")
    if nets is None:
        return []
    if not isinstance(nets, list):
        return [FieldError("spec.nets", "must be a list of CIDRs", nets)]
    errors: list[FieldError] = []
    for i, net in enumerate(nets):
        errors += fields.ip(f"spec.nets[{i}]", net, cidr="allowed")
    return errors


def _nets(res: Resource, ctx) -> str:
    text = ",".join(str(n) for n in res.spec.get("nets") or [])
    return text if len(text) <= NETS_WIDTH else text[:NETS_WIDTH - 3] + "..."


def _kind(name: str, plural: str, aliases: tuple[str, ...], namespaced: bool) -> Kind:
    return register(Kind(
        name=name,
        plural=plural,
        aliases=aliases,
        namespaced=namespaced,
        spec_fields=frozenset({"nets"}),
        headings=("NAME",),
        wide_headings=("NAME", "NETS"),
        columns={"NAME": lambda r, c: r.name, "NETS": _nets},
        validate_spec=_validate,
    ))


GLOBALNETWORKSET = _kind("GlobalNetworkSet", "globalnetworksets", ("globalnetworkset", "globalnetworksets",
                                                                     "gnetsets", "gnetset"), namespaced=False)
NETWORKSET = _kind("NetworkSet", "networksets", ("networkset", "networksets", "netsets", "netset"), namespaced=True)
