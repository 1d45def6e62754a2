"""The dataplane's transactions, against a recording fake of iptables/ipset: what is written, in which
order, and what is not written at all."""

from __future__ import annotations

import subprocess

import pytest

from cni_calico.endpoints import default_profile
from cni_calico.policy.iptables import Dataplane, PolicyError, cleanup
from cni_calico.policy.layout import JUMP, IpSet, Ruleset, set_name
from cni_calico.policy.sync import PolicySync


class Fake:
    def __init__(self, save: str = "", sets: str = "", fail: str = "", legacy: bool = False, save6: str = "",
                 version: str = "iptables v1.8.9 (legacy)") -> None:
        self.save, self.sets, self.fail, self.legacy, self.save6 = save, sets, fail, legacy, save6
        self.outputs = {"iptables --version": version, "ip6tables --version": version.replace("ip", "ip6", 1)}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, args: list[str], stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append((" ".join(args), stdin))
        out = {"iptables-save -t filter": self.save, "ip6tables-save -t filter": self.save6,
               "ipset list -n": self.sets, **self.outputs}.get(" ".join(args), "")
        if args[-1] == "--help" and self.legacy:
            out = "  [ --wait=<seconds>\n"
        rc = 1 if self.fail and self.fail in " ".join(args) else 0
        if rc and check:
            raise PolicyError(f"{args[0]} failed")
        return subprocess.CompletedProcess(args, rc, out, "")

    def commands(self) -> list[str]:
        return [c for c, _ in self.calls]

    def restore(self, tool: str = "iptables-restore") -> str:
        return next(stdin for c, stdin in self.calls if c.startswith(f"{tool} --noflush"))


def ruleset(**chains: tuple[str, ...]) -> Ruleset:
    base = {"cali-FORWARD": ("-j ACCEPT",)}
    return Ruleset({**base, **{k.replace("_", "-"): v for k, v in chains.items()}},
                   {set_name("s", "a"): IpSet("hash:net", ("10.0.0.1",))})


def test_first_apply_writes_everything_then_nothing_when_unchanged():
    fake = Fake(save="*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j site\nCOMMIT\n")
    dp = Dataplane(fake)
    assert dp.apply(ruleset(cali_x=("-j DROP",)))
    assert fake.commands() == ["iptables-restore --help", "iptables-save -t filter", "ipset list -n",
                               "ipset restore -exist", "iptables-restore --noflush"]
    text = fake.restore()
    assert text.startswith("*filter\n:cali-FORWARD - [0:0]\n:cali-x - [0:0]\n")
    assert f"-I FORWARD 1 {JUMP}\n" in text and "-A cali-x -j DROP\n" in text and text.endswith("COMMIT\n")
    fake.calls.clear()
    assert not dp.apply(ruleset(cali_x=("-j DROP",)))
    assert fake.calls == []


def test_later_applies_write_only_changed_chains_and_delete_stale_ones():
    dp = Dataplane(Fake())
    dp.apply(ruleset(cali_x=("-j DROP",), cali_y=("-j DROP",)))
    fake = dp.run = Fake()
    dp.apply(ruleset(cali_x=("-j RETURN",)))
    assert fake.commands() == ["iptables-restore --noflush"]
    assert fake.restore() == "*filter\n:cali-x - [0:0]\n:cali-y - [0:0]\n-A cali-x -j RETURN\n-X cali-y\nCOMMIT\n"


def test_changed_sets_are_swapped_in_and_unused_ones_destroyed_after_the_rules():
    dp = Dataplane(Fake(sets="cali40s:old\nsite-set\n"))
    dp.apply(ruleset())
    fake = dp.run = Fake()
    name = set_name("s", "a")
    new = Ruleset({"cali-FORWARD": ("-j DROP",)}, {name: IpSet("hash:net", ("10.0.0.2",))})
    dp.apply(new)
    script = fake.calls[0][1]
    temp = set_name("t", name)
    assert script.splitlines() == [f"create {temp} hash:net family inet maxelem 1048576 -exist", f"flush {temp}",
                                   f"add {temp} 10.0.0.2", f"swap {temp} {name}", f"destroy {temp}"]
    dp.run = fake = Fake()
    dp.apply(Ruleset({"cali-FORWARD": ("-j ACCEPT",)}, {}))
    assert fake.commands() == ["iptables-restore --noflush", f"ipset destroy {name}"]


