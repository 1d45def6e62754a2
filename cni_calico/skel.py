"""The CNI protocol: env + stdin into a Request, dispatch, and the only writer of error JSON.

A plugin supplies handlers per command; `run` returns the process exit status.
Handlers raise `CniError` (or anything else: reported as code 999 with the
traceback in the log) and never print.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cni_calico.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENV,
    CniError,
)
from cni_calico.result import LATEST_VERSION, SUPPORTED_VERSIONS, Result, version_tuple
from cni_calico.versions import version_info

log = logging.getLogger(__name__)

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
CONTAINER_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")  # used with fullmatch
MAX_IFNAME = 15
# As libcni's ConfigDecoder: a config without cniVersion is a 0.1.0 config.
DEFAULT_CONFIG_VERSION = "0.1.0"

# Which variables each command needs, as in containernetworking/plugins' skel.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": (),
}
# Commands a config version must be new enough to ask for.
MIN_VERSION = {"CHECK": (0, 4, 0), "STATUS": (1, 1, 0), "GC": (1, 1, 0)}


@dataclass
class Request:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    stdin: bytes = b""
    conf: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the invocation's environment (agent: the caller's)

    @property
    def version(self) -> str:
        return self.conf.get("cniVersion") or DEFAULT_CONFIG_VERSION


Handler = Callable[[Request], "Result | None"]


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is "K=V;K2=V2"; an element without '=' is an error, as in libcni."""
    out: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS element {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def validate_ifname(name: str) -> None:
    if not name:
        raise CniError(INVALID_ENV, "CNI_IFNAME is empty")
    try:
        size = len(name.encode("utf-8", "surrogateescape"))  # the kernel counts bytes, not characters
    except UnicodeEncodeError:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name") from None
    if size > MAX_IFNAME:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {name!r} is longer than {MAX_IFNAME} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name")
    if "%" in name:  # the kernel reads it as a template ("eth%d" → eth0): the link would get another name
        raise CniError(INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name: '%' makes the kernel "
                       "choose the name")


def read_request(env: dict[str, str], stdin: bytes) -> Request:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "required env variable CNI_COMMAND is missing")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}", f"expected one of {', '.join(COMMANDS)}")
    req = Request(command=command, stdin=stdin, env=env)
    if command == "VERSION":
        return req
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{', '.join(missing)}] missing")
    req.container_id = env.get("CNI_CONTAINERID", "")
    if req.container_id and not CONTAINER_ID_RE.fullmatch(req.container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {req.container_id!r} has characters a container ID cannot have")
    req.netns = env.get("CNI_NETNS", "")
    req.ifname = env.get("CNI_IFNAME", "")
    if req.ifname or command in ("ADD", "CHECK", "DEL"):
        validate_ifname(req.ifname)
    req.args = parse_cni_args(env.get("CNI_ARGS", ""))
    req.path = [p for p in env.get("CNI_PATH", "").split(":") if p]
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network config on stdin is not valid JSON", str(exc)) from None
    except RecursionError:
        raise CniError(DECODE_FAILURE, "network config on stdin is nested too deeply to read") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin must be a JSON object")
    req.conf = conf
    version = conf.get("cniVersion") or DEFAULT_CONFIG_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command in MIN_VERSION:
        if version_tuple(version) < MIN_VERSION[command]:
            raise CniError(INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}")
    return req


def _asked_version(stdin: bytes) -> str:
    """The config's cniVersion for error replies, when it is one we speak; else the latest."""
    try:
        asked = json.loads(stdin).get("cniVersion") or DEFAULT_CONFIG_VERSION
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return LATEST_VERSION
    return asked if asked in SUPPORTED_VERSIONS else LATEST_VERSION


def error_json(err: CniError, version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        version = LATEST_VERSION
    return json.dumps({"cniVersion": version, "code": err.code, "msg": err.msg, "details": err.details})


def execute(handlers: dict[str, Handler], env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    """One CNI invocation: (exit status, what belongs on stdout). Used by the process and the agent."""
    req: Request | None = None
    version = _asked_version(stdin)
    try:
        req = read_request(env, stdin)
        if req.command == "VERSION":
            return 0, json.dumps(version_info(stdin)) + "\n"
        handler = handlers.get(req.command)
        if handler is None:
            raise CniError(INVALID_ENV, f"CNI_COMMAND {req.command} is not supported by this plugin")
        result = handler(req)
        return 0, (json.dumps(result.to_dict(version)) + "\n") if result is not None else ""
    except CniError as err:
        log.error("%s failed: %s", req.command if req else env.get("CNI_COMMAND", "?"), err)
        return 1, error_json(err, version) + "\n"
    except Exception as exc:  # noqa: BLE001 - the last line of defence for stdout's shape
        log.exception("internal error")
        err = CniError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "see the plugin log for the traceback")
        return 1, error_json(err, version) + "\n"


def read_stdin() -> bytes:
    return sys.stdin.buffer.read() if not sys.stdin.isatty() else b""


def run(handlers: dict[str, Handler], env: dict[str, str] | None = None, stdin: bytes | None = None) -> int:
    """Runs one CNI invocation in this process; prints the result or the error JSON; returns the status."""
    env = dict(os.environ) if env is None else env
    status, out = execute(handlers, env, read_stdin() if stdin is None else stdin)
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    return status
