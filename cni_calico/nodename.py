"""What calico-node tells the plugin through files: the node's name and the pods' MTU.

Node name: config `nodename`, else the file calico-node writes, else hostname.
MTU: config `mtu`, else the `mtu` file beside the node name file (calico-node
writes it, leaving room for encapsulation), else 1500."""

from __future__ import annotations

import os
import socket

from cni_calico.netconf import DEFAULT_MTU, NetConf


def determine(conf: NetConf) -> str:
    if conf.nodename:
        return conf.nodename
    try:
        with open(conf.nodename_file) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    return socket.gethostname()


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
