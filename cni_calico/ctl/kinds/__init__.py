"""Every Calico kind beyond IPPool, registered into `cni_calico.resources` on import.

IPPool lives in cni_calico.resources itself; importing this package adds, in
this order (the order `--help` lists them): Node, BGPPeer, BGPConfiguration, BGPFilter,
NetworkPolicy, GlobalNetworkPolicy, Profile, WorkloadEndpoint, IPAMConfig, IPReservation, Tier,
ClusterInformation, FelixConfiguration, GlobalNetworkSet, NetworkSet, HostEndpoint,
KubeControllersConfiguration.
`fields` and `rules` hold the checks the kinds share.
"""

from cni_calico.ctl.kinds import (  # noqa: F401 - registers the kinds
    bgp,
    bgpconfig,
    bgpfilter,
    felix,
    hostendpoints,
    kubecontrollers,
    networksets,
    policy,
    tier,
    workload,
)

__all__ = ["bgp", "bgpconfig", "bgpfilter", "felix", "hostendpoints", "kubecontrollers", "networksets", "policy",
           "tier", "workload"]
