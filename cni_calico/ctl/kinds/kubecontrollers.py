"""KubeControllersConfiguration: calico-kube-controllers' settings, one resource named `default`.

Pure. Fields and checks as Calico's API type and clientv3 (`kubecontrollersconfig.go`): every
field named on error, durations stored as Go's metav1.Duration writes them ("5m" is stored
"5m0s"), clientv3's defaults filled on write (prometheusMetricsPort 9094, a node controller's
leakGracePeriod 15m0s, a load balancer controller's assignIPs AllServices, a host endpoint
template's nodeSelector all()). Its `status` (kube-controllers' own report) is kept as stored.

Our calico-kube-controllers (cni_calico.kubecontrollers.runconfig) honours logSeverityScreen,
healthChecks, etcdV3CompactionPeriod, prometheusMetricsPort, which controllers run (a section
present), each reconcilerPeriod, node.syncLabels and node.leakGracePeriod. What it does not do is
refused here, naming the field (`NOT_HONOURED`): debugProfilePort other than 0 (no Go pprof),
node.hostEndpoint.autoCreate Enabled and templates (no automatic host endpoints), and loadBalancer /
migration other than as Calico's default writes them (no such controllers: those sections are
accepted only so that the default Calico's kube-controllers creates can be applied back).
"""

from __future__ import annotations

from cni_calico.ctl.kinds import fields
from cni_calico.resources import FieldError, Kind, Resource, register, selector_errors
from cni_calico.v3 import go_duration, parse_duration

MODES = ("Enabled", "Disabled")
LOG_LEVELS = ("None", "Debug", "Info", "Warning", "Error", "Fatal", "Panic")  # logrus' levels, as Calico's
ASSIGN_IPS = ("AllServices", "RequestedServicesOnly")
SPEC = {"logSeverityScreen": str, "healthChecks": str, "etcdV3CompactionPeriod": str, "prometheusMetricsPort": int,
        "controllers": dict, "debugProfilePort": int}
RECONCILED = ("policy", "workloadEndpoint", "serviceAccount", "namespace")  # {reconcilerPeriod} each
CONTROLLERS = frozenset({"node", *RECONCILED, "loadBalancer", "migration"})
NODE = {"reconcilerPeriod": str, "syncLabels": str, "hostEndpoint": dict, "leakGracePeriod": str}
HOST_ENDPOINT = {"autoCreate": str, "createDefaultHostEndpoint": str, "templates": list}
TEMPLATE = {"generateName": str, "interfaceCIDRs": list, "interfacePattern": str, "labels": dict,
            "annotations": dict, "nodeSelector": str}


def _duration(field: str, data: dict, key: str) -> list[FieldError]:
    """A metav1.Duration: a Go duration string, stored in Go's normal form."""
    value = data.get(key)
    if value is None:
        return []
    try:
        data[key] = go_duration(parse_duration(str(value)))
    except ValueError as exc:
        return [FieldError(f"{field}.{key}", str(exc), value)]
    return []


def _validate(res: Resource) -> list[FieldError]:
    spec = res.spec
    errors = fields.types("spec.", spec, SPEC) or [
        e for key, allowed in (("logSeverityScreen", LOG_LEVELS), ("healthChecks", MODES))
        for e in fields.one_of(f"spec.{key}", spec.get(key), allowed)]
    if errors:
        return errors
    errors += _duration("spec", spec, "etcdV3CompactionPeriod")
    for key in ("prometheusMetricsPort", "debugProfilePort"):
        if spec.get(key) is not None and not 0 <= spec[key] <= fields.MAX_PORT:
            errors.append(FieldError(f"spec.{key}", f"must be a port 0-{fields.MAX_PORT} (0: off)", spec[key]))
    spec.setdefault("prometheusMetricsPort", 9094)
    controllers = spec.setdefault("controllers", {})
    errors += fields.unknown("spec.controllers.", controllers, CONTROLLERS)
    for name in sorted(CONTROLLERS & set(controllers)):
        where = f"spec.controllers.{name}"
        conf, errs = fields.mapping(where, controllers[name])
        if errs:
            errors += errs
            continue
        if name in RECONCILED:
            errors += fields.unknown(f"{where}.", conf, {"reconcilerPeriod"})
            errors += _duration(where, conf, "reconcilerPeriod")
        elif name == "loadBalancer":
            errors += fields.unknown(f"{where}.", conf, {"assignIPs"})
            errors += fields.one_of(f"{where}.assignIPs", conf.setdefault("assignIPs", "AllServices"), ASSIGN_IPS)
        elif name == "migration":
            errors += fields.unknown(f"{where}.", conf, {"policyNameMigrator"})
            errors += fields.one_of(f"{where}.policyNameMigrator", conf.get("policyNameMigrator"), MODES)
        else:
            errors += _node(where, conf)
    return errors + not_honoured(spec)


