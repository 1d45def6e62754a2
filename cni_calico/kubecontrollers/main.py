"""`calico-kube-controllers`: the controllers in one process, one reflector thread per collection.

Configured as Calico's: ETCD_ENDPOINTS (+ ETCD_KEY_FILE, ETCD_CERT_FILE, ETCD_CA_CERT_FILE),
KUBECONFIG (else in-cluster), and the KubeControllersConfiguration `default` (created with
Calico's defaults when absent), whose settings Calico's variables override where set:
LOG_LEVEL, ENABLED_CONTROLLERS (node, policy, namespace, serviceaccount, workloadendpoint),
RECONCILER_PERIOD, COMPACTION_PERIOD, HEALTH_ENABLED, SYNC_NODE_LABELS, AUTO_HOST_ENDPOINTS
(disabled only). Ours, in seconds: CALICO_NODE_DELETION_GRACE (60), CALICO_NODE_CHECK_PERIOD (10).
A change of the resource that changes what runs restarts the process in place (exec), as Calico's
restarts. Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger(__name__)

STATUS_FILE = "/status/status.json"  # Calico's status.DefaultStatusFile
PATHS = {
    "policy": "/apis/networking.k8s.io/v1/networkpolicies",
    "namespace": "/api/v1/namespaces",
    "serviceaccount": "/api/v1/serviceaccounts",
    "pod": "/api/v1/pods",
    "node": "/api/v1/nodes",
}


def every(stop: threading.Event, period: float, work) -> None:
    """`work()` every `period` seconds until stopped (never when 0); a failure is logged and tried
    again next time."""
    if period <= 0:
        return
    while not stop.wait(period):
        try:
            work()
        except Exception:
            log.exception("periodic %s failed", getattr(work, "__qualname__", work))


def compactor(ds, period: float, stop: threading.Event) -> None:
    """etcd compacted every `period`, taking turns with every other compactor of the cluster
    (kube-apiserver's included) as Calico's kube-controllers does (Datastore.compact_step)."""
    from cni_calico.datastore import DatastoreError

    log.info("Starting periodic etcdv3 compaction every %.0f s", period)
    seen = revision = 0
    while not stop.wait(period):
        try:
            seen, revision = ds.compact_step(seen, revision)
        except DatastoreError as exc:
            log.warning("etcd compaction failed, trying again next period: %s", exc)


def health(ds, api, path: str, stop: threading.Event) -> None:
    """Calico's status report (kube-controllers' runHealthChecks): etcd and the API server's /healthz
    checked every 10 s (2 s while not ready), the readiness written to `path` as Calico's
    status.json, which Calico's `check-status -r` reads."""
    import json
    import os

    from cni_calico.datastore import DatastoreError
    from cni_calico.kube import KubeError

    warned = False
    while not stop.is_set():
        readiness = {"Startup": {"Ready": True, "Reason": ""}}  # this runs once the datastore was read
        try:
            ds.revision()
            readiness["CalicoDatastore"] = {"Ready": True, "Reason": ""}
        except DatastoreError as exc:
            readiness["CalicoDatastore"] = {"Ready": False, "Reason": f"Error verifying datastore: {exc}"}
        try:
            code = api.probe("/healthz")
            reason = "" if code == 200 else f"Error reaching apiserver: http status code: {code}"
        except KubeError as exc:
            code, reason = 0, f"Error reaching apiserver: {exc}"
        readiness["KubeAPIServer"] = {"Ready": code == 200, "Reason": reason}
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(f"{path}.tmp", "w", encoding="utf-8") as f:
                json.dump({"Readiness": readiness}, f, separators=(",", ":"))
            os.chmod(f"{path}.tmp", 0o644)
            os.replace(f"{path}.tmp", path)
            warned = False
        except OSError as exc:
            if not warned:
                log.warning("cannot write the status file %s: %s", path, exc.strerror)
            warned = True
        stop.wait(10 if all(r["Ready"] for r in readiness.values()) else 2)


