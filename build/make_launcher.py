"""Writes the venv form of the plugin executables: tiny launchers instead of the bundle.

`make install INSTALL_FORM=venv` runs this. Each launcher starts the project venv's Python
with -I -S (no site, ~10 ms instead of the bundle's ~60 ms bootloader), puts the source
tree and a frozen build id on sys.path, and adds the venv's site-packages only when the
request must run in-process (the agent is down). Usage:
    python build/make_launcher.py DEST_DIR NAME [NAME...]
"""

from __future__ import annotations

import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str]) -> int:
    dest, names = argv[0], argv[1:]
    sys.path.insert(0, ROOT)
    from cni_calico.build_id import build_id

    gen = os.path.join(dest, ".cni-calico-build")
    os.makedirs(gen, exist_ok=True)
    with open(os.path.join(gen, "_cni_calico_build.py"), "w") as f:
        f.write(f"BUILD = {build_id()!r}\n")
    site = sysconfig.get_paths()["purelib"]
    text = (
        f"#!{sys.executable} -IS\n"
        "# cni-calico launcher (make install INSTALL_FORM=venv); regenerate rather than edit.\n"
        "import sys\n"
        f"sys.path[:0] = [{ROOT!r}, {gen!r}]\n"
        "from cni_calico.entry import main\n"
        f"sys.exit(main(site_packages={site!r}))\n"
    )
    for name in names:
        path = os.path.join(dest, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        if os.path.islink(path) or os.path.exists(path):
            os.unlink(path)
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