def test_the_first_apply_swaps_sets_it_finds_and_removes_stale_ones_but_not_foreign_ones():
    fake = Fake(sets=f"{set_name('s', 'a')}\ncali40s:stale\n")
    Dataplane(fake).apply(ruleset())
    assert next(stdin for c, stdin in fake.calls if c == "ipset restore -exist").count("swap ") == 1
    assert fake.commands()[-1] == "ipset destroy cali40s:stale"
    assert not any("site" in c for c in fake.commands())


def test_jump_is_kept_when_first_and_moved_to_the_top_otherwise():
    first = Fake(save=f"*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD {JUMP}\n-A FORWARD -j site\n:cali-FORWARD - [0:0]\n")
    Dataplane(first).apply(ruleset())
    assert "FORWARD 1" not in first.restore() and "-D FORWARD" not in first.restore()
    second = Fake(save=f"*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j site\n-A FORWARD {JUMP}\n")
    Dataplane(second).apply(ruleset())
    assert f"-D FORWARD {JUMP}\n-I FORWARD 1 {JUMP}\n" in second.restore()


def test_a_failure_forgets_the_state_so_the_next_apply_rewrites_everything():
    dp = Dataplane(Fake())
    dp.apply(ruleset(cali_x=("-j DROP",)))
    dp.run = Fake(fail="iptables-restore")
    with pytest.raises(PolicyError):
        dp.apply(ruleset(cali_x=("-j RETURN",)))
    fake = dp.run = Fake()
    dp.apply(ruleset(cali_x=("-j RETURN",)))
    assert fake.commands()[0] == "iptables-save -t filter" and ":cali-FORWARD - [0:0]" in fake.restore()


def test_the_lock_is_waited_for_where_iptables_restore_has_one():
    legacy = Fake(legacy=True)
    Dataplane(legacy).apply(ruleset())
    assert "iptables-restore --noflush --wait 10" in legacy.commands()


def test_cleanup_removes_only_what_is_ours():
    fake = Fake(save="\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":site - [0:0]", ":cali-FORWARD - [0:0]",
        ":cali-tw-x - [0:0]", f"-A FORWARD {JUMP}", "-A FORWARD -j site", "-A site -j ACCEPT",
        "-A cali-FORWARD -j cali-tw-x", "COMMIT"]), sets="cali40s:a\nsite-set\n")
    removed = cleanup(fake)
    assert fake.restore() == ("*filter\n:cali-FORWARD - [0:0]\n:cali-tw-x - [0:0]\n"
                              f"-D FORWARD {JUMP}\n-X cali-FORWARD\n-X cali-tw-x\nCOMMIT\n")
    assert "ipset destroy cali40s:a" in fake.commands() and "ipset destroy site-set" not in fake.commands()
    assert removed[:2] == [f"jump: -A FORWARD {JUMP}", "chain: cali-FORWARD"]


# --- the sync component: a snapshot, then changes ----------------------------------------------------


def test_sync_applies_the_snapshot_whole_then_only_changes_and_nothing_when_nothing_changed():
    res = "/calico/resources/v3/projectcalico.org"
    fake = Fake()
    sync = PolicySync("n1", Dataplane(fake), ipv6=False)  # type: ignore[arg-type]
    sync.load([(f"{res}/profiles/k8s", default_profile("k8s").to_value()), (f"{res}/workloadendpoints/default/w", {
        "metadata": {"name": "w", "namespace": "default"},
        "spec": {"node": "n1", "interfaceName": "cali1", "ipNetworks": ["10.0.0.1/32"], "profiles": ["k8s"]}})])
    assert sync.flush() and "-A cali-tw-cali1 -j cali-pri-k8s" in fake.restore()
    assert "iptables-save -t filter" in fake.commands()  # the first apply reads what the kernel holds
    fake.calls.clear()
    assert not sync.flush() and fake.calls == []
    sync.update(f"{res}/globalnetworkpolicies/deny", {"metadata": {"name": "deny"}, "spec": {"selector": "all()"}})
    sync.update(f"{res}/nodes/n2", {"metadata": {"name": "n2"}})  # not policy's: ignored
    assert sync.flush() and "cali-pi-deny" in fake.restore()
    assert "iptables-save -t filter" not in fake.commands()  # a change is applied as a change
    fake.calls.clear()
    sync.update(f"{res}/workloadendpoints/default/far", {"metadata": {"name": "far", "namespace": "default",
        "labels": {"net": "x"}}, "spec": {"node": "n2", "interfaceName": "cali9", "ipNetworks": ["10.0.0.9/32"],
                                         "profiles": ["k8s"]}})
    assert sync.flush() and fake.commands() == ["ipset restore -exist"]  # a remote endpoint: its set alone
    assert "add cali40s:" in fake.calls[0][1] and "10.0.0.9" in fake.calls[0][1]
