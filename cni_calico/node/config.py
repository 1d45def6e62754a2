"""calico-node's settings from the environment (the classic calico-node variables), validated at start.

A bad or unknown value stops the node with a message naming the variable, so
there is never a half-working node.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from cni_calico.datastore import DatastoreConfigError, EtcdConf, parse_endpoints
from cni_calico.logsetup import LEVELS
from cni_calico.names import is_valid_nodename
from cni_calico.v3 import (
    DEFAULT_BLOCK_SIZE,
    ENDPOINT_TO_HOST_ACTIONS,
    ProtoPort,
    endpoint_to_host_action,
    listen_host,
    parse_port_list,
)

# Every variable calico-node reads, with one line each: `calico-node --help` prints this table, and
# tests/unit/test_node_config.py checks that config.py reads no variable missing from it.
VARIABLES: dict[str, str] = {
    "NODENAME": "this node's name in etcd; unset: the nodename file, then HOSTNAME, then the host name (lowercased)",
    "CALICO_NODENAME_FILE": "where the node name is kept for the CNI plugin (default $CALICO_LIB_DIR/nodename)",
    "HOSTNAME": "the node name when NODENAME and the nodename file give none (lowercased)",
    "IP": "IPv4 address[/len] for BGP; empty or 'autodetect': found by IP_AUTODETECTION_METHOD; 'none'",
    "IP_AUTODETECTION_METHOD": "first-found, interface=REGEX, skip-interface=REGEX or can-reach=IP",
    "IP6": "IPv6 address[/len]; 'autodetect' (by IP6_AUTODETECTION_METHOD); empty or 'none': no IPv6",
    "IP6_AUTODETECTION_METHOD": "as IP_AUTODETECTION_METHOD, for IP6=autodetect",
    "DISABLE_NODE_IP_CHECK": "true: start even when another node is registered with this node's address",
    "ETCD_ENDPOINTS": "etcd v3 client URLs, comma separated (required), e.g. http://127.0.0.1:2379",
    "ETCD_CA_CERT_FILE": "CA certificate to check etcd's (TLS); must be readable",
    "ETCD_CERT_FILE": "client certificate for etcd (mutual TLS, with ETCD_KEY_FILE); must be readable",
    "ETCD_KEY_FILE": "client key for etcd (with ETCD_CERT_FILE); must be readable",
    "CALICO_NETWORKING_BACKEND": "bird (BGP, default), vxlan (routes programmed by calico-node) or none",
    "CALICO_IPV4POOL_CIDR": "the default IPv4 pool, made when etcd has none (default 192.168.0.0/16)",
    "CALICO_IPV4POOL_BLOCK_SIZE": "its block size, 20 to 32 (default 26)",
    "CALICO_IPV4POOL_IPIP": "its IPIP mode: always, cross-subnet or never (default)",
    "CALICO_IPV4POOL_VXLAN": "its VXLAN mode: always, cross-subnet or never (default)",
    "CALICO_IPV4POOL_NAT_OUTGOING": "its natOutgoing: true (default) or false",
    "CALICO_IPV6POOL_CIDR": "a default IPv6 pool, made when etcd has none (default: none)",
    "CALICO_IPV6POOL_BLOCK_SIZE": "its block size, 116 to 128 (default 122)",
    "NO_DEFAULT_POOLS": "true: never make the default pools; false or empty: make them on a cluster without pools",
    "AS": "this node's AS number (default: BGPConfiguration's, else 64512)",
    "CALICO_NODE_LABELS": "labels for this node's Node resource: key=value,key=value",
    "CALICO_ROUTE_REFLECTOR_CLUSTER_ID": "makes this node a route reflector with that cluster ID",
    "CALICO_K8S_NODE_REF": "the Kubernetes Node this node is (spec.orchRefs, as Calico's): lets "
    "calico-kube-controllers clean up after a deleted Node",
    "CLUSTER_TYPE": "merged into ClusterInformation's clusterType (e.g. k8s,bgp)",
    "FELIX_LOGSEVERITYSCREEN": "Felix's name for the log level: Debug, Info (default), Warning, Error; wins "
    "over FelixConfiguration logSeverityScreen and the variables below",
    "CALICO_NODE_LOG_LEVEL": "the log level (debug, info, warning or error) when FELIX_LOGSEVERITYSCREEN is unset",
    "CALICO_STARTUP_LOGLEVEL": "Calico's start-up log level: the level when the two above are unset",
    "LOG_LEVEL": "the log level when none of the above is set",
    "FELIX_IPTABLESREFRESHINTERVAL": "seconds between checks that the kernel's policy rules are as programmed "
    "(default 90, else FelixConfiguration's)",
    "FELIX_HEALTHENABLED": "true (default) or false: serve /liveness and /readiness over HTTP",
    "FELIX_HEALTHHOST": "address the health endpoint listens on (default 127.0.0.1)",
    "FELIX_HEALTHPORT": "its port (default 9099)",
    "FELIX_PROMETHEUSMETRICSENABLED": "true or false: serve Prometheus metrics (unset: FelixConfiguration's, "
    "else off)",
    "FELIX_PROMETHEUSMETRICSHOST": "address the metrics exporter listens on (default: all)",
    "FELIX_PROMETHEUSMETRICSPORT": "its port (unset: FelixConfiguration's, else 9091)",
    "FELIX_DEFAULTENDPOINTTOHOSTACTION": "Drop, Accept or Return (any case): what becomes of a workload's "
    "traffic to its own host once its egress policy allowed it (unset: FelixConfiguration's, else Drop)",
    "CALICO_CNI_SERVER": "true (default) or false: serve CNI requests on $CALICO_RUN_DIR/cni.sock",
    "CALICO_SECRETS_DIR": "BGP passwords (secretKeyRef) as <dir>/<secret name>/<key> (default /etc/calico/secrets)",
    "CALICO_RUN_DIR": "BIRD's config, socket and pid file, readiness.json, the CNI socket (default /var/run/calico)",
    "CALICO_LIB_DIR": "the nodename and mtu files the CNI plugin reads (default /var/lib/calico)",
    "NOTIFY_SOCKET": "set by systemd (Type=notify): READY=1 is sent there once the dataplane is in sync",
}

# The log level's variables, first set wins: Felix's, ours, Calico's start-up's, the generic one.
LOG_LEVEL_VARIABLES = ("FELIX_LOGSEVERITYSCREEN", "CALICO_NODE_LOG_LEVEL", "CALICO_STARTUP_LOGLEVEL", "LOG_LEVEL")
MODES = ("always", "cross-subnet", "never")
BACKENDS = ("bird", "none", "vxlan")
DEFAULT_POOL_V4 = "192.168.0.0/16"
DEFAULT_REFRESH = 90.0  # Felix's iptablesRefreshInterval


class NodeConfigError(ValueError):
    """A setting calico-node cannot start with; the message names the variable."""


@dataclass
class NodeConfig:
    nodename: str
    ip: str  # "autodetect", "none" or an address with optional /len
    ip_autodetection: str
    ip6: str
    ip6_autodetection: str
    etcd: EtcdConf
    backend: str
    pool_cidr: str
    pool_ipip: str
    pool_vxlan: str
    pool_block_size: int
    pool_nat_outgoing: bool
    pool6_cidr: str
    pool6_block_size: int
    no_default_pools: bool
    as_number: int | None
    run_dir: str
    lib_dir: str
    log_level: str
    labels: dict[str, str] = field(default_factory=dict)
    rr_cluster_id: str = ""
    cni_server: bool = True  # serve CNI requests on $CALICO_RUN_DIR/cni.sock (the fast path)
    refresh_interval: float = DEFAULT_REFRESH  # seconds between checks that the kernel's rules are as programmed
    secrets_dir: str = "/etc/calico/secrets"  # CALICO_SECRETS_DIR: BGP passwords as <dir>/<secret name>/<key>
    cluster_type: str = ""  # CLUSTER_TYPE, merged into ClusterInformation's clusterType (e.g. "k8s,bgp")
    # CALICO_K8S_NODE_REF: the Kubernetes Node this node is (Calico's spec.orchRefs), which lets
    # calico-kube-controllers' node controller clean the node up when that Node is deleted.
    k8s_node_ref: str = ""
    # Set in the environment: then it wins over FelixConfiguration's (as Felix's environment does).
    refresh_from_env: bool = False
    log_level_from_env: bool = False
    nodename_source: str = "NODENAME"  # where the name came from, for the start-up log line
    nodename_path: str = ""  # CALICO_NODENAME_FILE, else $CALICO_LIB_DIR/nodename
    disable_node_ip_check: bool = False
    health_enabled: bool = True
    health_host: str = "127.0.0.1"
    health_port: int = 9099
    health_set: frozenset[str] = frozenset()  # the FELIX_HEALTH* variables given (they win over FelixConfiguration)
    metrics_enabled: bool | None = None  # None: FelixConfiguration decides
    metrics_host: str = ""  # "": all addresses, as Felix
    metrics_port: int | None = None
    # FELIX_FAILSAFEINBOUNDHOSTPORTS / FELIX_FAILSAFEOUTBOUNDHOSTPORTS (None: not set, FelixConfiguration's or
    # Felix's defaults hold); they win over FelixConfiguration's as Felix's environment does.
    failsafe_inbound: tuple[ProtoPort, ...] | None = None
    failsafe_outbound: tuple[ProtoPort, ...] | None = None
    # FELIX_DEFAULTENDPOINTTOHOSTACTION as Drop, Accept or Return (None: not set; it wins where set).
    endpoint_to_host: str | None = None

    @property
    def nodename_file(self) -> str:
        return self.nodename_path or os.path.join(self.lib_dir, "nodename")

    @property
    def bird_dir(self) -> str:
        return self.run_dir


def _mode(env: dict[str, str], name: str) -> str:
    value = env.get(name, "never").strip().lower() or "never"
    value = {"crosssubnet": "cross-subnet", "off": "never", "false": "never", "true": "always"}.get(value, value)
    if value not in MODES:
        raise NodeConfigError(f"{name}={env[name]!r} is not one of always, cross-subnet, never")
    return value


def _autodetect_method(env: dict[str, str], name: str) -> str:
    method = env.get(name, "first-found").strip() or "first-found"
    if method in ("first-found", "skip") or method.startswith(("interface=", "can-reach=", "skip-interface=")):
        if method.startswith(("interface=", "skip-interface=")):
            try:
                re.compile(method.split("=", 1)[1])
            except re.error as exc:
                raise NodeConfigError(f"{name}={method!r}: bad regular expression: {exc}") from None
        if method.startswith("can-reach="):
            try:
                ipaddress.ip_address(method.split("=", 1)[1])
            except ValueError:
                raise NodeConfigError(f"{name}={method!r}: can-reach needs an IP address") from None
        return method
    raise NodeConfigError(
        f"{name}={method!r} is not first-found, interface=REGEX, skip-interface=REGEX or can-reach=IP"
    )


# Go's strconv.ParseBool forms (Calico's and Felix's), compared without case.
TRUE_WORDS = ("1", "t", "true")
FALSE_WORDS = ("0", "f", "false")


def parse_bool(env: dict[str, str], name: str, default: bool) -> bool:
    """An empty or unset variable is `default`; anything but ParseBool's forms is refused, naming it
    (Calico reads some of these as "true or anything else", which silently takes "maybe" as false)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise NodeConfigError(f"{name}={raw!r} is not a boolean (true or false; also 1/0, t/f)")


