"""The Kubernetes API, read only when something needs it: policy.type k8s, or a pod to look up.

What must hold:
- `plan` decides from the parsed config and CNI_ARGS alone; it reads no file and imports
  nothing heavy. PyYAML, ssl and http.client are imported only on the path that reads the
  kubeconfig or talks to the API (the plugin's start-up is hot).
- With `policy.type: k8s` the API is required: an unreadable kubeconfig or an API that cannot be
  reached or refuses us is a CNI error 103 naming the file or the server. Without it the pod's
  annotations are optional: any such failure is a warning and ADD goes on without them.
- A malformed annotation that *was* read is the user's error (code 7), required or not.
- The plugin makes exactly two GETs on one connection: the pod, then its namespace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field

from cni_calico.errors import INVALID_CONFIG, KUBERNETES_API, CniError
from cni_calico.v3 import NS_LABEL_PREFIX

log = logging.getLogger(__name__)

TIMEOUT = 5.0
POOLS_ANNOTATION = {4: "cni.projectcalico.org/ipv4pools", 6: "cni.projectcalico.org/ipv6pools"}
IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"
NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"
NS_PREFIX = NS_LABEL_PREFIX

NOTHING, KUBECONFIG_ONLY, API = "", "kubeconfig", "api"


class KubeError(Exception):
    """The kubeconfig or the API failed us; fatal only when the config requires the API."""


def plan(conf, args: dict[str, str]) -> str:
    """What this request needs of Kubernetes (no I/O, no imports):

    API: read the pod and its namespace (a kubeconfig, and the pod's namespace and name in CNI_ARGS);
    KUBECONFIG_ONLY: policy.type k8s without a pod to look up: only check the kubeconfig is readable;
    NOTHING: everything else, including a kubeconfig that is configured but has no use here."""
    if conf.kubeconfig and args.get("K8S_POD_NAMESPACE") and args.get("K8S_POD_NAME"):
        return API
    return KUBECONFIG_ONLY if conf.policy_type == "k8s" else NOTHING


# --- the kubeconfig ------------------------------------------------------------------------------


@dataclass
class ApiAccess:
    """Where the API is and how we prove who we are, from the kubeconfig's current context."""

    server: str
    ca_file: str = ""
    ca_data: str = ""  # PEM
    insecure: bool = False
    token: str = ""
    cert_file: str = ""
    key_file: str = ""
    cert_data: bytes = b""  # PEM
    key_data: bytes = b""  # PEM
    # A token read from a file is read again when the file changes: a projected service-account
    # token is rotated by the kubelet under a long-running process (calico-kube-controllers).
    token_file: str = ""
    _token_mtime: float = field(default=0.0, repr=False, compare=False)
    # A client-go exec credential plugin (users[].user.exec): run for a token or a client
    # certificate, again once what it gave has expired (its expirationTimestamp).
    exec_plugin: dict = field(default_factory=dict)
    _exec_expiry: float = field(default=0.0, repr=False, compare=False)
    _exec_ran: bool = field(default=False, repr=False, compare=False)
    # Bumped each time the exec plugin hands a new client certificate: a TLS context built with an
    # older one is built again (KubeApi), as client-go's dynamic client certificate does.
    cert_generation: int = field(default=0, repr=False, compare=False)

    def refresh(self) -> None:
        """Runs the exec plugin when it has not run yet or what it gave has expired."""
        if not self.exec_plugin:
            return
        import time

        if self._exec_ran and not (self._exec_expiry and time.time() >= self._exec_expiry - 10):
            return
        cred = run_exec_plugin(self.exec_plugin)
        self.token, self._exec_expiry, self._exec_ran = cred.token, cred.expiry, True
        if cred.cert:
            self.cert_data, self.key_data = cred.cert, cred.key
            self.cert_generation += 1

    def unauthorized(self) -> None:
        """The API answered 401: an exec plugin's credential is run for again on the next request
        (client-go's roundTripper does the same)."""
        self._exec_ran = False

    def bearer(self) -> str:
        """The token to send now: the token file's current content when there is one, or the exec
        plugin's token (run again once the one it gave has expired)."""
        self.refresh()
        if self.token_file:
            try:
                mtime = os.stat(self.token_file).st_mtime
                if mtime != self._token_mtime:
                    with open(self.token_file, encoding="utf-8") as f:
                        self.token = f.read().strip()
                    self._token_mtime = mtime
            except OSError as exc:  # keep the last token: the file may be mid-rotation
                log.warning("cannot re-read token file %s: %s", self.token_file, exc.strerror)
        return self.token


@dataclass
class ExecCredential:
    """What an exec credential plugin gave: a token, or a PEM client certificate and key (or both)."""

    token: str = ""
    cert: bytes = b""
    key: bytes = b""
    expiry: float = 0.0  # Unix time; 0: does not expire


def run_exec_plugin(spec: dict) -> ExecCredential:
    """A client-go exec credential plugin's credential: `command` with `args` and `env`,
    KUBERNETES_EXEC_INFO naming the ExecCredential apiVersion, stdout an ExecCredential whose status
    holds a token, or clientCertificateData and clientKeyData (PEM, both), as client-go reads it."""
    import datetime
    import subprocess

    command = str(spec.get("command") or "")
    env = {**os.environ, **{str(e.get("name")): str(e.get("value")) for e in spec.get("env") or []
                            if isinstance(e, dict)}}
    version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": version, "kind": "ExecCredential",
                                              "spec": {"interactive": False}})
    try:
        proc = subprocess.run([command, *[str(a) for a in spec.get("args") or []]], env=env, capture_output=True,
                              timeout=TIMEOUT * 2, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeError(f"exec credential plugin {command!r} failed: {exc}") from None
    if proc.returncode:
        raise KubeError(f"exec credential plugin {command!r} exited {proc.returncode}: "
                        f"{proc.stderr.decode(errors='replace')[-300:]}")
    try:
        status = json.loads(proc.stdout).get("status") or {}
    except (ValueError, AttributeError):
        raise KubeError(f"exec credential plugin {command!r} did not print an ExecCredential") from None
    cert, key = str(status.get("clientCertificateData") or ""), str(status.get("clientKeyData") or "")
    if bool(cert) != bool(key):
        raise KubeError(f"exec credential plugin {command!r}: clientCertificateData and clientKeyData must "
                        "both be present")
    cred = ExecCredential(str(status.get("token") or ""), cert.encode(), key.encode())
    if not cred.token and not cred.cert:
        raise KubeError(f"exec credential plugin {command!r} gave neither a token nor a client certificate "
                        "and key")
    if status.get("expirationTimestamp"):
        try:
            when = datetime.datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
            cred.expiry = when.timestamp()
        except ValueError:
            raise KubeError(f"exec credential plugin {command!r}: expirationTimestamp "
                            f"{status['expirationTimestamp']!r} is not an RFC 3339 time") from None
    return cred


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def in_cluster_access(env: dict[str, str] | None = None, sa_dir: str = SA_DIR) -> ApiAccess:
    """The API as a pod sees it (client-go's rest.InClusterConfig): KUBERNETES_SERVICE_HOST/PORT,
    the service account's token (re-read when rotated) and the cluster CA."""
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    token_file = os.path.join(sa_dir, "token")
    access = ApiAccess(server=f"https://{'[' + host + ']' if ':' in host else host}:{port}",
                       ca_file=os.path.join(sa_dir, "ca.crt"), token_file=token_file)
    if not access.bearer():
        raise KubeError(f"not in a cluster: cannot read the service account token {token_file}")
    return access


def load_access(kubeconfig: str) -> ApiAccess:
    """The kubeconfig's access when one is named, else the in-cluster one."""
    return load_kubeconfig(kubeconfig) if kubeconfig else in_cluster_access()


def read_kubeconfig(path: str) -> bytes:
    if not path:
        raise CniError(KUBERNETES_API, "the Kubernetes API is needed but kubernetes.kubeconfig is not set")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CniError(KUBERNETES_API, f"cannot read kubeconfig {path}: {exc.strerror}") from None


def _named(items: object, name: str, what: str, path: str) -> dict:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(what), dict):
            return item[what]
    raise KubeError(f"kubeconfig {path} has no {what} named {name!r}")


