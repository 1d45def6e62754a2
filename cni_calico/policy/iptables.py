"""Programs a Ruleset into the current network namespace with iptables-restore (IPv4) or
ip6tables-restore (IPv6) and ipset; cleans up.

What holds, for each family on its own (one Dataplane per family; see cni_calico.policy.layout.Family):

- We own exactly: chains named ``cali-...`` in the family's filter table, the jumps to cali-FORWARD and
  cali-INPUT at the top of its FORWARD and INPUT, and ipsets named ``cali40...`` (family inet) or
  ``cali60...`` (family inet6); while this node has a host endpoint (cni_calico.policy.hostep) also the
  ``cali-...`` chains of the mangle and raw tables and the jumps at the top of OUTPUT (filter), PREROUTING,
  POSTROUTING (mangle) and PREROUTING, OUTPUT (raw): ``layout.HOOKS``. Nothing else is ever flushed, changed or
  deleted; without a host endpoint the mangle and raw tables are not even read.
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
    OUTPUT_CHAIN,
    TABLES,
    V4,
    V6,
    Family,
    IpSet,
    Ruleset,
    by_table,
    hooks,
    jump_rule,
    policy_set,
    qualified,
    restore_text,
    set_member,
    set_name,
    split_key,
)

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
MAXELEM = 1048576
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")
BUILTINS = {"filter": BUILTIN, "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
            "raw": ("PREROUTING", "OUTPUT")}
# In the filter table: host endpoint chains may be in mangle and raw (cali-INPUT is always there: workloads')
HOST_MARKERS = (OUTPUT_CHAIN,)


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


def saved_filter(run: Runner = _run, family: Family = V4, table: str = "filter") -> list[str]:
    """``iptables-save -t filter`` (``ip6tables-save``; or another table) as lines, without comments."""
    out = run([family.save, "-t", table]).stdout
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


def jump_fix(lines: list[str], builtin: str, chain: str, jump: str) -> list[str]:
    """The repair of our one jump from a built-in chain (saved table `lines`): nothing when it is the
    built-in's first rule and the table's only jump into our chains; else delete those, insert ours."""
    first = next((line for line in lines if line.startswith(f"-A {builtin} ")), "")
    ours = foreign_jumps(lines)
    if first and first in ours and len(ours) == 1 and f"-j {chain}" in first:
        return []
    return ["-D" + line[2:] for line in ours] + [f"-I {builtin} 1 {jump}"]


def hook_fix(lines: list[str], table: str, chains: list[str]) -> list[str]:
    """The repair of our jumps from a table's built-in chains (saved table ``lines``; ``chains``: the
    bare names we want there): nothing when each wanted jump is its built-in's first rule and those
    are the table's only jumps into our chains; else delete every such jump and insert ours."""
    wanted = hooks(table, chains)
    ours = foreign_jumps(lines)
    firsts = {line.split()[1]: line for line in reversed(lines) if line.startswith("-A ")}
    rules = [f"-A {builtin} {jump_rule(chain)}" for builtin, chain in wanted]
    if sorted(ours) == sorted(rules) and all(firsts.get(b) == r for (b, _), r in zip(wanted, rules, strict=True)):
        return []
    return ["-D" + line[2:] for line in ours] + [f"-I {b} 1 {jump_rule(c)}" for b, c in wanted]


