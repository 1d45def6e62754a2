"""Calico's v3 data model: the one writer of the resource envelope, the typed records the product
reads from it, and Calico's defaults and constants, each defined once (pure, no I/O).

What holds:

- `Resource.to_value()` is the only place a stored resource's envelope (kind, apiVersion, metadata,
  spec) is written; `Resource.from_value` keeps every field it does not know (top-level and inside
  metadata and spec), so a read-modify-write never loses what another tool (real Calico) wrote.
- `new_resource` gives a new resource Calico's metadata (uid, creationTimestamp); `resourceVersion`
  is never stored (it is the key's mod revision).
- The typed records (`IPPool`, `Node`, `BGPPeer`, `BGPConfiguration`) are read views: parsing a
  value never raises on fields it does not use, and raises ValueError/KeyError/TypeError only for a
  value it cannot use at all (e.g. an IPPool without a CIDR).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

API_GROUP = "projectcalico.org"
API_VERSION = f"{API_GROUP}/v3"
TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"  # metadata.creationTimestamp and IPAM's timestamps

DEFAULT_AS = 64512
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
ENCAP_MODES = ("Always", "CrossSubnet", "Never")
ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")
DEFAULT_ALLOWED_USES = ("Workload", "Tunnel")
ASSIGNMENT_MODES = ("Automatic", "Manual")
ALL = "all()"  # the selector that selects everything (a pool's default nodeSelector)
NS_LABEL_PREFIX = "pcns."  # a namespace's labels, as copied onto its endpoints
KNS_PREFIX = "kns."  # a Kubernetes namespace's profile (libcalico-go's NamespaceProfileNamePrefix)
KSA_PREFIX = "ksa."  # a service account's profile, ksa.<ns>.<name> (ServiceAccountProfileNamePrefix)
DEFAULT_POOL_NAMES = {4: "default-ipv4-ippool", 6: "default-ipv6-ippool"}

# Policy rules (Profile, NetworkPolicy, GlobalNetworkPolicy): the one schema, shared by calicoctl's
# validator (cni_calico.ctl.kinds.rules) and calico-node's parser (cni_calico.policy.model).
RULE_ACTIONS = ("Allow", "Deny", "Pass", "Log")
RULE_PROTOCOLS = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
PORT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP", "UDPLite", 6, 17, 132, 136})
ICMP_PROTOCOL_VERSION = {"ICMP": 4, 1: 4, "ICMPv6": 6, 58: 6}
RULE_FIELDS = frozenset({"action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source",
                         "destination", "metadata"})
ENTITY_FIELDS = frozenset({"nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts",
                           "serviceAccounts"})
ICMP_FIELDS = frozenset({"type", "code"})

ENVELOPE = ("kind", "apiVersion", "metadata", "spec")
CALICO_VERSION = "v3.32.0"  # the Calico release whose datastore format we write (ClusterInformation.calicoVersion)
# The tiers Calico's EnsureInitialized creates: name -> (order, default action).
TIERS = {"default": (1000000.0, "Deny"), "kube-admin": (1000.0, "Pass"), "kube-baseline": (10000000.0, "Pass")}

# --- Go's field order (the JSON Calico writes) ---------------------------------------------------------
# Each struct's fields in declaration order; those Go leaves out when empty (omitempty) are dropped
# when empty. Fields a layout does not list are kept, after the known ones (another tool's, or
# newer Calico's). Maps (labels, annotations, labelsToApply) are written with sorted keys, as Go does.

METADATA_ORDER = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                  "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                  "ownerReferences", "finalizers", "managedFields")
ENTITY_ORDER = ("nets", "selector", "namespaceSelector", "services", "ports", "notNets", "notSelector", "notPorts",
                "serviceAccounts")
RULE_ORDER = ("action", "ipVersion", "protocol", "icmp", "notProtocol", "notICMP", "source", "destination", "http",
              "metadata")
SPEC_ORDER = {
    "Node": ("bgp", "ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6",
             "orchRefs", "wireguard", "addresses", "interfaces"),
    "WorkloadEndpoint": ("orchestrator", "workload", "node", "containerID", "pod", "endpoint", "serviceAccountName",
                         "ipNetworks", "ipNATs", "ipv4Gateway", "ipv6Gateway", "profiles", "interfaceName", "mac",
                         "ports", "allowSpoofedSourcePrefixes", "qosControls"),
    "Profile": ("ingress", "egress", "labelsToApply"),
    "IPPool": ("cidr", "vxlanMode", "ipipMode", "natOutgoing", "disabled", "disableBGPExport", "blockSize",
               "nodeSelector", "namespaceSelector", "allowedUses", "assignmentMode"),
    "ClusterInformation": ("clusterGUID", "clusterType", "calicoVersion", "datastoreReady", "variant"),
    "Tier": ("order", "defaultAction"),
    "NetworkPolicy": ("tier", "order", "ingress", "egress", "selector", "types", "serviceAccountSelector",
                      "performanceHints"),
    "FelixConfiguration": ("iptablesRefreshInterval", "defaultEndpointToHostAction", "logSeverityScreen",
                           "reportingInterval", "failsafeInboundHostPorts", "failsafeOutboundHostPorts",
                           "natOutgoingAddress", "bpfLogLevel", "bpfConnectTimeLoadBalancing",
                           "bpfHostNetworkedNATWithoutCTLB", "floatingIPs"),
    "HostEndpoint": ("node", "interfaceName", "expectedIPs", "profiles", "ports"),
    "GlobalNetworkPolicy": ("tier", "order", "ingress", "egress", "selector", "types", "doNotTrack", "preDNAT",
                            "applyOnForward", "serviceAccountSelector", "namespaceSelector", "performanceHints"),
    "KubeControllersConfiguration": ("logSeverityScreen", "healthChecks", "etcdV3CompactionPeriod",
                                     "prometheusMetricsPort", "controllers", "debugProfilePort"),
}
# Spec fields written even when empty (not omitempty in Go; a pointer to a slice keeps `[]`, a *bool false).
ALWAYS = {"IPPool": frozenset({"cidr"}),
          "FelixConfiguration": frozenset({"bpfLogLevel", "failsafeInboundHostPorts", "failsafeOutboundHostPorts"}),
          "KubeControllersConfiguration": frozenset({"controllers"}),
          "ClusterInformation": frozenset({"datastoreReady"})}
PROTO_PORT_ORDER = ("protocol", "port", "net")
ENDPOINT_PORT_ORDER = ("name", "protocol", "port")
WORKLOAD_PORT_ORDER = ("name", "protocol", "port", "hostPort", "hostIP")  # no omitempty: all written
NODE_BGP_ORDER = ("asNumber", "ipv4Address", "ipv6Address", "ipv4IPIPTunnelAddr", "routeReflectorClusterID")
# A struct status Go always writes (`"status":{}`).
WITH_STATUS = frozenset({"Node", "Tier", "KubeControllersConfiguration"})


def _empty(value: object) -> bool:
    return value is None or value is False or value == 0 and not isinstance(value, bool) or value in ("", [], {})


def _ordered(value: dict, order: tuple[str, ...], always: frozenset = frozenset()) -> dict:
    out = {k: value[k] for k in order if k in value and (k in always or not _empty(value[k]))}
    out.update({k: v for k, v in value.items() if k not in order})
    return out


def _sorted_map(value: object) -> object:
    return dict(sorted(value.items())) if isinstance(value, dict) else value


def _rule(rule: object) -> object:
    if not isinstance(rule, dict):
        return rule
    out = _ordered(rule, RULE_ORDER, frozenset({"action"}))
    for side in ("source", "destination"):
        if isinstance(out.get(side), dict):
            out[side] = _ordered(out[side], ENTITY_ORDER)
            if not out[side]:
                del out[side]  # Go's omitzero: an empty entity is left out
    return out


def layout(kind: str, value: dict) -> dict:
    """A stored value of `kind` in Go's field order, empty omitempty fields dropped, maps sorted."""
    meta = value.get("metadata")
    if isinstance(meta, dict):
        meta = _ordered(meta, METADATA_ORDER)
        for key in ("labels", "annotations"):
            if key in meta:
                meta[key] = _sorted_map(meta[key])
        value["metadata"] = meta
    spec = value.get("spec")
    if kind in SPEC_ORDER and isinstance(spec, dict):
        spec = _ordered(spec, SPEC_ORDER[kind], ALWAYS.get(kind, frozenset()))
        for key in ("ingress", "egress"):
            if isinstance(spec.get(key), list):
                spec[key] = [_rule(r) for r in spec[key]]
        if "labelsToApply" in spec:
            spec["labelsToApply"] = _sorted_map(spec["labelsToApply"])
        for key in ("failsafeInboundHostPorts", "failsafeOutboundHostPorts"):
            if kind == "FelixConfiguration" and isinstance(spec.get(key), list):
                spec[key] = [_ordered(p, PROTO_PORT_ORDER, frozenset({"port"})) if isinstance(p, dict) else p
                             for p in spec[key]]
        if kind in ("HostEndpoint", "WorkloadEndpoint") and isinstance(spec.get("ports"), list):
            order = ENDPOINT_PORT_ORDER if kind == "HostEndpoint" else WORKLOAD_PORT_ORDER
            spec["ports"] = [_ordered(p, order, frozenset(order)) if isinstance(p, dict) else p for p in spec["ports"]]
        if kind == "Node" and isinstance(spec.get("bgp"), dict):
            spec["bgp"] = _ordered(spec["bgp"], NODE_BGP_ORDER)
        value["spec"] = spec
    if kind in WITH_STATUS:
        value.setdefault("status", {})
    return value

