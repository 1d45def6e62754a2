"""The node's readiness: what calico-node knows it cannot do (a pool it must serve needs a kernel
driver this kernel lacks, …), kept in `$CALICO_RUN_DIR/readiness.json` for `calico-node --ready`
(a readiness probe, as Calico's `calico-node -felix-ready`) and `calicoctl node status`."""

from __future__ import annotations

import json
import os

FILE = "readiness.json"


def write(run_dir: str, problems: list[str]) -> None:
    from cni_calico.node.startup import write_file

    write_file(os.path.join(run_dir, FILE), json.dumps({"ready": not problems, "problems": problems}))


def clear(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, FILE))
    except FileNotFoundError:
        pass


def read(run_dir: str) -> list[str] | None:
    """The problems calico-node reported ([] when ready); None when it has not reported (not running)."""
    try:
        with open(os.path.join(run_dir, FILE), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    problems = doc.get("problems") if isinstance(doc, dict) else None
    return [str(p) for p in problems] if isinstance(problems, list) else None
