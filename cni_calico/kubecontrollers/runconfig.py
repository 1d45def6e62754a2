"""What calico-kube-controllers runs: the KubeControllersConfiguration `default` merged with the
environment, as Calico's kube-controllers (pkg/config/runconfig.go) merges them. Pure, no I/O.

What holds:
- `DEFAULT_SPEC` is the spec Calico's kube-controllers creates when `default` is absent
  (NewDefaultKubeControllersConfig, plus clientv3's prometheusMetricsPort 9094), in Go's order.
- The environment wins where a variable is set (ENV_VARS, Calico's `AllEnvs`); each one set is
  recorded in `status.environmentVars` with its text as given. A bad value of a variable is a
  `ConfigError` (Calico exits); a bad value in the resource falls back to the default with a warning
  (Calico does the same for logSeverityScreen; calicoctl refuses the others before they are stored).
- A controller runs only when its section is present (or ENABLED_CONTROLLERS names it).
- `status.runningConfig` describes what runs here: Calico's layout, without the sections of the
  controllers we do not have (loadBalancer, migration), and with what we refuse shown off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cni_calico.v3 import go_duration, parse_duration

log = logging.getLogger(__name__)

NAME = "default"
PLURAL = "kubecontrollersconfigurations"
KIND = "KubeControllersConfiguration"
ENV_VARS = ("LOG_LEVEL", "RECONCILER_PERIOD", "ENABLED_CONTROLLERS", "COMPACTION_PERIOD", "HEALTH_ENABLED",
            "SYNC_NODE_LABELS", "AUTO_HOST_ENDPOINTS")
# Our controller names (ENABLED_CONTROLLERS' words) → the resource's section names, in Go's order.
SECTIONS = {"node": "node", "policy": "policy", "workloadendpoint": "workloadEndpoint",
            "serviceaccount": "serviceAccount", "namespace": "namespace"}
RECONCILED = ("policy", "workloadendpoint", "serviceaccount", "namespace")
DEFAULT_PERIOD = 300.0  # every reconcilerPeriod's default, and Calico's node label resync timer
DEFAULT_COMPACTION = 600.0


def default_spec() -> dict:
    five = {"reconcilerPeriod": "5m0s"}
    return {
        "logSeverityScreen": "Info",
        "healthChecks": "Enabled",
        "etcdV3CompactionPeriod": "10m0s",
        "prometheusMetricsPort": 9094,
        "controllers": {
            "node": {"reconcilerPeriod": "5m0s", "syncLabels": "Enabled",
                     "hostEndpoint": {"autoCreate": "Disabled", "createDefaultHostEndpoint": "Enabled"},
                     "leakGracePeriod": "15m0s"},
            "policy": dict(five), "workloadEndpoint": dict(five), "serviceAccount": dict(five),
            "namespace": dict(five),
            "loadBalancer": {"assignIPs": "AllServices"},
            "migration": {"policyNameMigrator": "Enabled"},
        },
    }


class ConfigError(ValueError):
    """A setting we cannot start with; the message names the variable."""


@dataclass(frozen=True)
class RunConfig:
    log_level: str = "info"  # a logging level name
    periods: dict = field(default_factory=dict)  # enabled controller → its reconciler period (s)
    compaction_period: float = DEFAULT_COMPACTION  # 0: off
    health: bool = True
    prometheus_port: int = 0  # 0: off
    sync_labels: bool = False
    leak_grace: float | None = None  # None or 0: no IPAM leak collection

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(self.periods)


# logrus' ParseLevel names → (our logging level, logrus' String() as Calico titles it in the status)
LEVELS = {"panic": ("critical", "Panic"), "fatal": ("critical", "Fatal"), "error": ("error", "Error"),
          "warn": ("warning", "Warning"), "warning": ("warning", "Warning"), "info": ("info", "Info"),
          "debug": ("debug", "Debug"), "trace": ("debug", "Trace")}
TRUE, FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def _bool(name: str, text: str) -> bool:
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ConfigError(f"{name}={text!r} is not a boolean (true or false)")


def _duration(text: str) -> float:
    """Go's time.ParseDuration for what we accept: "0", or a duration such as 10m or 1h30m."""
    text = text.strip()
    return 0.0 if text in ("0", "+0", "-0") else parse_duration(text)


