"""The `calicoctl ipam` command tree: show, check, release, configure, with their help and examples.

The work is done in `ipam_cmd`, imported only when an ipam command runs.
"""

from __future__ import annotations

import argparse

from cni_calico.ctl.config import DEFAULT_CONFIG

RAW = argparse.RawDescriptionHelpFormatter
IPAM_HELP = """\
Calico IP address management (IPAM) data in etcd: IP pools are cut into
blocks (affine to a node); every allocated address belongs to a handle
(<network>.<container-id>) and, once the pod is up, to a WorkloadEndpoint.

examples:
  calicoctl ipam show                      usage per IP pool
  calicoctl ipam show --show-blocks        usage per block too
  calicoctl ipam show --ip=10.60.0.5       who holds an address
  calicoctl ipam check -o report.json      find leaked addresses and handles
  calicoctl ipam release --from-report=report.json
  calicoctl ipam configure --strictaffinity=true
  calicoctl ipam split 4 --name=pool1      (with the datastore locked)
"""
SUBCOMMANDS = {
    "show": ("Show IPAM usage, one address's holder, or the IPAM configuration.", """\
Without options: one row per IP pool (total, in use, reserved by an
IPReservation, free), as real calicoctl. --show-blocks adds a row per block
(blocks whose pool was deleted are listed too). --ip tells whether an address is allocated, its handle and
attributes, its block, and the WorkloadEndpoint using it. --show-borrowed lists
the addresses a node took from another node's block (IP, BORROWING-NODE,
BLOCK, BLOCK OWNER, TYPE, ALLOCATED-TO), as real calicoctl.

examples:
  calicoctl ipam show
  calicoctl ipam show --show-blocks
  calicoctl ipam show --show-borrowed
  calicoctl ipam show --ip=10.60.0.5
  calicoctl ipam show --show-configuration
"""),
    "check": ("Check IPAM for leaks and inconsistencies.", """\
Compares every allocation with the WorkloadEndpoints (and nodes' tunnel
addresses). Reported problems: allocated addresses no endpoint uses (leaked:
e.g. a CNI plugin killed during ADD), endpoint addresses not allocated to that
endpoint, handles whose blocks do not hold what they count (a handle holding
nothing is leaked). Problems are always listed; the exit status is 0 when the
check ran. -o writes a JSON report for `ipam release --from-report`.

examples:
  calicoctl ipam check
  calicoctl ipam check -o /tmp/ipam-report.json
"""),
    "release": ("Release an address, or every leaked address of a report.", """\
--ip releases one address whatever its handle, but never while a
WorkloadEndpoint lists it. --from-report releases the leaked addresses and
handles of `ipam check -o` reports; given several times, only what every
report lists is released (take reports some minutes apart to be sure). Each
address is re-checked against etcd first and skipped if an endpoint uses it
now, if its handle changed since the report, or if that handle no longer
holds it. A report from another calicoctl version is refused unless --force.

examples:
  calicoctl ipam release --ip=10.60.0.5
  calicoctl ipam check -o r1.json; sleep 300; calicoctl ipam check -o r2.json
  calicoctl ipam release --from-report=r1.json --from-report=r2.json
"""),
    "configure": ("Change the IPAM configuration (/calico/ipam/v2/config).", """\
With strict affinity on, a node only uses addresses of blocks affine to it (no
borrowing from other nodes' blocks). The same settings are the IPAMConfig
resource named default (calicoctl get ipamconfig default -o yaml).

examples:
  calicoctl ipam configure --strictaffinity=true
  calicoctl ipam configure --strictaffinity=true --max-blocks-per-host=4
  calicoctl ipam configure --ip-cooldown-seconds=30
"""),
    "split": ("Split an IP pool into the specified number of smaller IP pools.", """\
Split an IP pool into NUMBER (a power of two) smaller pools of equal size,
named split-<name>-<i>, each with the original's settings; the original is
deleted, all in one etcd transaction. The datastore must be locked first
(calicoctl datastore migrate lock), so nothing allocates meanwhile; unlock it
afterwards. Blocks already carved from the pool are kept.

examples:
  calicoctl datastore migrate lock
  calicoctl ipam split 4 --name=my-pool
  calicoctl ipam split 2 --cidr=10.0.0.0/16
  calicoctl datastore migrate unlock
"""),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `ipam` and its subcommands to calicoctl's command parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG",
                        help=f"CalicoAPIConfig file; default {DEFAULT_CONFIG} if it exists, else ETCD_* variables")
    common.add_argument("--allow-version-mismatch", action="store_true", help=argparse.SUPPRESS)
    ipam = sub.add_parser("ipam", help="IP address management: show, check, release, configure, split.",
                          description="IP address management.", epilog=IPAM_HELP, formatter_class=RAW)
    verbs = ipam.add_subparsers(dest="ipam_command", metavar="<command>")
    verbs.required = True
    parsers = {}
    for name, (summary, details) in SUBCOMMANDS.items():
        parsers[name] = verbs.add_parser(name, parents=[common], help=summary, description=summary, epilog=details,
                                         formatter_class=RAW)
    show = parsers["show"]
    show.add_argument("--ip", metavar="IP", help="show who holds this address")
    show.add_argument("--show-blocks", action="store_true", help="one row per block too, with its node affinity")
    show.add_argument("--show-configuration", action="store_true", help="show the IPAM configuration")
    show.add_argument("--show-borrowed", action="store_true",
                      help="list the addresses borrowed from other nodes' blocks")
    show.set_defaults(func=_lazy("run_show"))
    check = parsers["check"]
    check.add_argument("-o", "--output", metavar="FILE", help="write a JSON report of the problems found")
    check.add_argument("--show-all-ips", action="store_true", help="list every allocation, not only the problems")
    check.add_argument("--unfinished-grace", metavar="SECONDS", type=float, default=60.0,
                       help="an endpoint whose ADD has not finished after this long is abandoned (a killed "
                            "ADD): its addresses are reported as leaked (default 60)")
    check.add_argument("--show-problem-ips", action="store_true", help="(accepted; problems are always listed)")
    check.set_defaults(func=_lazy("run_check"))
    release = parsers["release"]
    release.add_argument("--ip", metavar="IP", help="the address to release")
    release.add_argument("--from-report", metavar="REPORT", action="append",
                         help="release the leaks of an ipam check report (repeat: only those in every report)")
    release.add_argument("--force", action="store_true", help="accept reports from another calicoctl version")
    release.set_defaults(func=_lazy("run_release"))
    configure = parsers["configure"]
    configure.add_argument("--strictaffinity", metavar="true|false", help="no borrowing from other nodes' blocks")
    configure.add_argument("--max-blocks-per-host", metavar="N",
                           help="blocks a node may claim per IP version (0: Calico's 20); needs strict affinity")
    configure.add_argument("--ip-cooldown-seconds", metavar="N",
                           help="how long a released address rests before it is handed out again (0: not at all)")
    configure.set_defaults(func=_lazy("run_configure"))
    split = parsers["split"]
    split.add_argument("number", metavar="NUMBER", help="how many pools to make (a power of two)")
    split.add_argument("--cidr", default="", help="CIDR of the IP pool to split")
    split.add_argument("--name", default="", help="name of the IP pool to split")
    split.set_defaults(func=_lazy_split)


def _lazy_split(args: argparse.Namespace) -> int:
    from cni_calico.ctl import ipam_split

    return ipam_split.run_split(args)


def _lazy(name: str):
    def run(args: argparse.Namespace) -> int:
        from cni_calico.ctl import ipam_cmd

        return getattr(ipam_cmd, name)(args)

    return run
