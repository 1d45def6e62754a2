"""`calico-node`: the long-running node agent, configured by the classic environment variables."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="calico-node",
        description="Registers this node in etcd and keeps BIRD's BGP configuration and the policy rules "
        "in step with it.",
        epilog="Configured by environment: NODENAME, IP / IP_AUTODETECTION_METHOD, ETCD_ENDPOINTS, "
        "CALICO_NETWORKING_BACKEND, CALICO_IPV4POOL_CIDR, CALICO_IPV4POOL_IPIP, CALICO_IPV4POOL_VXLAN, "
        "NO_DEFAULT_POOLS, AS, CALICO_RUN_DIR, CALICO_LIB_DIR.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove calico-node's policy and outgoing NAT rules (iptables and ip6tables chains, "
                        "jumps, ipsets) from this network namespace and exit")
    parser.add_argument("--ready", action="store_true",
                        help="readiness probe: exit 0 if the calico-node of this host (CALICO_RUN_DIR) is running "
                        "and can serve every pool that selects it; else exit 1 saying why")
    parser.add_argument("--install-cni", action="store_true",
                        help="install the CNI plugin on this host and keep its kubeconfig current, as Calico's "
                        "install-cni init container (see cni_calico/node/install_cni.py for the environment)")
    parser.add_argument("--serve-cni", action="store_true", help=argparse.SUPPRESS)  # calico-node's own child
    args = parser.parse_args(argv)
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

        print(__version__)
        return 0
    from cni_calico.node.config import NodeConfigError, from_env

    try:
        cfg = from_env()
    except NodeConfigError as exc:
        sys.stderr.write(f"calico-node: {exc}\n")
        return 2
    from cni_calico.logsetup import LEVELS, setup_stderr

    setup_stderr(cfg.log_level if cfg.log_level in LEVELS else "info")
    if args.serve_cni:
        from cni_calico.node.cni_process import serve

        return serve(cfg.run_dir)
    log = logging.getLogger("calico-node")
    from cni_calico.datastore import DatastoreError
    from cni_calico.node.agent import Agent
    from cni_calico.node.autodetect import AutodetectError

    agent = Agent(cfg)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
    except (AutodetectError, DatastoreError) as exc:
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
    from cni_calico.node import readiness

    run_dir = os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR
    problems = readiness.read(run_dir)
    if problems is None:
        sys.stderr.write(f"calico-node is not ready: it is not running (no {readiness.FILE} in {run_dir})\n")
        return 1
    for problem in problems:
        sys.stderr.write(f"calico-node is not ready: {problem}\n")
    return 1 if problems else 0
