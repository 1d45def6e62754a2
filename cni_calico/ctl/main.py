"""calicoctl's entry: the command tree, logging, and every error turned into one line and exit status 1.

Command families register themselves (`register(subparsers)`) from the modules
listed in COMMANDS, so `ipam`, `node` and the rest slot in without touching the
others. Nothing below prints a traceback for a user's mistake: files,
validation, configuration and datastore errors are all one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

log = logging.getLogger(__name__)

COMMANDS = ("cni_calico.ctl.resources_cmd", "cni_calico.ctl.patch", "cni_calico.ctl.label", "cni_calico.ctl.ipam_args",
            "cni_calico.ctl.node_cmd", "cni_calico.ctl.datastore_cmd", "cni_calico.ctl.convert",
            "cni_calico.ctl.version_cmd", "cni_calico.ctl.completion")  # each: register(sub)
LOG_LEVELS = ("debug", "info", "warning", "error", "fatal", "panic")
USAGE_EXAMPLES = """\
examples:
  calicoctl create -f pools.yaml         create the resources in a file
  calicoctl get ippools -o wide          list IP pools
  calicoctl delete ippool pool1          delete one pool
  calicoctl ipam show --show-blocks      address usage per pool and block
  calicoctl ipam check -o report.json    find leaked addresses
  calicoctl patch ippool pool1 -p '{"spec":{"disabled":true}}'
  calicoctl label nodes node1 zone=a     set a label
  calicoctl get ippools -o go-template='{{range .}}{{range .Items}}{{.Spec.CIDR}} {{end}}{{end}}'
  calicoctl node status                  BGP sessions of this node (BIRD)
  calicoctl datastore migrate lock       stop changes (then export, import, ipam split)
  calicoctl convert -f v1-pools.yaml     Calico v1 resources as v3
  calicoctl version                      client and cluster versions
  source <(calicoctl completion bash)    TAB completion in bash
  calicoctl <command> --help             help and examples for one command

The datastore is etcd v3: --config FILE (a CalicoAPIConfig), else
/etc/calico/calicoctl.cfg, else ETCD_ENDPOINTS, ETCD_KEY_FILE, ETCD_CERT_FILE,
ETCD_CA_CERT_FILE (and DATASTORE_TYPE=etcdv3) from the environment.
"""


class Parser(argparse.ArgumentParser):
    """argparse with calicoctl's exit status: 1 for a usage error, like any other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="calicoctl",
        description="Manage Calico resources, IPAM and nodes in the etcd datastore.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-l", "--log-level", default="warning", choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"log level on stderr: {', '.join(LOG_LEVELS)} (default warning)")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        _intermix(parser, args, extra)
    except SystemExit as exc:  # --help (0) or a usage error (1)
        return 0 if exc.code in (0, None) else 1
    from cni_calico.logsetup import setup_stderr

    setup_stderr(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the one place an error becomes an exit status
        _report(exc)
    return 1


def _intermix(parser: Parser, args: argparse.Namespace, extra: list[str]) -> None:
    """Names after options (`get ippool -o yaml pool1`), which argparse alone leaves unparsed."""
    if extra and hasattr(args, "names") and not any(e.startswith("-") for e in extra):
        if args.kind is None:
            args.kind = extra.pop(0)
        args.names = [*args.names, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _report(exc: Exception) -> None:
    from cni_calico.ctl import CommandError
    from cni_calico.ctl.config import ConfigError
    from cni_calico.datastore import Failure
    from cni_calico.resources import DocumentError, ResourceError

    if isinstance(exc, (Failure, ConfigError, DocumentError, ResourceError, CommandError)):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    else:
        log.debug("unexpected error", exc_info=True)
        message = f"internal error: {exc!r} (run with --log-level debug for the traceback)"
    print(" ".join(message.split()), file=sys.stderr)