DEFAULT_MAX_BLOCKS = 20  # what IPAM allows a node per family when maxBlocksPerHost is 0 (ipam.go)


def timestamp(when: datetime.datetime | None = None) -> str:
    """Kubernetes' metav1.Time: RFC 3339 in whole seconds, UTC (creationTimestamp, affinity_claim_time,
    releasedAt)."""
    return (when or datetime.datetime.now(datetime.UTC)).strftime(TIMESTAMP)


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of a `timestamp()` (RFC 3339, UTC); 0 when it does not parse."""
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return 0.0


def go_time(ns: int | None = None) -> str:
    """Go's `time.Now().UTC().String()`, what Calico's CNI plugin stores as an allocation's timestamp:
    `2026-08-22 13:33:20.123456789 +0000 UTC` (the fraction without trailing zeros, none when 0)."""
    import time

    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return text + (f".{fraction:09d}".rstrip("0") if fraction else "") + " +0000 UTC"


def new_uid() -> str:
    import uuid

    return str(uuid.uuid4())


@dataclass
class Resource:
    """One stored v3 resource, lossless: `other` keeps top-level fields beside the envelope."""

    kind: str
    metadata: dict
    spec: dict
    other: dict = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: dict, kind: str = "") -> Resource:
        other = {k: v for k, v in value.items() if k not in ENVELOPE}
        metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
        spec = value.get("spec") if isinstance(value.get("spec"), dict) else {}
        return cls(str(value.get("kind") or kind), dict(metadata), dict(spec), other)

    def to_value(self) -> dict:
        """The stored JSON, as Calico writes it: the envelope, the kind's fields in Go's order (see
        `layout`), then whatever else was read with it; never a resourceVersion."""
        metadata = {k: v for k, v in self.metadata.items() if k != "resourceVersion" and v not in (None, "", {})}
        value = {"kind": self.kind, "apiVersion": API_VERSION, "metadata": metadata, "spec": dict(self.spec),
                 **self.other}
        return layout(self.kind, value)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def labels(self) -> dict[str, str]:
        labels = self.metadata.get("labels")
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

    @property
    def annotations(self) -> dict[str, str]:
        notes = self.metadata.get("annotations")
        return {str(k): str(v) for k, v in notes.items()} if isinstance(notes, dict) else {}


def new_resource(kind: str, name: str, spec: dict, namespace: str = "", labels: dict | None = None,
                 annotations: dict | None = None, created: str = "") -> Resource:
    """A resource about to be created: Calico's uid and creationTimestamp, never a resourceVersion."""
    metadata: dict = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["uid"] = new_uid()
    metadata["creationTimestamp"] = created or timestamp()
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return Resource(kind, metadata, spec)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def _true(value: object) -> bool:
    return value in (True, "true", "True")


