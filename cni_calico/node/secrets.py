"""BGP passwords in etcd mode: a `secretKeyRef` {name, key} read from `<CALICO_SECRETS_DIR>/<name>/<key>`.

Calico reads BGP passwords from Kubernetes secrets; an etcd-only cluster has no
secret store, so each node holds them as files in a mounted secret's layout
(default `/etc/calico/secrets`: `/etc/calico/secrets/bgp-secrets/mesh`). The
file's content is the password (one trailing newline, as `echo` leaves it, is
dropped). A secret that is missing, unreadable, empty, or holds what BIRD's
config cannot carry (a double quote, a backslash, a newline, over 80 bytes: the
TCP MD5 key limit) is logged as an error once, and its sessions are rendered
disabled until it can be read: never without their password.
"""

from __future__ import annotations

import logging
import os
import re

from cni_calico.v3 import SecretRef

log = logging.getLogger(__name__)

DEFAULT_DIR = "/etc/calico/secrets"
_SAFE = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Kubernetes secret's key; names are DNS subdomains
MAX_KEY = 80  # TCP_MD5SIG_MAXKEYLEN


def path_of(ref: SecretRef, base: str) -> str:
    return os.path.join(base, ref.name, ref.key)


def _read(ref: SecretRef, base: str) -> tuple[str | None, str]:
    """(password, why not)."""
    if not (_SAFE.match(ref.name) and _SAFE.match(ref.key)) or ".." in (ref.name, ref.key):
        return None, "not a secret name and key"
    path = path_of(ref, base)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
    text = text.removesuffix("\n")
    if not text:
        return None, f"{path} is empty"
    if any(c in text for c in '"\\\n\r') or len(text.encode()) > MAX_KEY:
        return None, f"{path} holds a double quote, backslash or newline, or is over {MAX_KEY} bytes"
    return text, ""


class SecretReader:
    """Reads the secrets the sessions need; logs a secret's failure once, and its recovery."""

    def __init__(self, base: str = DEFAULT_DIR) -> None:
        self.base = base
        self.failed: set[SecretRef] = set()

    def read(self, refs: set[SecretRef]) -> dict[SecretRef, str]:
        out = {}
        for ref in sorted(refs, key=lambda r: (r.name, r.key)):
            password, why = _read(ref, self.base)
            if password is None:
                if ref not in self.failed:
                    log.error("BGP password secret %s/%s: %s; its sessions stay down (disabled) until it can be read",
                              ref.name, ref.key, why)
                self.failed.add(ref)
                continue
            if ref in self.failed:
                log.info("BGP password secret %s/%s can be read again", ref.name, ref.key)
                self.failed.discard(ref)
            out[ref] = password
        self.failed &= refs
        return out