def _readable_file(env: dict[str, str], name: str) -> str:
    """A TLS file must exist and be readable by us now: found out at start, not at the first etcd call."""
    path = env.get(name, "").strip()
    if not path:
        return ""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise NodeConfigError(f"{name}={path!r}: cannot read it: {exc.strerror}") from None
    return path


def _nodename(env: dict[str, str], path: str) -> tuple[str, str]:
    """Calico's order (node/pkg/lifecycle/utils DetermineNodeName): NODENAME, the nodename file an
    earlier run wrote, HOSTNAME (lowercased), the host name (lowercased); returns (name, source)."""
    name = env.get("NODENAME", "").strip()
    if name:
        return name, "NODENAME"
    try:
        with open(path, encoding="utf-8") as f:
            name = f.read().strip()
    except FileNotFoundError:
        name = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise NodeConfigError(f"NODENAME is unset and the nodename file {path} cannot be read: {exc}") from None
    if name:
        return name, f"the nodename file {path}"
    name = env.get("HOSTNAME", "").strip().lower()
    if name:
        return name, "HOSTNAME (lowercased)"
    import socket

    return socket.gethostname().strip().lower(), "the host name (lowercased)"


def _host(env: dict[str, str], name: str, default: str, localhost: bool) -> str:
    """An address to listen on from `name` (`default` when unset); localhost only where Felix takes it."""
    host = env.get(name, "").strip() or default
    if host and not (listen_host(host) and (localhost or host != "localhost")):
        raise NodeConfigError(f"{name}={host!r} is not an IP address{' or localhost' if localhost else ''}")
    return host


