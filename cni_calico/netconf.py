"""The network configuration read from stdin, as validated dataclasses.

Everything a handler needs is parsed and checked here, once, before anything
is touched; unknown keys are tolerated, as CNI configs carry extras.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cni_calico.datastore import DatastoreConfigError, EtcdConf, parse_endpoints
from cni_calico.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from cni_calico.result import SUPPORTED_VERSIONS, Result

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # used with fullmatch
DEFAULT_NODENAME_FILE = "/var/lib/calico/nodename"
DEFAULT_LOG_FILE = "/var/log/calico/cni/cni.log"
DEFAULT_MTU = 1500


@dataclass
class IpamConf:
    type: str
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    ip_addrs: list[str] = field(default_factory=list)  # exact addresses (the pod's ipAddrs annotation)


@dataclass
class NetConf:
    name: str
    cni_version: str
    type: str
    etcd: EtcdConf
    ipam: IpamConf
    log_level: str = "info"
    log_file_path: str = DEFAULT_LOG_FILE
    log_file_max_size: float = 100  # MB before the file is rotated (Calico's keys and defaults)
    log_file_max_count: int = 5  # rotated files kept
    log_file_max_age: float = 30  # days a rotated file is kept; 0: no limit
    nodename: str = ""
    nodename_file: str = DEFAULT_NODENAME_FILE
    mtu: int = 0  # 0: not in the config; the plugin then takes calico-node's mtu file
    allow_ip_forwarding: bool = False
    requested_ips: list[str] = field(default_factory=list)  # runtimeConfig.ips (the "ips" capability)
    kubeconfig: str = ""
    policy_type: str = ""
    prev_result: Result | None = None
    raw: dict = field(default_factory=dict)


def _fail(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, msg)


def _str(conf: dict, key: str, default: str = "") -> str:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _fail(f"network config field '{key}' must be a string, got {type(value).__name__}")
    return value


def _bool(conf: dict, key: str, default: bool) -> bool:
    """Calico writes these as strings ("true"); accept JSON booleans too."""
    value = conf.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _fail(f"network config field '{key}' must be \"true\" or \"false\", got {value!r}")


def _str_list(conf: dict, key: str, where: str) -> list[str]:
    value = conf.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(f"network config field '{where}{key}' must be a list of pool names or CIDRs")
    return list(value)


def _number(conf: dict, key: str, default: float, minimum: float, whole: bool = False) -> float:
    value = conf.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and minimum <= value < 1e9
    if not ok or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise _fail(f"network config field '{key}' must be {kind} of at least {minimum:g}, got {value!r}")
    return value


def _addresses(value: object, where: str) -> list[str]:
    """Addresses (a bare address or address/prefix each) as bare addresses; a config error names `where`."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"network config field '{where}' must be a list of IP addresses")
    import ipaddress

    out = []
    for text in value:
        try:
            out.append(str(ipaddress.ip_interface(text.strip()).ip))
        except ValueError:
            raise _fail(f"network config field '{where}' holds {text!r}, which is not an IP address") from None
    return out


def requested_addresses(conf: NetConf, args: Mapping[str, str]) -> list[str]:
    """The addresses a request asks for, as Calico reads them: `IP=` in CNI_ARGS (comma-separated),
    else runtimeConfig `ips`, else the pod's ipAddrs annotation (already in `conf.ipam.ip_addrs`)."""
    if args.get("IP"):
        return _addresses(args["IP"].split(","), "CNI_ARGS IP")
    return conf.requested_ips or list(conf.ipam.ip_addrs)


def check_version(version: object) -> str:
    if version is None or version == "":
        return "0.1.0"  # as libcni: a config without cniVersion is a 0.1.0 config
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return version


def parse_etcd(conf: dict, env: Mapping[str, str]) -> EtcdConf:
    """etcd settings from the config, falling back to Calico's variables in the request's `env`."""
    endpoints = _str(conf, "etcd_endpoints") or env.get("ETCD_ENDPOINTS", "")
    if not endpoints:
        authority = _str(conf, "etcd_authority")  # Calico's older single host:port form
        endpoints = f"http://{authority}" if authority else ""
    if not endpoints:
        raise _fail("network config has no 'etcd_endpoints' (e.g. \"http://127.0.0.1:2379\")")
    try:
        urls = parse_endpoints(endpoints, "network config field 'etcd_endpoints'")
    except DatastoreConfigError as exc:
        raise _fail(exc.msg) from None
    return EtcdConf(
        endpoints=urls,
        key_file=_str(conf, "etcd_key_file") or env.get("ETCD_KEY_FILE", ""),
        cert_file=_str(conf, "etcd_cert_file") or env.get("ETCD_CERT_FILE", ""),
        ca_cert_file=_str(conf, "etcd_ca_cert_file") or env.get("ETCD_CA_CERT_FILE", ""),
    )


