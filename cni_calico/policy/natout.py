"""Outgoing NAT as Felix does it, one IP family at a time: what leaves a `natOutgoing` pool for a
destination outside every pool is masqueraded to the node's address (SNAT to FelixConfiguration's
`natOutgoingAddress` when set, IPv4 only); pod-to-pod traffic, in any pool, never is.

Kernel state we own, and nothing else of the nat table: the hash:net sets `cali40masq-ipam-pools`
(the natOutgoing pools) and `cali40all-ipam-pools` (every pool, disabled ones too, except
LoadBalancer-only pools), `cali60…` for IPv6, as Felix names them; the chains `cali-POSTROUTING` and
`cali-nat-outgoing`; and one jump at the top of POSTROUTING. A pool's change moves set members only;
the chain is rewritten only when masquerading starts or stops or the SNAT address changes. `repair`
puts back what someone else changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cni_calico.policy.iptables import (
    MAXELEM,
    Runner,
    _run,
    cali_chains,
    canonical,
    drop_if_pristine,
    jump_fix,
    restore_command,
    saved_filter,
    saved_sets,
)
from cni_calico.policy.layout import FAMILIES, Family, restore_text
from cni_calico.v3 import IPPool

log = logging.getLogger(__name__)

POSTROUTING = "cali-POSTROUTING"
NAT_OUTGOING = "cali-nat-outgoing"
JUMP = f'-m comment --comment "cali:calico-node nat" -j {POSTROUTING}'
LOAD_BALANCER_ONLY = ("LoadBalancer",)
NAT_BUILTIN = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def masq_set(family: Family) -> str:
    return f"{family.set_prefix}masq-ipam-pools"


def all_set(family: Family) -> str:
    return f"{family.set_prefix}all-ipam-pools"


def nat_set(name: str, family: Family) -> bool:
    return name in (masq_set(family), all_set(family))


@dataclass(frozen=True)
class NatPlan:
    """What one family's outgoing NAT should be."""

    version: int
    all_pools: frozenset[str]
    masq_pools: frozenset[str]
    snat_to: str = ""  # natOutgoingAddress; "" masquerades to the outgoing interface's address

    def chains(self) -> dict[str, tuple[str, ...]]:
        family = FAMILIES[self.version]
        rules: tuple[str, ...] = ()
        if self.masq_pools:
            action = f"-j SNAT --to-source {self.snat_to}" if self.snat_to else "-j MASQUERADE"
            rules = (f"-m set --match-set {masq_set(family)} src -m set ! --match-set {all_set(family)} dst "
                     f"{action} --random-fully",)
        return {POSTROUTING: (f"-j {NAT_OUTGOING}",), NAT_OUTGOING: rules}

    def sets(self) -> dict[str, frozenset[str]]:
        family = FAMILIES[self.version]
        return {masq_set(family): self.masq_pools, all_set(family): self.all_pools}


def plan(pools: Iterable[IPPool], version: int, snat_to: str = "") -> NatPlan:
    """The family's plan from every pool (pure)."""
    mine = [p for p in pools if p.family == version]
    return NatPlan(version,
                   frozenset(p.cidr for p in mine if tuple(p.allowed_uses) != LOAD_BALANCER_ONLY),
                   frozenset(p.cidr for p in mine if p.nat_outgoing),
                   snat_to if version == 4 else "")


