"""The Kubernetes API, read only when something needs it (policy.type k8s, pod annotations)."""

from __future__ import annotations

from cni_calico.errors import KUBERNETES_API, CniError


def read_kubeconfig(path: str) -> bytes:
    if not path:
        raise CniError(KUBERNETES_API, "the Kubernetes API is needed but kubernetes.kubeconfig is not set")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CniError(KUBERNETES_API, f"cannot read kubeconfig {path}: {exc.strerror}") from None
