"""`calicoctl node diags`: a tarball of what a node's networking problem is diagnosed with.

As real calicoctl's: run on the node, as root; it prints each step ("Dumping routes (IPv4)"), writes each
command's output under `<temp dir>/diagnostics/`, copies the log directory (`--log-dir`, default
/var/log/calico), packs `diagnostics/` into `diags-<YYYYMMDD_HHMMSS>.tar.gz` in that temp dir and says
where ("Diags saved to …"). Ours adds what our calico-node keeps in CALICO_RUN_DIR (BIRD's config, its
protocols and routes through birdc, the readiness report) and the VXLAN state (links, neighbours, FDB).
A command that fails is reported and the rest goes on, as Calico's does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass

from cni_calico.host import DEFAULT_RUN_DIR

DEFAULT_LOG_DIR = "/var/log/calico"
COMMAND_TIMEOUT = 30.0
DIAGS_HELP = """\
Gathers routes, addresses, links, neighbours, iptables/ip6tables/nftables,
ipsets, sockets, calico-node's journal, BIRD's config and state (through
$CALICO_RUN_DIR/bird.ctl) and the Calico logs into one tar.gz, and prints
where it is. Run it on the node, as root.

examples:
  calicoctl node diags
  calicoctl node diags --log-dir /var/log/calico
"""


@dataclass(frozen=True)
class Dump:
    info: str  # the line printed before it ("" prints nothing)
    command: tuple[str, ...]
    filename: str


def dumps(run_dir: str) -> list[Dump]:
    """Calico's list, in its order, then ours."""
    ctl = os.path.join(run_dir, "bird.ctl")
    sockets = Dump("Dumping netstat", ("netstat", "-a", "-n"), "netstat") if shutil.which("netstat") else \
        Dump("Dumping ss", ("ss", "-a", "-n"), "ss")
    return [
        Dump("", ("date",), "date"),
        Dump("", ("hostname",), "hostname"),
        Dump("Dumping routes (IPv4)", ("ip", "-4", "route"), "ipv4_route"),
        Dump("Dumping routes (IPv6)", ("ip", "-6", "route"), "ipv6_route"),
        Dump("Dumping interface info (IPv4)", ("ip", "-4", "addr"), "ipv4_addr"),
        Dump("Dumping interface info (IPv6)", ("ip", "-6", "addr"), "ipv6_addr"),
        Dump("Dumping nftables", ("nft", "-n", "-a", "list", "ruleset"), "nft_ruleset"),
        Dump("Dumping iptables (IPv4)", ("iptables-save", "-c"), "ipv4_tables"),
        Dump("Dumping iptables (IPv6)", ("ip6tables-save", "-c"), "ipv6_tables"),
        Dump("Dumping ipsets", ("ipset", "list"), "ipsets"),
        Dump("Copying journal for calico-node.service", ("journalctl", "-u", "calico-node.service", "--no-pager"),
             "journalctl_calico_node"),
        sockets,
        Dump("Dumping links", ("ip", "-d", "link"), "links"),
        Dump("Dumping neighbours", ("ip", "neigh"), "neighbours"),
        Dump("Dumping the VXLAN FDB", ("bridge", "fdb", "show"), "fdb"),
        Dump("Dumping BIRD protocols", ("birdc", "-s", ctl, "show", "protocols", "all"), "bird_protocols"),
        Dump("Dumping BIRD routes", ("birdc", "-s", ctl, "show", "route", "all"), "bird_routes"),
    ]


def _run(dump: Dump, directory: str) -> bool:
    if dump.info:
        print(dump.info)
    try:
        proc = subprocess.run(dump.command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        output, failed = proc.stdout + proc.stderr, proc.returncode != 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        output, failed = str(exc), True
    if failed:
        print(f"Failed to run command: {' '.join(dump.command)}\nError: {output.strip()}")
        return False
    with open(os.path.join(directory, dump.filename), "w") as f:
        f.write(output)
    return True


def diags(log_dir: str, run_dir: str) -> str:
    """Collects everything, packs it; returns the tarball's path."""
    print("Collecting diagnostics")
    tmp = tempfile.mkdtemp(prefix="calico")
    print("Using temp dir:", tmp)
    directory = os.path.join(tmp, "diagnostics")
    os.makedirs(directory)
    for dump in dumps(run_dir):
        _run(dump, directory)
    print("Copying calico-node's run directory (BIRD config, readiness)")
    for name in ("bird.cfg", "bird6.cfg", "readiness.json"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(directory, name))
    if not os.path.exists(log_dir):
        print(f"Error copying log files: stat {log_dir}: no such file or directory")
    elif os.path.isdir(log_dir):
        print("Copying Calico logs")
        try:
            shutil.copytree(log_dir, os.path.join(directory, "logs"))
        except (OSError, shutil.Error) as exc:
            print(f"Error copying log files: {exc}")
    else:
        print(f"No logs found in {log_dir}; skipping log copying")
    tarball = os.path.join(tmp, f"diags-{time.strftime('%Y%m%d_%H%M%S')}.tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(directory, arcname="diagnostics")
    print(f"\nDiags saved to {tarball}")
    print("If required, you can upload the diagnostics bundle to a file sharing service.")
    return tarball


def run_diags(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("Need super user privileges: Operation not permitted")
        return 1
    diags(args.log_dir, os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR)
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    summary = "Gather a diagnostics bundle for a Calico node"
    p = verbs.add_parser("diags", help=summary, description=summary, epilog=DIAGS_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-dir", default=DEFAULT_LOG_DIR, help="The directory containing Calico logs "
                   f"(default {DEFAULT_LOG_DIR})")
    p.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_diags)