class NatDataplane:
    """One family's outgoing NAT in the kernel: `apply` moves it to a plan, `repair` checks it."""

    def __init__(self, run: Runner = _run, version: int = 4) -> None:
        self.run, self.family = run, FAMILIES[version]
        self.applied: NatPlan | None = None  # None: unknown, rewrite everything
        self.restore: list[str] = []

    def apply(self, plan: NatPlan) -> bool:
        """Makes the kernel hold `plan`; False when it already did (no call made)."""
        if plan == self.applied:
            return False
        try:
            self.restore = self.restore or restore_command(self.run, self.family)
            before = self.applied
            if before is None:
                self._write_sets(plan, replace=True)
                lines = saved_filter(self.run, self.family, "nat")
                self._write_chains(plan.chains(), jump_fix(lines, "POSTROUTING", POSTROUTING, JUMP))
            else:
                self._move_members(before, plan)
                if plan.chains() != before.chains():
                    self._write_chains({NAT_OUTGOING: plan.chains()[NAT_OUTGOING]}, [])
            self.applied = plan
        except Exception:
            self.applied = None
            raise
        log.info("outgoing NAT (IPv%d): masquerading %s%s", self.family.version,
                 ", ".join(sorted(plan.masq_pools)) or "no pool",
                 f" to {plan.snat_to}" if plan.snat_to and plan.masq_pools else "")
        return True

    def repair(self, plan: NatPlan) -> list[str]:
        """Puts back what differs from `plan` (a flushed or deleted chain, a lost jump, a deleted set
        or member); returns what was repaired, each logged."""
        lines = saved_filter(self.run, self.family, "nat")
        kernel: dict[str, list[str]] = {c: [] for c in cali_chains(lines)}
        for line in lines:
            parts = line.split(" ", 2)
            if parts[0] == "-A" and parts[1] in kernel:
                kernel[parts[1]].append(parts[2] if len(parts) > 2 else "")
        write = {c: rules for c, rules in plan.chains().items()
                 if [canonical(r) for r in kernel.get(c, ["<none>"])] != [canonical(r) for r in rules]}
        jump = jump_fix(lines, "POSTROUTING", POSTROUTING, JUMP)
        have = saved_sets(self.run, self.family, nat_set)
        wanted = {name: tuple(sorted(members)) for name, members in plan.sets().items()}
        sets = [n for n, members in wanted.items() if n not in have or have[n].members != members]
        repaired = [f"chain {c}" for c in write] + (["POSTROUTING jump"] if jump else []) + [f"set {n}" for n in sets]
        if sets:
            self._write_sets(plan, replace=True)
        if write or jump:
            self.restore = self.restore or restore_command(self.run, self.family)
            self._write_chains(write, jump)
        self.applied = plan
        for what in repaired:
            log.warning("outgoing NAT drift repaired (IPv%d): %s was not as programmed", self.family.version, what)
        return repaired

    def _write_sets(self, plan: NatPlan, replace: bool) -> None:
        """Each set filled whole under a temporary name and swapped in (atomic: no moment without NAT)."""
        f = self.family
        lines = []
        for name, members in plan.sets().items():
            temp = f"{f.set_prefix}tmp-{name[len(f.set_prefix):]}"[:31]
            lines += [f"create {name} hash:net family {f.ipset_family} maxelem {MAXELEM} -exist",
                      f"create {temp} hash:net family {f.ipset_family} maxelem {MAXELEM} -exist", f"flush {temp}"]
            lines += [f"add {temp} {m}" for m in sorted(members)]
            lines += [f"swap {temp} {name}", f"destroy {temp}"]
        self.run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def _move_members(self, before: NatPlan, after: NatPlan) -> None:
        old, new = before.sets(), after.sets()
        lines = [f"add {n} {m}" for n in new for m in sorted(new[n] - old.get(n, frozenset()))]
        lines += [f"del {n} {m}" for n in new for m in sorted(old.get(n, frozenset()) - new[n])]
        if lines:
            self.run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def _write_chains(self, chains: dict[str, tuple[str, ...]], jump: list[str]) -> None:
        if chains or jump:
            self.run(self.restore, restore_text(chains, jump=jump, table="nat"))


def cleanup(run: Runner = _run, versions: Iterable[int] = (4,)) -> list[str]:
    """Removes our jump, chains and sets from each family's nat table; returns what was removed."""
    removed: list[str] = []
    for version in versions:
        family = FAMILIES[version]
        lines = saved_filter(run, family, "nat")
        chains = [c for c in cali_chains(lines) if c in (POSTROUTING, NAT_OUTGOING)]
        jumps = [j for j in lines if j.startswith("-A POSTROUTING ") and f"-j {POSTROUTING}" in j]
        if chains or jumps:
            run(restore_command(run, family), restore_text({}, chains, ["-D" + j[2:] for j in jumps], table="nat"))
            drop_if_pristine(run, family, "nat", NAT_BUILTIN)
        removed += [f"{family.label}nat jump: {j}" for j in jumps] + [f"{family.label}nat chain: {c}" for c in chains]
        for name in saved_sets(run, family, nat_set):
            run(["ipset", "destroy", name])
            removed.append(f"ipset: {name}")
    return removed
