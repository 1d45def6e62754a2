"""Programs a Ruleset into the current network namespace with iptables-restore (IPv4) or
ip6tables-restore (IPv6) and ipset; cleans up.

What holds, for each family on its own (one Dataplane per family; see cni_calico.policy.layout.Family):

- We own exactly: chains named ``cali-...`` in the family's filter table, the one jump to cali-FORWARD
  at the top of its FORWARD, and ipsets named ``cali40...`` (family inet) or ``cali60...`` (family
  inet6). Nothing else is ever flushed, changed or deleted.
- Each apply is one ``iptables-restore --noflush`` (``ip6tables-restore``) transaction: every chain it
  writes is declared (``:chain - [0:0]`` flushes it) and rewritten whole, chains no longer rendered are
  flushed and then deleted (``-X``) at its end, when nothing refers to them any more. The first apply
  after start (and the one after any failure) rewrites every chain and removes any stale ``cali-``
  chain; later ones write only the chains whose text changed, and make no call at all when nothing did.
- ipsets change before the rules that use them: a new set is created, a changed one is filled under a
  temporary name and ``swap``-ped in (atomic), and sets no longer used are destroyed after the
  transaction that stopped using them. No step leaves a moment where traffic is open.
- A failed step raises PolicyError and forgets what it believed was programmed, so the next apply is a
  full rewrite from what the kernel really holds. The other family's Dataplane is not affected.
- ``cleanup`` removes both families' chains, jumps and sets: afterwards ``iptables-save`` and
  ``ip6tables-save`` print what they printed before calico-node first ran (nf_tables: see ``cleanup``).
- IPv6 is left alone where the kernel has none (no /proc/sys/net/ipv6) or no ip6tables-restore is
  installed (``ipv6_available``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable

from cni_calico.policy.layout import (
    FAMILIES,
    FORWARD_CHAIN,
    JUMP,
    V4,
    V6,
    Family,
    IpSet,
    Ruleset,
    restore_text,
    set_name,
)

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
MAXELEM = 1048576
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")


class PolicyError(RuntimeError):
    """iptables or ipset refused a change (the message carries its stderr)."""


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def ipv6_available() -> bool:
    return os.path.exists("/proc/sys/net/ipv6") and os.path.exists(_tool(V6.restore))


def _run(args: list[str], stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run([_tool(args[0]), *args[1:]], input=stdin, capture_output=True, text=True)
    except OSError as exc:
        raise PolicyError(f"{args[0]}: {exc}") from None
    if check and proc.returncode != 0:
        raise PolicyError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def saved_filter(run: Runner = _run, family: Family = V4) -> list[str]:
    """``iptables-save -t filter`` (``ip6tables-save``) as lines, without comments."""
    out = run([family.save, "-t", "filter"]).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def cali_chains(lines: list[str]) -> list[str]:
    return [line[1:].split()[0] for line in lines if line.startswith(":cali-")]


def foreign_jumps(lines: list[str]) -> list[str]:
    """Rules outside our chains that jump (or go) to one of ours, as saved (``-A CHAIN ...``)."""
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and parts[0] == "-A" and not parts[1].startswith("cali-"):
            targets = [parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("-j", "-g")]
            if any(t.startswith("cali-") for t in targets):
                out.append(line)
    return out


def restore_command(run: Runner = _run, family: Family = V4) -> list[str]:
    """iptables-restore --noflush, waiting for the xtables lock where this iptables has one (legacy >= 1.6.2;
    the nf_tables variant needs none, 1.4 has no such option)."""
    usage = run([family.restore, "--help"], check=False)
    wait = "--wait" in usage.stdout + usage.stderr
    return [family.restore, "--noflush", *(["--wait", "10"] if wait else [])]


def ipsets(run: Runner = _run, family: Family = V4) -> list[str]:
    return [n for n in run(["ipset", "list", "-n"]).stdout.split() if n.startswith(family.set_prefix)]


def _ipset_script(wanted: dict[str, IpSet], have: dict[str, IpSet | None], family: Family = V4) -> list[str]:
    """Create new sets, swap changed ones in through a temporary set (``have``: None = content unknown)."""
    lines = []
    for name, s in wanted.items():
        if name in have and have[name] == s:
            continue
        target = set_name("t", name, family.version) if name in have else name
        lines.append(f"create {target} {s.kind} family {family.ipset_family} maxelem {MAXELEM} -exist")
        lines.append(f"flush {target}")
        lines += [f"add {target} {m}" for m in s.members]
        if target != name:
            lines += [f"swap {target} {name}", f"destroy {target}"]
    return lines


class Dataplane:
    """One family's kernel side: what is programmed, and how to move it to a new Ruleset of that family."""

    def __init__(self, run: Runner = _run, version: int = 4) -> None:
        self.run, self.family = run, FAMILIES[version]
        self.chains: dict[str, tuple[str, ...]] | None = None  # None: unknown, rewrite everything
        self.sets: dict[str, IpSet | None] = {}
        self.restore: list[str] = []
        self.writes = 0  # iptables-restore transactions made (for tests and benchmarks)

    @property
    def programmed(self) -> bool:
        """Whether we know what the kernel holds (False before the first apply and after a failure)."""
        return self.chains is not None

    def forget(self) -> None:
        self.chains = None

    def apply(self, ruleset: Ruleset) -> bool:
        """Makes the kernel hold ``ruleset``; False when it already did (no call made)."""
        if ruleset.version != self.family.version:
            raise ValueError(f"an IPv{ruleset.version} ruleset given to the IPv{self.family.version} dataplane")
        try:
            return self._apply(ruleset)
        except Exception:
            self.chains = None
            raise

    def _apply(self, ruleset: Ruleset) -> bool:
        jump: list[str] = []
        if self.chains is None:
            self.restore = self.restore or restore_command(self.run, self.family)
            lines = saved_filter(self.run, self.family)
            old_chains = dict.fromkeys(cali_chains(lines), ())
            forward = [line for line in lines if line.startswith("-A FORWARD ")]
            ours = foreign_jumps(lines)
            if not (forward and forward[0] in ours and len(ours) == 1 and f"-j {FORWARD_CHAIN}" in forward[0]):
                jump = ["-D" + line[2:] for line in ours] + [f"-I FORWARD 1 {JUMP}"]
            self.sets = dict.fromkeys(ipsets(self.run, self.family))
            write = dict(ruleset.chains)
        else:
            old_chains = self.chains
            write = {c: rules for c, rules in ruleset.chains.items() if old_chains.get(c) != rules}
        remove = [c for c in old_chains if c not in ruleset.chains]
        stale_sets = [n for n in self.sets if n not in ruleset.ipsets]
        set_lines = _ipset_script(ruleset.ipsets, self.sets, self.family)
        if not (write or remove or jump or set_lines or stale_sets):
            return False
        if set_lines:
            self.run(["ipset", "restore"], "\n".join(set_lines) + "\n")
            self.sets.update(ruleset.ipsets)
        if write or remove or jump:
            self.run(self.restore, restore_text(write, remove, jump))
            self.writes += 1
        self.chains = dict(ruleset.chains)
        for name in stale_sets:
            if self.run(["ipset", "destroy", name], check=False).returncode == 0:
                del self.sets[name]
            else:
                log.warning("ipset %s is still in use; will try again", name)
        log.info("policy applied (IPv%d): %d chains written, %d removed, %d ipset changes", self.family.version,
                 len(write), len(remove), len(set_lines))
        return True


