"""`calicoctl node status`: this node's BGP sessions, read from BIRD 2's control socket.

The socket is `$CALICO_RUN_DIR/bird.ctl` (CALICO_RUN_DIR defaults to
/var/run/calico), where calico-node starts BIRD. `birdc -s SOCK show protocols`
lists the protocols; the BGP ones calico-node writes are named after the peer:
`Mesh_<ip>` (node-to-node mesh), `Global_<ip>` (global peer), `Node_<ip>`
(node-specific peer), the address's dots or colons written as `_`. A BGP
protocol named otherwise is recognised by its description line (`show
protocols all`) when that carries such a name. Output is Calico's classic
table; with no socket, or no answer on it, or when calico-node's readiness.json names a process
that is gone or a loop that stopped turning, "Calico process is not running." and a hint, exit
status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from cni_calico.ctl import output
from cni_calico.host import DEFAULT_RUN_DIR

BIRDC_TIMEOUT = 5.0
PEER_NAME = re.compile(r"^(Global|Node|Mesh)_(.+)$")
PEER_TYPES = {"Global": "global", "Mesh": "node-to-node mesh", "Node": "node specific"}
HEADINGS = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]
STATUS_HELP = """\
Reads BIRD's control socket $CALICO_RUN_DIR/bird.ctl (default
/var/run/calico/bird.ctl) with birdc, so it runs on the node itself, as root.
Exit status 1 when BIRD (calico-node) is not running or does not answer.

examples:
  calicoctl node status
  CALICO_RUN_DIR=/run/calico calicoctl node status
"""


class NotRunning(Exception):
    """BIRD is not there or does not answer; the message is the hint."""


@dataclass
class Peer:
    address: str
    kind: str
    state: str
    since: str
    info: str

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


def peer_from_name(name: str) -> tuple[str, str] | None:
    """`Mesh_192_168_200_2` -> ("192.168.200.2", "node-to-node mesh"); None for other names."""
    match = PEER_NAME.match(name)
    if not match:
        return None
    raw = match.group(2)
    parts = raw.split("_")
    text = ".".join(parts) if len(parts) == 4 and all(p.isdigit() for p in parts) else raw.replace("_", ":")
    try:
        return str(ipaddress.ip_address(text)), PEER_TYPES[match.group(1)]
    except ValueError:
        return None


def parse_protocols(text: str, descriptions: dict[str, str] | None = None) -> tuple[list[Peer], list[str]]:
    """BGP peers in `show protocols` output, and the names of BGP protocols not recognised."""
    peers, unknown = [], []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 5 or cols[1] != "BGP":
            continue
        found = peer_from_name(cols[0]) or peer_from_name((descriptions or {}).get(cols[0], ""))
        if found is None:
            unknown.append(cols[0])
            continue
        since, rest = cols[4], cols[5:]
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", since) and rest and re.match(r"\d{2}:\d{2}", rest[0]):
            since, rest = f"{since} {rest[0]}", rest[1:]  # an ISO long time format: date and time
        peers.append(Peer(found[0], found[1], cols[3], re.sub(r"\.\d+$", "", since), " ".join(rest)))
    return peers, unknown


def parse_descriptions(text: str) -> dict[str, str]:
    """protocol name -> its description, from `show protocols all`."""
    out, current = {}, ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
        elif line.strip().startswith("Description:") and current:
            out[current] = line.split(":", 1)[1].strip()
    return out


def birdc(socket_path: str, *command: str) -> str:
    exe = shutil.which("birdc") or shutil.which("birdc", path="/usr/sbin:/sbin")
    if exe is None:
        raise NotRunning("birdc (Debian package bird2) is not installed, so BIRD cannot be asked")
    try:
        proc = subprocess.run([exe, "-s", socket_path, *command], capture_output=True, text=True,
                              timeout=BIRDC_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise NotRunning(f"BIRD did not answer on {socket_path} within {BIRDC_TIMEOUT:.0f} s") from None
    if proc.returncode != 0 or not proc.stdout.startswith("BIRD"):
        detail = " ".join((proc.stderr or proc.stdout).split()) or f"birdc exited with {proc.returncode}"
        raise NotRunning(f"BIRD does not answer on {socket_path}: {detail}")
    return proc.stdout


def status(run_dir: str) -> list[Peer]:
    socket_path = os.path.join(run_dir, "bird.ctl")
    if not os.path.exists(socket_path):
        raise NotRunning(f"no BIRD control socket at {socket_path}: is calico-node running on this host? "
                         "(set CALICO_RUN_DIR if it uses another run directory)")
    peers, unknown = parse_protocols(birdc(socket_path, "show", "protocols"))
    if unknown:
        peers, _ = parse_protocols(birdc(socket_path, "show", "protocols"),
                                   parse_descriptions(birdc(socket_path, "show", "protocols", "all")))
    return peers


def check_agent(run_dir: str):
    """calico-node's own state (cni_calico.node.readiness): NotRunning when it wrote one and is now dead
    or stuck, since the BIRD a killed calico-node leaves behind still answers. None when there is no
    state at all (BIRD run without calico-node): then BIRD alone decides, as before."""
    from cni_calico.node import readiness

    state = readiness.read_state(run_dir)
    if state is not None:
        dead = state.live_problems()
        if dead:
            raise NotRunning(f"{dead[0]} ({os.path.join(run_dir, readiness.FILE)}); "
                             "BIRD may still answer with the routes it had")
    return state


def run_status(args: argparse.Namespace) -> int:
    try:
        run_dir = os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR
        state = check_agent(run_dir)
        peers = status(run_dir)
    except NotRunning as exc:
        print("Calico process is not running.")
        print(str(exc), file=sys.stderr)
        return 1
    print("Calico process is running.")
    problems = state.ready_problems() if state is not None else []
    for problem in problems:
        print(f"Calico node is not ready: {problem}")
    for version in (4, 6):
        print(f"\nIPv{version} BGP status")
        rows = [[p.address, p.kind, p.state, p.since, p.info] for p in peers if p.version == version]
        if rows:
            print(output.box(HEADINGS, rows), end="")
        else:
            print(f"No IPv{version} peers found.")
    print()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `node status`, `node diags` and `node checksystem` to calicoctl's command parser."""
    from cni_calico.ctl import node_checksystem, node_diags

    node = sub.add_parser("node", help="Calico node: status of its BGP sessions, diagnostics, system check.",
                          description="Calico node.",
                          epilog="examples:\n  calicoctl node status\n  calicoctl node diags\n"
                                 "  calicoctl node checksystem\n",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = node.add_subparsers(dest="node_command", metavar="<command>")
    verbs.required = True
    summary = "Show this node's Calico status and BGP peers (from BIRD)."
    st = verbs.add_parser("status", help=summary, description=summary, epilog=STATUS_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    st.set_defaults(func=run_status)
    node_diags.register(verbs)
    node_checksystem.register(verbs)
