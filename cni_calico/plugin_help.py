"""`calico --help` and `calico-ipam --help`: the CNI plugins' usage text (also the source of their man pages).

The plugins take no arguments from a runtime, only `CNI_*` variables and the network config on stdin; this
text is for the operator who runs one by hand. Imported only when argv asks for it (cni_calico/entry.py).
"""

from __future__ import annotations

from cni_calico.versions import SUPPORTED_VERSIONS

_ENVIRONMENT = """\
environment:
  CNI_COMMAND           ADD, DEL, CHECK, VERSION, STATUS or GC
  CNI_CONTAINERID       the container's ID
  CNI_NETNS             the container's network namespace (a path)
  CNI_IFNAME            the interface to create in it (e.g. eth0)
  CNI_ARGS              KEY=VALUE;... (K8S_POD_NAMESPACE, K8S_POD_NAME, IP)
  CNI_PATH              where to find other CNI plugins (chained IPAM)
"""

_TEXTS = {
    "calico": (
        "Calico's CNI plugin: gives a container a /32 (and /128) from an etcd-backed IP pool, a veth whose "
        "host end is cali..., and the routes that reach it; DEL takes them back. Run by the container runtime "
        "(kubelet, containerd, CRI-O) with the network config (type \"calico\", e.g. "
        "/etc/cni/net.d/10-calico.conf) on standard input and the CNI_* variables below, as the CNI spec says; the "
        "answer is the CNI result on standard output."
    ),
    "calico-ipam": (
        "Calico's IPAM plugin: allocates and releases addresses from the IP pools' blocks in etcd, affine to "
        "this node. The calico plugin runs it in-process when ipam.type is \"calico-ipam\"; any other "
        "CNI plugin runs it through CNI_PATH with the network config on standard input. The runtime sets the "
        "CNI_* variables below, as the CNI spec says."
    ),
}


def help_text(name: str) -> str:
    """The usage text of plugin `name` (calico or calico-ipam), argparse-shaped for the man page script."""
    import textwrap

    description = textwrap.fill(_TEXTS[name], width=78)
    closing = textwrap.fill(
        f"CNI spec versions: {', '.join(SUPPORTED_VERSIONS)}. Errors are CNI error JSON on standard output with "
        "exit status 1; logs go to the file the config names, never to standard output.", width=78)
    return (
        f"usage: {name} [-h] [-v]\n\n{description}\n\n"
        "options:\n"
        "  -h, --help            show this help message and exit\n"
        "  -v, --version         print the version (v<version>) and exit\n\n"
        f"{_ENVIRONMENT}\n{closing}\n"
    )