# --- IPAM configuration -----------------------------------------------------------------------------


@dataclass
class IPAMConfig:
    """The IPAM configuration at keys.ipam_config() (libcalico-go model.IPAMConfig, which IPAM reads in
    etcd mode). Its stored names mix cases, as Calico's: `strict_affinity`, `auto_allocate_blocks`,
    `maxBlocksPerHost`, `ipCooldownSeconds`; every field is left out when zero (omitempty), so a
    stored value without `auto_allocate_blocks` means false, while no value at all means Calico's
    defaults (auto-allocate on)."""

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0  # 0: DEFAULT_MAX_BLOCKS
    ip_cooldown_seconds: int = 0
    other: dict = field(default_factory=dict)

    STORED = ("strict_affinity", "auto_allocate_blocks", "maxBlocksPerHost", "ipCooldownSeconds")
    LEGACY = ("max_blocks_per_host",)  # our earlier releases' name for maxBlocksPerHost

    @classmethod
    def from_value(cls, value: dict | None) -> IPAMConfig:
        if value is None:
            return cls()
        return cls(
            strict_affinity=value.get("strict_affinity") is True,
            auto_allocate_blocks=value.get("auto_allocate_blocks") is True,
            max_blocks_per_host=int(value.get("maxBlocksPerHost") or value.get("max_blocks_per_host") or 0),
            ip_cooldown_seconds=int(value.get("ipCooldownSeconds") or 0),
            other={k: v for k, v in value.items() if k not in cls.STORED and k not in cls.LEGACY},
        )

    def to_value(self) -> dict:
        out: dict = {}
        for key, val in zip(self.STORED, (self.strict_affinity, self.auto_allocate_blocks, self.max_blocks_per_host,
                                          self.ip_cooldown_seconds), strict=True):
            if val:
                out[key] = val
        return {**out, **self.other}

    @property
    def max_blocks(self) -> int:
        return self.max_blocks_per_host or DEFAULT_MAX_BLOCKS

    def problems(self) -> list[str]:
        """What Calico's SetIPAMConfig refuses."""
        out = []
        if not self.strict_affinity and not self.auto_allocate_blocks:
            out.append("autoAllocateBlocks cannot be false when strictAffinity is false")
        if self.max_blocks_per_host and not self.strict_affinity:
            out.append("maxBlocksPerHost can only be set with strictAffinity true")
        if self.max_blocks_per_host < 0 or self.ip_cooldown_seconds < 0:
            out.append("maxBlocksPerHost and ipCooldownSeconds cannot be negative")
        return out


