"""One executable, several names: dispatch on the name we were called by (as Calico does).

Kept tiny: it is the first thing every plugin call imports.
"""

from __future__ import annotations

import os
import sys

NAMES = ("calico", "calico-ipam", "calicoctl", "calico-node", "calico-kube-controllers")
VERSION_FLAGS = ("-v", "--version")
HELP_FLAGS = ("-h", "--help")


def main(argv: list[str] | None = None, site_packages: str = "") -> int:
    """`site_packages`: from the venv launcher, which starts without site (see build/make_launcher.py)."""
    argv = sys.argv if argv is None else argv
    name = os.path.basename(argv[0])
    if name.endswith(".py"):
        name = name[:-3]
    if name not in NAMES and len(argv) > 1 and argv[1] in NAMES:
        # `python -m cni_calico calico-ipam …` and the bundle's plain name both work.
        name, argv = argv[1], argv[1:]
    if argv[1:2] and name in ("calico", "calico-ipam", "calico-node"):
        # Flags are for an operator; a runtime's call has no arguments and never comes here.
        if argv[1] in VERSION_FLAGS:  # as Calico's binaries answer `-v`: the version alone
            from cni_calico import __version__

            sys.stdout.write(f"v{__version__}\n")
            return 0
        if argv[1] in HELP_FLAGS and name != "calico-node":  # calico-node's own parser has its --help
            from cni_calico.plugin_help import help_text

            sys.stdout.write(help_text(name))
            return 0
    if site_packages and name != "calico":
        sys.path.append(site_packages)
    if name == "calico-ipam":
        from cni_calico.ipam_cni import main as run
    elif name == "calicoctl":
        from cni_calico.ctl.main import main as ctl

        return ctl(argv[1:])
    elif name == "calico-node":
        from cni_calico.node.main import main as node

        return node(argv[1:])
    elif name == "calico-kube-controllers":
        from cni_calico.kubecontrollers.main import main as controllers

        return controllers(argv[1:])
    elif name == "calico":
        return _calico(site_packages)
    else:
        sys.stderr.write(f"called as {name!r}: expected one of {', '.join(NAMES)}\n")
        return 2
    return run()


def _calico(site_packages: str = "") -> int:
    """The agent if it is there (fast), else the whole plugin in this process."""
    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    command = os.environ.get("CNI_COMMAND")
    if command == "VERSION":
        return _version(stdin)
    if command in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        from cni_calico.agent_client import forward
        from cni_calico.build_id import build_id

        answered = forward(dict(os.environ), stdin, build_id())
        if answered is not None:
            status, out = answered
            view = memoryview(out)
            while view:
                view = view[os.write(1, view):]
            # Nothing of ours to flush or close: skip the interpreter's teardown (a few ms per call).
            os._exit(status)
    if site_packages:
        sys.path.append(site_packages)
    _bare_package("pyroute2")
    from cni_calico.plugin import main

    return main(stdin)


def _bare_package(name: str) -> None:
    """Registers package `name` without running its __init__, for this short-lived process.

    The plugin uses pyroute2's netlink message classes (cni_calico.netlink), ~40 ms to import;
    pyroute2's __init__ imports all of pyroute2 (NDB, IPDB, wireguard, nl80211 …), ~120 ms
    more on every in-process call. Nothing in the plugin does `from pyroute2 import …`;
    calico-node, which does, never comes here."""
    import importlib.util

    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations is not None:
        sys.modules[name] = importlib.util.module_from_spec(spec)


def _version(stdin: bytes) -> int:
    """VERSION needs nothing but the version list: answered before anything heavy is imported."""
    import json

    from cni_calico.versions import version_info

    sys.stdout.write(json.dumps(version_info(stdin)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
