"""Runs another CNI plugin (an IPAM plugin other than calico-ipam) found in CNI_PATH."""

from __future__ import annotations

import json
import os
import subprocess

from cni_calico.errors import INVALID_CONFIG, IO_FAILURE, CniError
from cni_calico.result import Result
from cni_calico.skel import Request

TIMEOUT = 60.0


def find(plugin: str, path: list[str]) -> str:
    for directory in path:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"IPAM plugin {plugin!r} not found in CNI_PATH {':'.join(path) or '(empty)'}")


def invoke(plugin: str, command: str, req: Request) -> Result | None:
    exe = find(plugin, req.path)
    env = dict(req.env or os.environ, CNI_COMMAND=command)
    try:
        proc = subprocess.run([exe], input=req.stdin, env=env, capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CniError(IO_FAILURE, f"IPAM plugin {plugin} did not answer {command} within {TIMEOUT:.0f} s") from None
    out = proc.stdout.strip()
    try:
        data = json.loads(out) if out else {}
    except ValueError:
        shown = out[:200].decode(errors="replace")
        raise CniError(IO_FAILURE, f"IPAM plugin {plugin} printed something that is not JSON", shown) from None
    if proc.returncode != 0 or "code" in data:
        msg = f"IPAM plugin {plugin}: {data.get('msg', 'failed')}"
        raise CniError(int(data.get("code", 100)), msg, data.get("details", ""))
    if command != "ADD":
        return None
    try:
        return Result.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CniError(IO_FAILURE, f"IPAM plugin {plugin} returned a result this plugin cannot read: {exc}") from None
