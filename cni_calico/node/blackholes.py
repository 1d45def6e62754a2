"""The blackhole route of each of this node's blocks, checked in the kernel (part of the drift check).

BIRD installs them (birdconf: a static `blackhole` per local block, exported to the kernel with
proto bird and metric 32) and puts back one someone deleted at its next kernel scan; this check,
at calico-node's refresh interval, catches one BIRD has not restored (BIRD stopped, or between its
scans) and installs it exactly as BIRD would, so BIRD takes it for its own.
"""

from __future__ import annotations

import ipaddress
import socket

RTPROT_BIRD = 12
BIRD_METRIC = 32
RTN_BLACKHOLE = 6


def missing(blocks: list[str]) -> list[str]:
    """The blocks whose blackhole route is not in the kernel."""
    from pyroute2 import IPRoute

    have: set[str] = set()
    with IPRoute() as ipr:
        for family in {socket.AF_INET6 if ":" in b else socket.AF_INET for b in blocks}:
            have |= {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(family=family)
                     if r["type"] == RTN_BLACKHOLE}
    return [b for b in blocks if str(ipaddress.ip_network(b)) not in have]


def restore(blocks: list[str]) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for block in blocks:
            ipr.route("replace", dst=block, type="blackhole", proto=RTPROT_BIRD, priority=BIRD_METRIC)