# --- FelixConfiguration -------------------------------------------------------------------------------

_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String(): 15m0s, 1h0m0s, 1m30s, 500ms, 0s."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ns = round(seconds * 1e9)
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{ns / size:g}{unit}"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text


def parse_duration(text: str) -> float:
    """A Go duration ("90s", "1m30s", "500ms") in seconds; ValueError when it is none."""
    import re

    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 90s or 1m30s")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


# What calico-node honours of a FelixConfiguration, and the fields it accepts only at the value that
# describes what it does anyway (Calico's start-up writes them so): anything else is refused.
FELIX_HONOURED = ("iptablesRefreshInterval", "logSeverityScreen", "natOutgoingAddress", "ipipEnabled", "vxlanEnabled",
                  "prometheusMetricsEnabled", "prometheusMetricsPort", "healthEnabled", "healthHost", "healthPort",
                  "failsafeInboundHostPorts", "failsafeOutboundHostPorts", "defaultEndpointToHostAction")
FELIX_INERT = {"reportingInterval": "0s", "bpfLogLevel": "", "bpfConnectTimeLoadBalancing": "TCP",
               "bpfHostNetworkedNATWithoutCTLB": "Enabled", "floatingIPs": "Disabled"}
# What clientv3 fills in on every create and update of a FelixConfiguration (bpfLogLevel is the one
# field Go always writes); and what calico-node's start-up writes into `default` and `node.<name>`.
FELIX_DEFAULTS = {"bpfLogLevel": "", "bpfConnectTimeLoadBalancing": "TCP", "bpfHostNetworkedNATWithoutCTLB": "Enabled",
                  "floatingIPs": "Disabled"}
FELIX_START_DEFAULT = {"reportingInterval": "0s", "logSeverityScreen": "Info"}
FELIX_START_NODE = {"defaultEndpointToHostAction": "Return"}
LOG_SEVERITIES = ("Debug", "Info", "Warning", "Error", "Fatal")
# defaultEndpointToHostAction: what becomes of a workload's traffic to its own host once its egress policy
# allowed it (Felix's default when unset: Drop; Calico's start-up writes Return into node.<name>).
ENDPOINT_TO_HOST_ACTIONS = ("Drop", "Accept", "Return")
DEFAULT_ENDPOINT_TO_HOST = "Drop"


def endpoint_to_host_action(value: object) -> str | None:
    """A defaultEndpointToHostAction as Drop, Accept or Return, whatever its case (Calico's validator and
    Felix take any); None for anything else (the empty string included: not set)."""
    if not isinstance(value, str):
        return None
    return next((a for a in ENDPOINT_TO_HOST_ACTIONS if a.lower() == value.strip().lower()), None)


