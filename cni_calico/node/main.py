"""`calico-node`: the long-running node agent, configured by the classic environment variables."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

# Calico's probe flags (single dash, as Go's flag package; the double dash works too) -> our check.
PROBE_FLAGS = {
    "felix-live": "felix-live", "felix-ready": "felix-ready", "felix": "felix-ready",
    "bird-live": "bird-live", "bird-ready": "bird-ready", "bird": "bird-ready",
    "bird6-live": "bird6-live", "bird6-ready": "bird6-ready", "bird6": "bird6-ready",
}


def _epilog() -> str:
    from cni_calico.node.config import VARIABLES

    width = max(map(len, VARIABLES))
    lines = [f"  {name.ljust(width)}  {doc}" for name, doc in VARIABLES.items()]
    return ("environment (every variable calico-node reads; a bad value stops it at start, naming the "
            "variable):\n" + "\n".join(lines))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calico-node",
        description="Registers this node in etcd and keeps BIRD's BGP configuration and the policy rules "
        "in step with it.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("-v", "--version", action="store_true", help="print the version (v<version>) and exit")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove calico-node's policy and outgoing NAT rules (iptables and ip6tables chains, "
                        "jumps, ipsets) from this network namespace and exit")
    parser.add_argument("--ready", action="store_true",
                        help="readiness probe: exit 0 if the calico-node of this host (CALICO_RUN_DIR) is running, "
                        "in sync with etcd and can serve every pool that selects it; else exit 1 saying why")
    helps = {
        "felix-live": "probe: exit 0 if calico-node runs and its loop turns",
        "felix-ready": "probe: as --ready",
        "bird-live": "probe: calico-node is live and BIRD answers on its control socket",
        "bird-ready": "probe: BIRD's IPv4 BGP sessions are Established (or none is configured)",
        "bird6-live": "probe: as -bird-live (one BIRD 2 serves both families)",
        "bird6-ready": "probe: BIRD's IPv6 BGP sessions are Established (or none is configured)",
    }
    for flag, check in PROBE_FLAGS.items():
        parser.add_argument(f"-{flag}", f"--{flag}", action="append_const", const=check, dest="checks",
                            help=helps.get(flag, argparse.SUPPRESS))
    parser.add_argument("-threshold-time", "--threshold-time", type=_duration, default=None, metavar="DURATION",
                        help="with -bird-ready/-bird6-ready: how long after start every BGP session must be "
                        "up (a Go duration, default 30s), as Calico's")
    parser.add_argument("--install-cni", action="store_true",
                        help="install the CNI plugin on this host and keep its kubeconfig current, as Calico's "
                        "install-cni init container (see cni_calico/node/install_cni.py for the environment)")
    parser.add_argument("--serve-cni", action="store_true", help=argparse.SUPPRESS)  # calico-node's own child
    return parser


def _duration(text: str) -> float:
    from cni_calico.node.probes import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.checks:
        from cni_calico.node import probes

        threshold = probes.THRESHOLD if args.threshold_time is None else args.threshold_time
        return probes.run(list(dict.fromkeys(args.checks)), threshold=threshold)
    if args.ready:
        return ready()
    if args.install_cni:
        from cni_calico.logsetup import setup_stderr
        from cni_calico.node.install_cni import main as install_cni

        setup_stderr("info")
        return install_cni()
    if args.cleanup:
        from cni_calico.policy import natout
        from cni_calico.policy.iptables import PolicyError, cleanup, ipv6_available

        try:
            for what in natout.cleanup(versions=(4, 6) if ipv6_available() else (4,)) + cleanup():
                print(f"removed {what}")
        except PolicyError as exc:
            sys.stderr.write(f"calico-node: {exc}\n")
            return 1
        return 0
    if args.version:
        from cni_calico import __version__

        print(f"v{__version__}")
        return 0
    from cni_calico.node.config import NodeConfigError, from_env

    try:
        cfg = from_env()
    except NodeConfigError as exc:
        sys.stderr.write(f"calico-node: {exc}\n")
        return 2
    from cni_calico.logsetup import setup_stderr

    setup_stderr(cfg.log_level)
    if args.serve_cni:
        from cni_calico.node.cni_process import serve

        return serve(cfg.run_dir)
    log = logging.getLogger("calico-node")
    if cfg.nodename_source != "NODENAME":
        log.warning("NODENAME is not set: using node name %s from %s (set NODENAME to choose it)",
                    cfg.nodename, cfg.nodename_source)
    from cni_calico.datastore import DatastoreConfigError, DatastoreError
    from cni_calico.node.agent import Agent
    from cni_calico.node.autodetect import AutodetectError
    from cni_calico.node.identity import NodeConflict

    try:
        agent = Agent(cfg)
    except DatastoreConfigError as exc:
        sys.stderr.write(f"calico-node: {exc.msg}\n")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
    except (AutodetectError, DatastoreError, NodeConflict) as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("calico-node running")
    try:
        agent.run()
    finally:
        agent.shutdown()
    log.info("calico-node stopped")
    return 0


def ready() -> int:
    import os

    from cni_calico.host import DEFAULT_RUN_DIR
    from cni_calico.node import probes

    run_dir = os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR
    problems = probes.felix_ready(run_dir)
    for problem in problems:
        sys.stderr.write(f"calico-node is not ready: {problem}\n")
    return 1 if problems else 0
