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
    parser.add_argument("--serve-cni", action="store_true", help=argparse.SUPPRESS)  # calico-node's own child
    args = parser.parse_args(argv)
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