@dataclass
class FelixConfiguration:
    """The FelixConfiguration fields calico-node honours (None: not set here)."""

    name: str
    refresh_interval: float | None = None  # iptablesRefreshInterval, seconds
    log_severity: str | None = None  # logSeverityScreen
    nat_outgoing_address: str | None = None  # natOutgoingAddress: SNAT to it instead of masquerading
    ipip_enabled: bool | None = None  # ipipEnabled: False = never tunl0, whatever the pools say
    vxlan_enabled: bool | None = None  # vxlanEnabled: False = never vxlan.calico
    metrics_enabled: bool | None = None  # prometheusMetricsEnabled
    metrics_port: int | None = None  # prometheusMetricsPort
    health_enabled: bool | None = None  # healthEnabled
    health_host: str | None = None  # healthHost
    health_port: int | None = None  # healthPort
    failsafe_inbound: tuple[ProtoPort, ...] | None = None  # failsafeInboundHostPorts ([] : none)
    failsafe_outbound: tuple[ProtoPort, ...] | None = None  # failsafeOutboundHostPorts
    endpoint_to_host: str | None = None  # defaultEndpointToHostAction: Drop, Accept or Return

    @classmethod
    def from_value(cls, value: dict) -> FelixConfiguration:
        res = Resource.from_value(value, "FelixConfiguration")
        refresh = res.spec.get("iptablesRefreshInterval")
        try:
            seconds = parse_duration(str(refresh)) if refresh else None
        except ValueError:
            seconds = None
        level = res.spec.get("logSeverityScreen")
        nat = res.spec.get("natOutgoingAddress")
        ipip, vxlan = res.spec.get("ipipEnabled"), res.spec.get("vxlanEnabled")
        metrics, port = res.spec.get("prometheusMetricsEnabled"), res.spec.get("prometheusMetricsPort")
        health, health_host, health_port = (res.spec.get(k) for k in ("healthEnabled", "healthHost", "healthPort"))
        return cls(res.name, seconds, str(level) if level in LOG_SEVERITIES else None,
                   str(nat) if nat and ipv4_address(str(nat)) else None,
                   ipip if isinstance(ipip, bool) else None, vxlan if isinstance(vxlan, bool) else None,
                   metrics if isinstance(metrics, bool) else None,
                   port_number(port), health if isinstance(health, bool) else None,
                   str(health_host) if health_host and listen_host(str(health_host)) else None,
                   port_number(health_port),
                   *(_failsafe(res.spec, key) for key in ("failsafeInboundHostPorts", "failsafeOutboundHostPorts")),
                   endpoint_to_host_action(res.spec.get("defaultEndpointToHostAction")))


def port_number(value: object) -> int | None:
    """A port (1-65535) given as a JSON number; None otherwise."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535 else None


def listen_host(text: str) -> bool:
    """An address to listen on: an IP address or localhost (what Felix's healthHost takes here)."""
    if text == "localhost":
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True



def _failsafe(spec: dict, key: str) -> tuple[ProtoPort, ...] | None:
    """A failsafe port list as set (None: not set, or not valid: Felix's default then holds)."""
    if key not in spec:
        return None
    try:
        return proto_ports_from_config(spec[key])
    except ValueError:
        return None


# --- failsafe ports (FelixConfiguration failsafeInboundHostPorts / failsafeOutboundHostPorts) ---------

@dataclass(frozen=True)
class ProtoPort:
    """One failsafe entry (Felix's ProtoPort): protocol "tcp", "udp" or "sctp", a port, and optionally
    the peer's network (its family alone gets the rule)."""

    protocol: str
    port: int
    net: str = ""

    def text(self) -> str:
        net = f":[{self.net}]" if ":" in self.net else f":{self.net}" if self.net else ""
        return f"{self.protocol}{net}:{self.port}"


def _defaults(text: str) -> tuple[ProtoPort, ...]:
    return tuple(ProtoPort(p, int(n)) for p, n in (item.split(":") for item in text.split(",")))


# Felix's failsafeInboundHostPorts / failsafeOutboundHostPorts defaults (felix/config/config_params.go).
FAILSAFE_INBOUND = _defaults("tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667")
FAILSAFE_OUTBOUND = _defaults("udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667")


def parse_port_list(text: str) -> tuple[ProtoPort, ...]:
    """Felix's environment form: ``(tcp|udp):<cidr>:<port>``, ``(tcp|udp):<port>`` or ``<port>``,
    comma separated, IPv6 CIDRs in brackets; "none" is the empty list. ValueError names the bad entry."""
    if text.strip().lower() == "none":
        return ()
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        rest, net = item, ""
        if "[" in rest and "]:" in rest:
            start, end = rest.index("["), rest.index("]:")
            net, rest = rest[start + 1:end], rest[:start] + rest[end + 2:]
        parts = rest.split(":")
        if len(parts) > 3:
            raise ValueError(f"{item!r}: ports are <protocol>:<net>:<number>, <protocol>:<number> or <number>")
        protocol = parts[0].lower() if len(parts) > 1 else "tcp"
        net = parts[1] if len(parts) == 3 else net
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"{item!r}: unknown protocol {protocol!r} (tcp or udp)")
        out.append(_port_rule(item, protocol, parts[-1], net))
    return tuple(out)


