"""Programs a Ruleset into the current network namespace with iptables-restore and ipset; cleans up.

What holds:

- We own exactly: chains named ``cali-...`` in the filter table, the one jump to cali-FORWARD at the top
  of FORWARD, and ipsets named ``cali40...``. Nothing else is ever flushed, changed or deleted.
- Each apply is one ``iptables-restore --noflush`` transaction: every chain it writes is declared
  (``:chain - [0:0]`` flushes it) and rewritten whole, chains no longer rendered are flushed and then
  deleted (``-X``) at its end, when nothing refers to them any more. The first apply after start (and
  the one after any failure) rewrites every chain and removes any stale ``cali-`` chain; later ones
  write only the chains whose text changed, and make no call at all when nothing did.
- ipsets change before the rules that use them: a new set is created, a changed one is filled under a
  temporary name and ``swap``-ped in (atomic), and sets no longer used are destroyed after the
  transaction that stopped using them. No step leaves a moment where traffic is open.
- A failed step raises PolicyError and forgets what it believed was programmed, so the next apply is a
  full rewrite from what the kernel really holds.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable

from cni_calico.policy.render import FORWARD_CHAIN, JUMP, SET_PREFIX, IpSet, Ruleset, restore_text, set_name

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
MAXELEM = 1048576
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")


class PolicyError(RuntimeError):
    """iptables or ipset refused a change (the message carries its stderr)."""


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _run(args: list[str], stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([_tool(args[0]), *args[1:]], input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PolicyError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def saved_filter(run: Runner = _run) -> list[str]:
    """``iptables-save -t filter`` as lines, without comments."""
    out = run(["iptables-save", "-t", "filter"]).stdout
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


def restore_command(run: Runner = _run) -> list[str]:
    """iptables-restore --noflush, waiting for the xtables lock where this iptables has one (legacy >= 1.6.2;
    the nf_tables variant needs none, 1.4 has no such option)."""
    usage = run(["iptables-restore", "--help"], check=False)
    wait = "--wait" in usage.stdout + usage.stderr
    return ["iptables-restore", "--noflush", *(["--wait", "10"] if wait else [])]


def ipsets(run: Runner = _run) -> list[str]:
    return [n for n in run(["ipset", "list", "-n"]).stdout.split() if n.startswith(SET_PREFIX)]


def _ipset_script(wanted: dict[str, IpSet], have: dict[str, IpSet | None]) -> list[str]:
    """Create new sets, swap changed ones in through a temporary set (``have``: None = content unknown)."""
    lines = []
    for name, s in wanted.items():
        if name in have and have[name] == s:
            continue
        target = set_name("t", name) if name in have else name
        lines.append(f"create {target} {s.kind} family inet maxelem {MAXELEM} -exist")
        lines.append(f"flush {target}")
        lines += [f"add {target} {m}" for m in s.members]
        if target != name:
            lines += [f"swap {target} {name}", f"destroy {target}"]
    return lines


class Dataplane:
    """The kernel side: what is programmed, and how to move it to a new Ruleset."""

    def __init__(self, run: Runner = _run) -> None:
        self.run = run
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
        try:
            return self._apply(ruleset)
        except Exception:
            self.chains = None
            raise

    def _apply(self, ruleset: Ruleset) -> bool:
        jump: list[str] = []
        if self.chains is None:
            self.restore = self.restore or restore_command(self.run)
            lines = saved_filter(self.run)
            old_chains = dict.fromkeys(cali_chains(lines), ())
            forward = [line for line in lines if line.startswith("-A FORWARD ")]
            ours = foreign_jumps(lines)
            if not (forward and forward[0] in ours and len(ours) == 1 and f"-j {FORWARD_CHAIN}" in forward[0]):
                jump = ["-D" + line[2:] for line in ours] + [f"-I FORWARD 1 {JUMP}"]
            self.sets = dict.fromkeys(ipsets(self.run))
            write = dict(ruleset.chains)
        else:
            old_chains = self.chains
            write = {c: rules for c, rules in ruleset.chains.items() if old_chains.get(c) != rules}
        remove = [c for c in old_chains if c not in ruleset.chains]
        stale_sets = [n for n in self.sets if n not in ruleset.ipsets]
        set_lines = _ipset_script(ruleset.ipsets, self.sets)
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
        log.info("policy applied: %d chains written, %d removed, %d ipset changes", len(write), len(remove),
                 len(set_lines))
        return True


def _pristine(lines: list[str]) -> bool:
    """Whether the saved filter table is just the three built-in chains, accepting, with no rules."""
    body = [line.split(" [")[0] for line in lines if line not in ("*filter", "COMMIT")]
    return sorted(body) == sorted(f":{c} ACCEPT" for c in BUILTIN)


def cleanup(run: Runner = _run) -> list[str]:
    """Removes our jump(s), every cali- chain and every cali40 ipset; returns what was removed.

    With the nf_tables backend a filter table left pristine is deleted too (an empty table accepts
    everything, exactly as no table): iptables-save then prints what it printed before we started."""
    lines = saved_filter(run)
    chains, jumps = cali_chains(lines), foreign_jumps(lines)
    removed = [f"jump: {j}" for j in jumps] + [f"chain: {c}" for c in chains]
    if chains or jumps:
        run(restore_command(run), restore_text({}, chains, ["-D" + j[2:] for j in jumps]))
    for name in ipsets(run):
        run(["ipset", "destroy", name])
        removed.append(f"ipset: {name}")
    if chains or jumps:
        full = run(["iptables-save"]).stdout
        version = run(["iptables", "--version"], check=False).stdout
        tables = [line for line in full.splitlines() if line.startswith("*")]
        if "nf_tables" in version and "*filter" in tables and _pristine(saved_filter(run)) and shutil.which("nft"):
            run(["nft", "delete", "table", "ip", "filter"], check=False)
    return removed
