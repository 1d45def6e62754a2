"""Which build this code is: the plugin and the agent must be the same one to share a request.

`make build` freezes the id into the bundle (module `_cni_calico_build`); a source tree computes it
from its files,
so an agent started before an upgrade refuses the new plugin's requests (which then run
in-process) instead of applying them with old code.
"""

from __future__ import annotations

import os

from cni_calico import __version__

_cached = ""


def build_id() -> str:
    global _cached
    if _cached:
        return _cached
    try:
        from _cni_calico_build import BUILD  # only in the bundle, written by build/cni-calico.spec

        _cached = BUILD
        return _cached
    except ImportError:
        pass
    import hashlib  # not at the top: _hashlib loads OpenSSL, ~4 ms the bundle's plugin never needs

    digest = hashlib.sha1()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in ("cni_calico", "ipam"):
        for directory, _, files in sorted(os.walk(os.path.join(root, package))):
            for name in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(directory, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    _cached = f"{__version__}+{digest.hexdigest()[:12]}"
    return _cached