def load_kubeconfig(path: str) -> ApiAccess:
    """The current context's server and credentials; relative file names are relative to the kubeconfig."""
    import base64
    import binascii

    import yaml

    raw = read_kubeconfig(path)
    try:
        doc = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise KubeError(f"kubeconfig {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeError(f"kubeconfig {path} is not a kubeconfig (no mapping at the top)")
    contexts = doc.get("contexts") if isinstance(doc.get("contexts"), list) else []
    current = doc.get("current-context") or (contexts[0].get("name") if len(contexts) == 1 else "")
    if not current:
        raise KubeError(f"kubeconfig {path} has no current-context")
    context = _named(contexts, current, "context", path)
    cluster = _named(doc.get("clusters"), context.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), context.get("user", ""), "user", path) if context.get("user") else {}
    base = os.path.dirname(os.path.abspath(path))

    def file(section: dict, key: str) -> str:
        value = section.get(key) or ""
        return os.path.join(base, value) if value and not os.path.isabs(value) else value

    def data(section: dict, key: str) -> bytes:
        try:
            return base64.b64decode(section.get(key) or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise KubeError(f"kubeconfig {path}: {key} is not base64") from None

    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise KubeError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no https:// server")
    token = str(user.get("token") or "")
    token_file = file(user, "tokenFile") if not token else ""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise KubeError(f"cannot read token file {token_file} of kubeconfig {path}: "
                            f"{exc.strerror}") from None
    exec_plugin = user.get("exec") if isinstance(user.get("exec"), dict) and not token else {}
    if exec_plugin and not exec_plugin.get("command"):
        raise KubeError(f"kubeconfig {path}: the exec credential plugin has no command")
    if not token and not exec_plugin and not (user.get("client-certificate") or user.get("client-certificate-data")):
        if user.get("auth-provider"):
            raise KubeError(f"kubeconfig {path}: auth-provider credentials are not supported (removed from "
                            "client-go); use a token, tokenFile, exec or a client certificate")
    return ApiAccess(
        server=server.rstrip("/"),
        ca_file=file(cluster, "certificate-authority"),
        ca_data=data(cluster, "certificate-authority-data").decode("ascii", "replace"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=token,
        cert_file=file(user, "client-certificate"),
        key_file=file(user, "client-key"),
        cert_data=data(user, "client-certificate-data"),
        key_data=data(user, "client-key-data"),
        token_file=token_file,
        exec_plugin=exec_plugin,
    )


# --- the API --------------------------------------------------------------------------------------


def tls_context(access: ApiAccess):
    """The TLS context for the API: its CA, and the client certificate (a file, the kubeconfig's
    data, or the exec plugin's, which is run first when it has not run)."""
    import ssl
    import tempfile

    access.refresh()
    try:
        ctx = ssl.create_default_context(cafile=access.ca_file or None, cadata=access.ca_data or None)
        if access.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if access.cert_file or access.cert_data:
            if access.cert_data or access.key_data:
                # ssl loads a client certificate only from files: a private, unnamed-after-use copy.
                with tempfile.NamedTemporaryFile("wb", prefix="kube-client-", dir="/dev/shm"
                                                 if os.path.isdir("/dev/shm") else None) as pem:
                    pem.write((access.cert_data or b"") + b"\n" + (access.key_data or b""))
                    pem.flush()
                    ctx.load_cert_chain(pem.name)
            else:
                ctx.load_cert_chain(access.cert_file, access.key_file or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeError(f"cannot load the kubeconfig's TLS files: {exc}") from None
    return ctx


class ApiClient:
    """GETs on one keep-alive connection, each within TIMEOUT."""

    def __init__(self, access: ApiAccess, timeout: float = TIMEOUT) -> None:
        import http.client
        from urllib.parse import urlsplit

        self.access = access
        url = urlsplit(access.server)
        self.prefix = url.path.rstrip("/")
        if url.scheme == "https":
            self.conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=timeout,
                                                    context=tls_context(access))
        else:
            self.conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)

    def get(self, path: str) -> dict:
        headers = {"Accept": "application/json", "User-Agent": "cni-calico"}
        token = self.access.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self.conn.request("GET", self.prefix + path, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except OSError as exc:  # refused, unreachable, TLS failure, timeout
            self.close()
            raise KubeError(f"cannot reach the Kubernetes API at {self.access.server}: {exc}") from None
        except Exception as exc:  # http.client's own (BadStatusLine, …)
            self.close()
            raise KubeError(f"the Kubernetes API at {self.access.server} answered badly: {exc!r}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if resp.status != 200:
            why = doc.get("message") if isinstance(doc, dict) else body[:200].decode(errors="replace")
            raise KubeError(f"the Kubernetes API at {self.access.server} answered GET {path} with "
                            f"{resp.status} {resp.reason}: {why}")
        if not isinstance(doc, dict):
            raise KubeError(f"the Kubernetes API at {self.access.server} sent no JSON object for GET {path}")
        return doc

    def close(self) -> None:
        self.conn.close()


def read_pod(kubeconfig: str, namespace: str, pod: str) -> tuple[dict, dict]:
    """(pod, namespace) objects, as the API returns them."""
    from urllib.parse import quote

    client = ApiClient(load_kubeconfig(kubeconfig))
    try:
        ns = quote(namespace, safe="")
        return (client.get(f"/api/v1/namespaces/{ns}/pods/{quote(pod, safe='')}"),
                client.get(f"/api/v1/namespaces/{ns}"))
    finally:
        client.close()


# --- what the plugin takes from the pod -------------------------------------------------------


@dataclass
class PodInfo:
    labels: dict[str, str] = field(default_factory=dict)  # for the WorkloadEndpoint, pcns.* included
    ports: list[dict] = field(default_factory=list)  # for the WorkloadEndpoint (`pod_ports`)
    pools: dict[int, list[str]] = field(default_factory=dict)  # family → pools, from an annotation
    ip_addrs: list[str] = field(default_factory=list)


def _meta(obj: dict, key: str) -> dict[str, str]:
    value = (obj.get("metadata") or {}).get(key) or {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _json_list(value: str, name: str, where: str) -> list[str]:
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise CniError(INVALID_CONFIG, f"annotation {name} of {where} must be a JSON list of strings, "
                       f"like [\"10.0.0.0/24\"]; got {value!r}")
    return items


def pod_labels(pod: dict, namespace: dict) -> dict[str, str]:
    """The labels the plugin gives a pod's WorkloadEndpoint (before the two system labels): the
    pod's own, its namespace's under `pcns.`, and its service account. calico-kube-controllers
    keeps an endpoint's labels equal to these as the pod and namespace change."""
    labels = dict(_meta(pod, "labels"))
    labels.update({NS_PREFIX + k: v for k, v in _meta(namespace, "labels").items()})
    account = (pod.get("spec") or {}).get("serviceAccountName")
    if account:
        labels[SERVICE_ACCOUNT_LABEL] = str(account)
    return labels


# A container port's protocol as libcalico-go writes it (numorstring.ProtocolFromString); others are skipped.
_PORT_PROTOCOLS = {"UDP": "UDP", "SCTP": "SCTP", "TCP": "TCP", "": "TCP"}  # "": Kubernetes' default, TCP


def pod_ports(pod: dict) -> list[dict]:
    """The WorkloadEndpoint `ports` of a pod, as libcalico-go's PodToWorkloadEndpoints writes them:
    each port of its containers, then of its init containers, that has a containerPort and a name or
    a hostPort, with a known protocol; every field written (Go's struct has no omitempty)."""
    spec = pod.get("spec") or {}
    out = []
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for port in (container.get("ports") or []) if isinstance(container, dict) else []:
            if not isinstance(port, dict):
                continue
            number, host_port, name = port.get("containerPort") or 0, port.get("hostPort") or 0, port.get("name") or ""
            protocol = _PORT_PROTOCOLS.get(str(port.get("protocol") or ""))
            if number and (host_port or name) and protocol:
                out.append({"name": str(name), "protocol": protocol, "port": int(number), "hostPort": int(host_port),
                            "hostIP": str(port.get("hostIP") or "")})
    return out


def pod_info(pod: dict, namespace: dict) -> PodInfo:
    """Labels, pools and requested addresses: pod annotations over namespace annotations."""
    import ipaddress

    ns_name = str((namespace.get("metadata") or {}).get("name") or "")
    pod_name = f"pod {ns_name}/{(pod.get('metadata') or {}).get('name')}"
    pod_notes, ns_notes = _meta(pod, "annotations"), _meta(namespace, "annotations")
    info = PodInfo(labels=pod_labels(pod, namespace), ports=pod_ports(pod))
    for family, name in POOLS_ANNOTATION.items():
        if name in pod_notes:
            info.pools[family] = _json_list(pod_notes[name], name, pod_name)
        elif name in ns_notes:
            info.pools[family] = _json_list(ns_notes[name], name, f"namespace {ns_name}")
    if IP_ADDRS_ANNOTATION in pod_notes:
        addrs = _json_list(pod_notes[IP_ADDRS_ANNOTATION], IP_ADDRS_ANNOTATION, pod_name)
        try:
            parsed = [ipaddress.ip_address(a) for a in addrs]
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"annotation {IP_ADDRS_ANNOTATION} of {pod_name}: {exc}") from None
        if len({a.version for a in parsed}) != len(parsed):
            raise CniError(INVALID_CONFIG, f"annotation {IP_ADDRS_ANNOTATION} of {pod_name} may hold one address "
                           f"per family, got {addrs}")
        info.ip_addrs = [str(a) for a in parsed]
    return info


def apply_pod(conf, args: dict[str, str]):
    """(config with the pod's pools and addresses, PodInfo: the WorkloadEndpoint's labels and ports)
    for an ADD.

    The config comes back unchanged, with an empty PodInfo, when there is nothing to look up or when
    the optional lookup failed (logged as a warning)."""
    what = plan(conf, args)
    if what == NOTHING:
        return conf, PodInfo()
    required = conf.policy_type == "k8s"
    if what == KUBECONFIG_ONLY:
        read_kubeconfig(conf.kubeconfig)
        return conf, PodInfo()
    import time

    namespace, pod = args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"]
    started = time.monotonic()
    try:
        pod_obj, ns_obj = read_pod(conf.kubeconfig, namespace, pod)
    except (KubeError, CniError) as exc:
        if required:
            if isinstance(exc, CniError):
                raise
            raise CniError(KUBERNETES_API, str(exc), "policy.type is k8s: the pod must be read from the API") from None
        log.warning("going on without pod %s/%s's annotations and labels: %s", namespace, pod, exc)
        return conf, PodInfo()
    info = pod_info(pod_obj, ns_obj)
    log.debug("pod %s/%s read in %.0f ms: labels %s, ports %s, pools %s, addresses %s", namespace, pod,
              (time.monotonic() - started) * 1000, info.labels, info.ports, info.pools, info.ip_addrs)
    if (info.pools or info.ip_addrs) and conf.ipam.type != "calico-ipam":
        if info.ip_addrs:
            raise CniError(INVALID_CONFIG, f"annotation {IP_ADDRS_ANNOTATION} needs ipam.type calico-ipam, "
                           f"not {conf.ipam.type}")
        log.warning("pool annotations of pod %s/%s apply to calico-ipam only: ignored", namespace, pod)
    ipam = dataclasses.replace(
        conf.ipam,
        ipv4_pools=info.pools.get(4, conf.ipam.ipv4_pools),
        ipv6_pools=info.pools.get(6, conf.ipam.ipv6_pools),
        ip_addrs=info.ip_addrs,
    )
    return dataclasses.replace(conf, ipam=ipam), info
