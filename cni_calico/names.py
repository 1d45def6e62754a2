"""Names derived from a request: host veth, endpoint resource, IPAM handle (pure functions)."""

from __future__ import annotations

import hashlib
import re

VETH_PREFIX = "cali"
# A node's name is a lowercase DNS name (as Kubernetes' and Calico's): it becomes etcd key
# segments and file names, so nothing like "/" or ".." may get through.
NODENAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def is_valid_nodename(name: str) -> bool:
    return NODENAME.fullmatch(name) is not None and ".." not in name


def host_veth_name(container_id: str, k8s_namespace: str = "", pod: str = "") -> str:
    """Calico's rule: sha1("<ns>.<pod>")[:11] under Kubernetes, else the container ID's first 11."""
    if k8s_namespace and pod:
        suffix = hashlib.sha1(f"{k8s_namespace}.{pod}".encode()).hexdigest()[:11]
    else:
        suffix = container_id[:11]
    return VETH_PREFIX + suffix


def alternate_veth_name(container_id: str) -> str:
    """For a container whose first 11 characters another container's veth already uses."""
    return VETH_PREFIX + hashlib.sha1(container_id.encode()).hexdigest()[:11]


def _escape(part: str) -> str:
    return part.replace("-", "--")


def endpoint_name(node: str, container_id: str, ifname: str, pod: str = "") -> str:
    """`<node>-k8s-<pod>-<if>` or `<node>-cni-<container>-<if>`, each part's '-' doubled."""
    if pod:
        return f"{_escape(node)}-k8s-{_escape(pod)}-{_escape(ifname)}"
    return f"{_escape(node)}-cni-{_escape(container_id)}-{_escape(ifname)}"


def handle_id(network: str, container_id: str) -> str:
    return f"{network}.{container_id}"
