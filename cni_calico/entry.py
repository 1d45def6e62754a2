"""One executable, several names: dispatch on the name we were called by (as Calico does).

Kept tiny: it is the first thing every plugin call imports.
"""

from __future__ import annotations

import os
import sys

NAMES = ("calico", "calico-ipam", "calicoctl", "calico-node")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    name = os.path.basename(argv[0])
    if name.endswith(".py"):
        name = name[:-3]
    if name not in NAMES and len(argv) > 1 and argv[1] in NAMES:
        # `python -m cni_calico calico-ipam …` and the bundle's plain name both work.
        name, argv = argv[1], argv[1:]
    if name == "calico-ipam":
        from ipam.plugin import main as run
    elif name == "calicoctl":
        from cni_calico.ctl.main import main as ctl

        return ctl(argv[1:])
    elif name == "calico-node":
        from cni_calico.node.main import main as node

        return node(argv[1:])
    elif name == "calico":
        from cni_calico.plugin import main as run
    else:
        sys.stderr.write(f"called as {name!r}: expected one of {', '.join(NAMES)}\n")
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main())
