"""calico-kube-controllers' settings from the environment: where etcd and the API are, and ours.

Everything Calico's kube-controllers takes from the KubeControllersConfiguration (which controllers,
log level, periods, grace, compaction, health) is merged in runconfig.py, where its environment
variables (LOG_LEVEL, ENABLED_CONTROLLERS, …) are read too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cni_calico.datastore import DatastoreConfigError, EtcdConf, parse_endpoints
from cni_calico.kubecontrollers.runconfig import ConfigError, default_spec, merge

# Variables an earlier release read, now taken from the resource: refused, naming what replaced them.
REPLACED = {
    "CALICO_IPAM_GC_PERIOD": "KubeControllersConfiguration controllers.node.leakGracePeriod (IPAM garbage "
                             "collection runs every half of it)",
    "CALICO_LABELS_RESYNC_PERIOD": "KubeControllersConfiguration controllers.workloadEndpoint.reconcilerPeriod "
                                   "(or RECONCILER_PERIOD)",
}

__all__ = ["Config", "ConfigError", "from_env"]


@dataclass
class Config:
    etcd: EtcdConf
    kubeconfig: str  # "" → in-cluster (the pod's service account)
    env: dict  # the whole environment: runconfig.merge picks Calico's variables from it
    node_grace: float = 60.0  # CALICO_NODE_DELETION_GRACE: seconds before a gone Node's clean-up
    node_period: float = 10.0  # CALICO_NODE_CHECK_PERIOD: seconds between the node controller's checks
    log_level: str = "info"  # LOG_LEVEL over Calico's default resource: the level until `default` is read


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
    for name, instead in REPLACED.items():
        if env.get(name):
            raise ConfigError(f"{name} is no longer read: set {instead}")
    # A bad LOG_LEVEL, ENABLED_CONTROLLERS, …: refused now, before anything starts.
    start, _, _ = merge(env, default_spec())
    return Config(
        etcd=EtcdConf(urls, env.get("ETCD_KEY_FILE", ""), env.get("ETCD_CERT_FILE", ""),
                      env.get("ETCD_CA_CERT_FILE", "")),
        kubeconfig=env.get("KUBECONFIG", "").strip(),
        env=env,
        node_grace=_seconds(env, "CALICO_NODE_DELETION_GRACE", 60.0),
        node_period=_seconds(env, "CALICO_NODE_CHECK_PERIOD", 10.0),
        log_level=start.log_level,
    )
