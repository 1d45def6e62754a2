"""Which node this plugin runs on: config `nodename`, else the file calico-node writes, else hostname."""

from __future__ import annotations

import socket

from cni_calico.netconf import NetConf


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