def build(cfg, run, ds, api, stop: threading.Event, status_file: str = "") -> list:
    """What runs for the enabled controllers (`run`, a runconfig.RunConfig): their reflectors, and
    the periodic work (reconciler periods, the node controller's checks, compaction, health) as
    thread targets."""
    from cni_calico.kubecontrollers import convert
    from cni_calico.kubecontrollers.controllers import Mirror, WorkloadLabels
    from cni_calico.kubecontrollers.nodes import NodeController, NodeLabels
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

    mirrors = {"policy": (("NetworkPolicy", "networkpolicies", convert.KNP_PREFIX), policy),
               "namespace": (("Profile", "profiles", "kns."), namespace),
               "serviceaccount": (("Profile", "profiles", convert.KSA_PREFIX), account)}
    reflectors: list = []
    tickers: list = []
    for name, (owner, conv) in mirrors.items():
        if name in run.periods:
            mirror = Mirror(Owned(ds, *owner), conv)
            reflectors.append(Reflector(api, PATHS[name], mirror, stop))
            tickers.append(lambda m=mirror, p=run.periods[name]: every(stop, p, m.reconcile))
    if "workloadendpoint" in run.periods:
        labels = WorkloadLabels(ds)
        reflectors.append(Reflector(api, PATHS["namespace"], labels.namespaces_feed(), stop))
        reflectors.append(Reflector(api, PATHS["pod"], labels, stop))
        tickers.append(lambda: every(stop, run.periods["workloadendpoint"], labels.reconcile))
    if "node" in run.periods:
        leak = run.leak_grace or 0.0
        nodes = NodeController(ds, api, grace=cfg.node_grace, leak_grace=leak or None,
                               gc_period=leak / 2 if leak > 0 else 300.0)
        reflectors.append(Reflector(api, PATHS["node"], nodes, stop))
        tickers.append(lambda: nodes.run(stop, cfg.node_period))
        if run.sync_labels:
            node_labels = NodeLabels(ds)
            reflectors.append(Reflector(api, PATHS["node"], node_labels, stop))
            tickers.append(lambda: every(stop, run.periods["node"], node_labels.reconcile))
            tickers.append(lambda: every(stop, cfg.node_period, node_labels.check_new))
    if run.compaction_period > 0:
        tickers.append(lambda: compactor(ds, run.compaction_period, stop))
    else:
        log.info("Disabling periodic etcdv3 compaction")
    if run.health and status_file:
        tickers.append(lambda: health(ds, api, status_file, stop))
    return reflectors + tickers


def restart() -> None:
    """This process again, from the start (Calico's kube-controllers exits for its wrapper to
    restart it; an exec keeps the pid and needs no wrapper)."""
    import os

    for handler in logging.getLogger().handlers:
        handler.flush()
    env = dict(os.environ)
    if getattr(sys, "frozen", False):  # the PyInstaller bundle: a fresh instance, not a child
        env["PYINSTALLER_RESET_ENVIRONMENT"] = "1"
        os.execve(sys.executable, sys.argv, env)
    os.execve(sys.executable, sys.orig_argv, env)


def serve_metrics(port: int) -> None:
    """Prometheus' /metrics on every address (as Calico's ":<port>"): this process' own metrics."""
    try:
        from prometheus_client import start_http_server

        start_http_server(port)
        log.info("Starting Prometheus metrics server on port %d", port)
    except OSError as exc:
        log.error("cannot serve Prometheus metrics on port %d: %s", port, exc.strerror)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calico-kube-controllers",
        description="Follows the Kubernetes API and keeps Calico's etcd datastore in step: Kubernetes "
        "NetworkPolicy, namespace and service account profiles, endpoint labels, deleted nodes.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    from cni_calico import __version__

    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--status-file", default=STATUS_FILE, help="where health checks write the readiness "
                        f"(default {STATUS_FILE}, Calico's)")
    args = parser.parse_args(argv)
    from cni_calico.datastore import Datastore
    from cni_calico.kube import KubeError, load_access
    from cni_calico.kubecontrollers import settings
    from cni_calico.kubecontrollers.client import KubeApi
    from cni_calico.kubecontrollers.config import ConfigError, from_env
    from cni_calico.logsetup import setup_stderr

    try:  # a bad setting or unusable credentials: say which, and stop before starting anything
        setup_stderr("info")
        cfg = from_env()
        setup_stderr(cfg.log_level)
        api = KubeApi(load_access(cfg.kubeconfig))
    except (ConfigError, KubeError) as exc:
        sys.stderr.write(f"calico-kube-controllers: {exc}\n")
        return 2
    ds = Datastore(cfg.etcd)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("Getting initial config snapshot from datastore")
    run, kv = settings.load(ds, cfg.env)
    setup_stderr(run.log_level)
    changed: list = []

    def on_change(new) -> None:
        log.info("KubeControllersConfiguration changed what runs: restarting")
        changed.append(new)
        stop.set()

    threads = []
    parts = build(cfg, run, ds, api, stop, args.status_file)
    parts.append(lambda: settings.follow(ds, cfg.env, run, kv.mod_revision, on_change, stop))
    for part in parts:
        target = part.run if hasattr(part, "run") else part
        thread = threading.Thread(target=target, name=getattr(part, "path", "ticker"), daemon=True)
        thread.start()
        threads.append(thread)
    if run.prometheus_port:
        serve_metrics(run.prometheus_port)
    log.info("calico-kube-controllers running: %s", ", ".join(run.controllers) or "no controllers")
    stop.wait()
    ds.close()
    if changed:
        restart()
    log.info("calico-kube-controllers stopping")
    return 0
