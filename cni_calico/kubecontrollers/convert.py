"""Kubernetes objects → the Calico resources calico-kube-controllers writes (pure, no I/O).

Each follows Calico's own converter (libcalico-go lib/backend/k8s/conversion/conversion.go and
kube-controllers pkg/converter/, Calico v3.32) field for field, so a cluster moved between real
Calico and us sees the same resources:

- NetworkPolicy <ns>/<name> → NetworkPolicy `knp.default.<name>` in <ns>: tier default, order 1000,
  selector `projectcalico.org/orchestrator == 'k8s'` && the podSelector, one Allow rule per
  (protocol, peer) with the ports of that protocol merged into ranges (SimplifyPorts), TCP when a
  port names no protocol, named ports and endPort ranges kept, ipBlock → nets / notNets,
  namespaceSelector {} → all(), types from policyTypes (Ingress when none); rules it cannot
  convert are dropped (Calico logs and drops them too).
- Namespace <name> → Profile `kns.<name>`: allow-all ingress and egress, labelsToApply
  `pcns.<label>` plus `pcns.projectcalico.org/name`.
- ServiceAccount <ns>/<name> → Profile `ksa.<ns>.<name>`: labelsToApply `pcsa.<label>` plus
  `pcsa.projectcalico.org/name`.
"""

from __future__ import annotations

import ipaddress
import logging

from cni_calico.v3 import KNS_PREFIX, KSA_PREFIX, NS_LABEL_PREFIX

log = logging.getLogger(__name__)

KNP_PREFIX = "knp.default."  # kube-controllers' KubernetesNetworkPolicyEtcdPrefix
SA_LABEL_PREFIX = "pcsa."  # ServiceAccountLabelPrefix
NAME_LABEL = "projectcalico.org/name"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
POLICY_ORDER = 1000  # Calico inserts every Kubernetes NetworkPolicy at order 1000


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _labels(obj: dict) -> dict[str, str]:
    labels = _meta(obj).get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


# --- selectors ------------------------------------------------------------------------------------


def selector(sel: dict | None, pod: bool) -> str:
    """k8sSelectorToCalico: a pod selector always starts with the orchestrator test; a present but
    empty namespace selector is all(); a missing one is ""."""
    parts = [f"{ORCHESTRATOR_LABEL} == 'k8s'"] if pod else []
    if sel is None:
        return " && ".join(parts)
    match = sel.get("matchLabels") or {}
    exprs = sel.get("matchExpressions") or []
    if not pod and not match and not exprs:
        return "all()"
    for key in sorted(match):
        parts.append(f"{key} == '{match[key]}'")
    for expr in exprs:
        key, op, values = expr.get("key"), expr.get("operator"), "', '".join(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in {{ '{values}' }}")
        elif op == "NotIn":
            parts.append(f"{key} not in {{ '{values}' }}")
        elif op == "Exists":
            parts.append(f"has({key})")
        elif op == "DoesNotExist":
            parts.append(f"! has({key})")
    return " && ".join(parts)


# --- ports ----------------------------------------------------------------------------------------


def _port(value: object, end: object) -> int | str:
    """numorstring.PortFromString of "<port>[:<endPort>]", as it marshals: a number, "a:b" or a name."""
    text = str(value) + (f":{end}" if end is not None else "")
    first, _, last = text.partition(":")
    if first.isdigit() and (not last or last.isdigit()):
        lo, hi = int(first), int(last or first)
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"invalid port {text}")
        return lo if lo == hi else f"{lo}:{hi}"
    if last or not text:
        raise ValueError(f"invalid port {text}")
    return text  # a named port


def _bounds(port: int | str) -> tuple[int, int] | None:
    if isinstance(port, int):
        return port, port
    first, sep, last = port.partition(":")
    return (int(first), int(last)) if sep and first.isdigit() else None


def simplify_ports(ports: list[int | str]) -> list[int | str]:
    """SimplifyPorts: named ports first as given, then the numeric ones merged into sorted ranges;
    with at most one numeric port the list comes back as it was."""
    if len(ports) <= 1:
        return ports
    named = [p for p in ports if _bounds(p) is None]
    numbers = sorted(n for p in ports if (b := _bounds(p)) for n in range(b[0], b[1] + 1))
    if len(numbers) <= 1:
        return ports
    out: list[int | str] = list(named)
    i = 0
    while i < len(numbers):
        first = last = numbers[i]
        i += 1
        while i < len(numbers) and numbers[i] <= last + 1:
            last = numbers[i]
            i += 1
        out.append(first if first == last else f"{first}:{last}")
    return out


