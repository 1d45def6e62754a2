"""`calico-node --install-cni`: what Calico's install-cni init container does, for our bundle.

Run in the calico-node DaemonSet's init container (examples/kubernetes/calico-etcd.yaml) with the
host's CNI directories mounted, it:

1. copies our PyInstaller bundle (the folder this executable runs from, or $CNI_CALICO_BUNDLE)
   into the host's CNI bin directory as `cni-calico/`, swapped in with two renames so a plugin run
   in between never sees half a copy, and links `calico` and `calico-ipam` to it (a onedir
   executable finds its `_internal/` only through symlinks);
2. writes the etcd TLS files from $TLS_ASSETS_DIR (the Secret: etcd-key, etcd-cert, etcd-ca) into
   `<conf dir>/calico-tls/`, private;
3. writes a kubeconfig (`<conf dir>/calico-kubeconfig`, 0600) from the pod's service account: the
   API's in-cluster address, the cluster CA, the token;
4. writes the network config `$CNI_CONF_NAME` (default 10-calico.conflist: calico with portmap and
   bandwidth chained, as Calico ships it) from $CNI_NETWORK_CONFIG, or our default template, with
   Calico's placeholders (__ETCD_ENDPOINTS__, __KUBECONFIG_FILEPATH__, __CNI_MTU__,
   __KUBERNETES_NODE_NAME__, __ETCD_KEY_FILE__ …) filled in; refused unless it is JSON;
5. with SLEEP=true (the default, as Calico's), stays and rewrites the kubeconfig whenever the
   projected token is rotated (checked every 10 s), so the plugin never holds an expired token.

Every file is written to a temporary name and renamed over the old one.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sys
import threading
from dataclasses import dataclass

from cni_calico.kube import SA_DIR, in_cluster_access

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = """{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "calico",
      "log_level": "__LOG_LEVEL__",
      "log_file_path": "__LOG_FILE_PATH__",
      "etcd_endpoints": "__ETCD_ENDPOINTS__",
      "etcd_key_file": "__ETCD_KEY_FILE__",
      "etcd_cert_file": "__ETCD_CERT_FILE__",
      "etcd_ca_cert_file": "__ETCD_CA_CERT_FILE__",
      "nodename": "__KUBERNETES_NODE_NAME__",
      "mtu": __CNI_MTU__,
      "ipam": {"type": "calico-ipam"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "__KUBECONFIG_FILEPATH__"}
    },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
"""
TLS_FILES = {"etcd-key": "__ETCD_KEY_FILE__", "etcd-cert": "__ETCD_CERT_FILE__", "etcd-ca": "__ETCD_CA_CERT_FILE__"}


class InstallError(Exception):
    """A setting or file install-cni cannot work with; the message names it."""


@dataclass
class InstallConfig:
    bin_dir: str  # the host's CNI bin directory, as mounted here
    conf_dir: str  # the host's CNI config directory, as mounted here
    net_dir: str  # that config directory's path on the host (what the plugin will be told)
    conf_name: str
    template: str
    tls_dir: str
    bundle: str
    sleep: bool
    env: dict[str, str]
    sa_dir: str = SA_DIR

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> InstallConfig:
        env = dict(os.environ) if env is None else env
        template, template_file = env.get("CNI_NETWORK_CONFIG", ""), env.get("CNI_NETWORK_CONFIG_FILE", "")
        if not template and template_file:
            try:
                with open(template_file, encoding="utf-8") as f:
                    template = f.read()
            except OSError as exc:
                raise InstallError(f"CNI_NETWORK_CONFIG_FILE {template_file}: {exc.strerror}") from None
        frozen = os.path.dirname(os.path.realpath(sys.executable)) if getattr(sys, "frozen", False) else ""
        return cls(
            bin_dir=env.get("CNI_BIN_DIR", "/host/opt/cni/bin"),
            conf_dir=env.get("CNI_CONF_DIR", "/host/etc/cni/net.d"),
            net_dir=env.get("CNI_NET_DIR", "/etc/cni/net.d"),
            conf_name=env.get("CNI_CONF_NAME", "10-calico.conflist"),
            template=template or DEFAULT_TEMPLATE,
            tls_dir=env.get("TLS_ASSETS_DIR", "/calico-secrets"),
            bundle=env.get("CNI_CALICO_BUNDLE", frozen),
            sleep=env.get("SLEEP", "true").strip().lower() in ("true", "1", "yes"),
            env=env,
        )


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def install_bundle(cfg: InstallConfig) -> bool:
    """The bundle into the bin directory and the two plugin links; False when there is no bundle."""
    if not cfg.bundle:
        log.warning("not running from a bundle and CNI_CALICO_BUNDLE unset: CNI binaries not copied")
        return False
    os.makedirs(cfg.bin_dir, exist_ok=True)
    target, new, old = (os.path.join(cfg.bin_dir, n) for n in ("cni-calico", ".cni-calico.new", ".cni-calico.old"))
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(cfg.bundle, new, symlinks=True)
    if os.path.exists(target):
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
    for name in ("calico", "calico-ipam"):
        link = os.path.join(cfg.bin_dir, name)
        tmp = link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink("cni-calico/calico", tmp)
        os.replace(tmp, link)
    log.info("installed the bundle into %s/cni-calico (calico, calico-ipam linked)", cfg.bin_dir)
    return True


def install_tls(cfg: InstallConfig) -> dict[str, str]:
    """The etcd TLS files present in the Secret, copied; placeholder → path on the host ("" if absent)."""
    out = dict.fromkeys(TLS_FILES.values(), "")
    present = [n for n in TLS_FILES if os.path.isfile(os.path.join(cfg.tls_dir, n))]
    if present:
        os.makedirs(os.path.join(cfg.conf_dir, "calico-tls"), mode=0o700, exist_ok=True)
    for name in present:
        with open(os.path.join(cfg.tls_dir, name), "rb") as f:
            _write(os.path.join(cfg.conf_dir, "calico-tls", name), f.read(), 0o600)
        out[TLS_FILES[name]] = os.path.join(cfg.net_dir, "calico-tls", name)
    return out


def kubeconfig_text(cfg: InstallConfig) -> tuple[str, str]:
    """(kubeconfig YAML for the plugin, the token it holds), from the pod's service account."""
    access = in_cluster_access(cfg.env, cfg.sa_dir)
    with open(access.ca_file, "rb") as f:
        ca = base64.b64encode(f.read()).decode()
    token = access.bearer()
    # JSON is YAML: no PyYAML dependency for this one small document.
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "local", "cluster": {"server": access.server, "certificate-authority-data": ca}}],
           "users": [{"name": "calico", "user": {"token": token}}],
           "contexts": [{"name": "calico-context", "context": {"cluster": "local", "user": "calico"}}],
           "current-context": "calico-context"}
    return json.dumps(doc, indent=2) + "\n", token


