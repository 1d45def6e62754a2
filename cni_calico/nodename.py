"""What calico-node tells the plugin through files: the node's name and the pods' MTU.

Node name: config `nodename`, else the file calico-node writes, else the hostname
(lowercased, as Calico does); one that is not a lowercase DNS name is a config error.
MTU: config `mtu`, else the `mtu` file beside the node name file (calico-node
writes it, leaving room for encapsulation), else 1500."""

from __future__ import annotations

import os
import socket

from cni_calico.errors import INVALID_CONFIG, CniError
from cni_calico.names import is_valid_nodename
from cni_calico.netconf import DEFAULT_MTU, NetConf


def determine(conf: NetConf) -> str:
    name, source = _find(conf)
    if not is_valid_nodename(name):
        raise CniError(INVALID_CONFIG, f"node name {name!r} (from {source}) is not a lowercase DNS name",
                       "a node name becomes part of etcd keys and file names: letters a-z, digits, '-' and '.'")
    return name


def _find(conf: NetConf) -> tuple[str, str]:
    if conf.nodename:
        return conf.nodename, "the network config's nodename"
    try:
        with open(conf.nodename_file) as f:
            name = f.read().strip()
        if name:
            return name, conf.nodename_file
    except OSError:
        pass
    return socket.gethostname().lower(), "the hostname"


def pod_mtu(conf: NetConf) -> int:
    if conf.mtu:
        return conf.mtu
    try:
        with open(os.path.join(os.path.dirname(conf.nodename_file), "mtu")) as f:
            value = int(f.read().strip())
        if 68 <= value <= 65535:
            return value
    except (OSError, ValueError):
        pass
    return DEFAULT_MTU