def _pristine(lines: list[str]) -> bool:
    """Whether the saved filter table is just the three built-in chains, accepting, with no rules."""
    body = [line.split(" [")[0] for line in lines if line not in ("*filter", "COMMIT")]
    return sorted(body) == sorted(f":{c} ACCEPT" for c in BUILTIN)


def cleanup(run: Runner = _run, versions: tuple[int, ...] | None = None) -> list[str]:
    """Removes our jump(s), every cali- chain and every cali40 / cali60 ipset of each family (``versions``;
    default IPv4, and IPv6 where available); returns what was removed, IPv6 items prefixed "ip6 ".

    With the nf_tables backend a filter table left pristine is deleted too (an empty table accepts
    everything, exactly as no table): iptables-save / ip6tables-save then print what they printed before
    we started."""
    removed: list[str] = []
    for version in versions or ((4, 6) if ipv6_available() else (4,)):
        removed += _cleanup(run, FAMILIES[version])
    return removed


def _cleanup(run: Runner, family: Family) -> list[str]:
    lines = saved_filter(run, family)
    chains, jumps = cali_chains(lines), foreign_jumps(lines)
    removed = [f"{family.label}jump: {j}" for j in jumps] + [f"{family.label}chain: {c}" for c in chains]
    if chains or jumps:
        run(restore_command(run, family), restore_text({}, chains, ["-D" + j[2:] for j in jumps]))
    for name in ipsets(run, family):
        run(["ipset", "destroy", name])
        removed.append(f"ipset: {name}")
    if chains or jumps:
        full = run([family.save]).stdout
        version = run([family.iptables, "--version"], check=False).stdout
        tables = [line for line in full.splitlines() if line.startswith("*")]
        if ("nf_tables" in version and "*filter" in tables and _pristine(saved_filter(run, family))
                and shutil.which("nft")):
            run(["nft", "delete", "table", family.nft_family, "filter"], check=False)
    return removed