def network_config(cfg: InstallConfig, tls: dict[str, str]) -> str:
    env = cfg.env
    values = {
        "__LOG_LEVEL__": env.get("LOG_LEVEL", "info"),
        "__LOG_FILE_PATH__": env.get("LOG_FILE_PATH", "/var/log/calico/cni/cni.log"),
        "__LOG_FILE_MAX_SIZE__": env.get("LOG_FILE_MAX_SIZE", "100"),
        "__LOG_FILE_MAX_AGE__": env.get("LOG_FILE_MAX_AGE", "30"),
        "__LOG_FILE_MAX_COUNT__": env.get("LOG_FILE_MAX_COUNT", "10"),
        "__DATASTORE_TYPE__": env.get("DATASTORE_TYPE", "etcdv3"),
        "__KUBERNETES_NODE_NAME__": env.get("KUBERNETES_NODE_NAME", "") or os.uname().nodename,
        "__KUBECONFIG_FILEPATH__": os.path.join(cfg.net_dir, "calico-kubeconfig"),
        "__CNI_MTU__": env.get("CNI_MTU", "1500"),
        "__KUBERNETES_SERVICE_HOST__": env.get("KUBERNETES_SERVICE_HOST", ""),
        "__KUBERNETES_SERVICE_PORT__": env.get("KUBERNETES_SERVICE_PORT", ""),
        "__ETCD_ENDPOINTS__": env.get("ETCD_ENDPOINTS", ""),
        "__ETCD_DISCOVERY_SRV__": env.get("ETCD_DISCOVERY_SRV", ""),
        **tls,
    }
    text = cfg.template
    for key, value in values.items():
        text = text.replace(key, value)
    try:
        json.loads(text)
    except ValueError as exc:
        raise InstallError(f"the network config {cfg.conf_name} is not JSON once filled in: {exc}") from None
    return text


def install(cfg: InstallConfig, stop: threading.Event | None = None, period: float = 10.0) -> int:
    install_bundle(cfg)
    os.makedirs(cfg.conf_dir, exist_ok=True)
    tls = install_tls(cfg)
    kubeconfig_path = os.path.join(cfg.conf_dir, "calico-kubeconfig")
    text, token = kubeconfig_text(cfg)
    _write(kubeconfig_path, text.encode(), 0o600)
    _write(os.path.join(cfg.conf_dir, cfg.conf_name), network_config(cfg, tls).encode())
    log.info("wrote %s and calico-kubeconfig into %s", cfg.conf_name, cfg.conf_dir)
    if not cfg.sleep:
        return 0
    stop = stop or threading.Event()
    while not stop.wait(period):
        try:
            text, new_token = kubeconfig_text(cfg)
        except Exception as exc:  # noqa: BLE001 - mid-rotation: try again next period
            log.warning("cannot read the service account: %s", exc)
            continue
        if new_token != token:
            _write(kubeconfig_path, text.encode(), 0o600)
            token = new_token
            log.info("service account token rotated: %s rewritten", kubeconfig_path)
    return 0


def main() -> int:
    from cni_calico.kube import KubeError

    try:
        return install(InstallConfig.from_env())
    except (InstallError, KubeError, OSError) as exc:
        sys.stderr.write(f"calico-node --install-cni: {exc}\n")
        return 1
