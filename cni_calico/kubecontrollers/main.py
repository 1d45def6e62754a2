"""`calico-kube-controllers`: the controllers in one process, one reflector thread per collection.

Configured as Calico's: ETCD_ENDPOINTS (+ ETCD_KEY_FILE, ETCD_CERT_FILE, ETCD_CA_CERT_FILE),
KUBECONFIG (else in-cluster), ENABLED_CONTROLLERS (default all: node, policy, namespace,
serviceaccount, workloadendpoint), LOG_LEVEL; ours, in seconds: CALICO_NODE_DELETION_GRACE (60),
CALICO_NODE_CHECK_PERIOD (10), CALICO_IPAM_GC_PERIOD (300), CALICO_LABELS_RESYNC_PERIOD (60).
Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger(__name__)

PATHS = {
    "policy": "/apis/networking.k8s.io/v1/networkpolicies",
    "namespace": "/api/v1/namespaces",
    "serviceaccount": "/api/v1/serviceaccounts",
    "pod": "/api/v1/pods",
    "node": "/api/v1/nodes",
}


def every(stop: threading.Event, period: float, work) -> None:
    """`work()` every `period` seconds until stopped; a failure is logged and tried again next time."""
    while not stop.wait(period):
        try:
            work()
        except Exception:
            log.exception("periodic %s failed", getattr(work, "__qualname__", work))


def build(cfg, ds, api, stop: threading.Event) -> list:
    """What runs for the enabled controllers: their reflectors, and the periodic work (the node
    controller's checks, the endpoint labels' resync) as thread targets."""
    from cni_calico.kubecontrollers import convert
    from cni_calico.kubecontrollers.controllers import Mirror, WorkloadLabels
    from cni_calico.kubecontrollers.nodes import NodeController
    from cni_calico.kubecontrollers.reflector import Reflector
    from cni_calico.kubecontrollers.writer import Owned

    def policy(obj: dict):
        ns, name, spec = convert.network_policy(obj)
        return (ns, name), spec

    def namespace(obj: dict):
        name, spec = convert.namespace_profile(obj)
        return ("", name), spec

    def account(obj: dict):
        name, spec = convert.service_account_profile(obj)
        return ("", name), spec

    reflectors: list = []
    tickers: list = []
    if "policy" in cfg.controllers:
        owned = Owned(ds, "NetworkPolicy", "networkpolicies", convert.KNP_PREFIX)
        reflectors.append(Reflector(api, PATHS["policy"], Mirror(owned, policy), stop))
    if "namespace" in cfg.controllers:
        owned = Owned(ds, "Profile", "profiles", "kns.")
        reflectors.append(Reflector(api, PATHS["namespace"], Mirror(owned, namespace), stop))
    if "serviceaccount" in cfg.controllers:
        owned = Owned(ds, "Profile", "profiles", convert.KSA_PREFIX)
        reflectors.append(Reflector(api, PATHS["serviceaccount"], Mirror(owned, account), stop))
    if "workloadendpoint" in cfg.controllers:
        labels = WorkloadLabels(ds)
        reflectors.append(Reflector(api, PATHS["namespace"], labels.namespaces_feed(), stop))
        reflectors.append(Reflector(api, PATHS["pod"], labels, stop))
        tickers.append(lambda: every(stop, cfg.labels_period, labels.reconcile))
    if "node" in cfg.controllers:
        nodes = NodeController(ds, api, grace=cfg.node_grace, gc_period=cfg.gc_period)
        reflectors.append(Reflector(api, PATHS["node"], nodes, stop))
        tickers.append(lambda: nodes.run(stop, cfg.node_period))
    return reflectors + tickers


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calico-kube-controllers",
        description="Follows the Kubernetes API and keeps Calico's etcd datastore in step: Kubernetes "
        "NetworkPolicy, namespace and service account profiles, endpoint labels, deleted nodes.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    from cni_calico import __version__

    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
    from cni_calico.datastore import Datastore
    from cni_calico.kube import KubeError, load_access
    from cni_calico.kubecontrollers.client import KubeApi
    from cni_calico.kubecontrollers.config import ConfigError, from_env
    from cni_calico.logsetup import LEVELS, setup_stderr

    try:  # a bad setting or unusable credentials: say which, and stop before starting anything
        cfg = from_env()
        setup_stderr(cfg.log_level if cfg.log_level in LEVELS else "info")
        api = KubeApi(load_access(cfg.kubeconfig))
    except (ConfigError, KubeError) as exc:
        sys.stderr.write(f"calico-kube-controllers: {exc}\n")
        return 2
    ds = Datastore(cfg.etcd)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = []
    for part in build(cfg, ds, api, stop):
        target = part.run if hasattr(part, "run") else part
        thread = threading.Thread(target=target, name=getattr(part, "path", "ticker"), daemon=True)
        thread.start()
        threads.append(thread)
    log.info("calico-kube-controllers running: %s", ", ".join(cfg.controllers))
    stop.wait()
    log.info("calico-kube-controllers stopping")
    ds.close()
    return 0