NOT_HERE = "not honoured by this calico-kube-controllers"
# What Calico's default holds for the sections of controllers we do not have: accepted only so.
INERT_SECTIONS = {"loadBalancer": {"assignIPs": "AllServices"}, "migration": {"policyNameMigrator": "Enabled"}}


def not_honoured(spec: dict) -> list[FieldError]:
    """What calico-kube-controllers here would not do, each naming its field (run after the checks
    that fill the defaults)."""
    errors = []
    if spec.get("debugProfilePort"):
        errors.append(FieldError("spec.debugProfilePort", f"{NOT_HERE}: there is no Go pprof server; only 0 (off)",
                                 spec["debugProfilePort"]))
    controllers = spec.get("controllers") or {}
    for name, inert in INERT_SECTIONS.items():
        conf = controllers.get(name)
        if isinstance(conf, dict) and {k: v for k, v in conf.items() if v not in (None, "")} not in (inert, {}):
            errors.append(FieldError(f"spec.controllers.{name}", f"{NOT_HERE}: there is no {name} controller; "
                                     f"accepted only as Calico's default {inert}", conf))
    hep = ((controllers.get("node") or {}).get("hostEndpoint")) or {}
    if isinstance(hep, dict):
        if hep.get("autoCreate") == "Enabled":
            errors.append(FieldError("spec.controllers.node.hostEndpoint.autoCreate", f"{NOT_HERE}: automatic host "
                                     "endpoints are not implemented; only Disabled", "Enabled"))
        if hep.get("templates"):
            errors.append(FieldError("spec.controllers.node.hostEndpoint.templates", f"{NOT_HERE}: automatic host "
                                     "endpoints are not implemented"))
    return errors


def _node(where: str, conf: dict) -> list[FieldError]:
    errors = fields.unknown(f"{where}.", conf, set(NODE)) + fields.types(f"{where}.", conf, NODE)
    if errors:
        return errors
    errors += _duration(where, conf, "reconcilerPeriod")
    errors += fields.one_of(f"{where}.syncLabels", conf.get("syncLabels"), MODES)
    conf.setdefault("leakGracePeriod", "15m0s")
    errors += _duration(where, conf, "leakGracePeriod")
    hep, errs = fields.mapping(f"{where}.hostEndpoint", conf.get("hostEndpoint"))
    if errs or not hep:
        return errors + errs
    at = f"{where}.hostEndpoint"
    errors += fields.unknown(f"{at}.", hep, set(HOST_ENDPOINT)) + fields.types(f"{at}.", hep, HOST_ENDPOINT)
    errors += fields.one_of(f"{at}.autoCreate", hep.get("autoCreate"), MODES)
    errors += fields.one_of(f"{at}.createDefaultHostEndpoint", hep.get("createDefaultHostEndpoint"), MODES)
    seen: set[str] = set()
    for i, template in enumerate(hep.get("templates") or []):
        errors += _template(f"{at}.templates[{i}]", template, seen)
    return errors


def _template(at: str, template: object, seen: set[str]) -> list[FieldError]:
    if not isinstance(template, dict):
        return [FieldError(at, "must be a mapping", template)]
    errors = fields.unknown(f"{at}.", template, set(TEMPLATE)) + fields.types(f"{at}.", template, TEMPLATE)
    if errors:
        return errors
    name = template.get("generateName")
    if not name:
        return [FieldError(f"{at}.generateName", "Template name must be specified")]
    errors += fields.name(f"{at}.generateName", name)
    if name in seen:
        errors.append(FieldError(f"{at}.generateName", "Template name must be unique", name))
    seen.add(name)
    if not template.get("interfaceCIDRs") and not template.get("interfacePattern"):
        errors.append(FieldError(at, "InterfaceCIDRs or InterfacePattern must be specified"))
    for j, cidr in enumerate(template.get("interfaceCIDRs") or []):
        errors += fields.ip(f"{at}.interfaceCIDRs[{j}]", cidr, cidr="required")
    if template.get("interfacePattern"):
        import re

        try:
            re.compile(template["interfacePattern"])
        except re.error as exc:
            errors.append(FieldError(f"{at}.interfacePattern", f"invalid regular expression: {exc}",
                                     template["interfacePattern"]))
    errors += fields.labels(f"{at}.labels", template.get("labels"))
    template.setdefault("nodeSelector", "all()")
    errors += selector_errors(f"{at}.nodeSelector", template["nodeSelector"])
    return errors


KUBECONTROLLERSCONFIGURATION = register(Kind(
    name="KubeControllersConfiguration",
    plural="kubecontrollersconfigurations",
    aliases=("kubecontrollersconfiguration", "kubecontrollersconfigurations", "kubecontrollersconfig",
             "kubecontrollersconfigs"),
    namespaced=False,
    spec_fields=frozenset(SPEC),
    headings=("NAME",),
    wide_headings=("NAME",),
    columns={"NAME": lambda r, c: r.name},
    validate_spec=_validate,
    singleton="default",
))
