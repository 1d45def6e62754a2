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
from cni_calico.names import is_valid_nodename
from cni_calico.v3 import DEFAULT_BLOCK_SIZE, ProtoPort, parse_port_list

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
    cluster_type: str = ""  # CLUSTER_TYPE, merged into ClusterInformation's clusterType (e.g. "k8s,bgp")
    # Set in the environment: then it wins over FelixConfiguration's (as Felix's environment does).
    refresh_from_env: bool = False
    log_level_from_env: bool = False
    # FELIX_FAILSAFEINBOUNDHOSTPORTS / FELIX_FAILSAFEOUTBOUNDHOSTPORTS (None: not set, FelixConfiguration's or
    # Felix's defaults hold); they win over FelixConfiguration's as Felix's environment does.
    failsafe_inbound: tuple[ProtoPort, ...] | None = None
    failsafe_outbound: tuple[ProtoPort, ...] | None = None

    @property
    def nodename_file(self) -> str:
        return os.path.join(self.lib_dir, "nodename")

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
    import socket

    nodename = env.get("NODENAME") or (env.get("HOSTNAME") or socket.gethostname()).lower()  # Calico lowercases
    if not is_valid_nodename(nodename):
        raise NodeConfigError(f"NODENAME={nodename!r} is not a lowercase DNS name")
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
    level = env.get("CALICO_NODE_LOG_LEVEL", env.get("LOG_LEVEL", "info")).lower()
    refresh = env.get("FELIX_IPTABLESREFRESHINTERVAL", "").strip() or str(DEFAULT_REFRESH)
    try:
        refresh_interval = float(refresh)
    except ValueError:
        refresh_interval = 0.0
    if not 0.5 <= refresh_interval <= 86400:
        raise NodeConfigError(f"FELIX_IPTABLESREFRESHINTERVAL={refresh!r} must be seconds from 0.5 to 86400")
    failsafe = {}
    for name in ("FELIX_FAILSAFEINBOUNDHOSTPORTS", "FELIX_FAILSAFEOUTBOUNDHOSTPORTS"):
        raw = env.get(name, "").strip()
        try:
            failsafe[name] = parse_port_list(raw) if raw else None
        except ValueError as exc:
            raise NodeConfigError(f"{name}={raw!r}: {exc}") from None
    return NodeConfig(
        nodename=nodename,
        ip=ip,
        ip_autodetection=_autodetect_method(env, "IP_AUTODETECTION_METHOD"),
        ip6=ip6,
        ip6_autodetection=_autodetect_method(env, "IP6_AUTODETECTION_METHOD"),
        etcd=EtcdConf(urls, env.get("ETCD_KEY_FILE", ""), env.get("ETCD_CERT_FILE", ""),
                      env.get("ETCD_CA_CERT_FILE", "")),
        backend=backend,
        pool_cidr=pool,
        pool_ipip=ipip,
        pool_vxlan=vxlan,
        pool_block_size=int(block),
        pool_nat_outgoing=env.get("CALICO_IPV4POOL_NAT_OUTGOING", "true").lower() == "true",
        pool6_cidr=pool6,
        pool6_block_size=int(block6),
        # The classic unit sets NO_DEFAULT_POOLS= (empty): only a true value disables the pool.
        no_default_pools=env.get("NO_DEFAULT_POOLS", "").strip().lower() in ("true", "1", "yes"),
        as_number=int(asn) if asn else None,
        run_dir=env.get("CALICO_RUN_DIR", "/var/run/calico"),
        lib_dir=env.get("CALICO_LIB_DIR", "/var/lib/calico"),
        log_level=level,
        labels=_labels(env.get("CALICO_NODE_LABELS", "")),
        rr_cluster_id=env.get("CALICO_ROUTE_REFLECTOR_CLUSTER_ID", "").strip(),
        cni_server=env.get("CALICO_CNI_SERVER", "true").strip().lower() not in ("false", "0", "no", "off"),
        refresh_interval=refresh_interval,
        cluster_type=",".join(t.strip() for t in env.get("CLUSTER_TYPE", "").split(",") if t.strip()),
        refresh_from_env=bool(env.get("FELIX_IPTABLESREFRESHINTERVAL", "").strip()),
        log_level_from_env=bool(env.get("CALICO_NODE_LOG_LEVEL") or env.get("LOG_LEVEL")),
        failsafe_inbound=failsafe["FELIX_FAILSAFEINBOUNDHOSTPORTS"],
        failsafe_outbound=failsafe["FELIX_FAILSAFEOUTBOUNDHOSTPORTS"],
    )
