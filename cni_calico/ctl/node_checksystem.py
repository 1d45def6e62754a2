"""`calicoctl node checksystem`: whether this host can run our calico-node, each need said plainly.

Real calicoctl's shape (the kernel version, then each kernel module with OK / SKIP / FAIL in its
columns, then "System meets minimum system requirements to run Calico!" or exit 1), with what THIS
calico-node needs: the modules of the iptables/ipset dataplane and outgoing NAT it programs (Calico's
list also asks for vfio-pci, ipt_ipvs and xt_bpf, which serve Calico's eBPF and IPVS modes we do not
have), optional ones for IPv6 and the encapsulations, the tools it runs, and the sysctls it relies on.
A module counts as present when /sys/module has it, modules.dep or modules.builtin lists it, or the
kernel config (`--kernel-config`, else /proc/config.gz, /boot/config-<release>, …) builds it (=y or =m).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import shutil
from dataclasses import dataclass

MIN_KERNEL = (2, 6, 24)  # Calico's minimum


@dataclass(frozen=True)
class Module:
    name: str
    config: tuple[str, ...]  # kernel config options that build it
    alternatives: tuple[str, ...] = ()
    optional: str = ""  # why it may be missing ("" = required)


MODULES = (
    Module("ip_set", ("CONFIG_IP_SET",)),
    Module("ip_tables", ("CONFIG_IP_NF_IPTABLES", "CONFIG_NFT_COMPAT")),
    Module("ip6_tables", ("CONFIG_IP6_NF_IPTABLES", "CONFIG_NFT_COMPAT"), optional="IPv6 policy"),
    Module("xt_set", ("CONFIG_NETFILTER_XT_SET",), ("ipt_set",)),
    Module("xt_conntrack", ("CONFIG_NETFILTER_XT_MATCH_CONNTRACK",)),
    Module("xt_mark", ("CONFIG_NETFILTER_XT_MARK", "CONFIG_NETFILTER_XT_TARGET_MARK")),
    Module("xt_multiport", ("CONFIG_NETFILTER_XT_MATCH_MULTIPORT", "CONFIG_IP_NF_MATCH_MULTIPORT")),
    Module("xt_comment", ("CONFIG_NETFILTER_XT_MATCH_COMMENT",)),
    Module("xt_MASQUERADE", ("CONFIG_NETFILTER_XT_TARGET_MASQUERADE", "CONFIG_IP_NF_TARGET_MASQUERADE"),
           ("ipt_MASQUERADE",)),
    Module("nf_nat", ("CONFIG_NF_NAT",)),
    Module("ipip", ("CONFIG_NET_IPIP",), optional="IPIP pools"),
    Module("vxlan", ("CONFIG_VXLAN",), optional="VXLAN pools"),
)
TOOLS = (("ip", ""), ("iptables-save", ""), ("iptables-restore", ""), ("ipset", ""),
         ("ip6tables-save", "IPv6 policy"), ("ip6tables-restore", "IPv6 policy"),
         ("bird", "the BGP backend"), ("birdc", "the BGP backend"))


def print_result(value: str, result: str) -> None:
    print(f"\t\t{value:<20}\t\t\t\t\t{result}")


def kernel_config(override: str, release: str) -> str:
    """The kernel's build config as text ("" when none is found)."""
    candidates = [override] if override else ["/proc/config.gz", "/usr/src/linux/.config", f"/boot/config-{release}",
                                              f"/usr/src/linux-{release}/.config",
                                              f"/usr/src/linux-headers-{release}/.config",
                                              f"/lib/modules/{release}/build/.config"]
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt") as f:
                    return f.read()
            with open(path) as f:
                return f.read()
        except OSError:
            continue
    return ""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def module_present(module: Module, loaded: set[str], listed: str, config: str) -> bool:
    """`loaded`: /sys/module's names; `listed`: modules.dep + modules.builtin; `config`: the kernel config."""
    for name in (module.name, *module.alternatives):
        if name.replace("-", "_") in loaded or re.search(rf"/{re.escape(name)}\.ko", listed):
            return True
    return any(re.search(rf"^{re.escape(option)}=[ym]$", config, re.M) for option in module.config)


def kernel_version_ok(release: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", release.split("-")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers))) >= MIN_KERNEL


def checksystem(kernel_config_path: str = "") -> bool:
    ok = True
    release = platform.release()
    print("Checking kernel version...")
    if kernel_version_ok(release):
        print_result(release, "OK")
    else:
        print_result(release, "FAIL")
        print(f"Minimum kernel version to run Calico is {'.'.join(map(str, MIN_KERNEL))}. "
              f"Detected kernel version: {release}")
        ok = False
    print("Checking kernel modules...")
    loaded = set(os.listdir("/sys/module")) if os.path.isdir("/sys/module") else set()
    listed = _read(f"/lib/modules/{release}/modules.dep") + _read(f"/lib/modules/{release}/modules.builtin")
    config = kernel_config(kernel_config_path, release)
    for module in MODULES:
        if module_present(module, loaded, listed, config):
            print_result(module.name, "OK")
        elif module.optional:
            print(f"WARNING: Unable to detect optional module {module.name} (needed for {module.optional}); "
                  "continuing")
            print_result(module.name, "SKIP")
        else:
            print(f"WARNING: Unable to detect the {module.name} module as Loaded/Builtin module or in the kernel "
                  "config")
            print_result(module.name, "FAIL")
            ok = False
    print("Checking tools...")
    for tool, optional in TOOLS:
        if shutil.which(tool):
            print_result(tool, "OK")
        elif optional:
            print(f"WARNING: {tool} not found on PATH (needed for {optional}); continuing")
            print_result(tool, "SKIP")
        else:
            print(f"WARNING: {tool} not found on PATH")
            print_result(tool, "FAIL")
            ok = False
    print("Checking sysctls...")
    ok = _sysctls() and ok
    if not ok:
        print("system doesn't meet one or more minimum systems requirements to run Calico")
        return False
    print("System meets minimum system requirements to run Calico!")
    return True


def _sysctls() -> bool:
    ok = True
    if os.path.exists("/proc/sys/net/ipv4/ip_forward"):
        print_result("net.ipv4.ip_forward", "OK")  # calico-node sets it to 1 itself
    else:
        print("WARNING: /proc/sys/net/ipv4/ip_forward is missing: this kernel cannot forward IPv4")
        print_result("net.ipv4.ip_forward", "FAIL")
        ok = False
    rp_filter = _read("/proc/sys/net/ipv4/conf/all/rp_filter").strip()
    if rp_filter == "2":
        # Felix refuses loose reverse-path filtering: a workload could spoof another's address.
        print("WARNING: net.ipv4.conf.all.rp_filter is 2 (loose): set it to 1 (strict) or 0")
        print_result("net.ipv4.conf.all.rp_filter", "FAIL")
        ok = False
    else:
        print_result("net.ipv4.conf.all.rp_filter", "OK")
    return ok


def run_checksystem(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("Need super user privileges: Operation not permitted")
        return 1
    return 0 if checksystem(args.kernel_config) else 1


def register(verbs: argparse._SubParsersAction) -> None:
    summary = "Verify the compute host is able to run a Calico node instance"
    p = verbs.add_parser("checksystem", help=summary, description=summary + ".",
                         epilog="Checks the kernel version, the kernel modules, tools and sysctls this calico-node\n"
                                "uses; exit status 1 naming what is missing.\n\nexamples:\n"
                                "  calicoctl node checksystem\n"
                                "  calicoctl node checksystem --kernel-config /boot/config-6.1.0\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel-config", default="", help="Override the kernel config file location")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_checksystem)