def hook_changes(old: dict[str, tuple[str, ...]], new: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Per table, the jump lines that follow our hooked chains coming (insert) and going (delete)."""
    out: dict[str, list[str]] = {}
    before, after = by_table(old), by_table(new)
    for table in TABLES:
        had, has = hooks(table, before.get(table, {})), hooks(table, after.get(table, {}))
        lines = [f"-I {b} 1 {jump_rule(c)}" for b, c in has if (b, c) not in had]
        lines += [f"-D {b} {jump_rule(c)}" for b, c in had if (b, c) not in has]
        if lines:
            out[table] = lines
    return out


def restore_command(run: Runner = _run, family: Family = V4) -> list[str]:
    """iptables-restore --noflush, waiting for the xtables lock where this iptables has one (legacy >= 1.6.2;
    the nf_tables variant needs none, 1.4 has no such option)."""
    usage = run([family.restore, "--help"], check=False)
    wait = "--wait" in usage.stdout + usage.stderr
    return [family.restore, "--noflush", *(["--wait", "10"] if wait else [])]


def ipsets(run: Runner = _run, family: Family = V4) -> list[str]:
    """The policy's sets of the family in the kernel (not outgoing NAT's)."""
    return [n for n in run(["ipset", "list", "-n"]).stdout.split() if policy_set(n, family)]


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


def canonical(rule: str) -> str:
    """A rule as text that compares equal however iptables-save prints it: it names protocols
    (`-p 47` comes back as `-p gre`) and quotes the LOG prefix; here both become numbers, unquoted."""
    import socket

    parts = rule.replace('"', "").split()
    for i, part in enumerate(parts[:-1]):
        if part == "-p" and not parts[i + 1].isdigit():
            try:
                parts[i + 1] = str(socket.getprotobyname(parts[i + 1]))
            except OSError:
                pass
    return " ".join(parts)


def saved_sets(run: Runner = _run, family: Family = V4, mine: Callable[[str, Family], bool] = policy_set
               ) -> dict[str, IpSet]:
    """Every set of ours (the policy's, unless `mine` says otherwise) in the kernel with its members."""
    kinds: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for line in run(["ipset", "save"]).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and mine(parts[1], family):
            if parts[0] == "create":
                kinds[parts[1]] = parts[2]
                members.setdefault(parts[1], [])
            elif parts[0] == "add":
                members.setdefault(parts[1], []).append(_normal(parts[2], family))
    return {name: IpSet(kinds.get(name, "hash:ip"), tuple(sorted(m))) for name, m in members.items()}


def _normal(member: str, family: Family) -> str:
    """A member as ours are written (cni_calico.policy.layout.set_member): the canonical network, a
    full-length one as its bare address; a hash:ip,port member's address canonical, its port as is."""
    import ipaddress

    member, comma, port = member.partition(",")
    return set_member(str(ipaddress.ip_network(member, strict=False))) + comma + port


NETLINK_MEMBERS = 4096  # member changes up to this many go by netlink in one send; more: one ipset restore


class Dataplane:
    """One family's kernel side: what is programmed, and how to move it to a new Ruleset of that family
    (`apply`, a whole desired state) or by a calculator's changes (`apply_changes`); `repair` puts
    back what someone else changed.

    Member changes go over netlink (cni_calico.policy.ipsets) when the dataplane acts on its own
    namespace (the default runner); everything else, and every change made through another
    runner (tests in a namespace), goes through the `ipset` and `iptables-restore` commands."""

    def __init__(self, run: Runner = _run, version: int = 4) -> None:
        self.run, self.family = run, FAMILIES[version]
        self._members = None  # cni_calico.policy.ipsets.MemberSocket, made on first use
        self.netlink = run is _run
        self.chains: dict[str, tuple[str, ...]] | None = None  # None: unknown, rewrite everything
        self.sets: dict[str, IpSet | None] = {}
        self.restore: list[str] = []
        self.writes = 0  # iptables-restore transactions made (for tests and benchmarks)
        self.set_calls = 0  # ipset invocations made

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

    def _read_tables(self, wanted: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
        """The saved filter table, and mangle and raw when host endpoint chains are wanted or found."""
        tables = {"filter": saved_filter(self.run, self.family)}
        if any(split_key(k)[0] != "filter" for k in wanted) or set(HOST_MARKERS) & set(cali_chains(tables["filter"])):
            for table in ("mangle", "raw"):
                tables[table] = saved_filter(self.run, self.family, table)
        return tables

    def _write(self, write: dict[str, tuple[str, ...]], remove: list[str], jumps: dict[str, list[str]]) -> None:
        """One *-restore --noflush call: a section per table with something to do."""
        text = ""
        written, removed = by_table(write), by_table(dict.fromkeys(remove, ()))
        for table in TABLES:
            if table in written or table in removed or jumps.get(table):
                text += restore_text(written.get(table, {}), removed.get(table, {}), jumps.get(table, []), table)
        if text:
            self.restore = self.restore or restore_command(self.run, self.family)
            self.run(self.restore, text)
            self.writes += 1

    def _apply(self, ruleset: Ruleset) -> bool:
        jumps: dict[str, list[str]] = {}
        if self.chains is None:
            self.restore = self.restore or restore_command(self.run, self.family)
            tables = self._read_tables(ruleset.chains)
            old_chains = {qualified(t, c): () for t, lines in tables.items() for c in cali_chains(lines)}
            wanted = by_table(ruleset.chains)
            jumps = {t: fix for t, lines in tables.items() if (fix := hook_fix(lines, t, list(wanted.get(t, {}))))}
            self.sets = dict.fromkeys(ipsets(self.run, self.family))
            write = dict(ruleset.chains)
        else:
            old_chains = self.chains
            write = {c: rules for c, rules in ruleset.chains.items() if old_chains.get(c) != rules}
            jumps = hook_changes(old_chains, ruleset.chains)
        remove = [c for c in old_chains if c not in ruleset.chains]
        stale_sets = [n for n in self.sets if n not in ruleset.ipsets]
        set_lines = _ipset_script(ruleset.ipsets, self.sets, self.family)
        if not (write or remove or jumps or set_lines or stale_sets):
            return False
        if set_lines:
            self._ipset(set_lines)
            self.sets.update(ruleset.ipsets)
        self._write(write, remove, jumps)
        self.chains = dict(ruleset.chains)
        self._destroy(stale_sets)
        log.info("policy applied (IPv%d): %d chains written, %d removed, %d ipset changes", self.family.version,
                 len(write), len(remove), len(set_lines))
        return True

    def _ipset(self, lines: list[str]) -> None:
        self.run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")
        self.set_calls += 1

    def _change_members(self, changes: list[tuple[str, str, bool]]) -> None:
        if not changes:
            return
        from cni_calico.policy.ipsets import IpsetError, MemberSocket

        try:
            if self._members is None:
                self._members = MemberSocket()
            self._members.change(changes)
        except IpsetError as exc:
            raise PolicyError(str(exc)) from None
        except OSError as exc:  # the socket itself failed: a new one next time
            if self._members is not None:
                self._members.close()
            self._members = None
            raise PolicyError(f"ipset netlink socket: {exc}") from None
        self.set_calls += 1

    def _destroy(self, names) -> None:
        for name in names:
            if self.run(["ipset", "destroy", name], check=False).returncode == 0:
                self.sets.pop(name, None)
            else:
                log.warning("ipset %s is still in use; will try again", name)

    def apply_changes(self, changes) -> bool:
        """Applies a cni_calico.policy.calc.Changes of this family (the dataplane must be programmed:
        the first apply after start or after a failure is a whole `apply`). Sets are created and
        filled before the rules that name them, and emptied and destroyed after the rules that
        stopped naming them, so no step opens a gap."""
        if self.chains is None:
            raise PolicyError(f"IPv{self.family.version} dataplane not programmed: apply a whole ruleset first")
        if not changes:
            return False
        try:
            f = self.family
            early = []
            for name, ipset in changes.created.items():
                early += [f"create {name} {ipset.kind} family {f.ipset_family} maxelem {MAXELEM}", f"flush {name}"]
                early += [f"add {name} {m}" for m in ipset.members]
            small = self.netlink and sum(map(len, changes.added.values())) + sum(
                map(len, changes.deleted.values())) <= NETLINK_MEMBERS
            if small:
                self._change_members([(n, m, True) for n, members in changes.added.items() for m in sorted(members)])
            else:
                for name, members in changes.added.items():
                    early += [f"add {name} {m}" for m in sorted(members)]
            if early:
                self._ipset(early)
            self.sets.update({n: None for n in [*changes.created, *changes.added, *changes.deleted]})
            write = {c: rules for c, rules in changes.chains.items() if rules is not None}
            remove = [c for c, rules in changes.chains.items() if rules is None]
            if write or remove:
                after = {**self.chains, **write}
                for c in remove:
                    after.pop(c, None)
                self._write(write, remove, hook_changes(self.chains, after))
                self.chains = after
            if small:
                self._change_members([(n, m, False) for n, members in changes.deleted.items() for m in sorted(members)])
            else:
                late = [f"del {name} {m}" for name, members in changes.deleted.items() for m in sorted(members)]
                if late:
                    self._ipset(late)
            self._destroy(sorted(changes.destroyed))
        except Exception:
            self.chains = None
            raise
        log.debug("policy changes applied (IPv%d): %d chains, %d sets made, %d added to, %d removed from, "
                  "%d destroyed", self.family.version, len(changes.chains), len(changes.created),
                  len(changes.added), len(changes.deleted), len(changes.destroyed))
        return True

    def repair(self, ruleset: Ruleset) -> list[str]:
        """Compares the kernel with ``ruleset`` (the whole desired state) and puts back whatever
        differs: a flushed or deleted chain, a lost jump, a deleted set or member, a stale chain or
        set of ours. Returns what was repaired (logged, one line each)."""
        tables = self._read_tables(ruleset.chains)
        kernel_chains: dict[str, list[str]] = {}
        for table, lines in tables.items():
            kernel_chains.update({qualified(table, c): [] for c in cali_chains(lines)})
            for line in lines:
                parts = line.split(" ", 2)
                if parts[0] == "-A" and qualified(table, parts[1]) in kernel_chains:
                    kernel_chains[qualified(table, parts[1])].append(parts[2] if len(parts) > 2 else "")
        kernel_sets = saved_sets(self.run, self.family)
        repaired = []
        write = {c: rules for c, rules in ruleset.chains.items()
                 if [canonical(r) for r in kernel_chains.get(c, ["<none>"])] != [canonical(r) for r in rules]}
        remove = [c for c in kernel_chains if c not in ruleset.chains]
        wanted = by_table(ruleset.chains)
        jumps = {t: fix for t, lines in tables.items() if (fix := hook_fix(lines, t, list(wanted.get(t, {}))))}
        repaired += [f"chain {c}" for c in write] + [f"stale chain {c}" for c in remove] + [
            f"{t} jumps" for t in jumps]
        set_lines = []
        for name, ipset in ruleset.ipsets.items():
            have = kernel_sets.get(name)
            if have is None:
                set_lines += [f"create {name} {ipset.kind} family {self.family.ipset_family} maxelem {MAXELEM}"]
                set_lines += [f"add {name} {m}" for m in ipset.members]
                repaired.append(f"set {name}")
            elif have.members != tuple(sorted(ipset.members)):
                missing = set(ipset.members) - set(have.members)
                extra = set(have.members) - set(ipset.members)
                set_lines += [f"add {name} {m}" for m in sorted(missing)]
                set_lines += [f"del {name} {m}" for m in sorted(extra)]
                repaired.append(f"set {name} ({len(missing)} members missing, {len(extra)} extra)")
        stale_sets = [n for n in kernel_sets if n not in ruleset.ipsets]
        if set_lines:
            self._ipset(set_lines)
        self._write(write, remove, jumps)
        self._destroy(stale_sets)
        repaired += [f"stale set {n}" for n in stale_sets]
        self.chains = dict(ruleset.chains)
        self.sets = dict(ruleset.ipsets)
        for what in repaired:
            log.warning("policy drift repaired (IPv%d): %s was not as programmed", self.family.version, what)
        return repaired


def drop_if_pristine(run: Runner, family: Family, table: str, builtins: tuple[str, ...]) -> None:
    """With the nf_tables backend, deletes a table left with just its built-in chains, accepting,
    and no rule (an empty table accepts everything, exactly as no table): iptables-save then prints
    what it printed before we started."""
    version = run([family.iptables, "--version"], check=False).stdout
    if "nf_tables" not in version or not shutil.which("nft"):
        return
    tables = [line for line in run([family.save]).stdout.splitlines() if line.startswith("*")]
    body = [line.split(" [")[0] for line in saved_filter(run, family, table) if line not in (f"*{table}", "COMMIT")]
    if f"*{table}" in tables and sorted(body) == sorted(f":{c} ACCEPT" for c in builtins):
        run(["nft", "delete", "table", family.nft_family, table], check=False)


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
    tables = {"filter": lines}
    if set(HOST_MARKERS) & set(cali_chains(lines)):  # host endpoints: mangle and raw hold ours too
        tables.update({t: saved_filter(run, family, t) for t in ("mangle", "raw")})
    removed, text = [], ""
    for table, saved in tables.items():
        chains, jumps = cali_chains(saved), foreign_jumps(saved)
        where = "" if table == "filter" else f"{table} "
        removed += [f"{family.label}{where}jump: {j}" for j in jumps]
        removed += [f"{family.label}{where}chain: {c}" for c in chains]
        if chains or jumps:
            text += restore_text({}, chains, ["-D" + j[2:] for j in jumps], table)
    if text:
        run(restore_command(run, family), text)
    for name in ipsets(run, family):
        run(["ipset", "destroy", name])
        removed.append(f"ipset: {name}")
    if text:
        for table in tables:
            drop_if_pristine(run, family, table, BUILTINS[table])
    return removed
