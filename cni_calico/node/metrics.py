"""Prometheus metrics of calico-node and its CNI server (prometheus-client), on Felix's port.

Names follow Felix's where the meaning is the same (`felix_active_local_endpoints`,
`felix_iptables_restore_calls`, …); ours are `cni_calico_…`: the CNI server's requests by command and
CNI result code with their latency, etcd round trips, and this node's IPAM (blocks and addresses in
use per pool). calico-node and its CNI server are two processes: both record into prometheus-client's
multiprocess directory (`<CALICO_RUN_DIR>/metrics`, emptied when calico-node starts) and calico-node's
exporter adds them up. Recording is always on (a few µs an event); the exporter listens only when
enabled: `FELIX_PROMETHEUSMETRICSENABLED` / `FELIX_PROMETHEUSMETRICSPORT` (9091) /
`FELIX_PROMETHEUSMETRICSHOST` (all addresses, as Felix; read by cni_calico.node.config), or
FelixConfiguration's `prometheusMetricsEnabled` / `prometheusMetricsPort` (the environment wins, as
Felix's does).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable: read when it is imported
DEFAULT_PORT = 9091


def prepare(run_dir: str) -> None:
    """calico-node, before it imports prometheus-client or starts its CNI server: a fresh directory
    (figures of earlier processes would be added in), named in the environment its child inherits."""
    path = os.path.join(run_dir, "metrics")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ[DIR_ENV] = path


class _Metrics:
    """The metrics themselves, made on first use in each process (prometheus-client is imported then)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, Summary

        self.local_endpoints = Gauge("felix_active_local_endpoints", "Local workload endpoints being policed.",
                                     multiprocess_mode="livemax")
        self.local_policies = Gauge("felix_active_local_policies", "Policies that apply to a local endpoint.",
                                    multiprocess_mode="livemax")
        self.ipset_calls = Counter("felix_ipset_calls", "ipset invocations (commands and netlink batches).")
        self.restore_calls = Counter("felix_iptables_restore_calls", "iptables-restore transactions.")
        self.restore_errors = Counter("felix_iptables_restore_errors", "Failed policy applies.")
        self.resyncs = Counter("felix_resyncs_started", "Snapshots of the datastore read (start and resyncs).")
        self.apply_time = Summary("felix_int_dataplane_apply_time_seconds",
                                  "Time to apply a batch of policy changes to the dataplane.")
        self.requests = Counter("cni_calico_cni_requests", "CNI requests the CNI server answered.",
                                ["command", "code"])
        self.latency = Histogram("cni_calico_cni_request_seconds", "CNI request latency in the CNI server.",
                                 ["command"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.round_trips = Counter("cni_calico_etcd_round_trips", "etcd requests made.", ["process"])


_metrics: _Metrics | None = None
_lock = threading.Lock()


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


class Delta:
    """Turns a running total read from somewhere (a dataplane's call count) into counter increments."""

    def __init__(self) -> None:
        self.last = 0
        self._lock = threading.Lock()

    def take(self, total: int) -> int:
        with self._lock:
            step, self.last = max(0, total - self.last), max(total, self.last)
        return step


def observe_request(command: str, status: int, out: str, seconds: float) -> None:
    """One answered CNI request: its command, its CNI result code ("0" for success) and latency."""
    code = "0"
    if status:
        import json

        try:
            code = str(json.loads(out).get("code", status))
        except (ValueError, AttributeError):
            code = str(status)
    m = metrics()
    m.requests.labels(command or "-", code).inc()
    m.latency.labels(command or "-").observe(seconds)


def _ipam_collector(read: Callable[[], tuple[dict[str, int], dict[str, int]]]):
    """This node's IPAM per pool, computed at scrape time from calico-node's views."""
    from prometheus_client.core import GaugeMetricFamily

    class IpamCollector:
        def collect(self) -> Iterable:
            blocks, in_use = read()
            family = GaugeMetricFamily("cni_calico_ipam_blocks", "Blocks affine to this node, per pool.",
                                       labels=["pool"])
            for pool, count in sorted(blocks.items()):
                family.add_metric([pool], count)
            yield family
            family = GaugeMetricFamily("cni_calico_ipam_addresses_in_use",
                                       "Addresses of this node's workload endpoints, per pool.", labels=["pool"])
            for pool, count in sorted(in_use.items()):
                family.add_metric([pool], count)
            yield family

    return IpamCollector()


class Exporter:
    """The HTTP endpoint (`/metrics`), started and stopped as the settings change."""

    def __init__(self, read_ipam: Callable[[], tuple[dict[str, int], dict[str, int]]]) -> None:
        self.read_ipam = read_ipam
        self.server = None
        self.address: tuple[str, int] | None = None

    def apply(self, enabled: bool, host: str, port: int) -> None:
        wanted = (host, port) if enabled else None
        if wanted == self.address:
            return
        self.stop()
        if wanted is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_ipam_collector(self.read_ipam))
        try:
            self.server, _ = start_http_server(port, addr=host or "0.0.0.0", registry=registry)
        except OSError as exc:
            log.error("Prometheus metrics not served on %s:%d: %s", host or "*", port, exc)
            return
        self.address = wanted
        log.info("Prometheus metrics on http://%s:%d/metrics", host or "*", port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            log.info("Prometheus metrics no longer served")
        self.server, self.address = None, None