def _env_duration(name: str, text: str) -> float:
    try:
        return _duration(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a duration such as 5m or 90s") from None


def _spec_duration(where: str, value: object, default: float | None) -> float | None:
    if value is None:
        return default
    try:
        return _duration(str(value))
    except ValueError:
        log.warning("KubeControllersConfiguration %s %r is not a duration: using %s", where, value,
                    "none" if default is None else go_duration(default))
        return default


def merge(env: dict[str, str], spec: dict) -> tuple[RunConfig, dict, list[str]]:
    """(what runs, the status to store, what of the resource is refused: a message each)."""
    env = {k: env[k] for k in ENV_VARS if k in env}
    refused: list[str] = []
    sections = spec.get("controllers") if isinstance(spec.get("controllers"), dict) else {}
    running: dict = {}

    # logSeverityScreen / LOG_LEVEL
    text = env.get("LOG_LEVEL")
    if text is not None:
        level = LEVELS.get(text.strip().lower())
        if level is None:
            raise ConfigError(f"LOG_LEVEL={text!r} is not a log level ({', '.join(LEVELS)})")
    else:
        level = LEVELS.get(str(spec.get("logSeverityScreen") or "").lower())
        if level is None:
            log.warning("KubeControllersConfiguration logSeverityScreen %r is not a log level: using Info",
                        spec.get("logSeverityScreen"))
            level = LEVELS["info"]
    running["logSeverityScreen"] = level[1]

    # healthChecks / HEALTH_ENABLED
    text = env.get("HEALTH_ENABLED")
    health = _bool("HEALTH_ENABLED", text) if text is not None else spec.get("healthChecks") != "Disabled"
    running["healthChecks"] = "Enabled" if health else "Disabled"

    # etcdV3CompactionPeriod / COMPACTION_PERIOD
    text = env.get("COMPACTION_PERIOD")
    compaction = _env_duration("COMPACTION_PERIOD", text) if text is not None else _spec_duration(
        "etcdV3CompactionPeriod", spec.get("etcdV3CompactionPeriod"), DEFAULT_COMPACTION)
    running["etcdV3CompactionPeriod"] = go_duration(compaction)

    # which controllers: ENABLED_CONTROLLERS, else the sections present
    text = env.get("ENABLED_CONTROLLERS")
    if text is not None:
        enabled = []
        for word in (w.strip() for w in text.split(",")):
            word = "namespace" if word == "profile" else word
            if word in ("loadbalancer", "flannelmigration"):
                raise ConfigError(f"ENABLED_CONTROLLERS: there is no {word} controller in this calico-kube-controllers "
                                  f"(known: {', '.join(SECTIONS)})")
            if word not in SECTIONS:
                raise ConfigError(f"ENABLED_CONTROLLERS: unknown controller {word!r} (known: {', '.join(SECTIONS)})")
            if word not in enabled:
                enabled.append(word)
    else:
        enabled = [c for c, s in SECTIONS.items() if isinstance(sections.get(s), dict)]
    for absent in ("loadBalancer", "migration"):
        if sections.get(absent) is not None and text is None:
            log.debug("KubeControllersConfiguration controllers.%s: there is no such controller here; not run", absent)
    controllers: dict = {}
    periods: dict[str, float] = {}
    for name in SECTIONS:  # Go's order
        if name not in enabled:
            continue
        section = sections.get(SECTIONS[name]) if isinstance(sections.get(SECTIONS[name]), dict) else None
        status: dict = {}
        period = DEFAULT_PERIOD
        if section is not None:
            period = _spec_duration(f"controllers.{SECTIONS[name]}.reconcilerPeriod", section.get("reconcilerPeriod"),
                                    DEFAULT_PERIOD)
            if section.get("reconcilerPeriod") is not None:
                status["reconcilerPeriod"] = go_duration(period)
        if name in RECONCILED and "RECONCILER_PERIOD" in env:
            period = _env_duration("RECONCILER_PERIOD", env["RECONCILER_PERIOD"])
            status["reconcilerPeriod"] = go_duration(period)
        periods[name] = period
        controllers[SECTIONS[name]] = status

    sync_labels, leak_grace = False, None
    if "node" in periods:
        node = controllers["node"]
        section = sections.get("node") if isinstance(sections.get("node"), dict) else {}
        text = env.get("SYNC_NODE_LABELS")
        sync_labels = _bool("SYNC_NODE_LABELS", text) if text is not None else section.get("syncLabels") != "Disabled"
        node["syncLabels"] = "Enabled" if sync_labels else "Disabled"
        text = env.get("AUTO_HOST_ENDPOINTS")
        hep = section.get("hostEndpoint") if isinstance(section.get("hostEndpoint"), dict) else None
        if text is not None:
            if text.lower() == "enabled":
                raise ConfigError("AUTO_HOST_ENDPOINTS=enabled: automatic host endpoints are not implemented here "
                                  "(use disabled, or leave it unset)")
            if text.lower() != "disabled":
                raise ConfigError(f"AUTO_HOST_ENDPOINTS={text!r} must be enabled or disabled")
        elif hep is not None:
            if hep.get("autoCreate") == "Enabled":
                refused.append("controllers.node.hostEndpoint.autoCreate Enabled: automatic host endpoints are not "
                               "implemented here; running with Disabled")
            node["hostEndpoint"] = {"autoCreate": "Disabled",
                                    "createDefaultHostEndpoint": hep.get("createDefaultHostEndpoint") or "Enabled"}
        if section.get("leakGracePeriod") is not None:
            leak_grace = _spec_duration("controllers.node.leakGracePeriod", section.get("leakGracePeriod"), None)
            if leak_grace is not None:
                node["leakGracePeriod"] = go_duration(leak_grace)
    running["controllers"] = {s: controllers[s] for s in SECTIONS.values() if s in controllers}

    port = spec.get("prometheusMetricsPort")
    port = port if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535 else 0
    if spec.get("debugProfilePort"):
        refused.append(f"debugProfilePort {spec['debugProfilePort']}: there is no Go pprof server here; not started")
    for message in refused:
        log.error("KubeControllersConfiguration %s", message)
    status = {"runningConfig": running}
    if env:
        status["environmentVars"] = dict(sorted(env.items()))
    run = RunConfig(log_level=level[0], periods=periods, compaction_period=compaction or 0.0, health=health,
                    prometheus_port=port, sync_labels=sync_labels, leak_grace=leak_grace)
    return run, status, refused