def proto_ports_from_config(values: object) -> tuple[ProtoPort, ...]:
    """FelixConfiguration's list of ``{protocol, port, net}`` (protocol TCP, UDP or SCTP; tcp when
    absent). ValueError names the bad entry."""
    if not isinstance(values, list):
        raise ValueError("must be a list of {protocol, port, net}")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, dict) or set(value) - {"protocol", "port", "net"}:
            raise ValueError(f"[{i}] must be a mapping of protocol, port and net")
        protocol = str(value.get("protocol") or "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"[{i}].protocol must be 'TCP' or 'UDP' or 'SCTP'")
        out.append(_port_rule(f"[{i}]", protocol.lower(), value.get("port"), str(value.get("net") or "")))
    return tuple(out)


def _port_rule(what: str, protocol: str, port: object, net: str) -> ProtoPort:
    if isinstance(port, bool) or not str(port).isdigit() or not 0 <= int(str(port)) <= 65535:
        raise ValueError(f"{what}: the port must be a number from 0 to 65535")
    if net:
        try:
            net = str(ipaddress.ip_network(net, strict=False))
        except ValueError:
            raise ValueError(f"{what}: invalid CIDR or IP {net!r}") from None
    return ProtoPort(protocol, int(str(port)), net)


def ipv4_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- IPPool ----------------------------------------------------------------------------------------


@dataclass
class IPPool:
    name: str
    cidr: str
    block_size: int
    disabled: bool = False
    node_selector: str = ALL
    ipip_mode: str = "Never"  # Always | CrossSubnet | Never
    vxlan_mode: str = "Never"
    nat_outgoing: bool = False
    disable_bgp_export: bool = False
    allowed_uses: tuple[str, ...] = DEFAULT_ALLOWED_USES
    assignment_mode: str = "Automatic"  # Manual: only when a request names the pool
    namespace_selector: str = ""

    @property
    def family(self) -> int:
        return _network(self.cidr).version

    def contains(self, cidr: str) -> bool:
        inner, outer = _network(cidr), _network(self.cidr)
        return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]

    @classmethod
    def from_value(cls, value: dict) -> IPPool:
        res = Resource.from_value(value, "IPPool")
        if not res.name:
            raise ValueError("an IPPool without metadata.name")
        spec = res.spec
        cidr = str(_network(spec["cidr"]))
        uses = spec.get("allowedUses")
        return cls(
            name=res.name,
            cidr=cidr,
            block_size=int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE[_network(cidr).version]),
            disabled=_true(spec.get("disabled")),
            node_selector=str(spec.get("nodeSelector") or ALL),
            ipip_mode=str(spec.get("ipipMode") or "Never"),
            vxlan_mode=str(spec.get("vxlanMode") or "Never"),
            nat_outgoing=_true(spec.get("natOutgoing")),
            disable_bgp_export=_true(spec.get("disableBGPExport")),
            allowed_uses=tuple(str(u) for u in uses) if isinstance(uses, list) and uses else DEFAULT_ALLOWED_USES,
            assignment_mode=str(spec.get("assignmentMode") or "Automatic"),
            namespace_selector=str(spec.get("namespaceSelector") or ""),
        )


def pool_spec(cidr: str, block_size: int, ipip_mode: str = "Never", vxlan_mode: str = "Never",
              nat_outgoing: bool = False, node_selector: str = ALL) -> dict:
    """The spec of a pool calico-node creates, with every field Calico's clientv3 fills in."""
    return {"cidr": cidr, "blockSize": block_size, "ipipMode": ipip_mode, "vxlanMode": vxlan_mode,
            "natOutgoing": nat_outgoing, "nodeSelector": node_selector, "allowedUses": list(DEFAULT_ALLOWED_USES),
            "assignmentMode": "Automatic"}


# --- Node ------------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    ipv4: str = ""  # bare address
    ipv4_cidr: str = ""  # address/len, as registered
    ipv6: str = ""
    ipv6_cidr: str = ""
    asn: int | None = None
    rr_cluster_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    vxlan_addr: str = ""
    vxlan_mac: str = ""
    ipip_addr: str = ""

    @classmethod
    def from_value(cls, value: dict) -> Node:
        res = Resource.from_value(value, "Node")
        bgp = res.spec.get("bgp") if isinstance(res.spec.get("bgp"), dict) else {}
        cidr, cidr6 = str(bgp.get("ipv4Address") or ""), str(bgp.get("ipv6Address") or "")
        asn = bgp.get("asNumber")
        return cls(
            name=res.name,
            ipv4=cidr.split("/")[0],
            ipv4_cidr=cidr,
            ipv6=cidr6.split("/")[0],
            ipv6_cidr=cidr6,
            asn=int(asn) if asn else None,
            rr_cluster_id=str(bgp.get("routeReflectorClusterID") or ""),
            labels=res.labels,
            vxlan_addr=str(res.spec.get("ipv4VXLANTunnelAddr") or ""),
            vxlan_mac=str(res.spec.get("vxlanTunnelMACAddr") or ""),
            ipip_addr=str(bgp.get("ipv4IPIPTunnelAddr") or ""),
        )


# --- BGP -------------------------------------------------------------------------------------------