# --- rules ----------------------------------------------------------------------------------------


def _net(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def _peer(peer: dict | None) -> dict:
    """k8sPeerToCalicoFields: the entity fields (selector, namespaceSelector, nets, notNets)."""
    if peer is None:
        return {}
    block = peer.get("ipBlock")
    if block is not None:
        return {"nets": [_net(block.get("cidr", ""))], "notNets": [_net(c) for c in block.get("except") or []]}
    return {"selector": selector(peer.get("podSelector"), pod=True),
            "namespaceSelector": selector(peer.get("namespaceSelector"), pod=False)}


def rules(peers: list[dict] | None, ports: list[dict] | None, ingress: bool) -> list[dict]:
    """k8sRuleToCalico: one Allow rule per protocol (sorted; "" = any) and peer."""
    by_protocol: dict[str, list[int | str] | None] = {}
    for port in ports or [None]:
        if port is None:
            by_protocol = {"": None}  # no ports: everything is allowed, nothing else matters
            break
        protocol = str(port.get("protocol") or "TCP")
        numbers = [_port(port["port"], port.get("endPort"))] if port.get("port") is not None else None
        if numbers is None:
            by_protocol[protocol] = None  # all ports of the protocol: wins over listed ones
        elif protocol not in by_protocol or by_protocol[protocol]:
            by_protocol[protocol] = (by_protocol.get(protocol) or []) + numbers
    out = []
    for protocol in sorted(by_protocol):
        allowed = simplify_ports(by_protocol[protocol] or [])
        for peer in peers or [None]:
            entity = _peer(peer)
            rule: dict = {"action": "Allow"}
            if protocol:
                rule["protocol"] = protocol
            if ingress:
                rule["source"] = entity
                rule["destination"] = {"ports": allowed}
            else:
                rule["destination"] = {"ports": allowed, **entity}
            out.append(rule)
    return out


def _direction(np: dict, ingress: bool) -> list[dict]:
    """The Calico rules of a policy's ingress (or egress) rules; one that cannot be converted is
    dropped with a warning, as Calico does."""
    meta, spec = _meta(np), np.get("spec") or {}
    out: list[dict] = []
    for rule in spec.get("ingress" if ingress else "egress") or []:
        try:
            out += rules(rule.get("from" if ingress else "to"), rule.get("ports"), ingress)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("NetworkPolicy %s/%s: dropping an %s rule that cannot be converted: %s",
                        meta.get("namespace"), meta.get("name"), "ingress" if ingress else "egress", exc)
    return out


def network_policy(np: dict) -> tuple[str, str, dict]:
    """(namespace, name, spec) of the Calico NetworkPolicy for a Kubernetes NetworkPolicy."""
    meta, spec = _meta(np), np.get("spec") or {}
    ingress, egress = _direction(np, True), _direction(np, False)
    declared = spec.get("policyTypes") or []
    types = [t for t in ("Ingress", "Egress") if t in declared] or ["Ingress"]
    return str(meta.get("namespace") or ""), KNP_PREFIX + str(meta.get("name")), {
        "tier": "default",
        "order": POLICY_ORDER,
        "ingress": ingress,
        "egress": egress,
        "selector": selector(spec.get("podSelector"), pod=True),
        "types": types,
    }


def namespace_profile(ns: dict) -> tuple[str, dict]:
    """(name, spec) of the namespace's Profile."""
    name = str(_meta(ns).get("name"))
    labels = {NS_LABEL_PREFIX + k: v for k, v in _labels(ns).items()}
    labels[NS_LABEL_PREFIX + NAME_LABEL] = name
    return KNS_PREFIX + name, {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                               "labelsToApply": labels}


def service_account_profile(sa: dict) -> tuple[str, dict]:
    """(name, spec) of the service account's Profile."""
    meta = _meta(sa)
    name, namespace = str(meta.get("name")), str(meta.get("namespace") or "default")
    labels = {SA_LABEL_PREFIX + k: v for k, v in _labels(sa).items()}
    labels[SA_LABEL_PREFIX + NAME_LABEL] = name
    return f"{KSA_PREFIX}{namespace}.{name}", {"labelsToApply": labels}
