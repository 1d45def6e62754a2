"""How Calico scopes selectors by namespace before Felix sees them (libcalico-go's update processors).

- A NetworkPolicy applies to ``projectcalico.org/namespace == "<ns>" && (<selector>)``; a
  GlobalNetworkPolicy to ``<selector>``, and with a ``namespaceSelector`` to ``(<nsSel'>) && (<selector>)``.
- In a rule, a ``namespaceSelector`` scopes the entity to the namespaces it selects; without one, a
  NetworkPolicy's rule selectors (``selector``, or ``notSelector`` alone) stay in its own namespace.
  ``notSelector`` itself is never scoped (it is negated against the scoped positive match).
- ``<nsSel'>`` is the namespace selector with every label key prefixed by ``pcns.`` (the namespace's
  labels are copied onto each endpoint that way), its ``all()`` means "in some namespace" and its
  ``global()`` "in none" (global network sets: how a NetworkPolicy names them).
- Without Kubernetes a namespace has one label: ``projectcalico.org/name: <ns>``.

Every function returns the canonical text of the scoped selector (``str(parse(...))``) and raises
SelectorError (or ValueError) for a selector that does not parse.
"""

from __future__ import annotations

import dataclasses

from cni_calico.selector import All, And, Compare, Global, Has, InSet, Not, Or, Selector, parse
from cni_calico.v3 import NS_LABEL_PREFIX

NAMESPACE_LABEL = "projectcalico.org/namespace"
NS_PREFIX = NS_LABEL_PREFIX
NS_NAME_LABEL = "projectcalico.org/name"
SA_PREFIX = "pcsa."  # a service account's labels, as its profile ksa.<ns>.<name> applies them
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"  # on each endpoint: its pod's service account


def prefixed(sel: Selector, prefix: str, everything: Selector | None = None) -> Selector:
    """The selector with every label key prefixed; all() becomes ``everything`` (default "has a
    namespace"), global() "has no namespace" (global network sets and host endpoints, as
    libcalico-go's rules.go)."""
    if isinstance(sel, (Has, Compare, InSet)):
        return dataclasses.replace(sel, key=prefix + sel.key)
    if isinstance(sel, Not):
        return Not(prefixed(sel.operand, prefix, everything))
    if isinstance(sel, (And, Or)):
        return type(sel)(tuple(prefixed(op, prefix, everything) for op in sel.operands))
    if isinstance(sel, Global):
        return Not(Has(NAMESPACE_LABEL))
    return everything or Has(NAMESPACE_LABEL)  # All


def in_namespace(namespace: str) -> Selector:
    return Compare(NAMESPACE_LABEL, "==", namespace)


def service_accounts(names: list[str] | None, selector: str = "") -> Selector | None:
    """A rule entity's `serviceAccounts` as libcalico-go's parseServiceAccounts writes it: the selector
    over the accounts' labels (``pcsa.``), and the names as ``projectcalico.org/serviceaccount in {…}``."""
    sel = prefixed(parse(selector), SA_PREFIX, All()) if selector else None
    if names:
        listed = InSet(SERVICE_ACCOUNT_LABEL, tuple(names), negated=False)
        sel = listed if sel is None else And((sel, listed))
    return sel


def scoped_selector(selector: str, namespace: str = "", namespace_selector: str = "",
                    not_selector: str = "", accounts: Selector | None = None) -> str:
    """A rule entity's positive selector ("" = no selector match); ``namespace``: the NetworkPolicy's;
    ``accounts``: its `serviceAccounts` (see `service_accounts`)."""
    scope = prefixed(parse(namespace_selector), NS_PREFIX) if namespace_selector else (
        in_namespace(namespace) if namespace else None)
    sel = parse(selector) if selector else None
    if accounts is not None:
        sel = accounts if sel is None else And((accounts, sel))
    if scope is not None and (sel is not None or not_selector or namespace_selector):
        sel = scope if sel is None else And((scope, sel))
    return "" if sel is None else str(sel)


def applies_to(selector: str, namespace: str = "", namespace_selector: str = "",
               account_selector: str = "") -> str:
    """A policy's own selector, scoped: the endpoints it applies to. ``account_selector``: its
    `serviceAccountSelector`, over the accounts' labels (``pcsa.``); in a GlobalNetworkPolicy its all()
    means "has an account", in a NetworkPolicy it stays all() (libcalico-go's policy processors)."""
    sel: Selector = parse(selector) if selector else All()
    if namespace:
        sel = And((in_namespace(namespace), sel))
    elif namespace_selector:
        sel = And((prefixed(parse(namespace_selector), NS_PREFIX), sel))
    if account_selector:
        everything = All() if namespace else Has(SERVICE_ACCOUNT_LABEL)
        sel = And((sel, prefixed(parse(account_selector), SA_PREFIX, everything)))
    return str(sel)