SOURCE_ADDRESSES = ("UseNodeIP", "None")
BIND_MODES = ("None", "NodeIP")
NEXT_HOP_MODES = ("Auto", "Self", "Keep")


@dataclass(frozen=True)
class SecretRef:
    """A BGP password's `secretKeyRef` (Kubernetes secret name and key); calico-node reads it from a file."""

    name: str
    key: str


def _secret_ref(value: object) -> SecretRef | None:
    ref = value.get("secretKeyRef") if isinstance(value, dict) else None
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
        return None
    return SecretRef(str(ref["name"]), str(ref["key"]))


def _seconds(value: object) -> int | None:
    """A metav1.Duration ("2m", "120s") as whole seconds, as confd rounds it; None when unset or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return round(parse_duration(value))
    except ValueError:
        return None


def split_peer_ip(peer_ip: str) -> tuple[str, int]:
    """A BGPPeer's peerIP: 10.0.0.1, 10.0.0.1:1790, fd00::1 or [fd00::1]:1790 -> (address, port or 0)."""
    if peer_ip.startswith("["):
        host, _, rest = peer_ip[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else 0
    if peer_ip.count(":") == 1:
        host, _, port = peer_ip.partition(":")
        return host, int(port) if port.isdigit() else 0
    return peer_ip, 0


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


@dataclass
class BGPPeer:
    name: str
    node: str = ""
    peer_ip: str = ""  # as stored: may carry a port
    asn: int | None = None
    node_selector: str = ""
    peer_selector: str = ""
    local_asn: int | None = None  # localASNumber: the AS this node claims on this session
    keep_original_next_hop: bool = False
    next_hop_mode: str = ""  # Auto | Self | Keep
    password: SecretRef | None = None
    source_address: str = "UseNodeIP"  # None: BIRD picks the TCP source address
    max_restart_time: int | None = None  # seconds (graceful restart time)
    keepalive_time: int | None = None  # seconds
    num_allowed_local_as: int = 0
    ttl_security: int = 0  # hops; 0: off
    reachable_by: str = ""  # a gateway: a static route to the peer through it
    filters: tuple[str, ...] = ()  # BGPFilter names, in order

    @classmethod
    def from_value(cls, value: dict) -> BGPPeer:
        res = Resource.from_value(value, "BGPPeer")
        spec = res.spec
        asn, local_asn = spec.get("asNumber"), spec.get("localASNumber")
        return cls(
            name=res.name,
            node=str(spec.get("node") or ""),
            peer_ip=str(spec.get("peerIP") or ""),
            asn=int(asn) if asn else None,
            node_selector=str(spec.get("nodeSelector") or ""),
            peer_selector=str(spec.get("peerSelector") or ""),
            local_asn=int(local_asn) if local_asn else None,
            keep_original_next_hop=spec.get("keepOriginalNextHop") is True,
            next_hop_mode=str(spec.get("nextHopMode") or ""),
            password=_secret_ref(spec.get("password")),
            source_address=str(spec.get("sourceAddress") or "UseNodeIP"),
            max_restart_time=_seconds(spec.get("maxRestartTime")),
            keepalive_time=_seconds(spec.get("keepaliveTime")),
            num_allowed_local_as=int(spec.get("numAllowedLocalASNumbers") or 0),
            ttl_security=int(spec.get("ttlSecurity") or 0),
            reachable_by=str(spec.get("reachableBy") or ""),
            filters=_strings(spec.get("filters")),
        )


def _cidrs(value: object) -> tuple[str, ...]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("cidr"):
            out.append(str(_network(str(item["cidr"]))))
    return tuple(out)


def _prefix_advertisements(spec: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """prefixAdvertisements with community names resolved through `communities` (as confd does):
    (cidr, community values), values sorted and unique; an unknown name is dropped."""
    named = {str(c.get("name")): str(c.get("value")) for c in spec.get("communities") or [] if isinstance(c, dict)}
    out = []
    for adv in spec.get("prefixAdvertisements") or []:
        if not isinstance(adv, dict) or not adv.get("cidr"):
            continue
        values = {c if is_community(str(c)) else named.get(str(c), "") for c in adv.get("communities") or []}
        out.append((str(adv["cidr"]), tuple(sorted(v for v in values if v))))
    return tuple(out)


def is_community(text: str) -> bool:
    """A standard (aa:nn, 16-bit parts) or large (aa:nn:mm, 32-bit parts) BGP community value."""
    parts = text.split(":")
    limit = {2: 65535, 3: 4294967295}.get(len(parts))
    return limit is not None and all(p.isdigit() and int(p) <= limit for p in parts)


@dataclass
class BGPConfiguration:
    name: str
    mesh: bool = True
    asn: int = DEFAULT_AS
    log_severity: str = ""  # logSeverityScreen ("" unset)
    listen_port: int = 0  # 0: unset (179)
    bind_mode: str = "None"
    ignored_interfaces: tuple[str, ...] = ()
    service_cluster_ips: tuple[str, ...] = ()
    service_external_ips: tuple[str, ...] = ()
    service_load_balancer_ips: tuple[str, ...] = ()
    prefix_advertisements: tuple[tuple[str, tuple[str, ...]], ...] = ()
    node_mesh_password: SecretRef | None = None
    node_mesh_restart_time: int | None = None  # seconds

    @classmethod
    def from_value(cls, value: dict) -> BGPConfiguration:
        res = Resource.from_value(value, "BGPConfiguration")
        spec = res.spec
        port = spec.get("listenPort")
        return cls(
            res.name, spec.get("nodeToNodeMeshEnabled", True) is not False, int(spec.get("asNumber") or DEFAULT_AS),
            log_severity=str(spec.get("logSeverityScreen") or ""),
            listen_port=int(port) if isinstance(port, int) and 0 < port <= 65535 else 0,
            bind_mode=str(spec.get("bindMode") or "None"),
            ignored_interfaces=_strings(spec.get("ignoredInterfaces")),
            service_cluster_ips=_cidrs(spec.get("serviceClusterIPs")),
            service_external_ips=_cidrs(spec.get("serviceExternalIPs")),
            service_load_balancer_ips=_cidrs(spec.get("serviceLoadBalancerIPs")),
            prefix_advertisements=_prefix_advertisements(spec),
            node_mesh_password=_secret_ref(spec.get("nodeMeshPassword")),
            node_mesh_restart_time=_seconds(spec.get("nodeMeshMaxRestartTime")),
        )


FILTER_OPERATORS = {"Equal": "=", "NotEqual": "!=", "In": "~", "NotIn": "!~"}
FILTER_ACTIONS = ("Accept", "Reject")
FILTER_DIRECTIONS = ("exportV4", "importV4", "exportV6", "importV6")


@dataclass(frozen=True)
class BGPFilterRule:
    """One rule of a BGPFilter (Calico's BGPFilterRuleV4/V6): matches, then Accept or Reject."""

    action: str
    cidr: str = ""
    match_operator: str = ""
    prefix_min: int | None = None
    prefix_max: int | None = None
    source: str = ""  # RemotePeers
    interface: str = ""
    peer_type: str = ""  # eBGP | iBGP
    community: str = ""  # communities.values[0]
    as_path_prefix: tuple[int, ...] = ()
    operations: tuple[tuple[str, object], ...] = ()  # ("addCommunity", "65000:1") | ("prependASPath", (asn, ...))

    @classmethod
    def from_value(cls, rule: dict) -> BGPFilterRule:
        length = rule.get("prefixLength") if isinstance(rule.get("prefixLength"), dict) else {}
        communities = rule.get("communities") if isinstance(rule.get("communities"), dict) else {}
        values = communities.get("values") or []
        ops: list[tuple[str, object]] = []
        for op in rule.get("operations") or []:
            if isinstance(op, dict) and isinstance(op.get("addCommunity"), dict):
                ops.append(("addCommunity", str(op["addCommunity"].get("value") or "")))
            elif isinstance(op, dict) and isinstance(op.get("prependASPath"), dict):
                ops.append(("prependASPath", tuple(int(a) for a in op["prependASPath"].get("prefix") or [])))
        return cls(
            action=str(rule.get("action") or ""),
            cidr=str(rule.get("cidr") or ""),
            match_operator=str(rule.get("matchOperator") or ""),
            prefix_min=int(length["min"]) if length.get("min") is not None else None,
            prefix_max=int(length["max"]) if length.get("max") is not None else None,
            source=str(rule.get("source") or ""),
            interface=str(rule.get("interface") or ""),
            peer_type=str(rule.get("peerType") or ""),
            community=str(values[0]) if values else "",
            as_path_prefix=tuple(int(a) for a in rule.get("asPathPrefix") or []),
            operations=tuple(ops),
        )


@dataclass
class BGPFilter:
    """A BGPFilter: rules per direction and family, applied to the BGPPeers that list it in `filters`."""

    name: str
    rules: dict[str, tuple[BGPFilterRule, ...]] = field(default_factory=dict)  # FILTER_DIRECTIONS -> rules

    @classmethod
    def from_value(cls, value: dict) -> BGPFilter:
        res = Resource.from_value(value, "BGPFilter")
        rules = {}
        for direction in FILTER_DIRECTIONS:
            entries = res.spec.get(direction)
            if isinstance(entries, list) and entries:
                rules[direction] = tuple(BGPFilterRule.from_value(r) for r in entries if isinstance(r, dict))
        return cls(res.name, rules)
