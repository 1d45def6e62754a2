"""calico-kube-controllers' settings, from the environment Calico's kube-controllers reads."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cni_calico.datastore import DatastoreConfigError, EtcdConf, parse_endpoints

CONTROLLERS = ("node", "policy", "namespace", "serviceaccount", "workloadendpoint")


class ConfigError(ValueError):
    """A setting we cannot start with; the message names the variable."""


@dataclass
class Config:
    etcd: EtcdConf
    kubeconfig: str  # "" → in-cluster (the pod's service account)
    controllers: tuple[str, ...]
    log_level: str = "info"
    node_grace: float = 60.0  # CALICO_NODE_DELETION_GRACE: seconds before a gone Node's clean-up
    node_period: float = 10.0  # seconds between the node controller's checks
    gc_period: float = 300.0  # seconds between IPAM garbage collections
    labels_period: float = 60.0  # seconds between full checks of every endpoint's labels


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={text!r} must not be negative")
    return value


def from_env(env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    try:
        urls = parse_endpoints(env.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "ETCD_ENDPOINTS")
    except DatastoreConfigError as exc:
        raise ConfigError(exc.msg) from None
    wanted = tuple(c.strip() for c in env.get("ENABLED_CONTROLLERS", ",".join(CONTROLLERS)).split(",") if c.strip())
    unknown = [c for c in wanted if c not in CONTROLLERS]
    if unknown:
        raise ConfigError(f"ENABLED_CONTROLLERS: unknown {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})")
    level = (env.get("LOG_LEVEL") or "info").strip().lower()
    return Config(
        etcd=EtcdConf(urls, env.get("ETCD_KEY_FILE", ""), env.get("ETCD_CERT_FILE", ""),
                      env.get("ETCD_CA_CERT_FILE", "")),
        kubeconfig=env.get("KUBECONFIG", "").strip(),
        controllers=wanted,
        log_level="warning" if level == "warn" else level,
        node_grace=_seconds(env, "CALICO_NODE_DELETION_GRACE", 60.0),
        node_period=_seconds(env, "CALICO_NODE_CHECK_PERIOD", 10.0),
        gc_period=_seconds(env, "CALICO_IPAM_GC_PERIOD", 300.0),
        labels_period=_seconds(env, "CALICO_LABELS_RESYNC_PERIOD", 60.0),
    )
