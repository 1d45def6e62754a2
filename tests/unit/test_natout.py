"""Outgoing NAT's plan from the pools (pure): which pools are masqueraded, which count as the cluster,
and the chain Felix writes for it. The kernel side is tested with real traffic in
tests/integration/test_nat_outgoing.py."""

from __future__ import annotations

from cni_calico.policy.natout import NAT_OUTGOING, POSTROUTING, plan
from cni_calico.v3 import IPPool


def pools() -> list[IPPool]:
    return [IPPool("a", "10.80.0.0/16", 26, nat_outgoing=True),
            IPPool("b", "10.81.0.0/16", 26, disabled=True),
            IPPool("lb", "10.99.0.0/24", 32, nat_outgoing=True, allowed_uses=("LoadBalancer",)),
            IPPool("v6", "fd00:80::/64", 122, nat_outgoing=True)]


def test_the_sets_hold_the_natoutgoing_pools_and_every_pool_but_loadbalancer_only_ones():
    v4 = plan(pools(), 4)
    assert v4.masq_pools == {"10.80.0.0/16", "10.99.0.0/24"}
    assert v4.all_pools == {"10.80.0.0/16", "10.81.0.0/16"}  # a disabled pool still holds pods
    assert v4.sets() == {"cali40masq-ipam-pools": v4.masq_pools, "cali40all-ipam-pools": v4.all_pools}
    v6 = plan(pools(), 6, "192.168.200.101")
    assert v6.masq_pools == v6.all_pools == {"fd00:80::/64"} and v6.snat_to == ""  # natOutgoingAddress: IPv4
    assert set(v6.sets()) == {"cali60masq-ipam-pools", "cali60all-ipam-pools"}


def test_the_chain_masquerades_or_snats_and_is_empty_without_a_natoutgoing_pool():
    assert plan(pools(), 4).chains() == {
        POSTROUTING: (f"-j {NAT_OUTGOING}",),
        NAT_OUTGOING: ("-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst "
                       "-j MASQUERADE --random-fully",)}
    assert plan(pools(), 4, "192.168.200.101").chains()[NAT_OUTGOING][0].endswith(
        "-j SNAT --to-source 192.168.200.101 --random-fully")
    assert plan([IPPool("b", "10.81.0.0/16", 26)], 4).chains()[NAT_OUTGOING] == ()
    assert plan(pools(), 4) == plan(list(reversed(pools())), 4)  # order-free: a resync changes nothing
