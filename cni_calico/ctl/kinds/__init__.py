"""Every Calico kind beyond IPPool, registered into `cni_calico.resources` on import.

IPPool lives in cni_calico.resources itself; importing this package adds: Node, BGPPeer, BGPConfiguration,
NetworkPolicy, GlobalNetworkPolicy, Profile, WorkloadEndpoint, IPAMConfig, IPReservation, Tier,
ClusterInformation, FelixConfiguration, GlobalNetworkSet, NetworkSet, KubeControllersConfiguration.
`fields` and `rules` hold the checks the kinds share.
"""

from cni_calico.ctl.kinds import bgp, felix, kubecontrollers, networksets, policy, tier, workload  # noqa: F401 - registers

__all__ = ["bgp", "felix", "kubecontrollers", "networksets", "policy", "tier", "workload"]