def parse_ipam(conf: dict) -> IpamConf:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise _fail("network config has no 'ipam' object")
    ipam_type = ipam.get("type")
    if not isinstance(ipam_type, str) or not ipam_type:
        raise _fail("network config field 'ipam.type' is missing")
    if not NAME_RE.fullmatch(ipam_type):
        raise _fail(f"network config field 'ipam.type' {ipam_type!r} is not a plugin name")
    for key in ("ranges", "routes"):  # host-local's, passed through to a delegated IPAM plugin
        if ipam.get(key) is not None and not isinstance(ipam[key], list):
            raise _fail(f"network config field 'ipam.{key}' must be a list, got {type(ipam[key]).__name__}")
    if ipam.get("subnet") is not None and not isinstance(ipam["subnet"], str):
        raise _fail(f"network config field 'ipam.subnet' must be a string, got {type(ipam['subnet']).__name__}")
    return IpamConf(
        type=ipam_type,
        assign_ipv4=_bool(ipam, "assign_ipv4", True),
        assign_ipv6=_bool(ipam, "assign_ipv6", False),
        ipv4_pools=_str_list(ipam, "ipv4_pools", "ipam."),
        ipv6_pools=_str_list(ipam, "ipv6_pools", "ipam."),
        raw=ipam,
    )


def parse(conf: object, env: Mapping[str, str] = MappingProxyType({}), need_etcd: bool = True) -> NetConf:
    """Validates a decoded network config; raises CniError with code 1 or 7. `env`: the request's
    environment (its ETCD_* variables are the fallback for the config's etcd keys)."""
    if not isinstance(conf, dict):
        raise _fail("network config must be a JSON object")
    version = check_version(conf.get("cniVersion"))
    conf["cniVersion"] = version
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("network config has no 'name'")
    if not NAME_RE.fullmatch(name):
        raise _fail(f"network name {name!r} may hold only letters, digits, '_', '.' and '-'")
    mtu = conf.get("mtu")
    if mtu is None or (mtu == 0 and not isinstance(mtu, bool)):
        mtu = 0
    elif not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise _fail(f"network config field 'mtu' must be a number from 68 to 65535, got {mtu!r}")
    log_level = _str(conf, "log_level", "info") or "info"
    from cni_calico.logsetup import LEVELS

    if log_level.lower() not in LEVELS:
        raise _fail(f"network config field 'log_level' {log_level!r} is not one of {', '.join(LEVELS)}")
    datastore = _str(conf, "datastore_type", "etcdv3") or "etcdv3"
    if datastore != "etcdv3":
        raise _fail(f"datastore_type {datastore!r} is not supported: this plugin uses etcdv3")
    kubernetes = conf.get("kubernetes") or {}
    policy = conf.get("policy") or {}
    settings = conf.get("container_settings") or {}
    for key, value in (("kubernetes", kubernetes), ("policy", policy), ("container_settings", settings),
                       ("args", conf.get("args") or {}), ("runtimeConfig", conf.get("runtimeConfig") or {})):
        if not isinstance(value, dict):
            raise _fail(f"network config field '{key}' must be an object, got {type(value).__name__}")
    prev = conf.get("prevResult")
    try:
        prev_result = Result.from_dict(prev) if prev is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"network config field 'prevResult' is not a CNI result: {exc}") from None
    nodename_file = _str(conf, "nodename_file", DEFAULT_NODENAME_FILE) or DEFAULT_NODENAME_FILE
    return NetConf(
        name=name,
        cni_version=version,
        type=_str(conf, "type"),
        etcd=parse_etcd(conf, env) if need_etcd else EtcdConf([]),
        ipam=parse_ipam(conf),
        log_level=log_level,
        log_file_path=_str(conf, "log_file_path", DEFAULT_LOG_FILE),
        log_file_max_size=_number(conf, "log_file_max_size", 100, minimum=0.0001),
        log_file_max_count=int(_number(conf, "log_file_max_count", 5, minimum=1, whole=True)),
        log_file_max_age=_number(conf, "log_file_max_age", 30, minimum=0),
        nodename=_str(conf, "nodename"),
        nodename_file=nodename_file,
        mtu=mtu,
        allow_ip_forwarding=_bool(settings, "allow_ip_forwarding", False),
        requested_ips=_addresses((conf.get("runtimeConfig") or {}).get("ips"), "runtimeConfig.ips"),
        kubeconfig=_str(kubernetes, "kubeconfig"),
        policy_type=_str(policy, "type"),
        prev_result=prev_result,
        raw=conf,
    )