def _port(env: dict[str, str], name: str, default: str = "") -> int | None:
    """A port from `name` (`default` when unset; None when neither)."""
    port = env.get(name, "").strip() or default
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise NodeConfigError(f"{name}={port!r} is not a port (1 to 65535)")
    return int(port) if port else None


def _health(env: dict[str, str]) -> tuple[bool, str, int]:
    port = _port(env, "FELIX_HEALTHPORT", "9099")
    assert port is not None  # it has a default
    return parse_bool(env, "FELIX_HEALTHENABLED", True), _host(env, "FELIX_HEALTHHOST", "127.0.0.1", True), port


def _metrics(env: dict[str, str]) -> tuple[bool | None, str, int | None]:
    """The FELIX_PROMETHEUSMETRICS* variables; unset ones stay None, so FelixConfiguration decides."""
    enabled = parse_bool(env, "FELIX_PROMETHEUSMETRICSENABLED", False) if env.get(
        "FELIX_PROMETHEUSMETRICSENABLED", "").strip() else None
    return (enabled, _host(env, "FELIX_PROMETHEUSMETRICSHOST", "", False),
            _port(env, "FELIX_PROMETHEUSMETRICSPORT"))


def _labels(raw: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NodeConfigError(f"CALICO_NODE_LABELS item {item!r} is not key=value")
        out[key] = value
    return out


def from_env(env: dict[str, str] | None = None) -> NodeConfig:
    env = dict(os.environ if env is None else env)
    lib_dir = env.get("CALICO_LIB_DIR", "").strip() or "/var/lib/calico"
    nodename_path = env.get("CALICO_NODENAME_FILE", "").strip() or os.path.join(lib_dir, "nodename")
    nodename, nodename_source = _nodename(env, nodename_path)
    if not is_valid_nodename(nodename):
        raise NodeConfigError(f"NODENAME={nodename!r} (from {nodename_source}) is not a lowercase DNS name")
    ip = env.get("IP", "").strip() or "autodetect"
    if ip not in ("autodetect", "none"):
        try:
            ipaddress.IPv4Interface(ip)
        except ValueError:
            raise NodeConfigError(f"IP={ip!r} is not an IPv4 address, 'autodetect' or 'none'") from None
    ip6 = env.get("IP6", "").strip() or "none"
    if ip6 not in ("autodetect", "none"):
        try:
            ipaddress.IPv6Interface(ip6)
        except ValueError:
            raise NodeConfigError(f"IP6={ip6!r} is not an IPv6 address, 'autodetect' or 'none'") from None
    pool6 = env.get("CALICO_IPV6POOL_CIDR", "").strip()
    if pool6:
        try:
            ipaddress.IPv6Network(pool6)
        except ValueError as exc:
            raise NodeConfigError(f"CALICO_IPV6POOL_CIDR={pool6!r}: {exc}") from None
    block6 = env.get("CALICO_IPV6POOL_BLOCK_SIZE", "").strip() or str(DEFAULT_BLOCK_SIZE[6])
    if not block6.isdigit() or not 116 <= int(block6) <= 128:
        raise NodeConfigError(f"CALICO_IPV6POOL_BLOCK_SIZE={block6!r} must be 116 to 128")
    endpoints = env.get("ETCD_ENDPOINTS", "").strip()
    if not endpoints:
        raise NodeConfigError("ETCD_ENDPOINTS is not set (e.g. http://127.0.0.1:2379)")
    try:
        urls = parse_endpoints(endpoints, "ETCD_ENDPOINTS")
    except DatastoreConfigError as exc:
        raise NodeConfigError(exc.msg) from None
    backend = env.get("CALICO_NETWORKING_BACKEND", "bird").strip().lower() or "bird"
    if backend not in BACKENDS:
        raise NodeConfigError(f"CALICO_NETWORKING_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    pool = env.get("CALICO_IPV4POOL_CIDR", "").strip() or DEFAULT_POOL_V4
    try:
        ipaddress.IPv4Network(pool)
    except ValueError as exc:
        raise NodeConfigError(f"CALICO_IPV4POOL_CIDR={pool!r}: {exc}") from None
    ipip, vxlan = _mode(env, "CALICO_IPV4POOL_IPIP"), _mode(env, "CALICO_IPV4POOL_VXLAN")
    if ipip != "never" and vxlan != "never":
        raise NodeConfigError("CALICO_IPV4POOL_IPIP and CALICO_IPV4POOL_VXLAN cannot both be enabled")
    block = env.get("CALICO_IPV4POOL_BLOCK_SIZE", "").strip() or str(DEFAULT_BLOCK_SIZE[4])
    if not block.isdigit() or not 20 <= int(block) <= 32:
        raise NodeConfigError(f"CALICO_IPV4POOL_BLOCK_SIZE={block!r} must be 20 to 32")
    asn = env.get("AS", "").strip()
    if asn and (not asn.isdigit() or not 1 <= int(asn) <= 4294967295):
        raise NodeConfigError(f"AS={asn!r} is not an AS number (1 to 4294967295)")
    level_var = next((v for v in LOG_LEVEL_VARIABLES if env.get(v, "").strip()), "LOG_LEVEL")
    level = env.get(level_var, "").strip().lower() or "info"
    level = "debug" if level == "trace" else level  # logrus's finest level; ours is debug
    if level not in LEVELS:
        raise NodeConfigError(f"{level_var}={env[level_var]!r} is not one of debug, info, warning, error")
    refresh = env.get("FELIX_IPTABLESREFRESHINTERVAL", "").strip() or str(DEFAULT_REFRESH)
    try:
        refresh_interval = float(refresh)
    except ValueError:
        refresh_interval = 0.0
    if not 0.5 <= refresh_interval <= 86400:
        raise NodeConfigError(f"FELIX_IPTABLESREFRESHINTERVAL={refresh!r} must be seconds from 0.5 to 86400")
    etcd = EtcdConf(urls, _readable_file(env, "ETCD_KEY_FILE"), _readable_file(env, "ETCD_CERT_FILE"),
                    _readable_file(env, "ETCD_CA_CERT_FILE"))
    if bool(etcd.key_file) != bool(etcd.cert_file):
        raise NodeConfigError("ETCD_KEY_FILE and ETCD_CERT_FILE must be set together")
    no_default_pools = parse_bool(env, "NO_DEFAULT_POOLS", False)
    if no_default_pools and (env.get("CALICO_IPV4POOL_CIDR", "").strip() or pool6):
        # Calico refuses this pair at start too (configureIPPools).
        raise NodeConfigError("NO_DEFAULT_POOLS=true contradicts CALICO_IPV4POOL_CIDR / CALICO_IPV6POOL_CIDR")
    health_enabled, health_host, health_port = _health(env)
    metrics_enabled, metrics_host, metrics_port = _metrics(env)
    failsafe = {}
    for name in ("FELIX_FAILSAFEINBOUNDHOSTPORTS", "FELIX_FAILSAFEOUTBOUNDHOSTPORTS"):
        raw = env.get(name, "").strip()
        try:
            failsafe[name] = parse_port_list(raw) if raw else None
        except ValueError as exc:
            raise NodeConfigError(f"{name}={raw!r}: {exc}") from None
    to_host = env.get("FELIX_DEFAULTENDPOINTTOHOSTACTION", "").strip()
    if to_host and endpoint_to_host_action(to_host) is None:
        raise NodeConfigError(f"FELIX_DEFAULTENDPOINTTOHOSTACTION={to_host!r} is not one of "
                              f"{', '.join(ENDPOINT_TO_HOST_ACTIONS)}")
    return NodeConfig(
        nodename=nodename,
        ip=ip,
        ip_autodetection=_autodetect_method(env, "IP_AUTODETECTION_METHOD"),
        ip6=ip6,
        ip6_autodetection=_autodetect_method(env, "IP6_AUTODETECTION_METHOD"),
        etcd=etcd,
        backend=backend,
        pool_cidr=pool,
        pool_ipip=ipip,
        pool_vxlan=vxlan,
        pool_block_size=int(block),
        pool_nat_outgoing=parse_bool(env, "CALICO_IPV4POOL_NAT_OUTGOING", True),
        pool6_cidr=pool6,
        pool6_block_size=int(block6),
        # The classic unit sets NO_DEFAULT_POOLS= (empty): only a true value disables the pool.
        no_default_pools=no_default_pools,
        as_number=int(asn) if asn else None,
        run_dir=env.get("CALICO_RUN_DIR", "/var/run/calico"),
        lib_dir=lib_dir,
        log_level=level,
        labels=_labels(env.get("CALICO_NODE_LABELS", "")),
        rr_cluster_id=env.get("CALICO_ROUTE_REFLECTOR_CLUSTER_ID", "").strip(),
        cni_server=parse_bool(env, "CALICO_CNI_SERVER", True),
        refresh_interval=refresh_interval,
        secrets_dir=env.get("CALICO_SECRETS_DIR", "").strip() or "/etc/calico/secrets",
        cluster_type=",".join(t.strip() for t in env.get("CLUSTER_TYPE", "").split(",") if t.strip()),
        k8s_node_ref=env.get("CALICO_K8S_NODE_REF", "").strip(),
        refresh_from_env=bool(env.get("FELIX_IPTABLESREFRESHINTERVAL", "").strip()),
        log_level_from_env=any(env.get(v, "").strip() for v in LOG_LEVEL_VARIABLES),
        nodename_source=nodename_source,
        nodename_path=nodename_path,
        disable_node_ip_check=parse_bool(env, "DISABLE_NODE_IP_CHECK", False),
        health_enabled=health_enabled,
        health_host=health_host,
        health_port=health_port,
        health_set=frozenset(v for v in ("FELIX_HEALTHENABLED", "FELIX_HEALTHHOST", "FELIX_HEALTHPORT")
                             if env.get(v, "").strip()),
        metrics_enabled=metrics_enabled,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        failsafe_inbound=failsafe["FELIX_FAILSAFEINBOUNDHOSTPORTS"],
        failsafe_outbound=failsafe["FELIX_FAILSAFEOUTBOUNDHOSTPORTS"],
        endpoint_to_host=endpoint_to_host_action(to_host),
    )
