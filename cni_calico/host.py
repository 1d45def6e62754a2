"""What the plugin's handlers get from the process that runs them: its datastore clients, netlink
sockets, logging and IPAM run directory. Two hosts run the same handlers (cni_calico.plugin):

- `PluginHost`: the `calico` / `calico-ipam` process, one request and exit;
- `AgentHost`: calico-node's CNI server (cni_calico.node.cni_server), many requests on long-lived
  threads, with warm etcd clients shared across requests of the same etcd configuration.

Everything a handler needs from its surroundings comes from here or from the request (its own
environment, `Request.env`): nothing below the entry points reads `os.environ` or a module global
to learn which host it runs in.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni_calico.dataplane import HostNetlink
    from cni_calico.datastore import Datastore, EtcdConf
    from cni_calico.netconf import NetConf

DEFAULT_RUN_DIR = "/var/run/calico"


class PluginHost:
    """The plugin process: a datastore client per request, the request's logging settings rule."""

    def __init__(self, run_dir: str = DEFAULT_RUN_DIR) -> None:
        self.run_dir = run_dir  # IPAM's lock and hint, unless the request's CALICO_RUN_DIR says otherwise
        self._netlink: HostNetlink | None = None

    @property
    def netlink(self) -> HostNetlink:
        if self._netlink is None:
            from cni_calico.dataplane import HostNetlink

            self._netlink = HostNetlink()
        return self._netlink

    def datastore(self, conf: EtcdConf) -> Datastore:
        from cni_calico.datastore import Datastore

        return Datastore(conf)

    def configure_logging(self, conf: NetConf) -> None:
        from cni_calico import logsetup

        logsetup.configure_from(conf, root_level=True)

    def ipam_run_dir(self, env: dict[str, str]) -> str:
        return env.get("CALICO_RUN_DIR") or self.run_dir


class AgentHost(PluginHost):
    """calico-node's CNI server: one etcd client per etcd configuration, reused by every request;
    the agent's own log level rules (a request's config sets only its log file's level)."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(run_dir)
        self._datastores: dict[tuple, Datastore] = {}
        self._guard = threading.Lock()

    def datastore(self, conf: EtcdConf) -> Datastore:
        from cni_calico.datastore import Datastore

        ident = (tuple(conf.endpoints), conf.key_file, conf.cert_file, conf.ca_cert_file)
        with self._guard:
            ds = self._datastores.get(ident)
            if ds is None:
                ds = self._datastores[ident] = Datastore(conf)
        return ds

    def configure_logging(self, conf: NetConf) -> None:
        from cni_calico import logsetup

        logsetup.configure_from(conf, root_level=False)

    def round_trips(self) -> int:
        """etcd requests made by every client of this host since start."""
        with self._guard:
            return sum(ds.round_trips for ds in self._datastores.values())
